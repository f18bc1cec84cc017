"""How well an attention map lands on known lesions (for trained checkpoints on generated slides).

:func:`attention_in_lesion_stats` rasterises lesion polygons (level-0 ``(x, y)``)
onto a result's attention grid and measures, against that mask:

- whether the cell with the highest attention lies inside a lesion;
- the fraction of the attention mass that falls inside lesions;
- the localisation ROC AUC of the attention as a per-cell lesion detector
  (:func:`napari_histattn.stats.roc_auc_binary`).

A cell is "lesion" when the centre of its patch lies inside a lesion polygon.
Cells without attention (NaN: no tissue, no tile) count as attention 0, the
model did not look there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from napari_histattn.inference.result import ClassificationResult
from napari_histattn.io.regions import GridGeometry
from napari_histattn.stats import roc_auc_binary

__all__ = [
    "LesionStats",
    "attention_in_lesion_stats",
    "attention_lesion_stats",
    "lesion_mask_on_grid",
    "tissue_localisation_auc",
]


@dataclass(frozen=True)
class LesionStats:
    """Attention against lesions on the attention grid.

    Attributes
    ----------
    max_cell_in_lesion
        The highest-attention cell's patch centre lies inside a lesion.
    mass_fraction_in_lesion
        Attention mass inside lesion cells / total attention mass (NaN when
        the total is 0).
    localisation_auc
        ROC AUC of attention vs the lesion mask over all cells (NaN when the
        mask is all lesion or all background).
    n_lesion_cells, n_cells
        Cells inside lesions, and all cells of the grid.
    """

    max_cell_in_lesion: bool
    mass_fraction_in_lesion: float
    localisation_auc: float
    n_lesion_cells: int
    n_cells: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_cell_in_lesion": self.max_cell_in_lesion,
            "mass_fraction_in_lesion": self.mass_fraction_in_lesion,
            "localisation_auc": self.localisation_auc,
            "n_lesion_cells": self.n_lesion_cells,
            "n_cells": self.n_cells,
        }


def _as_geometry(polygons: Iterable[BaseGeometry | ArrayLike]) -> BaseGeometry:
    parts: list[BaseGeometry] = []
    for item in polygons:
        if isinstance(item, Polygon | MultiPolygon):
            parts.append(item)
        else:
            vertices = np.asarray(item, dtype=np.float64)
            if vertices.ndim != 2 or vertices.shape[1] != 2 or vertices.shape[0] < 3:
                raise ValueError(
                    f"a lesion polygon must be an (n >= 3, 2) array of (x, y), got {vertices.shape}"
                )
            parts.append(shapely.make_valid(Polygon(vertices)))
    if not parts:
        return Polygon()
    return shapely.union_all(parts)


def lesion_mask_on_grid(
    geometry: GridGeometry, shape_rc: tuple[int, int], polygons: Iterable[BaseGeometry | ArrayLike]
) -> NDArray[np.bool_]:
    """``(rows, cols)`` True where a cell's patch centre lies inside a lesion polygon.

    Parameters
    ----------
    geometry
        The attention grid's geometry (level-0 pixels).
    shape_rc
        ``(rows, cols)`` of the grid.
    polygons
        Lesion outlines in level-0 ``(x, y)``: shapely polygons or ``(n, 2)`` vertex arrays.
    """
    rows, cols = shape_rc
    union = _as_geometry(polygons)
    ox, oy = geometry.origin_l0_xy
    sx, sy = geometry.stride_l0_xy
    pw, ph = geometry.patch_l0_wh
    xs = ox + np.arange(cols) * sx + pw / 2.0
    ys = oy + np.arange(rows) * sy + ph / 2.0
    grid_x, grid_y = np.meshgrid(xs, ys)
    if union.is_empty:
        return np.zeros((rows, cols), dtype=bool)
    return np.asarray(shapely.contains_xy(union, grid_x, grid_y), dtype=bool)


def attention_lesion_stats(
    attention: ArrayLike,
    geometry: GridGeometry,
    polygons: Iterable[BaseGeometry | ArrayLike],
) -> LesionStats:
    """:class:`LesionStats` of an attention map with its geometry (see the module docstring)."""
    values = np.asarray(attention, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"attention must be (rows, cols), got shape {values.shape}")
    mask = lesion_mask_on_grid(geometry, (values.shape[0], values.shape[1]), polygons)
    filled = np.where(np.isfinite(values), values, 0.0)
    if np.any(filled < 0):
        raise ValueError("attention must be non-negative to measure its mass")
    finite = np.where(np.isfinite(values), values, -np.inf)
    top = np.unravel_index(int(np.argmax(finite)), values.shape)
    total = float(filled.sum())
    return LesionStats(
        max_cell_in_lesion=bool(mask[top]) and bool(np.isfinite(values[top])),
        mass_fraction_in_lesion=float(filled[mask].sum() / total) if total > 0 else math.nan,
        localisation_auc=float(roc_auc_binary(mask.ravel(), filled.ravel())),
        n_lesion_cells=int(mask.sum()),
        n_cells=int(mask.size),
    )


def attention_in_lesion_stats(
    result: ClassificationResult, lesion_polygons_l0: Iterable[BaseGeometry | ArrayLike]
) -> LesionStats:
    """How well ``result``'s attention map lands on the given lesions.

    Parameters
    ----------
    result
        A classification result.
    lesion_polygons_l0
        Lesion outlines in level-0 ``(x, y)``: shapely polygons or ``(n, 2)``
        vertex arrays (for example ``Region.polygon_xy()`` of a synthetic
        scene's lesions, or ``read_geojson_regions(...)[i].polygon``).
    """
    return attention_lesion_stats(result.attention, result.geometry, lesion_polygons_l0)


def tissue_localisation_auc(
    result: ClassificationResult, lesion_polygons_l0: Iterable[BaseGeometry | ArrayLike]
) -> tuple[float, int]:
    """ROC AUC of ``result``'s attention as a lesion detector over tissue cells only, and the
    number of lesion cells among them.

    Glass counted as negatives inflates the AUC (one slide scored 0.85 over all cells and
    0.02 over tissue cells), so cells without attention (NaN) are left out; NaN when the
    tissue cells are all lesion or none is.
    """
    values = np.asarray(result.attention, dtype=np.float64)
    mask = lesion_mask_on_grid(
        result.geometry, (values.shape[0], values.shape[1]), lesion_polygons_l0
    )
    tissue = np.isfinite(values)
    lesion = mask[tissue]
    if not lesion.any() or lesion.all():
        return math.nan, int(lesion.sum())
    return float(roc_auc_binary(lesion, values[tissue])), int(lesion.sum())
