"""Stream a pyramidal tiled TIFF to disk in bounded memory.

Used by the synthetic slide writer and by :mod:`napari_histattn.io.pyramid` (a
pyramidal copy of a flat image). Level-0 tiles are encoded by the caller and
queued, in file order, to a tifffile writer running in a thread
(:class:`TiffStreamWriter`). Each lower level is built while level 0 streams: the
caller feeds level-0 rows, already mean-downsampled by the level factor, to a
chain of :class:`LevelBuilder`; each accumulates one tile row of its level,
encodes it to a temporary file and feeds the next. After level 0 the lower levels
are copied from those files into the TIFF as pre-encoded tiles. The largest
buffers are one tile row per level.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_histattn.errors import HistattnError

#: The codecs a stream may use: TIFF compression name -> encoder of one RGB tile.
Encoder = Callable[[np.ndarray], bytes]


class TiffWriteError(HistattnError):
    """A TIFF could not be written (bad writer options or an I/O failure)."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"Cannot write {str(self.path)!r}: {cause}")


def encode_jpeg(tile: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of one RGB tile, the flavour tifffile writes (YCbCr 4:2:0)."""
    import imagecodecs

    return bytes(
        imagecodecs.jpeg8_encode(
            np.ascontiguousarray(tile),
            level=quality,
            colorspace="RGB",
            outcolorspace="YCBCR",
            subsampling=(2, 2),
        )
    )


def encode_deflate(tile: np.ndarray, level: int = 6) -> bytes:
    """zlib bytes of one RGB tile (TIFF compression 8, no predictor): lossless."""
    import imagecodecs

    return bytes(imagecodecs.zlib_encode(np.ascontiguousarray(tile).tobytes(), level=level))


def downsample_mean(block: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor x factor`` blocks (shape divisible by factor), rounded to uint8."""
    h, w, _ = block.shape
    s = block.reshape(h // factor, factor, w // factor, factor, 3).sum(axis=(1, 3), dtype=np.uint32)
    n = factor * factor
    return ((s + n // 2) // n).astype(np.uint8)


class LevelBuilder:
    """Accumulates one tile row of a lower level, encodes it to a temp file, feeds the next.

    Parameters
    ----------
    dims
        ``(width, height)`` of this level.
    tile
        Tile edge in pixels.
    factor
        Downsample from this level to the next.
    encode
        Encoder of one ``(tile, tile, 3)`` tile.
    folder
        Where the temporary tile file goes (beside the output).
    background
        Grey value of padding and of tiles that hold nothing else.
    blank
        Pre-encoded all-``background`` tile (reused instead of encoding again).
    """

    def __init__(
        self,
        dims: tuple[int, int],
        tile: int,
        factor: int,
        encode: Encoder,
        folder: Path,
        background: int,
        blank: bytes,
    ) -> None:
        self.width, self.height = dims
        self.tile, self.factor, self.encode = tile, factor, encode
        self.background, self.blank = background, blank
        self.n_cols = math.ceil(self.width / tile)
        self.n_rows = math.ceil(self.height / tile)
        self.band = np.full((tile, self.n_cols * tile, 3), background, np.uint8)
        self.filled = 0
        self.rows_done = 0
        self.sizes: list[int] = []
        fd, name = tempfile.mkstemp(prefix=".level-", suffix=".tiles", dir=folder)
        self.file = os.fdopen(fd, "w+b")
        self.file_path = Path(name)
        self.next: LevelBuilder | None = None

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
        # Rows that never received data (rounding at the bottom edge) are background.
        while self.rows_done < self.n_rows:
            self._flush_band()
        if self.next is not None:
            self.next.finish()

    def _flush_band(self) -> None:
        t, bg = self.tile, self.background
        if self.filled < t:
            self.band[self.filled :] = bg
        for c in range(self.n_cols):
            tile = self.band[:, c * t : (c + 1) * t]
            data = self.blank if tile.min() == bg and tile.max() == bg else self.encode(tile)
            self.file.write(data)
            self.sizes.append(len(data))
        if self.next is not None:
            self.next.feed(downsample_mean(self.band, self.factor))
        self.band[:] = bg
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


def level_builders(
    dims: list[tuple[int, int]],
    tile: int,
    factor: int,
    encode: Encoder,
    folder: Path,
    background: int,
) -> list[LevelBuilder]:
    """Chained builders for levels 1.. of ``dims`` (empty for a single level)."""
    blank = encode(np.full((tile, tile, 3), background, np.uint8))
    builders: list[LevelBuilder] = []
    try:
        for d in dims[1:]:
            builders.append(LevelBuilder(d, tile, factor, encode, folder, background, blank))
    except BaseException:
        for b in builders:
            b.close()
        raise
    for a, b in zip(builders, builders[1:], strict=False):
        a.next = b
    return builders


class _Abort(Exception):
    pass


_STOP = object()


class TiffStreamWriter:
    """Runs tifffile in a thread; encoded tiles arrive through a bounded queue in file order.

    Parameters
    ----------
    path
        Output file (the caller writes to a temporary name and renames it).
    dims
        ``(width, height)`` of each level, level 0 first.
    tile
        Tile edge in pixels.
    compression
        ``"jpeg"`` (tiles from :func:`encode_jpeg`) or ``"zlib"`` (:func:`encode_deflate`).
    mpp_xy
        Level-0 micrometres per pixel, written as X/YResolution in pixels per
        centimetre for every level; ``None`` writes no resolution.
    description
        ImageDescription of level 0.
    """

    def __init__(
        self,
        path: Path,
        dims: list[tuple[int, int]],
        tile: int,
        *,
        compression: str = "jpeg",
        mpp_xy: tuple[float, float] | None = None,
        description: str | None = None,
    ) -> None:
        if compression not in ("jpeg", "zlib"):
            raise ValueError(f"compression must be 'jpeg' or 'zlib', got {compression!r}")
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=512)
        self.error: BaseException | None = None
        self.path, self.dims, self.tile = path, dims, tile
        self.compression, self.mpp_xy, self.description = compression, mpp_xy, description
        self.thread = threading.Thread(target=self._run, name="histattn-tiff", daemon=True)
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
            jpeg = self.compression == "jpeg"
            with tifffile.TiffWriter(self.path, bigtiff=bigtiff) as tw:
                for level, (w, h) in enumerate(self.dims):
                    n = math.ceil(w / self.tile) * math.ceil(h / self.tile)
                    extra: dict[str, Any] = {}
                    if self.mpp_xy is not None:
                        mx, my = self.mpp_xy
                        extra["resolution"] = (1e4 / (mx * w0 / w), 1e4 / (my * h0 / h))
                        extra["resolutionunit"] = "CENTIMETER"
                    if jpeg:
                        extra["subsampling"] = (2, 2)
                    tw.write(
                        self._tiles(n),
                        shape=(h, w, 3),
                        dtype=np.uint8,
                        photometric="rgb",
                        tile=(self.tile, self.tile),
                        compression=self.compression,
                        subfiletype=0 if level == 0 else 1,
                        description=self.description if level == 0 else None,
                        metadata=None,
                        software="napari-histattn",
                        **extra,
                    )
        except BaseException as err:  # handed to the main thread, which re-raises
            self.error = err

    def put(self, item: bytes) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self.thread.is_alive():
                    raise TiffWriteError(self.path, "the TIFF writer stopped") from self.error

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
