"""The backend interface behind :class:`~napari_histattn.io.slide.Slide`, and pixel conversions.

A backend serves the stored levels of one file as ``(h, w, 3)`` uint8 RGB
(:class:`_Backend`); one module per backend implements it
(:mod:`~napari_histattn.io.openslide_backend`, :mod:`~napari_histattn.io.tiff_backend`,
:mod:`~napari_histattn.io.pillow_backend`). A new backend subclasses
:class:`_Backend`, reports undecodable tiles to its :class:`_FailureSink` (the
Slide), and gets a name in :func:`napari_histattn.io.slide.open_slide`'s order.
"""

from __future__ import annotations

import abc
import logging
import math
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger("napari_histattn.io.slide")

#: Colour served for tiles that cannot be decoded.
PLACEHOLDER_RGB = (128, 128, 128)

#: Tile grid used for recovery when the backend does not report one.
_DEFAULT_TILE = 256

_ASSOCIATED_NAMES = ("label", "macro", "thumbnail")
_MAX_ASSOCIATED_PIXELS = 64 * 2**20


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


def significant_bits(top: int) -> int:
    """Bits a sample needs to hold ``top`` (8 to 16): a 12-bit camera's 4095 needs 12."""
    return min(16, max(8, int(top).bit_length())) if top > 0 else 16


def scale_to_uint8(data: np.ndarray, bits: int) -> np.ndarray:
    """Samples of ``bits`` significant bits (in a wider integer type) to 0-255, rounded;
    values above the range (a sample the estimate missed) saturate at 255."""
    full = (1 << bits) - 1
    scaled = (np.clip(data, 0, None).astype(np.uint32) * 255 + full // 2) // full
    return np.minimum(scaled, 255).astype(np.uint8)


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
    #: Why the file's own resolution was not believed (None: nothing to say).
    mpp_note: str | None = None
    #: Other things about the pixels a user should know (how 16-bit values were scaled).
    metadata_notes: tuple[str, ...] = ()
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
