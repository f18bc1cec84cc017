"""GeoJSON (QuPath conventions), CSV and PNG export; napari <-> level-0 conversions."""

from __future__ import annotations

import datetime
import errno
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon, box

from napari_histattn import __version__, atomic
from napari_histattn.errors import AnnotationError, ExportError
from napari_histattn.io.export import (
    json_safe,
    l0_polygon_to_napari_yx,
    napari_yx_to_l0_polygon,
    read_geojson_document,
    read_geojson_regions,
    read_patches_csv,
    regions_to_geojson,
    write_geojson,
    write_patches_csv,
    write_region_crops,
)
from napari_histattn.io.frames import l0_xy_to_napari_yx
from napari_histattn.io.regions import (
    GridGeometry,
    Patch,
    Region,
    grid_patches,
    orient_polygonal,
    threshold_regions,
)

GEOMETRY = GridGeometry(origin_l0_xy=(1000, 50), stride_l0_xy=(256, 256), patch_l0_wh=(256, 256))
PROVENANCE = {
    "package_version": __version__,
    "model": "amil",
    "checkpoint_sha256": "ab" * 32,
    "seed": np.int64(7),
    "device": "cpu",
    "slide": Path("/data/slide.tiff"),
    "quickhash": "cd" * 32,
    "mpp_xy": (np.float32(0.5), 0.5),
    "time": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "loss": float("nan"),
}


def strict_json(path: Path) -> Any:
    """Parse as strict JSON: NaN/Infinity are not JSON and must not appear."""

    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def attention_map() -> tuple[np.ndarray, np.ndarray]:
    attention = np.full((8, 10), 0.01)
    attention[0, 0] = 0.95  # top single cell: x 1000..1256, y 50..306
    attention[5:7, 5:9] = 0.6  # larger, weaker blob with more mass
    attention[5, 6] = 0.7
    attention[7, 9] = np.nan
    probs = np.stack([1 - attention, attention], axis=-1)
    return attention, probs


def all_rings(geometry: dict[str, Any]) -> list[list[list[float]]]:
    if geometry["type"] == "Polygon":
        return list(geometry["coordinates"])
    return [ring for polygon in geometry["coordinates"] for ring in polygon]


def signed_area(ring: list[list[float]]) -> float:
    return 0.5 * sum(
        x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True)
    )


# --------------------------------------------------------------------------- GeoJSON conventions


def test_geojson_follows_qupath_conventions(tmp_path: Path) -> None:
    attention, probs = attention_map()
    regions = threshold_regions(
        attention,
        GEOMETRY,
        0.5,
        normalise=False,
        class_names=["Normal", "Tumor"],
        cell_probs=probs,
        class_name="Tumor",
        mpp_xy=(0.5, 0.5),
    )
    path = write_geojson(tmp_path / "r.geojson", regions, provenance=PROVENANCE, mpp_xy=(0.5, 0.5))
    document = strict_json(path)
    assert document["type"] == "FeatureCollection"
    assert len(document["features"]) == 2
    for feature in document["features"]:
        assert feature["type"] == "Feature"
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == "Tumor"
        colour = props["classification"]["color"]
        assert len(colour) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
        assert isinstance(props["name"], str) and props["name"]
        measurements = props["measurements"]
        assert isinstance(measurements, dict)
        for key in ("attention_max", "attention_mean", "attention_mass", "area_um2", "rank"):
            assert isinstance(measurements[key], int | float)
        assert "prob_Tumor" in measurements
        geometry = feature["geometry"]
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        assert shapely.geometry.shape(geometry).is_valid
        for ring in all_rings(geometry):
            assert ring[0] == ring[-1] and len(ring) >= 4
            assert all(isinstance(v, int | float) for point in ring for v in point)
    # Rank 2 by mass is the single top cell: level-0 (x, y) order, x from 1000, y from 50.
    single = next(f for f in document["features"] if f["properties"]["measurements"]["rank"] == 2)
    xs = [p[0] for p in single["geometry"]["coordinates"][0]]
    ys = [p[1] for p in single["geometry"]["coordinates"][0]]
    assert (min(xs), max(xs), min(ys), max(ys)) == (1000, 1256, 50, 306)
    assert single["properties"]["measurements"]["attention_max"] == pytest.approx(0.95)
    # Provenance is in the file, JSON-safe.
    meta = document["properties"]
    assert meta["software"] == {"name": "napari-histattn", "version": __version__}
    assert meta["mpp_xy"] == [0.5, 0.5]
    assert meta["provenance"]["seed"] == 7
    assert meta["provenance"]["slide"] == "/data/slide.tiff"
    assert meta["provenance"]["checkpoint_sha256"] == "ab" * 32
    assert meta["provenance"]["time"] == "2026-01-02T03:04:05+00:00"
    assert meta["provenance"]["loss"] is None


