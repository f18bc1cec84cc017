"""Files from a classification, and the heatmap's placement in napari.

:func:`write_outputs` writes, into one folder, every file a run produces:

``heatmap.png``
    The attention in the same colour ramp and on the same default contrast as the napari
    heatmap (:func:`attention_ramp`: warm inferno, transparent near 0; the map's full raw
    range, so that what the raw attention tells apart stays apart) over a
    thumbnail of the slide; ignored tissue and cells without attention (NaN)
    leave the slide visible. A clean image without a colour bar; text chunks
    record the ramp, the contrast (its raw values at the ramp's ends) and the grid
    geometry.
``attention.npy``
    The raw ``(rows, cols)`` float32 attention map (NaN outside tissue); its
    geometry is in ``summary.json``.
``regions.geojson``
    The top-k regions in QuPath's conventions with the run's provenance
    (:func:`napari_histattn.io.export.write_geojson`).
``patches.csv``
    The patch table (level-0 x, y, w, h, attention, class probabilities;
    :func:`napari_histattn.io.export.write_patches_csv`).
``attention-<name>.npy``, ``attention-<name>.png``
    The model's further attention levels (HATNet's ``word`` and ``region``), raw and
    over the thumbnail as the attention is (same grid, same ramp).
``explanation-<method>.npy``, ``explanation-<method>.png``
    With explanations asked for (``classify(explain=...)``): each map, likewise.
``crops/region_<rank>_<class>.png``
    With ``crops=True``: the top-k regions read at full resolution.
``summary.json``
    Predicted class, probabilities, geometry (with napari scale and translate),
    regions, samples, provenance and the names of the other files. Written last.

``outputs.manifest.json``
    The files of this run and their SHA-256, written after all of them.

The files are one set (:class:`~napari_histattn.io.export.exportset.ExportSet`):
staged beside the folder, then put in place together, so that a failure (raised
as :class:`~napari_histattn.errors.ExportError`) leaves an earlier run's files
as they were, and a new run never leaves stale crops of an old one.

GUI-free and torch-free: NumPy, Pillow and matplotlib's colormaps only.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from napari_histattn.atomic import atomic_write
from napari_histattn.errors import HistattnError
from napari_histattn.inference.heatmap_scale import (
    COLORMAPS,
    CONTRASTS,
    DEFAULT_CONTRAST,
    OPAQUE_FROM,
    TRANSPARENT_BELOW,
    contrast_limits,
    ramp,
    scale_text,
)
from napari_histattn.inference.result import ClassificationResult, geometry_dict
from napari_histattn.io.export import (
    json_safe,
    write_geojson,
    write_patches_csv,
    write_region_crops,
)
from napari_histattn.io.export.exportset import ExportSet
from napari_histattn.io.frames import grid_geometry_to_napari
from napari_histattn.io.grid import scale_to_bounds
from napari_histattn.io.regions import GridGeometry
from napari_histattn.io.slide import Slide

__all__ = [
    "OUTPUT_NAMES",
    "attention_rgba",
    "heatmap_napari_geometry",
    "render_overlay",
    "write_outputs",
]

#: File names inside the output folder, by key of :func:`write_outputs`'s result.
OUTPUT_NAMES = {
    "heatmap": "heatmap.png",
    "attention": "attention.npy",
    "geojson": "regions.geojson",
    "csv": "patches.csv",
    "summary": "summary.json",
}


def heatmap_napari_geometry(
    result: ClassificationResult | GridGeometry, mpp_xy: tuple[float, float] | None
) -> tuple[tuple[float, float], tuple[float, float]]:
    """napari ``scale`` and ``translate`` (y, x) of the attention map as an Image layer.

    A heatmap pixel sits at the centre of its patch: ``translate = origin +
    (patch - 1) / 2`` and ``scale = stride`` (level-0 pixels), both times the
    mpp when the slide is shown in micrometres
    (:func:`napari_histattn.io.frames.grid_geometry_to_napari`).

    Parameters
    ----------
    result
        A classification result or its grid geometry.
    mpp_xy
        The slide's level-0 ``(mpp_x, mpp_y)`` when the slide layer is in
        micrometres, None when it is in level-0 pixels.

    Returns
    -------
    scale_yx, translate_yx
    """
    geometry = result.geometry if isinstance(result, ClassificationResult) else result
    return grid_geometry_to_napari(
        geometry.origin_l0_xy, geometry.stride_l0_xy, geometry.patch_l0_wh, mpp_xy
    )


#: The attention colour ramp, shared by the napari heatmap and ``heatmap.png``:
#: the warm upper part of matplotlib's inferno with a transparent low end
#: (:mod:`napari_histattn.inference.heatmap_scale`).
ATTENTION_INFERNO_RANGE = COLORMAPS["inferno"][1:]
#: Opacity of the whole overlay: the H&E under the most attended cells stays
#: faintly visible.
ATTENTION_OPACITY = 0.8
RAMP_DESCRIPTION = (
    f"inferno {ATTENTION_INFERNO_RANGE[0]}-{ATTENTION_INFERNO_RANGE[1]}, transparent below "
    f"{TRANSPARENT_BELOW}, opaque from {OPAQUE_FROM}"
)


def attention_ramp(values: NDArray[Any]) -> NDArray[np.float64]:
    """RGBA in [0, 1] of normalised attention ``values`` in [0, 1] (any shape): the
    ``inferno`` ramp of :func:`~napari_histattn.inference.heatmap_scale.ramp`."""
    return ramp(values, "inferno")


def attention_rgba(
    attention: NDArray[Any], *, contrast: str = DEFAULT_CONTRAST
) -> NDArray[np.uint8]:
    """Colour a map: scale it to the ramp by ``contrast`` (one of
    :data:`~napari_histattn.inference.heatmap_scale.CONTRASTS`, the napari heatmap's
    default unless told), apply :func:`attention_ramp`; NaN is transparent.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols, 4)`` uint8 RGBA.
    """
    raw = np.asarray(attention, dtype=np.float64)
    values = scale_to_bounds(raw, contrast_limits(raw, contrast))  # NaN stays NaN
    finite = np.isfinite(values)
    rgba = attention_ramp(np.where(finite, values, 0.0))
    out = np.round(rgba * 255.0).astype(np.uint8)
    out[..., 3] = np.where(finite, out[..., 3], 0).astype(np.uint8)
    return out


def _cell_index(
    coord_l0: NDArray[np.float64], origin: float, stride: float, patch: float, n: int
) -> NDArray[np.int64]:
    """Cell covering each level-0 coordinate along one axis, or -1 outside every patch."""
    rel = coord_l0 - origin
    index = np.floor(rel / stride).astype(np.int64)
    inside = (index >= 0) & (index < n) & (rel - index * stride < patch)
    return np.where(inside, index, -1)


def render_overlay(
    result: ClassificationResult,
    thumbnail: NDArray[np.uint8],
    slide_l0_wh: tuple[int, int],
    *,
    alpha: float = ATTENTION_OPACITY,
    contrast: str = DEFAULT_CONTRAST,
) -> NDArray[np.uint8]:
    """Blend the coloured attention over a thumbnail of the whole slide.

    Each thumbnail pixel takes the colour of the cell whose patch contains its
    centre (in level-0 pixels); pixels in no patch, or in a NaN cell, keep the
    thumbnail's colour.

    Returns
    -------
    numpy.ndarray
        ``(h, w, 3)`` uint8, the thumbnail's size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    thumb = np.asarray(thumbnail)[..., :3].astype(np.float64)
    th, tw = thumb.shape[:2]
    w0, h0 = slide_l0_wh
    g = result.geometry
    rows, cols = result.grid_shape
    xs = (np.arange(tw) + 0.5) * (w0 / tw)
    ys = (np.arange(th) + 0.5) * (h0 / th)
    col_of = _cell_index(xs, g.origin_l0_xy[0], g.stride_l0_xy[0], g.patch_l0_wh[0], cols)
    row_of = _cell_index(ys, g.origin_l0_xy[1], g.stride_l0_xy[1], g.patch_l0_wh[1], rows)
    rgba = attention_rgba(result.attention, contrast=contrast)
    pixel_rgba = rgba[np.clip(row_of, 0, None)[:, None], np.clip(col_of, 0, None)[None, :]]
    covered = (row_of >= 0)[:, None] & (col_of >= 0)[None, :] & (pixel_rgba[..., 3] > 0)
    weight = np.where(covered, alpha * pixel_rgba[..., 3] / 255.0, 0.0)[..., None]
    out = thumb * (1.0 - weight) + pixel_rgba[..., :3].astype(np.float64) * weight
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _write_png(path: Path, rgb: NDArray[np.uint8], text: dict[str, str]) -> Path:
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", pnginfo=info)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def _write_npy(path: Path, array: NDArray[Any]) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def _check_same_slide(result: ClassificationResult, slide: Slide) -> None:
    done_on = result.provenance.get("slide_quickhash")
    if done_on is not None and slide.quickhash is not None and done_on != slide.quickhash:
        raise HistattnError(
            f"the result was computed on another slide ({result.provenance.get('slide_path')}) "
            f"than {slide.path}: OpenSlide quickhashes differ"
        )
    size = result.provenance.get("slide_size_l0_wh")
    if size is not None and tuple(size) != tuple(slide.level_dimensions[0]):
        raise HistattnError(
            f"the result was computed on a {size[0]}x{size[1]} slide, but {slide.path} is "
            f"{slide.level_dimensions[0][0]}x{slide.level_dimensions[0][1]}"
        )


