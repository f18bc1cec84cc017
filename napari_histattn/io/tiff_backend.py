"""The tifffile backend: TIFFs that OpenSlide refuses (OME-TIFF and other pyramids, strip TIFFs).

Pixels are decoded tile by tile (or strip by strip) on demand, with a small
decoded-tile cache; mpp comes from OME-XML, Aperio descriptions or the
resolution tags.
"""

from __future__ import annotations

import math
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from napari_histattn.errors import SlideError
from napari_histattn.io.backend import (
    _ASSOCIATED_NAMES,
    _MAX_ASSOCIATED_PIXELS,
    PLACEHOLDER_RGB,
    _Backend,
    _FailureSink,
    _parse_float,
    _white,
    rgba_to_rgb,
    scale_to_uint8,
    significant_bits,
)
from napari_histattn.io.limits import print_resolution


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
        self._bits = 8
        if page.dtype == np.uint16 and int(page.photometric) != 3:
            self._bits = self._sample_bits()
            if self._bits < 16:
                self.metadata_notes = (
                    f"16-bit samples holding {self._bits}-bit values: scaled from "
                    f"0-{(1 << self._bits) - 1} to 0-255",
                )
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
        if print_resolution(px_x, um_per_unit) or print_resolution(px_y, um_per_unit):
            dpi = px_x * 25400.0 / um_per_unit
            self.mpp_note = (
                f"the resolution tag says {dpi:.4g} pixels per inch, a screen or print DPI, "
                "not a microscope's: the pixel size is unknown"
            )
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

    def _sample_bits(self) -> int:
        """Significant bits of a 16-bit image: from MaxSampleValue, else from the largest
        value in up to 8 segments of the smallest level (12-bit-in-16 cameras are common;
        read as 16-bit they would be almost black)."""
        tag = self._levels[0].page.tags.get("MaxSampleValue")
        top = 0
        if tag is not None:
            top = int(np.max(np.atleast_1d(tag.value)))
        if not 0 < top < 65535:
            top = 0
            lv = self._levels[-1]
            n = lv.nx * lv.ny * lv.planes
            for index in sorted({int(i) for i in np.linspace(0, n - 1, min(n, 8)).round()}):
                nbytes = int(lv.bytecounts[index])
                if nbytes == 0:
                    continue
                fh = self._tif.filehandle
                fh.seek(int(lv.offsets[index]))
                try:
                    seg, _, _ = lv.page.decode(fh.read(nbytes), index, jpegtables=lv.jpegtables)
                except Exception:  # a damaged segment: the others decide
                    continue
                if seg is not None:
                    top = max(top, int(np.max(seg)))
        return significant_bits(top)

    def _to_rgb(
        self, planes: list[np.ndarray | None], page: Any, size_wh: tuple[int, int]
    ) -> np.ndarray:
        tw, th = size_wh
        if all(p is None for p in planes):
            return _white(size_wh)
        filled = [np.zeros((th, tw, 1), page.dtype) if p is None else p for p in planes]
        data = filled[0] if len(filled) == 1 else np.concatenate(filled, axis=-1)
        photometric = int(page.photometric)
        if photometric == 3:  # palette: 16-bit colour map
            cmap = (np.asarray(page.colormap) >> 8).astype(np.uint8).T
            return np.ascontiguousarray(cmap[data[..., 0]])
        if data.dtype == np.uint16:  # scaled by the image's real range, not its type's
            data = scale_to_uint8(data, self._bits)
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
