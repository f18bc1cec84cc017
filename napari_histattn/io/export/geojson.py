"""GeoJSON of attended regions in QuPath's conventions: writing (see the package docstring;
:mod:`.geojson_read` reads the files back, ours and QuPath's)."""

import dataclasses
import datetime as _dt
import enum
import json
import math
import os
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from shapely.geometry import MultiPolygon, Polygon

from napari_histattn import __version__
from napari_histattn.atomic import atomic_write
from napari_histattn.errors import ExportError
from napari_histattn.io.regions import Region, make_valid_polygonal

_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/napari-histattn")


# --------------------------------------------------------------------------- JSON helpers


def json_safe(value: Any) -> Any:
    """Return ``value`` converted to plain JSON types.

    numpy scalars and arrays become numbers and lists, paths strings, dates ISO 8601
    strings, bytes hexadecimal, enums their value, dataclasses dicts, non-finite
    floats ``None`` (JSON has no NaN); mapping keys become strings. Anything else
    becomes its ``str``.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [json_safe(v) for v in items]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    return str(value)


def _number(value: float) -> int | float:
    # Integral coordinates are written as integers, as QuPath does; others exactly.
    number = float(value)
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _ring(coords: Any) -> list[list[int | float]]:
    ring = [[_number(x), _number(y)] for x, y, *_ in coords]
    if ring and ring[0] != ring[-1]:
        ring.append(list(ring[0]))
    return ring


def _polygon_coordinates(polygon: Polygon) -> list[list[list[int | float]]]:
    return [_ring(polygon.exterior.coords)] + [_ring(r.coords) for r in polygon.interiors]


def _geometry_json(geometry: Polygon | MultiPolygon) -> dict[str, Any]:
    if isinstance(geometry, Polygon):
        return {"type": "Polygon", "coordinates": _polygon_coordinates(geometry)}
    return {
        "type": "MultiPolygon",
        "coordinates": [_polygon_coordinates(p) for p in geometry.geoms],
    }


def _measurements_json(measurements: Mapping[str, Any]) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for name, value in measurements.items():
        if isinstance(value, bool | np.bool_):
            out[str(name)] = int(value)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(name)] = number
    return out


# --------------------------------------------------------------------------- GeoJSON write


def regions_to_geojson(
    regions: Iterable[Region],
    *,
    provenance: Mapping[str, Any] | None = None,
    mpp_xy: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Build a QuPath-style GeoJSON ``FeatureCollection`` of annotations.

    Parameters
    ----------
    regions
        Regions with polygons in level-0 pixels. Self-intersecting polygons are
        repaired (``make_valid``, polygonal parts kept); a region with no area left
        is skipped with a warning.
    provenance
        Any mapping (made JSON-safe) stored as ``properties.provenance`` of the collection.
    mpp_xy
        Level-0 micrometres per pixel; recorded in the file and used to add an
        ``area_um2`` measurement to regions that lack one.

    Returns
    -------
    dict
        The FeatureCollection, ready for ``json.dumps(..., allow_nan=False)``.
        Features carry a deterministic UUID ``id`` derived from rank and geometry,
        so identical runs give identical files.
    """
    features: list[dict[str, Any]] = []
    for index, region in enumerate(regions):
        polygon = make_valid_polygonal(region.polygon)
        if polygon is None:
            warnings.warn(
                f"region {region.name!r} has no area after repair; not exported", stacklevel=2
            )
            continue
        measurements = dict(region.measurements)
        measurements.setdefault("rank", region.rank)
        if mpp_xy is not None and "area_um2" not in measurements:
            measurements["area_um2"] = polygon.area * mpp_xy[0] * mpp_xy[1]
        properties: dict[str, Any] = {
            "objectType": "annotation",
            "name": region.name,
        }
        colour = [int(v) for v in region.colour]
        if region.class_name is not None:
            properties["classification"] = {"name": region.class_name, "color": colour}
        else:
            properties["color"] = colour
        properties["isLocked"] = False
        properties["measurements"] = _measurements_json(measurements)
        if region.metadata:  # QuPath's object metadata: who made it, a reviewer's decision
            properties["metadata"] = dict(region.metadata)
        feature_id = uuid.uuid5(_ID_NAMESPACE, f"{index}:{region.rank}:{polygon.wkb_hex}")
        features.append(
            {
                "type": "Feature",
                "id": str(feature_id),
                "geometry": _geometry_json(polygon),
                "properties": properties,
            }
        )
    return {
        "type": "FeatureCollection",
        "properties": {
            "software": {"name": "napari-histattn", "version": __version__},
            "coordinates": "level-0 pixels, (x, y), y pointing down",
            "mpp_xy": json_safe(list(mpp_xy)) if mpp_xy is not None else None,
            "provenance": json_safe(dict(provenance)) if provenance is not None else {},
        },
        "features": features,
    }


def _dumps(document: Any, path: Path) -> str:
    try:
        return json.dumps(document, allow_nan=False, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ExportError(path, f"the content is not valid JSON: {exc}") from exc


def write_geojson(
    path: str | os.PathLike[str],
    regions: Iterable[Region] | Mapping[str, Any],
    *,
    provenance: Mapping[str, Any] | None = None,
    mpp_xy: tuple[float, float] | None = None,
) -> Path:
    """Write regions (or a ready FeatureCollection) as GeoJSON, atomically.

    Parameters
    ----------
    path
        Target file, conventionally ``*.geojson``.
    regions
        Regions (converted with :func:`regions_to_geojson`) or a FeatureCollection
        mapping, written as given apart from ``provenance``, which is merged into its
        top-level ``properties.provenance``.
    provenance, mpp_xy
        As for :func:`regions_to_geojson`.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ExportError
        The file could not be written (nothing partial is left, an earlier file is
        kept), or a FeatureCollection mapping is not one.
    """
    target = Path(path)
    if isinstance(regions, Mapping):
        if regions.get("type") != "FeatureCollection" or not isinstance(
            regions.get("features"), list
        ):
            raise ExportError(target, "expected a GeoJSON FeatureCollection with a features list")
        document = dict(regions)
        if provenance is not None:
            properties = dict(document.get("properties") or {})
            properties["provenance"] = {
                **dict(properties.get("provenance") or {}),
                **dict(provenance),
            }
            document["properties"] = properties
        document = json_safe(document)
    else:
        document = regions_to_geojson(regions, provenance=provenance, mpp_xy=mpp_xy)
    text = _dumps(document, target)
    with atomic_write(target, "w") as handle:
        handle.write(text)
    return target