def test_rings_are_rfc7946_oriented_with_holes(tmp_path: Path) -> None:
    ring_cells = np.zeros((5, 5))
    ring_cells[1:4, 1:4] = 1.0
    ring_cells[2, 2] = 0.0
    (region,) = threshold_regions(ring_cells, GEOMETRY, 0.5)
    # Feed it reversed so orientation is fixed by the exporter, not inherited.
    reversed_polygon = Polygon(
        region.polygon.exterior.coords[::-1], [r.coords[::-1] for r in region.polygon.interiors]
    )
    feature = regions_to_geojson([Region(reversed_polygon)])["features"][0]
    exterior, hole = feature["geometry"]["coordinates"]
    assert signed_area(exterior) > 0  # counter-clockwise in (x, y)
    assert signed_area(hole) < 0


def test_bow_tie_is_repaired_before_writing(tmp_path: Path) -> None:
    bow_tie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    assert not bow_tie.is_valid
    path = write_geojson(tmp_path / "b.geojson", [Region(bow_tie, class_name="Other")])
    feature = strict_json(path)["features"][0]
    geometry = shapely.geometry.shape(feature["geometry"])
    assert geometry.is_valid
    assert isinstance(geometry, MultiPolygon) and len(geometry.geoms) == 2
    assert geometry.area == pytest.approx(50.0)
    assert feature["properties"]["classification"] == {"name": "Other", "color": [255, 200, 0]}


def test_degenerate_region_is_skipped_with_warning() -> None:
    flat = Polygon([(0, 0), (5, 0), (10, 0)])
    with pytest.warns(UserWarning, match="no area"):
        document = regions_to_geojson([flat_region(flat), Region(box(0, 0, 1, 1))])
    assert len(document["features"]) == 1


def flat_region(polygon: Polygon) -> Region:
    return Region(polygon, name="flat")


def test_unclassified_region_still_has_a_colour() -> None:
    feature = regions_to_geojson([Region(box(0, 0, 1, 1), class_name=None)])["features"][0]
    assert "classification" not in feature["properties"]
    assert feature["properties"]["color"] == [128, 128, 128]


def test_identical_input_gives_identical_bytes(tmp_path: Path) -> None:
    attention, _ = attention_map()
    regions = threshold_regions(attention, GEOMETRY, 0.5)
    a = write_geojson(tmp_path / "a.geojson", regions, provenance={"seed": 1})
    b = write_geojson(tmp_path / "b.geojson", regions, provenance={"seed": 1})
    assert a.read_bytes() == b.read_bytes()
    ids = [f["id"] for f in strict_json(a)["features"]]
    assert len(set(ids)) == len(ids)


def test_write_feature_collection_mapping_merges_provenance(tmp_path: Path) -> None:
    collection = regions_to_geojson([Region(box(0, 0, 2, 2))], provenance={"model": "amil"})
    path = write_geojson(tmp_path / "fc.geojson", collection, provenance={"seed": np.int32(3)})
    meta = strict_json(path)["properties"]["provenance"]
    assert meta == {"model": "amil", "seed": 3}
    with pytest.raises(ExportError, match="FeatureCollection"):
        write_geojson(tmp_path / "bad.geojson", {"type": "Feature"})


# --------------------------------------------------------------------------- round trip


