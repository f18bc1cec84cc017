"""Lazy pyramid levels: numpy-like arrays that read a slide window by window.

``LevelArray`` is what napari receives, one per pyramid level. napari slices any
array-like that has ``shape``, ``dtype`` and ``__getitem__``; each slice here turns
into exactly one region read of the backing slide (OpenSlide ``read_region`` of the
requested window, or tifffile tile decoding). There is deliberately no dask graph:
dask's per-slice overhead grows with the number of chunks, and a 100k^2 slide has
~150k chunks of 256 px (issue 2 measured 54 ms per tile through napari-wsi's dask
levels against ~2 ms straight through the store).

``ComputedLevels`` adds downsampled levels to an image that has no pyramid. Each
computed level ``k`` is the 2x2 area mean of level ``k - 1`` (see
:func:`downsample2`), computed on demand in blocks and kept in a bounded LRU cache,
so no level is ever read whole unless it is small.
"""

from __future__ import annotations

import math
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

#: ``np.asarray(level)`` refuses to build arrays larger than this many bytes.
DEFAULT_MAX_ARRAY_BYTES = 2**28

#: Side of the square blocks in which computed levels are built and cached.
COMPUTED_BLOCK = 512

#: A level-read function: ``read(level, lvl_xy, size_wh) -> (h, w, 3) uint8``.
RegionReader = Callable[[int, tuple[int, int], tuple[int, int]], np.ndarray]


class ArrayTooLargeError(ValueError):
    """Materialising a whole level would need more memory than allowed."""


