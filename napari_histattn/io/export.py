"""Export of attended regions and patches: GeoJSON (QuPath), CSV, PNG crops.

Every file is written through :func:`~napari_histattn.atomic.atomic_write`: it
appears complete or not at all, and a failed write raises
:class:`~napari_histattn.errors.ExportError` and leaves an earlier file untouched.

GeoJSON follows QuPath's conventions, so that QuPath's importer (File > Import
objects, or drag and drop) accepts it:

- a ``FeatureCollection`` of ``Feature`` objects;
- ``geometry`` a ``Polygon`` or ``MultiPolygon`` in level-0 pixel coordinates
  ``(x, y)`` (``y`` down), rings closed, exteriors counter-clockwise and holes
  clockwise in those coordinates (RFC 7946; QuPath accepts either orientation),
  repaired when self-intersecting;
- ``properties.objectType = "annotation"``, ``properties.name``,
  ``properties.classification = {"name": ..., "color": [r, g, b]}`` (always with a
  colour), ``properties.measurements`` as a mapping name -> number (QuPath >= 0.4
  writes and reads this form; QuPath 0.2/0.3 wrote a list of ``{"name", "value"}``,
  which :func:`read_geojson_regions` also reads). Non-finite measurements are left out
  because JSON has no NaN.

Provenance (package version, model, checkpoint SHA-256, seed, device, slide,
quickhash, mpp, time: whatever mapping the caller passes) is stored in the
collection's top-level ``properties`` member, which GeoJSON readers, QuPath included,
ignore.

The napari helpers at the end convert Shapes-layer vertices to level-0 polygons and
back without importing napari.

GUI-free: numpy, shapely, Pillow, json and csv only.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import enum
import io
import json
import math
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from shapely.errors import GEOSException
from shapely.geometry import MultiPolygon, Polygon

from napari_histattn import __version__
from napari_histattn.atomic import atomic_write, describe_os_error
from napari_histattn.errors import AnnotationError, ExportError, HistattnError
from napari_histattn.io.frames import napari_scale_yx
from napari_histattn.io.regions import Patch, Region, make_valid_polygonal

__all__ = [
    "CSV_BASE_COLUMNS",
    "json_safe",
    "l0_polygon_to_napari_yx",
    "napari_yx_to_l0_polygon",
    "read_geojson_regions",
    "read_patches_csv",
    "regions_to_geojson",
    "write_geojson",
    "write_patches_csv",
    "write_region_crops",
]

CSV_BASE_COLUMNS = ("x", "y", "w", "h", "attention")
_PROB_PREFIX = "prob_"
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/napari-histattn")

ReadRegion = Callable[[tuple[int, int], int, tuple[int, int]], ArrayLike]


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


# --------------------------------------------------------------------------- GeoJSON read


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


def _check_coordinates(value: Any) -> None:
    # Reject NaN/inf and non-numbers before shapely sees them (it would accept NaN).
    if isinstance(value, list):
        for item in value:
            _check_coordinates(item)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"coordinate {value!r} is not a number")
    elif not math.isfinite(value):
        raise ValueError(f"coordinate {value!r} is not finite")


def _polygonal_geometry(geometry: Mapping[str, Any]) -> Polygon | MultiPolygon | None:
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        parts = [_polygonal_geometry(g) for g in geometry.get("geometries") or []]
        polygons = [p for p in parts if p is not None]
        return make_valid_polygonal(shapely.union_all(polygons)) if polygons else None
    if kind not in ("Polygon", "MultiPolygon"):
        return None  # points and lines are not regions
    coordinates = geometry.get("coordinates")
    if not isinstance(coordinates, list):
        raise ValueError(f"{kind} has no coordinates list")
    _check_coordinates(coordinates)
    shape = shapely.geometry.shape({"type": kind, "coordinates": coordinates})
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
    """Read polygonal annotations from a GeoJSON file as regions in level-0 pixels.

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
    source = Path(path)
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
    try:
        features = _features_of(document)
    except ValueError as exc:
        raise AnnotationError(source, str(exc)) from exc

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
            polygon = _polygonal_geometry(geometry)
        except (ValueError, TypeError, IndexError, GEOSException) as exc:
            raise AnnotationError(source, f"{where}: invalid geometry ({exc})") from exc
        if polygon is None:
            continue
        properties = feature.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise AnnotationError(source, f"{where}: properties is not an object")
        measurements = _measurements_from(properties)
        rank_value = measurements.get("rank")
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
            )
        )
    return regions