def test_geojson_round_trip_restores_polygons(tmp_path: Path) -> None:
    attention, probs = attention_map()
    attention[2:5, 1:5] = 0.8
    attention[3, 2] = 0.0  # a hole
    regions = threshold_regions(
        attention, GEOMETRY, 0.5, normalise=False, class_names=["Normal", "Tumor"], cell_probs=probs
    )
    regions.append(Region(box(10.25, 20.5, 30.75, 40.125), class_name="My class", rank=99))
    path = write_geojson(tmp_path / "rt.geojson", regions, provenance={})
    back = read_geojson_regions(path)
    assert len(back) == len(regions)
    for original, restored in zip(regions, back, strict=True):
        assert restored.polygon.equals_exact(orient_polygonal(original.polygon), tolerance=0)
        assert original.polygon.symmetric_difference(restored.polygon).area == pytest.approx(0.0)
        assert restored.class_name == original.class_name
        assert restored.colour == original.colour
        assert restored.rank == original.rank
        assert restored.name == original.name
        for key, value in original.measurements.items():
            assert restored.measurements[key] == pytest.approx(value)
    assert any(len(r.polygon.interiors) == 1 for r in back if isinstance(r.polygon, Polygon))


def test_geojson_document_gives_regions_and_file_properties_from_one_read(
    tmp_path: Path,
) -> None:
    regions = [Region(box(0, 0, 40, 20), class_name="Tumor", rank=1)]
    ours = write_geojson(
        tmp_path / "ours.geojson", regions, provenance={"seed": 7}, mpp_xy=(0.5, 0.25)
    )
    back, properties = read_geojson_document(ours)
    assert [r.class_name for r in back] == [r.class_name for r in read_geojson_regions(ours)]
    assert properties["provenance"]["seed"] == 7
    assert properties["mpp_xy"] == [0.5, 0.25]
    # QuPath's bare list of features has no top-level properties: {} (not an error).
    bare = tmp_path / "qupath.geojson"
    bare.write_text(json.dumps(json.loads(ours.read_text())["features"]))
    back, properties = read_geojson_document(bare)
    assert len(back) == 1 and properties == {}


def test_reads_qupath_variants(tmp_path: Path) -> None:
    square = [[[0, 0], [100, 0], [100, 50], [0, 50], [0, 0]]]
    legacy = {
        "type": "Feature",
        "id": "PathAnnotationObject",
        "geometry": {"type": "Polygon", "coordinates": square},
        "properties": {
            "classification": {"name": "Tumor", "colorRGB": -3670016},
            "isLocked": False,
            "measurements": [{"name": "Area", "value": 5000.0}, {"name": "Bad", "value": None}],
        },
    }
    modern = {
        "type": "Feature",
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [square, [[[200, 0], [300, 0], [300, 10], [200, 0]]]],
        },
        "properties": {
            "objectType": "annotation",
            "name": "lesion",
            "classification": {"names": ["Tumor", "Positive"], "color": [1, 2, 3]},
            "measurements": {"Area": 1.0},
        },
    }
    unclassified = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square}}
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}}
    empty = {"type": "Feature", "geometry": None, "properties": {}}

    (tmp_path / "list.geojson").write_text(json.dumps([legacy, modern, unclassified, point, empty]))
    regions = read_geojson_regions(tmp_path / "list.geojson")
    assert len(regions) == 3
    first, second, third = regions
    assert first.class_name == "Tumor" and first.colour == (200, 0, 0)
    assert dict(first.measurements) == {"Area": 5000.0}
    assert first.polygon.equals(box(0, 0, 100, 50))
    assert second.class_name == "Tumor: Positive" and second.colour == (1, 2, 3)
    assert second.name == "lesion"
    assert isinstance(second.polygon, MultiPolygon)
    assert third.class_name is None and third.rank == 3

    (tmp_path / "one.geojson").write_text(json.dumps(legacy))
    assert len(read_geojson_regions(tmp_path / "one.geojson")) == 1
    collection = {"type": "FeatureCollection", "features": [modern]}
    (tmp_path / "fc.geojson").write_text(json.dumps(collection))
    assert read_geojson_regions(tmp_path / "fc.geojson")[0].name == "lesion"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('"a string"', "not GeoJSON"),
        ('{"type": "Topology"}', "Topology"),
        ('{"type": "FeatureCollection", "features": 3}', "features list"),
        ('{"type": "FeatureCollection", "features": [1]}', "feature 0"),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[["a", 1]]]}}]',
            "not a number",
        ),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", '
            '"coordinates": [[[0, 0], [1, NaN], [1, 1], [0, 0]]]}}]',
            "not finite",
        ),
        (
            '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}}]',
            "invalid geometry",
        ),
    ],
)
def test_malformed_geojson_raises_annotation_error(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=message) as info:
        read_geojson_regions(path)
    assert info.value.path == path
    assert "bad.geojson" in str(info.value)


