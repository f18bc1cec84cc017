"""What the model said at the cursor: the attention (raw and on the heatmap's 0-1 scale),
the patch's class probabilities and which patch it is, whatever layer is selected.

GUI-free: the classify widget calls :func:`readout_text` from a mouse-move callback
with the cursor's world position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Readout", "readout_at", "readout_text"]


@dataclass(frozen=True)
class Readout:
    """The model's values at one attention cell."""

    row: int
    col: int
    patch_l0_xywh: tuple[float, float, float, float]
    attention: float
    normalised: float
    probabilities: dict[str, float]


def readout_at(result: Any, normalised: Any, x_l0: float, y_l0: float) -> Readout | None:
    """The cell whose patch centre lies nearest level-0 ``(x, y)``, or None outside the grid
    or off tissue.

    Parameters
    ----------
    result
        A ``ClassificationResult``.
    normalised
        Its attention on the heatmap's 0-1 scale (where each value sits between the
        heatmap layer's contrast limits).
    x_l0, y_l0
        The point in level-0 pixels.
    """
    geometry = result.geometry
    (ox, oy), (sx, sy), (pw, ph) = (
        geometry.origin_l0_xy,
        geometry.stride_l0_xy,
        geometry.patch_l0_wh,
    )
    rows, cols = result.grid_shape
    c = int(math.floor((x_l0 - ox - pw / 2.0) / sx + 0.5))
    r = int(math.floor((y_l0 - oy - ph / 2.0) / sy + 0.5))
    inside = ox <= x_l0 < ox + (cols - 1) * sx + pw and oy <= y_l0 < oy + (rows - 1) * sy + ph
    if not inside or not (0 <= r < rows and 0 <= c < cols):
        return None
    attention = float(result.attention[r, c])
    if not math.isfinite(attention):
        return None
    probabilities: dict[str, float] = {}
    if result.cell_probs is not None:
        values = np.asarray(result.cell_probs[r, c], dtype=float)
        if np.all(np.isfinite(values)):
            probabilities = dict(zip(result.class_names, values.tolist(), strict=False))
    return Readout(
        row=r,
        col=c,
        patch_l0_xywh=geometry.cell_l0_xywh(r, c),
        attention=attention,
        normalised=float(np.asarray(normalised)[r, c]),
        probabilities=probabilities,
    )


def readout_text(shown: Any, world_yx: Any) -> str:
    """One line for the cursor at napari world ``(.., y, x)`` over ``shown``'s slide:
    ``attention 0.0123 (0.81 of the heatmap scale) · p(lesion) 0.93 · patch x, y``,
    or ``""`` off the result's tissue."""
    source = shown.source
    y_world, x_world = (float(v) for v in tuple(world_yx)[-2:])
    unit_x, unit_y = source.mpp_xy if source.mpp_xy is not None else (1.0, 1.0)
    ty, tx = source.translate_yx
    x_l0, y_l0 = (x_world - tx) / unit_x, (y_world - ty) / unit_y
    heatmap = shown.layers.get("heatmap")
    if heatmap is None:
        normalised = shown.result.normalised_attention()
    else:  # where the raw value sits on the heatmap's ramp (its contrast limits)
        lo, hi = (float(v) for v in heatmap.contrast_limits)
        normalised = np.clip((shown.result.attention - lo) / max(hi - lo, 1e-300), 0.0, 1.0)
    found = readout_at(shown.result, normalised, x_l0, y_l0)
    if found is None:
        return ""
    parts = [
        f"{shown.model}: attention {found.attention:.4g} ({found.normalised:.2f} on the heatmap)"
    ]
    parts += [f"p({name}) {p:.2f}" for name, p in found.probabilities.items()]
    x, y, w, h = found.patch_l0_xywh
    parts.append(f"patch at {x:.0f}, {y:.0f} px ({w:.0f} x {h:.0f})")
    return " · ".join(parts)
