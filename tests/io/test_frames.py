"""Coordinate frames: level and world conversions, level and heatmap placement in napari."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_histattn.io.frames import (
    grid_geometry_to_napari,
    l0_to_lvl_xy,
    l0_xy_to_napari_yx,
    level_translate_yx,
    lvl_to_l0_xy,
    napari_scale_yx,
    napari_yx_to_l0_xy,
)
from napari_histattn.io.slide import open_slide


def test_level_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        xy = tuple(rng.uniform(-1e5, 1e5, size=2))
        ds = float(rng.choice([1.0, 2.0, 4.000187, 16.0, 32.5]))
        assert lvl_to_l0_xy(l0_to_lvl_xy(xy, ds), ds) == pytest.approx(xy)
    assert l0_to_lvl_xy((1024, 512), 4.0) == (256.0, 128.0)
    assert lvl_to_l0_xy((3, 5), 2.0) == (6.0, 10.0)


@pytest.mark.parametrize("mpp", [None, (0.25, 0.25), (0.5, 0.3)])
def test_world_round_trip(mpp) -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        xy = tuple(rng.uniform(0, 1e5, size=2))
        yx = l0_xy_to_napari_yx(xy, mpp)
        assert napari_yx_to_l0_xy(yx, mpp) == pytest.approx(xy)


def test_world_units_are_micrometres_y_first() -> None:
    assert l0_xy_to_napari_yx((100, 40), (0.5, 0.25)) == (10.0, 50.0)
    assert l0_xy_to_napari_yx((100, 40), None) == (40.0, 100.0)
    assert napari_yx_to_l0_xy((10.0, 50.0), (0.5, 0.25)) == (100.0, 40.0)
    with pytest.raises(ValueError, match="positive"):
        l0_xy_to_napari_yx((1, 1), (0.0, 0.5))


def test_napari_scale(cmu_svs: Path) -> None:
    assert napari_scale_yx((0.5, 0.25)) == (0.25, 0.5)
    assert napari_scale_yx((0.5, 0.25), 4.0) == (1.0, 2.0)
    assert napari_scale_yx(None, 8.0) == (8.0, 8.0)
    with open_slide(cmu_svs) as slide:
        assert napari_scale_yx(slide) == pytest.approx((0.499, 0.499))
        assert napari_scale_yx(slide, 2.0) == pytest.approx((0.998, 0.998))


def test_level_translate_puts_pixel_centres_on_their_footprint() -> None:
    assert level_translate_yx(1.0, (0.5, 0.5)) == (0.0, 0.0)
    assert level_translate_yx(4.0, None) == (1.5, 1.5)
    assert level_translate_yx(2.0, (0.5, 0.25)) == (0.125, 0.25)
    # napari draws level pixel j at world translate + scale * j; that must be the
    # centre of the level-0 pixels [j * d, (j + 1) * d) that it covers, i.e. the
    # mean of their centres (which level 0 draws at i * mpp).
    mpp = (0.5, 0.25)
    for d in (2.0, 4.0, 8.0):
        ty, tx = level_translate_yx(d, mpp)
        sy, sx = napari_scale_yx(mpp, d)
        for j in (0, 1, 17):
            covered = np.arange(j * d, (j + 1) * d)
            assert tx + sx * j == pytest.approx(covered.mean() * mpp[0])
            assert ty + sy * j == pytest.approx(covered.mean() * mpp[1])


def test_heatmap_pixels_sit_on_patch_centres() -> None:
    origin, stride, patch, mpp = (100, 60), (224, 112), (224, 224), (0.5, 0.25)
    scale, translate = grid_geometry_to_napari(origin, stride, patch, mpp)
    assert scale == (112 * 0.25, 224 * 0.5)
    assert translate == ((60 + 223 / 2) * 0.25, (100 + 223 / 2) * 0.5)
    for r, c in [(0, 0), (3, 5), (10, 1)]:
        x0, y0 = origin[0] + c * stride[0], origin[1] + r * stride[1]
        centre_yx = l0_xy_to_napari_yx(
            (np.arange(x0, x0 + patch[0]).mean(), np.arange(y0, y0 + patch[1]).mean()), mpp
        )
        world = (translate[0] + scale[0] * r, translate[1] + scale[1] * c)
        assert world == pytest.approx(centre_yx)
    # pixel units: the same formula with unit 1, and a one-pixel patch sits on its pixel
    scale, translate = grid_geometry_to_napari((7, 9), (1, 1), (1, 1), None)
    assert scale == (1.0, 1.0) and translate == (9.0, 7.0)
    # a heatmap with patch == stride == downsample lines up with that pyramid level
    scale, translate = grid_geometry_to_napari((0, 0), (4, 4), (4, 4), mpp)
    assert scale == napari_scale_yx(mpp, 4.0)
    assert translate == level_translate_yx(4.0, mpp)
