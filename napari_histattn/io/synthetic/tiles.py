"""Level-0 rows of a synthetic slide, rendered (in workers) and JPEG-encoded.

The rows go to the streaming TIFF writer of :mod:`napari_histattn.io.tiff_writer`;
see :mod:`napari_histattn.io.synthetic.writer` for the memory bound this keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_histattn.io.synthetic.render import BACKGROUND, _tissue_state, render_region
from napari_histattn.io.synthetic.scene import Scene
from napari_histattn.io.tiff_writer import TiffWriteError, downsample_mean, encode_jpeg

_CHUNK_TILES = 4  # level-0 tiles rendered per render_region call


class SyntheticWriteError(TiffWriteError):
    """A synthetic slide could not be written (bad writer options or an I/O failure)."""

    def __init__(self, path: str | Path, cause: str) -> None:
        super().__init__(path, cause)
        self.args = (f"Cannot write synthetic slide {str(self.path)!r}: {cause}",)


@dataclass(frozen=True)
class _RowJob:
    scene: Scene
    tile: int
    factor: int
    quality: int
    n_cols: int


_JOB: _RowJob | None = None


def _init_worker(
    scene_dict: dict[str, Any], tile: int, factor: int, quality: int, n_cols: int
) -> None:
    global _JOB
    _JOB = _RowJob(Scene.from_dict(scene_dict), tile, factor, quality, n_cols)


def _render_row_in_worker(row: int) -> tuple[list[bytes | None], np.ndarray]:
    assert _JOB is not None
    return _render_row(_JOB, row)


def _render_row(job: _RowJob, row: int) -> tuple[list[bytes | None], np.ndarray]:
    """Encoded tiles of one level-0 tile row (``None`` for glass) and the row downsampled."""
    t, f = job.tile, job.factor
    y0 = row * t
    tiles: list[bytes | None] = []
    down = np.full((t // f, job.n_cols * t // f, 3), BACKGROUND, np.uint8)
    for c0 in range(0, job.n_cols, _CHUNK_TILES):
        c1 = min(job.n_cols, c0 + _CHUNK_TILES)
        x0, x1 = c0 * t, c1 * t
        if _tissue_state(job.scene, x0, y0, x1, y0 + t) == "outside":
            tiles.extend([None] * (c1 - c0))
            continue
        block = render_region(job.scene, (x0, y0), (x1 - x0, t))
        for c in range(c0, c1):
            tile = block[:, (c - c0) * t : (c - c0 + 1) * t]
            glass = _tissue_state(job.scene, c * t, y0, (c + 1) * t, y0 + t) == "outside"
            tiles.append(None if glass else encode_jpeg(tile, job.quality))
        down[:, x0 // f : x1 // f] = downsample_mean(block, f)
    return tiles, down
