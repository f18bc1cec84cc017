"""A result on screen: the layers one classification adds to the viewer, and their visibility.

The classify widget keeps one :class:`Shown` per slide layer; this module builds its
layers from the result (:mod:`napari_histattn._napari.result_layers`), so that the
widget only wires controls to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from napari_histattn._napari import result_layers as rl

__all__ = ["Shown", "add_result_layers", "regions_tuple", "set_overlay_visible"]


@dataclass
class Shown:
    """A result on screen: its slide, its layers and the regions at the slider's threshold."""

    result: Any
    source: rl.SlideSource
    layers: dict[str, Any] = field(default_factory=dict)
    regions: list[Any] = field(default_factory=list)


def regions_tuple(shown: Shown) -> Any:
    """The regions layer's data tuple for ``shown``'s current regions."""
    source = shown.source
    return rl.regions_layer_data(
        shown.regions,
        name=f"{source.name} attended regions",
        mpp_xy=source.mpp_xy,
        size_l0_wh=source.size_l0_wh,
        translate_yx=source.translate_yx,
        slide_path=source.path,
        provenance=shown.result.provenance,
        edge_color=rl.REGION_COLOR,
    )


def add_result_layers(
    viewer: Any, result: Any, source: rl.SlideSource, threshold: float, visible: bool
) -> Shown:
    """Add ``result``'s layers: the heatmap, the regions at ``threshold``, the sampled
    patches (attention sampling) and one layer per further attention level and per
    explanation (hidden at first: they would cover the attention)."""
    shown = Shown(result=result, source=source)
    data, kwargs, _ = rl.heatmap_layer_data(result, source)
    shown.layers["heatmap"] = viewer.add_image(data, **kwargs)
    shown.regions = result.regions_at(float(threshold), result.top_k)
    data, kwargs, _ = regions_tuple(shown)
    shown.layers["regions"] = viewer.add_shapes(data, **kwargs)
    if result.samples is not None:
        data, kwargs, _ = rl.samples_layer_data(
            result.samples, source, name=f"{source.name} sampled patches"
        )
        shown.layers["samples"] = viewer.add_points(data, **kwargs)
    for side in result.side_maps():
        data, kwargs, _ = rl.side_map_layer_data(result, source, side)
        shown.layers[side.key] = viewer.add_image(data, **kwargs, visible=False)
    set_overlay_visible([shown], visible)
    return shown


def set_overlay_visible(shown: list[Shown], visible: bool) -> None:
    """Show the results' attention layers, or hide every result layer; the side maps
    (further attention levels, explanations) are only ever hidden here (a reviewer turns
    them on one at a time)."""
    side = ("explanation:", "attention:")
    for one in shown:
        for key, layer in one.layers.items():
            if not visible or not key.startswith(side):
                layer.visible = bool(visible)
