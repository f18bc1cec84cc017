"""From an attention grid to regions and patches in level-0 pixels.

An attention map is a ``(rows, cols)`` float array over a regular grid of patches. Its
:class:`GridGeometry` says where the grid lies on the slide, in level-0 pixels: cell
``(r, c)`` covers the patch whose top-left corner is
``origin_l0_xy + (c * stride_x, r * stride_y)`` and whose size is ``patch_l0_wh``.
Coordinates are continuous level-0 pixel coordinates (QuPath's and OpenSlide's
convention: pixel ``i`` spans ``[i, i + 1)``), ``x`` first.

Cells that are not tissue are ``NaN`` and never part of a region. The grid's types
(:class:`GridGeometry`, :class:`Region`, :class:`Patch`) live in
:mod:`napari_histattn.io.grid` and are re-exported here.

GUI-free: numpy, scipy and shapely only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from shapely.affinity import affine_transform
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from napari_histattn.io.components import (
    ComponentScores,
    RankBy,
    components_to_build,
    thresholded_cells,
)
from napari_histattn.io.grid import (
    DEFAULT_CLASS_NAME,
    GridGeometry,
    Patch,
    PatchTable,
    Region,
    class_colour,
    percentile_normalise,
)

__all__ = [
    "DEFAULT_CLASS_NAME",
    "GridGeometry",
    "Patch",
    "PatchTable",
    "Region",
    "class_colour",
    "grid_patches",
    "make_valid_polygonal",
    "orient_polygonal",
    "percentile_normalise",
    "threshold_regions",
    "top_k_patches",
    "top_k_regions",
]


# --------------------------------------------------------------------------- geometry helpers


def _polygonal_parts(geometry: BaseGeometry) -> list[Polygon]:
    parts: list[Polygon] = []
    for part in shapely.get_parts(geometry):
        if isinstance(part, Polygon):
            if not part.is_empty and part.area > 0:
                parts.append(part)
        elif isinstance(part, MultiPolygon | shapely.GeometryCollection):
            parts.extend(_polygonal_parts(part))
    return parts


def orient_polygonal(geometry: BaseGeometry) -> Polygon | MultiPolygon:
    """Orient exteriors counter-clockwise and holes clockwise (RFC 7946).

    Orientation is in the coordinates' own frame (signed area with ``y`` as given);
    on screen, where ``y`` grows downwards, the same ring looks clockwise. QuPath
    accepts either orientation.
    """
    if isinstance(geometry, Polygon):
        return shapely.geometry.polygon.orient(geometry, sign=1.0)
    if isinstance(geometry, MultiPolygon):
        return MultiPolygon([shapely.geometry.polygon.orient(p, sign=1.0) for p in geometry.geoms])
    raise TypeError(f"expected a Polygon or MultiPolygon, got {type(geometry).__name__}")


def make_valid_polygonal(geometry: BaseGeometry) -> Polygon | MultiPolygon | None:
    """Repair a polygon and keep its polygonal parts, oriented.

    A self-intersecting ring (a bow-tie) becomes a ``MultiPolygon`` of its lobes
    (``shapely.make_valid``; ``buffer(0)`` would silently drop one lobe). Lines and
    points that the repair may produce are dropped, as are zero-area parts. Returns
    ``None`` when nothing with an area is left.
    """
    if geometry is None or geometry.is_empty:
        return None
    if geometry.is_valid:
        fixed = geometry
    elif hasattr(geometry, "geoms"):
        # Overlapping parts: repair each and take their union. make_valid on the whole
        # is quadratic in overlapping parts (18 s for 500, unbounded memory for 10k)
        # and turns overlaps into holes; the union is what an annotation means.
        pieces: list[Polygon] = []
        for part in geometry.geoms:
            pieces += _polygonal_parts(part if part.is_valid else shapely.make_valid(part))
        fixed = shapely.union_all(pieces) if pieces else Polygon()
    else:
        fixed = shapely.make_valid(geometry)
    parts = _polygonal_parts(fixed)
    if not parts:
        return None
    merged = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    if not merged.is_valid:
        merged = shapely.make_valid(merged)
    parts = _polygonal_parts(merged)
    if not parts:
        return None
    result: Polygon | MultiPolygon = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    return orient_polygonal(result)


def _cells_polygon(
    rows: NDArray[np.intp], cols: NDArray[np.intp], geometry: GridGeometry
) -> Polygon | MultiPolygon:
    """Union of the patch rectangles of the given cells, in level-0 pixels.

    The union is computed in grid units, where neighbouring cells share exactly
    representable edges (no floating-point slivers between rows), and mapped to
    level 0 afterwards by one affine transform that maps shared vertices identically.
    """
    pw = geometry.patch_l0_wh[0] / geometry.stride_l0_xy[0]
    ph = geometry.patch_l0_wh[1] / geometry.stride_l0_xy[1]
    order = np.lexsort((cols, rows))
    rows, cols = rows[order].astype(np.float64), cols[order].astype(np.float64)
    if pw >= 1.0:
        # Consecutive cells of a row touch or overlap: merge them into one box first.
        starts = np.ones(len(rows), dtype=bool)
        starts[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1] + 1)
        first = np.flatnonzero(starts)
        last = np.append(first[1:], len(rows)) - 1
        boxes = shapely.box(cols[first], rows[first], cols[last] + pw, rows[first] + ph)
    else:
        boxes = shapely.box(cols, rows, cols + pw, rows + ph)
    # simplify(0) drops the collinear vertices where the merged boxes met.
    union = shapely.union_all(boxes).simplify(0.0)
    sx, sy = geometry.stride_l0_xy
    ox, oy = geometry.origin_l0_xy
    union = affine_transform(union, [sx, 0.0, 0.0, sy, ox, oy])
    valid = make_valid_polygonal(union)
    if valid is None:  # only possible for degenerate geometry, which __post_init__ forbids
        raise ValueError("cells produced an empty polygon")
    return valid


def _check_attention(attention: ArrayLike) -> NDArray[np.float64]:
    values = np.asarray(attention, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"attention must be a 2-D (rows, cols) array, got shape {values.shape}")
    return values


def _check_probs(
    cell_probs: ArrayLike | None, class_names: Sequence[str] | None, shape: tuple[int, ...]
) -> NDArray[np.float64] | None:
    if cell_probs is None:
        return None
    probs = np.asarray(cell_probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[:2] != shape:
        raise ValueError(f"cell_probs must have shape {shape + ('C',)}, got {probs.shape}")
    if class_names is None or len(class_names) != probs.shape[2]:
        raise ValueError("cell_probs needs class_names, one per class")
    return probs


def _rank_key(by: RankBy) -> str:
    if by not in ("mass", "max", "mean"):
        raise ValueError(f"rank_by must be 'mass', 'max' or 'mean', not {by!r}")
    return f"attention_{by}"


def _sort_regions(regions: Iterable[Region], by: RankBy) -> list[Region]:
    key = _rank_key(by)

    def sort_key(region: Region) -> tuple[float, float, float, float]:
        # Ties broken by the other attention values, then top-left first: deterministic.
        m = region.measurements
        minx, miny, _, _ = region.polygon.bounds
        return (
            -float(m.get(key, -math.inf)),
            -float(m.get("attention_max", -math.inf)),
            miny,
            minx,
        )

    return sorted(regions, key=sort_key)


def _reranked(regions: Sequence[Region]) -> list[Region]:
    out = []
    for rank, region in enumerate(regions, start=1):
        default_name = region.name == f"Attention region {region.rank}"
        out.append(
            Region(
                polygon=region.polygon,
                class_name=region.class_name,
                color_rgb=region.color_rgb,
                rank=rank,
                measurements={**region.measurements, "rank": rank},
                name=None if default_name else region.name,
            )
        )
    return out


# --------------------------------------------------------------------------- regions


def threshold_regions(
    attention: ArrayLike,
    geometry: GridGeometry | Mapping[str, Any] | Any,
    threshold: float,
    *,
    normalise: bool = True,
    lo: float = 1.0,
    hi: float = 99.0,
    min_cells: int = 1,
    connectivity: Literal[4, 8] = 4,
    class_name: str | None = None,
    class_names: Sequence[str] | None = None,
    cell_probs: ArrayLike | None = None,
    mpp_xy: tuple[float, float] | None = None,
    top_k: int | None = None,
    rank_by: RankBy = "mass",
) -> list[Region]:
    """Threshold an attention grid into connected regions in level-0 pixels.

    Parameters
    ----------
    attention
        ``(rows, cols)`` attention; ``NaN`` for cells that are not tissue.
    geometry
        :class:`GridGeometry` (or a mapping / object with its three attributes).
    threshold
        Cells with (normalised, when ``normalise``) attention ``>= threshold`` are kept.
    normalise
        Threshold :func:`percentile_normalise` ``(attention, lo, hi)`` instead of the raw values.
    lo, hi
        Percentiles for the normalisation.
    min_cells
        Drop connected components with fewer cells.
    connectivity
        4 (edge neighbours) or 8 (also diagonal neighbours; such cells touch only at
        a corner, so the region may be a ``MultiPolygon``).
    class_name
        Classification of every region. ``None``: the class with the highest
        attention-weighted mean probability over the region's cells when
        ``cell_probs`` is given, otherwise ``"Attention"``.
    class_names, cell_probs
        Optional per-cell class probabilities ``(rows, cols, C)`` and their names;
        the region's attention-weighted mean probability of each class is recorded
        as measurement ``prob_<class>``.
    mpp_xy
        Level-0 micrometres per pixel; adds the ``area_um2`` measurement.
    top_k
        Keep only the ``top_k`` best regions.
    rank_by
        ``"mass"`` (sum of attention, the default), ``"max"`` or ``"mean"``.

    Returns
    -------
    list of Region
        Sorted best first, ``rank`` 1..n. Measurements: ``attention_max``,
        ``attention_mean``, ``attention_mass`` (raw attention), ``attention_norm_max``
        (normalised), ``n_patches``, ``area_px2``, ``area_um2`` (with ``mpp_xy``),
        ``prob_<class>`` (with ``cell_probs``), ``rank``.
    """
    values = _check_attention(attention)
    grid = GridGeometry.from_any(geometry)
    probs = _check_probs(cell_probs, class_names, values.shape)
    if min_cells < 1:
        raise ValueError(f"min_cells must be at least 1, got {min_cells}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    _rank_key(rank_by)

    cells = thresholded_cells(values, threshold, (lo, hi) if normalise else None)
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    mask = np.zeros(values.shape, dtype=bool)
    mask.flat[cells.flat] = True
    labels, count = ndimage.label(mask, structure=structure)
    scores = ComponentScores.of(labels.ravel()[cells.flat], count, cells, values.shape[1])
    chosen = components_to_build(scores, grid, min_cells, top_k, rank_by)
    regions: list[Region] = []
    for index in chosen:
        window = scores.window(index)
        local = labels[window] == index
        n_cells = int(scores.n_cells[index - 1])
        rr, cc = np.nonzero(local)
        rows = rr + window[0].start
        cols = cc + window[1].start
        raw = values[rows, cols]
        peak = float(scores.peak[index - 1])
        norm_peak = cells.scaled(np.array([peak]))[0]
        polygon = _cells_polygon(rows, cols, grid)
        measurements: dict[str, float] = {  # the scores the selection ranked by
            "attention_max": peak,
            "attention_mean": float(scores.mass[index - 1] / n_cells),
            "attention_mass": float(scores.mass[index - 1]),
            "attention_norm_max": float(norm_peak),
            "n_patches": float(n_cells),
            "area_px2": float(polygon.area),
        }
        if mpp_xy is not None:
            measurements["area_um2"] = float(polygon.area * mpp_xy[0] * mpp_xy[1])
        region_class = class_name
        if probs is not None and class_names is not None:
            weights = np.clip(raw, 0.0, None)
            cell = probs[rows, cols]
            mean_probs = (
                (weights[:, None] * cell).sum(axis=0) / weights.sum()
                if weights.sum() > 0
                else cell.mean(axis=0)
            )
            for name, p in zip(class_names, mean_probs, strict=True):
                measurements[f"prob_{name}"] = float(p)
            if region_class is None:
                region_class = str(class_names[int(np.argmax(mean_probs))])
        regions.append(
            Region(
                polygon=polygon,
                class_name=region_class if region_class is not None else DEFAULT_CLASS_NAME,
                measurements=measurements,
            )
        )
    return top_k_regions(regions, top_k, by=rank_by)


def top_k_regions(
    regions: Iterable[Region], k: int | None = None, *, by: RankBy = "mass"
) -> list[Region]:
    """Sort regions by attention (``mass``, ``max`` or ``mean``), keep ``k``, re-rank 1..k.

    ``k=None`` keeps all. Ties are broken by ``attention_max`` and then top-left
    position, so the order is deterministic.
    """
    if k is not None and k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    ordered = _sort_regions(regions, by)
    if k is not None:
        ordered = ordered[:k]
    return _reranked(ordered)


def grid_patches(
    attention: ArrayLike,
    geometry: GridGeometry | Mapping[str, Any] | Any,
    *,
    class_names: Sequence[str] | None = None,
    cell_probs: ArrayLike | None = None,
) -> PatchTable:
    """Return one :class:`Patch` per finite cell of an attention grid, in row-major order
    (as a :class:`PatchTable`: columns, not one object per cell)."""
    values = _check_attention(attention)
    grid = GridGeometry.from_any(geometry)
    probs = _check_probs(cell_probs, class_names, values.shape)
    rows, cols = np.nonzero(np.isfinite(values))
    ox, oy = grid.origin_l0_xy
    sx, sy = grid.stride_l0_xy
    xy = np.stack([ox + cols * sx, oy + rows * sy], axis=1).astype(np.float64)
    wh = np.broadcast_to(np.asarray(grid.patch_l0_wh, dtype=np.float64), xy.shape)
    if probs is None or class_names is None:
        return PatchTable(xy, wh, values[rows, cols])
    return PatchTable(xy, wh, values[rows, cols], probs[rows, cols], class_names)


def top_k_patches(
    attention: ArrayLike,
    geometry: GridGeometry | Mapping[str, Any] | Any,
    k: int,
    *,
    class_name: str | None = None,
    class_names: Sequence[str] | None = None,
    cell_probs: ArrayLike | None = None,
    mpp_xy: tuple[float, float] | None = None,
) -> list[Region]:
    """Return the rectangles of the ``k`` cells with the highest attention as regions.

    Each region is one patch rectangle, ranked by attention (ties: top-left first),
    with measurements ``attention`` (= ``attention_max`` = ``attention_mean`` =
    ``attention_mass``), ``grid_row``, ``grid_col``, ``area_px2``, ``area_um2`` (with
    ``mpp_xy``), ``prob_<class>`` and ``rank``. The class follows the same rule as
    :func:`threshold_regions`.
    """
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    values = _check_attention(attention)
    grid = GridGeometry.from_any(geometry)
    probs = _check_probs(cell_probs, class_names, values.shape)
    rows, cols = np.nonzero(np.isfinite(values))
    # Highest attention first; stable lexsort keeps row-major order among ties.
    order = np.lexsort((cols, rows, -values[rows, cols]))[:k]
    regions = []
    for rank, i in enumerate(order, start=1):
        r, c = int(rows[i]), int(cols[i])
        x, y, w, h = grid.cell_l0_xywh(r, c)
        a = float(values[r, c])
        measurements: dict[str, float] = {
            "attention": a,
            "attention_max": a,
            "attention_mean": a,
            "attention_mass": a,
            "grid_row": float(r),
            "grid_col": float(c),
            "area_px2": w * h,
            "rank": float(rank),
        }
        if mpp_xy is not None:
            measurements["area_um2"] = w * h * mpp_xy[0] * mpp_xy[1]
        region_class = class_name
        if probs is not None and class_names is not None:
            for name, p in zip(class_names, probs[r, c], strict=True):
                measurements[f"prob_{name}"] = float(p)
            if region_class is None:
                region_class = str(class_names[int(np.argmax(probs[r, c]))])
        regions.append(
            Region(
                polygon=orient_polygonal(box(x, y, x + w, y + h)),
                class_name=region_class if region_class is not None else DEFAULT_CLASS_NAME,
                rank=rank,
                measurements=measurements,
                name=f"Attention patch {rank}",
            )
        )
    return regions
