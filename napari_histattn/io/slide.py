"""Open whole-slide images and plain images behind one read-only, thread-safe API.

Backends, tried in this order by :func:`open_slide`:

``openslide``
    Anything ``OpenSlide.detect_format`` recognises (Aperio SVS including JPEG 2000,
    generic tiled TIFF, DICOM WSI, Hamamatsu NDPI/VMS, MIRAX, Leica, Philips, Ventana,
    Zeiss, ...), through openslide-python with the bundled openslide-bin.
``tifffile``
    TIFF files that OpenSlide refuses: OME-TIFF and other pyramids, strip TIFFs.
    Pixels are decoded tile by tile (or strip by strip) on demand.
``pillow``
    Plain images (PNG, JPEG, BMP, ...), such as BreakHis patches; decoded once.

All pixels come out as ``(h, w, 3)`` uint8 RGB; alpha is composited onto white.
A large image without a pyramid gets computed levels (2x2 area means, see
:mod:`napari_histattn.io.levels`). Reads are validated before any backend call:
a level that does not exist, a negative size or an oversized region raise
:class:`InvalidRegionError` (OpenSlide itself silently returns transparent pixels
for a level of 99).

OpenSlide puts a handle into a terminal error state after one undecodable tile.
:class:`Slide` recovers: it reopens the handle, re-reads the region tile by tile on
the file's tile grid, serves mid-grey (128, 128, 128) for each tile that fails,
records it in :attr:`Slide.failed_tiles`, and warns once with
:class:`SlideReadWarning`. Later reads skip known bad tiles without touching
OpenSlide, so they keep working.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import logging
import math
import operator
import os
import sys
import threading
import warnings
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from napari_histattn.errors import SlideError
from napari_histattn.io.levels import (
    COMPUTED_BLOCK,
    DEFAULT_MAX_ARRAY_BYTES,
    ComputedLevels,
    LevelArray,
    plan_computed_levels,
)

__all__ = [
    "DEFAULT_MAX_REGION_PIXELS",
    "PLACEHOLDER_RGB",
    "InvalidRegionError",
    "Slide",
    "SlideReadWarning",
    "can_open",
    "open_slide",
    "rgba_to_rgb",
]

logger = logging.getLogger(__name__)

#: Largest region (width x height) one read may ask for.
DEFAULT_MAX_REGION_PIXELS = 16384 * 16384

#: Colour served for tiles that cannot be decoded.
PLACEHOLDER_RGB = (128, 128, 128)

#: Tile grid used for recovery when the backend does not report one.
_DEFAULT_TILE = 256

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"\xff\xd8\xff",  # JPEG
    b"BM",  # BMP
    b"GIF87a",
    b"GIF89a",
)
_ASSOCIATED_NAMES = ("label", "macro", "thumbnail")
_MAX_ASSOCIATED_PIXELS = 64 * 2**20


class SlideReadWarning(UserWarning):
    """Some tiles of a slide could not be decoded and are shown as grey placeholders."""


class InvalidRegionError(SlideError, ValueError):
    """A read asked for a level, size or region that the slide cannot serve.

    Raised before any backend call. It is both a :class:`SlideError` and a
    :class:`ValueError`.
    """

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        Exception.__init__(self, f"Invalid read from slide {str(self.path)!r}: {cause}")


# --------------------------------------------------------------------------- pixels


def rgba_to_rgb(rgba: np.ndarray, *, premultiplied: bool = False) -> np.ndarray:
    """Composite RGBA (or grey + alpha) pixels onto white; return ``(h, w, 3)`` uint8.

    Parameters
    ----------
    rgba
        ``(h, w, 4)`` or ``(h, w, 2)`` uint8 array.
    premultiplied
        True when colour is already multiplied by alpha (TIFF associated alpha).
        OpenSlide's ``read_region`` returns non-premultiplied RGBA.

    Returns
    -------
    numpy.ndarray
        ``(h, w, 3)`` uint8, C-contiguous. Fully transparent pixels are white.
    """
    colour = rgba[..., :-1]
    alpha = rgba[..., -1]
    if alpha.size == 0 or alpha.min() == 255:
        out = np.ascontiguousarray(colour)
    else:
        a = alpha[..., None].astype(np.uint32)
        c = colour.astype(np.uint32)
        if premultiplied:
            out = np.minimum(c + (255 - a), 255).astype(np.uint8)
        else:
            out = ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out


def _pil_to_rgb(img: Any) -> np.ndarray:
    """PIL image (OpenSlide's RGBA, or any mode) to ``(h, w, 3)`` uint8 on white."""
    if img.mode == "RGBA":
        # getextrema runs in C; a fully opaque tile skips the composite.
        if img.getchannel("A").getextrema()[0] == 255:
            return np.asarray(img.convert("RGB"))
        return rgba_to_rgb(np.asarray(img))
    if img.mode in ("LA", "PA", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        return rgba_to_rgb(np.asarray(img.convert("RGBA")))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


_LITTLE_ENDIAN = sys.byteorder == "little"


def argb_to_rgb(argb: np.ndarray) -> np.ndarray:
    """OpenSlide's premultiplied ARGB (``(h, w)`` uint32) to RGB on white, in place.

    With premultiplied colour, compositing onto white is ``c + (255 - a)`` exactly;
    fully opaque regions (the common case) skip it. ``argb`` is overwritten.

    Parameters
    ----------
    argb
        ``(h, w)`` uint32 array as filled by ``openslide_read_region``.

    Returns
    -------
    numpy.ndarray
        ``(h, w, 3)`` uint8: a writable view into ``argb`` with positive strides
        ``(4 * w, 4, 1)`` (not C-contiguous; ``np.ascontiguousarray`` if needed).
    """
    h, w = argb.shape
    opaque = argb.size == 0 or bool((argb >= 0xFF000000).all())
    if not opaque:
        a = argb >> 24
        inv = 255 - a
        # premultiplied: each channel <= alpha, so adding 255 - alpha cannot carry
        rgb = np.minimum((argb >> 16) & 0xFF, a) + inv
        rgb <<= 8
        rgb |= np.minimum((argb >> 8) & 0xFF, a) + inv
        rgb <<= 8
        rgb |= np.minimum(argb & 0xFF, a) + inv
        argb[...] = rgb | 0xFF000000
    if _LITTLE_ENDIAN:
        # bytes B, G, R, A -> A, R, G, B: RGB become bytes 1..3 of each pixel
        argb.byteswap(inplace=True)
    return argb.view(np.uint8).reshape(h, w, 4)[..., 1:]


def _white(size_wh: tuple[int, int]) -> np.ndarray:
    return np.full((size_wh[1], size_wh[0], 3), 255, dtype=np.uint8)


# --------------------------------------------------------------------------- backends


class _Backend(abc.ABC):
    """What :class:`Slide` needs from a backend. Stored levels only."""

    name = ""
    vendor: str | None = None
    format: str = ""
    level_dimensions: tuple[tuple[int, int], ...] = ()
    level_downsamples: tuple[float, ...] = ()
    level_tile_sizes: tuple[tuple[int, int], ...] = ()
    mpp_xy: tuple[float, float] | None = None
    mpp_source = "none"
    objective_power: float | None = None
    quickhash: str | None = None
    properties: Mapping[str, str] = MappingProxyType({})
    associated_image_names: tuple[str, ...] = ()

    @abc.abstractmethod
    def read(self, level: int, lvl_xy: tuple[int, int], size_wh: tuple[int, int]) -> np.ndarray:
        """Read a region of a stored level as RGB; white outside the level."""

    def associated_image(self, name: str) -> np.ndarray:
        raise KeyError(name)

    @abc.abstractmethod
    def close(self) -> None:
        """Release file handles and caches."""


class _FailureSink(Protocol):
    """Receives tiles that could not be decoded (implemented by Slide)."""

    def tile_failed(self, level: int, lvl_xy: tuple[int, int], exc: BaseException) -> None: ...


#: Builds a backend given the object that receives its tile failures (the Slide).
BackendFactory = Callable[[_FailureSink], _Backend]


def _parse_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


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
        if mx is not None and my is not None:
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


class _TiffLevel:
    """Segment (tile or strip) geometry of one TIFF page used as a pyramid level."""

    def __init__(self, page: Any) -> None:
        from tifffile import TiffPage

        if not isinstance(page, TiffPage):
            page = page.aspage()
        self.page = page
        sep, depth, h, w, contig = page.shaped
        if depth != 1:
            raise ValueError(f"volumetric TIFF pages (depth {depth}) are not supported")
        self.width, self.height = int(w), int(h)
        self.planes = int(sep)
        self.channels = int(sep) * int(contig)
        if page.is_tiled:
            self.seg_w, self.seg_h = int(page.tilewidth), int(page.tilelength)
        else:
            self.seg_w = self.width
            self.seg_h = max(1, min(int(page.rowsperstrip or self.height), self.height))
        self.nx = math.ceil(self.width / self.seg_w)
        self.ny = math.ceil(self.height / self.seg_h)
        self.offsets = page.dataoffsets
        self.bytecounts = page.databytecounts
        self.jpegtables = page.jpegtables


class _TiffBackend(_Backend):
    name = "tifffile"
    vendor = "tifffile"

    def __init__(self, path: Path, sink: _FailureSink, *, cache_bytes: int = 64 * 2**20) -> None:
        import tifffile

        self._path = path
        self._sink = sink
        self._tif = tifffile.TiffFile(str(path))
        try:
            self._setup(tifffile)
        except Exception:
            self._tif.close()
            raise
        self._fh_lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_max = int(cache_bytes)
        self._cache_lock = threading.Lock()
        self._failed: set[tuple[int, int, int]] = set()

    def _setup(self, tifffile: Any) -> None:
        tif = self._tif
        if not tif.series:
            raise ValueError("the TIFF has no image series")
        series = tif.series[0]
        self.format = "ome-tiff" if tif.is_ome else "tiff"
        levels = [_TiffLevel(lvl.pages[0]) for lvl in series.levels]
        # tifffile lists pyramids largest first; drop anything that is not smaller.
        kept = [levels[0]]
        for lvl in levels[1:]:
            if lvl.width < kept[-1].width and lvl.height < kept[-1].height:
                kept.append(lvl)
        self._levels = kept
        page = kept[0].page
        compression = page.compression
        if compression not in tifffile.TIFF.DECOMPRESSORS:
            raise ValueError(f"unsupported TIFF compression: {int(compression)}")
        if page.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"unsupported sample type {page.dtype} (8- or 16-bit only)")
        photometric = int(page.photometric)
        # MINISWHITE 0, MINISBLACK 1, RGB 2, PALETTE 3, YCBCR 6 (tifffile decodes to RGB)
        if photometric not in (0, 1, 2, 3, 6):
            raise ValueError(f"unsupported photometric interpretation {page.photometric!r}")
        if kept[0].channels not in (1, 2, 3, 4):
            raise ValueError(f"unsupported number of samples per pixel: {kept[0].channels}")
        w0, h0 = kept[0].width, kept[0].height
        self.level_dimensions = tuple((lv.width, lv.height) for lv in kept)
        self.level_downsamples = tuple((w0 / lv.width + h0 / lv.height) / 2.0 for lv in kept)
        self.level_tile_sizes = tuple((lv.seg_w, lv.seg_h) for lv in kept)
        props: dict[str, str] = {}
        for tag in page.tags.values():
            if tag.name in ("ImageDescription", "Software", "Make", "Model", "DateTime", "Artist"):
                props[f"tiff.{tag.name}"] = str(tag.value)
        self.properties = MappingProxyType(props)
        self.mpp_xy, self.mpp_source, self.objective_power = self._physical(page)
        self._associated: dict[str, Any] = {}
        for s in tif.series[1:]:
            name = (s.name or "").lower()
            if name in _ASSOCIATED_NAMES and name not in self._associated:
                self._associated[name] = s
        self.associated_image_names = tuple(self._associated)

    def _physical(self, page: Any) -> tuple[tuple[float, float] | None, str, float | None]:
        tif = self._tif
        if tif.is_ome and tif.ome_metadata:
            found = _ome_physical(tif.ome_metadata)
            if found[0] is not None:
                return found[0], "ome", found[1]
        if tif.is_svs:
            svs = _aperio_fields(page.description)
            mpp = _parse_float(svs.get("MPP"))
            if mpp is not None:
                return (mpp, mpp), "svs-description", _parse_float(svs.get("AppMag"))
        tags = page.tags
        unit_tag = tags.get("ResolutionUnit")
        xres, yres = tags.get("XResolution"), tags.get("YResolution")
        if unit_tag is None or xres is None or yres is None:
            return None, "none", None
        um_per_unit = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}.get(int(unit_tag.value))
        if um_per_unit is None:
            return None, "none", None
        px_x = _rational(xres.value)
        px_y = _rational(yres.value)
        if not px_x or not px_y:
            return None, "none", None
        return (um_per_unit / px_x, um_per_unit / px_y), "tiff-resolution", None

    def _decode_tile(self, level: int, tx: int, ty: int) -> np.ndarray:
        """Decode the file tile ``(tx, ty)`` of a level to RGB; grey if it fails."""
        key = (level, tx, ty)
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        lv = self._levels[level]
        page = lv.page
        th = min(lv.seg_h, lv.height - ty * lv.seg_h)
        tw = min(lv.seg_w, lv.width - tx * lv.seg_w)
        if key in self._failed:
            return np.full((th, tw, 3), PLACEHOLDER_RGB, dtype=np.uint8)
        try:
            planes: list[np.ndarray | None] = []
            for p in range(lv.planes):
                index = p * lv.ny * lv.nx + ty * lv.nx + tx
                nbytes = int(lv.bytecounts[index])
                if nbytes == 0:
                    planes.append(None)
                    continue
                with self._fh_lock:
                    fh = self._tif.filehandle
                    fh.seek(int(lv.offsets[index]))
                    data = fh.read(nbytes)
                seg, _, _ = page.decode(data, index, jpegtables=lv.jpegtables)
                planes.append(None if seg is None else np.asarray(seg)[0, :th, :tw, :])
            tile = self._to_rgb(planes, page, (tw, th))
        except Exception as exc:
            with self._cache_lock:
                self._failed.add(key)
            self._sink.tile_failed(level, (tx * lv.seg_w, ty * lv.seg_h), exc)
            return np.full((th, tw, 3), PLACEHOLDER_RGB, dtype=np.uint8)
        tile.setflags(write=False)
        with self._cache_lock:
            self._cache[key] = tile
            self._cache_bytes += tile.nbytes
            while self._cache_bytes > self._cache_max and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return tile

    @staticmethod
    def _to_rgb(planes: list[np.ndarray | None], page: Any, size_wh: tuple[int, int]) -> np.ndarray:
        tw, th = size_wh
        if all(p is None for p in planes):
            return _white(size_wh)
        filled = [np.zeros((th, tw, 1), page.dtype) if p is None else p for p in planes]
        data = filled[0] if len(filled) == 1 else np.concatenate(filled, axis=-1)
        photometric = int(page.photometric)
        if photometric == 3:  # palette: 16-bit colour map
            cmap = (np.asarray(page.colormap) >> 8).astype(np.uint8).T
            return np.ascontiguousarray(cmap[data[..., 0]])
        if data.dtype == np.uint16:
            data = (data >> 8).astype(np.uint8)
        if photometric == 0:  # min-is-white
            data = data.copy()
            data[..., :1] = 255 - data[..., :1]
        channels = data.shape[-1]
        if channels == 1:
            return np.repeat(data, 3, axis=-1)
        if channels == 3:
            return np.ascontiguousarray(data)
        extrasamples = tuple(int(e) for e in (page.extrasamples or ()))
        premultiplied = bool(extrasamples) and extrasamples[0] == 1
        if channels in (2, 4):
            return rgba_to_rgb(data, premultiplied=premultiplied)
        return np.ascontiguousarray(data[..., :3])

    def read(self, level: int, lvl_xy: tuple[int, int], size_wh: tuple[int, int]) -> np.ndarray:
        lv = self._levels[level]
        x, y = lvl_xy
        w, h = size_wh
        out = _white(size_wh)
        cx0, cy0 = max(x, 0), max(y, 0)
        cx1, cy1 = min(x + w, lv.width), min(y + h, lv.height)
        if cx0 >= cx1 or cy0 >= cy1:
            return out
        for ty in range(cy0 // lv.seg_h, (cy1 - 1) // lv.seg_h + 1):
            for tx in range(cx0 // lv.seg_w, (cx1 - 1) // lv.seg_w + 1):
                tile = self._decode_tile(level, tx, ty)
                ox, oy = tx * lv.seg_w, ty * lv.seg_h
                ix0, iy0 = max(cx0, ox), max(cy0, oy)
                ix1, iy1 = min(cx1, ox + tile.shape[1]), min(cy1, oy + tile.shape[0])
                out[iy0 - y : iy1 - y, ix0 - x : ix1 - x] = tile[
                    iy0 - oy : iy1 - oy, ix0 - ox : ix1 - ox
                ]
        return out

    def associated_image(self, name: str) -> np.ndarray:
        series = self._associated[name]
        if math.prod(series.shape) > _MAX_ASSOCIATED_PIXELS * 4:
            raise SlideError(self._path, f"associated image {name!r} is too large")
        with self._fh_lock:
            data = series.asarray()
        if data.ndim == 2:
            data = data[..., None]
        page = series.pages[0]
        return self._to_rgb([data], page, (data.shape[1], data.shape[0]))

    def close(self) -> None:
        self._tif.close()
        with self._cache_lock:
            self._cache.clear()


def _aperio_fields(description: str) -> dict[str, str]:
    """``key = value`` fields of an Aperio ImageDescription (``...|MPP = 0.499|...``)."""
    fields = {}
    for part in description.split("|")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _rational(value: Any) -> float | None:
    try:
        if isinstance(value, tuple):
            num, den = value
            return num / den if den else None
        return float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


_OME_UNIT_UM = {
    "pm": 1e-6,
    "nm": 1e-3,
    "µm": 1.0,
    "um": 1.0,
    "\u03bcm": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def _ome_physical(xml: str) -> tuple[tuple[float, float] | None, float | None]:
    """``(mpp_xy, objective_power)`` from OME-XML (first image)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    mpp = None
    if pixels is not None:
        sx = _parse_float(pixels.get("PhysicalSizeX"))
        sy = _parse_float(pixels.get("PhysicalSizeY"))
        ux = _OME_UNIT_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
        uy = _OME_UNIT_UM.get(pixels.get("PhysicalSizeYUnit", "µm"))
        if sx and sy and ux and uy:
            mpp = (sx * ux, sy * uy)
    objective = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Objective"), None)
    power = None if objective is None else _parse_float(objective.get("NominalMagnification"))
    return mpp, power


class _PillowBackend(_Backend):
    name = "pillow"
    vendor = "pillow"

    def __init__(self, path: Path) -> None:
        from PIL import Image

        self._path = path
        self._lock = threading.Lock()
        self._rgb: np.ndarray | None = None
        with Image.open(path) as img:
            self.format = (img.format or "image").lower()
            w, h = img.size
            self.properties = MappingProxyType(
                {
                    f"pillow.{k}": str(v)
                    for k, v in img.info.items()
                    if isinstance(v, (str, int, float, tuple))
                }
            )
        self.level_dimensions = ((int(w), int(h)),)
        self.level_downsamples = (1.0,)
        self.level_tile_sizes = ((int(w), int(h)),)

    def _pixels(self) -> np.ndarray:
        with self._lock:
            if self._rgb is None:
                from PIL import Image

                try:
                    with Image.open(self._path) as img:
                        img.load()
                        rgb = _pil_to_rgb(img)
                except Exception as exc:
                    raise SlideError(self._path, f"cannot decode the image: {exc}") from exc
                rgb = np.ascontiguousarray(rgb)
                rgb.setflags(write=False)
                self._rgb = rgb
            return self._rgb

    def read(self, level: int, lvl_xy: tuple[int, int], size_wh: tuple[int, int]) -> np.ndarray:
        src = self._pixels()
        x, y = lvl_xy
        w, h = size_wh
        ih, iw = src.shape[:2]
        cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
        if cx0 == x and cy0 == y and cx1 == x + w and cy1 == y + h:
            return src[y : y + h, x : x + w].copy()
        out = _white(size_wh)
        if cx0 < cx1 and cy0 < cy1:
            out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = src[cy0:cy1, cx0:cx1]
        return out

    def close(self) -> None:
        with self._lock:
            self._rgb = None


# --------------------------------------------------------------------------- Slide


def _check_mpp_override(mpp_override: tuple[float, float]) -> tuple[float, float]:
    try:
        mx, my = (float(v) for v in mpp_override)
    except (TypeError, ValueError):
        raise ValueError(
            f"mpp_override must be two positive numbers, got {mpp_override!r}"
        ) from None
    if not (math.isfinite(mx) and math.isfinite(my) and mx > 0 and my > 0):
        raise ValueError(f"mpp_override must be two positive numbers, got {mpp_override!r}")
    return mx, my


class Slide:
    """An open slide: metadata, region reads and lazy pyramid levels.

    Create with :func:`open_slide`. Read-only and safe to read from several
    threads. Use as a context manager or call :meth:`close`.

    Attributes
    ----------
    path : Path
    backend : str
        ``"openslide"``, ``"tifffile"`` or ``"pillow"``.
    vendor : str or None
        OpenSlide's vendor (``"aperio"``, ``"generic-tiff"``, ``"dicom"``, ...), else
        the backend name.
    format : str
        The vendor for OpenSlide; ``"tiff"``, ``"ome-tiff"``, ``"png"``, ``"jpeg"``, ...
        otherwise.
    mpp_xy : tuple of float or None
        Micrometres per level-0 pixel (x, y); None when unknown.
    mpp_source : str
        ``"openslide"``, ``"tiff-resolution"``, ``"ome"``, ``"svs-description"``
        (Aperio SVS read by tifffile), ``"override"`` or ``"none"``.
    objective_power : float or None
    level_count : int
        Stored plus computed levels.
    level_dimensions : tuple of (int, int)
        ``(width, height)`` per level, level 0 first.
    level_downsamples : tuple of float
        Stored levels as the backend reports them (OpenSlide averages x and y);
        computed level ``j`` above the smallest stored level ``b`` has exactly
        ``level_downsamples[b] * 2**j``.
    level_tile_sizes : tuple of (int, int)
        ``(tile_w, tile_h)`` of the file's tile grid (strip: ``(width, rows)``;
        computed levels: their cache blocks).
    computed_levels : tuple of int
        Indices of the levels computed on demand.
    quickhash : str or None
        OpenSlide's ``openslide.quickhash-1``.
    properties : Mapping[str, str]
    associated_image_names : tuple of str
    failed_tiles : list of (level, lvl_x, lvl_y)
        Tiles that could not be decoded: level and the tile's top-left corner in
        that level's pixels.
    max_region_pixels : int
        Largest ``width * height`` one read may request.
    """

    def __init__(
        self,
        path: Path,
        backend_factory: BackendFactory,
        *,
        mpp_override: tuple[float, float] | None = None,
        max_region_pixels: int = DEFAULT_MAX_REGION_PIXELS,
        max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES,
        computed_cache_bytes: int = 128 * 2**20,
    ) -> None:
        if mpp_override is not None:
            mx, my = _check_mpp_override(mpp_override)
        self.path = path
        self._closed = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._warned = False
        self.failed_tiles: list[tuple[int, int, int]] = []
        self._backend = backend = backend_factory(self)
        self.max_region_pixels = int(max_region_pixels)
        self.max_array_bytes = int(max_array_bytes)

        self.backend = backend.name
        self.vendor = backend.vendor
        self.format = backend.format
        self.properties: Mapping[str, str] = backend.properties
        self.quickhash = backend.quickhash
        self.objective_power = backend.objective_power
        self.associated_image_names = backend.associated_image_names
        if mpp_override is not None:
            self.mpp_xy: tuple[float, float] | None = (mx, my)
            self.mpp_source = "override"
        else:
            self.mpp_xy = backend.mpp_xy
            self.mpp_source = backend.mpp_source if backend.mpp_xy is not None else "none"

        self._n_stored = len(backend.level_dimensions)
        base = self._n_stored - 1
        sizes = plan_computed_levels(backend.level_dimensions[base])
        self._computed = ComputedLevels(
            self._read_checked,
            base,
            backend.level_dimensions[base],
            sizes,
            cache_bytes=computed_cache_bytes,
        )
        base_ds = backend.level_downsamples[base]
        self.level_dimensions: tuple[tuple[int, int], ...] = backend.level_dimensions + tuple(sizes)
        self.level_downsamples: tuple[float, ...] = backend.level_downsamples + tuple(
            base_ds * 2.0**j for j in range(1, len(sizes) + 1)
        )
        self.level_tile_sizes: tuple[tuple[int, int], ...] = backend.level_tile_sizes + tuple(
            (COMPUTED_BLOCK, COMPUTED_BLOCK) for _ in sizes
        )
        self.level_count = len(self.level_dimensions)
        self.computed_levels: tuple[int, ...] = tuple(range(self._n_stored, self.level_count))
        self._level_arrays: dict[int, LevelArray] = {}

    # -- lifecycle

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release file handles and caches. Reads afterwards raise :class:`SlideError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # OpenSlide must not close a handle while another thread reads from it.
            if not self._idle.wait_for(lambda: self._inflight == 0, timeout=60):
                logger.warning("%s: closing while reads are still running", self.path)
        self._computed.clear()
        self._backend.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Mark a read in flight so that :meth:`close` waits for it."""
        with self._lock:
            if self._closed:
                raise SlideError(self.path, "the slide is closed")
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                if self._closed and self._inflight == 0:
                    self._idle.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        w, h = self.level_dimensions[0]
        state = " closed" if self._closed else ""
        return (
            f"<Slide {self.path.name!r} {self.backend}/{self.vendor} {w}x{h} "
            f"levels={self.level_count} mpp={self.mpp_xy}{state}>"
        )

    # -- failures

    def tile_failed(self, level: int, lvl_xy: tuple[int, int], exc: BaseException) -> None:
        entry = (int(level), int(lvl_xy[0]), int(lvl_xy[1]))
        with self._lock:
            if entry in self.failed_tiles:
                return
            self.failed_tiles.append(entry)
            first = not self._warned
            self._warned = True
        logger.debug("tile at level %d %s of %s unreadable: %s", level, lvl_xy, self.path, exc)
        if first:
            msg = (
                f"{self.path.name}: a tile at level {level}, {lvl_xy} could not be decoded "
                f"({exc}); unreadable tiles are shown mid-grey and listed in Slide.failed_tiles"
            )
            warnings.warn(msg, SlideReadWarning, stacklevel=4)

    # -- validation

    def _check_level(self, level: Any) -> int:
        if isinstance(level, (bool, np.bool_)):
            raise InvalidRegionError(self.path, f"level must be an integer, got {level!r}")
        try:
            k = operator.index(level)
        except TypeError:
            raise InvalidRegionError(
                self.path, f"level must be an integer, got {level!r}"
            ) from None
        if not 0 <= k < self.level_count:
            raise InvalidRegionError(
                self.path,
                f"level {k} does not exist; the slide has levels 0 to {self.level_count - 1}",
            )
        return k

    def _check_region(
        self, xy: Any, size_wh: Any, what: str
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        try:
            x, y = (operator.index(v) for v in xy)
            w, h = (operator.index(v) for v in size_wh)
        except (TypeError, ValueError):
            raise InvalidRegionError(
                self.path,
                f"{what} and size must be pairs of integers, got {xy!r} and {size_wh!r}",
            ) from None
        if w < 0 or h < 0:
            raise InvalidRegionError(self.path, f"negative region size {w}x{h}")
        if w * h > self.max_region_pixels:
            raise InvalidRegionError(
                self.path,
                f"region {w}x{h} has {w * h} pixels, more than the limit of "
                f"{self.max_region_pixels} (Slide.max_region_pixels); read it in pieces",
            )
        return (int(x), int(y)), (int(w), int(h))

    # -- reading

    def _read_checked(
        self, level: int, lvl_xy: tuple[int, int], size_wh: tuple[int, int]
    ) -> np.ndarray:
        if size_wh[0] == 0 or size_wh[1] == 0:
            return _white(size_wh)
        if level < self._n_stored:
            return self._backend.read(level, lvl_xy, size_wh)
        return self._computed.read(level, lvl_xy, size_wh)

    def read_level_region(
        self, level: int, lvl_xy: tuple[int, int], size_wh: tuple[int, int]
    ) -> np.ndarray:
        """Read a region whose origin is in the pixels of ``level``.

        Parameters
        ----------
        level
            Pyramid level (stored or computed).
        lvl_xy
            Top-left corner ``(x, y)`` in that level's pixels; may lie outside.
        size_wh
            ``(width, height)`` of the region.

        Returns
        -------
        numpy.ndarray
            ``(h, w, 3)`` uint8 RGB, writable; pixels outside the slide are white.
            Possibly a non-contiguous view with positive strides (OpenSlide reads
            are not copied once more); ``np.ascontiguousarray`` it if needed.

        Raises
        ------
        InvalidRegionError
            Level out of range, negative or oversized region (before any read).
        """
        k = self._check_level(level)
        xy, wh = self._check_region(lvl_xy, size_wh, "lvl_xy")
        with self._reading():
            return self._read_checked(k, xy, wh)

    def read_region(
        self, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]
    ) -> np.ndarray:
        """Read a region like ``OpenSlide.read_region``, as RGB composited onto white.

        Parameters
        ----------
        l0_xy
            Top-left corner ``(x, y)`` in level-0 pixels.
        level
            Pyramid level to read from.
        size_wh
            ``(width, height)`` in that level's pixels.

        Returns
        -------
        numpy.ndarray
            ``(h, w, 3)`` uint8 RGB, as for :meth:`read_level_region`.
        """
        k = self._check_level(level)
        xy, wh = self._check_region(l0_xy, size_wh, "l0_xy")
        with self._reading():
            if wh[0] == 0 or wh[1] == 0:
                return _white(wh)
            if k < self._n_stored and isinstance(self._backend, _OpenSlideBackend):
                return self._backend.read_l0(xy, k, wh)
            ds = self.level_downsamples[k]
            return self._read_checked(k, (round(xy[0] / ds), round(xy[1] / ds)), wh)

    def level_array(self, level: int) -> LevelArray:
        """The lazy ``(h, w, 3)`` uint8 array of one level (for napari)."""
        k = self._check_level(level)
        with self._lock:
            arr = self._level_arrays.get(k)
            if arr is None:
                arr = LevelArray(
                    self.read_level_region,
                    k,
                    self.level_dimensions[k],
                    self.level_downsamples[k],
                    name=self.path.name,
                    max_array_bytes=self.max_array_bytes,
                    computed=k in self.computed_levels,
                )
                self._level_arrays[k] = arr
        return arr

    @property
    def levels(self) -> list[LevelArray]:
        """One :class:`LevelArray` per level, largest first (napari multiscale data)."""
        return [self.level_array(k) for k in range(self.level_count)]

    def best_level_for_downsample(self, downsample: float) -> int:
        """The largest level whose downsample does not exceed ``downsample``."""
        best = 0
        for k, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-9):
                best = k
        return best

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (``label``, ``macro``, ``thumbnail``, ...) as RGB uint8.

        Raises
        ------
        KeyError
            The slide has no such image (see :attr:`associated_image_names`).
        """
        if name not in self.associated_image_names:
            raise KeyError(
                f"{self.path.name} has no associated image {name!r}; "
                f"it has {list(self.associated_image_names)}"
            )
        with self._reading():
            return self._backend.associated_image(name)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """A downscaled view whose longer side is at most ``max_size``.

        Read whole from the smallest level that is at least ``max_size`` on its
        longer side (or the smallest level when that one would be too large to
        read whole), then resized with a box filter.
        """
        from PIL import Image

        if max_size < 1:
            raise ValueError(f"max_size must be positive, got {max_size}")
        order = sorted(range(self.level_count), key=lambda k: max(self.level_dimensions[k]))
        k = next((k for k in order if max(self.level_dimensions[k]) >= max_size), order[-1])
        w, h = self.level_dimensions[k]
        if w * h > 4096 * 4096:
            k = order[0]
            w, h = self.level_dimensions[k]
        rgb = self.read_level_region(k, (0, 0), (w, h))
        scale = max_size / max(w, h)
        if scale >= 1:
            return rgb
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description of the slide (for napari layer metadata)."""
        return {
            "path": str(self.path),
            "backend": self.backend,
            "vendor": self.vendor,
            "format": self.format,
            "mpp_xy": None if self.mpp_xy is None else list(self.mpp_xy),
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "level_tile_sizes": [list(t) for t in self.level_tile_sizes],
            "computed_levels": list(self.computed_levels),
            "quickhash": self.quickhash,
            "associated_image_names": list(self.associated_image_names),
            "failed_tiles": [list(t) for t in self.failed_tiles],
        }


# --------------------------------------------------------------------------- opening


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _detect_openslide(path: Path) -> str | None:
    try:
        import openslide

        return openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None


_BACKENDS = ("openslide", "tifffile", "pillow")


def open_slide(
    path: str | os.PathLike[str],
    *,
    mpp_override: tuple[float, float] | None = None,
    backend: str | None = None,
    max_region_pixels: int = DEFAULT_MAX_REGION_PIXELS,
    max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES,
) -> Slide:
    """Open a whole-slide image or a plain image.

    Parameters
    ----------
    path
        The file (for DICOM WSI, any one file of the series).
    mpp_override
        ``(mpp_x, mpp_y)`` to use instead of the file's own (``mpp_source`` becomes
        ``"override"``).
    backend
        Force ``"openslide"``, ``"tifffile"`` or ``"pillow"``; by default OpenSlide
        for what it detects (except generic TIFFs whose pyramid or OME metadata only
        tifffile sees), tifffile for other TIFFs, Pillow for other images.
    max_region_pixels
        Largest ``width * height`` one read may request.
    max_array_bytes
        Largest level ``np.asarray(level_array)`` will materialise.

    Returns
    -------
    Slide

    Raises
    ------
    SlideError
        The file is missing or no backend can open it; the message names the file
        and why each backend that was tried refused it (the first refusal is
        chained as ``__cause__``).
    """
    if mpp_override is not None:
        _check_mpp_override(mpp_override)
    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS} or None, got {backend!r}")
    p = Path(path)
    if not p.exists():
        raise SlideError(p, "no such file")
    if not p.is_file():
        raise SlideError(p, "not a file")
    try:
        head = _head(p)
    except OSError as exc:
        raise SlideError(p, f"cannot read the file: {exc}") from exc

    vendor = _detect_openslide(p)
    is_tiff = head[:4] in _TIFF_MAGIC
    if backend is not None:
        order = [backend]
    elif vendor is not None:
        order = ["openslide", "tifffile"] if is_tiff else ["openslide"]
    else:
        order = ["tifffile"] if is_tiff else ["pillow"]

    causes: list[str] = []
    first_exc: BaseException | None = None
    for name in order:
        try:
            return Slide(
                p,
                _backend_factory(name, p, vendor),
                mpp_override=mpp_override,
                max_region_pixels=max_region_pixels,
                max_array_bytes=max_array_bytes,
            )
        except SlideError:
            raise
        except Exception as exc:
            label = {"openslide": f"OpenSlide ({vendor or 'not detected'})"}.get(name, name)
            causes.append(f"{label}: {exc}")
            first_exc = first_exc or exc
    if vendor is None and not is_tiff and backend is None:
        causes.insert(0, "not a format OpenSlide recognises nor a TIFF")
    raise SlideError(p, "; ".join(causes)) from first_exc


