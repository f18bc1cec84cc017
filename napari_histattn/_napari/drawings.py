"""A reviewer's own drawings on a slide: the Shapes layers that hold them, and the
drawings as level-0 regions for the export.

A Shapes layer the user adds takes the slide's frame (:func:`adopt_drawing_layer`);
shapes drawn by mistake into a model regions layer move to the slide's annotations
layer (:func:`move_drawings`), never into a model region; :func:`expert_annotations`
collects everything drawn on a slide, each outline once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_histattn._napari import result_layers as rl
from napari_histattn._napari.layers import _units_kwargs
from napari_histattn.inference.review import expert_regions, same_outline

__all__ = [
    "EXPERT_KEY",
    "adopt_drawing_layer",
    "annotations_layer",
    "expert_annotations",
    "move_drawings",
]

#: Metadata key of Shapes layers that hold a reviewer's own drawings on a slide.
EXPERT_KEY = "histattn_annotations"


def _drawn_indices(layer: Any) -> list[int]:
    features = getattr(layer, "features", None)
    if features is None or "source" not in features:
        return []
    return [i for i, source in enumerate(features["source"]) if source == "expert"]


def move_drawings(viewer: Any, layer: Any, source: rl.SlideSource) -> int:
    """Move shapes a reviewer drew into a model regions ``layer`` to the slide's annotations
    layer (created if needed); returns how many moved."""
    drawn = _drawn_indices(layer)
    if not drawn:
        return 0
    shapes = [np.asarray(layer.data[i]) for i in drawn]
    kinds = [layer.shape_type[i] for i in drawn]
    # Same world, own translates: data + translate is the world position in each.
    target = annotations_layer(viewer, source)
    offset = np.asarray(layer.translate, dtype=float)[-2:] - np.asarray(target.translate)[-2:]
    target.add([s + offset for s in shapes], shape_type=kinds)
    layer.selected_data = set(drawn)
    layer.remove_selected()
    return len(drawn)


def annotations_layer(viewer: Any, source: rl.SlideSource) -> Any:
    """The slide's reviewer annotations layer, added (empty, in the slide's frame) if none."""
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", {}) or {}
        if meta.get(EXPERT_KEY) and meta.get("slide_path") == str(source.path):
            return layer
    layer = viewer.add_shapes(
        name=f"{source.name} my annotations",
        edge_color="magenta",  # unlike the ground truth's yellow and cyan, the regions' green
        face_color="transparent",
        edge_width=rl._edge_width(source.mpp_xy, source.size_l0_wh),
        **_units_kwargs(source.mpp_xy is not None),
    )
    adopt_drawing_layer(layer, source)
    return layer


def adopt_drawing_layer(
    layer: Any, source: rl.SlideSource, default_class: str | None = None
) -> bool:
    """Put a Shapes layer the user added (napari's "New shapes layer") in ``source``'s frame,
    so that what is drawn in it exports in level-0 pixels, each new shape of class
    ``default_class`` (the chosen model's positive class: what a reviewer outlines is
    most often a lesion; the layer's features table changes it). A layer that records a
    frame already (ours, a re-opened GeoJSON) is left alone; returns whether it was
    adopted."""
    meta = layer.metadata
    if rl.RESULT_KEY in meta or "mpp_xy" in meta:
        return False
    if default_class is not None and not len(layer.data):
        import pandas as pd

        layer.features = pd.DataFrame({"class": pd.Series([], dtype=object)})
        layer.feature_defaults = {"class": default_class}
    meta.update(
        {
            EXPERT_KEY: True,
            "mpp_xy": source.mpp_xy,
            "slide_translate_yx": tuple(source.translate_yx),
            "slide_path": str(source.path),
        }
    )
    units = _units_kwargs(source.mpp_xy is not None).get("units")
    if units is not None:  # the slide's units: mixed units make napari ignore them all
        layer.units = units
    return True


def expert_annotations(viewer: Any, source: rl.SlideSource, author: str | None) -> list[Any]:
    """The reviewer's own annotations on ``source``'s slide, in level-0 pixels: every shape
    of its annotations layers, and any still drawn into a model regions layer (or open in
    a re-opened review), each outline once."""
    from napari_histattn._napari.shapes_regions import shapes_to_regions
    from napari_histattn.errors import ExportError

    regions: list[Any] = []
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", {}) or {}
        if meta.get("slide_path") != str(source.path) or not len(getattr(layer, "data", [])):
            continue
        if meta.get(EXPERT_KEY):
            picked = list(range(len(layer.data)))
        elif meta.get(rl.RESULT_KEY) == "regions":
            picked = _drawn_indices(layer)
        else:
            continue
        if not picked:
            continue
        attributes = layer.as_layer_data_tuple()[1]
        features = getattr(layer, "features", None)
        columns = {
            c: list(features[c])
            for c in ("name", "class", "author")
            if features is not None and c in features
        }
        given = columns.pop("name", [""] * len(layer.data))  # a loaded annotation's
        attributes["features"] = {
            "name": [_name_or(given[i], f"{layer.name} {i + 1}") for i in picked],
            **{c: [str(values[i]) for i in picked] for c, values in columns.items()},
        }
        attributes["shape_type"] = [layer.shape_type[i] for i in picked]
        attributes["edge_color"] = np.asarray(layer.edge_color)[picked]
        attributes["metadata"] = {**meta, "class_colours": {}}
        try:
            found = shapes_to_regions([layer.data[i] for i in picked], attributes)
        except ExportError:
            continue  # lines and paths only: nothing with an area
        regions += [r for r in found if not any(same_outline(r, o) for o in regions)]
    return expert_regions(regions, author=author)


def _name_or(value: Any, fallback: str) -> str:
    return value if isinstance(value, str) and value and value.lower() != "nan" else fallback
