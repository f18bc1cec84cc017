"""The heatmap's ramps and contrast: a transparent low end for every colormap, and a
default contrast that keeps what the raw attention tells apart."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_histattn.inference.heatmap_scale import (
    COLORMAPS,
    CONTRASTS,
    DEFAULT_CONTRAST,
    OPAQUE_FROM,
    TRANSPARENT_BELOW,
    contrast_limits,
    ramp,
    scale_fraction,
    scale_text,
)


@pytest.mark.parametrize("name", list(COLORMAPS))
def test_every_colormap_has_a_transparent_low_end_and_an_opaque_top(name: str) -> None:
    rgba = ramp(np.array([0.0, TRANSPARENT_BELOW, OPAQUE_FROM, 0.6, 1.0]), name)
    assert rgba.shape == (5, 4)
    assert rgba[0, 3] == 0.0 and rgba[1, 3] == 0.0  # ignored tissue keeps its H&E colours
    assert rgba[2, 3] == pytest.approx(1.0) and rgba[4, 3] == pytest.approx(1.0)
    assert not np.allclose(rgba[3, :3], rgba[4, :3])  # the opaque part still ramps


def test_an_unknown_colormap_or_contrast_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="unknown colormap 'jet'.*inferno"):
        ramp(np.zeros(3), "jet")
    with pytest.raises(ValueError, match="unknown contrast 'auto'.*full range"):
        contrast_limits(np.zeros(3), "auto")


def _lesion_and_lookalikes() -> tuple[np.ndarray, tuple[int, int], list[tuple[int, int]]]:
    """A 40 x 40 map over tissue: background attention ~1e-4, a lesion cell at 0.05 and
    three look-alike cells at 0.01, so the four bright cells are 0.25 % of the map."""
    rng = np.random.default_rng(0)
    values = rng.uniform(0.5e-4, 1.5e-4, size=(40, 40))
    lesion, lookalikes = (5, 5), [(20, 20), (30, 10), (10, 30)]
    values[lesion] = 0.05
    for cell in lookalikes:
        values[cell] = 0.01
    values[0, :] = np.nan  # glass
    return values, lesion, lookalikes


def test_full_range_keeps_the_lesion_brighter_than_the_lookalikes() -> None:
    values, lesion, lookalikes = _lesion_and_lookalikes()
    limits = contrast_limits(values, DEFAULT_CONTRAST)
    assert limits == (float(np.nanmin(values)), 0.05)
    on_ramp = [scale_fraction(float(values[c]), limits) for c in lookalikes]
    assert scale_fraction(float(values[lesion]), limits) == 1.0
    assert all(0.1 < v < 0.3 for v in on_ramp)  # visible, and clearly below the lesion


def test_the_percentile_stretch_draws_lesion_and_lookalikes_equally_bright() -> None:
    """Why it is not the default: the top 1 % is clipped together."""
    values, lesion, lookalikes = _lesion_and_lookalikes()
    limits = contrast_limits(values, "1-99 percentile")
    assert limits[1] < 0.01
    assert {scale_fraction(float(values[c]), limits) for c in [lesion, *lookalikes]} == {1.0}


@pytest.mark.parametrize("contrast", list(CONTRASTS))
@pytest.mark.parametrize(
    "values",
    [np.full((4, 4), 0.3), np.zeros((4, 4)), np.full((3, 3), np.nan), np.zeros((0, 5))],
    ids=["constant", "zeros", "all-glass", "empty"],
)
def test_constant_empty_or_glass_only_maps_get_a_usable_range(
    contrast: str, values: np.ndarray
) -> None:
    lo, hi = contrast_limits(values, contrast)
    assert math.isfinite(lo) and math.isfinite(hi) and hi > lo
    for v in values[np.isfinite(values)]:
        assert lo <= v <= hi


def test_scale_fraction_clips_and_keeps_nan() -> None:
    assert scale_fraction(0.5, (0.0, 2.0)) == 0.25
    assert scale_fraction(-1.0, (0.0, 2.0)) == 0.0 and scale_fraction(9.0, (0.0, 2.0)) == 1.0
    assert math.isnan(scale_fraction(math.nan, (0.0, 1.0)))


def test_scale_text_states_the_raw_range_and_the_contrast() -> None:
    assert (
        scale_text((1.234e-4, 0.0523), "full range")
        == "raw attention 0.000123 to 0.0523 (full range)"
    )
