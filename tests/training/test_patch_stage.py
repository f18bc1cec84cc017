"""Stage 1 as a patch classifier on balanced annotated tiles, and a frozen-encoder stage 2."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_histattn.models.checkpoint import load, read_metadata
from napari_histattn.models.registry import create_model
from napari_histattn.progress import run_to_completion
from napari_histattn.training.datasets import SlideBagDataset, SlideOptions, read_slide_csv
from napari_histattn.training.datasets.annotated import Annotations
from napari_histattn.training.experiment import ExperimentSpec, cross_validate
from napari_histattn.training.loop import TrainConfig, seed_everything, train_mode
from napari_histattn.training.patch_stage import (
    _start_head,
    head_targets,
    stage1_classes,
    stage1_labeller,
)

AMIL = {"encoder": "tiny", "patch_size": 16, "embed_dim": 8, "attn_dim": 8}
MAP = {"tissue": "benign", "lookalike": "benign"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six generated slides (lesion + look-alike, or look-alikes only), their labels, and
    the generator's ground truth (tissue, lesion, lookalike polygons) for four of them."""
    from napari_histattn.io.synthetic import generate_synthetic_slide

    folder = tmp_path_factory.mktemp("patch-stage")
    notes = folder / "annotations"
    notes.mkdir()
    rows = [["slide", "label", "patient"]]
    for i in range(6):
        positive = i % 2 == 0
        made = generate_synthetic_slide(
            folder / f"s{i}.tiff",
            768,
            768,
            seed=500 + i,
            n_lesions=1 if positive else 0,
            lesion_radius_px=60,
            n_lookalikes=1,
            lookalike_radius_px=60,
            mpp=1.0,
        )
        rows.append([made.path.name, "lesion" if positive else "benign", f"p{i}"])
        if i < 4:
            (notes / f"s{i}.geojson").write_bytes(made.geojson_path.read_bytes())
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return labels, notes


def test_stage1_classes_keep_instance_classes_apart_and_map_their_head_rows() -> None:
    classes = stage1_classes(["benign", "lesion"], ["lookalike", "Lesion", "tissue"])
    assert classes == ["benign", "lesion", "lookalike", "tissue"]  # a slide class once
    notes = Annotations(Path("."), MAP)
    assert head_targets(classes, ["benign", "lesion"], notes) == [0, 1, 0, 0]
    no_map = Annotations(Path("."), {})
    assert head_targets(classes, ["benign", "lesion"], no_map) == [0, 1, None, None]


def test_the_slide_head_starts_from_the_mean_of_the_mapped_stage1_rows() -> None:
    model = create_model("amil", n_classes=2, **AMIL)
    head = nn.Linear(8, 4)
    before = model.head[-1].weight.detach().clone()
    _start_head(model, head, [None, 1, 0, 0])
    final = model.head[-1]
    torch.testing.assert_close(final.weight[0], head.weight[2:4].mean(0))
    torch.testing.assert_close(final.bias[1], head.bias[1])
    assert not torch.equal(final.weight, before)


def test_balanced_tiles_cap_every_annotation_class_and_change_each_epoch(cohort) -> None:
    labels, notes = cohort
    data = read_slide_csv(labels)
    labeller = stage1_labeller(Annotations(notes, MAP), data.class_names, ["lookalike", "tissue"])
    assert labeller.class_names == ["benign", "lesion", "lookalike", "tissue"]
    bags = SlideBagDataset(
        data.subset([0]),
        SlideOptions(patch_size=16, target_mpp=1.0),
        seed=3,
        labeller=labeller,
        labelled_only=True,
        per_class=10,
    )
    every = bags.tile_labels(0)
    assert {1, 2, 3} <= set(every[every >= 0].tolist())  # lesion, look-alike, tissue tiles
    assert (every == 3).sum() > 3 * (every == 1).sum()  # tissue is the bulk
    first = bags.chosen_tiles(0)
    counts = np.bincount(every[first], minlength=4)
    assert counts[1:].max() <= 10 and counts[1] > 0 and counts[2] > 0 and counts[3] == 10
    assert counts[0] == 0  # nothing is "benign" by annotation: tissue is its own class
    bags.set_epoch(1)
    assert not np.array_equal(first, bags.chosen_tiles(0))
    patches, instance_labels, _ = bags[0]
    assert patches.shape[0] == instance_labels.shape[0] == bags.chosen_tiles(0).size
    bags.close()


