"""A pyramidal copy of a slide that has none (``histattn pyramid``).

An image without a pyramid has no overview: every zoomed-out view, thumbnail and
tissue mask needs all of its level-0 pixels decoded. Up to
:data:`~napari_histattn.io.limits.MAX_OVERVIEW_SOURCE_PIXELS` the slide computes
its overview levels on demand (:mod:`napari_histattn.io.levels`); beyond that one
overview would take minutes, so the slide refuses to build one and points here.
:func:`write_pyramid` reads level 0 once, in bands of one tile row, and streams a
tiled pyramidal TIFF (JPEG or lossless deflate) with the source's resolution, in
memory bounded by one tile row per level.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator
from functools import partial
from pathlib import Path

import numpy as np

from napari_histattn.io.slide import Slide, open_slide
from napari_histattn.io.tiff_writer import (
    Encoder,
    LevelBuilder,
    TiffStreamWriter,
    TiffWriteError,
    downsample_mean,
    encode_deflate,
    encode_jpeg,
    level_builders,
)
from napari_histattn.progress import Progress

#: Grey value of the padding beyond the image (what a read outside a slide returns).
_WHITE = 255
#: Level-0 pixels read per call (a band is read in pieces of at most this many columns).
_READ_COLUMNS = 8192


def pyramid_dimensions(
    width: int, height: int, factor: int, smallest: int = 1024
) -> list[tuple[int, int]]:
    """Level sizes, each ``ceil(previous / factor)``, until the longer side is <= ``smallest``."""
    dims = [(int(width), int(height))]
    while max(dims[-1]) > smallest:
        w, h = dims[-1]
        dims.append((max(1, math.ceil(w / factor)), max(1, math.ceil(h / factor))))
    return dims


def write_pyramid(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    tile_size: int = 256,
    level_factor: int = 2,
    compression: str = "jpeg",
    jpeg_quality: int = 90,
    overwrite: bool = False,
) -> Generator[Progress, None, Path]:
    """Write a tiled pyramidal TIFF of ``source``'s level 0.

    A generator: yields :class:`~napari_histattn.progress.Progress` once per
    level-0 tile row (stage ``"level 0"``) and per lower level (``"pyramid"``), and
    returns the output path. The file is written under a temporary name and
    renamed when complete, so an interrupted run leaves nothing at ``out``.

    Parameters
    ----------
    source
        Any slide :func:`~napari_histattn.io.slide.open_slide` opens.
    out
        The ``.tiff`` to write; it must not be ``source``.
    tile_size
        Tile edge in pixels, a multiple of 16.
    level_factor
        Downsample between levels, 2 or 4.
    compression
        ``"jpeg"`` (YCbCr 4:2:0, ``jpeg_quality``) or ``"deflate"`` (lossless).
    overwrite
        Replace an existing ``out``.

    Raises
    ------
    TiffWriteError
        Bad options, ``out`` exists, or the source has tiles that could not be
        decoded (a pyramid would pass their placeholders off as tissue).
    SlideError
        The source cannot be opened or read.
    """
    out_path = Path(out)
    src_path = Path(source)
    if tile_size < 16 or tile_size % 16:
        raise TiffWriteError(out_path, f"tile size must be a multiple of 16, got {tile_size}")
    if level_factor not in (2, 4):
        raise TiffWriteError(out_path, f"level factor must be 2 or 4, got {level_factor}")
    if compression not in ("jpeg", "deflate"):
        raise TiffWriteError(out_path, f"compression must be jpeg or deflate, got {compression!r}")
    if not 1 <= jpeg_quality <= 100:
        raise TiffWriteError(out_path, f"JPEG quality must be within 1..100, got {jpeg_quality}")
    if out_path.exists() and src_path.exists() and out_path.samefile(src_path):
        raise TiffWriteError(out_path, "the output is the source; write the pyramid elsewhere")
    if out_path.exists() and not overwrite:
        raise TiffWriteError(out_path, "the file exists (pass overwrite to replace it)")
    if not out_path.parent.is_dir():
        raise TiffWriteError(out_path, f"folder {str(out_path.parent)!r} does not exist")
    encode: Encoder = (
        partial(encode_jpeg, quality=jpeg_quality) if compression == "jpeg" else encode_deflate
    )
    with open_slide(src_path) as slide:
        return (
            yield from _stream(
                slide,
                out_path,
                tile_size,
                level_factor,
                encode,
                "jpeg" if compression == "jpeg" else "zlib",
            )
        )


def _stream(
    slide: Slide,
    out_path: Path,
    tile: int,
    factor: int,
    encode: Encoder,
    tiff_compression: str,
) -> Generator[Progress, None, Path]:
    width, height = slide.level_dimensions[0]
    dims = pyramid_dimensions(width, height, factor)
    n_rows, n_cols = math.ceil(height / tile), math.ceil(width / tile)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.partial")
    builders: list[LevelBuilder] = []
    writer: TiffStreamWriter | None = None
    ok = False
    failed_before = len(slide.failed_tiles)
    try:
        builders = level_builders(dims, tile, factor, encode, out_path.parent, _WHITE)
        writer = TiffStreamWriter(
            tmp,
            dims,
            tile,
            compression=tiff_compression,
            mpp_xy=slide.mpp_xy,
            description=f"napari-histattn pyramid of {slide.path.name}",
        )
        band = np.empty((tile, n_cols * tile, 3), np.uint8)
        for row in range(n_rows):
            for x0 in range(0, n_cols * tile, _READ_COLUMNS):
                w = min(_READ_COLUMNS, n_cols * tile - x0)
                band[:, x0 : x0 + w] = slide.read_level_region(0, (x0, row * tile), (w, tile))
            if len(slide.failed_tiles) > failed_before:
                raise TiffWriteError(
                    out_path,
                    f"{len(slide.failed_tiles) - failed_before} tile(s) of {slide.path.name} "
                    "could not be decoded; a pyramid would show their placeholders as tissue",
                )
            for c in range(n_cols):
                writer.put(encode(band[:, c * tile : (c + 1) * tile]))
            if builders:
                builders[0].feed(downsample_mean(band, factor))
            yield Progress("level 0", row + 1, n_rows, f"tile row {row + 1}/{n_rows}")
        if builders:
            builders[0].finish()
        for k, builder in enumerate(builders, start=1):
            for data in builder.tiles():
                writer.put(data)
            yield Progress("pyramid", k, len(builders), f"level {k} {dims[k][0]}x{dims[k][1]}")
        writer.join()
        os.replace(tmp, out_path)
        ok = True
    except OSError as err:
        raise TiffWriteError(out_path, str(err)) from err
    finally:
        if writer is not None and not ok:
            writer.abort()
        for builder in builders:
            builder.close()
        if not ok:
            tmp.unlink(missing_ok=True)
    return out_path
