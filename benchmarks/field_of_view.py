"""How far a tile's field of view, against its encoder, tells a lesion from a look-alike.

A linear probe (logistic regression on standardised frozen features) of lesion against
look-alike tiles of generated slides, trained on 5 slides and tested on 3 others (unseen
seeds; 60 tiles of each kind per slide, centred on random pixels of the kind's ground
truth). The rows vary the tile's side at 0.5 um/px (the field of view) and the encoder:
``small_cnn`` and ``resnet18`` with seeded random weights, and ``small_cnn`` with weights
from ``histattn pretrain`` (``--ssl-weights``; at its own 28 px). Both CNNs end in global
pooling, so one module reads every side. Results go to ``RESULTS.md`` between
``<!-- field-of-view:start -->`` and ``<!-- field-of-view:end -->``.

    .venv/bin/python benchmarks/field_of_view.py [--ssl-weights PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
WORK = ROOT / "benchmarks" / "_work" / "field-of-view"
START, END = "<!-- field-of-view:start -->", "<!-- field-of-view:end -->"
LESION, LOOKALIKE = 3, 2  # label_mask values
MPP = 0.5


def _slides() -> list:
    from napari_histattn.io.synthetic import generate_synthetic_slide

    WORK.mkdir(parents=True, exist_ok=True)
    return [
        generate_synthetic_slide(
            WORK / f"s{i}.tiff",
            1024,
            1024,
            seed=700 + i,
            n_lesions=1,
            n_lookalikes=1,
            lesion_radius_px=140,
            mpp=MPP,
        )
        for i in range(8)
    ]


def _split(made_list: list, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from napari_histattn.io.synthetic import class_tiles

    tiles, labels = [], []
    for made in made_list:
        for label in (LESION, LOOKALIKE):
            t = class_tiles(made.path, made.scene, label, side, 60, seed)
            tiles.append(t)
            labels.append(np.full(len(t), float(label == LESION)))
    return np.concatenate(tiles), np.concatenate(labels)


def probe(encoder, train: tuple, test: tuple) -> float:
    """Test accuracy of a logistic regression on the frozen, standardised features."""
    from napari_histattn.training.ssl import frozen_features, linear_probe_accuracy

    xa, xb = frozen_features(encoder, train[0]), frozen_features(encoder, test[0])
    return linear_probe_accuracy(xa, torch.tensor(train[1]), xb, torch.tensor(test[1]))


def main() -> int:
    from features import _machine, _write_section

    from napari_histattn.models.encoders import create_encoder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ssl-weights", type=Path, help="small_cnn weights from histattn pretrain")
    args = parser.parse_args()
    torch.manual_seed(0)
    machine = _machine()
    made = _slides()
    encoders = {"small_cnn": create_encoder("small_cnn"), "resnet18": create_encoder("resnet18")}
    rows = []
    for side in (28, 56, 112, 224):
        train, test = _split(made[:5], side, 0), _split(made[5:], side, 1)
        row = [f"{side} px ({side * MPP:.0f} um)"]
        row += [f"{probe(e, train, test):.2f}" for e in encoders.values()]
        if args.ssl_weights is not None and side == 28:
            row.append(f"{probe(create_encoder('small_cnn', args.ssl_weights), train, test):.2f}")
        else:
            row.append("")
        rows.append(row)
        print(row, file=sys.stderr)
    n_test = len(test[1])
    lines = [
        START,
        "## Field of view against encoder: lesion vs look-alike tiles (`benchmarks/field_of_view.py`)",
        "",
        f"Machine: {machine}. Linear-probe accuracy of lesion against look-alike tiles "
        f"(frozen features; trained on 5 generated slides, tested on {n_test} tiles of 3 "
        "others; 0.5 chance). Random weights are seeded; the SSL column is `histattn pretrain` "
        "(small_cnn, 40 epochs on the small-lesion benchmark's training slides) at its 28 px.",
        "",
        "| tile side at 0.5 um/px | small_cnn, random | resnet18, random | small_cnn, SSL |",
        "|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in rows),
        END,
    ]
    text = "\n".join(lines)
    _write_section(text, START, END)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