def write_outputs(
    result: ClassificationResult,
    slide: Slide,
    out_dir: str | os.PathLike[str],
    *,
    crops: bool = False,
    crop_max_size: int = 2048,
    thumbnail_size: int = 1024,
    alpha: float = ATTENTION_OPACITY,
    contrast: str = DEFAULT_CONTRAST,
) -> dict[str, Path]:
    """Write a run's heatmap, raw attention, GeoJSON, CSV, optional crops and summary.

    Parameters
    ----------
    result
        From :func:`napari_histattn.inference.engine.classify`.
    slide
        The slide the result was computed on (for the thumbnail and the crops).
    out_dir
        Folder to write into (created if missing). The files are one set
        (:class:`~napari_histattn.io.export.exportset.ExportSet`): they replace an
        earlier run's together or not at all, crops of that run that this one does
        not write are removed, and other files in the folder are left alone.
    crops
        Also write full-resolution PNG crops of the top-k regions into ``crops/``.
    crop_max_size
        Longest side of a crop in level-0 pixels (a larger region is cropped
        around its centre).
    thumbnail_size
        Longer side of the heatmap overlay image.
    alpha
        Opacity of the overlay (colours: :func:`attention_ramp`).
    contrast
        What the ramp's ends stand for in every PNG: ``"full range"`` (the napari
        heatmap's default) or ``"1-99 percentile"`` (faint structure, the top 1 % clipped).

    Returns
    -------
    dict of str to Path
        ``"heatmap"``, ``"attention"``, ``"geojson"``, ``"csv"``, ``"summary"``
        and, with ``crops``, ``"crop_<rank>"`` for each crop.

    Raises
    ------
    ExportError
        A file cannot be written, or another export into the folder is running;
        the folder is left as it was.
    HistattnError
        ``slide`` is not the slide the result was computed on.
    """
    if contrast not in CONTRASTS:
        raise HistattnError(f"unknown contrast {contrast!r}: one of {', '.join(CONTRASTS)}")
    folder = Path(out_dir)
    _check_same_slide(result, slide)
    with ExportSet(folder, "outputs") as staged:
        written = _write_staged(
            result,
            slide,
            staged,
            crops=crops,
            crop_max_size=crop_max_size,
            thumbnail_size=thumbnail_size,
            alpha=alpha,
            contrast=contrast,
        )
    return {key: folder / relative for key, relative in written.items()}


