"""``histattn pyramid``: write a tiled pyramidal TIFF of an image that has no pyramid.

An image without a pyramid (a scanner's flat export, a stitched mosaic, a large
PNG) has no overview: every zoomed-out view, thumbnail and tissue mask needs all
of its pixels. Above 2^30 px (about 32,768^2) napari-histattn refuses to compute
one and asks for this copy instead. It reads level 0 once, in bands of one tile
row, and writes a JPEG (or lossless deflate) tiled TIFF with levels halved down
to 1024 px and the source's resolution, in memory bounded by one tile row per
level. The output is written under a temporary name and renamed when complete.

Example:

    histattn pyramid scan.tif scan.pyramid.tiff
    histattn pyramid mosaic.png mosaic.pyramid.tiff --compression deflate
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import add_command


def _quality(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"JPEG quality is within 1-100, got {value}")
    return value


def _tile(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 16 or value % 16 or value > 4096:
        raise argparse.ArgumentTypeError(
            f"a tile size is a multiple of 16 within 16-4096, got {value}"
        )
    return value


def register(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        "pyramid",
        help="write a tiled pyramidal TIFF of an image that has no pyramid",
        description=__doc__,
    )
    p.add_argument("source", type=Path, help="the slide or image to copy")
    p.add_argument("out", type=Path, help="the pyramidal .tiff to write")
    p.add_argument(
        "--compression",
        choices=("jpeg", "deflate"),
        default="jpeg",
        help="tile codec: jpeg (default, small) or deflate (lossless, large)",
    )
    p.add_argument("--quality", type=_quality, default=90, help="JPEG quality (default 90)")
    p.add_argument("--tile-size", type=_tile, default=256, help="tile edge in px (default 256)")
    p.add_argument(
        "--level-factor", type=int, choices=(2, 4), default=2, help="downsample between levels"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_histattn.io.pyramid import write_pyramid
    from napari_histattn.io.slide import open_slide
    from napari_histattn.progress import run_with_tqdm

    start = time.perf_counter()
    out = run_with_tqdm(
        write_pyramid(
            args.source,
            args.out,
            tile_size=args.tile_size,
            level_factor=args.level_factor,
            compression=args.compression,
            jpeg_quality=args.quality,
            overwrite=args.overwrite,
        ),
        disable=args.quiet,
    )
    with open_slide(out) as slide:
        levels = " ".join(f"{w}x{h}" for w, h in slide.level_dimensions)
        mpp = "unknown" if slide.mpp_xy is None else f"{slide.mpp_xy[0]:.4g} um/px"
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s: levels {levels}, mpp {mpp}")
    return 0
