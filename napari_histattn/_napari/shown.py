"""Results on screen: the layers each classification adds, kept per slide layer and model.

The classify widget keeps a :class:`ShownResults`: every run's layers stay, named by
slide and model, until removed, so two models can be compared on one slide; running
the same model again on the same slide replaces its layers. This module builds the
layers from the result (:mod:`napari_histattn._napari.result_layers`) so that the
widget only wires controls to it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_histattn._napari import result_layers as rl
from napari_histattn._napari.drawings import move_drawings
from napari_histattn._napari.layers import selection_kept, set_visible
from napari_histattn._napari.result_export import model_label
from napari_histattn.inference.review import RegionReview

__all__ = [
    "Shown",
    "ShownResults",
    "add_result_layers",
    "present_result",
    "ground_truth_line",
    "refresh_result_layers",
    "regions_tuple",
    "replace_regions_layer",
    "set_overlay_visible",
    "shown_text",
]


@dataclass
class Shown:
    """A result on screen: its slide, model, layers, the regions at the slider's threshold
    and the reviewer's decisions on them."""

    result: Any
    source: rl.SlideSource
    key: str = ""
    layers: dict[str, Any] = field(default_factory=dict)
    regions: list[Any] = field(default_factory=list)
    review: RegionReview = field(default_factory=RegionReview)
    #: Localisation lines already measured, by outline layer and its geometry
    #: (:func:`ground_truth_line` runs on every slider step and decision).
    truth_lines: dict[Any, str | None] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The model's short name (its checkpoint's stem)."""
        return model_label(self.result)

    def reviewed_regions(self) -> list[Any]:
        """The regions with the reviewer's decisions applied."""
        return self.review.apply(self.regions, model=self.model)


class ShownResults:
    """The results on screen, per slide layer and model key (insertion ordered)."""

    def __init__(self) -> None:
        self._by_layer: dict[Any, dict[str, Shown]] = {}

    def add(self, layer: Any, shown: Shown) -> None:
        """Keep ``shown`` for ``layer``, last (it becomes the layer's latest result)."""
        results = self._by_layer.setdefault(layer, {})
        results.pop(shown.key, None)
        results[shown.key] = shown

    def get(self, layer: Any, key: str | None = None) -> Shown | None:
        """``layer``'s result of model ``key``, else its latest result, else None."""
        results = self._by_layer.get(layer) or {}
        if key is not None and key in results:
            return results[key]
        return next(reversed(results.values())) if results else None

    def of(self, layer: Any) -> list[Shown]:
        """Every result shown on ``layer``, oldest first."""
        return list((self._by_layer.get(layer) or {}).values())

    def pop(self, layer: Any, key: str) -> Shown | None:
        """Forget ``layer``'s result of model ``key`` (its layers are the caller's to remove)."""
        results = self._by_layer.get(layer) or {}
        shown = results.pop(key, None)
        if not results:
            self._by_layer.pop(layer, None)
        return shown

    def drop_layer(self, layer: Any) -> None:
        """Forget a removed slide layer's results, or a removed result layer."""
        self._by_layer.pop(layer, None)
        for shown in self.values():
            for kind, result_layer in list(shown.layers.items()):
                if result_layer is layer:
                    del shown.layers[kind]

    def slides(self) -> list[Any]:
        """The slide layers with results on screen."""
        return list(self._by_layer)

    def values(self) -> list[Shown]:
        """Every result on screen."""
        return [shown for results in self._by_layer.values() for shown in results.values()]

    def __contains__(self, layer: Any) -> bool:
        return bool(self._by_layer.get(layer))


def regions_tuple(shown: Shown) -> Any:
    """The regions layer's data tuple for ``shown``'s current regions and decisions."""
    source = shown.source
    return rl.regions_layer_data(
        shown.reviewed_regions(),
        name=f"{source.name} attended regions ({shown.model})",
        mpp_xy=source.mpp_xy,
        size_l0_wh=source.size_l0_wh,
        translate_yx=source.translate_yx,
        slide_path=source.path,
        provenance=shown.result.provenance,
        edge_color=rl.REGION_COLOR,
    )


def add_result_layers(
    viewer: Any,
    result: Any,
    source: rl.SlideSource,
    threshold: float,
    visible: bool,
    key: str = "",
    display: Any = None,
) -> Shown:
    """Add ``result``'s layers: the heatmap (with its colour bar), the regions at
    ``threshold``, the sampled patches (attention sampling) and one layer per further
    attention level and per explanation (hidden at first: they would cover the attention).
    Heatmaps are drawn with ``display``'s colormap, contrast and opacity
    (:class:`~napari_histattn._napari.display_panel.Display`; default: its defaults)."""
    with selection_kept(viewer):
        return _add_result_layers(viewer, result, source, threshold, visible, key, display)