def _backend_factory(name: str, path: Path, vendor: str | None) -> BackendFactory:
    """A function that builds backend ``name`` for ``path``, given the Slide as sink."""

    def build(sink: _FailureSink) -> _Backend:
        if name == "pillow":
            return _PillowBackend(path)
        if name == "tifffile":
            return _TiffBackend(path, sink)
        import openslide

        handle = openslide.OpenSlide(str(path))
        try:
            if vendor == "generic-tiff" and _tifffile_sees_more(path, handle.level_count):
                try:
                    tiff = _TiffBackend(path, sink)
                except Exception as exc:
                    logger.debug("tifffile could not open %s (%s); using OpenSlide", path, exc)
                else:
                    handle.close()
                    return tiff
            return _OpenSlideBackend(path, handle, sink)
        except BaseException:
            handle.close()
            raise

    return build


def _tifffile_sees_more(path: Path, openslide_levels: int) -> bool:
    """True for a tiled TIFF that OpenSlide reads as generic-tiff but tifffile reads better.

    OpenSlide's generic-tiff takes levels from successive IFDs only: it misses
    SubIFD pyramids (OME-TIFF, ``tifffile`` output) and OME physical sizes.
    """
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            return bool(tif.is_ome) or len(tif.series[0].levels) > openslide_levels
    except Exception:
        return False


