"""GeoJSON writer and reader contributions for Shapes layers (npe2 commands).

* :func:`write_shapes_geojson` (File > Save Selected Layer(s)... as ``.geojson``)
  writes a Shapes layer as QuPath-style GeoJSON in level-0 pixels ``(x, y)``:
  vertices are taken out of napari's frame with the layer's scale and
  translate and the slide's mpp recorded in its metadata
  (:func:`napari_histattn._napari.result_layers.shapes_to_regions`), and the
  file is written atomically by :func:`napari_histattn.io.export.write_geojson`.
* :func:`napari_get_geojson_reader` opens such a file (or QuPath's own export)
  back as a Shapes layer: in micrometres when the file records the slide's mpp
  (our exports write ``properties.mpp_xy`` on the FeatureCollection), else in
  level-0 pixels, so that it lies on the slide opened by our reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_histattn._napari.layers import LayerDataTuple
from napari_histattn._napari.result_layers import regions_layer_data, shapes_to_regions
from napari_histattn.io.export import read_geojson_document, write_geojson

GEOJSON_SUFFIXES = (".geojson",)


def write_shapes_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Shapes layer as GeoJSON (npe2 single-layer writer).

    Parameters
    ----------
    path
        Target file (``.geojson`` is appended when missing).
    data
        The layer's shapes: ``(M, 2)`` vertices ``(y, x)`` in data coordinates.
    attributes
        The layer's attributes (``scale``, ``translate``, ``shape_type``,
        ``features``, ``edge_color``, ``metadata`` with ``mpp_xy``).

    Returns
    -------
    list of str
        The file written.

    Raises
    ------
    ExportError
        The layer does not record the slide's mpp, has no area to export, or the
        file cannot be written (nothing partial is left; an earlier file is kept).
    """
    target = Path(path)
    if target.suffix.lower() not in GEOJSON_SUFFIXES:
        target = target.with_name(target.name + ".geojson")
    regions = shapes_to_regions(list(data), attributes, path=target)
    metadata = attributes.get("metadata") or {}
    mpp = metadata.get("mpp_xy")
    provenance = {
        **dict(metadata.get("provenance") or {}),
        "layer": attributes.get("name"),
        "slide_path": metadata.get("slide_path")
        or (metadata.get("provenance") or {}).get("slide_path"),
    }
    write_geojson(
        target,
        regions,
        provenance=provenance,
        mpp_xy=None if mpp is None else (float(mpp[0]), float(mpp[1])),
    )
    return [str(target)]


def _mpp_of(properties: dict[str, Any]) -> tuple[float, float] | None:
    candidates = [properties.get("mpp_xy")]
    provenance = properties.get("provenance")
    if isinstance(provenance, dict):
        candidates.append(provenance.get("slide_mpp_xy"))
    for value in candidates:
        try:
            mx, my = (float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            continue
        if mx > 0 and my > 0:
            return mx, my
    return None


def read_geojson_shapes(path: str | os.PathLike[str]) -> list[LayerDataTuple]:
    """Open a GeoJSON file of regions as one Shapes layer.

    Returns
    -------
    list of tuple
        ``[(polygons, kwargs, "shapes")]`` in micrometres when the file records
        the mpp, else level-0 pixels; features as written by the classify widget
        (name, rank, class, attention, measurements).

    Raises
    ------
    AnnotationError
        The file is not GeoJSON with valid polygons.
    """
    source_path = Path(path)
    regions, properties = read_geojson_document(source_path)
    mpp_xy = _mpp_of(properties)
    provenance = properties.get("provenance") if isinstance(properties, dict) else None
    provenance = provenance if isinstance(provenance, dict) else {}
    size = provenance.get("slide_size_l0_wh")
    if not (isinstance(size, list) and len(size) == 2):
        bounds = [r.polygon.bounds for r in regions] or [(0.0, 0.0, 1.0, 1.0)]
        size = [max(b[2] for b in bounds), max(b[3] for b in bounds)]
    slide_path = provenance.get("slide_path")
    data, kwargs, kind = regions_layer_data(
        regions,
        name=source_path.stem,
        mpp_xy=mpp_xy,
        size_l0_wh=(int(size[0]), int(size[1])),
        slide_path=None if slide_path is None else str(slide_path),
        provenance=provenance,
    )
    kwargs["metadata"]["geojson_path"] = str(source_path)
    return [(data, kwargs, kind)]


def napari_get_geojson_reader(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> Callable[[Any], list[LayerDataTuple]] | None:
    """Return a reader for ``*.geojson`` files, or None for anything else (never raises).

    The returned function raises :class:`~napari_histattn.errors.AnnotationError`
    (naming the file and the cause) when a file is not valid GeoJSON.
    """
    paths = list(path) if isinstance(path, list | tuple) else [path]
    try:
        ok = bool(paths) and all(
            isinstance(p, str | os.PathLike)
            and str(p).lower().endswith(GEOJSON_SUFFIXES)
            and Path(p).is_file()
            for p in paths
        )
    except OSError:
        return None
    if not ok:
        return None

    def read(path: Any) -> list[LayerDataTuple]:
        requested = list(path) if isinstance(path, list | tuple) else [path]
        layers: list[LayerDataTuple] = []
        for p in requested:
            layers += read_geojson_shapes(p)
        return layers

    return read


__all__ = [
    "napari_get_geojson_reader",
    "read_geojson_shapes",
    "write_shapes_geojson",
]
