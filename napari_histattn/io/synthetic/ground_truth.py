"""Ground truth of a synthetic scene: the label mask and the lesion/look-alike outlines as GeoJSON."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from napari_histattn.io.synthetic.scene import Scene

LABELS = {0: "background", 1: "tissue", 2: "lookalike", 3: "lesion"}
CLASS_COLORS = {"tissue": [80, 160, 80], "lookalike": [40, 110, 230], "lesion": [220, 30, 30]}


def label_mask(scene: Scene, downsample: float) -> np.ndarray:
    """Label mask at ``1 / downsample``: 0 glass, 1 tissue, 2 look-alike, 3 lesion.

    Pixel ``(i, j)`` takes the label of the level-0 point at its centre,
    ``((j + 0.5) * downsample, (i + 0.5) * downsample)``, tested against the
    same polygons as the GeoJSON. Shape ``(ceil(height / d), ceil(width / d))``.
    """
    d = float(downsample)
    if not d > 0:
        raise ValueError(f"downsample must be positive, got {downsample}")
    h, w = math.ceil(scene.height / d), math.ceil(scene.width / d)
    out = np.zeros((h, w), np.uint8)
    xs = (np.arange(w) + 0.5) * d
    band = max(1, 262_144 // max(w, 1))  # rows per batch: bounds the temporaries
    for r0 in range(0, h, band):
        ys = (np.arange(r0, min(h, r0 + band)) + 0.5) * d
        out[r0 : r0 + ys.size][scene.tissue.rho(xs[None, :], ys[:, None]) < 1.0] = 1
    for kind, label in (("lookalike", 2), ("lesion", 3)):
        for region in scene.regions:
            if region.kind != kind:
                continue
            x0, y0, x1, y1 = region.bbox_l0
            j0, j1 = max(0, int(x0 / d) - 1), min(w, int(x1 / d) + 2)
            i0, i1 = max(0, int(y0 / d) - 1), min(h, int(y1 / d) + 2)
            if j1 <= j0 or i1 <= i0:
                continue
            inside = region.rho(xs[None, j0:j1], ((np.arange(i0, i1) + 0.5) * d)[:, None]) < 1.0
            out[i0:i1, j0:j1][inside] = label
    return out


def lesion_mask(scene: Scene, downsample: float) -> np.ndarray:
    """Boolean lesion mask at ``1 / downsample`` (see :func:`label_mask`)."""
    return label_mask(scene, downsample) == 3


def scene_geojson(scene: Scene) -> dict[str, Any]:
    """Ground truth as a GeoJSON FeatureCollection (level-0 pixels, QuPath conventions),
    recording the slide's pixel size (``properties.mpp_xy``, as our exports do) so that
    File > Open lays it on the slide in micrometres."""
    features = []
    counts: dict[str, int] = {}
    for region in (scene.tissue, *scene.regions):
        counts[region.kind] = counts.get(region.kind, 0) + 1
        ring = np.round(region.polygon_xy(), 2).tolist()
        ring.append(ring[0])
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "annotation",
                    "name": f"{region.kind} {counts[region.kind]}",
                    "classification": {"name": region.kind, "color": CLASS_COLORS[region.kind]},
                    "isLocked": True,
                },
            }
        )
    return {
        "type": "FeatureCollection",
        "properties": {"mpp_xy": [float(scene.mpp), float(scene.mpp)]},
        "features": features,
    }


def class_tiles(
    path: str | Path, scene: Scene, label: int, side: int, n: int, seed: int = 0
) -> np.ndarray:
    """``(k, side, side, 3)`` uint8 level-0 tiles of the slide at ``path`` (made from
    ``scene``), centred on ``k = min(n, available)`` random pixels whose ground truth is
    ``label`` (see :data:`LABELS`; drawn on the label mask at downsample 4)."""
    from napari_histattn.io.slide import open_slide

    step = 4
    ys, xs = np.nonzero(label_mask(scene, step) == label)
    if ys.size == 0:
        raise ValueError(f"the scene has no pixel of label {label} ({LABELS.get(label)})")
    pick = np.random.default_rng(seed).choice(ys.size, size=min(n, ys.size), replace=False)
    corner = step // 2 - side // 2
    with open_slide(path) as slide:
        return np.stack(
            [
                np.asarray(
                    slide.read_region(
                        (int(xs[i]) * step + corner, int(ys[i]) * step + corner), 0, (side, side)
                    )
                )[..., :3]
                for i in pick
            ]
        )
