"""Connected components of a thresholded attention grid, scored from their cells only.

:func:`napari_histattn.io.regions.threshold_regions` keeps the cells at or above a
threshold (:func:`thresholded_cells`, without building the normalised map), labels them,
scores every component at once (:class:`ComponentScores`: count, attention mass, peak,
bounding box) and builds polygons only for those that can rank
(:func:`components_to_build`). Every step after the threshold costs in proportion to
the thresholded cells, not to the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from napari_histattn.io.grid import GridGeometry, percentile_bounds, scale_to_bounds

RankBy = Literal["mass", "max", "mean"]


@dataclass(frozen=True)
class Cells:
    """The cells of an attention grid at or above a threshold (flat indices, raw values),
    and how raw values scale to the thresholded (normalised) scale."""

    flat: NDArray[np.int64]
    values: NDArray[np.float64]
    bounds: tuple[float, float] | None

    def scaled(self, raw: NDArray[np.float64]) -> NDArray[np.float64]:
        return raw if self.bounds is None else scale_to_bounds(raw, self.bounds)


def thresholded_cells(
    values: NDArray[np.float64], threshold: float, percentiles: tuple[float, float] | None
) -> Cells:
    """Finite cells whose (percentile-normalised) value is at least ``threshold``.

    The normalised map is never built: the threshold is moved to the raw scale, a
    little low, and the few candidates it finds are checked on the normalised scale
    (so the cells are exactly those of ``percentile_normalise(values) >= threshold``).
    """
    finite_flat = np.flatnonzero(np.isfinite(values))
    finite = values.ravel()[finite_flat]
    if percentiles is None:
        keep = finite >= threshold
        return Cells(finite_flat[keep], finite[keep], None)
    bounds = percentile_bounds(finite, *percentiles)
    if bounds is None:
        return Cells(finite_flat[:0], finite[:0], None)
    low, high = bounds
    if high > low and 0.0 < threshold <= 1.0:
        raw = low + threshold * (high - low)
        near = finite >= raw - 1e-9 * max(abs(raw), high - low)
        finite_flat, finite = finite_flat[near], finite[near]
    keep = scale_to_bounds(finite, bounds) >= threshold
    return Cells(finite_flat[keep], finite[keep], bounds)


@dataclass(frozen=True)
class ComponentScores:
    """Cell count, attention sum, maximum and bounding box of every connected component
    (label i at i - 1), from its thresholded cells only."""

    n_cells: NDArray[np.int64]
    mass: NDArray[np.float64]
    peak: NDArray[np.float64]
    row_range: NDArray[np.int64]  # (count, 2): first and last row
    col_range: NDArray[np.int64]

    @classmethod
    def of(
        cls, cell_labels: NDArray[Any], count: int, cells: Cells, n_cols: int
    ) -> ComponentScores:
        n = count + 1
        rows, cols = np.divmod(cells.flat, n_cols)
        peak = np.full(n, -np.inf)
        np.maximum.at(peak, cell_labels, cells.values)
        ranges = []
        for coord in (rows, cols):
            first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
            last = np.full(n, -1, dtype=np.int64)
            np.minimum.at(first, cell_labels, coord)
            np.maximum.at(last, cell_labels, coord)
            ranges.append(np.stack([first[1:], last[1:]], axis=1))
        return cls(
            np.bincount(cell_labels, minlength=n)[1:].astype(np.int64),
            np.asarray(np.bincount(cell_labels, weights=cells.values, minlength=n)[1:]),
            peak[1:],
            ranges[0],
            ranges[1],
        )

    def window(self, label: int) -> tuple[slice, slice]:
        """The bounding box of component ``label`` (what ``ndimage.find_objects`` gives)."""
        (r0, r1), (c0, c1) = self.row_range[label - 1], self.col_range[label - 1]
        return slice(int(r0), int(r1) + 1), slice(int(c0), int(c1) + 1)


def components_to_build(
    scores: ComponentScores,
    grid: GridGeometry,
    min_cells: int,
    top_k: int | None,
    rank_by: RankBy,
) -> list[int]:
    """Labels of the components whose polygons are built: with ``top_k``, the ``k`` that
    rank first.

    Building a polygon costs far more than scoring a component, and a large slide's
    thresholded attention has ~10^5 components (115,964 at 50k^2 px) of which 5 are
    kept. Every component is scored at once here and sorted by the key
    :func:`top_k_regions` uses (score, then maximum, then the top-left corner, then
    label order; the regions' measurements are these same scores), so the ``k``
    chosen are the ``k`` that building every region and sorting would keep.
    """
    big = np.flatnonzero(scores.n_cells >= min_cells)
    if top_k is None or big.size <= top_k:
        return [int(i) + 1 for i in big]
    key = {
        "mass": scores.mass,
        "max": scores.peak,
        "mean": scores.mass / np.maximum(scores.n_cells, 1),
    }[rank_by]
    # Only components that tie with or beat the k-th best key can rank in the top k.
    cutoff = np.partition(key[big], big.size - top_k)[big.size - top_k]
    big = big[key[big] >= cutoff]
    miny = grid.origin_l0_xy[1] + grid.stride_l0_xy[1] * scores.row_range[big, 0].astype(float)
    minx = grid.origin_l0_xy[0] + grid.stride_l0_xy[0] * scores.col_range[big, 0].astype(float)
    order = big[np.lexsort((minx, miny, -scores.peak[big], -key[big]))]
    return [int(i) + 1 for i in np.sort(order[:top_k])]