def test_missing_geojson_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="does not exist"):
        read_geojson_regions(tmp_path / "missing.geojson")


# --------------------------------------------------------------------------- CSV


def test_csv_round_trip_is_exact(tmp_path: Path) -> None:
    patches = [
        Patch((1000, 50), (256, 256), 0.123456789012345, {"Normal": 0.25, "Tumor": 0.75}),
        Patch((1256.5, 306), (256, 256), 1e-9, {"Normal": 1 / 3, "Tumor": 2 / 3}),
        {"x": 1, "y": 2, "w": 3, "h": 4, "attention": 0.5, "prob_Tumor": 0.9},
    ]
    path = write_patches_csv(tmp_path / "p.csv", patches, class_names=["Normal", "Tumor"])
    lines = path.read_text().splitlines()
    assert lines[0] == "x,y,w,h,attention,prob_Normal,prob_Tumor"
    assert lines[1].startswith("1000,50,256,256,")
    assert lines[3] == "1,2,3,4,0.5,,0.9"
    back = read_patches_csv(path)
    assert back[0] == patches[0]
    assert back[1] == patches[1]
    assert dict(back[2].probs) == {"Tumor": 0.9}


def test_csv_default_class_order_and_no_classes(tmp_path: Path) -> None:
    path = write_patches_csv(
        tmp_path / "p.csv",
        [Patch((0, 0), (1, 1), 0.1, {"b": 0.5, "a": 0.5}), Patch((1, 0), (1, 1), 0.2)],
    )
    assert path.read_text().splitlines()[0] == "x,y,w,h,attention,prob_b,prob_a"
    plain = write_patches_csv(tmp_path / "q.csv", [Patch((0, 0), (1, 1), 0.1)])
    assert plain.read_text().splitlines() == ["x,y,w,h,attention", "0,0,1,1,0.1"]


def test_csv_agrees_with_geojson(tmp_path: Path) -> None:
    attention, probs = attention_map()
    names = ["Normal", "Tumor"]
    regions = threshold_regions(attention, GEOMETRY, 0.5, class_names=names, cell_probs=probs)
    write_geojson(tmp_path / "r.geojson", regions, provenance={})
    write_patches_csv(
        tmp_path / "p.csv", grid_patches(attention, GEOMETRY, class_names=names, cell_probs=probs)
    )
    patches = read_patches_csv(tmp_path / "p.csv")
    assert len(patches) == np.isfinite(attention).sum()
    back = read_geojson_regions(tmp_path / "r.geojson")
    top_patch = max(patches, key=lambda p: p.attention)
    by_max = max(back, key=lambda r: r.measurements["attention_max"])
    assert by_max.polygon.covers(top_patch.polygon)
    assert by_max.measurements["attention_max"] == pytest.approx(top_patch.attention)
    # Every region's mass is the sum of the attention of the CSV patches it covers.
    for region in back:
        inside = [p.attention for p in patches if region.polygon.covers(p.polygon)]
        assert sum(inside) == pytest.approx(region.measurements["attention_mass"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("a,b,c\n1,2,3\n", "header must start"),
        ("x,y,w,h,attention\n1,2,3,four,5\n", "line 2"),
        ("x,y,w,h,attention,prob_a\n1,2,3,4\n", "line 2 has 4 cells"),
    ],
)
def test_malformed_csv_raises_annotation_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=message):
        read_patches_csv(path)


def test_csv_malformed_patch_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="malformed patch"):
        write_patches_csv(tmp_path / "p.csv", [{"x": 1}])
    assert not (tmp_path / "p.csv").exists()


# --------------------------------------------------------------------------- failures


