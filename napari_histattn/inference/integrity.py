"""Which of a run's patches were read from tiles that could not be decoded.

A truncated file or a corrupt tile is served mid-grey (:class:`~napari_histattn.io.slide.Slide`
records it in ``failed_tiles``). A model given grey placeholders still answers,
often confidently; this module measures how much of what the model read was
placeholder, so that the result can say so and, beyond
:data:`UNREADABLE_LIMIT`, refuse to be a diagnosis.

The share reported is the larger of the patches that overlap a failed tile and
the slide area under failed tiles (:func:`unreadable_area`): a grey tile in the
low-resolution view hides tissue from tissue detection, so it is never read at
all. A tile counts as failed when its decoder raised. A JPEG tile whose entropy data
is damaged but that still decodes (to wrong pixels) cannot be told apart from a
good tile by decoding, and is not counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from napari_histattn.io.slide import Slide

__all__ = ["UNREADABLE_LIMIT", "failed_rects_l0", "unreadable_area", "unreadable_mask"]

#: Above this share of the patches a model read from undecodable tiles, a result
#: is not a diagnosis: the CLI exits non-zero and the widget shows a warning.
UNREADABLE_LIMIT = 0.01


def failed_rects_l0(slide: Slide) -> NDArray[np.float64]:
    """``(n, 4)`` level-0 ``x0, y0, x1, y1`` of the slide's undecodable tiles so far."""
    rects = []
    for level, lvl_x, lvl_y in list(slide.failed_tiles):
        ds = float(slide.level_downsamples[level])
        tw, th = slide.level_tile_sizes[level]
        rects.append((lvl_x * ds, lvl_y * ds, (lvl_x + tw) * ds, (lvl_y + th) * ds))
    return np.asarray(rects, dtype=np.float64).reshape(-1, 4)


def unreadable_mask(
    xy_l0: NDArray[Any], wh_l0: NDArray[Any], failed_l0: NDArray[np.float64]
) -> NDArray[np.bool_]:
    """Which patches (top-left ``xy_l0`` and size ``wh_l0``, ``(n, 2)`` level-0 pixels)
    overlap an undecodable tile's rectangle (``failed_l0`` from :func:`failed_rects_l0`)."""
    xy = np.asarray(xy_l0, dtype=np.float64).reshape(-1, 2)
    wh = np.asarray(wh_l0, dtype=np.float64).reshape(-1, 2)
    hit = np.zeros(xy.shape[0], dtype=bool)
    if not xy.shape[0] or not failed_l0.shape[0]:
        return hit
    x0, y0 = xy[:, 0:1], xy[:, 1:2]
    x1, y1 = x0 + wh[:, 0:1], y0 + wh[:, 1:2]
    step = max(1, 2**22 // max(1, xy.shape[0]))  # bounded (n, step) comparisons
    for start in range(0, failed_l0.shape[0], step):
        f = failed_l0[start : start + step]
        hit |= ((x0 < f[:, 2]) & (f[:, 0] < x1) & (y0 < f[:, 3]) & (f[:, 1] < y1)).any(axis=1)
    return hit


def unreadable_area(
    failed_l0: NDArray[np.float64], slide_l0_wh: tuple[int, int], grid: int = 512
) -> float:
    """Share of the slide's area under undecodable tiles (of any level), on a
    ``grid``-cell raster: a grey tile in the low-resolution view hides tissue from
    tissue detection, so what it covers was never read, not read as healthy."""
    w, h = (float(v) for v in slide_l0_wh)
    if not failed_l0.shape[0] or w <= 0 or h <= 0:
        return 0.0
    covered = np.zeros((grid, grid), dtype=bool)
    sx, sy = grid / w, grid / h
    for x0, y0, x1, y1 in failed_l0:
        c0, c1 = int(np.floor(x0 * sx)), int(np.ceil(min(x1, w) * sx))
        r0, r1 = int(np.floor(y0 * sy)), int(np.ceil(min(y1, h) * sy))
        covered[max(0, r0) : r1, max(0, c0) : c1] = True
    return float(covered.mean())


#: Glass (the brightest tenth of a slide's pixels) darker than this mean RGB, or with
#: channels further apart than GLASS_MAX_TINT, is not the near-white glass of a
#: bright-field slide: the colours are probably wrong (YCbCr frames read as RGB).
GLASS_MIN_BRIGHTNESS = 170
GLASS_MAX_TINT = 60


def glass_colour(rgb: NDArray[np.uint8]) -> tuple[int, int, int]:
    """Mean colour of the brightest tenth of the pixels of an RGB view (the glass)."""
    flat = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    if not flat.shape[0]:
        return (255, 255, 255)
    brightness = flat.mean(axis=1)
    cut = np.quantile(brightness, 0.9)
    top = flat[brightness >= cut]
    return (
        int(round(top[:, 0].mean())),
        int(round(top[:, 1].mean())),
        int(round(top[:, 2].mean())),
    )


def glass_warning(rgb: NDArray[np.uint8]) -> str | None:
    """Why the slide's glass does not look like glass, or None when it does."""
    r, g, b = glass_colour(rgb)
    if (r + g + b) / 3 >= GLASS_MIN_BRIGHTNESS and max(r, g, b) - min(r, g, b) <= GLASS_MAX_TINT:
        return None
    return (
        f"the glass is not near white (its colour is RGB {r}, {g}, {b}): the colours may be "
        "wrong (for example YCbCr frames read as RGB) or this is not a bright-field slide; "
        "the model was not trained on such pixels"
    )
