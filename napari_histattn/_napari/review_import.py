"""A saved review back on screen: the decisions into the review panel, the expert's own
annotations into the slide's annotations layer.

Thin over :class:`~napari_histattn._napari.result_export.SavedReview` (GUI-free reading
and the slide check); this module only places shapes in napari. Annotations already open
on the slide (the same outline, loaded twice or re-opened as a layer) are not added again,
so that a second load or a re-export never doubles them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from shapely.geometry import MultiPolygon

from napari_histattn._napari import result_layers as rl
from napari_histattn._napari.drawings import annotations_layer, expert_annotations
from napari_histattn._napari.result_export import SavedReview
from napari_histattn._napari.shown import Shown
from napari_histattn.errors import HistattnError
from napari_histattn.inference.review import same_outline
from napari_histattn.io.export import l0_polygon_to_napari_yx
from napari_histattn.io.regions import Region

__all__ = ["Restored", "add_annotations", "restore_saved_review"]


@dataclass(frozen=True)
class Restored:
    """What a load put back, for the status line."""

    decisions: int
    other_models: int
    annotations: int
    already_open: int

    def text(self, saved: SavedReview) -> str:
        parts = [
            f"restored {self.decisions} decision(s) and {self.annotations} annotation(s) "
            f"from {saved.path}"
        ]
        if self.already_open:
            parts.append(f"{self.already_open} annotation(s) were open already")
        if self.other_models:
            parts.append(f"{self.other_models} region(s) of another model left out")
        return "; ".join(parts)


def _parts(region: Region) -> list[Any]:
    geometry = region.polygon
    return list(geometry.geoms) if isinstance(geometry, MultiPolygon) else [geometry]


def add_annotations(
    viewer: Any,
    source: rl.SlideSource,
    regions: Sequence[Region],
    default_class: str | None = None,
) -> int:
    """Add level-0 ``regions`` to ``source``'s annotations layer (created if needed), each
    with its name, class and author in the layer's features (the parts of a multi-part
    region share a name, so they export as one); returns how many shapes were added.
    Holes are not drawn (napari shapes have none); the outline is. What the layer gives a
    shape drawn later stays as it was: its class (``default_class`` when the layer had
    none, else "unclassified"), no name, no author (the reviewer's)."""
    if not regions:
        return 0
    layer = annotations_layer(viewer, source)
    meta = layer.metadata
    slide_t = np.asarray(meta.get("slide_translate_yx") or (0.0, 0.0), dtype=float)
    translate = np.asarray(layer.translate, dtype=float)[-2:] - slide_t
    scale = np.asarray(layer.scale, dtype=float)[-2:]
    old = layer.features.copy()
    taken = {str(v) for v in old["name"]} if "name" in old else set()
    shapes, columns = [], {"name": [], "class": [], "author": []}  # type: ignore[var-annotated]
    for region in regions:
        base = region.name or f"Annotation {region.rank}"
        name, k = base, 2
        while name in taken:  # another file's "Annotation 1" is another annotation
            name, k = f"{base} ({k})", k + 1
        taken.add(name)
        for part in _parts(region):
            coords = np.asarray(part.exterior.coords, dtype=float)
            shapes.append(
                l0_polygon_to_napari_yx(
                    coords, tuple(scale), tuple(translate), mpp_xy=source.mpp_xy
                )
            )
            columns["name"].append(name)
            columns["class"].append(region.class_name or "unclassified")
            columns["author"].append(region.metadata.get("author", ""))
    defaults = layer.feature_defaults
    drawn_class = defaults["class"].iloc[0] if "class" in defaults and len(defaults) else None
    layer.add(shapes, shape_type="polygon")
    features = layer.features.copy()
    for column, values in columns.items():
        kept = list(old[column]) if column in old else [""] * len(old)
        features[column] = pd.Series(kept + values, dtype=object).to_numpy()
    layer.features = features  # napari takes the first row as the defaults: undone below
    layer.feature_defaults = {
        **{column: "" for column in features.columns},
        "class": drawn_class
        if isinstance(drawn_class, str) and drawn_class
        else (default_class or "unclassified"),
    }
    return len(shapes)


def restore_saved_review(viewer: Any, shown: Shown, saved: SavedReview) -> Restored:
    """Put ``saved`` back on ``shown``'s slide: its decisions on ``shown``'s model's
    regions into ``shown.review``, its expert annotations (those not open already) into
    the slide's annotations layer. The caller redraws the regions layer and the panel.

    Raises
    ------
    HistattnError
        ``saved`` is the review of another slide (nothing is changed).
    """
    misfit = saved.misfit(shown.result)
    if misfit is not None:
        raise HistattnError(f"{saved.path.name} was not loaded: {misfit}")
    open_now = expert_annotations(viewer, shown.source, None)
    new = [r for r in saved.expert if not any(same_outline(r, o) for o in open_now)]
    decisions, other_models = saved.restore_into(shown.review, shown.model)
    names = shown.result.class_names
    add_annotations(viewer, shown.source, new, names[1] if len(names) == 2 else None)
    return Restored(decisions, other_models, len(new), len(saved.expert) - len(new))
