"""The training loop: it learns, it is deterministic, it selects and saves the best epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histattn.models import checkpoint
from napari_histattn.models.registry import create_model
from napari_histattn.progress import Progress, run_to_completion
from napari_histattn.training.datasets import (
    SyntheticBagDataset,
    SyntheticImageDataset,
    SyntheticSamplingDataset,
    estimate_normalisation,
)
from napari_histattn.training.loop import TrainConfig, evaluate, seed_everything, train
from napari_histattn.training.tasks import task_for_model
from napari_histattn.training.transforms import Augment

CLASSES = ["normal", "lesion"]
AMIL = dict(encoder="tiny", patch_size=16, embed_dim=16, attn_dim=16, n_classes=2)


def _bags(scenes, augment=None, normalise=None):
    return SyntheticBagDataset(scenes, patch_size=16, augment=augment, normalise=normalise, seed=0)


def _amil_run(easy_scenes, epochs, seed=0, checkpoint_path=None, progress=None):
    train_set = _bags(easy_scenes["train"], Augment())
    norm = estimate_normalisation(train_set)
    train_set.normalise = norm
    val_set = _bags(easy_scenes["val"], normalise=norm)
    seed_everything(seed)
    model = create_model("amil", **AMIL)
    config = TrainConfig(
        epochs=epochs, batch_size=4, lr=3e-3, scheduler="none", seed=seed, device="cpu"
    )
    gen = train(
        model,
        task_for_model("amil"),
        train_set,
        val_set,
        config,
        class_names=CLASSES,
        preprocessing={"input": "mil", "patch_size": 16, **norm.as_dict()},
        checkpoint_path=checkpoint_path,
    )
    return run_to_completion(gen, progress), norm


def test_dafl_learns_easy_task_and_beats_chance_on_held_out_seeds(easy_scenes):
    train_set = SyntheticImageDataset(easy_scenes["train"], image_size=48, augment=Augment())
    norm = estimate_normalisation(train_set)
    train_set.normalise = norm
    val_set = SyntheticImageDataset(easy_scenes["val"], image_size=48, normalise=norm)
    test_set = SyntheticImageDataset(easy_scenes["test"], image_size=48, normalise=norm)
    seed_everything(0)
    model = create_model("dafl_cnn", backbone="vgg_small", input_size=48, n_classes=2)
    config = TrainConfig(epochs=8, batch_size=8, lr=1e-3, scheduler="none", device="cpu")
    reports: list[Progress] = []
    task = task_for_model("dafl_cnn")
    result = run_to_completion(
        train(model, task, train_set, val_set, config, class_names=CLASSES), reports.append
    )
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < 0.5 * losses[0], losses
    # one progress report per training batch and per validation batch
    assert reports[-1].done == reports[-1].total == 8 * (5 + 2)
    evaluation = run_to_completion(evaluate(result.model, task, test_set, CLASSES, device="cpu"))
    # 30 unseen images, 15 per class: chance is 0.5
    assert evaluation.metrics["accuracy"] >= 0.8
    assert evaluation.metrics["roc_auc"] >= 0.85
    assert evaluation.metrics["n"] == 30


def test_amil_best_epoch_is_selected_and_saved(easy_scenes, tmp_path):
    result, norm = _amil_run(easy_scenes, epochs=3, checkpoint_path=tmp_path / "m")
    val_losses = [r.val_loss for r in result.history]
    assert result.best_epoch == int(np.argmin(val_losses))
    assert result.best_val_loss == pytest.approx(min(val_losses))
    loaded = checkpoint.load(result.checkpoint_path, device="cpu")
    assert loaded.class_names == CLASSES
    assert loaded.preprocessing["mean"] == pytest.approx(list(norm.mean))
    assert loaded.metadata["training"]["best_epoch"] == result.best_epoch
    assert len(loaded.metadata["training"]["history"]) == 3
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value.cpu(), result.best_state[key]), key
    bag, _ = _bags(easy_scenes["test"], normalise=norm)[0]
    with torch.inference_mode():
        a = result.model(bag[None]).logits
        b = loaded.model(bag[None]).logits
    torch.testing.assert_close(a, b)


def test_same_seed_same_history_other_seed_differs(easy_scenes):
    first, _ = _amil_run(easy_scenes, epochs=2, seed=3)
    second, _ = _amil_run(easy_scenes, epochs=2, seed=3)
    assert [vars(r) for r in first.history] == [vars(r) for r in second.history]
    for key, value in first.best_state.items():
        assert torch.equal(value, second.best_state[key]), key
    other, _ = _amil_run(easy_scenes, epochs=2, seed=4)
    assert [r.train_loss for r in other.history] != [r.train_loss for r in first.history]


def test_early_stopping_stops_after_patience(easy_scenes):
    train_set = SyntheticImageDataset(easy_scenes["train"], image_size=32)
    # Validation labels flipped: learning the training task makes validation worse.
    flipped = type(easy_scenes["val"])(
        easy_scenes["val"].spec, easy_scenes["val"].seeds, 1 - easy_scenes["val"].labels
    )
    val_set = SyntheticImageDataset(flipped, image_size=32)
    seed_everything(0)
    model = create_model("dafl_cnn", backbone="vgg_small", input_size=32, n_classes=2)
    config = TrainConfig(
        epochs=12,
        batch_size=8,
        lr=3e-3,
        patience=2,
        device="cpu",
        scheduler="step",
        step_size=1,
        gamma=0.9,
    )
    result = run_to_completion(
        train(model, task_for_model("dafl_cnn"), train_set, val_set, config, class_names=CLASSES)
    )
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 1 + 2
    # StepLR(step_size=1, gamma=0.9) decays the rate every epoch
    lrs = [r.lr for r in result.history]
    assert lrs[1] == pytest.approx(0.9 * lrs[0])


def test_attention_sampling_trains_through_model_loss(easy_scenes):
    scenes = easy_scenes["train"]
    dataset = SyntheticSamplingDataset(scenes, downscale=8, augment=Augment(), seed=0)
    dataset.normalise = estimate_normalisation(dataset)
    seed_everything(0)
    model = create_model(
        "attention_sampling", n_patches=6, patch_size=16, downscale=8, feature_dim=8,
        attention_channels=4, feature_channels=4, entropy_weight=0.05,
    )  # fmt: skip
    calls = []
    original = model.loss

    def spy(output, targets):
        calls.append(output.samples_rc.shape)
        return original(output, targets)

    model.loss = spy
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-3, device="cpu")
    result = run_to_completion(
        train(
            model, task_for_model("attention_sampling"), dataset, None, config, class_names=CLASSES
        )
    )
    assert len(calls) == 5 and calls[0] == (8, 6, 2)
    assert np.isfinite(result.history[0].train_loss)
    assert result.history[0].val_loss is None