def _spec(max_patches: int, **options: object) -> ExperimentSpec:
    """One fold of two-epoch A-MIL training on pixels (seed 4), with ``options``."""
    return ExperimentSpec(
        model_name="amil",
        model_config=AMIL,
        train=TrainConfig(epochs=2, batch_size=2, lr=1e-2, device="cpu", seed=4, patience=None),
        folds=1,
        val_fraction=0.34,
        slide_options=SlideOptions(target_mpp=1.0, max_patches=max_patches),
        **options,  # type: ignore[arg-type]
    )


def test_two_stage_on_patches_records_stage1_and_freezes_the_encoder(cohort, tmp_path) -> None:
    labels, notes = cohort
    data = read_slide_csv(labels)
    spec = _spec(
        64,
        annotations=Annotations(notes, MAP),
        stage1_epochs=2,
        stage1_per_class=8,
        instance_classes=("lookalike", "tissue"),
        freeze_encoder=True,
    )
    result = run_to_completion(cross_validate(data, spec, tmp_path / "run"))
    ckpt = result.folds[0].checkpoint_path
    stage1 = read_metadata(ckpt)["training"]["stage1"]
    assert stage1["form"] == "patches" and stage1["per_class"] == 8
    assert stage1["classes"] == ["benign", "lesion", "lookalike", "tissue"]
    tiles = stage1["tiles_last_epoch"]
    assert tiles["benign"] == 0 and tiles["lesion"] > 0 and tiles["lookalike"] > 0
    assert tiles["tissue"] <= 8 * 4  # at most 8 per annotated slide
    assert stage1["head_started_from"] == {"benign": 0, "lesion": 1, "lookalike": 0, "tissue": 0}
    assert stage1["frozen_encoder_parameters"] > 0


def test_a_frozen_encoder_does_not_learn_in_stage_2(cohort, tmp_path) -> None:
    labels, _ = cohort
    data = read_slide_csv(labels)
    spec = _spec(32, freeze_encoder=True)
    result = run_to_completion(cross_validate(data, spec, tmp_path / "run"))
    trained = load(result.folds[0].checkpoint_path).model
    seed_everything(4)  # the experiment builds its model right after seeding
    initial = create_model("amil", **read_metadata(result.folds[0].checkpoint_path)["model_config"])
    for (name, a), (_, b) in zip(
        trained.encoder.state_dict().items(), initial.encoder.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=f"encoder {name} changed")
    assert not torch.equal(trained.head[-1].weight, initial.head[-1].weight)  # the head learnt


def test_train_mode_keeps_frozen_batch_norm_in_eval() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2)
    )
    for p in net[1].parameters():
        p.requires_grad_(False)
    train_mode(net)
    assert not net[1].training and net[3].training and net.training


def test_cli_checks_the_patch_stage_options(cohort, tmp_path, capsys) -> None:
    from napari_histattn.cli import main

    labels, notes = cohort
    base = ["train", "--labels", str(labels), "--model", "amil", "--out", str(tmp_path / "x")]
    base += ["--annotations", str(notes)]
    assert main([*base, "--stage1-tiles", "8"]) == 1  # needs --stage1-epochs
    assert "--stage1-epochs" in capsys.readouterr().err
    assert main([*base, "--instance-class", "lookalike"]) == 1  # needs --stage1-tiles
    assert main([*base, "--stage1-epochs", "1", "--stage1-tiles", "0"]) == 1
    feats = ["--features", str(tmp_path), "--freeze-encoder"]
    assert main([*base, *feats]) == 1
    assert "no encoder" in capsys.readouterr().err


class _ColourTiles:
    """Three 'slides' of 60 tiles whose class is their colour (red, green, blue)."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.items = []
        for _ in range(3):
            labels = torch.arange(60) % 3
            patches = 0.1 * torch.rand(60, 3, 16, 16, generator=gen)
            patches[torch.arange(60), labels] += 0.8
            self.items.append((patches, labels, 0))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
        return self.items[index]

    def set_epoch(self, epoch: int) -> None:
        pass


def test_the_patch_classifier_learns_in_tile_minibatches() -> None:
    from napari_histattn.training.patch_stage import patch_stage1

    model = create_model("amil", n_classes=2, **AMIL)
    settings = TrainConfig(epochs=1, batch_size=2, lr=1e-2, device="cpu", seed=0)
    record = run_to_completion(
        patch_stage1(model, _ColourTiles(), ["r", "g", "b"], [0, 1, 0], settings, 6, tile_batch=16)
    )
    # 2 slide groups an epoch (120 and 60 tiles): 8 + 4 steps of at most 16 tiles.
    assert record["optimiser_steps"] == 6 * (8 + 4)
    assert record["tiles_last_epoch"] == {"r": 60, "g": 60, "b": 60}
    assert record["balanced_accuracy_last_epoch"] > 0.9
