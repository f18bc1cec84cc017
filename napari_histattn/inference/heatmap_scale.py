"""How an attention map is drawn: its colour ramps and the contrast that maps raw values to them.

The default contrast is the map's full raw range (its smallest to its largest finite
value), so differences the raw attention has stay on screen: with the 1st-99th
percentile stretch, a lesion and three look-alikes that together cover under 1 % of
the tissue were all clipped to the top of the ramp and drawn equally bright, while
their raw attention told them apart. The stretch is still offered (it shows where the
rest of the attention goes); the colour bar states raw values either way.

Every ramp keeps a transparent low end (tissue the model ignored keeps its H&E
colours): alpha is 0 up to :data:`TRANSPARENT_BELOW` of the ramp and rises linearly
to 1 at :data:`OPAQUE_FROM`.

GUI-free: NumPy and matplotlib's colormaps. The napari widget and ``heatmap.png`` use
the same ramps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "COLORMAPS",
    "CONTRASTS",
    "DEFAULT_COLORMAP",
    "DEFAULT_CONTRAST",
    "OPAQUE_FROM",
    "TRANSPARENT_BELOW",
    "contrast_limits",
    "ramp",
    "scale_fraction",
    "scale_text",
]

#: Fully transparent below this fraction of the ramp ...
TRANSPARENT_BELOW = 0.02
#: ... and fully opaque from this one; between the two, alpha rises linearly.
OPAQUE_FROM = 0.25

#: The ramps offered, by name: the matplotlib colormap and the part of it used. Warm
#: inferno first (it stands out on pink and purple H&E); the others for colour-vision
#: differences (cividis, viridis) or for a stronger top end (turbo).
COLORMAPS: dict[str, tuple[str, float, float]] = {
    "inferno": ("inferno", 0.35, 1.0),
    "magma": ("magma", 0.35, 1.0),
    "viridis": ("viridis", 0.0, 1.0),
    "cividis": ("cividis", 0.0, 1.0),
    "turbo": ("turbo", 0.1, 0.95),
}
DEFAULT_COLORMAP = "inferno"

#: The contrasts offered: what raw value each end of the ramp stands for.
CONTRASTS: dict[str, str] = {
    "full range": "the map's smallest to largest raw value",
    "1-99 percentile": "the 1st to 99th percentile of the raw values (the top 1 % clipped)",
}
DEFAULT_CONTRAST = "full range"


def ramp(values: NDArray[Any], colormap: str = DEFAULT_COLORMAP) -> NDArray[np.float64]:
    """RGBA in [0, 1] of ramp positions ``values`` in [0, 1] (any shape) for ``colormap``,
    one of :data:`COLORMAPS`, with its transparent low end."""
    from matplotlib import colormaps

    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}: one of {', '.join(COLORMAPS)}")
    name, lo, hi = COLORMAPS[colormap]
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    rgba = np.asarray(colormaps[name](lo + (hi - lo) * v), dtype=np.float64)
    rgba[..., 3] = np.clip((v - TRANSPARENT_BELOW) / (OPAQUE_FROM - TRANSPARENT_BELOW), 0.0, 1.0)
    return rgba


def contrast_limits(values: NDArray[Any], contrast: str = DEFAULT_CONTRAST) -> tuple[float, float]:
    """The raw values at the two ends of the ramp for ``contrast`` (one of :data:`CONTRASTS`).

    NaN (outside tissue) is ignored. A constant or empty map gets a range of width 1
    around its value (or 0-1), so that a ramp can still be drawn and nothing divides
    by zero.
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}: one of {', '.join(CONTRASTS)}")
    data = np.asarray(values, dtype=np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return (0.0, 1.0)
    if contrast == "full range":
        lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = (float(v) for v in np.percentile(finite, [1.0, 99.0]))
    if not hi > lo:
        return (lo - 0.5, lo + 0.5) if lo == hi and lo != 0.0 else (lo, lo + 1.0)
    return (lo, hi)


def scale_fraction(value: float, limits: tuple[float, float]) -> float:
    """Where raw ``value`` sits on the ramp between ``limits`` (clipped to [0, 1]); NaN stays
    NaN."""
    lo, hi = limits
    if not math.isfinite(value):
        return math.nan
    return float(min(max((value - lo) / (hi - lo), 0.0), 1.0)) if hi > lo else 0.0


def scale_text(limits: tuple[float, float], contrast: str, what: str = "attention") -> str:
    """The colour bar's scale in words: ``raw attention 1.2e-04 to 0.052 (full range)``."""
    lo, hi = limits
    return f"raw {what} {lo:.3g} to {hi:.3g} ({contrast})"
