"""``histattn evaluate``: score a checkpoint on labelled data, writing metrics JSON and plots."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import seed_arg
from napari_histattn.cli.train import add_data_arguments


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint on labelled data",
        description=(
            "Rebuild the inputs from the checkpoint's preprocessing, predict every sample, and "
            "write metrics.json, roc.png, confusion_matrix.png and predictions.csv."
        ),
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help=".safetensors checkpoint")
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--seed",
        type=seed_arg,
        help="attention sampling: sampling seed (default: the training one)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_histattn.cli.train import load_data
    from napari_histattn.progress import run_with_tqdm
    from napari_histattn.training.experiment import evaluate_checkpoint

    data = load_data(args, min_classes=1)
    result = run_with_tqdm(
        evaluate_checkpoint(
            args.checkpoint,
            data,
            args.out,
            batch_size=args.batch_size,
            device=args.device,
            seed=args.seed,
            features_dir=args.features,
        ),
        disable=args.quiet,
    )
    m = result.metrics
    auc = m["roc_auc"]
    print(
        f"{m['n']} samples: accuracy {m['accuracy']:.3f}, balanced accuracy "
        f"{m['balanced_accuracy']:.3f}, ROC AUC {'n/a' if auc != auc else f'{auc:.3f}'}"
        + (f", patient accuracy {m['patient_accuracy']:.3f}" if "patient_accuracy" in m else "")
    )
    print(f"wrote {args.out / 'metrics.json'}")
    return 0
