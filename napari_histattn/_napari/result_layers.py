"""A classification result as napari layers, and Shapes layers as regions (and back).

Everything here builds or reads ``(data, kwargs, layer_type)`` tuples and plain
arrays; nothing imports Qt or napari, so the classify widget, the GeoJSON
writer/reader contributions and ``histattn demo`` share one definition of how a
result looks in napari, and tests can check it without a viewer.

Frames. The slide layer shows level 0 with ``scale = mpp`` (or 1 without mpp)
and a ``translate`` (0 unless the user moved it). Result layers are placed in
the same world: the heatmap through
:func:`~napari_histattn.inference.outputs.heatmap_napari_geometry` (each heatmap
pixel on the centre of its patch) plus the slide layer's translate; regions and
sampled locations as world coordinates (``scale = 1``) with the slide layer's
translate. Region Shapes layers record ``mpp_xy``, ``slide_translate_yx`` and
the slide path in their metadata so that :func:`shapes_to_regions` can return to
level-0 pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, Polygon

from napari_histattn._napari.layers import LayerDataTuple, _units_kwargs
from napari_histattn._napari.result_export import model_label
from napari_histattn._napari.shapes_regions import shapes_to_regions
from napari_histattn.errors import HistattnError
from napari_histattn.inference import heatmap_scale
from napari_histattn.inference.outputs import ATTENTION_OPACITY
from napari_histattn.io.export import l0_polygon_to_napari_yx
from napari_histattn.io.regions import Region

if TYPE_CHECKING:
    from napari_histattn.inference.result import ClassificationResult, SampledLocations, SideMap
    from napari_histattn.io.slide import Slide

__all__ = [
    "HEATMAP_COLORMAP",
    "HEATMAP_OPACITY",
    "REGION_COLOR",
    "SlideSource",
    "heatmap_layer_data",
    "region_lines",
    "regions_layer_data",
    "samples_layer_data",
    "shapes_to_regions",
    "slide_source",
]

HEATMAP_COLORMAP = "attention (inferno, fading)"
#: Layer opacity of the heatmap (the same as the CLI's ``heatmap.png``).
HEATMAP_OPACITY = ATTENTION_OPACITY
#: Outline colour of attended regions on screen: bright green, unlike the ground
#: truth's yellow (lesion) and cyan (look-alike), the heatmap's reds and yellows
#: and the sampled patches' white. Exports keep each region's class colour.
REGION_COLOR = (0.2, 1.0, 0.2, 1.0)
#: Outlines of regions a reviewer accepted (blue) and rejected (grey), in place of
#: :data:`REGION_COLOR`.
REVIEW_COLORS = {"accepted": (0.3, 0.65, 1.0, 1.0), "rejected": (0.6, 0.6, 0.6, 1.0)}
#: Outline colour of sampled patches: white stands out on H&E and on magma, and
#: differs from the ground truth's yellow (lesion) and cyan (look-alike).
SAMPLE_COLOR = (1.0, 1.0, 1.0, 1.0)
#: Metadata key that marks layers made from a classification result.
RESULT_KEY = "histattn_result"


@dataclass(frozen=True)
class SlideSource:
    """The slide behind an image layer, and where that layer sits in the world.

    Attributes
    ----------
    slide
        The open slide (kept open by the layer).
    name
        The layer's name.
    mpp_xy
        Level-0 micrometres per pixel, or None when the layer is in pixels.
    translate_yx
        The layer's translate (last two axes), in world units.
    """

    slide: Slide
    name: str
    mpp_xy: tuple[float, float] | None
    translate_yx: tuple[float, float]

    @property
    def size_l0_wh(self) -> tuple[int, int]:
        w, h = self.slide.level_dimensions[0]
        return int(w), int(h)

    @property
    def path(self) -> Path:
        return Path(self.slide.path)


def slide_source(layer: Any) -> SlideSource:
    """The slide of a napari image layer opened by napari-histattn.

    Parameters
    ----------
    layer
        A napari layer (anything with ``name``, ``metadata``, ``translate``).

    Raises
    ------
    HistattnError
        The layer carries no slide of ours (a plain image layer), with a message
        saying how to open the slide so that it can be classified.
    """
    from napari_histattn.io.slide import Slide

    name = str(getattr(layer, "name", "?"))
    metadata = getattr(layer, "metadata", None) or {}
    slide = metadata.get("slide") if isinstance(metadata, Mapping) else None
    if not isinstance(slide, Slide):
        raise HistattnError(
            f"layer {name!r} is not a slide opened by napari-histattn, so its level-0 "
            "pixels and mpp are unknown: open the file with File > Open... and the "
            "napari-histattn reader, or File > Open Sample > HistAttn"
        )
    mpp = slide.mpp_xy
    translate = np.asarray(getattr(layer, "translate", (0.0, 0.0)), dtype=float)[-2:]
    return SlideSource(
        slide=slide,
        name=name,
        mpp_xy=None if mpp is None else (float(mpp[0]), float(mpp[1])),
        translate_yx=(float(translate[0]), float(translate[1])),
    )


def heatmap_colormap(colormap: str = heatmap_scale.DEFAULT_COLORMAP, n: int = 64) -> dict[str, Any]:
    """A heatmap ramp of :data:`~napari_histattn.inference.heatmap_scale.COLORMAPS` (its
    transparent low end included) as napari takes it; ``inferno`` is ``heatmap.png``'s.

    Returns
    -------
    dict
        ``{"name", "colors", "controls"}``, which napari turns into a Colormap.
    """
    controls = np.linspace(0.0, 1.0, n)
    return {
        "name": f"attention ({colormap}, fading)",
        "colors": heatmap_scale.ramp(controls, colormap),
        "controls": controls,
    }


def side_map_layer_data(
    result: ClassificationResult, source: SlideSource, side: SideMap, **look: Any
) -> LayerDataTuple:
    """One of ``result``'s side maps (a further attention level or a post-hoc explanation)
    as an Image layer placed and drawn as the attention is (its own raw values and
    contrast), named ``"<slide> <title> (<model>)"``; ``look`` as :func:`heatmap_layer_data`
    takes it."""
    from dataclasses import replace

    shown = replace(result, attention=np.asarray(side.values, dtype=np.float32))
    data, kwargs, kind = heatmap_layer_data(shown, source, **look)
    kwargs["name"] = f"{source.name} {side.title} ({model_label(result)})"
    kwargs["metadata"] = {**kwargs["metadata"], RESULT_KEY: side.key}
    return (data, kwargs, kind)


def heatmap_layer_data(
    result: ClassificationResult,
    source: SlideSource,
    *,
    colormap: str = heatmap_scale.DEFAULT_COLORMAP,
    contrast: str = heatmap_scale.DEFAULT_CONTRAST,
    opacity: float = HEATMAP_OPACITY,
) -> LayerDataTuple:
    """The attention map as an Image layer aligned with the slide layer.

    Values are the raw attention, one pixel per attention cell (so the colour bar and
    the layer's value read raw units), with contrast limits by ``contrast`` (default its
    full range, :func:`~napari_histattn.inference.heatmap_scale.contrast_limits`), drawn
    with linear interpolation in :func:`heatmap_colormap` (transparent near the low end)
    at ``opacity``; NaN outside tissue, which napari draws transparent. Each pixel sits on
    the centre of its patch (:func:`~napari_histattn.inference.outputs.heatmap_napari_geometry`),
    shifted by the slide layer's translate.

    Returns
    -------
    tuple
        ``(attention, kwargs, "image")``, named ``"<slide> attention (<model>)"``.
    """
    from napari_histattn.inference.outputs import heatmap_napari_geometry

    scale_yx, translate_yx = heatmap_napari_geometry(result, source.mpp_xy)
    data = np.asarray(result.attention, dtype=np.float32)
    kwargs: dict[str, Any] = {
        "name": f"{source.name} attention ({model_label(result)})",
        "scale": scale_yx,
        "translate": (
            translate_yx[0] + source.translate_yx[0],
            translate_yx[1] + source.translate_yx[1],
        ),
        "colormap": heatmap_colormap(colormap),
        "contrast_limits": heatmap_scale.contrast_limits(data, contrast),
        "opacity": float(opacity),
        "blending": "translucent",
        "interpolation2d": "linear",
        "metadata": {
            RESULT_KEY: "heatmap",
            "contrast": contrast,
            "predicted_class": result.predicted_class,
            "provenance": dict(result.provenance),
        },
        **_units_kwargs(source.mpp_xy is not None),
    }
    return (data, kwargs, "image")


def _exteriors(polygon: Polygon | MultiPolygon) -> list[Polygon]:
    # napari polygons have no holes and one ring each: one shape per part.
    parts = list(polygon.geoms) if isinstance(polygon, MultiPolygon) else [polygon]
    return [p for p in parts if not p.is_empty]


def _edge_width(mpp_xy: tuple[float, float] | None, size_l0_wh: tuple[int, int]) -> float:
    unit = mpp_xy[0] if mpp_xy is not None else 1.0
    # About 1.5 screen pixels when the whole slide fills the canvas, where the
    # layer first appears (napari's edge width is in world units).
    return max(max(size_l0_wh) * unit / 350.0, 1e-6)


def regions_layer_data(
    regions: Sequence[Region],
    *,
    name: str,
    mpp_xy: tuple[float, float] | None,
    size_l0_wh: tuple[int, int],
    translate_yx: tuple[float, float] = (0.0, 0.0),
    slide_path: str | os.PathLike[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    edge_color: tuple[float, float, float, float] | None = None,
) -> LayerDataTuple:
    """Regions in level-0 pixels as a Shapes layer over the slide layer.

    One polygon per exterior ring (napari shapes have no holes); the parts of a
    region share its features: ``name``, ``rank``, ``class``, ``attention``
    (the region's maximum on the heatmap's 0-1 scale, else its maximum raw
    attention) and every other measurement. Outlines (no fill) labelled below
    the outline with ``#rank`` and, when the region has its own class
    probabilities (``prob_<class>``), its class.
    Each region's class colour is kept in ``metadata["class_colours"]`` for the
    GeoJSON writer whatever colour the outline is drawn in.

    Parameters
    ----------
    regions
        Regions in level-0 pixels.
    name
        Layer name.
    mpp_xy
        The slide's mpp, or None when the slide layer is in pixels.
    size_l0_wh
        The slide's level-0 size (outline width is 1/350 of it).
    translate_yx
        The slide layer's translate.
    slide_path, provenance
        Recorded in the layer's metadata (and written by the GeoJSON writer).
    edge_color
        One RGBA outline colour for every region (the classify widget uses
        :data:`REGION_COLOR`), except reviewed ones (:data:`REVIEW_COLORS`); ``None``
        draws each in its class colour.

    Returns
    -------
    tuple
        ``(polygons, kwargs, "shapes")``; polygons are ``(M, 2)`` world ``(y, x)``
        arrays relative to the slide layer's translate, which is the layer's own.
    """
    polygons: list[NDArray[np.float64]] = []
    rows: list[dict[str, Any]] = []
    colours: list[tuple[float, ...]] = []
    class_colours: dict[str, tuple[int, int, int]] = {}
    measurement_names: list[str] = []
    for region in regions:
        for key in region.measurements:
            if key not in measurement_names and key != "rank":
                measurement_names.append(key)
    for region in regions:
        for part in _exteriors(region.polygon):
            polygons.append(
                l0_polygon_to_napari_yx(np.asarray(part.exterior.coords), mpp_xy=mpp_xy)
            )
            row: dict[str, Any] = {
                "label": _region_label(region),
                "name": str(region.name),
                "rank": int(region.rank),
                "class": region.class_name or "unclassified",
                "attention": float(
                    region.measurements.get(
                        "attention_norm_max", region.measurements.get("attention_max", math.nan)
                    )
                ),
                "source": region.metadata.get("source", ""),
                "review": region.metadata.get("review", ""),
                "author": region.metadata.get("author", ""),
                "model_class": region.metadata.get("model_class", ""),
            }
            row.update({k: float(region.measurements.get(k, math.nan)) for k in measurement_names})
            rows.append(row)
            review = REVIEW_COLORS.get(region.metadata.get("review", ""))
            colours.append(
                (review or tuple(edge_color))
                if edge_color
                else (*(c / 255.0 for c in region.colour), 1.0)
            )
            if region.class_name is not None:
                red, green, blue = region.colour[:3]
                class_colours[region.class_name] = (int(red), int(green), int(blue))
    columns = ["label", "name", "rank", "class", "attention"]
    columns += ["source", "review", "author", "model_class", *measurement_names]
    features = {c: np.asarray([r[c] for r in rows]) for c in columns}
    # A shape drawn into this layer is the reviewer's, never part of a model region.
    defaults: dict[str, Any] = {c: math.nan for c in columns}
    defaults.update(label="", name="", rank=0, source="expert", review="", author="")
    defaults["model_class"] = ""
    defaults["class"] = "unclassified"
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "polygon",
        "translate": tuple(translate_yx),
        "features": features,
        "feature_defaults": defaults,
        "edge_color": np.asarray(colours, dtype=float).reshape(-1, 4) if rows else "white",
        "face_color": "transparent",
        "edge_width": _edge_width(mpp_xy, size_l0_wh),
        "metadata": {
            RESULT_KEY: "regions",
            "mpp_xy": mpp_xy,
            "slide_translate_yx": tuple(translate_yx),
            "class_colours": class_colours,
            "slide_path": None if slide_path is None else str(slide_path),
            "provenance": dict(provenance or {}),
        },
        **_units_kwargs(mpp_xy is not None),
    }
    if rows:
        kwargs["text"] = {
            "string": "{label}",
            "size": 12,
            # Below the outline: the ground truth's labels sit above theirs.
            "anchor": "lower_left",
            "color": {"array": kwargs["edge_color"], "default": "white"},
        }
    return (polygons, kwargs, "shapes")


def _region_label(region: Region) -> str:
    """``#rank``: a short marker on the canvas, so that neighbouring regions' labels do not
    run into each other ("#1 lesion#2 lesion"); the class and its evidence are in the
    result panel (:func:`region_lines`) and the layer's ``class`` feature. A reviewed
    region adds its decision (``#1 ok``, ``#2 no``) and a reviewer's class
    (``#3 ok: benign``)."""
    decision = region.metadata.get("review", "")
    mark = {"accepted": " ok", "rejected": " no"}.get(decision, "")
    if mark and "model_class" in region.metadata:
        mark += f": {region.class_name}"
    return f"#{region.rank}{mark}"


def region_lines(regions: Sequence[Region]) -> list[str]:
    """One line per region for a result panel: ``#rank class p=<probability>``.

    A region without its own class probabilities reads ``#rank attended (no
    region-level class)``: where the model looked, not a diagnosis.
    """
    lines = []
    for region in sorted(regions, key=lambda r: r.rank):
        probability = region.measurements.get(f"prob_{region.class_name}")
        if probability is None or not math.isfinite(float(probability)):
            lines.append(f"#{region.rank} attended (no region-level class)")
        else:
            lines.append(f"#{region.rank} {region.class_name} p={float(probability):.2f}")
    return lines


def samples_layer_data(
    samples: SampledLocations, source: SlideSource, *, name: str
) -> LayerDataTuple:
    """Attention sampling's drawn locations as square outlines of the patches read.

    Returns
    -------
    tuple
        ``(points, kwargs, "points")``: patch centres in world ``(y, x)``, each
        drawn as a square the size of its patch; features ``attention`` and
        ``count`` (draws of that location).
    """
    unit_x, unit_y = source.mpp_xy if source.mpp_xy is not None else (1.0, 1.0)
    centres = np.asarray(samples.centers_l0_xy, dtype=float).reshape(-1, 2)
    points = np.stack([centres[:, 1] * unit_y, centres[:, 0] * unit_x], axis=1)
    side = float(max(samples.patch_l0_wh)) * max(unit_x, unit_y)
    kwargs: dict[str, Any] = {
        "name": name,
        "translate": source.translate_yx,
        "symbol": "square",
        "size": side,
        "face_color": "transparent",
        "border_color": np.asarray([SAMPLE_COLOR]),
        "border_width": 0.05,
        "border_width_is_relative": True,
        "opacity": 0.7,
        "features": {
            "attention": np.asarray(samples.attention, dtype=float),
            "count": np.asarray(samples.counts, dtype=int),
        },
        "metadata": {RESULT_KEY: "samples", "mpp_xy": source.mpp_xy},
        **_units_kwargs(source.mpp_xy is not None),
    }
    return (points, kwargs, "points")
