"""Slide-label-only training on cached features, on the synthetic localisation benchmark.

Slides are the benchmark's generated images written as slide files (2,048^2 px at
0.5 um/px; a positive slide has one lesion and two benign look-alikes that match it
at low resolution, a negative slide three look-alikes; training seeds from
``benchmarks/_models/data.py``'s training ranges, test seeds from its unseen test
range). For each encoder, every slide's tissue tiles are encoded once
(``histattn features``), gated A-MIL is trained on the training slides' features from
their slide labels alone (no patch labels, no annotations), and the held-out test
slides are classified from their cached features. Reported per encoder: slide
accuracy and ROC AUC on the test slides, localisation ROC AUC of the attention over
tissue cells (lesion cells against every other tissue cell, and against look-alike
cells alone), attention mass inside the lesion, and the time to extract and to train.

Encoders here have no pretrained weights (none can be downloaded on this machine):
``tiny`` and ``small_cnn`` (this project's CNNs) and ``resnet50_trunc`` with seeded
random weights are the honest no-pretraining baselines. Results go to ``RESULTS.md``
between ``<!-- slide-labels:start -->`` and ``<!-- slide-labels:end -->``.

    .venv/bin/python benchmarks/slide_labels.py [--train 24] [--test 24] [--encoders tiny resnet50_trunc]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
WORK = ROOT / "benchmarks" / "_work" / "slide-labels"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- slide-labels:start -->", "<!-- slide-labels:end -->"


def _slides(n: int, first_seed: int, folder: Path) -> list[tuple[Path, str]]:
    from _models.data import DataSpec, make_image_scene

    from napari_histattn.io.synthetic import write_synthetic_slide
    from napari_histattn.progress import run_to_completion

    spec = DataSpec()
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(n):
        positive = i % 2 == 0
        seed = first_seed + i
        path = folder / f"{'pos' if positive else 'neg'}-{seed}.tiff"
        if not path.exists():
            scene = make_image_scene(spec, seed, positive, radius_um=(150.0, 125.0, 100.0)[i % 3])
            run_to_completion(write_synthetic_slide(path, scene))
        made.append((path, "lesion" if positive else "benign"))
    return made


def _labels(rows: list[tuple[Path, str]], path: Path) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "label", "patient"])
        for slide, label in rows:
            writer.writerow([str(slide), label, slide.stem])
    return path


def grid_labels(result, slide: Path, size: int = 2048) -> np.ndarray:
    """The ground-truth label (0 glass, 2 look-alike, 3 lesion, ...) of every cell of
    ``result``'s grid on a ``size``^2 generated slide, from its ``.mask.png``."""
    from PIL import Image

    mask = np.asarray(Image.open(slide.with_suffix(".mask.png")))
    rows, cols = np.asarray(result.attention).shape
    ys = (np.arange(rows) + 0.5) * result.geometry.stride_l0_xy[1]
    xs = (np.arange(cols) + 0.5) * result.geometry.stride_l0_xy[0]
    sy, sx = mask.shape[0] / size, mask.shape[1] / size
    return mask[
        np.clip((ys * sy).astype(int), 0, mask.shape[0] - 1)[:, None],
        np.clip((xs * sx).astype(int), 0, mask.shape[1] - 1)[None, :],
    ]


def _localisation(result, slide: Path, size: int = 2048, values=None) -> dict[str, float]:
    """Attention mass in the lesion and localisation AUC over tissue cells (and against
    look-alike cells alone) of a ``size``^2 generated slide, from its ``.mask.png``;
    ``values``: another map on the same grid (an explanation) instead of the attention."""
    from napari_histattn.stats import roc_auc_binary

    att = np.asarray(result.attention if values is None else values, dtype=np.float64)
    lab = grid_labels(result, slide, size)
    tissue = np.isfinite(att) & (lab > 0)
    score = np.where(np.isfinite(att), att, 0.0)
    lesion = lab == 3
    out = {"mass": float(score[lesion].sum() / max(score[tissue].sum(), 1e-12))}
    out["auc_tissue"] = roc_auc_binary(lesion[tissue], score[tissue])
    vs = tissue & ((lab == 3) | (lab == 2))
    out["auc_lookalike"] = roc_auc_binary(lesion[vs], score[vs])
    return out


