"""The streaming tile pipeline of the synthetic writer: level-0 rows rendered (in workers),
JPEG-encoded and queued to a tifffile writer thread, lower levels accumulated row by row.

See :mod:`napari_histattn.io.synthetic.writer` for the memory bound this keeps.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_histattn.errors import HistattnError
from napari_histattn.io.synthetic.render import BACKGROUND, _tissue_state, render_region
from napari_histattn.io.synthetic.scene import Scene

_CHUNK_TILES = 4  # level-0 tiles rendered per render_region call


class SyntheticWriteError(HistattnError):
    """A synthetic slide could not be written (bad writer options or an I/O failure)."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"Cannot write synthetic slide {str(self.path)!r}: {cause}")


def _encode(tile: np.ndarray, quality: int) -> bytes:
    import imagecodecs

    # The same JPEG flavour tifffile writes: YCbCr 4:2:0 (PhotometricInterpretation YCbCr).
    return bytes(
        imagecodecs.jpeg8_encode(
            np.ascontiguousarray(tile),
            level=quality,
            colorspace="RGB",
            outcolorspace="YCBCR",
            subsampling=(2, 2),
        )
    )


def _downsample(block: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor x factor`` blocks (shape divisible by factor), rounded to uint8."""
    h, w, _ = block.shape
    s = block.reshape(h // factor, factor, w // factor, factor, 3).sum(axis=(1, 3), dtype=np.uint32)
    n = factor * factor
    return ((s + n // 2) // n).astype(np.uint8)


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
            tiles.append(None if glass else _encode(tile, job.quality))
        down[:, x0 // f : x1 // f] = _downsample(block, f)
    return tiles, down


class _LevelBuilder:
    """Accumulates one tile row of a lower level, encodes it to a temp file, feeds the next."""

    def __init__(
        self,
        dims: tuple[int, int],
        tile: int,
        factor: int,
        quality: int,
        folder: Path,
        glass: bytes,
    ) -> None:
        self.width, self.height = dims
        self.tile, self.factor, self.quality, self.glass = tile, factor, quality, glass
        self.n_cols = math.ceil(self.width / tile)
        self.n_rows = math.ceil(self.height / tile)
        self.band = np.full((tile, self.n_cols * tile, 3), BACKGROUND, np.uint8)
        self.filled = 0
        self.rows_done = 0
        self.sizes: list[int] = []
        fd, name = tempfile.mkstemp(prefix="level-", suffix=".jpegs", dir=folder)
        self.file = os.fdopen(fd, "w+b")
        self.file_path = Path(name)
        self.next: _LevelBuilder | None = None

    def feed(self, rows: np.ndarray) -> None:
        while rows.shape[0] and self.rows_done < self.n_rows:
            take = min(self.tile - self.filled, rows.shape[0])
            w = min(rows.shape[1], self.band.shape[1])
            self.band[self.filled : self.filled + take, :w] = rows[:take, :w]
            self.filled += take
            rows = rows[take:]
            if self.filled == self.tile:
                self._flush_band()

    def finish(self) -> None:
        if self.filled and self.rows_done < self.n_rows:
            self._flush_band()
        # Rows that never received data (rounding at the bottom edge) are glass.
        while self.rows_done < self.n_rows:
            self._flush_band()
        if self.next is not None:
            self.next.finish()

    def _flush_band(self) -> None:
        t = self.tile
        if self.filled < t:
            self.band[self.filled :] = BACKGROUND
        for c in range(self.n_cols):
            tile = self.band[:, c * t : (c + 1) * t]
            if tile.min() == BACKGROUND and tile.max() == BACKGROUND:
                data = self.glass
            else:
                data = _encode(tile, self.quality)
            self.file.write(data)
            self.sizes.append(len(data))
        if self.next is not None:
            self.next.feed(_downsample(self.band, self.factor))
        self.band[:] = BACKGROUND
        self.filled = 0
        self.rows_done += 1

    def tiles(self) -> Iterator[bytes]:
        self.file.flush()
        self.file.seek(0)
        for size in self.sizes:
            yield self.file.read(size)

    def close(self) -> None:
        self.file.close()
        self.file_path.unlink(missing_ok=True)


class _Abort(Exception):
    pass


_STOP = object()


class _TiffThread:
    """Runs tifffile in a thread; tiles arrive through a bounded queue in file order."""

    def __init__(
        self, path: Path, dims: list[tuple[int, int]], tile: int, scene: Scene, quality: int
    ) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=512)
        self.error: BaseException | None = None
        self.path, self.dims, self.tile, self.scene, self.quality = path, dims, tile, scene, quality
        self.thread = threading.Thread(target=self._run, name="histattn-synth-tiff", daemon=True)
        self.thread.start()

    def _tiles(self, n: int) -> Iterator[bytes]:
        for _ in range(n):
            item = self.queue.get()
            if item is _STOP:
                raise _Abort
            yield item

    def _run(self) -> None:
        import tifffile

        try:
            w0, h0 = self.dims[0]
            bigtiff = w0 * h0 > 2**31
            desc = (
                f"napari-histattn synthetic H&E slide|seed={self.scene.seed}|mpp={self.scene.mpp}"
                f"|lesions={len(self.scene.lesions)}|lookalikes={len(self.scene.lookalikes)}"
            )
            with tifffile.TiffWriter(self.path, bigtiff=bigtiff) as tw:
                for level, (w, h) in enumerate(self.dims):
                    n = math.ceil(w / self.tile) * math.ceil(h / self.tile)
                    mpp = self.scene.mpp * (w0 / w)
                    tw.write(
                        self._tiles(n),
                        shape=(h, w, 3),
                        dtype=np.uint8,
                        photometric="rgb",
                        subsampling=(2, 2),
                        tile=(self.tile, self.tile),
                        compression="jpeg",
                        compressionargs={"level": self.quality},
                        resolution=(1e4 / mpp, 1e4 / (self.scene.mpp * (h0 / h))),
                        resolutionunit="CENTIMETER",
                        subfiletype=0 if level == 0 else 1,
                        description=desc if level == 0 else None,
                        metadata=None,
                        software="napari-histattn",
                    )
        except BaseException as err:  # handed to the main thread, which re-raises
            self.error = err

    def put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self.thread.is_alive():
                    raise SyntheticWriteError(self.path, "the TIFF writer stopped") from self.error

    def abort(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    self.queue.get_nowait()
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait(_STOP)
            self.thread.join(timeout=30)

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error