def test_unwritable_geojson_path_raises_and_keeps_earlier_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    regions = [Region(box(0, 0, 10, 10))]
    with pytest.raises(ExportError, match="does not exist"):
        write_geojson(tmp_path / "missing" / "r.geojson", regions)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        write_geojson(tmp_path / "file" / "r.geojson", regions)

    earlier = write_geojson(tmp_path / "r.geojson", regions, provenance={"run": 1})
    before = earlier.read_bytes()
    real_replace = atomic.os.replace

    def disk_full(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", disk_full)
    with pytest.raises(ExportError, match="disk full") as info:
        write_geojson(earlier, [Region(box(0, 0, 20, 20))], provenance={"run": 2})
    assert info.value.path == earlier
    with pytest.raises(ExportError):
        write_patches_csv(tmp_path / "r.geojson", [Patch((0, 0), (1, 1), 0.5)])
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert earlier.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "r.geojson"]


# --------------------------------------------------------------------------- PNG crops


def fake_slide(width: int = 3000, height: int = 2000) -> tuple[np.ndarray, list[Any]]:
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx % 251, yy % 241, (xx // 251 + yy // 241) % 256], axis=-1).astype(np.uint8)
    calls: list[Any] = []
    return pixels, calls


def make_reader(pixels: np.ndarray, calls: list[Any]) -> Any:
    def read_region(l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]) -> np.ndarray:
        calls.append((l0_xy, level, size_wh))
        x, y = l0_xy
        w, h = size_wh
        return pixels[y : y + h, x : x + w]

    return read_region


def test_region_crops_are_full_resolution_and_ranked(tmp_path: Path) -> None:
    pixels, calls = fake_slide()
    regions = [
        Region(box(100.4, 200, 356, 300.5), class_name="Tumor", rank=2),
        Region(box(1000, 50, 1256, 306), class_name="Tumor", rank=1),
        Region(box(0, 0, 10, 10), rank=3),
    ]
    written = write_region_crops(tmp_path / "crops", regions, make_reader(pixels, calls), top_k=2)
    assert [p.name for p in written] == ["region_01_tumor.png", "region_02_tumor.png"]
    assert calls == [((1000, 50), 0, (256, 256)), ((100, 200), 0, (256, 101))]
    with Image.open(written[0]) as image:
        assert np.array_equal(np.asarray(image), pixels[50:306, 1000:1256])
        assert json.loads(image.text["histattn:l0_xywh"]) == [1000, 50, 256, 256]


def test_region_crop_is_clipped_to_max_size_around_the_centre(tmp_path: Path) -> None:
    pixels, calls = fake_slide()
    big = Region(box(0, 0, 2900, 1000), class_name="Stroma")
    (path,) = write_region_crops(
        tmp_path, [big], make_reader(pixels, calls), max_size=512, slide_l0_wh=(3000, 2000)
    )
    ((xy, level, wh),) = calls
    assert wh == (512, 512) and level == 0
    assert xy == (1450 - 256, 500 - 256)
    with Image.open(path) as image:
        assert image.size == (512, 512)


def test_region_crop_bad_reader_output_is_an_export_error(tmp_path: Path) -> None:
    def floats(l0_xy: Any, level: int, size_wh: tuple[int, int]) -> np.ndarray:
        return np.zeros((size_wh[1], size_wh[0], 3), dtype=np.float32)

    with pytest.raises(ExportError, match="uint8"):
        write_region_crops(tmp_path, [Region(box(0, 0, 4, 4))], floats)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- napari frames


def test_napari_l0_round_trip_with_scale_and_translate() -> None:
    rng = np.random.default_rng(0)
    l0_xy = rng.uniform(0, 50_000, size=(17, 2))
    for scale_yx, translate_yx, mpp_xy in [
        ((0.25, 0.5), (10.0, -3.5), (0.5, 0.25)),
        ((1.0, 1.0), (0.0, 0.0), (0.499, 0.499)),
        ((2.0, 3.0), (-7.0, 11.0), None),
    ]:
        data_yx = l0_polygon_to_napari_yx(l0_xy, scale_yx, translate_yx, mpp_xy=mpp_xy)
        back = napari_yx_to_l0_polygon(data_yx, scale_yx, translate_yx, mpp_xy=mpp_xy)
        np.testing.assert_allclose(back, l0_xy, rtol=1e-12)