def _write_staged(
    result: ClassificationResult,
    slide: Slide,
    staged: ExportSet,
    *,
    crops: bool,
    crop_max_size: int,
    thumbnail_size: int,
    alpha: float,
    contrast: str,
) -> dict[str, str]:
    """Write the outputs into the staging folder; their names relative to the output folder."""
    paths = {key: staged.path(name) for key, name in OUTPUT_NAMES.items()}
    written: dict[str, Path] = {}
    mpp = result.mpp_xy  # the file's, or the one the caller gave
    slide_wh = (int(slide.level_dimensions[0][0]), int(slide.level_dimensions[0][1]))
    geometry = geometry_dict(result.geometry, result.grid_shape)

    thumbnail = slide.thumbnail(thumbnail_size)  # under the heatmap and every explanation
    overlay = render_overlay(result, thumbnail, slide_wh, alpha=alpha, contrast=contrast)
    limits = contrast_limits(np.asarray(result.attention), contrast)
    written["heatmap"] = _write_png(
        paths["heatmap"],
        overlay,
        {
            "histattn:colormap": RAMP_DESCRIPTION,
            "histattn:alpha": repr(alpha),
            "histattn:contrast": f"{scale_text(limits, contrast)}: {CONTRASTS[contrast]}",
            "histattn:geometry": json.dumps(geometry),
            "histattn:predicted_class": result.predicted_class,
        },
    )
    written["attention"] = _write_npy(paths["attention"], np.asarray(result.attention))
    written["geojson"] = write_geojson(
        paths["geojson"],
        result.regions,
        provenance={**result.provenance, "predicted_class": result.predicted_class},
        mpp_xy=mpp,
    )
    written["csv"] = write_patches_csv(
        paths["csv"],
        result.patches,
        class_names=result.class_names,
        unreadable=None if result.unreadable is None else result.unreadable.tolist(),
    )
    for side in result.side_maps():
        # The same grid as the attention: the same overlay, of this map instead.
        shown = replace(result, attention=np.asarray(side.values, dtype=np.float32))
        key = side.key.replace(":", "_")
        written[key] = _write_npy(staged.path(f"{side.stem}.npy"), np.asarray(side.values))
        written[f"{key}_heatmap"] = _write_png(
            staged.path(f"{side.stem}.png"),
            render_overlay(shown, thumbnail, slide_wh, alpha=alpha, contrast=contrast),
            {
                "histattn:map": side.key,
                "histattn:contrast": scale_text(
                    contrast_limits(np.asarray(side.values), contrast), contrast, side.key
                ),
                "histattn:geometry": json.dumps(geometry),
            },
        )
    if crops and result.regions:
        crop_paths = write_region_crops(
            staged.path("crops"),
            result.regions,
            slide.read_region,
            top_k=len(result.regions),
            max_size=crop_max_size,
            slide_l0_wh=slide_wh,
        )
        for region, path in zip(
            sorted(result.regions, key=lambda r: r.rank), crop_paths, strict=False
        ):
            written[f"crop_{region.rank}"] = path

    scale_yx, translate_yx = heatmap_napari_geometry(result, mpp)
    summary = result.summary()
    summary["geometry"] = {
        **geometry,
        "napari": {
            "scale_yx": list(scale_yx),
            "translate_yx": list(translate_yx),
            "units": "micrometres" if mpp is not None else "level-0 pixels",
        },
    }
    summary["heatmap"] = {
        "colormap": RAMP_DESCRIPTION,
        "alpha": alpha,
        "contrast": contrast,
        "contrast_limits": list(limits),
    }
    written["summary"] = paths["summary"]
    root = staged.path("summary.json").parent
    relative = {key: path.relative_to(root).as_posix() for key, path in written.items()}
    summary["files"] = relative
    text = json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n"
    with atomic_write(paths["summary"], "w") as handle:
        handle.write(text)
    return relative
