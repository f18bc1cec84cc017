"""Star-shaped polygons and a counter-based hash RNG for the synthetic slide generator.

Every region of a synthetic scene (the tissue outline, lesions, look-alikes) is a
polygon that is star-shaped about its centre: vertex ``k`` lies at angle
``2 pi k / n`` and radius ``radii[k]``. That makes the point-in-polygon test a
closed form that is cheap to vectorise (one ``arctan2`` and one cross product
per point), and it is *exactly* the polygon written to GeoJSON, so the rendered
image, the mask and the ground truth agree to the pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

_TWO_PI = 2.0 * np.pi


@dataclass(frozen=True)
class Region:
    """A star-shaped polygon in level-0 pixels.

    Attributes
    ----------
    kind
        ``"tissue"``, ``"lesion"`` or ``"lookalike"``.
    center_xy
        Centre (x, y) in level-0 pixels; every ray from it crosses the outline once.
    radii
        Distance from the centre to vertex ``k``, which lies at angle ``2 pi k / n``.
    """

    kind: str
    center_xy: tuple[float, float]
    radii: tuple[float, ...]

    @cached_property
    def _edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Per edge k (vertex k -> k+1): the edge vector and cross(P_k - c, e_k). A point
        # p at angle in sector k has rho = cross(p - c, e_k) / cross(P_k - c, e_k),
        # which is 1 on the edge, < 1 inside and > 1 outside.
        r = np.asarray(self.radii, dtype=np.float64)
        n = r.size
        ang = _TWO_PI * np.arange(n) / n
        px, py = r * np.cos(ang), r * np.sin(ang)
        ex, ey = np.roll(px, -1) - px, np.roll(py, -1) - py
        num = px * ey - py * ex
        return ex, ey, num

    def polygon_xy(self) -> np.ndarray:
        """Vertices as an ``(n, 2)`` float array of level-0 (x, y), not closed."""
        r = np.asarray(self.radii, dtype=np.float64)
        ang = _TWO_PI * np.arange(r.size) / r.size
        cx, cy = self.center_xy
        return np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], axis=1)

    @property
    def bbox_l0(self) -> tuple[float, float, float, float]:
        """``(x_min, y_min, x_max, y_max)`` in level-0 pixels."""
        poly = self.polygon_xy()
        return (
            float(poly[:, 0].min()),
            float(poly[:, 1].min()),
            float(poly[:, 0].max()),
            float(poly[:, 1].max()),
        )

    @property
    def mean_radius(self) -> float:
        return float(np.mean(self.radii))

    def rho(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Normalised radial coordinate of points: < 1 inside, 1 on the outline, > 1 outside.

        ``x`` and ``y`` broadcast against each other (level-0 pixels).
        """
        ex, ey, num = self._edges
        n = num.size
        dx = np.asarray(x, dtype=np.float64) - self.center_xy[0]
        dy = np.asarray(y, dtype=np.float64) - self.center_xy[1]
        dx, dy = np.broadcast_arrays(dx, dy)
        theta = np.arctan2(dy, dx)
        k = np.floor(theta * (n / _TWO_PI)).astype(np.int64) % n
        return (dx * ey[k] - dy * ex[k]) / num[k]

    def overlaps_bbox(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        bx0, by0, bx1, by1 = self.bbox_l0
        return not (bx1 < x0 or bx0 > x1 or by1 < y0 or by0 > y1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "center_xy": list(self.center_xy), "radii": list(self.radii)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Region:
        cx, cy = d["center_xy"]
        return cls(
            kind=str(d["kind"]),
            center_xy=(float(cx), float(cy)),
            radii=tuple(float(r) for r in d["radii"]),
        )


def star_radii(
    rng: np.random.Generator,
    n: int,
    harmonics: int,
    amplitude: float,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """Radii of a smooth irregular closed outline with unit mean log-radius.

    ``base`` (length ``n``) is an optional base shape (for example an ellipse)
    that the random harmonics perturb.
    """
    ang = _TWO_PI * np.arange(n) / n
    log_r = np.zeros(n)
    for j in range(1, harmonics + 1):
        a = amplitude * rng.uniform(0.3, 1.0) / j**1.2
        log_r += a * np.cos(j * ang + rng.uniform(0.0, _TWO_PI))
    r = np.exp(log_r)
    if base is not None:
        r = r * base
    return r


def polygon_area(radii: np.ndarray) -> float:
    """Area of a star polygon with vertices at uniform angles."""
    n = radii.size
    return float(0.5 * np.sin(_TWO_PI / n) * np.sum(radii * np.roll(radii, -1)))


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0x165667B19E3779F9)
_M4 = np.uint64(0xBF58476D1CE4E5B9)
_M5 = np.uint64(0x94D049BB133111EB)


def hash_u01(seed: int, stream: int, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) float32 from integer coordinates, as a pure function.

    A counter-based generator (splitmix64 finaliser): the value for grid cell
    ``(gx, gy)`` depends only on the seed, the stream number and the cell, so any
    window of the slide regenerates the same nuclei without shared state.
    """
    key = np.uint64((seed * 0x2545F491 + stream * 0x9E3779B1 + 0x632BE5AB) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = np.asarray(gx, dtype=np.int64).astype(np.uint64) * _M1
        z ^= np.asarray(gy, dtype=np.int64).astype(np.uint64) * _M2
        z ^= key * _M3
        z ^= z >> np.uint64(30)
        z *= _M4
        z ^= z >> np.uint64(27)
        z *= _M5
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))
