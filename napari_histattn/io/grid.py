"""The attention grid's geometry and what is found on it: :class:`GridGeometry`, :class:`Region`, :class:`Patch`.

An attention map is a ``(rows, cols)`` float array over a regular grid of patches. Its
:class:`GridGeometry` says where the grid lies on the slide, in level-0 pixels: cell
``(r, c)`` covers the patch whose top-left corner is
``origin_l0_xy + (c * stride_x, r * stride_y)`` and whose size is ``patch_l0_wh``.
Coordinates are continuous level-0 pixel coordinates (QuPath's and OpenSlide's
convention: pixel ``i`` spans ``[i, i + 1)``), ``x`` first. Also here: class
colours (QuPath's where it has one) and the percentile normalisation of a map.

GUI-free: numpy and shapely only. :mod:`napari_histattn.io.regions` finds regions.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

DEFAULT_CLASS_NAME = "Attention"

# QuPath's default colours for its built-in classes, so that an export looks familiar there.
_QUPATH_COLOURS: dict[str, tuple[int, int, int]] = {
    "tumor": (200, 0, 0),
    "tumour": (200, 0, 0),
    "stroma": (150, 200, 150),
    "immune cells": (160, 90, 160),
    "necrosis": (50, 50, 50),
    "other": (255, 200, 0),
    "region*": (0, 0, 180),
    "ignore*": (180, 180, 180),
    "positive": (200, 50, 50),
    "negative": (112, 112, 225),
    "attention": (255, 128, 0),
    # This project's own class names, so that QuPath shows each in its own colour
    # (hashing put "lesion" and "benign" on the same palette entry).
    "lesion": (200, 0, 0),
    "benign": (0, 158, 115),
    "lookalike": (0, 230, 255),
    "normal": (150, 200, 150),
}

# Colour-blind-friendly palette (Okabe-Ito, without black) for every other class name.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)


def class_colour(class_name: str) -> tuple[int, int, int]:
    """Return the default RGB colour of a class name.

    QuPath's built-in classes (Tumor, Stroma, Immune cells, Necrosis, Other, Region*,
    Ignore*, Positive, Negative) keep QuPath's colours; any other name gets a colour
    from a fixed colour-blind-friendly palette chosen by a stable hash of the name, so
    the same class has the same colour in every run and every file.
    """
    known = _QUPATH_COLOURS.get(class_name.strip().lower())
    if known is not None:
        return known
    digest = hashlib.sha256(class_name.encode("utf-8")).digest()
    return _PALETTE[digest[0] % len(_PALETTE)]


@dataclass(frozen=True)
class GridGeometry:
    """Where an attention grid lies on the slide, in level-0 pixels.

    Attributes
    ----------
    origin_l0_xy
        Top-left corner of the patch of cell ``(0, 0)``.
    stride_l0_xy
        Distance between the top-left corners of neighbouring cells.
    patch_l0_wh
        Size of the patch that one cell covers (may differ from the stride: patches
        overlap when it is larger and leave gaps when it is smaller).
    """

    origin_l0_xy: tuple[float, float]
    stride_l0_xy: tuple[float, float]
    patch_l0_wh: tuple[float, float]

    def __post_init__(self) -> None:
        for name in ("origin_l0_xy", "stride_l0_xy", "patch_l0_wh"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or not all(math.isfinite(v) for v in value):
                raise ValueError(f"{name} must be two finite numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if min(self.stride_l0_xy) <= 0 or min(self.patch_l0_wh) <= 0:
            raise ValueError(
                f"stride and patch size must be positive, got {self.stride_l0_xy}, {self.patch_l0_wh}"
            )

    @classmethod
    def from_any(cls, geometry: Any) -> GridGeometry:
        """Build from a ``GridGeometry``, a mapping or any object with the three attributes."""
        if isinstance(geometry, cls):
            return geometry
        names = ("origin_l0_xy", "stride_l0_xy", "patch_l0_wh")
        if isinstance(geometry, Mapping):
            return cls(*(geometry[n] for n in names))
        return cls(*(getattr(geometry, n) for n in names))

    def cell_l0_xywh(self, r: int, c: int) -> tuple[float, float, float, float]:
        """Return ``(x, y, w, h)`` of the patch of cell ``(r, c)`` in level-0 pixels."""
        ox, oy = self.origin_l0_xy
        sx, sy = self.stride_l0_xy
        return (ox + c * sx, oy + r * sy, self.patch_l0_wh[0], self.patch_l0_wh[1])


def _frozen_mapping(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(values))


@dataclass(frozen=True)
class Region:
    """One annotated region in level-0 pixels.

    Attributes
    ----------
    polygon
        ``Polygon`` or ``MultiPolygon`` in level-0 pixel coordinates ``(x, y)``.
    class_name
        Classification name (QuPath's ``classification.name``); ``None`` when unclassified.
    color_rgb
        Display colour; defaults to :func:`class_colour` of ``class_name`` (grey when
        unclassified).
    rank
        1 for the most attended region.
    measurements
        Name to number, for example ``attention_max``, ``attention_mean``,
        ``attention_mass``, ``n_patches``, ``area_px2``, ``area_um2``, ``prob_<class>``.
    name
        Display name; defaults to ``"Attention region <rank>"``.
    metadata
        Name to text (QuPath's object metadata, GeoJSON ``properties.metadata``): who
        made the region (``source`` ``model`` or ``expert``, ``author``, ``model``) and
        a reviewer's decision on it (``review``, ``model_class``).
    """

    polygon: BaseGeometry
    class_name: str | None = DEFAULT_CLASS_NAME
    color_rgb: tuple[int, int, int] | None = None
    rank: int = 1
    measurements: Mapping[str, float] = field(default_factory=dict)
    name: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.polygon, Polygon | MultiPolygon):
            raise TypeError(
                f"Region.polygon must be a shapely Polygon or MultiPolygon, got {type(self.polygon).__name__}"
            )
        if self.color_rgb is None:
            colour = (
                class_colour(self.class_name) if self.class_name is not None else (128, 128, 128)
            )
        else:
            colour = tuple(int(v) for v in self.color_rgb)  # type: ignore[assignment]
            if len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
                raise ValueError(f"color_rgb must be three integers 0-255, got {self.color_rgb!r}")
        object.__setattr__(self, "color_rgb", colour)
        object.__setattr__(
            self, "measurements", _frozen_mapping({str(k): v for k, v in self.measurements.items()})
        )
        object.__setattr__(
            self, "metadata", _frozen_mapping({str(k): str(v) for k, v in self.metadata.items()})
        )
        if self.name is None:
            object.__setattr__(self, "name", f"Attention region {self.rank}")

    @property
    def colour(self) -> tuple[int, int, int]:
        """``color_rgb`` with its default filled in (never ``None``)."""
        assert self.color_rgb is not None
        return self.color_rgb


@dataclass(frozen=True)
class Patch:
    """One patch (a grid cell or a sampled location) with its attention.

    Attributes
    ----------
    l0_xy
        Top-left corner in level-0 pixels.
    size_l0_wh
        Width and height in level-0 pixels.
    attention
        The model's attention for this patch.
    probs
        Class name to probability (may be empty).
    """

    l0_xy: tuple[float, float]
    size_l0_wh: tuple[float, float]
    attention: float
    probs: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "l0_xy", (float(self.l0_xy[0]), float(self.l0_xy[1])))
        object.__setattr__(
            self, "size_l0_wh", (float(self.size_l0_wh[0]), float(self.size_l0_wh[1]))
        )
        object.__setattr__(self, "attention", float(self.attention))
        object.__setattr__(
            self, "probs", _frozen_mapping({str(k): float(v) for k, v in self.probs.items()})
        )

    @property
    def polygon(self) -> Polygon:
        """The patch rectangle in level-0 pixels."""
        x, y = self.l0_xy
        w, h = self.size_l0_wh
        return box(x, y, x + w, y + h)


class PatchTable(Sequence[Patch]):
    """Patches held as columns, a :class:`Patch` made only when one is asked for.

    A list of :class:`Patch` objects costs ~1.5 KB a patch (2 GB for the 1.5 M tissue
    tiles of a 100,000^2 px slide at 1 um/px); these columns cost ``40 + 8 C`` bytes.
    It reads as a sequence of patches (index, slice, iterate, compare).

    Attributes
    ----------
    l0_xy, size_l0_wh
        ``(n, 2)`` float64 top-left corners and sizes in level-0 pixels.
    attention
        ``(n,)`` float64.
    probs, class_names
        ``(n, C)`` float64 class probabilities in the order of ``class_names``, or None
        (patches without probabilities).
    """

    def __init__(
        self,
        l0_xy: ArrayLike,
        size_l0_wh: ArrayLike,
        attention: ArrayLike,
        probs: ArrayLike | None = None,
        class_names: Sequence[str] = (),
    ) -> None:
        self.attention = np.asarray(attention, dtype=np.float64).reshape(-1)
        n = self.attention.shape[0]
        self.l0_xy = np.asarray(l0_xy, dtype=np.float64).reshape(n, 2)
        self.size_l0_wh = np.asarray(size_l0_wh, dtype=np.float64).reshape(n, 2)
        self.class_names = tuple(str(c) for c in class_names)
        self.probs = (
            None
            if probs is None
            else np.asarray(probs, dtype=np.float64).reshape(n, len(self.class_names))
        )

    def __len__(self) -> int:
        return int(self.attention.shape[0])

    @overload
    def __getitem__(self, index: int) -> Patch: ...

    @overload
    def __getitem__(self, index: slice) -> PatchTable: ...

    def __getitem__(self, index: int | slice) -> Patch | PatchTable:
        if isinstance(index, slice):
            probs = None if self.probs is None else self.probs[index]
            return PatchTable(
                self.l0_xy[index],
                self.size_l0_wh[index],
                self.attention[index],
                probs,
                self.class_names,
            )
        i = operator.index(index)
        x, y = self.l0_xy[i].tolist()
        w, h = self.size_l0_wh[i].tolist()
        probs_i = (
            {}
            if self.probs is None
            else dict(zip(self.class_names, self.probs[i].tolist(), strict=True))
        )
        return Patch((x, y), (w, h), float(self.attention[i]), probs_i)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- normalisation


def percentile_normalise(
    attention: ArrayLike, lo: float = 1.0, hi: float = 99.0
) -> NDArray[np.float64]:
    """Scale attention to ``[0, 1]`` between two percentiles of its finite values.

    Parameters
    ----------
    attention
        Array of any shape. ``NaN`` and infinite values (non-tissue cells) are ignored
        when computing the percentiles and stay ``NaN`` in the result.
    lo, hi
        Percentiles mapped to 0 and 1 (``0 <= lo < hi <= 100``); values outside are clipped.

    Returns
    -------
    numpy.ndarray
        ``float64`` array of the same shape. When the two percentiles coincide (a map
        that is nearly constant apart from a few outliers) the finite minimum and
        maximum are used instead; a constant map becomes all zeros, since it says
        nothing about where the model looked.
    """
    values = np.asarray(attention, dtype=np.float64)
    out = np.full(values.shape, np.nan, dtype=np.float64)
    finite = np.isfinite(values)
    bounds = percentile_bounds(values[finite], lo, hi)
    if bounds is not None:
        out[finite] = scale_to_bounds(values[finite], bounds)
    return out


def percentile_bounds(
    finite_values: NDArray[np.float64], lo: float = 1.0, hi: float = 99.0
) -> tuple[float, float] | None:
    """The raw values :func:`percentile_normalise` maps to 0 and 1 (equal for a constant
    map), from the finite values; None when there are none."""
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"need 0 <= lo < hi <= 100, got lo={lo}, hi={hi}")
    if finite_values.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(finite_values, [lo, hi]))
    if not high > low:
        low, high = float(finite_values.min()), float(finite_values.max())
    return low, high


def scale_to_bounds(
    values: NDArray[np.float64], bounds: tuple[float, float]
) -> NDArray[np.float64]:
    """Finite ``values`` scaled as :func:`percentile_normalise` scales them with ``bounds``."""
    low, high = bounds
    if not high > low:
        return np.zeros(values.shape, dtype=np.float64)
    return np.asarray(np.clip((values - low) / (high - low), 0.0, 1.0), dtype=np.float64)
