"""Reading GeoJSON annotations back as regions in level-0 pixels: our exports, QuPath's
and bare geometries, within limits on size, features, vertices and repair cost (so a
hostile file gets a clear :class:`~napari_histattn.errors.AnnotationError`, not a hang).
:mod:`.geojson` writes them."""

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import shapely
from shapely.errors import GEOSException
from shapely.geometry import MultiPolygon, Polygon

from napari_histattn.atomic import describe_os_error
from napari_histattn.errors import AnnotationError
from napari_histattn.io.limits import MAX_COORDINATE
from napari_histattn.io.regions import Region, make_valid_polygonal


def _colour_from(properties: Mapping[str, Any]) -> tuple[int, int, int] | None:
    classification = properties.get("classification")
    candidates: list[Any] = []
    if isinstance(classification, Mapping):
        candidates += [classification.get("color"), classification.get("colorRGB")]
    candidates += [properties.get("color"), properties.get("colorRGB")]
    for value in candidates:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # QuPath <= 0.3 packs the colour as a signed 32-bit ARGB integer.
            packed = int(value) & 0xFFFFFFFF
            return ((packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF)
        if isinstance(value, list | tuple) and len(value) >= 3:
            try:
                rgb = tuple(int(v) for v in value[:3])
            except (TypeError, ValueError):
                continue
            if all(0 <= v <= 255 for v in rgb):
                return (rgb[0], rgb[1], rgb[2])
    return None


def _class_from(properties: Mapping[str, Any]) -> str | None:
    classification = properties.get("classification")
    if isinstance(classification, Mapping):
        name = classification.get("name")
        if isinstance(name, str) and name:
            return name
        names = classification.get("names")  # QuPath >= 0.4 derived classes
        if isinstance(names, list) and names:
            return ": ".join(str(n) for n in names)
    if isinstance(classification, str) and classification:
        return classification
    return None


def _measurements_from(properties: Mapping[str, Any]) -> dict[str, float]:
    raw = properties.get("measurements")
    pairs: list[tuple[Any, Any]] = []
    if isinstance(raw, Mapping):
        pairs = list(raw.items())
    elif isinstance(raw, list):  # QuPath 0.2/0.3: [{"name": ..., "value": ...}, ...]
        pairs = [(m.get("name"), m.get("value")) for m in raw if isinstance(m, Mapping)]
    out: dict[str, float] = {}
    for name, value in pairs:
        if name is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[str(name)] = float(value)
    return out


def _metadata_from(properties: Mapping[str, Any]) -> dict[str, str]:
    """QuPath's object metadata (text to text); anything else, or beyond the limits, is
    left out."""
    raw = properties.get("metadata")
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, str] = {}
    for key, value in list(raw.items())[:MAX_METADATA_KEYS]:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            out[str(key)[:MAX_METADATA_TEXT]] = str(value)[:MAX_METADATA_TEXT]
    return out


#: Limits of what a GeoJSON import reads: beyond them the file is refused, never
#: allowed to take minutes or gigabytes (a file of overlapping polygons once took 5.6 GB).
MAX_GEOJSON_BYTES = 256 * 2**20
MAX_FEATURES = 200_000
MAX_VERTICES = 5_000_000
#: Object metadata kept per feature: this many entries of at most this many characters.
MAX_METADATA_KEYS = 32
MAX_METADATA_TEXT = 1000
#: A single polygon with more vertices than this is not repaired (make_valid is slow on it).
MAX_REPAIR_VERTICES = 200_000

# Coordinates nest this deep: MultiPolygon > polygon > ring > position > number.
_DEPTH = {"Polygon": 3, "MultiPolygon": 4}


def _check_coordinates(value: Any, depth: int, budget: list[int]) -> None:
    """Refuse NaN/inf/huge numbers, wrong nesting and too many vertices, iteratively
    (a list nested 100,000 deep must not reach Python's recursion limit)."""
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        if level == 0:
            if not isinstance(item, list) or not 2 <= len(item) <= 3:
                raise ValueError(f"a position must be [x, y], got {str(item)[:40]}")
            for number in item:
                if isinstance(number, bool) or not isinstance(number, int | float):
                    raise ValueError(f"coordinate {number!r} is not a number")
                if not math.isfinite(number) or abs(number) > MAX_COORDINATE:
                    raise ValueError(f"coordinate {number!r} is not finite or beyond 2^40")
            budget[0] -= 1
            if budget[0] < 0:
                raise ValueError(f"more than {MAX_VERTICES:,} vertices in the file")
            continue
        if not isinstance(item, list):
            raise ValueError(f"coordinates nest wrongly near {str(item)[:40]}")
        stack.extend((child, level - 1) for child in item)


def _polygonal_geometry(
    geometry: Mapping[str, Any], budget: list[int], nesting: int = 0
) -> Polygon | MultiPolygon | None:
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        if nesting > 8:
            raise ValueError("geometry collections nested more than 8 deep")
        members = geometry.get("geometries") or []
        if not isinstance(members, list):
            raise ValueError("the GeometryCollection has no geometries list")
        parts = [
            _polygonal_geometry(g, budget, nesting + 1) for g in members if isinstance(g, Mapping)
        ]
        polygons = [p for p in parts if p is not None]
        return make_valid_polygonal(shapely.union_all(polygons)) if polygons else None
    if kind not in ("Polygon", "MultiPolygon"):
        return None  # points and lines are not regions
    coordinates = geometry.get("coordinates")
    if not isinstance(coordinates, list):
        raise ValueError(f"{kind} has no coordinates list")
    before = budget[0]
    _check_coordinates(coordinates, _DEPTH[kind] - 1, budget)
    shape = shapely.geometry.shape({"type": kind, "coordinates": coordinates})
    if before - budget[0] > MAX_REPAIR_VERTICES and not shape.is_valid:
        raise ValueError(
            f"an invalid {kind} of {before - budget[0]:,} vertices is too large to repair "
            f"(limit {MAX_REPAIR_VERTICES:,}); simplify it"
        )
    return make_valid_polygonal(shape)


