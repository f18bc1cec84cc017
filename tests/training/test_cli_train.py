"""`histattn train` and `histattn evaluate` end to end on the Kather sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_histattn.cli import main
from napari_histattn.models import checkpoint


@pytest.fixture(scope="module")
def kather_run(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("kfold")
    argv = [
        "train",
        "--data", str(shared_data / "patches" / "kather2016-sample"),
        "--layout", "imagefolder",
        "--model", "dafl_cnn",
        "--config", "backbone=vgg_small",
        "--config", "sattn_positions=[-1]",
        "--image-size", "32",
        "--epochs", "1",
        "--folds", "3",
        "--batch-size", "8",
        "--lr", "1e-3",
        "--seed", "5",
        "--device", "cpu",
        "--quiet",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def test_kfold_cli_writes_checkpoints_metrics_and_plots(kather_run):
    metrics = json.loads((kather_run / "metrics.json").read_text())
    assert metrics["folds"] == 3 and len(metrics["per_fold"]) == 3
    assert metrics["n"] == 24  # every image tested exactly once
    assert np.asarray(metrics["confusion_matrix"]).sum() == 24
    assert set(metrics["fold_mean"]) >= {"accuracy", "balanced_accuracy", "loss"}
    for png in ("roc.png", "confusion_matrix.png"):
        with Image.open(kather_run / png) as im:
            assert im.format == "PNG"
    tested: list[str] = []
    for fold in (1, 2, 3):
        folder = kather_run / f"fold-{fold}"
        loaded = checkpoint.load(folder / "model.safetensors", device="cpu")
        assert loaded.model_name == "dafl_cnn"
        assert loaded.config["sattn_positions"] == [-1]
        assert len(loaded.class_names) == 8 and loaded.class_names[0] == "01_TUMOR"
        assert loaded.preprocessing["image_size"] == 32
        assert len(loaded.preprocessing["mean"]) == 3
        assert loaded.metadata["training"]["seed"] == 5
        assert loaded.metadata["training"]["fold"] == fold
        for png in ("roc.png", "confusion_matrix.png"):
            assert (folder / png).stat().st_size > 1000
        rows = (folder / "test.csv").read_text().splitlines()[1:]
        tested += [row.split(",")[0] for row in rows]
        fold_metrics = json.loads((folder / "metrics.json").read_text())
        assert fold_metrics["n"] == len(rows)
    # patient-wise folds: the test parts partition the data
    assert len(tested) == len(set(tested)) == 24


def test_evaluate_cli_reproduces_fold_metrics(kather_run, tmp_path):
    fold = kather_run / "fold-2"
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--checkpoint", str(fold / "model.safetensors"),
        "--data", str(fold / "test.csv"),
        "--layout", "csv",
        "--device", "cpu",
        "--quiet",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    original = json.loads((fold / "metrics.json").read_text())
    again = json.loads((out / "metrics.json").read_text())
    for key in ("n", "accuracy", "balanced_accuracy", "confusion_matrix"):
        assert again[key] == original[key], key
    assert again["roc_auc"] == pytest.approx(original["roc_auc"])
    assert again["loss"] == pytest.approx(original["loss"], rel=1e-5)
    assert (out / "roc.png").exists() and (out / "confusion_matrix.png").exists()


@pytest.mark.parametrize(
    ("layout", "files", "expected"),
    [
        ("imagefolder", [], "no class sub-folders"),
        ("imagefolder", ["only/a.png", "only/b.png"], "one class"),
        ("breakhis", ["SOB_B_A-14-22549AB-40-001.png", "scan 7.png"], "scan 7.png"),
    ],
)
def test_train_cli_clear_errors(tmp_path, capsys, layout, files, expected):
    data = tmp_path / "data"
    data.mkdir()
    for name in files:
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="PNG")
    argv = ["train", "--data", str(data), "--layout", layout, "--model", "dafl_cnn"]
    argv += ["--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "histattn train: error:" in err and expected in err
    assert not (tmp_path / "out").exists()


def test_breakhis_cli_reports_patient_level_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "BreaKHis"
    data.mkdir()
    patients = [
        ("B", "A", "22549AB"),
        ("B", "F", "9133"),
        ("M", "DC", "2523"),
        ("M", "LC", "12204"),
    ]
    for cls, kind, slide in patients:
        for seq in range(1, 4):
            for mag in (40, 100):
                name = f"SOB_{cls}_{kind}-14-{slide}-{mag}-{seq:03d}.png"
                pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(data / name)
    out = tmp_path / "out"
    argv = ["train", "--data", str(data), "--layout", "breakhis", "--magnification", "40"]
    argv += ["--model", "dafl_cnn", "--config", "backbone=vgg_small", "--image-size", "16"]
    argv += ["--folds", "2", "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 12  # 40x only
    assert metrics["n_patients"] == 4
    assert set(metrics["patients"]) == {"14-22549AB", "14-9133", "14-2523", "14-12204"}
    assert metrics["patients"]["14-2523"]["label"] == "malignant"
    votes = [p["label"] == p["predicted"] for p in metrics["patients"].values()]
    assert metrics["patient_accuracy"] == pytest.approx(np.mean(votes))
    for fold in metrics["per_fold"]:
        assert fold["n_patients"] == 2  # two whole patients per test fold
