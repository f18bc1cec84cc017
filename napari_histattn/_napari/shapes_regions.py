"""A Shapes layer's polygons back to level-0 :class:`~napari_histattn.io.regions.Region` objects.

The inverse of :func:`napari_histattn._napari.result_layers.regions_layer_data`:
vertices in napari's world ``(y, x)`` go back to level-0 pixels through the
``mpp_xy`` and ``slide_translate_yx`` that the layer's metadata records; names,
classes, ranks, colours and numeric feature columns come back from the layer's
features. Qt- and napari-free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, Polygon

from napari_histattn.errors import ExportError
from napari_histattn.io.export import (
    napari_yx_to_l0_polygon,
)
from napari_histattn.io.regions import Region, make_valid_polygonal

__all__ = ["shapes_to_regions"]


def _colour_rgb(value: Any) -> tuple[int, int, int] | None:
    rgba = np.asarray(value, dtype=float).reshape(-1)
    if rgba.size < 3 or not np.isfinite(rgba[:3]).all():
        return None
    return (
        int(round(rgba[0] * 255)),
        int(round(rgba[1] * 255)),
        int(round(rgba[2] * 255)),
    )


def _column(features: Any, name: str) -> list[Any] | None:
    if features is None:
        return None
    try:
        if name not in features:
            return None
        return list(features[name])
    except TypeError:
        return None


def _feature_names(features: Any) -> list[str]:
    if features is None:
        return []
    return [str(c) for c in (features.columns if hasattr(features, "columns") else features)]


def _shape_polygon(vertices_l0_xy: NDArray[np.float64], shape_type: str) -> Polygon | None:
    if shape_type in ("line", "path") or len(vertices_l0_xy) < 3:
        return None  # not areas
    if shape_type == "ellipse":
        # napari stores an ellipse as the four corners of its bounding box.
        centre = vertices_l0_xy.mean(axis=0)
        half_x = (vertices_l0_xy[:, 0].max() - vertices_l0_xy[:, 0].min()) / 2.0
        half_y = (vertices_l0_xy[:, 1].max() - vertices_l0_xy[:, 1].min()) / 2.0
        angles = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
        vertices_l0_xy = np.stack(
            [centre[0] + half_x * np.cos(angles), centre[1] + half_y * np.sin(angles)], axis=1
        )
    return Polygon(vertices_l0_xy)


def shapes_to_regions(
    data: Sequence[Any],
    attributes: Mapping[str, Any],
    *,
    path: str | os.PathLike[str] = "<layer>",
) -> list[Region]:
    """A Shapes layer (its data and ``as_layer_data_tuple`` attributes) as level-0 regions.

    Vertices go from the layer's data ``(y, x)`` through its ``scale`` and
    ``translate`` to world, less the slide layer's translate, divided by the
    slide's mpp (both from the layer's metadata) into level-0 ``(x, y)``, rounded
    to 1e-6 px. Shapes that share a ``name`` feature become one region (the parts
    of a MultiPolygon); others one region each. Class from the ``class`` feature,
    rank from ``rank`` (else the order), colour the class's from the metadata's
    ``class_colours`` (else the outline's), numeric
    features as measurements. Lines and paths are skipped; ellipses become
    64-gons.

    Raises
    ------
    ExportError
        The layer's metadata does not say how its world relates to the slide
        (no ``mpp_xy`` entry), or no shape is an area.
    """
    metadata = attributes.get("metadata") or {}
    if "mpp_xy" not in metadata:
        raise ExportError(
            path,
            "the Shapes layer does not record the slide's scale (metadata 'mpp_xy'), so its "
            "coordinates cannot be converted to level-0 pixels; draw into the regions layer "
            "that Classify made, or set layer.metadata['mpp_xy'] to the slide's (mpp_x, "
            "mpp_y) (None when the slide is shown in pixels)",
        )
    mpp = metadata.get("mpp_xy")
    mpp_xy = None if mpp is None else (float(mpp[0]), float(mpp[1]))
    slide_t = np.asarray(metadata.get("slide_translate_yx") or (0.0, 0.0), dtype=float)
    scale = np.asarray(attributes.get("scale", (1.0, 1.0)), dtype=float)[-2:]
    translate = np.asarray(attributes.get("translate", (0.0, 0.0)), dtype=float)[-2:] - slide_t
    shape_types = attributes.get("shape_type") or ["polygon"] * len(data)
    if isinstance(shape_types, str):
        shape_types = [shape_types] * len(data)
    features = attributes.get("features")
    names = _column(features, "name")
    classes = _column(features, "class")
    ranks = _column(features, "rank")
    texts = {c: _column(features, c) for c in _TEXT_COLUMNS}
    colours = np.asarray(attributes.get("edge_color", np.ones((len(data), 4))), dtype=float)
    class_colours = metadata.get("class_colours") or {}
    numeric = []
    for column in _feature_names(features):
        if column in ("label", "name", "class", "rank", *_TEXT_COLUMNS):
            continue
        values = _column(features, column) or []
        if values and all(isinstance(v, int | float | np.number) for v in values):
            numeric.append((column, values))

    groups: dict[str, list[int]] = {}
    polygons: dict[int, Polygon] = {}
    for index, (vertices, shape_type) in enumerate(zip(data, shape_types, strict=False)):
        l0_xy = napari_yx_to_l0_polygon(vertices, scale, translate, mpp_xy=mpp_xy)
        polygon = _shape_polygon(np.round(l0_xy, 6), str(shape_type))
        if polygon is None:
            continue
        polygons[index] = polygon
        # A shape drawn into a regions layer has no name: it is one region of its own.
        key = str(names[index]) if names is not None and str(names[index]) else f"shape {index}"
        groups.setdefault(key, []).append(index)
    if not polygons:
        raise ExportError(path, "the Shapes layer has no polygon, rectangle or ellipse to export")

    regions: list[Region] = []
    for order, (key, members) in enumerate(groups.items(), start=1):
        first = members[0]
        parts = [polygons[i] for i in members]
        geometry = make_valid_polygonal(parts[0] if len(parts) == 1 else MultiPolygon(parts))
        if geometry is None:
            continue
        rank = int(ranks[first]) if ranks is not None and _finite(ranks[first]) else order
        measurements = {
            column: float(values[first]) for column, values in numeric if _finite(values[first])
        }
        measurements["rank"] = float(rank)
        class_name = str(classes[first]) if classes is not None else None
        known = class_colours.get(class_name) if class_name is not None else None
        colour = (
            (int(known[0]), int(known[1]), int(known[2]))
            if known is not None
            else (_colour_rgb(colours[first]) if first < len(colours) else None)
        )
        metadata = {
            column: str(values[first])
            for column, values in texts.items()
            if values is not None and _text(values[first])
        }
        named = names is not None and bool(str(names[first]))
        drawn = metadata.get("source") == "expert"
        regions.append(
            Region(
                polygon=geometry,
                class_name=None if class_name in (None, "unclassified") else class_name,
                color_rgb=colour,
                rank=rank,
                measurements=measurements,
                name=key if named else (f"Annotation {order}" if drawn else None),
                metadata=metadata,
            )
        )
    return regions


#: Text features that travel as the region's metadata (who made it, the review).
_TEXT_COLUMNS = ("source", "review", "author", "model", "model_class")


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and value.lower() != "nan"


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
