"""Slides + CSV of labels: A-MIL bags and attention-sampling views read through io.slide."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from napari_histattn.models.registry import create_model
from napari_histattn.progress import run_to_completion
from napari_histattn.training.datasets import (
    SlideBagDataset,
    SlideOptions,
    SlideSamplingDataset,
    SyntheticScenes,
    SyntheticSpec,
    read_slide_csv,
)
from napari_histattn.training.experiment import (
    ExperimentSpec,
    cross_validate,
    evaluate_checkpoint,
)
from napari_histattn.training.loop import TrainConfig
from napari_histattn.training.tasks import StackedPatchSource, task_for_model
from napari_histattn.training.transforms import Augment


@pytest.fixture(scope="module")
def slide_csv(tmp_path_factory):
    """Eight small PNG 'slides' (two sizes), two per patient, with a labels CSV."""
    root = tmp_path_factory.mktemp("slides")
    rows = ["slide,label,patient"]
    for size, seeds in ((96, range(0, 4)), (128, range(4, 8))):
        scenes = SyntheticScenes(
            SyntheticSpec(image_size=size, lesion_radius_px=12, mpp=2.0), seeds
        )
        for i, seed in enumerate(scenes.seeds):
            name = f"s{seed}.png"
            Image.fromarray(scenes.image(i)).save(root / "img" / name if False else root / name)
            label = "lesion" if scenes.labels[i] else "normal"
            rows.append(f"{name},{label},p{seed // 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_slide_bags_are_tissue_tiles_with_bounded_size(slide_csv):
    data = read_slide_csv(slide_csv)
    assert data.class_names == ["lesion", "normal"]
    options = SlideOptions(patch_size=16, max_patches=10)
    train_bags = SlideBagDataset(data, options, augment=Augment(), seed=0)
    eval_bags = SlideBagDataset(data, options)
    n_tiles = len(train_bags.plan(4))  # a 128 px image: at most 8 x 8 tiles
    assert 10 < n_tiles <= 64
    bag, label = train_bags[4]
    assert bag.shape == (10, 3, 16, 16) and label == data.samples[4].label
    first = train_bags.chosen_tiles(4)
    train_bags.set_epoch(1)
    assert not np.array_equal(first, train_bags.chosen_tiles(4))  # a new subset per epoch
    chosen = eval_bags.chosen_tiles(4)
    assert np.array_equal(chosen, eval_bags.chosen_tiles(4)) and chosen[0] == 0
    assert chosen[-1] == n_tiles - 1
    # With positions (HATNet), each tile's grid (row, col) comes after the patches.
    placed = SlideBagDataset(data, options, positions=True)
    patches, rc, label = placed[4]
    assert torch.equal(patches, eval_bags[4][0]) and label == data.samples[4].label
    np.testing.assert_array_equal(rc.numpy(), placed.plan(4).grid_rc[chosen])
    for bags in (train_bags, eval_bags, placed):
        bags.close()


def test_sampling_batch_pads_views_and_reads_only_samples(slide_csv):
    data = read_slide_csv(slide_csv)
    dataset = SlideSamplingDataset(data, SlideOptions(patch_size=16, downscale=8))
    small, large = dataset[0], dataset[4]
    assert small[0].shape == (3, 12, 12) and large[0].shape == (3, 16, 16)
    batch = task_for_model("attention_sampling", pad_value=-1.0).collate([small, large])
    low_res, source = batch.inputs
    assert low_res.shape == (2, 3, 16, 16)
    assert torch.all(low_res[0, :, 12:, :] == -1.0)
    assert isinstance(source, StackedPatchSource)
    # 8 high-res pixels per grid cell for both images
    assert source.high_res_size_wh(0) == (128, 128) == source.high_res_size_wh(1)
    model = create_model(
        "attention_sampling", n_patches=5, patch_size=16, downscale=8, attention_channels=4,
        feature_channels=4, feature_dim=6,
    )  # fmt: skip
    out = model(low_res, source, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (2, 2)
    assert small[1].reads == 5 and large[1].reads == 5
    dataset.close()


@pytest.mark.parametrize(
    ("model", "config"),
    [
        ("amil", {"encoder": "tiny", "patch_size": 16, "embed_dim": 8, "attn_dim": 8}),
        (
            "hatnet",
            {"encoder": "tiny", "patch_size": 16, "embed_dim": 8, "attn_dim": 8}
            | {"n_heads": 2, "region_size": 2},
        ),
        (
            "attention_sampling",
            {"n_patches": 4, "patch_size": 16, "downscale": 8, "feature_dim": 8},
        ),
    ],
)
def test_kfold_on_slides_and_evaluate_reproduces(slide_csv, tmp_path, model, config):
    data = read_slide_csv(slide_csv)
    spec = ExperimentSpec(
        model_name=model,
        model_config=config,
        train=TrainConfig(epochs=1, batch_size=2, lr=1e-3, device="cpu", seed=1),
        folds=2,
        slide_options=SlideOptions(max_patches=12),
    )
    result = run_to_completion(cross_validate(data, spec, tmp_path / "cv"))
    assert result.metrics["n"] == 8 and len(result.folds) == 2
    # patient-wise: the two slides of a patient are tested in the same fold
    for fold in result.folds:
        patients = {data.samples[i].group for i in fold.test_indices}
        others = {
            data.samples[i].group for f in result.folds if f is not fold for i in f.test_indices
        }
        assert not patients & others
    fold = result.folds[0]
    sidecar = json.loads((tmp_path / "cv" / "fold-1" / "model.json").read_text())
    pre = sidecar["preprocessing"]
    # PNGs without a pixel size: neither ours nor known scans, so the source is unknown.
    assert sidecar["training"]["domain"] == {
        "source": "unknown",
        "stain": None,
        "slide_mpp_range": None,
        "model_mpp": None,
        "classes": ["lesion", "normal"],
        "recorded": True,
    }
    assert pre["patch_size"] == 16 and pre["input"] in ("mil", "sampling")
    again = run_to_completion(
        evaluate_checkpoint(
            fold.checkpoint_path,
            read_slide_csv(tmp_path / "cv" / "fold-1" / "test.csv", min_classes=1),
            tmp_path / "eval",
            batch_size=2,
            device="cpu",
        )
    )
    assert again.metrics["confusion_matrix"] == fold.metrics["confusion_matrix"]
    np.testing.assert_allclose(
        again.predictions.probabilities, fold.predictions.probabilities, rtol=1e-5, atol=1e-6
    )
