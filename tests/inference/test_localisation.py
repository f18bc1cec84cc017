"""attention_in_lesion_stats on hand-made attention maps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely.geometry import box

from napari_histattn.inference.localisation import (
    attention_in_lesion_stats,
    attention_lesion_stats,
    lesion_mask_on_grid,
)
from napari_histattn.inference.result import ClassificationResult
from napari_histattn.io.regions import GridGeometry

# A 4 x 4 grid of 100 px cells starting at (0, 0).
GEOMETRY = GridGeometry((0.0, 0.0), (100.0, 100.0), (100.0, 100.0))
# A lesion covering the centres of cells (1, 2), (1, 3), (2, 2), (2, 3) (x 200-400, y 100-300).
LESION = np.array([[190.0, 90.0], [410.0, 90.0], [410.0, 310.0], [190.0, 310.0]])


def test_mask_uses_cell_centres() -> None:
    mask = lesion_mask_on_grid(GEOMETRY, (4, 4), [LESION])
    expected = np.zeros((4, 4), dtype=bool)
    expected[1:3, 2:4] = True
    assert np.array_equal(mask, expected)
    # A polygon that covers no cell centre marks nothing.
    assert not lesion_mask_on_grid(GEOMETRY, (4, 4), [box(0, 0, 40, 40)]).any()


def test_perfect_attention() -> None:
    attention = np.zeros((4, 4))
    attention[1:3, 2:4] = 0.25
    stats = attention_lesion_stats(attention, GEOMETRY, [LESION])
    assert stats.max_cell_in_lesion
    assert stats.mass_fraction_in_lesion == pytest.approx(1.0)
    assert stats.localisation_auc == pytest.approx(1.0)
    assert stats.n_lesion_cells == 4 and stats.n_cells == 16


def test_attention_elsewhere_and_nan_cells() -> None:
    attention = np.full((4, 4), 0.05)
    attention[0, 0] = 0.5  # the peak is outside the lesion
    attention[1, 2] = 0.1
    attention[3, :] = np.nan  # no tissue: counts as 0
    stats = attention_lesion_stats(attention, GEOMETRY, [LESION])
    assert not stats.max_cell_in_lesion
    total = 0.5 + 0.1 + 0.05 * 10
    assert stats.mass_fraction_in_lesion == pytest.approx((0.1 + 0.05 * 3) / total)
    # Lesion cells: 0.1, 0.05 x 3; others: 0.5, 0.05 x 7, 0 x 4 (NaN). Mann-Whitney by hand:
    # 0.1 beats 11 of 12 (not 0.5); each 0.05 beats the 4 zeros and ties 7 -> 4 + 3.5.
    expected = (11 + 3 * (4 + 3.5)) / (4 * 12)
    assert stats.localisation_auc == pytest.approx(expected)


def test_result_wrapper_and_empty_lesions() -> None:
    attention = np.zeros((4, 4), dtype=np.float32)
    attention[2, 3] = 1.0
    result = ClassificationResult(
        class_names=["a", "b"],
        probabilities=np.array([0.5, 0.5]),
        attention=attention,
        geometry=GEOMETRY,
        patches=[],
        regions=[],
        provenance={},
        family="mil",
    )
    stats = attention_in_lesion_stats(result, [LESION])
    assert stats.max_cell_in_lesion and stats.mass_fraction_in_lesion == 1.0
    none = attention_in_lesion_stats(result, [])
    assert not none.max_cell_in_lesion and none.mass_fraction_in_lesion == 0.0
    assert math.isnan(none.localisation_auc)
    with pytest.raises(ValueError, match="polygon"):
        attention_in_lesion_stats(result, [np.zeros((2, 2))])
