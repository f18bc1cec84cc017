"""``histattn pretrain``: self-supervised (SimCLR) pretraining of an encoder on your own slides.

``SLIDES`` is a slide, a folder of slides or a CSV listing them (labels, if the
CSV has them, are not read). Tissue tiles are sampled across the slides at the
encoder's input size and resolution, and the encoder learns from two augmented
views of each tile (crops, flips and 90-degree rotations, colour and H&E stain
jitter, blur); no label of any kind is used. The encoder's weights are written
to ``--out`` (safetensors plus a JSON sidecar with the settings and the loss per
epoch) and load like any weights::

    histattn pretrain slides/ --encoder small_cnn --out ssl/small_cnn.safetensors
    histattn features labels.csv --encoder small_cnn --encoder-weights ssl/small_cnn.safetensors --out feats/
    histattn train --labels labels.csv --features feats/ --model amil --out runs/ssl

On a 2-core CPU, 40 epochs of ``small_cnn`` over 6,144 tiles (24 slides, 256
each) took 471 s, with other work on the machine (``--epochs`` and
``--tiles-per-slide`` set the cost); CUDA is used when present. Deterministic
from ``--seed``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import add_command, seed_arg


def register(subparsers: Any) -> None:
    """Add the ``pretrain`` subcommand."""
    parser = add_command(
        subparsers,
        "pretrain",
        "self-supervised pretraining of an encoder on unlabelled tiles of your slides",
        __doc__,
    )
    parser.add_argument("slides", type=Path, metavar="SLIDES", help="a slide, a folder or a CSV")
    parser.add_argument(
        "--encoder", required=True, metavar="NAME", help="tiny, small_cnn, resnet18, ..."
    )
    parser.add_argument("--out", required=True, type=Path, metavar="ENCODER.safetensors")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128, help="tiles per batch (2x views)")
    parser.add_argument("--tiles-per-slide", type=int, default=256)
    parser.add_argument(
        "--tile-size",
        type=int,
        metavar="PX",
        help="tile side for the small CNNs, which read any size (give the same to "
        "`histattn features`; default: their own)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:<i> or mps")
    parser.add_argument(
        "--init-weights",
        type=Path,
        metavar="PATH",
        help="start from these weights (for example ImageNet ResNet-18) instead of random ones",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_histattn.cli.features import _slides
    from napari_histattn.errors import HistattnError
    from napari_histattn.models.encoders import create_encoder
    from napari_histattn.progress import run_with_tqdm
    from napari_histattn.training.ssl import PretrainConfig, pretrain, sample_tiles

    if args.out.exists() and args.out.is_dir():
        raise HistattnError(f"--out {args.out} is a folder; give a .safetensors file name")
    try:
        config = PretrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            temperature=args.temperature,
            tiles_per_slide=args.tiles_per_slide,
            seed=args.seed,
            device=args.device,
            tile_size=args.tile_size,
        )
        probe = create_encoder(args.encoder, input_size=args.tile_size)  # tile size and mpp
    except ValueError as exc:
        raise HistattnError(str(exc)) from exc
    slides = _slides(args.slides)
    if not slides:
        raise HistattnError(f"no slides found in {args.slides}")
    tiles = run_with_tqdm(
        sample_tiles(slides, probe, config.tiles_per_slide, config.seed), disable=args.quiet
    )
    print(f"{len(tiles)} tiles from {len(slides)} slide(s)", file=sys.stderr)
    if len(tiles) < config.batch_size:
        raise HistattnError(
            f"{len(tiles)} tiles is fewer than one batch of {config.batch_size}: lower "
            "--batch-size or add slides"
        )
    try:
        result = run_with_tqdm(
            pretrain(
                args.encoder,
                tiles,
                config,
                out_path=args.out,
                init_weights=args.init_weights,
                provenance={"slides": [str(p) for p in slides]},
            ),
            disable=args.quiet,
        )
    except FloatingPointError as exc:
        raise HistattnError(f"pretraining failed: {exc}") from exc
    print(
        f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f} over {config.epochs} epochs "
        f"in {result.seconds:.0f} s; wrote {result.path}"
    )
    return 0