def _add_result_layers(
    viewer: Any,
    result: Any,
    source: rl.SlideSource,
    threshold: float,
    visible: bool,
    key: str,
    display: Any,
) -> Shown:
    look = _look(display)
    shown = Shown(result=result, source=source, key=key)
    data, kwargs, _ = rl.heatmap_layer_data(result, source, **look)
    heatmap = viewer.add_image(data, **kwargs)
    heatmap.colorbar.visible = True
    shown.layers["heatmap"] = heatmap
    shown.regions = result.regions_at(float(threshold), result.top_k)
    data, kwargs, _ = regions_tuple(shown)
    shown.layers["regions"] = viewer.add_shapes(data, **kwargs)
    if result.samples is not None:
        data, kwargs, _ = rl.samples_layer_data(
            result.samples, source, name=f"{source.name} sampled patches ({shown.model})"
        )
        shown.layers["samples"] = viewer.add_points(data, **kwargs)
    for side in result.side_maps():
        data, kwargs, _ = rl.side_map_layer_data(result, source, side, **look)
        shown.layers[side.key] = viewer.add_image(data, **kwargs, visible=False)
    set_overlay_visible([shown], visible)
    return shown


def present_result(
    viewer: Any,
    results: ShownResults,
    slide_layer: Any,
    result: Any,
    source: rl.SlideSource,
    threshold: float,
    visible: bool,
    key: str = "",
    display: Any = None,
) -> Shown:
    """Show ``result`` of model ``key`` on ``slide_layer`` and keep it in ``results``: an
    earlier result of the same model there is redrawn in place
    (:func:`refresh_result_layers`), or replaced where its layers differ in kind; other
    models' results stay."""
    earlier = results.pop(slide_layer, key)
    shown = None
    if earlier is not None:
        shown = refresh_result_layers(viewer, earlier, result, source, threshold, visible, display)
        for layer in earlier.layers.values() if shown is None else []:
            if layer in viewer.layers:
                viewer.layers.remove(layer)
    if shown is None:
        shown = add_result_layers(viewer, result, source, threshold, visible, key, display)
    results.add(slide_layer, shown)
    return shown


def _look(display: Any) -> dict[str, Any]:
    if display is None:
        return {}
    return {"colormap": display.colormap, "contrast": display.contrast, "opacity": display.opacity}


def refresh_result_layers(
    viewer: Any,
    earlier: Shown,
    result: Any,
    source: rl.SlideSource,
    threshold: float,
    visible: bool,
    display: Any = None,
) -> Shown | None:
    """The same model run again on the same slide: ``earlier``'s layers take ``result`` in
    place and the new :class:`Shown` (decisions cleared: they were on the earlier regions)
    is returned; ``None`` when the layers differ in kind (nothing changed then; remove and
    :func:`add_result_layers` instead).

    In place: removing napari layers costs a garbage collection each and adding them
    builds new canvas nodes (together 0.9 s on the main thread for the sample slide,
    ``benchmarks/main_thread.py``)."""
    look = _look(display)
    tuples = {"heatmap": rl.heatmap_layer_data(result, source, **look)}
    if result.samples is not None:
        name = f"{source.name} sampled patches ({earlier.model})"
        tuples["samples"] = rl.samples_layer_data(result.samples, source, name=name)
    for side in result.side_maps():
        tuples[side.key] = rl.side_map_layer_data(result, source, side, **look)
    layers = earlier.layers
    if set(layers) != {*tuples, "regions"} or any(x not in viewer.layers for x in layers.values()):
        return None
    for kind, (data, kwargs, _) in tuples.items():
        layer = layers[kind]
        if kind == "samples":
            layer.data = data
            layer.features = kwargs["features"]
            layer.size = kwargs["size"]
            layer.border_color = kwargs["border_color"][0]
        else:  # an attention map: its values, place and contrast
            layer.data = data
            layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
            layer.colormap, layer.opacity = kwargs["colormap"], kwargs["opacity"]
            layer.contrast_limits_range = kwargs["contrast_limits"]
            layer.contrast_limits = kwargs["contrast_limits"]
        layer.metadata = dict(kwargs["metadata"])
        layer.name = kwargs["name"]
    shown = Shown(result=result, source=source, key=earlier.key, layers=dict(layers))
    shown.regions = result.regions_at(float(threshold), result.top_k)
    replace_regions_layer(viewer, shown, visible)
    set_overlay_visible([shown], visible)
    return shown