def _tiff_readable(path: Path, *, vendor: str | None) -> bool:
    """Cheap TIFF check from the first IFD: codec available, sample layout supported."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        page = tif.pages.first
        if page.compression not in tifffile.TIFF.DECOMPRESSORS:
            return False
        if vendor is not None:
            return True
        return (
            page.dtype in (np.uint8, np.uint16)
            and int(page.photometric) in (0, 1, 2, 3, 6)
            and page.samplesperpixel in (1, 2, 3, 4)
        )


def can_open(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`open_slide` is likely to open ``path``; cheap, never raises.

    Looks at the file's magic bytes, asks ``OpenSlide.detect_format``, and for TIFF
    files checks that the first page's compression can be decoded. No pixel data is
    read. A True answer can still end in :class:`SlideError` for files that are
    damaged beyond their headers (for example a DICOM file OpenSlide detects but
    cannot open).
    """
    try:
        p = Path(path)
        if not p.is_file():
            return False
        head = _head(p)
        vendor = _detect_openslide(p)
        if head[:4] in _TIFF_MAGIC:
            return _tiff_readable(p, vendor=vendor)
        if vendor is not None:
            return True
        if head.startswith(_IMAGE_MAGIC) or head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            from PIL import Image

            with Image.open(p) as img:
                return img.size[0] > 0 and img.size[1] > 0
        return False
    except Exception:
        return False
