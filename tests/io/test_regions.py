"""Attention grid -> regions and patches in level-0 pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from napari_histattn.io.regions import (
    GridGeometry,
    Patch,
    PatchTable,
    Region,
    class_colour,
    grid_patches,
    make_valid_polygonal,
    percentile_normalise,
    threshold_regions,
    top_k_patches,
    top_k_regions,
)

GEOMETRY = GridGeometry(origin_l0_xy=(1000, 50), stride_l0_xy=(256, 256), patch_l0_wh=(256, 256))


def two_blobs() -> np.ndarray:
    """A 10x12 map with a strong 2x3 blob and a weaker, larger 3x3 blob; NaN background cells."""
    attention = np.full((10, 12), 0.01)
    attention[0, :] = np.nan  # non-tissue row
    attention[1:3, 1:4] = 0.9  # 6 cells, mass 5.4
    attention[6:9, 7:10] = 0.5  # 9 cells, mass 4.5
    return attention


# --------------------------------------------------------------------------- normalisation


def test_percentile_normalise_maps_percentiles_to_unit_range() -> None:
    values = np.arange(101, dtype=float)
    out = percentile_normalise(values, lo=10, hi=90)
    assert out[10] == pytest.approx(0.0)
    assert out[90] == pytest.approx(1.0)
    assert out[50] == pytest.approx(0.5)
    assert out.min() == 0.0 and out.max() == 1.0  # clipped outside the percentiles


def test_percentile_normalise_keeps_nan_and_ignores_it() -> None:
    values = np.array([[np.nan, 0.0], [1.0, np.inf]])
    out = percentile_normalise(values, lo=0, hi=100)
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1])
    assert out[1, 0] == 1.0 and out[0, 1] == 0.0


def test_percentile_normalise_constant_and_empty_maps() -> None:
    assert np.array_equal(percentile_normalise(np.full((3, 3), 0.7)), np.zeros((3, 3)))
    assert np.isnan(percentile_normalise(np.full((2, 2), np.nan))).all()
    assert percentile_normalise(np.zeros((0, 4))).shape == (0, 4)


def test_percentile_normalise_single_hot_cell_survives_coinciding_percentiles() -> None:
    # 1st and 99th percentiles are both 0; the hot cell must still map to 1.
    values = np.zeros(1000)
    values[123] = 5.0
    out = percentile_normalise(values)
    assert out[123] == 1.0 and out.sum() == 1.0


def test_percentile_normalise_rejects_bad_percentiles() -> None:
    with pytest.raises(ValueError, match="lo < hi"):
        percentile_normalise(np.zeros(3), lo=50, hi=50)


# --------------------------------------------------------------------------- threshold


def test_threshold_regions_finds_two_blobs_at_their_level0_places() -> None:
    regions = threshold_regions(two_blobs(), GEOMETRY, 0.3, mpp_xy=(0.5, 0.25))
    assert len(regions) == 2
    first, second = regions
    # Strong blob: rows 1-2, cols 1-3 -> x 1000+256 .. 1000+4*256, y 50+256 .. 50+3*256.
    assert first.polygon.equals(box(1256, 306, 2024, 818))
    assert second.polygon.equals(box(1000 + 7 * 256, 50 + 6 * 256, 1000 + 10 * 256, 50 + 9 * 256))
    assert first.rank == 1 and second.rank == 2
    assert first.measurements["attention_mass"] == pytest.approx(5.4)
    assert first.measurements["attention_max"] == pytest.approx(0.9)
    assert first.measurements["attention_mean"] == pytest.approx(0.9)
    assert first.measurements["n_patches"] == 6
    assert first.measurements["area_px2"] == pytest.approx(6 * 256 * 256)
    assert first.measurements["area_um2"] == pytest.approx(6 * 256 * 256 * 0.5 * 0.25)
    assert first.class_name == "Attention" and first.colour == class_colour("Attention")
    assert first.name == "Attention region 1"


def test_threshold_without_normalisation_uses_raw_values() -> None:
    regions = threshold_regions(two_blobs(), GEOMETRY, 0.7, normalise=False)
    assert len(regions) == 1
    assert regions[0].measurements["attention_max"] == pytest.approx(0.9)


def test_regions_have_holes_and_exterior_ccw() -> None:
    attention = np.zeros((5, 5))
    attention[1:4, 1:4] = 1.0
    attention[2, 2] = 0.0
    (region,) = threshold_regions(attention, GEOMETRY, 0.5)
    assert isinstance(region.polygon, Polygon)
    assert len(region.polygon.interiors) == 1
    assert region.polygon.area == pytest.approx(8 * 256 * 256)
    assert region.polygon.exterior.is_ccw
    assert not region.polygon.interiors[0].is_ccw
    assert region.polygon.is_valid


def test_non_integral_geometry_has_no_slivers_between_rows() -> None:
    geometry = GridGeometry((0.3, 0.7), (0.1, 0.1), (0.1, 0.1))
    attention = np.zeros((6, 6))
    attention[1:5, 1:5] = 1.0
    (region,) = threshold_regions(attention, geometry, 0.5)
    assert isinstance(region.polygon, Polygon) and not region.polygon.interiors
    assert region.polygon.area == pytest.approx(0.16)


def test_overlapping_and_gapped_patches() -> None:
    attention = np.zeros((3, 4))
    attention[1, 1:3] = 1.0
    overlap = GridGeometry((0, 0), (100, 100), (200, 200))
    (region,) = threshold_regions(attention, overlap, 0.5)
    assert region.polygon.equals(box(100, 100, 400, 300))
    gaps = GridGeometry((0, 0), (100, 100), (50, 50))
    (region,) = threshold_regions(attention, gaps, 0.5)
    assert isinstance(region.polygon, MultiPolygon)
    assert region.polygon.area == pytest.approx(2 * 50 * 50)


def test_connectivity_and_min_cells() -> None:
    attention = np.zeros((4, 4))
    attention[0, 0] = attention[1, 1] = 1.0
    attention[3, 1:4] = 0.8
    four = threshold_regions(attention, GEOMETRY, 0.5)
    assert len(four) == 3
    eight = threshold_regions(attention, GEOMETRY, 0.5, connectivity=8)
    assert len(eight) == 2
    diagonal = [r for r in eight if r.measurements["n_patches"] == 2]
    assert isinstance(diagonal[0].polygon, MultiPolygon)  # touching at a corner only
    assert len(threshold_regions(attention, GEOMETRY, 0.5, min_cells=3)) == 1


def test_nan_cells_are_never_in_a_region() -> None:
    attention = np.ones((3, 3))
    attention[1, 1] = np.nan
    (region,) = threshold_regions(attention, GEOMETRY, 0.0, normalise=False)
    assert region.measurements["n_patches"] == 8
    assert len(region.polygon.interiors) == 1


def test_class_from_attention_weighted_probabilities() -> None:
    attention = two_blobs()
    probs = np.zeros((10, 12, 2))
    probs[..., 0] = 0.8
    probs[..., 1] = 0.2
    probs[6:9, 7:10] = (0.1, 0.9)
    regions = threshold_regions(
        attention, GEOMETRY, 0.3, class_names=["Normal", "Tumor"], cell_probs=probs
    )
    by_rank = {r.rank: r for r in regions}
    assert by_rank[1].class_name == "Normal"
    assert by_rank[2].class_name == "Tumor"
    assert by_rank[2].measurements["prob_Tumor"] == pytest.approx(0.9)
    assert by_rank[2].colour == (200, 0, 0)  # QuPath's Tumor colour
    fixed = threshold_regions(
        attention, GEOMETRY, 0.3, class_name="Lesion", class_names=["a", "b"], cell_probs=probs
    )
    assert {r.class_name for r in fixed} == {"Lesion"}


def test_threshold_accepts_mapping_geometry_and_validates_shapes() -> None:
    geometry = {"origin_l0_xy": (0, 0), "stride_l0_xy": (10, 10), "patch_l0_wh": (10, 10)}
    assert len(threshold_regions(np.eye(3), geometry, 0.5, connectivity=8)) == 1
    with pytest.raises(ValueError, match="2-D"):
        threshold_regions(np.zeros(5), geometry, 0.5)
    with pytest.raises(ValueError, match="class_names"):
        threshold_regions(np.zeros((2, 2)), geometry, 0.5, cell_probs=np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="positive"):
        GridGeometry((0, 0), (0, 10), (10, 10))


# --------------------------------------------------------------------------- top-k


def test_top_k_ordering_by_mass_and_by_max() -> None:
    attention = two_blobs()
    attention[6:9, 7:10] = 0.7  # second blob now has more mass (6.3) but lower max
    by_mass = threshold_regions(attention, GEOMETRY, 0.3)
    assert [r.measurements["attention_mass"] for r in by_mass] == pytest.approx([6.3, 5.4])
    by_max = top_k_regions(by_mass, by="max")
    assert [r.measurements["attention_max"] for r in by_max] == pytest.approx([0.9, 0.7])
    assert [r.rank for r in by_max] == [1, 2]
    assert [r.name for r in by_max] == ["Attention region 1", "Attention region 2"]
    (only,) = threshold_regions(attention, GEOMETRY, 0.3, top_k=1, rank_by="max")
    assert only.measurements["attention_max"] == pytest.approx(0.9)
    assert top_k_regions(by_mass, 0) == []


def test_top_k_patches_are_the_highest_cells() -> None:
    attention = np.arange(12, dtype=float).reshape(3, 4)
    attention[2, 3] = np.nan
    patches = top_k_patches(attention, GEOMETRY, 3, mpp_xy=(0.5, 0.5))
    assert [p.measurements["attention"] for p in patches] == [10.0, 9.0, 8.0]
    assert [p.rank for p in patches] == [1, 2, 3]
    top = patches[0]
    assert (top.measurements["grid_row"], top.measurements["grid_col"]) == (2, 2)
    assert top.polygon.equals(box(1000 + 512, 50 + 512, 1000 + 768, 50 + 768))
    assert top.measurements["area_um2"] == pytest.approx(256 * 256 * 0.25)


def test_grid_patches_rows_match_geometry() -> None:
    attention = np.array([[0.1, np.nan], [0.3, 0.4]])
    probs = np.array([[[0.9, 0.1], [0.5, 0.5]], [[0.2, 0.8], [0.6, 0.4]]])
    patches = grid_patches(attention, GEOMETRY, class_names=["A", "B"], cell_probs=probs)
    assert len(patches) == 3
    assert patches[1].l0_xy == (1000.0, 306.0)
    assert patches[1].size_l0_wh == (256.0, 256.0)
    assert patches[1].attention == pytest.approx(0.3)
    assert dict(patches[1].probs) == pytest.approx({"A": 0.2, "B": 0.8})


def test_grid_patches_are_columns_that_read_as_patches() -> None:
    """1.5 M tiles as Patch objects held 2 GB; the table holds arrays and makes a Patch
    only when one is read, equal to the one the cell would have given."""
    attention = np.array([[0.1, np.nan], [0.3, 0.4]])
    probs = np.array([[[0.9, 0.1], [0.5, 0.5]], [[0.2, 0.8], [0.6, 0.4]]])
    table = grid_patches(attention, GEOMETRY, class_names=["A", "B"], cell_probs=probs)
    assert isinstance(table, PatchTable) and table.l0_xy.shape == (3, 2)
    expected = [
        Patch((1000.0, 50.0), (256.0, 256.0), 0.1, {"A": 0.9, "B": 0.1}),
        Patch((1000.0, 306.0), (256.0, 256.0), 0.3, {"A": 0.2, "B": 0.8}),
        Patch((1256.0, 306.0), (256.0, 256.0), 0.4, {"A": 0.6, "B": 0.4}),
    ]
    assert table == expected and list(table) == expected
    assert table[-1] == expected[-1] and table[1:] == expected[1:]
    assert isinstance(table[:2], PatchTable) and len(table[:2]) == 2
    with pytest.raises(IndexError):
        table[3]
    bare = grid_patches(attention, GEOMETRY)
    assert bare.probs is None and dict(bare[0].probs) == {}


# --------------------------------------------------------------------------- types and repair


def test_region_is_frozen_and_validates() -> None:
    region = Region(box(0, 0, 1, 1), class_name="Stroma", measurements={"a": 1.0})
    with pytest.raises(dataclasses.FrozenInstanceError):
        region.rank = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        region.measurements["a"] = 2.0  # type: ignore[index]
    assert region.colour == (150, 200, 150)
    assert Region(box(0, 0, 1, 1), class_name=None).colour == (128, 128, 128)
    with pytest.raises(TypeError, match="Polygon"):
        Region(shapely.Point(0, 0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="color_rgb"):
        Region(box(0, 0, 1, 1), color_rgb=(300, 0, 0))
    assert Patch((1, 2), (3, 4), 0.5).polygon.equals(box(1, 2, 4, 6))


def test_class_colour_is_stable_and_distinct_for_known_classes() -> None:
    assert class_colour("Tumor") == (200, 0, 0)
    assert class_colour("my class") == class_colour("my class")
    assert all(0 <= v <= 255 for v in class_colour("anything else"))


def test_make_valid_polygonal_repairs_bow_tie_keeping_both_lobes() -> None:
    bow_tie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    assert not bow_tie.is_valid
    fixed = make_valid_polygonal(bow_tie)
    assert fixed is not None and fixed.is_valid
    assert isinstance(fixed, MultiPolygon) and len(fixed.geoms) == 2
    assert fixed.area == pytest.approx(50.0)  # buffer(0) would keep only 25
    assert all(p.exterior.is_ccw for p in fixed.geoms)
    assert make_valid_polygonal(Polygon([(0, 0), (1, 1), (2, 2)])) is None


def test_project_classes_have_distinct_colours() -> None:
    from napari_histattn.io.regions import DEFAULT_CLASS_NAME, class_colour

    names = ["lesion", "benign", "lookalike", "normal", DEFAULT_CLASS_NAME]
    colours = [class_colour(n) for n in names]
    assert len(set(colours)) == len(names), dict(zip(names, colours, strict=True))


@pytest.mark.parametrize("rank_by", ["mass", "max", "mean"])
@pytest.mark.parametrize("seed", range(6))
def test_top_k_builds_only_what_can_rank_and_finds_the_same_regions(
    rank_by: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from napari_histattn.io import regions as regions_module

    rng = np.random.default_rng(seed)
    # Speckle: hundreds of components; quantised values make ties in every key.
    attention = np.round(rng.random((60, 80)) * 8) / 8
    attention[rng.random((60, 80)) < 0.1] = np.nan
    geometry = GridGeometry(origin_l0_xy=(3, 5), stride_l0_xy=(16, 16), patch_l0_wh=(16, 16))
    kwargs = dict(normalise=False, min_cells=2, rank_by=rank_by, mpp_xy=(0.5, 0.5))
    every = threshold_regions(attention, geometry, 0.6, **kwargs)
    assert len(every) > 50
    built: list[int] = []
    real = regions_module._cells_polygon

    def counting(rows, cols, grid):  # type: ignore[no-untyped-def]
        built.append(len(rows))
        return real(rows, cols, grid)

    monkeypatch.setattr(regions_module, "_cells_polygon", counting)
    top = threshold_regions(attention, geometry, 0.6, top_k=5, **kwargs)
    assert len(built) == 5  # the five that rank first, not the hundreds
    expected = top_k_regions(every, 5, by=rank_by)
    assert [r.polygon.wkt for r in top] == [r.polygon.wkt for r in expected]
    assert [r.measurements for r in top] == [r.measurements for r in expected]
