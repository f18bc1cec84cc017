"""Shapes-layer vertices (napari ``(y, x)`` world coordinates) to level-0 polygons and back, without napari."""

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from napari_histattn.io.frames import napari_scale_yx

# --------------------------------------------------------------------------- napari frames


def _pair(value: ArrayLike, name: str) -> NDArray[np.float64]:
    pair = np.asarray(value, dtype=np.float64).reshape(-1)
    if pair.shape != (2,) or not np.isfinite(pair).all():
        raise ValueError(f"{name} must be two finite numbers (y, x), got {value!r}")
    return pair


def _scale(value: ArrayLike) -> NDArray[np.float64]:
    pair = _pair(value, "scale_yx")
    if (pair == 0).any():
        raise ValueError(f"scale_yx must be non-zero, got {value!r}")
    return pair


def _vertices(vertices: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(vertices, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"{name} must be an (M, 2) array, got shape {array.shape}")
    return array[:, -2:]  # napari may carry leading (z, t) axes; the last two are (y, x)


def napari_yx_to_l0_polygon(
    vertices_napari_yx: ArrayLike,
    scale_yx: ArrayLike = (1.0, 1.0),
    translate_yx: ArrayLike = (0.0, 0.0),
    *,
    mpp_xy: Sequence[float] | None = None,
) -> NDArray[np.float64]:
    """Shapes-layer vertices (napari data coordinates, ``(y, x)``) to level-0 ``(x, y)``.

    Frames involved:

    1. the Shapes layer's *data* coordinates (``layer.data[i]``), ``(y, x)``;
    2. napari *world* coordinates: ``world = data * scale + translate`` with the
       layer's ``scale`` and ``translate``;
    3. level-0 pixels ``(x, y)``: the slide's level-0 image layer has ``scale = mpp``
       and ``translate = 0`` (:mod:`napari_histattn.io.frames`), so
       ``l0 = world / mpp`` (or ``world`` itself when the slide has no mpp and is
       shown in pixels).

    A Shapes layer created with the slide's scale (the usual case for layers we add)
    holds level-0 pixels in its data: pass ``scale_yx = (mpp_y, mpp_x)`` and
    ``mpp_xy``. A layer drawn by hand has ``scale = 1``: its data are already world
    micrometres.

    Parameters
    ----------
    vertices_napari_yx
        ``(M, 2)`` vertices ``(y, x)`` (extra leading axes such as ``z`` are dropped).
    scale_yx, translate_yx
        The Shapes layer's ``scale`` and ``translate`` (last two axes).
    mpp_xy
        The slide's ``(mpp_x, mpp_y)``, or None when the world is in level-0 pixels.

    Returns
    -------
    numpy.ndarray
        ``(M, 2)`` float64 vertices ``(x, y)`` in level-0 pixels, in the same order.
    """
    data_yx = _vertices(vertices_napari_yx, "vertices_napari_yx")
    world_yx = data_yx * _scale(scale_yx) + _pair(translate_yx, "translate_yx")
    l0_yx = world_yx / np.asarray(napari_scale_yx(mpp_xy), dtype=np.float64)
    return np.ascontiguousarray(l0_yx[:, ::-1])


def l0_polygon_to_napari_yx(
    vertices_l0_xy: ArrayLike,
    scale_yx: Sequence[float] = (1.0, 1.0),
    translate_yx: Sequence[float] = (0.0, 0.0),
    *,
    mpp_xy: Sequence[float] | None = None,
) -> NDArray[np.float64]:
    """Level-0 ``(x, y)`` vertices to a Shapes layer's data coordinates ``(y, x)``.

    The inverse of :func:`napari_yx_to_l0_polygon` (same frames and arguments):
    ``data = (l0[:, ::-1] * unit - translate) / scale`` where ``unit`` is the
    slide's mpp ``(y, x)`` or 1. A closed ring (last vertex equal to the first, as in
    GeoJSON) loses its repeated last vertex, since napari polygons are implicitly
    closed.

    Returns
    -------
    numpy.ndarray
        ``(M, 2)`` float64 vertices ``(y, x)`` for ``layer.data``.
    """
    l0_xy = _vertices(vertices_l0_xy, "vertices_l0_xy")
    if len(l0_xy) > 3 and np.array_equal(l0_xy[0], l0_xy[-1]):
        l0_xy = l0_xy[:-1]
    world_yx = l0_xy[:, ::-1] * np.asarray(napari_scale_yx(mpp_xy), dtype=np.float64)
    data_yx = (world_yx - _pair(translate_yx, "translate_yx")) / _scale(scale_yx)
    return np.ascontiguousarray(data_yx)
