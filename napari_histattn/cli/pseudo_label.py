"""``histattn pseudo-label``: the tiles a slide-label model is surest of, as annotations.

A two-class A-MIL trained from slide labels on cached features (best with
``--instance-mil``) ranks every tile of each slide. This writes one
``<slide stem>.geojson`` per slide of the labels CSV into ``--out``. A positive slide gets
its ``--top-k`` most suspicious tiles, labelled the positive class. A benign slide gets its
``--hard-negatives`` most suspicious tiles (the look-alikes the model confuses) and
``--random-negatives`` other tissue tiles, labelled benign. ``histattn train --annotations``
reads the result like a pathologist's outlines, so a patch encoder learns from them (stage 1
on balanced tiles), then the slide model learns from slide labels::

    histattn train --labels labels.csv --features feats/ --model amil --instance-mil 5 \\
        --instance-top-k 3 --out run-im/
    histattn pseudo-label --labels labels.csv --features feats/ \\
        --checkpoint run-im/fold-1/model.safetensors --out pseudo/
    histattn train --labels labels.csv --model amil --annotations pseudo/ --stage1-epochs 10 \\
        --stage1-tiles 128 --freeze-encoder --config topk_loss_weight=0.5 --out run/

Two models that err differently vote: ``--features feats-random/ --checkpoint
run-random/fold-1/model.safetensors --features feats-ssl/ --checkpoint
run-ssl/fold-1/model.safetensors`` ranks each tile by the sum of its two ranks (the
folders must hold the same tiles: one tile size and tissue setting).

Still slide labels only: no person outlined anything. Open a GeoJSON on its slide to see
which tiles will teach the encoder; each carries its tile margin.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import add_command, seed_arg


def register(subparsers: Any) -> None:
    """Add the ``pseudo-label`` subcommand."""
    parser = add_command(
        subparsers,
        "pseudo-label",
        "annotations from a slide-label model's surest tiles, for a patch encoder to learn from",
        __doc__,
    )
    parser.add_argument("--labels", required=True, type=Path, help="CSV of slide,label[,patient]")
    parser.add_argument(
        "--features",
        required=True,
        type=Path,
        action="append",
        metavar="DIR",
        help="the cached features (once per --checkpoint, in the same order)",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        action="append",
        help="a two-class amil checkpoint trained on those features; give several (each "
        "with its --features) and they vote: tiles rank by the sum of the models' ranks",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR")
    parser.add_argument("--top-k", type=int, default=3, help="tiles per positive slide")
    parser.add_argument(
        "--hard-negatives", type=int, default=8, help="most suspicious tiles per benign slide"
    )
    parser.add_argument(
        "--random-negatives", type=int, default=8, help="other tissue tiles per benign slide"
    )
    parser.add_argument("--seed", type=seed_arg, default=0, help="for the random negatives")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_histattn.progress import run_with_tqdm
    from napari_histattn.training.datasets import load_layout
    from napari_histattn.training.pseudo_labels import PseudoLabelConfig, pseudo_annotations

    config = PseudoLabelConfig(
        top_k=args.top_k,
        hard_negatives=args.hard_negatives,
        random_negatives=args.random_negatives,
        seed=args.seed,
    )
    data = load_layout(args.labels, "slides")
    summary = run_with_tqdm(
        pseudo_annotations(args.checkpoint, data, args.features, args.out, config),
        disable=args.quiet,
    )
    tiles = ", ".join(f"{n} {name}" for name, n in summary["tiles"].items())
    print(f"{summary['slides']} slides: {tiles} tiles; wrote {args.out}", file=sys.stderr)
    return 0