# --------------------------------------------------------------------------- CSV


def _csv_number(value: float) -> str:
    if not math.isfinite(value):
        return ""
    number = _number(value)
    return str(number) if isinstance(number, int) else repr(number)


def _as_patch(item: Patch | Mapping[str, Any]) -> Patch:
    if isinstance(item, Patch):
        return item
    if isinstance(item, Mapping):
        probs = dict(item.get("probs") or {})
        for key, value in item.items():
            if str(key).startswith(_PROB_PREFIX):
                probs[str(key)[len(_PROB_PREFIX) :]] = value
        return Patch((item["x"], item["y"]), (item["w"], item["h"]), item["attention"], probs=probs)
    raise TypeError(f"expected a Patch or a mapping, got {type(item).__name__}")


def write_patches_csv(
    path: str | os.PathLike[str],
    patches: Iterable[Patch | Mapping[str, Any]],
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write patches as CSV with header ``x,y,w,h,attention,prob_<class>...``, atomically.

    Parameters
    ----------
    path
        Target file.
    patches
        :class:`~napari_histattn.io.regions.Patch` objects or mappings with keys
        ``x, y, w, h, attention`` (level-0 pixels) and ``probs`` (class -> probability)
        or ``prob_<class>`` keys.
    class_names
        Order of the probability columns; by default the classes in order of first
        appearance. A class missing from a patch gives an empty cell.

    Returns
    -------
    pathlib.Path
        The file written. Numbers are written exactly (integers without a decimal
        point, other floats by ``repr``), so reading gives back the same values.

    Raises
    ------
    ExportError
        The file could not be written, or a patch is malformed.
    """
    target = Path(path)
    try:
        rows = [_as_patch(p) for p in patches]
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(target, f"malformed patch ({type(exc).__name__}: {exc})") from exc
    if class_names is None:
        seen: dict[str, None] = {}
        for patch in rows:
            seen.update(dict.fromkeys(patch.probs))
        names = list(seen)
    else:
        names = [str(n) for n in class_names]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_BASE_COLUMNS, *(f"{_PROB_PREFIX}{n}" for n in names)])
    for patch in rows:
        writer.writerow(
            [
                _csv_number(patch.l0_xy[0]),
                _csv_number(patch.l0_xy[1]),
                _csv_number(patch.size_l0_wh[0]),
                _csv_number(patch.size_l0_wh[1]),
                _csv_number(patch.attention),
                *(_csv_number(patch.probs[n]) if n in patch.probs else "" for n in names),
            ]
        )
    with atomic_write(target, "w", newline="") as handle:
        handle.write(buffer.getvalue())
    return target


def read_patches_csv(path: str | os.PathLike[str]) -> list[Patch]:
    """Read a CSV written by :func:`write_patches_csv`.

    The first five columns must be ``x, y, w, h, attention``; ``prob_<class>`` columns
    give the probabilities, other columns are ignored. An empty attention cell reads as
    NaN; an empty probability cell leaves that class out of the patch.

    Raises
    ------
    AnnotationError
        The file cannot be read, has the wrong header, or a cell is not a number.
    """
    source = Path(path)
    try:
        with open(source, encoding="utf-8-sig", newline="") as handle:
            table = list(csv.reader(handle))
    except OSError as exc:
        raise AnnotationError(source, describe_os_error(exc)) from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AnnotationError(source, f"not a readable CSV file ({exc})") from exc
    if not table:
        raise AnnotationError(source, "empty file (no header)")
    header = [h.strip() for h in table[0]]
    if tuple(h.lower() for h in header[: len(CSV_BASE_COLUMNS)]) != CSV_BASE_COLUMNS:
        raise AnnotationError(
            source, f"header must start with {','.join(CSV_BASE_COLUMNS)}, got {','.join(header)}"
        )
    prob_columns = [
        (i, h[len(_PROB_PREFIX) :]) for i, h in enumerate(header) if h.startswith(_PROB_PREFIX)
    ]
    patches: list[Patch] = []
    for line, row in enumerate(table[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise AnnotationError(
                source, f"line {line} has {len(row)} cells, the header has {len(header)}"
            )
        try:
            x, y, w, h = (float(row[i]) for i in range(4))
            attention = float(row[4]) if row[4].strip() else math.nan
            probs = {name: float(row[i]) for i, name in prob_columns if row[i].strip()}
        except ValueError as exc:
            raise AnnotationError(source, f"line {line}: {exc}") from exc
        patches.append(Patch((x, y), (w, h), attention, probs))
    return patches


# --------------------------------------------------------------------------- PNG crops


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug or "region"


def _crop_window(
    bounds: tuple[float, float, float, float],
    max_size: int,
    slide_l0_wh: tuple[int, int] | None,
) -> tuple[tuple[int, int], tuple[int, int]]:
    minx, miny, maxx, maxy = bounds
    x0, y0 = max(math.floor(minx), 0), max(math.floor(miny), 0)
    x1, y1 = math.ceil(maxx), math.ceil(maxy)
    if slide_l0_wh is not None:
        x1, y1 = min(x1, int(slide_l0_wh[0])), min(y1, int(slide_l0_wh[1]))

    def clip(lo: int, hi: int) -> tuple[int, int]:
        # Larger than max_size: keep a max_size window centred on the region.
        if hi - lo <= max_size:
            return lo, hi - lo
        start = max(int(round((lo + hi) / 2 - max_size / 2)), 0)
        return start, max_size

    (x, w), (y, h) = clip(x0, x1), clip(y0, y1)
    return (x, y), (w, h)


def write_region_crops(
    out_dir: str | os.PathLike[str],
    regions: Iterable[Region],
    read_region: ReadRegion,
    *,
    top_k: int = 5,
    max_size: int = 2048,
    slide_l0_wh: tuple[int, int] | None = None,
    prefix: str = "region",
) -> list[Path]:
    """Write PNG crops of the ``top_k`` best-ranked regions, read at full resolution.

    Parameters
    ----------
    out_dir
        Folder for the crops (created if missing).
    regions
        Regions in level-0 pixels; the ``top_k`` with the lowest ``rank`` are written.
    read_region
        ``read_region(l0_xy, level, size_wh) -> (h, w, 3|4) or (h, w) uint8`` array,
        called with ``level=0``; ``Slide.read_region`` fits.
    top_k
        How many crops at most.
    max_size
        Longest side of a crop in level-0 pixels; a larger region is cropped to a
        ``max_size`` window centred on its bounding box (full resolution is kept,
        nothing is downscaled).
    slide_l0_wh
        Slide size, to keep crops inside the slide; crops never start below 0.
    prefix
        File name prefix: files are ``<prefix>_<rank>_<class>.png``.

    Returns
    -------
    list of pathlib.Path
        The PNG files, best region first. Each PNG records the crop's level-0 window
        and the region's name in text chunks.

    Raises
    ------
    ExportError
        The folder or a file cannot be written, or ``read_region`` returned something
        that is not an image of the requested size. Errors of ours raised by
        ``read_region`` (a :class:`~napari_histattn.errors.SlideError`) pass through.
    """
    if max_size < 1 or top_k < 0:
        raise ValueError(f"need max_size >= 1 and top_k >= 0, got {max_size}, {top_k}")
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(folder, describe_os_error(exc)) from exc
    chosen = sorted(regions, key=lambda r: r.rank)[:top_k]
    written: list[Path] = []
    for region in chosen:
        label = region.class_name or "unclassified"
        target = folder / f"{prefix}_{region.rank:02d}_{_slug(label)}.png"
        l0_xy, size_wh = _crop_window(region.polygon.bounds, max_size, slide_l0_wh)
        if size_wh[0] <= 0 or size_wh[1] <= 0:
            raise ExportError(target, f"region {region.name!r} lies outside the slide")
        try:
            pixels = np.asarray(read_region(l0_xy, 0, size_wh))
        except HistattnError:
            raise
        except Exception as exc:
            raise ExportError(
                target, f"reading the region failed ({type(exc).__name__}: {exc})"
            ) from exc
        expected = (size_wh[1], size_wh[0])
        if (
            pixels.dtype != np.uint8
            or pixels.shape[:2] != expected
            or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4)))
        ):
            raise ExportError(
                target,
                f"read_region returned {pixels.dtype} {pixels.shape}; expected uint8 "
                f"{expected} with 3 or 4 channels",
            )
        info = PngInfo()
        info.add_text("histattn:l0_xywh", json.dumps([*l0_xy, *size_wh]))
        info.add_text("histattn:region", str(region.name))
        info.add_text("Software", f"napari-histattn {__version__}")
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", pnginfo=info)
        with atomic_write(target, "wb") as handle:
            handle.write(buffer.getvalue())
        written.append(target)
    return written


# --------------------------------------------------------------------------- napari frames


def _pair(value: Sequence[float], name: str) -> NDArray[np.float64]:
    pair = np.asarray(value, dtype=np.float64).reshape(-1)
    if pair.shape != (2,) or not np.isfinite(pair).all():
        raise ValueError(f"{name} must be two finite numbers (y, x), got {value!r}")
    return pair


def _scale(value: Sequence[float]) -> NDArray[np.float64]:
    pair = _pair(value, "scale_yx")
    if (pair == 0).any():
        raise ValueError(f"scale_yx must be non-zero, got {value!r}")
    return pair


def _vertices(vertices: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(vertices, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"{name} must be an (M, 2) array, got shape {array.shape}")
    return array[:, -2:]  # napari may carry leading (z, t) axes; the last two are (y, x)


def napari_yx_to_l0_polygon(
    vertices_napari_yx: ArrayLike,
    scale_yx: Sequence[float] = (1.0, 1.0),
    translate_yx: Sequence[float] = (0.0, 0.0),
    *,
    mpp_xy: Sequence[float] | None = None,
) -> NDArray[np.float64]:
    """Shapes-layer vertices (napari data coordinates, ``(y, x)``) to level-0 ``(x, y)``.

    Frames involved:

    1. the Shapes layer's *data* coordinates (``layer.data[i]``), ``(y, x)``;
    2. napari *world* coordinates: ``world = data * scale + translate`` with the
       layer's ``scale`` and ``translate``;
    3. level-0 pixels ``(x, y)``: the slide's level-0 image layer has ``scale = mpp``
       and ``translate = 0`` (:mod:`napari_histattn.io.frames`), so
       ``l0 = world / mpp`` (or ``world`` itself when the slide has no mpp and is
       shown in pixels).

    A Shapes layer created with the slide's scale (the usual case for layers we add)
    holds level-0 pixels in its data: pass ``scale_yx = (mpp_y, mpp_x)`` and
    ``mpp_xy``. A layer drawn by hand has ``scale = 1``: its data are already world
    micrometres.

    Parameters
    ----------
    vertices_napari_yx
        ``(M, 2)`` vertices ``(y, x)`` (extra leading axes such as ``z`` are dropped).
    scale_yx, translate_yx
        The Shapes layer's ``scale`` and ``translate`` (last two axes).
    mpp_xy
        The slide's ``(mpp_x, mpp_y)``, or None when the world is in level-0 pixels.

    Returns
    -------
    numpy.ndarray
        ``(M, 2)`` float64 vertices ``(x, y)`` in level-0 pixels, in the same order.
    """
    data_yx = _vertices(vertices_napari_yx, "vertices_napari_yx")
    world_yx = data_yx * _scale(scale_yx) + _pair(translate_yx, "translate_yx")
    l0_yx = world_yx / np.asarray(napari_scale_yx(mpp_xy), dtype=np.float64)
    return np.ascontiguousarray(l0_yx[:, ::-1])


def l0_polygon_to_napari_yx(
    vertices_l0_xy: ArrayLike,
    scale_yx: Sequence[float] = (1.0, 1.0),
    translate_yx: Sequence[float] = (0.0, 0.0),
    *,
    mpp_xy: Sequence[float] | None = None,
) -> NDArray[np.float64]:
    """Level-0 ``(x, y)`` vertices to a Shapes layer's data coordinates ``(y, x)``.

    The inverse of :func:`napari_yx_to_l0_polygon` (same frames and arguments):
    ``data = (l0[:, ::-1] * unit - translate) / scale`` where ``unit`` is the
    slide's mpp ``(y, x)`` or 1. A closed ring (last vertex equal to the first, as in
    GeoJSON) loses its repeated last vertex, since napari polygons are implicitly
    closed.

    Returns
    -------
    numpy.ndarray
        ``(M, 2)`` float64 vertices ``(y, x)`` for ``layer.data``.
    """
    l0_xy = _vertices(vertices_l0_xy, "vertices_l0_xy")
    if len(l0_xy) > 3 and np.array_equal(l0_xy[0], l0_xy[-1]):
        l0_xy = l0_xy[:-1]
    world_yx = l0_xy[:, ::-1] * np.asarray(napari_scale_yx(mpp_xy), dtype=np.float64)
    data_yx = (world_yx - _pair(translate_yx, "translate_yx")) / _scale(scale_yx)
    return np.ascontiguousarray(data_yx)