def run_encoder(encoder: str, train: list, test: list) -> dict[str, object]:
    from napari_histattn.cli import main as cli
    from napari_histattn.inference.engine import classify
    from napari_histattn.progress import run_to_completion
    from napari_histattn.stats import roc_auc_binary

    feats = WORK / f"features-{encoder}"
    started = time.perf_counter()
    both = _labels(train + test, WORK / "all.csv")
    assert cli(["features", str(both), "--encoder", encoder, "--out", str(feats), "--quiet"]) == 0
    extract_s = time.perf_counter() - started
    out = WORK / f"run-{encoder}"
    started = time.perf_counter()
    argv = ["train", "--labels", str(_labels(train, WORK / "train.csv")), "--features", str(feats)]
    argv += ["--model", "amil", "--folds", "1", "--val-fraction", "0.25", "--epochs", "40"]
    argv += ["--lr", "2e-3", "--patience", "10", "--batch-size", "4", "--out", str(out), "--quiet"]
    assert cli(argv) == 0
    train_s = time.perf_counter() - started
    ckpt = out / "fold-1" / "model.safetensors"
    probs, labels, loc = [], [], []
    for slide, label in test:
        result = run_to_completion(classify(slide, ckpt, device="cpu", features_dir=feats))
        probs.append(result.probabilities_by_class["lesion"])
        labels.append(label == "lesion")
        if label == "lesion":
            loc.append(_localisation(result, slide))
    p, y = np.asarray(probs), np.asarray(labels)
    return {
        "encoder": encoder,
        "accuracy": float(np.mean((p >= 0.5) == y)),
        "roc_auc": roc_auc_binary(y, p),
        "loc_auc_tissue": float(np.nanmean([m["auc_tissue"] for m in loc])),
        "loc_auc_lookalike": float(np.nanmean([m["auc_lookalike"] for m in loc])),
        "mass_in_lesion": float(np.mean([m["mass"] for m in loc])),
        "extract_s": extract_s,
        "train_s": train_s,
    }


def report(rows: list[dict[str, object]], n_train: int, n_test: int, machine: str) -> str:
    lines = [
        START,
        "## Slide-label-only training on cached features (`benchmarks/slide_labels.py`)",
        "",
        f"Machine: {machine}. {n_train} training slides (half positive; 25 % of them for "
        f"validation and early stopping), {n_test} test slides from unseen seeds, 2,048^2 px at "
        "0.5 um/px, each with three dark regions (a positive has one lesion and two "
        "look-alikes). Supervision: **slide labels only**. Encoders with **no pretraining** "
        "(random or untrained weights: no weights can be downloaded here). Localisation AUC "
        "over tissue cells of the positive test slides.",
        "",
        "| encoder | slide accuracy | ROC AUC | loc. AUC (tissue) | loc. AUC (lesion vs look-alike) "
        "| attention mass in lesion | extract (all slides) | train |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['accuracy']:.2f} | {r['roc_auc']:.2f} | "
            f"{r['loc_auc_tissue']:.2f} | {r['loc_auc_lookalike']:.2f} | "
            f"{r['mass_in_lesion']:.2f} | {r['extract_s']:.0f} s | {r['train_s']:.0f} s |"
        )
    lines += [END]
    return "\n".join(lines)


def main() -> int:
    from _models.data import TEST_SEED_START, TRAIN_SEEDS_BY_RADIUS
    from features import _machine, _write_section

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--test", type=int, default=24)
    parser.add_argument("--encoders", nargs="+", default=["tiny", "small_cnn", "resnet50_trunc"])
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    started = time.perf_counter()
    train = _slides(args.train, min(TRAIN_SEEDS_BY_RADIUS.values()) + 5000, WORK / "train")
    test = _slides(args.test, TEST_SEED_START + 5000, WORK / "test")
    print(f"slides ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    rows = []
    for encoder in args.encoders:
        rows.append(run_encoder(encoder, train, test))
        print(json.dumps(rows[-1]), file=sys.stderr)
    text = report(rows, args.train, args.test, machine)
    (WORK / "last.json").write_text(json.dumps(rows, indent=1))
    _write_section(text, START, END)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
