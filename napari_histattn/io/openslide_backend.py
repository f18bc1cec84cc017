"""The OpenSlide backend: every format ``OpenSlide.detect_format`` recognises.

Reads go straight into a numpy buffer through openslide-python's low-level
``_read_region`` when it exists (no PIL image per read). After an undecodable
tile OpenSlide's handle is in a terminal error state: the backend reopens it,
re-reads the region tile by tile on the file's tile grid and reports each tile
that still fails to its sink (the Slide serves those mid-grey).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from napari_histattn.errors import SlideError
from napari_histattn.io.backend import (
    _DEFAULT_TILE,
    PLACEHOLDER_RGB,
    _Backend,
    _FailureSink,
    _parse_float,
    _pil_to_rgb,
    _white,
    argb_to_rgb,
)
from napari_histattn.io.limits import print_resolution


def _native_read_function() -> Any:
    try:
        from openslide import lowlevel

        return getattr(lowlevel, "_read_region", None)
    except Exception:
        return None


_NATIVE_READ = _native_read_function()
_C_UINT32_P = ctypes.POINTER(ctypes.c_uint32)


class _OpenSlideBackend(_Backend):
    name = "openslide"

    def __init__(self, path: Path, handle: Any, sink: _FailureSink) -> None:
        import openslide

        self._openslide = openslide
        self._path = path
        self._sink = sink
        self._handle = handle
        self._generation = 0
        # Handles in an error state; closed only in close() since another thread
        # may still be inside a call on them.
        self._retired: list[Any] = []
        self._users: dict[int, int] = {}
        self._lock = threading.Lock()
        self._failed: dict[int, frozenset[tuple[int, int]]] = {}

        props = dict(handle.properties)
        self.properties = MappingProxyType(props)
        self.vendor = props.get("openslide.vendor")
        self.format = self.vendor or "openslide"
        self.level_dimensions = tuple((int(w), int(h)) for w, h in handle.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in handle.level_downsamples)
        tiles = []
        for k in range(len(self.level_dimensions)):
            tw = props.get(f"openslide.level[{k}].tile-width")
            th = props.get(f"openslide.level[{k}].tile-height")
            if tw and th and int(tw) > 0 and int(th) > 0:
                tiles.append((int(tw), int(th)))
            else:
                tiles.append((_DEFAULT_TILE, _DEFAULT_TILE))
        self.level_tile_sizes = tuple(tiles)
        mx = _parse_float(props.get("openslide.mpp-x"))
        my = _parse_float(props.get("openslide.mpp-y"))
        per_unit = _parse_float(props.get("tiff.XResolution"))
        um_per_unit = {"inch": 25400.0, "centimeter": 10000.0}.get(
            props.get("tiff.ResolutionUnit", ""), 0.0
        )
        # OpenSlide turns a TIFF's 72 dpi into 352.78 um/px; that is no microscope's
        # (only when its mpp came from that tag: a vendor's own mpp is kept).
        if (
            mx is not None
            and per_unit is not None
            and um_per_unit > 0
            and math.isclose(mx, um_per_unit / per_unit, rel_tol=1e-6)
            and print_resolution(per_unit, um_per_unit)
        ):
            self.mpp_note = (
                f"the resolution tag says {per_unit * 25400.0 / um_per_unit:.4g} pixels per "
                "inch, a screen or print DPI, not a microscope's: the pixel size is unknown"
            )
        elif mx is not None and my is not None:
            self.mpp_xy = (mx, my)
            self.mpp_source = "openslide"
        self.objective_power = _parse_float(props.get("openslide.objective-power"))
        self.quickhash = props.get("openslide.quickhash-1")
        self.associated_image_names = tuple(handle.associated_images.keys())

    def _region(
        self, handle: Any, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]
    ) -> np.ndarray:
        """One ``openslide_read_region`` call, straight into a numpy buffer.

        openslide-python's public ``read_region`` un-premultiplies into a PIL image
        that we would copy again; calling the same C function through its ctypes
        binding into our own buffer saves ~20% per 256-px tile. Falls back to the
        public API if a future openslide-python drops the binding.
        """
        osr = getattr(handle, "_osr", None)
        if _NATIVE_READ is None or osr is None:
            return _pil_to_rgb(handle.read_region(l0_xy, level, size_wh))
        w, h = size_wh
        buf = np.empty((h, w), dtype=np.uint32)
        _NATIVE_READ(osr, buf.ctypes.data_as(_C_UINT32_P), l0_xy[0], l0_xy[1], level, w, h)
        return argb_to_rgb(buf)

    @contextlib.contextmanager
    def _using(self) -> Iterator[tuple[Any, int]]:
        """The current handle and its generation, counted as in use until the block ends.

        A handle replaced by :meth:`_reopen` is closed as soon as its last user is
        done, so handles in an error state (each with its own tile cache) do not pile up.
        """
        with self._lock:
            handle, generation = self._handle, self._generation
            self._users[id(handle)] = self._users.get(id(handle), 0) + 1
        try:
            yield handle, generation
        finally:
            with self._lock:
                left = self._users[id(handle)] - 1
                if left:
                    self._users[id(handle)] = left
                else:
                    del self._users[id(handle)]
                    if handle in self._retired:
                        self._retired.remove(handle)
                        handle.close()

    def _reopen(self, generation: int) -> None:
        """Replace the handle that failed, unless another thread already did."""
        with self._lock:
            if generation != self._generation:
                return
            try:
                fresh = self._openslide.OpenSlide(str(self._path))
            except Exception as exc:
                raise SlideError(self._path, f"could not reopen after a read error: {exc}") from exc
            old = self._handle
            self._handle = fresh
            self._generation += 1
            if id(old) in self._users:
                self._retired.append(old)
            else:
                old.close()

    def read(self, level: int, lvl_xy: tuple[int, int], size_wh: tuple[int, int]) -> np.ndarray:
        ds = self.level_downsamples[level]
        l0_xy = (round(lvl_xy[0] * ds), round(lvl_xy[1] * ds))
        return self.read_l0(l0_xy, level, size_wh)

    def read_l0(self, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]) -> np.ndarray:
        """``OpenSlide.read_region`` as RGB on white, with recovery from bad tiles."""
        if level in self._failed and self._hits_failed(level, l0_xy, size_wh):
            return self._read_tiles(l0_xy, level, size_wh)
        with self._using() as (handle, generation):
            try:
                return self._region(handle, l0_xy, level, size_wh)
            except self._openslide.OpenSlideError:
                pass
        self._reopen(generation)
        return self._read_tiles(l0_xy, level, size_wh)

    def _tile_span(
        self, l0: int, ds: float, n: int, tile: int, size: int
    ) -> list[tuple[int, int, int]]:
        """Split output pixels ``0..n`` of one axis by tile: ``(tile index, i0, i1)``."""
        lvl0 = l0 / ds
        spans = []
        first = max(0, math.floor(lvl0 / tile))
        last = min(math.ceil(size / tile) - 1, math.floor((lvl0 + n - 1) / tile))
        for t in range(first, last + 1):
            i0 = max(0, math.ceil(t * tile - lvl0))
            i1 = min(n, math.ceil(min((t + 1) * tile, size) - lvl0))
            if i1 > i0:
                spans.append((t, i0, i1))
        return spans

    def _hits_failed(self, level: int, l0_xy: tuple[int, int], size_wh: tuple[int, int]) -> bool:
        ds = self.level_downsamples[level]
        tw, th = self.level_tile_sizes[level]
        lw, lh = self.level_dimensions[level]
        xs = {t for t, _, _ in self._tile_span(l0_xy[0], ds, size_wh[0], tw, lw)}
        ys = {t for t, _, _ in self._tile_span(l0_xy[1], ds, size_wh[1], th, lh)}
        return any(tx in xs and ty in ys for tx, ty in self._failed.get(level, ()))

    def _read_tiles(
        self, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]
    ) -> np.ndarray:
        """Read a region one file tile at a time; grey for tiles that fail."""
        ds = self.level_downsamples[level]
        tw, th = self.level_tile_sizes[level]
        lw, lh = self.level_dimensions[level]
        out = _white(size_wh)
        x_spans = self._tile_span(l0_xy[0], ds, size_wh[0], tw, lw)
        y_spans = self._tile_span(l0_xy[1], ds, size_wh[1], th, lh)
        for ty, j0, j1 in y_spans:
            for tx, i0, i1 in x_spans:
                if (tx, ty) in self._failed.get(level, ()):
                    out[j0:j1, i0:i1] = PLACEHOLDER_RGB
                    continue
                origin = (l0_xy[0] + round(i0 * ds), l0_xy[1] + round(j0 * ds))
                size = (i1 - i0, j1 - j0)
                with self._using() as (handle, generation):
                    try:
                        tile = self._region(handle, origin, level, size)
                        failed = False
                    except self._openslide.OpenSlideError:
                        failed = True
                if failed:
                    self._reopen(generation)
                    # The shared handle may have been broken by another thread's bad
                    # tile; only a failure on a private handle condemns this tile.
                    try:
                        tile = self._read_private(origin, level, size)
                    except self._openslide.OpenSlideError as exc:
                        out[j0:j1, i0:i1] = PLACEHOLDER_RGB
                        with self._lock:
                            known = self._failed.get(level, frozenset())
                            self._failed[level] = known | {(tx, ty)}
                        self._sink.tile_failed(level, (tx * tw, ty * th), exc)
                        continue
                out[j0:j1, i0:i1] = tile
        return out

    def _read_private(
        self, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]
    ) -> np.ndarray:
        """Read on a throwaway handle that no other thread can put into an error state."""
        try:
            handle = self._openslide.OpenSlide(str(self._path))
        except self._openslide.OpenSlideError:
            raise
        except Exception as exc:
            raise SlideError(self._path, f"could not reopen after a read error: {exc}") from exc
        try:
            return self._region(handle, l0_xy, level, size_wh)
        finally:
            handle.close()

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self.associated_image_names:
            raise KeyError(name)
        with self._using() as (handle, generation):
            try:
                return _pil_to_rgb(handle.associated_images[name])
            except self._openslide.OpenSlideError:
                pass
        self._reopen(generation)
        try:
            return _pil_to_rgb(self._read_private_associated(name))
        except self._openslide.OpenSlideError as exc:
            raise SlideError(self._path, f"associated image {name!r}: {exc}") from exc

    def _read_private_associated(self, name: str) -> Any:
        handle = self._openslide.OpenSlide(str(self._path))
        try:
            return handle.associated_images[name].copy()
        finally:
            handle.close()

    def close(self) -> None:
        with self._lock:
            for handle in [*self._retired, self._handle]:
                handle.close()
            self._retired.clear()
            self._users.clear()
