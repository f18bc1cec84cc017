"""Cached features end to end: extract, resume, train A-MIL from slide labels, classify.

Small generated slides (the ``cohort`` fixture of ``conftest.py``: 1024 x 1024 px at
1 um/px; lesion slides carry one or two lesions, benign slides none) are encoded with the ``tiny`` encoder's seeded random
weights, the no-pretraining baseline that needs no download.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_histattn.inference.errors import Cancelled
from napari_histattn.inference.features import (
    extract_features,
    feature_path,
    is_done,
    read_features,
)
from napari_histattn.inference.patches import read_tiles, rgb_to_tensor
from napari_histattn.io.slide import open_slide
from napari_histattn.models.encoders import create_encoder
from napari_histattn.models.family import subset
from napari_histattn.progress import run_to_completion

#: The ``cohort`` fixture's slides (``conftest.py``).
N_SLIDES = 12


def test_a_feature_file_holds_the_encoders_features_of_every_tissue_tile(
    cohort: tuple[Path, Path], features: Path
) -> None:
    encoder = create_encoder("tiny")
    slide_path = cohort[0] / "s00.tiff"
    made = read_features(feature_path(features, slide_path))
    assert made.encoder["name"] == "tiny" and made.encoder["random_seed"] == 0
    assert made.features.shape == (len(made), 16) and len(made) > 50
    assert made.patch_size == 32 and made.downsample == 1.0
    from napari_histattn.inference.patches import TilePlan

    with open_slide(slide_path) as slide:
        plan = TilePlan(
            made.coords_l0_xy, made.grid_rc, made.grid_shape, 32, 1.0, np.ones(len(made))
        )
        some = np.arange(0, len(made), 17)
        with torch.no_grad():
            direct = encoder.module(rgb_to_tensor(read_tiles(slide, plan, some), *_norm(made)))
        np.testing.assert_allclose(made.features[some], direct.numpy(), rtol=1e-5, atol=1e-5)
        assert is_done(feature_path(features, slide_path), slide, encoder.describe())
        # Another encoder (or other weights) is not the same file.
        assert not is_done(
            feature_path(features, slide_path), slide, create_encoder("tiny", seed=1).describe()
        )


def _norm(made) -> tuple[list[float], list[float]]:
    pre = made.encoder["preprocessing"]
    return pre["mean"], pre["std"]


def test_resume_skips_done_slides_and_redoes_a_torn_one(
    cohort: tuple[Path, Path], features: Path, tmp_path: Path
) -> None:
    from napari_histattn.cli import main

    out = tmp_path / "again"
    out.mkdir()
    for name in ("s00", "s01"):
        (out / f"{name}.h5").write_bytes(feature_path(features, f"{name}.tiff").read_bytes())
    (out / "s02.h5").write_bytes(b"\x89HDF\r\n\x1a\n torn")  # a half-written file
    subset = tmp_path / "three.csv"
    subset.write_text(
        "slide,label\n" + "".join(f"{cohort[0] / f's0{i}.tiff'},x\n" for i in range(3))
    )
    assert main(["features", str(subset), "--encoder", "tiny", "--out", str(out), "--quiet"]) == 0
    with (out / "features_summary.csv").open() as fh:
        status = {Path(r["slide"]).stem: r["status"] for r in csv.DictReader(fh)}
    assert status == {"s00": "skipped (done)", "s01": "skipped (done)", "s02": "ok"}
    assert len(read_features(out / "s02.h5")) == len(read_features(feature_path(features, "s02")))


def test_a_cancelled_or_killed_extraction_leaves_nothing_taken_as_done(
    cohort: tuple[Path, Path], tmp_path: Path
) -> None:
    slide_path = cohort[0] / "s03.tiff"
    target = tmp_path / "s03.h5"
    cancel = threading.Event()
    encoder = create_encoder("tiny")
    with open_slide(slide_path) as slide:
        gen = extract_features(slide, encoder, target, batch_size=8, cancel=cancel)
        next(gen), next(gen)
        cancel.set()
        with pytest.raises(Cancelled):
            run_to_completion(gen)
        assert not target.exists() and not list(tmp_path.glob(".*partial"))

    # SIGKILL in the middle: the partial file stays, and is never taken as done.
    code = (
        "import sys, time\n"
        "from napari_histattn.inference.features import extract_features\n"
        "from napari_histattn.io.slide import open_slide\n"
        "from napari_histattn.models.encoders import create_encoder\n"
        "enc = create_encoder('tiny')\n"
        "with open_slide(sys.argv[1]) as s:\n"
        "    for p in extract_features(s, enc, sys.argv[2], batch_size=1, workers=1):\n"
        "        if p.done == 5: print('started', flush=True)\n"
        "        time.sleep(0.05)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(slide_path), str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not target.exists()
    with open_slide(slide_path) as slide:
        assert not is_done(target, slide, encoder.describe())
        made = run_to_completion(extract_features(slide, encoder, target))  # the rerun completes
    assert len(made) > 0 and not list(tmp_path.glob(".*partial"))


@pytest.mark.slow
def test_amil_trained_on_cached_features_from_slide_labels_beats_chance_and_classifies(
    cohort: tuple[Path, Path], features: Path, tmp_path: Path
) -> None:
    from napari_histattn.cli import main
    from napari_histattn.inference.engine import classify

    out = tmp_path / "run"
    started = time.perf_counter()
    argv = ["train", "--labels", str(cohort[1]), "--features", str(features), "--model", "amil"]
    argv += ["--out", str(out), "--folds", "3", "--epochs", "30", "--lr", "3e-3", "--quiet"]
    argv += ["--patience", "0", "--batch-size", "4", "--device", "cpu"]
    assert main(argv) == 0
    seconds = time.perf_counter() - started
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == N_SLIDES  # every slide tested once, on held-out folds
    assert metrics["accuracy"] > 0.5 and metrics["roc_auc"] > 0.5, metrics
    assert seconds < 300

    ckpt = out / "fold-1" / "model.safetensors"
    from napari_histattn.models.checkpoint import load

    loaded = load(ckpt, device="cpu")
    pre = loaded.preprocessing
    assert pre["input"] == "features" and pre["feature_encoder"]["name"] == "tiny"
    slide = cohort[0] / "s00.tiff"
    cached = run_to_completion(classify(slide, ckpt, device="cpu", features_dir=features))
    fresh = run_to_completion(classify(slide, ckpt, device="cpu"))
    assert any("features read from" in m for m in cached.provenance["messages"])
    assert not any("features read from" in m for m in fresh.provenance["messages"])
    np.testing.assert_allclose(cached.attention, fresh.attention, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cached.probabilities, fresh.probabilities, atol=1e-5)
    # The bag is read from the file and pooled 7 tiles at a time (evenly spaced rows when
    # capped): the same as the whole bag through forward_features at once.
    whole = read_features(feature_path(features, slide)).features
    for n_patches in (0, 40):
        chunked = run_to_completion(
            classify(
                slide, ckpt, device="cpu", features_dir=features, batch_size=7, n_patches=n_patches
            )
        )
        rows = np.arange(len(whole)) if n_patches == 0 else subset(len(whole), n_patches)
        with torch.inference_mode():
            one_pass = loaded.model.forward_features(torch.from_numpy(whole[rows])[None])
        probs = torch.softmax(one_pass.logits.double(), dim=1)[0].numpy()
        np.testing.assert_allclose(chunked.probabilities, probs, atol=1e-5)
        on_tiles = chunked.attention[np.isfinite(chunked.attention)]
        assert on_tiles.size == len(rows)
        np.testing.assert_allclose(
            np.sort(on_tiles), np.sort(one_pass.attention[0].numpy()), rtol=1e-4, atol=1e-7
        )

    # features/ beside the slide is looked in by default (so the widget finds them).
    beside = cohort[0] / "features"
    beside.mkdir(exist_ok=True)
    (beside / "s00.h5").write_bytes(feature_path(features, slide).read_bytes())
    try:
        found = run_to_completion(classify(slide, ckpt, device="cpu"))
    finally:
        (beside / "s00.h5").unlink()
    assert any(str(beside) in m for m in found.provenance["messages"])

    # The encoder fixes the tile size: patch_size does not apply, the widget hides it.
    from napari_histattn._napari.checkpoints import checkpoint_defaults, describe_checkpoint

    defaults = checkpoint_defaults(describe_checkpoint(ckpt))
    assert "patch_size" not in defaults.values and "n_patches" in defaults.values
    ignored = run_to_completion(
        classify(slide, ckpt, device="cpu", features_dir=features, patch_size=64)
    )
    assert any("'patch_size' does not apply" in m for m in ignored.provenance["messages"])
    np.testing.assert_allclose(ignored.attention, cached.attention)


def test_hatnet_trains_on_cached_features_with_tile_positions_and_shows_both_levels(
    cohort: tuple[Path, Path], features: Path, tmp_path: Path
) -> None:
    import json

    from napari_histattn.cli import main
    from napari_histattn.inference.engine import classify
    from napari_histattn.inference.outputs import write_outputs

    out = tmp_path / "run"
    argv = ["train", "--labels", str(cohort[1]), "--features", str(features), "--model", "hatnet"]
    argv += ["--config", "region_size=2", "--config", "n_heads=2", "--config", "attn_dim=16"]
    argv += ["--out", str(out), "--folds", "3", "--epochs", "30", "--lr", "3e-3", "--quiet"]
    argv += ["--patience", "0", "--batch-size", "4", "--device", "cpu"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == N_SLIDES
    assert metrics["accuracy"] > 0.5 and metrics["roc_auc"] > 0.5, metrics

    ckpt = out / "fold-1" / "model.safetensors"
    slide = cohort[0] / "s00.tiff"
    result = run_to_completion(classify(slide, ckpt, device="cpu", features_dir=features))
    assert result.family == "hatnet" and set(result.attention_maps) == {"word", "region"}
    tiles = np.isfinite(result.attention)
    for name in ("word", "region"):
        assert (np.isfinite(result.attention_maps[name]) == tiles).all()
    # Each tile's attention is its word attention times its region's.
    np.testing.assert_allclose(
        result.attention[tiles],
        result.attention_maps["word"][tiles] * result.attention_maps["region"][tiles],
        rtol=1e-5,
    )
    assert result.attention[tiles].sum() == pytest.approx(1.0, abs=1e-4)
    assert result.provenance["n_regions"] > 1 and result.provenance["region_size"] == 2
    shown = f"attention = word x region ({result.provenance['n_regions']} regions of 2 x 2 tiles)"
    assert any(line.startswith(shown) for line in result.evidence_lines())
    with open_slide(slide) as opened:
        written = write_outputs(result, opened, tmp_path / "outputs")
    word = np.load(written["attention_word"])
    np.testing.assert_array_equal(word, result.attention_maps["word"])
    assert written["attention_region_heatmap"].name == "attention-region.png"


@pytest.mark.gui
@pytest.mark.slow
def test_a_features_trained_checkpoint_classifies_in_the_widget(
    make_napari_viewer, qtbot, cohort: tuple[Path, Path], features: Path, tmp_path: Path
) -> None:
    from napari_histattn.cli import main

    out = tmp_path / "run"
    argv = ["train", "--labels", str(cohort[1]), "--features", str(features), "--model", "amil"]
    argv += ["--out", str(out), "--folds", "1", "--epochs", "3", "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    viewer = make_napari_viewer()
    viewer.open(str(cohort[0] / "s00.tiff"), plugin="napari-histattn")
    _, widget = viewer.window.add_plugin_dock_widget("napari-histattn", "Classify with attention")
    assert widget.add_checkpoint(out / "fold-1" / "model.safetensors")
    widget.device.value = "cpu"
    widget.run_classify()
    qtbot.waitUntil(lambda: widget.is_idle, timeout=120_000)
    assert widget.status.value == "done"
    result = widget.result_for()
    assert result is not None and result.family == "mil"
    assert widget.params["patch_size"].native.isHidden()  # the encoder's tiles are fixed
    assert "heatmap" in widget.result_layers()
    assert result.attention.shape == read_features(feature_path(features, "s00")).grid_shape


def test_a_small_cnn_reads_a_larger_field_end_to_end(
    cohort: tuple[Path, Path], features: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--tile-size`` for the small CNNs: the cache, its resume check, training and a
    classify that encodes afresh all use the larger tile."""
    from napari_histattn.cli import main
    from napari_histattn.inference.engine import classify

    out = tmp_path / "wide"
    argv = ["features", str(cohort[1]), "--encoder", "tiny", "--out", str(out), "--quiet"]
    assert main([*argv, "--tile-size", "48"]) == 0
    slide = cohort[0] / "s00.tiff"
    made = read_features(feature_path(out, slide))
    assert made.patch_size == 48 and made.encoder["preprocessing"]["input_size"] == 48
    assert len(made) < len(read_features(feature_path(features, slide)))
    wide = create_encoder("tiny", input_size=48)
    with open_slide(slide) as opened:
        assert is_done(feature_path(out, slide), opened, wide.describe())
        assert not is_done(feature_path(out, slide), opened, create_encoder("tiny").describe())
    run = tmp_path / "run"
    train = ["train", "--labels", str(cohort[1]), "--features", str(out), "--model", "amil"]
    train += ["--out", str(run), "--folds", "1", "--val-fraction", "0.25", "--epochs", "3"]
    assert main([*train, "--batch-size", "4", "--device", "cpu", "--quiet"]) == 0
    ckpt = run / "fold-1" / "model.safetensors"
    cached = run_to_completion(classify(slide, ckpt, device="cpu", features_dir=out))
    fresh = run_to_completion(classify(slide, ckpt, device="cpu"))
    assert not any("features read from" in m for m in fresh.provenance["messages"])
    assert fresh.attention.shape == cached.attention.shape
    np.testing.assert_allclose(fresh.attention, cached.attention, rtol=1e-4, atol=1e-6)
    # Encoders trained at a fixed size refuse another, before any slide is read.
    capsys.readouterr()
    assert (
        main(
            [
                "features",
                str(slide),
                "--encoder",
                "resnet18",
                "--out",
                str(tmp_path / "x"),
                "--tile-size",
                "112",
                "--quiet",
            ]
        )
        != 0
    )
    assert "takes no other tile size" in capsys.readouterr().err
    # A misspelt encoder is a clear error too, not a traceback.
    assert (
        main(["features", str(slide), "--encoder", "small-cnn", "--out", str(tmp_path / "x")]) != 0
    )
    assert "unknown patch encoder 'small-cnn'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least"):
        create_encoder("small_cnn", input_size=8)
