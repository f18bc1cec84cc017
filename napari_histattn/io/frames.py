"""Coordinate frames: the one module that converts between them.

Frames (as named in variables throughout the package):

``l0_xy``
    Level-0 pixels of the slide, x first. A pixel index ``i`` covers ``[i, i + 1)``
    (OpenSlide and GeoJSON convention for regions and polygons).
``lvl_xy``
    Pixels of pyramid level ``k``: ``lvl = l0 / downsample_k``.
``napari_yx``
    napari world coordinates, y first: micrometres when the slide's mpp is known,
    otherwise level-0 pixels. napari puts the *centre* of data pixel ``i`` at world
    ``translate + scale * i``.

Placement in napari. Level 0 of a slide is added with ``scale = mpp`` and
``translate = 0``, so the centre of level-0 pixel ``i`` sits at world ``i * mpp``
and a level-0 coordinate maps to world by scaling alone
(:func:`l0_xy_to_napari_yx`). Pixel ``j`` of level ``k`` covers level-0 pixels
``[j * d, (j + 1) * d)`` (``d`` = downsample), whose centre is at level-0
coordinate ``j * d + (d - 1) / 2``; hence level ``k`` has ``scale = d * mpp`` and
``translate = (d - 1) / 2 * mpp`` (:func:`level_translate_yx`). A heatmap whose
pixel ``(r, c)`` scores the patch at ``origin + (c * stride_x, r * stride_y)`` of
size ``patch`` is placed the same way, with each heatmap pixel on the centre of
its patch (:func:`grid_geometry_to_napari`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "grid_geometry_to_napari",
    "l0_to_lvl_xy",
    "l0_xy_to_napari_yx",
    "level_scale_yx",
    "level_translate_yx",
    "lvl_to_l0_xy",
    "napari_scale_yx",
    "napari_yx_to_l0_xy",
]


def _unit_xy(mpp_xy: Sequence[float] | None) -> tuple[float, float]:
    """World units per level-0 pixel (x, y): the mpp, or 1 for pixel units."""
    if mpp_xy is None:
        return 1.0, 1.0
    mx, my = mpp_xy
    if not (mx > 0 and my > 0):
        raise ValueError(f"mpp must be positive, got {tuple(mpp_xy)!r}")
    return float(mx), float(my)


def _mpp_of(slide_or_mpp_xy: Any) -> tuple[float, float] | None:
    if slide_or_mpp_xy is None:
        return None
    if hasattr(slide_or_mpp_xy, "mpp_xy"):
        mpp = slide_or_mpp_xy.mpp_xy
        return None if mpp is None else (float(mpp[0]), float(mpp[1]))
    mx, my = slide_or_mpp_xy
    return float(mx), float(my)


def l0_to_lvl_xy(l0_xy: Sequence[float], downsample: float) -> tuple[float, float]:
    """Level-0 coordinates to the coordinates of a level with ``downsample``.

    Parameters
    ----------
    l0_xy
        ``(x, y)`` in level-0 pixels.
    downsample
        Level-0 pixels per level pixel.

    Returns
    -------
    tuple of float
        ``(x, y)`` in level pixels.
    """
    return float(l0_xy[0]) / downsample, float(l0_xy[1]) / downsample


def lvl_to_l0_xy(lvl_xy: Sequence[float], downsample: float) -> tuple[float, float]:
    """Coordinates of a level with ``downsample`` to level-0 coordinates.

    Parameters
    ----------
    lvl_xy
        ``(x, y)`` in level pixels.
    downsample
        Level-0 pixels per level pixel.

    Returns
    -------
    tuple of float
        ``(x, y)`` in level-0 pixels.
    """
    return float(lvl_xy[0]) * downsample, float(lvl_xy[1]) * downsample


def napari_scale_yx(slide_or_mpp_xy: Any, downsample: float = 1.0) -> tuple[float, float]:
    """napari ``scale`` (y, x) of a slide level.

    Parameters
    ----------
    slide_or_mpp_xy
        A :class:`~napari_histattn.io.slide.Slide` (its ``mpp_xy`` is used), an
        ``(mpp_x, mpp_y)`` pair, or None for pixel units.
    downsample
        The level's downsample (1 for level 0).

    Returns
    -------
    tuple of float
        ``(mpp_y * downsample, mpp_x * downsample)`` in micrometres per pixel, or
        ``(downsample, downsample)`` in level-0 pixels when the mpp is unknown.
    """
    ux, uy = _unit_xy(_mpp_of(slide_or_mpp_xy))
    return uy * downsample, ux * downsample


level_scale_yx = napari_scale_yx


def level_translate_yx(downsample: float, mpp_xy: Sequence[float] | None) -> tuple[float, float]:
    """napari ``translate`` (y, x) that puts level pixels on their level-0 footprint.

    Pixel ``j`` of a level with downsample ``d`` covers level-0 pixels
    ``[j * d, (j + 1) * d)``; napari draws it centred at ``translate + j * d``
    (in level-0 pixels), so ``translate = (d - 1) / 2`` level-0 pixels, times the
    mpp when in micrometres. Level 0 gets 0.

    Parameters
    ----------
    downsample
        The level's downsample.
    mpp_xy
        ``(mpp_x, mpp_y)`` or None for pixel units.

    Returns
    -------
    tuple of float
        ``(translate_y, translate_x)`` in world units.
    """
    ux, uy = _unit_xy(mpp_xy)
    half = (float(downsample) - 1.0) / 2.0
    return half * uy, half * ux


def l0_xy_to_napari_yx(
    l0_xy: Sequence[float], mpp_xy: Sequence[float] | None
) -> tuple[float, float]:
    """Level-0 ``(x, y)`` to napari world ``(y, x)`` (µm, or level-0 px without mpp).

    Parameters
    ----------
    l0_xy
        ``(x, y)`` in level-0 pixels.
    mpp_xy
        ``(mpp_x, mpp_y)`` or None for pixel units.

    Returns
    -------
    tuple of float
        ``(y, x)`` in world units.
    """
    ux, uy = _unit_xy(mpp_xy)
    return float(l0_xy[1]) * uy, float(l0_xy[0]) * ux


def napari_yx_to_l0_xy(
    napari_yx: Sequence[float], mpp_xy: Sequence[float] | None
) -> tuple[float, float]:
    """napari world ``(y, x)`` to level-0 ``(x, y)``; inverse of :func:`l0_xy_to_napari_yx`.

    Parameters
    ----------
    napari_yx
        ``(y, x)`` in world units (µm, or level-0 px without mpp).
    mpp_xy
        ``(mpp_x, mpp_y)`` or None for pixel units.

    Returns
    -------
    tuple of float
        ``(x, y)`` in level-0 pixels.
    """
    ux, uy = _unit_xy(mpp_xy)
    return float(napari_yx[1]) / ux, float(napari_yx[0]) / uy


def grid_geometry_to_napari(
    origin_l0_xy: Sequence[float],
    stride_l0_xy: Sequence[float],
    patch_l0_wh: Sequence[float],
    mpp_xy: Sequence[float] | None,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """napari ``scale`` and ``translate`` (y, x) of a per-patch heatmap.

    Heatmap pixel ``(r, c)`` stands for the patch whose top-left corner is
    ``origin + (c * stride_x, r * stride_y)`` and whose size is ``patch`` (all in
    level-0 pixels). It is drawn at the centre of that patch: the centre of level-0
    pixels ``[o, o + p)`` is at level-0 coordinate ``o + (p - 1) / 2``.

    Parameters
    ----------
    origin_l0_xy
        Top-left corner of the first patch.
    stride_l0_xy
        Step between neighbouring patches.
    patch_l0_wh
        Patch size.
    mpp_xy
        ``(mpp_x, mpp_y)`` or None for pixel units.

    Returns
    -------
    scale_yx, translate_yx
        ``scale = stride * unit`` and ``translate = (origin + (patch - 1) / 2) * unit``.
    """
    ux, uy = _unit_xy(mpp_xy)
    ox, oy = (float(v) for v in origin_l0_xy)
    sx, sy = (float(v) for v in stride_l0_xy)
    pw, ph = (float(v) for v in patch_l0_wh)
    scale_yx = (sy * uy, sx * ux)
    translate_yx = ((oy + (ph - 1.0) / 2.0) * uy, (ox + (pw - 1.0) / 2.0) * ux)
    return scale_yx, translate_yx
