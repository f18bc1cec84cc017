"""GeoJSON writer and reader contributions: Shapes layers to level-0 GeoJSON and back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Polygon, box, shape

from napari_histattn._napari.annotations import (
    napari_get_geojson_reader,
    read_geojson_shapes,
    write_shapes_geojson,
)
from napari_histattn._napari.result_layers import regions_layer_data, shapes_to_regions
from napari_histattn.errors import AnnotationError, ExportError
from napari_histattn.io.regions import Region

MPP_XY = (0.5, 0.25)  # anisotropic on purpose: x and y must not be swapped


def _regions() -> list[Region]:
    return [
        Region(
            box(100, 40, 300, 90),
            class_name="lesion",
            rank=1,
            measurements={"attention_max": 0.9, "attention_mass": 3.5},
        ),
        Region(
            MultiPolygon([box(500, 500, 520, 560), box(600, 500, 640, 530)]),
            class_name="benign",
            rank=2,
            measurements={"attention_max": 0.4, "attention_mass": 1.25},
        ),
    ]


def _layer_tuple(translate_yx=(0.0, 0.0)):
    return regions_layer_data(
        _regions(),
        name="regions",
        mpp_xy=MPP_XY,
        size_l0_wh=(1000, 800),
        translate_yx=translate_yx,
        slide_path="/data/slide.svs",
        provenance={"seed": 3},
    )


def _same(a, b) -> bool:
    return a.symmetric_difference(b).area < 1e-9 and math.isclose(a.area, b.area, rel_tol=1e-12)


def test_regions_layer_is_in_micrometres_with_x_and_y_kept_apart() -> None:
    polygons, kwargs, kind = _layer_tuple()
    assert kind == "shapes" and len(polygons) == 3  # the MultiPolygon is two shapes
    # Level-0 (x, y) = (100, 40) -> world (y * mpp_y, x * mpp_x).
    assert [40 * 0.25, 100 * 0.5] in polygons[0].tolist()
    assert list(kwargs["features"]["name"]) == [
        "Attention region 1",
        "Attention region 2",
        "Attention region 2",
    ]
    assert list(kwargs["features"]["class"]) == ["lesion", "benign", "benign"]
    assert kwargs["metadata"]["mpp_xy"] == MPP_XY


def test_writer_writes_level0_geojson_and_regroups_parts(tmp_path: Path) -> None:
    polygons, kwargs, _ = _layer_tuple()
    attributes = {**kwargs, "scale": (1.0, 1.0), "shape_type": ["polygon"] * len(polygons)}
    (written,) = write_shapes_geojson(str(tmp_path / "out"), polygons, attributes)
    assert written.endswith("out.geojson")
    doc = json.loads(Path(written).read_text())
    assert doc["properties"]["mpp_xy"] == list(MPP_XY)
    assert doc["properties"]["provenance"]["slide_path"] == "/data/slide.svs"
    assert doc["properties"]["provenance"]["seed"] == 3
    features = doc["features"]
    assert len(features) == 2
    for feature, region in zip(features, _regions(), strict=True):
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == region.class_name
        assert props["classification"]["color"] == list(region.colour)
        assert props["measurements"]["attention_max"] == region.measurements["attention_max"]
        assert _same(shape(feature["geometry"]), region.polygon)
    assert features[1]["geometry"]["type"] == "MultiPolygon"


@pytest.mark.gui
def test_writer_and_reader_round_trip_through_the_manifest(make_napari_viewer, tmp_path) -> None:
    import napari

    viewer = make_napari_viewer()
    # A moved slide layer: the regions layer shares its translate, which must not leak
    # into level-0 coordinates.
    polygons, kwargs, _ = _layer_tuple(translate_yx=(30.0, -12.0))
    layer = viewer.add_shapes(polygons, **kwargs)
    path = tmp_path / "regions.geojson"
    written = napari.save_layers(str(path), [layer], plugin="napari-histattn")
    assert written == [str(path)]
    original = _regions()
    saved = [shape(f["geometry"]) for f in json.loads(path.read_text())["features"]]
    assert all(_same(s, r.polygon) for s, r in zip(saved, original, strict=True))

    (opened,) = viewer.open(str(path), plugin="napari-histattn")
    assert opened.nshapes == 3
    assert opened.metadata["mpp_xy"] == MPP_XY
    assert opened.metadata["slide_path"] == "/data/slide.svs"
    # On a slide at its original place (translate 0), the polygons sit at l0 * mpp.
    np.testing.assert_allclose(
        np.asarray(opened.data[0]), np.asarray(polygons[0]), rtol=0, atol=1e-9
    )
    back = shapes_to_regions(opened.data, opened.as_layer_data_tuple()[1])
    assert [r.class_name for r in back] == ["lesion", "benign"]
    assert [r.rank for r in back] == [1, 2]
    assert all(_same(b.polygon, r.polygon) for b, r in zip(back, original, strict=True))
    assert back[1].measurements["attention_mass"] == pytest.approx(1.25)


def test_writer_converts_scaled_rectangles_and_ellipses_and_skips_lines(tmp_path: Path) -> None:
    # Drawn on a layer with scale 2 over a slide shown in pixels (no mpp).
    rectangle = np.array([[10, 20], [10, 60], [30, 60], [30, 20]], dtype=float)
    ellipse = np.array([[100, 100], [100, 140], [120, 140], [120, 100]], dtype=float)
    line = np.array([[0, 0], [5, 5]], dtype=float)
    attributes = {
        "scale": (2.0, 2.0),
        "translate": (4.0, 6.0),
        "shape_type": ["rectangle", "ellipse", "line"],
        "metadata": {"mpp_xy": None},
    }
    (written,) = write_shapes_geojson(
        str(tmp_path / "drawn.geojson"), [rectangle, ellipse, line], attributes
    )
    features = json.loads(Path(written).read_text())["features"]
    assert len(features) == 2
    rect = shape(features[0]["geometry"])
    # (y, x) data -> world = data * 2 + translate -> level-0 (x, y) in pixels.
    assert _same(rect, box(20 * 2 + 6, 10 * 2 + 4, 60 * 2 + 6, 30 * 2 + 4))
    oval = shape(features[1]["geometry"])
    assert oval.area == pytest.approx(math.pi * 40 * 20, rel=0.01)
    assert oval.centroid.x == pytest.approx(120 * 2 + 6) and oval.centroid.y == pytest.approx(
        110 * 2 + 4
    )
    assert all("classification" not in f["properties"] for f in features)


def test_writer_refuses_a_layer_that_does_not_know_the_slide_scale(tmp_path: Path) -> None:
    target = tmp_path / "x.geojson"
    with pytest.raises(ExportError, match="mpp_xy"):
        write_shapes_geojson(str(target), [np.ones((3, 2))], {"metadata": {}})
    assert not target.exists()


def test_writer_keeps_an_earlier_file_when_the_path_is_unwritable(tmp_path: Path) -> None:
    polygons, kwargs, _ = _layer_tuple()
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    with pytest.raises(ExportError):
        write_shapes_geojson(str(blocker / "regions.geojson"), polygons, kwargs)
    assert blocker.read_text() == "keep me"


def test_reader_opens_a_qupath_file_without_mpp_in_pixels(tmp_path: Path) -> None:
    ring = [[10, 20], [50, 20], [50, 80], [10, 80], [10, 20]]
    doc = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [1, 2]},
            "properties": {"objectType": "annotation"},
        },
    ]
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(doc))
    reader = napari_get_geojson_reader(str(path))
    assert reader is not None
    ((data, kwargs, kind),) = reader(str(path))
    assert kind == "shapes" and len(data) == 1  # the point is not a region
    np.testing.assert_allclose(data[0][0], (20, 10))  # level-0 (x, y) -> (y, x) in px
    assert kwargs["metadata"]["mpp_xy"] is None
    assert list(kwargs["features"]["class"]) == ["Tumor"]
    assert kwargs["features"]["rank"][0] == 1


def test_reader_declines_other_files_and_reports_malformed_geojson(tmp_path: Path) -> None:
    other = tmp_path / "slide.svs"
    other.write_bytes(b"II*\x00")
    assert napari_get_geojson_reader(str(other)) is None
    assert napari_get_geojson_reader(str(tmp_path / "missing.geojson")) is None
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(AnnotationError, match="bad.geojson"):
        read_geojson_shapes(bad)


def test_polygon_parts_keep_their_own_vertices() -> None:
    polygons, kwargs, _ = _layer_tuple()
    back = shapes_to_regions(polygons, {**kwargs, "shape_type": "polygon"})
    assert isinstance(back[1].polygon, MultiPolygon)
    assert _same(back[0].polygon, Polygon(box(100, 40, 300, 90)))