def downsample2(rgb: np.ndarray) -> np.ndarray:
    """Halve an RGB image by 2x2 area mean, rounding half up.

    Output pixel ``(r, c)`` is ``(sum of input[2r:2r+2, 2c:2c+2] + 2) // 4``. An odd
    height or width is first padded by repeating the last row or column, so the
    output has ``ceil(h / 2) x ceil(w / 2)`` pixels and an edge pixel is the mean
    of the input pixels it covers.

    Parameters
    ----------
    rgb
        ``(h, w, c)`` uint8 array.

    Returns
    -------
    numpy.ndarray
        ``(ceil(h / 2), ceil(w / 2), c)`` uint8 array.
    """
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        return np.empty(((h + 1) // 2, (w + 1) // 2, *rgb.shape[2:]), dtype=np.uint8)
    if h % 2 or w % 2:
        rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    # four strided adds are ~20x faster than a reshape + sum over two axes
    total = rgb[0::2, 0::2].astype(np.uint16)
    total += rgb[1::2, 0::2]
    total += rgb[0::2, 1::2]
    total += rgb[1::2, 1::2]
    total += 2
    total >>= 2
    return total.astype(np.uint8)


def _axis_range(key: Any, n: int, axis: str) -> tuple[int, int, int, bool]:
    """Normalise an int or slice along an axis of length ``n``.

    Returns ``(start, step, count, drop)``: the selected indices are
    ``start + i * step`` for ``i < count``; ``drop`` is True for an integer key.
    """
    if isinstance(key, slice):
        start, stop, step = key.indices(n)
        return start, step, len(range(start, stop, step)), False
    if isinstance(key, (bool, np.bool_)):
        raise TypeError(f"boolean index on the {axis} axis is not supported")
    try:
        i = operator.index(key)
    except TypeError:
        raise TypeError(
            f"LevelArray supports ints, slices and Ellipsis on the {axis} axis, not {type(key).__name__}"
        ) from None
    if not -n <= i < n:
        raise IndexError(f"index {i} is out of bounds for the {axis} axis of size {n}")
    return i % n, 1, 1, True


class LevelArray:
    """One pyramid level as a lazy, read-only, numpy-like ``(h, w, 3)`` uint8 array.

    Every ``__getitem__`` performs a single region read through ``reader``; nothing
    is cached here (the backends cache decoded tiles). Safe to slice from several
    threads at once.

    Parameters
    ----------
    reader
        ``reader(level, lvl_xy, size_wh)`` returning the ``(h, w, 3)`` uint8 window
        whose top-left pixel is ``lvl_xy`` in this level's pixels.
    level
        Index of this level in its pyramid (0 is full resolution).
    size_wh
        ``(width, height)`` of the level.
    downsample
        Level-0 pixels per pixel of this level.
    name
        Used in messages, for example the slide's file name.
    max_array_bytes
        ``np.asarray(level)`` raises :class:`ArrayTooLargeError` above this size.
    computed
        True when the level is computed from the one below rather than stored.
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(
        self,
        reader: RegionReader,
        level: int,
        size_wh: tuple[int, int],
        downsample: float,
        *,
        name: str = "",
        max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES,
        computed: bool = False,
    ) -> None:
        self._reader = reader
        self.level = int(level)
        self.downsample = float(downsample)
        self.name = name
        self.max_array_bytes = int(max_array_bytes)
        self.computed = bool(computed)
        w, h = (int(v) for v in size_wh)
        self.shape: tuple[int, int, int] = (h, w, 3)

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * 3

    @property
    def nbytes(self) -> int:
        return self.size

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        kind = "computed " if self.computed else ""
        return (
            f"<LevelArray {self.name!r} {kind}level {self.level} shape={self.shape} "
            f"downsample={self.downsample:g}>"
        )

    def _normalise_key(self, key: Any) -> tuple[Any, Any, Any]:
        if not isinstance(key, tuple):
            key = (key,)
        n_ellipsis = sum(k is Ellipsis for k in key)
        if n_ellipsis > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if any(k is None for k in key):
            raise IndexError("LevelArray does not support np.newaxis; index the result instead")
        if n_ellipsis:
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (3 - (len(key) - 1))
            key = key[:i] + fill + key[i + 1 :]
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3-dimensional array: {len(key)}")
        key = key + (slice(None),) * (3 - len(key))
        return key[0], key[1], key[2]

    def __getitem__(self, key: Any) -> np.ndarray:
        ykey, xkey, ckey = self._normalise_key(key)
        h, w = self.shape[:2]
        y0, ystep, ny, ydrop = _axis_range(ykey, h, "y")
        x0, xstep, nx, xdrop = _axis_range(xkey, w, "x")
        if ny == 0 or nx == 0:
            out = np.empty((ny, nx, 3), dtype=np.uint8)
        else:
            # One read of the bounding window, then stride within it.
            ylo = y0 if ystep > 0 else y0 + (ny - 1) * ystep
            xlo = x0 if xstep > 0 else x0 + (nx - 1) * xstep
            hh = abs(ystep) * (ny - 1) + 1
            ww = abs(xstep) * (nx - 1) + 1
            out = self._reader(self.level, (xlo, ylo), (ww, hh))
            if ystep != 1 or xstep != 1:
                out = out[y0 - ylo :: ystep][:ny, x0 - xlo :: xstep][:, :nx]
        if ydrop and xdrop:
            out = out[0, 0]
        elif ydrop:
            out = out[0]
        elif xdrop:
            out = out[:, 0]
        if not (isinstance(ckey, slice) and ckey == slice(None)):
            out = out[..., ckey]
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if self.nbytes > self.max_array_bytes:
            raise ArrayTooLargeError(
                f"refusing to load level {self.level} of {self.name!r} whole: "
                f"{self.shape[1]}x{self.shape[0]} px RGB is {self.nbytes / 2**20:.0f} MiB, "
                f"more than the {self.max_array_bytes / 2**20:.0f} MiB limit; "
                "slice a window instead (level[y0:y1, x0:x1])"
            )
        out = self[...]
        if dtype is not None and np.dtype(dtype) != out.dtype:
            out = out.astype(dtype)
        return out


class _BlockCache:
    """Thread-safe LRU of numpy blocks bounded by total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        with self._lock:
            block = self._items.get(key)
            if block is not None:
                self._items.move_to_end(key)
            return block

    def put(self, key: tuple[int, int, int], block: np.ndarray) -> None:
        if block.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = block
            self._bytes += block.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def plan_computed_levels(
    base_size_wh: tuple[int, int],
    *,
    trigger: int = 4096,
    target: int = 1024,
) -> list[tuple[int, int]]:
    """Sizes of the halved levels to add above a pyramid's smallest level.

    Nothing is added unless the smallest stored level is larger than ``trigger``
    on its longer side; then levels are halved (``ceil``) until the longer side is
    at most ``target``.

    Parameters
    ----------
    base_size_wh
        ``(width, height)`` of the smallest stored level.

    Returns
    -------
    list of tuple of int
        ``(width, height)`` of each level to compute, largest first.
    """
    w, h = base_size_wh
    sizes: list[tuple[int, int]] = []
    if max(w, h) <= trigger:
        return sizes
    while max(w, h) > target:
        w, h = math.ceil(w / 2), math.ceil(h / 2)
        sizes.append((w, h))
    return sizes


class ComputedLevels:
    """Levels computed by repeated :func:`downsample2` from a stored base level.

    Level ``base + j`` (``j >= 1``) is built in ``COMPUTED_BLOCK``-px blocks; a
    block is the :func:`downsample2` of the matching ``2 * COMPUTED_BLOCK`` window
    of the level below, read through ``reader`` (so the level below may itself be
    computed and cached). Blocks are kept in an LRU bounded by ``cache_bytes``.

    Parameters
    ----------
    reader
        Reads any level (stored or computed) of the owning slide.
    base_level
        Index of the smallest stored level.
    base_size_wh
        ``(width, height)`` of that level.
    sizes_wh
        ``(width, height)`` of each computed level, largest first.
    cache_bytes
        Memory budget for computed blocks.
    """

    def __init__(
        self,
        reader: RegionReader,
        base_level: int,
        base_size_wh: tuple[int, int],
        sizes_wh: list[tuple[int, int]],
        *,
        cache_bytes: int = 128 * 2**20,
    ) -> None:
        self._reader = reader
        self.base_level = int(base_level)
        self.base_size_wh = (int(base_size_wh[0]), int(base_size_wh[1]))
        self.sizes_wh = list(sizes_wh)
        self._cache = _BlockCache(cache_bytes)

    def __contains__(self, level: int) -> bool:
        return self.base_level < level <= self.base_level + len(self.sizes_wh)

    def size_wh(self, level: int) -> tuple[int, int]:
        return self.sizes_wh[level - self.base_level - 1]

    def _block(self, level: int, bx: int, by: int) -> np.ndarray:
        key = (level, bx, by)
        block = self._cache.get(key)
        if block is not None:
            return block
        below = level - 1
        bw, bh = self.size_wh(level)
        x0, y0 = bx * COMPUTED_BLOCK, by * COMPUTED_BLOCK
        w = min(COMPUTED_BLOCK, bw - x0)
        h = min(COMPUTED_BLOCK, bh - y0)
        src_w, src_h = self._below_size(below)
        sw = min(2 * w, src_w - 2 * x0)
        sh = min(2 * h, src_h - 2 * y0)
        src = self._reader(below, (2 * x0, 2 * y0), (sw, sh))
        block = downsample2(src)
        block.setflags(write=False)
        self._cache.put(key, block)
        return block

    def _below_size(self, level: int) -> tuple[int, int]:
        if level == self.base_level:
            return self.base_size_wh
        return self.size_wh(level)

    def read(self, level: int, lvl_xy: tuple[int, int], size_wh: tuple[int, int]) -> np.ndarray:
        """Read a window of a computed level; pixels outside the level are white."""
        lw, lh = self.size_wh(level)
        x, y = lvl_xy
        w, h = size_wh
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        cx0, cy0 = max(x, 0), max(y, 0)
        cx1, cy1 = min(x + w, lw), min(y + h, lh)
        if cx0 >= cx1 or cy0 >= cy1:
            return out
        B = COMPUTED_BLOCK
        for by in range(cy0 // B, (cy1 - 1) // B + 1):
            for bx in range(cx0 // B, (cx1 - 1) // B + 1):
                block = self._block(level, bx, by)
                ox, oy = bx * B, by * B
                ix0, iy0 = max(cx0, ox), max(cy0, oy)
                ix1, iy1 = min(cx1, ox + block.shape[1]), min(cy1, oy + block.shape[0])
                out[iy0 - y : iy1 - y, ix0 - x : ix1 - x] = block[
                    iy0 - oy : iy1 - oy, ix0 - ox : ix1 - ox
                ]
        return out

    def clear(self) -> None:
        self._cache.clear()
