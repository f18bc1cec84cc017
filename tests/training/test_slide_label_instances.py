"""Instance-level evidence from slide labels on cached features: ``histattn train
--instance-mil`` (the patch head fitted on single tiles, then frozen) and ``histattn
pseudo-label`` (the surest tiles as annotations, one model or several voting). The cohort
and its ``tiny`` features are the session fixtures of ``conftest.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_histattn.inference.features import feature_path, read_features
from napari_histattn.progress import run_to_completion


@pytest.fixture(scope="module")
def instance_run(
    cohort: tuple[Path, Path], features: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[str], Path]:
    """``histattn train --instance-mil 3 --instance-top-k 4`` on the cached features: the
    train arguments (without the instance options) and the checkpoint."""
    from napari_histattn.cli import main

    run = tmp_path_factory.mktemp("instance") / "run"
    train = ["train", "--labels", str(cohort[1]), "--features", str(features), "--model", "amil"]
    train += ["--out", str(run), "--folds", "1", "--val-fraction", "0.25", "--epochs", "2"]
    train += ["--batch-size", "4", "--device", "cpu", "--quiet"]
    assert main([*train, "--instance-mil", "3", "--instance-top-k", "4"]) == 0
    return train, run / "fold-1" / "model.safetensors"


def test_instance_mil_trains_from_slide_labels_and_records_its_rounds(
    cohort: tuple[Path, Path],
    features: Path,
    instance_run: tuple[list[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """``histattn train --instance-mil``: the head fitted on single tiles, then frozen while
    the attention learns; the checkpoint records the rounds and classifies a slide."""
    from napari_histattn.cli import main
    from napari_histattn.inference.engine import classify
    from napari_histattn.models.checkpoint import load

    train, ckpt = instance_run
    loaded = load(ckpt, device="cpu")
    record = loaded.metadata["training"]["stage1"]["instance_mil"]
    assert record["top_k"] == 4 and record["positive_class"] == "lesion"
    # Round 0 labels every tile of a positive training slide, later rounds 4 per slide.
    history = record["history"]
    assert 2 <= record["rounds_run"] == len(history) <= 4
    n_positive_slides = history[1]["positive_tiles"] // 4
    assert history[1]["positive_tiles"] == 4 * n_positive_slides
    assert history[0]["positive_tiles"] > 4 * n_positive_slides
    # The checkpointed head is the fitted margin: class 0's weights are zero.
    head = loaded.model.head[-1]
    assert torch.all(head.weight[0] == 0) and head.weight[1].abs().sum() > 0
    slide = cohort[0] / "s00.tiff"
    result = run_to_completion(classify(slide, ckpt, device="cpu", features_dir=features))
    assert 0.0 <= result.probabilities_by_class["lesion"] <= 1.0
    # Options it needs are named before anything trains.
    capsys.readouterr()
    assert (
        main([*train[:3], "--model", "amil", "--out", str(tmp_path / "x"), "--instance-mil", "2"])
        != 0
    )
    assert "--instance-mil trains amil on cached --features" in capsys.readouterr().err
    assert main([*train, "--instance-top-k", "3"]) != 0
    assert "--instance-top-k needs --instance-mil" in capsys.readouterr().err
    notes = tmp_path / "notes"
    notes.mkdir()
    assert main([*train, "--instance-mil", "2", "--annotations", str(notes)]) != 0
    assert "use one" in capsys.readouterr().err


def test_pseudo_labels_are_the_models_surest_tiles_and_train_as_annotations(
    cohort: tuple[Path, Path],
    features: Path,
    instance_run: tuple[list[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """``histattn pseudo-label``: a positive slide's top tiles as its class, a benign slide's
    most suspicious and some random tiles as benign, in files the annotation reader maps
    back onto exactly those tiles."""
    from napari_histattn.cli import main
    from napari_histattn.models.checkpoint import load
    from napari_histattn.training.datasets import load_layout
    from napari_histattn.training.datasets.annotated import Annotations, InstanceLabeller
    from napari_histattn.training.pseudo_labels import tile_margins

    _, ckpt = instance_run
    out = tmp_path / "pseudo"
    argv = ["pseudo-label", "--labels", str(cohort[1]), "--features", str(features)]
    argv += ["--checkpoint", str(ckpt), "--out", str(out), "--top-k", "2", "--quiet"]
    assert main([*argv, "--hard-negatives", "3", "--random-negatives", "2"]) == 0
    data = load_layout(cohort[1], "slides")
    assert sorted(p.stem for p in out.glob("*.geojson")) == sorted(
        s.path.stem for s in data.samples
    )
    import json

    first = json.loads((out / "s00.geojson").read_text())["properties"]
    assert first["mpp_xy"] == [1.0, 1.0]  # opens on the slide in micrometres
    assert first["provenance"]["source"] == "pseudo-labels"
    model = load(ckpt, device="cpu").model
    labeller = InstanceLabeller(Annotations(out), data.class_names)
    for sample in data.samples:
        cached = read_features(feature_path(features, sample.path))
        margins = tile_margins(model, cached.features)
        labels = labeller.labels(sample.path, cached.coords_l0_xy, cached.tile_l0)
        labelled = np.flatnonzero(labels >= 0)
        if sample.label == 1:  # its 2 highest-margin tiles, as lesion
            assert set(labelled) == set(np.argsort(-margins)[:2].tolist())
            assert np.all(labels[labelled] == 1)
        else:  # the 3 highest-margin tiles and 2 others, as benign
            assert labelled.size == 5 and np.all(labels[labelled] == 0)
            assert set(np.argsort(-margins)[:3].tolist()) <= set(labelled)
    # Two models vote (here the same one twice: the same tiles, in the same order), and
    # the files name both; a checkpoint without its features folder is refused.
    voted = tmp_path / "voted"
    two = [*argv[:5], "--features", str(features), "--checkpoint", str(ckpt)]
    two += ["--checkpoint", str(ckpt), "--out", str(voted), "--top-k", "2", "--quiet"]
    assert main([*two, "--hard-negatives", "3", "--random-negatives", "2"]) == 0
    both = json.loads((voted / "s00.geojson").read_text())
    assert len(both["properties"]["provenance"]["checkpoints"]) == 2
    once = json.loads((out / "s00.geojson").read_text())
    assert [f["geometry"] for f in both["features"]] == [f["geometry"] for f in once["features"]]
    half = [*argv[:5], "--checkpoint", str(ckpt), "--checkpoint", str(ckpt)]
    capsys.readouterr()
    assert main([*half, "--out", str(tmp_path / "half"), "--quiet"]) != 0
    assert "one features folder per checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "half").exists()
    # Voters whose feature files hold other tiles of a slide: refused before any file.
    import shutil

    import h5py

    moved = shutil.copytree(features, tmp_path / "moved")
    with h5py.File(feature_path(moved, data.samples[-1].path), "r+") as h5:
        h5["coords"][0] = h5["coords"][0] + 1
    other = [*argv[:5], "--checkpoint", str(ckpt), "--features", str(moved)]
    capsys.readouterr()
    assert main([*other, "--checkpoint", str(ckpt), "--out", str(tmp_path / "x"), "--quiet"]) != 0
    assert "hold other tiles" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # A checkpoint that reads pixels ranks no cached tiles; nothing is written.
    pixels = tmp_path / "px.safetensors"
    from napari_histattn.models.checkpoint import save
    from napari_histattn.models.registry import create_model

    model = create_model("amil", encoder="tiny", patch_size=12)
    save(pixels, model, class_names=["benign", "lesion"], preprocessing={})
    bad = [*argv[:5], "--checkpoint", str(pixels), "--out", str(tmp_path / "none")]
    assert main(bad) != 0 and not (tmp_path / "none").exists()