def replace_regions_layer(viewer: Any, shown: Shown, visible: bool) -> None:
    """Redraw ``shown``'s regions layer (new threshold or decisions) in place; shapes a
    reviewer drew into it move to their own annotations layer first
    (:func:`move_drawings`), so that nothing drawn is lost or merged.

    In place, not removed and added again: removing a layer costs napari a garbage
    collection and a scene-graph rebuild (about 0.3 s a slider step on the sample slide,
    ``benchmarks/main_thread.py``)."""
    layer = shown.layers.get("regions")
    if layer is None or layer not in viewer.layers:
        return
    move_drawings(viewer, layer, shown.source)
    data, kwargs, _ = regions_tuple(shown)
    if _same_outlines(layer, data):  # a decision: colours and labels only
        layer.features = kwargs["features"]
        layer.edge_color = kwargs["edge_color"]
        layer.text = kwargs.get("text") or {"string": ""}
        layer.metadata.update(kwargs["metadata"])  # a reclassification's class colour
        set_visible(layer, visible)
        return
    if len(layer.data):
        layer.selected_data = set(range(len(layer.data)))
        layer.remove_selected()
    if data:
        layer.add(
            data,
            shape_type="polygon",
            edge_color=kwargs["edge_color"],
            face_color="transparent",
            edge_width=kwargs["edge_width"],
        )
    layer.features = kwargs["features"]
    layer.feature_defaults = kwargs["feature_defaults"]
    layer.metadata.update(kwargs["metadata"])
    layer.text = kwargs.get("text") or {"string": ""}
    layer.name = kwargs["name"]
    set_visible(layer, visible)


def _same_outlines(layer: Any, data: list[Any]) -> bool:
    """Whether ``layer`` holds exactly the polygons ``data`` (then a redraw need not
    triangulate them again: napari's Shapes.add is most of a redraw's time)."""
    shapes = layer.data
    return (
        len(shapes) == len(data) > 0
        and all(kind == "polygon" for kind in layer.shape_type)
        and all(np.array_equal(a, b) for a, b in zip(shapes, data, strict=True))
    )


def ground_truth_line(viewer: Any, shown: Shown) -> str | None:
    """The attention's localisation AUC (over tissue) against lesion outlines open on the
    slide (a sample's ground truth, an expert's annotations of the positive class), or
    None when no such outline is open."""
    names = shown.result.class_names
    positive = names[1] if len(names) == 2 else shown.result.predicted_class
    lines = []
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", {}) or {}
        features = getattr(layer, "features", None)
        ours = rl.RESULT_KEY in meta and "geojson_path" not in meta  # not a file opened
        if ours or "mpp_xy" not in meta or features is None:
            continue
        if meta.get("slide_path") not in (None, str(shown.source.path)):
            continue
        if "class" not in features or not (features["class"] == positive).any():
            continue
        key = (
            id(layer),
            layer.name,
            len(layer.data),
            float(sum(np.sum(d) for d in layer.data)),
            tuple(layer.translate),
            tuple(layer.scale),
        )
        if key not in shown.truth_lines:
            shown.truth_lines[key] = _truth_line(layer, shown, positive)
        line = shown.truth_lines[key]
        if line:
            lines.append(line)
    return "\n".join(lines) or None


def _truth_line(layer: Any, shown: Shown, positive: str) -> str | None:
    from napari_histattn._napari.shapes_regions import shapes_to_regions
    from napari_histattn.errors import ExportError
    from napari_histattn.inference.localisation import tissue_localisation_auc

    try:
        outlines = shapes_to_regions(list(layer.data), layer.as_layer_data_tuple()[1])
    except ExportError:
        return None
    lesions = [r.polygon for r in outlines if r.class_name == positive]
    auc, cells = tissue_localisation_auc(shown.result, lesions)
    if not cells:
        return None
    return (
        f"vs {layer.name!r} ({len(lesions)} {positive} outline(s)): localisation "
        f"AUC {auc:.2f} over tissue cells"
    )


def shown_text(viewer: Any, shown: Shown, on_slide: list[Shown]) -> str:
    """The result panel of ``shown``: :func:`panel_text` with the reviewer's decisions, a
    comparison with each other model's result on the slide (``on_slide``) and the
    localisation against lesion outlines open on it."""
    from napari_histattn._napari.result_panel import RESULT_WIDTH, panel_text
    from napari_histattn.inference.compare import compare_regions

    text = panel_text(shown.result, shown.reviewed_regions())
    for other in (o for o in on_slide if o is not shown):
        diff = compare_regions(
            shown.result.predicted_class,
            shown.regions,
            other.result.predicted_class,
            other.regions,
        )
        text += "\n" + textwrap.fill(diff.line(shown.model, other.model), RESULT_WIDTH)
    truth = ground_truth_line(viewer, shown)
    if truth:
        text += "\n" + textwrap.fill(truth, RESULT_WIDTH)
    return text


def set_overlay_visible(shown: list[Shown], visible: bool) -> None:
    """Show the results' attention layers, or hide every result layer; the side maps
    (further attention levels, explanations) are only ever hidden here (a reviewer turns
    them on one at a time)."""
    side = ("explanation:", "attention:")
    for one in shown:
        for key, layer in one.layers.items():
            if not visible or not key.startswith(side):
                set_visible(layer, visible)
