"""``histattn finetune``: fine-tune an A-MIL checkpoint on your corrections of one slide.

``CORRECTIONS`` is the classify widget's review export of ``SLIDE``
(``<slide stem>_regions.geojson``: the model's regions with your decisions and your own
outlines; QuPath's GeoJSON with classes works too). Accepted and reclassified regions
and your outlines label their tiles with their class; in a two-class model a rejected
region labels its tiles as the other class. The encoder is kept; the attention and the
head learn that the slide is of its class, what each marked tile is, and that your
positive marks deserve the attention more than your other marks and (at
``--unmarked-weight``) than unmarked tissue. The new checkpoint records where it came
from and the localisation against your marks before and after::

    histattn finetune sample_data/demo_amil.safetensors slide.svs slide_regions.geojson \\
        --out demo_amil+slide.safetensors

Those numbers are measured on the marks the model was fitted to: they say the
correction took, not how the model does on other slides (classify those to see).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import add_command, seed_arg


def register(subparsers: Any) -> None:
    """Add the ``finetune`` subcommand."""
    parser = add_command(
        subparsers,
        "finetune",
        "fine-tune an A-MIL checkpoint on your corrections of one slide",
        __doc__,
    )
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    parser.add_argument("slide", type=Path, metavar="SLIDE")
    parser.add_argument("corrections", type=Path, metavar="CORRECTIONS.geojson")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="CHECKPOINT.safetensors",
        help="default: <checkpoint stem>+<slide stem>.safetensors beside the slide",
    )
    parser.add_argument("--epochs", type=int, default=100, help="optimiser steps")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:<i> or mps")
    parser.add_argument(
        "--slide-class", metavar="NAME", help="the slide's class (needed with 3+ classes)"
    )
    parser.add_argument(
        "--mpp", type=float, metavar="UM", help="the slide's um/px, for files that record none"
    )
    parser.add_argument(
        "--unmarked-weight",
        type=float,
        default=0.5,
        help="weight of unmarked tissue as not-positive for the attention (0: only your marks)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_histattn.errors import HistattnError
    from napari_histattn.progress import run_with_tqdm
    from napari_histattn.training.corrections import fine_tune_on_corrections

    for what, path in (("checkpoint", args.checkpoint), ("slide", args.slide)):
        if not path.exists():
            raise HistattnError(f"{what} {path} does not exist")
    if not args.corrections.is_file():
        raise HistattnError(f"corrections {args.corrections} is not a file")
    if args.out is not None and args.out.is_dir():
        raise HistattnError(f"--out {args.out} is a folder; give a .safetensors file name")
    result = run_with_tqdm(
        fine_tune_on_corrections(
            args.checkpoint,
            args.slide,
            args.corrections,
            args.out,
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            slide_class=args.slide_class,
            slide_mpp=args.mpp,
            unmarked_weight=args.unmarked_weight,
        ),
        disable=args.quiet,
    )
    marked = ", ".join(f"{k} {v}" for k, v in result.record["marked_tiles"].items())
    print(f"marked tiles: {marked} of {result.record['tissue_tiles']} tissue tiles")
    print(result.summary())
    print(f"wrote {result.checkpoint_path}")
    return 0
