"""GeoJSON import has limits: nesting, vertices, features, repair cost; bad numbers are
refused with AnnotationError naming the feature."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from isolated import run_isolated

from napari_histattn.errors import AnnotationError
from napari_histattn.io.export import geojson_read as geojson_mod
from napari_histattn.io.export import read_geojson_regions

SQUARE = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]


def _file(tmp_path: Path, document: object, name: str = "a.geojson") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def _feature(geometry: dict, **properties: object) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e308, -1e300])
def test_bad_coordinates_are_refused_naming_the_feature(tmp_path: Path, bad: float) -> None:
    ring = [[[0, 0], [bad, 0], [10, 10], [0, 10], [0, 0]]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            _feature({"type": "Polygon", "coordinates": SQUARE}),
            _feature({"type": "Polygon", "coordinates": ring}),
        ],
    }
    with pytest.raises(AnnotationError, match="feature 1"):
        read_geojson_regions(_file(tmp_path, doc))


@pytest.mark.parametrize("rank", [float("nan"), float("inf"), 1e308, -3])
def test_bad_ranks_are_refused(tmp_path: Path, rank: float) -> None:
    feature = _feature({"type": "Polygon", "coordinates": SQUARE}, measurements={"rank": rank})
    with pytest.raises(AnnotationError, match="feature 0: rank"):
        read_geojson_regions(_file(tmp_path, {"type": "FeatureCollection", "features": [feature]}))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 200_000 + "]" * 200_000,
        json.dumps({"type": "Polygon", "coordinates": [[[[[[[[0]]]]]]]]}),
        '{"type": "Polygon", "coordinates": ' + "[" * 50_000 + "0" + "]" * 50_000 + "}",
    ],
    ids=["deep-json", "deep-coordinates", "very-deep-coordinates"],
)
def test_deep_nesting_is_our_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(AnnotationError):
        read_geojson_regions(_file(tmp_path, text))


def test_nested_geometry_collections_are_bounded(tmp_path: Path) -> None:
    geometry: dict = {"type": "Polygon", "coordinates": SQUARE}
    for _ in range(20):
        geometry = {"type": "GeometryCollection", "geometries": [geometry]}
    with pytest.raises(AnnotationError, match="nested"):
        read_geojson_regions(_file(tmp_path, _feature(geometry)))


def test_too_many_features_vertices_or_bytes(tmp_path: Path, monkeypatch) -> None:
    features = [_feature({"type": "Polygon", "coordinates": SQUARE}) for _ in range(30)]
    path = _file(tmp_path, {"type": "FeatureCollection", "features": features})
    monkeypatch.setattr(geojson_mod, "MAX_FEATURES", 20)
    with pytest.raises(AnnotationError, match="features"):
        read_geojson_regions(path)
    monkeypatch.setattr(geojson_mod, "MAX_FEATURES", 200_000)
    monkeypatch.setattr(geojson_mod, "MAX_VERTICES", 100)
    with pytest.raises(AnnotationError, match="vertices"):
        read_geojson_regions(path)
    monkeypatch.setattr(geojson_mod, "MAX_VERTICES", 5_000_000)
    monkeypatch.setattr(geojson_mod, "MAX_GEOJSON_BYTES", 100)
    with pytest.raises(AnnotationError, match="MiB"):
        read_geojson_regions(path)


def test_ten_thousand_overlapping_polygons_repair_in_bounded_time_and_memory(
    tmp_path: Path,
) -> None:
    """One MultiPolygon of 10k overlapping squares: make_valid on it never finished (5.6 GB)."""
    rng = random.Random(0)
    squares = []
    for _ in range(10_000):
        x, y, s = rng.uniform(0, 2000), rng.uniform(0, 2000), rng.uniform(50, 400)
        squares.append([[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]])
    path = _file(tmp_path, _feature({"type": "MultiPolygon", "coordinates": squares}))
    ended = run_isolated(
        f"""
from napari_histattn.io.export import read_geojson_regions
regions = read_geojson_regions({str(path)!r})
print("AREA", sum(r.polygon.area for r in regions))
""",
        memory_gib=2.0,
        timeout_s=60,
    )
    assert not ended.crashed, ended.stderr[-2000:]
    area = float(ended.stdout.split("AREA")[1])
    assert 0.5 * 2400**2 < area <= 2400**2  # the union: overlaps counted once, not holes


def test_an_overlapping_multipolygon_reads_as_its_union(tmp_path: Path) -> None:
    a = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]
    b = [[[5, 0], [15, 0], [15, 10], [5, 10], [5, 0]]]
    regions = read_geojson_regions(
        _file(tmp_path, _feature({"type": "MultiPolygon", "coordinates": [a, b]}))
    )
    assert regions[0].polygon.area == pytest.approx(150.0)
