"""``histattn synth``: write a synthetic H&E slide with its ground truth."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import seed_arg

_SIZE = re.compile(r"^\s*(\d+)\s*[xX*,]\s*(\d+)\s*$")


def _size(text: str) -> tuple[int, int]:
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 20000x20000, got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if w < 64 or h < 64:
        raise argparse.ArgumentTypeError(f"size must be at least 64x64 px, got {w}x{h}")
    return w, h


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def register(subparsers: Any) -> None:
    from napari_histattn.io.synthetic.scene import DIFFUSE_KINDS

    p = subparsers.add_parser(
        "synth",
        help="write a synthetic H&E slide (pyramidal TIFF) with lesion ground truth",
        description=(
            "Write a synthetic H&E-like whole-slide image as a JPEG pyramidal TIFF that "
            "OpenSlide opens as generic-tiff, with <stem>.geojson (lesion, look-alike and "
            "tissue polygons in level-0 pixels), <stem>.mask.png (0 glass, 1 tissue, "
            "2 look-alike, 3 lesion) and <stem>.json (scene, mpp, seed, levels) beside it."
        ),
    )
    p.add_argument("out", type=Path, help="output .tiff path")
    p.add_argument(
        "--size",
        type=_size,
        default=(20000, 20000),
        metavar="WxH",
        help="level-0 size in px (default 20000x20000)",
    )
    p.add_argument(
        "--lesions", type=_non_negative_int, default=2, help="number of lesions (default 2)"
    )
    p.add_argument(
        "--lesion-radius",
        type=_positive_float,
        default=None,
        metavar="PX",
        help="mean lesion radius in level-0 px (default 200 um)",
    )
    p.add_argument(
        "--lookalikes",
        type=_non_negative_int,
        default=2,
        help="number of benign look-alikes (default 2)",
    )
    p.add_argument(
        "--lookalike-radius",
        type=_positive_float,
        default=None,
        metavar="PX",
        help="mean look-alike radius (default: lesion radius)",
    )
    p.add_argument(
        "--diffuse", choices=DIFFUSE_KINDS, default=None, help="diffuse variant of the whole tissue"
    )
    p.add_argument(
        "--tissue-fraction",
        type=_positive_float,
        default=0.6,
        help="fraction of the image covered by tissue (default 0.6)",
    )
    p.add_argument(
        "--mpp",
        type=_positive_float,
        default=0.5,
        help="micrometres per level-0 pixel (default 0.5)",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="random seed (default 0)")
    p.add_argument(
        "--tile-size",
        type=_positive_int,
        default=256,
        help="TIFF tile size, a multiple of 16 (default 256)",
    )
    p.add_argument(
        "--quality", type=_positive_int, default=85, help="JPEG quality 1-100 (default 85)"
    )
    p.add_argument(
        "--levels",
        type=_positive_int,
        default=None,
        help="pyramid levels (default: down to <= 1024 px)",
    )
    p.add_argument(
        "--workers", type=_positive_int, default=1, help="rendering processes (default 1)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_histattn.io.synthetic import make_scene, write_synthetic_slide
    from napari_histattn.progress import run_with_tqdm

    width, height = args.size
    scene = make_scene(
        width,
        height,
        n_lesions=args.lesions,
        lesion_radius_px=args.lesion_radius,
        n_lookalikes=args.lookalikes,
        lookalike_radius_px=args.lookalike_radius,
        diffuse=args.diffuse,
        tissue_fraction=args.tissue_fraction,
        mpp=args.mpp,
        seed=args.seed,
    )
    start = time.perf_counter()
    slide = run_with_tqdm(
        write_synthetic_slide(
            args.out,
            scene,
            tile_size=args.tile_size,
            jpeg_quality=args.quality,
            levels=args.levels,
            workers=args.workers,
        ),
        disable=args.quiet,
    )
    elapsed = time.perf_counter() - start
    dims = " ".join(f"{w}x{h}" for w, h in slide.level_dimensions)
    print(f"wrote {slide.path} ({dims} px, mpp {scene.mpp}) in {elapsed:.1f} s")
    print(
        f"ground truth: {slide.geojson_path.name}, {slide.mask_path.name}, {slide.meta_path.name}"
    )
    return 0