def _features_of(document: Any) -> list[Any]:
    if isinstance(document, list):  # QuPath sometimes writes a bare array of features
        return document
    if isinstance(document, Mapping):
        kind = document.get("type")
        if kind == "FeatureCollection" or (kind is None and "features" in document):
            features = document.get("features")
            if not isinstance(features, list):
                raise ValueError("the FeatureCollection has no features list")
            return features
        if kind == "Feature":
            return [document]
        if kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
            return [{"type": "Feature", "geometry": document, "properties": {}}]
        raise ValueError(f"top-level GeoJSON type {kind!r} is not a FeatureCollection or Feature")
    raise ValueError(f"top-level JSON is a {type(document).__name__}, not GeoJSON")


def read_geojson_regions(path: str | os.PathLike[str]) -> list[Region]:
    """Read polygonal annotations from a GeoJSON file as regions in level-0 pixels
    (:func:`read_geojson_document` without the file's top-level properties).

    Reads our exports, QuPath's exports (FeatureCollection, single Feature or a bare
    list of features; measurements as a mapping or QuPath 0.2/0.3's list; colours as
    ``[r, g, b]`` or a packed ``colorRGB`` integer) and bare geometries. Features whose
    geometry is a point or a line, or null, are skipped (they are not regions); polygons
    are repaired like on export.

    Parameters
    ----------
    path
        The GeoJSON file.

    Returns
    -------
    list of Region
        In file order. ``rank`` comes from the ``rank`` measurement when present,
        otherwise from the position in the file (1-based); ``class_name`` is ``None``
        for unclassified annotations.

    Raises
    ------
    AnnotationError
        The file cannot be read, is not JSON, or is not GeoJSON with valid polygon
        coordinates; the message names the file and the feature.
    """
    return read_geojson_document(path)[0]


def read_geojson_document(
    path: str | os.PathLike[str],
) -> tuple[list[Region], dict[str, Any]]:
    """The regions of a GeoJSON file (as :func:`read_geojson_regions` reads them) and the
    top-level ``properties`` of its FeatureCollection (our exports keep the provenance
    and the slide's mpp there; ``{}`` when it has none), from one parse of the file.

    Raises
    ------
    AnnotationError
        As :func:`read_geojson_regions`.
    """
    source = Path(path)
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise AnnotationError(source, describe_os_error(exc)) from exc
    if size > MAX_GEOJSON_BYTES:
        raise AnnotationError(
            source, f"{size / 2**20:.0f} MiB is beyond the {MAX_GEOJSON_BYTES // 2**20} MiB limit"
        )
    try:
        text = source.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise AnnotationError(source, describe_os_error(exc)) from exc
    except UnicodeDecodeError as exc:
        raise AnnotationError(source, "not a UTF-8 text file") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            source, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    except RecursionError:
        raise AnnotationError(source, "JSON nested too deeply to be GeoJSON") from None
    try:
        features = _features_of(document)
    except ValueError as exc:
        raise AnnotationError(source, str(exc)) from exc
    top = document.get("properties") if isinstance(document, Mapping) else None
    file_properties = dict(top) if isinstance(top, Mapping) else {}
    if len(features) > MAX_FEATURES:
        raise AnnotationError(
            source, f"{len(features):,} features is beyond the limit of {MAX_FEATURES:,}"
        )
    budget = [MAX_VERTICES]

    regions: list[Region] = []
    for index, feature in enumerate(features):
        where = f"feature {index}"
        if not isinstance(feature, Mapping):
            raise AnnotationError(source, f"{where} is a {type(feature).__name__}, not an object")
        geometry = feature.get("geometry")
        if geometry is None:
            continue
        if not isinstance(geometry, Mapping):
            raise AnnotationError(source, f"{where}: geometry is not an object")
        try:
            polygon = _polygonal_geometry(geometry, budget)
        except (ValueError, TypeError, IndexError, GEOSException) as exc:
            raise AnnotationError(source, f"{where}: invalid geometry ({exc})") from exc
        if polygon is None:
            continue
        properties = feature.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise AnnotationError(source, f"{where}: properties is not an object")
        measurements = _measurements_from(properties)
        rank_value = measurements.get("rank")
        if rank_value is not None and not (
            math.isfinite(rank_value) and 0 <= rank_value <= MAX_FEATURES
        ):
            raise AnnotationError(source, f"{where}: rank {rank_value!r} is not a sane rank")
        rank = int(rank_value) if rank_value is not None else index + 1
        name = properties.get("name")
        regions.append(
            Region(
                polygon=polygon,
                class_name=_class_from(properties),
                color_rgb=_colour_from(properties),
                rank=rank,
                measurements=measurements,
                name=str(name) if name is not None else None,
                metadata=_metadata_from(properties),
            )
        )
    return regions, file_properties
