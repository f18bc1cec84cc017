"""Tissue tiling and the slide-backed patch source read only what they must."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histattn.errors import HistattnError
from napari_histattn.inference.patches import (
    SlidePatchSource,
    TissueSettings,
    plan_tiles,
    read_scaled,
    read_tiles,
    read_view,
    target_downsample,
    tissue_mask,
)
from napari_histattn.io.slide import open_slide


@pytest.fixture(scope="module")
def cmu(cmu_svs):
    with open_slide(cmu_svs) as slide:
        yield slide


class CountingSlide:
    """Wraps a slide and counts read_region calls."""

    def __init__(self, slide):
        self._slide = slide
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._slide, name)

    def read_region(self, l0_xy, level, size_wh):
        self.calls += 1
        return self._slide.read_region(l0_xy, level, size_wh)


def test_tissue_mask_separates_glass_from_stain():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0] = (242, 242, 242)  # glass
    rgb[1] = (200, 120, 170)  # pink/purple stain
    mask = tissue_mask(rgb)
    assert not mask[0].any() and mask[1].all()


def test_plan_tiles_keeps_tissue_tiles_on_a_grid(cmu):
    plan = plan_tiles(cmu, 64, 4.0, TissueSettings(min_fraction=0.5))
    rows, cols = plan.grid_shape
    assert (rows, cols) == (2967 // 256, 2220 // 256)
    assert 0 < len(plan) < rows * cols  # CMU-1 has glass around the tissue
    assert np.all(plan.tissue_fraction >= 0.5)
    assert np.all(plan.l0_xy % 256 == 0)
    np.testing.assert_array_equal(plan.l0_xy[:, ::-1] // 256, plan.grid_rc)
    tiles = read_tiles(cmu, plan, [0, len(plan) - 1])
    assert tiles.shape == (2, 64, 64, 3)
    # tissue tiles are stained, not glass
    assert tissue_mask(tiles).mean() > 0.3


@pytest.mark.parametrize("thumbnail_size", [64, 128])
def test_plan_tiles_keeps_tiles_smaller_than_a_thumbnail_pixel(cmu, thumbnail_size, monkeypatch):
    """Tiles of 4 level-0 px against a thumbnail of 64-128 px (23-46 level-0 px per
    pixel): before, only tiles that happened to hold a thumbnail pixel's centre were
    kept (a 100,000^2 slide lost 57 % of its tissue tiles at 1 um/px)."""
    import napari_histattn.inference.patches as patches

    reference = plan_tiles(cmu, 4, 1.0, TissueSettings(thumbnail_size=4096))
    assert len(reference) > 100_000
    grown = plan_tiles(cmu, 4, 1.0, TissueSettings(thumbnail_size=thumbnail_size))
    assert abs(len(grown) - len(reference)) < 0.05 * len(reference)
    # When the thumbnail cannot grow, each tile takes the pixel under its centre.
    monkeypatch.setattr(patches, "MAX_PLAN_THUMBNAIL", thumbnail_size)
    coarse = plan_tiles(cmu, 4, 1.0, TissueSettings(thumbnail_size=thumbnail_size))
    assert abs(len(coarse) - len(reference)) < 0.15 * len(reference)
    assert len(np.unique(coarse.grid_rc, axis=0)) == len(coarse)


def test_read_scaled_matches_a_resized_level0_read(cmu):
    direct = cmu.read_region((400, 600), 0, (64, 64))
    assert np.array_equal(read_scaled(cmu, (400, 600), (64, 64), 1.0), direct)
    half = read_scaled(cmu, (400, 600), (32, 32), 2.0).astype(float)
    pooled = direct.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(half - pooled).max() <= 1.0
    view = read_view(cmu, 32.0)
    assert view.shape == (2967 // 32, 2220 // 32, 3)


def test_slide_patch_source_reads_only_requested_patches(cmu):
    counting = CountingSlide(cmu)
    source = SlidePatchSource(counting, 2.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert source.high_res_size_wh(0) == (1110, 1483)
    centres = torch.tensor([[100.0, 200.0], [500.5, 700.5], [5000.0, 5000.0]])
    patches = source.patches(0, centres, 16)
    assert patches.shape == (3, 3, 16, 16)
    assert counting.calls == 3 and source.reads == 3
    # centre (100, 200), p = 16 -> origin (92, 192) in hr pixels -> level-0 (184, 384)
    expected = read_scaled(cmu, (184, 384), (16, 16), 2.0)
    got = (patches[0] * 0.25 + 0.5).permute(1, 2, 0).numpy() * 255
    assert np.abs(got - expected).max() < 1e-3
    # outside the slide: white glass, normalised
    assert torch.allclose(patches[2], torch.full_like(patches[2], 2.0))
    with pytest.raises(IndexError):
        source.patches(1, centres, 16)


def test_target_downsample_ways_and_errors(cmu):
    assert target_downsample(cmu) == 1.0
    assert target_downsample(cmu, target_mpp=0.998) == pytest.approx(2.0)
    assert target_downsample(cmu, level=0) == 1.0
    assert target_downsample(cmu, downsample=3.0) == 3.0
    with pytest.raises(HistattnError, match="only one"):
        target_downsample(cmu, level=0, downsample=2.0)

    class NoMpp:
        path = "x.tif"
        mpp_xy = None
        level_downsamples = (1.0,)

    with pytest.raises(HistattnError, match="records no pixel size"):
        target_downsample(NoMpp(), target_mpp=0.5)


@pytest.mark.parametrize(("downsample", "strips"), [(2.0, True), (1.3, False)])
def test_read_tiles_reads_row_neighbours_as_one_strip_with_the_same_pixels(
    lesion_slide, downsample: float, strips: bool
) -> None:
    with open_slide(lesion_slide.path) as slide:
        plan = plan_tiles(slide, 32, downsample)
        calls: list[tuple[int, int]] = []
        inner = slide.read_region

        def counted(l0_xy, level, size_wh):
            calls.append(tuple(size_wh))
            return inner(l0_xy, level, size_wh)

        slide.read_region = counted
        indices = np.arange(min(len(plan), 200))
        tiles = read_tiles(slide, plan, indices)
        one_by_one = np.stack(
            [
                read_scaled(slide, tuple(int(v) for v in plan.l0_xy[i]), (32, 32), downsample)
                for i in indices
            ]
        )
    n_calls_strips = len(calls) - len(indices)
    assert np.array_equal(tiles, one_by_one)
    if strips:  # exact: fewer calls, each at most MAX_TILES_PER_READ tiles wide
        assert n_calls_strips < len(indices) // 4
    else:  # a resampled strip could differ at tile borders: one call per tile
        assert n_calls_strips == len(indices)
