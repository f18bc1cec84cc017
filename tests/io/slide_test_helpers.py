"""Helpers shared by the slide I/O tests and their fixtures (tests/io/conftest.py).

A module with a unique name rather than imports from ``conftest``, which is
ambiguous when several test folders have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile


def pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic colourful RGB test image with gradients, blocks and edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.empty((h, w, 3), dtype=np.uint8)
    rgb[..., 0] = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
    rgb[..., 1] = (yy * 255 // max(h - 1, 1)).astype(np.uint8)
    blocks = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1), dtype=np.uint8)
    rgb[..., 2] = blocks[yy // 16, xx // 16]
    return rgb


def halve(rgb: np.ndarray) -> np.ndarray:
    """Plain 2x2 mean used to build stored pyramid levels in the fixtures."""
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    r = rgb[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    return r.round().astype(np.uint8)


def write_pyramid_tiff(
    path: Path,
    levels: list[np.ndarray],
    *,
    tile: int = 256,
    compression: str | None = "jpeg",
    mpp_xy: tuple[float, float] | None = None,
) -> Path:
    """Tiled pyramid with levels in successive IFDs (OpenSlide's generic-tiff layout)."""
    kwargs: dict = {}
    if mpp_xy is not None:
        kwargs = {
            "resolution": (1e4 / mpp_xy[0], 1e4 / mpp_xy[1]),
            "resolutionunit": "CENTIMETER",
        }
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(levels):
            tif.write(
                level,
                tile=(tile, tile),
                compression=compression,
                photometric="rgb",
                subfiletype=0 if i == 0 else 1,
                metadata=None,
                **(kwargs if i == 0 else {}),
            )
    return path


@dataclass
class Written:
    """A generated file and the pixels written into it (level 0 first)."""

    path: Path
    levels: list[np.ndarray]
    mpp_xy: tuple[float, float] | None = None


def corrupt_tile(src: Path, dst: Path, *, page: int, tile_index: int) -> None:
    """Copy ``src`` to ``dst`` with the bytes of one tile replaced by zeros."""
    with tifffile.TiffFile(src) as tif:
        p = tif.pages[page]
        offset = int(p.dataoffsets[tile_index])
        count = int(p.databytecounts[tile_index])
    data = bytearray(src.read_bytes())
    data[offset : offset + count] = bytes(count)
    dst.write_bytes(bytes(data))