def test_napari_conversion_known_points_and_frames_agreement() -> None:
    mpp_xy = (0.5, 0.25)
    l0_xy = np.array([[1000.0, 50.0], [1256.0, 306.0]])
    # Layer with the slide's scale: data are level-0 pixels, (y, x).
    data = l0_polygon_to_napari_yx(l0_xy, (0.25, 0.5), (0.0, 0.0), mpp_xy=mpp_xy)
    np.testing.assert_allclose(data, [[50.0, 1000.0], [306.0, 1256.0]])
    # Hand-drawn layer (scale 1): data are world micrometres, as frames.py places the slide.
    world = l0_polygon_to_napari_yx(l0_xy, mpp_xy=mpp_xy)
    expected = [l0_xy_to_napari_yx(p, mpp_xy) for p in l0_xy]
    np.testing.assert_allclose(world, expected)
    np.testing.assert_allclose(world[0], [12.5, 500.0])
    # A translated layer: world = data * scale + translate.
    shifted = l0_polygon_to_napari_yx(l0_xy, (1.0, 1.0), (100.0, -20.0), mpp_xy=mpp_xy)
    np.testing.assert_allclose(shifted[0], [12.5 - 100.0, 500.0 + 20.0])
    np.testing.assert_allclose(
        napari_yx_to_l0_polygon(shifted, (1.0, 1.0), (100.0, -20.0), mpp_xy=mpp_xy), l0_xy
    )


def test_napari_conversion_drops_closing_vertex_and_extra_axes() -> None:
    ring = np.array([[0, 0], [10, 0], [10, 5], [0, 0]], dtype=float)
    assert l0_polygon_to_napari_yx(ring).shape == (3, 2)
    with_z = np.array([[3.0, 5.0, 7.0], [3.0, 6.0, 8.0]])
    np.testing.assert_allclose(napari_yx_to_l0_polygon(with_z), [[7.0, 5.0], [8.0, 6.0]])
    with pytest.raises(ValueError, match="non-zero"):
        napari_yx_to_l0_polygon(with_z, (0.0, 1.0))


def test_napari_polygon_to_geojson_round_trip(tmp_path: Path) -> None:
    """A shape drawn in napari comes back from GeoJSON at the same place."""
    scale_yx, translate_yx, mpp_xy = (0.25, 0.25), (4.0, 8.0), (0.25, 0.25)
    drawn_yx = np.array([[10.0, 10.0], [10.0, 90.0], [60.0, 90.0], [60.0, 10.0]])
    polygon = Polygon(napari_yx_to_l0_polygon(drawn_yx, scale_yx, translate_yx, mpp_xy=mpp_xy))
    path = write_geojson(tmp_path / "drawn.geojson", [Region(polygon, class_name="Tumor")])
    (region,) = read_geojson_regions(path)
    restored = l0_polygon_to_napari_yx(
        np.asarray(region.polygon.exterior.coords), scale_yx, translate_yx, mpp_xy=mpp_xy
    )
    assert Polygon(restored).symmetric_difference(Polygon(drawn_yx)).area == pytest.approx(0.0)


def test_json_safe_handles_common_types() -> None:
    value = json_safe(
        {1: np.arange(3), "b": b"\x01\xff", "s": {2, 1}, "inf": math.inf, "ok": np.bool_(True)}
    )
    assert value == {"1": [0, 1, 2], "b": "01ff", "s": [1, 2], "inf": None, "ok": True}
    json.dumps(value, allow_nan=False)


def test_region_crop_from_a_real_slide(tmp_path: Path, cmu_svs: Path) -> None:
    """Crops read through Slide.read_region at level 0 match the slide's own pixels."""
    from napari_histattn.io.slide import open_slide

    slide = open_slide(cmu_svs)
    try:
        width, height = slide.level_dimensions[0]
        region = Region(box(width - 300, 1000, width + 500, 1200), class_name="Tumor")
        (path,) = write_region_crops(
            tmp_path, [region], slide.read_region, slide_l0_wh=(width, height)
        )
        expected = slide.read_region((width - 300, 1000), 0, (300, 200))
    finally:
        slide.close()
    with Image.open(path) as image:
        assert image.size == (300, 200)  # clipped to the slide's right edge
        assert np.array_equal(np.asarray(image), expected)
