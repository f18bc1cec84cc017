"""Turn slides and their annotations into napari layer data tuples.

These helpers build ``(data, kwargs, layer_type)`` tuples and import neither Qt
nor napari, so the reader, the sample data, the ``histattn demo`` command and
the widgets share one definition of how a slide looks in napari: scale in
micrometres from the slide's mpp (pixel units when it has none), RGB, fixed
contrast limits so that napari never scans the data to compute them.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import metadata as _importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histattn.errors import SlideError
from napari_histattn.io import frames

if TYPE_CHECKING:
    from napari_histattn.io.slide import Slide

LayerDataTuple = tuple[Any, dict[str, Any], str]

# A slide with a single level at most this many pixels is shown as a plain
# (non-multiscale) image: napari then reads it once, whole, which is cheap.
SMALL_SINGLE_LEVEL_PX = 4096 * 4096

# Colours of the ground-truth classes (RGBA in [0, 1]): they must stand out on
# pink and purple H&E, so no red or purple.
CLASS_COLORS: dict[str, tuple[float, float, float, float]] = {
    "lesion": (1.0, 0.86, 0.0, 1.0),
    "lookalike": (0.0, 0.9, 1.0, 1.0),
    "tissue": (0.35, 0.35, 0.35, 1.0),
}
_FALLBACK_COLOR = (1.0, 1.0, 1.0, 1.0)

MICROMETRE = "micrometer"
PIXEL = "pixel"


def _napari_supports_units() -> bool:
    """Whether napari layers accept ``units`` (napari 0.6 and later)."""
    try:
        version = _importlib_metadata.version("napari")
    except _importlib_metadata.PackageNotFoundError:
        return False
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts) >= (0, 6)


def _units_kwargs(mpp_known: bool) -> dict[str, Any]:
    if not _napari_supports_units():
        return {}
    unit = MICROMETRE if mpp_known else PIXEL
    return {"units": (unit, unit)}


def slide_layer_data(slide: Slide, *, name: str | None = None) -> LayerDataTuple:
    """Describe a slide as one RGB image layer, multiscale when it has a pyramid.

    Parameters
    ----------
    slide
        An open slide. The layer keeps a reference to it in
        ``metadata["slide"]``, so its lazy levels stay readable for as long as
        the layer exists.
    name
        Layer name; defaults to the file stem (``CMU-1`` for ``CMU-1.svs``).

    Returns
    -------
    tuple
        ``(data, kwargs, "image")``. ``data`` is a list of lazy levels (level 0
        first) with ``multiscale=True``, or a single lazy level when the slide
        has one small level. ``kwargs["scale"]`` is in micrometres per pixel
        (y, x) when the slide's mpp is known, else ``(1, 1)`` with
        ``metadata["mpp_source"] == "none"``.

    Raises
    ------
    SlideError
        The slide has no overview (``Slide.overview_problem``): napari would decode
        every level-0 pixel to draw it zoomed out.
    """
    problem = getattr(slide, "overview_problem", None)
    if problem:  # napari would read every level-0 pixel to draw the zoomed-out view
        raise SlideError(slide.path, problem)
    levels = list(slide.levels)
    mpp_xy = slide.mpp_xy
    scale_yx = tuple(float(v) for v in frames.napari_scale_yx(mpp_xy, 1.0))
    translate_yx = tuple(float(v) for v in frames.level_translate_yx(1.0, mpp_xy))

    meta = dict(slide.metadata())
    meta.setdefault("mpp_source", slide.mpp_source)
    meta.setdefault("associated_images", list(slide.associated_image_names))
    meta["slide"] = slide
    meta["warnings"] = [*slide.metadata_warnings, *filter(None, [_glass_check(slide)])]

    height, width = levels[0].shape[:2]
    multiscale = len(levels) > 1 or height * width > SMALL_SINGLE_LEVEL_PX
    data: Any = levels if multiscale else levels[0]

    kwargs: dict[str, Any] = {
        "name": name if name is not None else _stem(Path(slide.path)),
        "rgb": True,
        "multiscale": multiscale,
        "scale": scale_yx,
        "translate": translate_yx,
        # uint8 RGB: fixed limits, so napari never reads data to compute them.
        "contrast_limits": [0, 255],
        "metadata": meta,
        **_units_kwargs(mpp_xy is not None),
    }
    return (data, kwargs, "image")


def _glass_check(slide: Slide, max_pixels: int = 4 * 2**20) -> str | None:
    """:func:`~napari_histattn.inference.integrity.glass_warning` on the smallest stored
    level when it is small (never on a computed level: that would read level 0)."""
    from napari_histattn.inference.integrity import glass_warning

    stored = slide.level_count - len(slide.computed_levels)
    w, h = slide.level_dimensions[stored - 1]
    if w * h > max_pixels:
        return None
    try:
        return glass_warning(slide.read_level_region(stored - 1, (0, 0), (w, h)))
    except Exception:  # a probe; reading errors surface when the layer is drawn
        return None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _polygon_rings(geometry: dict[str, Any]) -> list[list[list[float]]]:
    """Exterior rings of a GeoJSON Polygon or MultiPolygon (holes are not drawn)."""
    kind = geometry.get("type")
    coords = geometry.get("coordinates") or []
    if kind == "Polygon":
        return [coords[0]] if coords else []
    if kind == "MultiPolygon":
        return [poly[0] for poly in coords if poly]
    return []


def _feature_class(feature: dict[str, Any]) -> str:
    props = feature.get("properties") or {}
    classification = props.get("classification")
    if isinstance(classification, dict) and classification.get("name"):
        return str(classification["name"])
    for key in ("class", "classification", "label", "name"):
        value = props.get(key)
        if isinstance(value, str) and value:
            return value
    return "unclassified"


def read_ground_truth_polygons(
    geojson_path: str | Path | Mapping[str, Any], classes: Iterable[str] | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """Read polygons in level-0 pixels, ``(N, 2)`` arrays of (x, y), with their class names.

    Parameters
    ----------
    geojson_path
        A GeoJSON FeatureCollection (a file, or the parsed document) whose coordinates
        are level-0 pixels (x, y), class in ``properties.classification.name``
        (QuPath's convention).
    classes
        Keep only these classes; all when ``None``.
    """
    if isinstance(geojson_path, Mapping):
        doc: Any = geojson_path
    else:
        path = Path(geojson_path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SlideError(path, f"cannot read the ground-truth GeoJSON: {err}") from err
    features = doc.get("features", []) if isinstance(doc, dict) else []
    wanted = None if classes is None else set(classes)
    polygons_l0_xy: list[np.ndarray] = []
    names: list[str] = []
    for feature in features:
        cls = _feature_class(feature)
        if wanted is not None and cls not in wanted:
            continue
        for ring in _polygon_rings(feature.get("geometry") or {}):
            ring_l0_xy = np.asarray(ring, dtype=float)
            if len(ring_l0_xy) > 1 and np.array_equal(ring_l0_xy[0], ring_l0_xy[-1]):
                ring_l0_xy = ring_l0_xy[:-1]  # GeoJSON closes rings; napari does not
            if len(ring_l0_xy) >= 3:
                polygons_l0_xy.append(ring_l0_xy)
                names.append(cls)
    return polygons_l0_xy, names


def ground_truth_shapes_layer(
    geojson_path: str | Path | Mapping[str, Any],
    mpp_xy: Sequence[float] | None,
    *,
    classes: Iterable[str] | None = ("lesion", "lookalike"),
    name: str = "ground truth",
    edge_width: float | None = None,
) -> LayerDataTuple:
    """Describe ground-truth polygons as a Shapes layer aligned with the slide layer.

    Parameters
    ----------
    geojson_path
        GeoJSON with level-0 (x, y) polygons and ``properties.classification.name``.
    mpp_xy
        The slide's micrometres per pixel (x, y), or ``None`` for pixel units;
        must match the image layer's scale.
    classes
        Classes to draw (default: lesions and their benign look-alikes).
    name
        Layer name.
    edge_width
        Outline width in world units (micrometres, or pixels without mpp);
        by default 1/150 of all annotations' extent so that outlines stay
        visible when the whole slide is on screen.

    Returns
    -------
    tuple
        ``(polygons, kwargs, "shapes")``: polygons as ``(N, 2)`` arrays of napari
        (y, x) world coordinates, ``kwargs["features"]["class"]`` holding each
        polygon's class, outlines (no fill) and class names coloured by class.
    """
    all_l0_xy, all_names = read_ground_truth_polygons(geojson_path)
    wanted = None if classes is None else set(classes)
    keep = [i for i, n in enumerate(all_names) if wanted is None or n in wanted]
    polygons_l0_xy = [all_l0_xy[i] for i in keep]
    names = [all_names[i] for i in keep]
    polygons_yx = [_l0_xy_to_napari_yx_array(p, mpp_xy) for p in polygons_l0_xy]
    edge_colors = np.array(
        [CLASS_COLORS.get(n, _FALLBACK_COLOR) for n in names], dtype=float
    ).reshape(-1, 4)
    if edge_width is None:
        # Sized from every annotation (tissue outline included): the slide's scale.
        edge_width = _default_edge_width([_l0_xy_to_napari_yx_array(p, mpp_xy) for p in all_l0_xy])
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "polygon",
        "features": {"class": np.asarray(names, dtype=object)},
        "edge_color": edge_colors if len(names) else "white",
        # No fill: a tint would change how the tissue under it looks.
        "face_color": "transparent",
        "edge_width": edge_width,
        "metadata": {
            "geojson_path": None if isinstance(geojson_path, Mapping) else str(geojson_path),
            "mpp_xy": mpp_xy,
        },
        **_units_kwargs(mpp_xy is not None),
    }
    if names:
        # Class names beside the outlines, in the outline's colour (a legend in place).
        kwargs["text"] = {
            "string": "{class}",
            "size": 14,
            "anchor": "upper_left",
            "color": {"array": edge_colors, "default": "white"},
        }
    return (polygons_yx, kwargs, "shapes")


def _l0_xy_to_napari_yx_array(l0_xy: np.ndarray, mpp_xy: Sequence[float] | None) -> np.ndarray:
    """Vectorised :func:`napari_histattn.io.frames.l0_xy_to_napari_yx` for ``(N, 2)`` points."""
    unit_y, unit_x = frames.l0_xy_to_napari_yx((1.0, 1.0), mpp_xy)
    napari_yx = np.asarray(l0_xy, dtype=float)[:, ::-1] * np.array([unit_y, unit_x])
    return napari_yx


def _default_edge_width(polygons_yx: Sequence[np.ndarray]) -> float:
    if not polygons_yx:
        return 1.0
    points = np.concatenate(polygons_yx, axis=0)
    extent = float(np.max(points.max(axis=0) - points.min(axis=0)))
    return max(extent / 150.0, 1e-6)


def set_visible(layer: Any, visible: bool) -> None:
    """Show or hide a layer, touching it only when that changes anything: napari updates
    its canvas on every assignment (0.05 s a layer on the sample slide here)."""
    if bool(layer.visible) != bool(visible):
        layer.visible = bool(visible)


@contextlib.contextmanager
def selection_kept(viewer: Any) -> Iterator[None]:
    """Add layers without napari making each the selected one: every selection change
    builds and shows that layer's controls (0.5 s for a first heatmap here), and the
    widget selects the slide again after a run anyway.

    napari's flag for this (``LayerList._activate_on_insert``) is private; its plugin
    proxy warns on every access that such access goes away in a later napari. The warning
    is silenced here, for this one attribute, because a user would see it after every run;
    when the flag is gone (or refused), layers are added as usual."""
    layers = viewer.layers
    before = _private_flag(layers, None)
    if before is not None:
        _private_flag(layers, False)
    try:
        yield
    finally:
        if before is not None:
            _private_flag(layers, before)


def _private_flag(layers: Any, value: bool | None) -> bool | None:
    """Read napari's ``_activate_on_insert`` (``value`` None) or set it; None when absent."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Private attribute access", category=FutureWarning
        )
        try:
            if value is None:
                flag = getattr(layers, "_activate_on_insert", None)
                return flag if isinstance(flag, bool) else None
            layers._activate_on_insert = value
            return value
        except (AttributeError, TypeError):
            return None
