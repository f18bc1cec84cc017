"""The layout of a synthetic slide: tissue outline, lesions and benign look-alikes.

A :class:`Scene` is a small, frozen, JSON-serialisable description. Everything
else (pixels at any window and resolution, masks, GeoJSON) is a pure function
of it, so any region of a 100,000 x 100,000 px slide can be rendered on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from napari_histattn.errors import HistattnError
from napari_histattn.io.synthetic._geometry import Region, polygon_area, star_radii

RENDER_VERSION = 2
DIFFUSE_KINDS = ("hyperchromatic",)
REGION_KINDS = ("lesion", "lookalike")

# Default lesion radius in micrometres (a 0.4 mm focus): 400 px at 0.5 um/px.
DEFAULT_LESION_RADIUS_UM = 200.0


class SceneError(HistattnError, ValueError):
    """The requested synthetic slide cannot be laid out (bad size, too many or too large lesions)."""


@dataclass(frozen=True)
class Scene:
    """Everything that determines a synthetic slide.

    Attributes
    ----------
    width, height
        Level-0 size in pixels.
    mpp
        Micrometres per level-0 pixel.
    seed
        Seed of the layout and of every nucleus (through a counter-based hash).
    tissue
        The tissue outline; outside it is glass (white).
    regions
        Lesions (``kind == "lesion"``) and benign look-alikes (``"lookalike"``).
    diffuse
        ``None`` or ``"hyperchromatic"``: every normal nucleus of the tissue is a
        little larger and darker (a slide-level "diffuse" class).
    stain
        ``(eosin, hematoxylin)`` intensity factors of this slide (stain variation).
    render_version
        Version of the renderer's appearance model; part of cache keys.
    """

    width: int
    height: int
    mpp: float
    seed: int
    tissue: Region
    regions: tuple[Region, ...] = ()
    diffuse: str | None = None
    stain: tuple[float, float] = (1.0, 1.0)
    render_version: int = RENDER_VERSION

    @property
    def size_wh(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def lesions(self) -> tuple[Region, ...]:
        return tuple(r for r in self.regions if r.kind == "lesion")

    @property
    def lookalikes(self) -> tuple[Region, ...]:
        return tuple(r for r in self.regions if r.kind == "lookalike")

    @cached_property
    def tissue_shape(self) -> Any:
        """The tissue outline as a prepared shapely polygon (for fast window tests)."""
        import shapely

        poly = shapely.Polygon(self.tissue.polygon_xy())
        shapely.prepare(poly)
        return poly

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` inverts it exactly."""
        return {
            "width": self.width,
            "height": self.height,
            "mpp": self.mpp,
            "seed": self.seed,
            "tissue": self.tissue.to_dict(),
            "regions": [r.to_dict() for r in self.regions],
            "diffuse": self.diffuse,
            "stain": list(self.stain),
            "render_version": self.render_version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        return cls(
            width=int(d["width"]),
            height=int(d["height"]),
            mpp=float(d["mpp"]),
            seed=int(d["seed"]),
            tissue=Region.from_dict(d["tissue"]),
            regions=tuple(Region.from_dict(r) for r in d["regions"]),
            diffuse=d.get("diffuse"),
            stain=(float(d["stain"][0]), float(d["stain"][1])),
            render_version=int(d.get("render_version", RENDER_VERSION)),
        )


def _clip_to_rect(
    center_xy: tuple[float, float], radii: np.ndarray, width: float, height: float, margin: float
) -> np.ndarray:
    """Shorten rays so that the star polygon stays inside the image minus a margin."""
    n = radii.size
    ang = 2.0 * np.pi * np.arange(n) / n
    c, s = np.cos(ang), np.sin(ang)
    cx, cy = center_xy
    with np.errstate(divide="ignore"):
        tx = np.where(
            c > 1e-9, (width - margin - cx) / c, np.where(c < -1e-9, (margin - cx) / c, np.inf)
        )
        ty = np.where(
            s > 1e-9, (height - margin - cy) / s, np.where(s < -1e-9, (margin - cy) / s, np.inf)
        )
    return np.minimum(radii, np.minimum(tx, ty))


def _n_vertices(radius: float, lo: int, hi: int) -> int:
    # About one vertex per 6 px of outline, so the polygon follows the smooth shape closely.
    return int(np.clip(2.0 * np.pi * radius / 6.0, lo, hi))


def make_scene(
    width: int,
    height: int,
    *,
    n_lesions: int = 2,
    lesion_radius_px: float | None = None,
    n_lookalikes: int = 2,
    lookalike_radius_px: float | None = None,
    diffuse: str | None = None,
    tissue_fraction: float = 0.6,
    mpp: float = 0.5,
    seed: int = 0,
) -> Scene:
    """Lay out a synthetic slide.

    Parameters
    ----------
    width, height
        Level-0 size in pixels (at least 64 each).
    n_lesions, n_lookalikes
        Number of lesions and of benign look-alikes (lymphoid aggregates). Both
        kinds draw their size and outline from the same distribution, so that
        only nuclear morphology tells them apart.
    lesion_radius_px
        Mean radius of a lesion in level-0 pixels (each region varies by +-15 %).
        Default: 200 um, that is ``200 / mpp`` px.
    lookalike_radius_px
        Mean radius of a look-alike; default: the lesion radius.
    diffuse
        ``None`` or ``"hyperchromatic"`` (slightly larger, darker nuclei everywhere).
    tissue_fraction
        Target fraction of the image covered by tissue (0.05 to 0.9).
    mpp
        Micrometres per level-0 pixel.
    seed
        Seed; the same arguments give the same scene.

    Returns
    -------
    Scene

    Raises
    ------
    SceneError
        Invalid arguments, or the regions do not fit inside the tissue.
    """
    if int(width) < 64 or int(height) < 64:
        raise SceneError(f"slide size must be at least 64 x 64 px, got {width} x {height}")
    if not (mpp > 0 and np.isfinite(mpp)):
        raise SceneError(f"mpp must be a positive number, got {mpp}")
    if n_lesions < 0 or n_lookalikes < 0:
        raise SceneError(
            f"region counts must be >= 0, got {n_lesions} lesions, {n_lookalikes} look-alikes"
        )
    if not (0.05 <= tissue_fraction <= 0.9):
        raise SceneError(f"tissue_fraction must be within [0.05, 0.9], got {tissue_fraction}")
    if diffuse is not None and diffuse not in DIFFUSE_KINDS:
        raise SceneError(f"unknown diffuse variant {diffuse!r}; choose one of {DIFFUSE_KINDS}")
    if lesion_radius_px is None:
        lesion_radius_px = DEFAULT_LESION_RADIUS_UM / mpp
    if lookalike_radius_px is None:
        lookalike_radius_px = lesion_radius_px
    for name, r in (("lesion", lesion_radius_px), ("look-alike", lookalike_radius_px)):
        if not (r > 0 and np.isfinite(r)):
            raise SceneError(f"{name} radius must be a positive number of pixels, got {r}")
    width, height = int(width), int(height)
    rng = np.random.default_rng([int(seed), 0x5CE7E])

    # Tissue: a lobulated blob, an ellipse filling the image, perturbed and scaled to the
    # requested area fraction, then clipped to stay off the image border.
    n_t = _n_vertices(0.5 * max(width, height), 256, 1440)
    ang = 2.0 * np.pi * np.arange(n_t) / n_t
    a, b = 0.5 * width, 0.5 * height
    ellipse = 1.0 / np.sqrt((np.cos(ang) / a) ** 2 + (np.sin(ang) / b) ** 2)
    shape = star_radii(rng, n_t, harmonics=7, amplitude=0.22, base=ellipse)
    center = (
        0.5 * width + rng.uniform(-0.03, 0.03) * width,
        0.5 * height + rng.uniform(-0.03, 0.03) * height,
    )
    margin = 0.02 * min(width, height) + 2.0
    target = tissue_fraction * width * height
    scale = np.sqrt(target / polygon_area(shape))
    for _ in range(20):
        radii = _clip_to_rect(center, shape * scale, width, height, margin)
        area = polygon_area(radii)
        if abs(area - target) < 0.002 * target:
            break
        scale *= np.sqrt(target / area)
    tissue = Region("tissue", (round(center[0], 3), round(center[1], 3)), tuple(np.round(radii, 3)))

    stain = (round(float(rng.uniform(0.9, 1.1)), 4), round(float(rng.uniform(0.9, 1.1)), 4))
    regions = _place_regions(
        rng,
        tissue,
        ["lesion"] * n_lesions + ["lookalike"] * n_lookalikes,
        [lesion_radius_px] * n_lesions + [lookalike_radius_px] * n_lookalikes,
    )
    return Scene(
        width=width,
        height=height,
        mpp=float(mpp),
        seed=int(seed),
        tissue=tissue,
        regions=regions,
        diffuse=diffuse,
        stain=stain,
    )


def _place_regions(
    rng: np.random.Generator, tissue: Region, kinds: list[str], radii_px: list[float]
) -> tuple[Region, ...]:
    import shapely

    if not kinds:
        return ()
    tissue_poly = shapely.Polygon(tissue.polygon_xy())
    x0, y0, x1, y1 = tissue.bbox_l0
    # Shapes first (so a restart only moves them), in a shuffled order so that lesions
    # and look-alikes get the same share of good spots.
    shapes = []
    for i in rng.permutation(len(kinds)):
        kind, mean_r = kinds[i], float(radii_px[i])
        r = mean_r * rng.uniform(0.85, 1.15)
        radii = star_radii(rng, _n_vertices(r, 64, 720), harmonics=6, amplitude=0.28)
        radii *= r / np.sqrt(polygon_area(radii) / np.pi)
        inner = tissue_poly.buffer(-(0.25 * r + 16.0))
        shapely.prepare(inner)
        shapes.append((kind, r, np.round(radii, 3), inner))
    # Random sequential placement with restarts; regions keep a margin from the tissue
    # edge and from each other.
    for _ in range(30):
        placed: list[Region] = []
        polys: list[Any] = []
        for kind, r, radii, inner in shapes:
            for _ in range(300):
                c = (round(rng.uniform(x0, x1), 3), round(rng.uniform(y0, y1), 3))
                region = Region(kind, c, tuple(radii))
                poly = shapely.Polygon(region.polygon_xy())
                if not inner.contains(poly):
                    continue
                if any(
                    poly.distance(p) < 0.15 * (r + q.mean_radius) + 24.0
                    for p, q in zip(polys, placed, strict=True)
                ):
                    continue
                placed.append(region)
                polys.append(poly)
                break
            else:
                break
        if len(placed) == len(shapes):
            # Deterministic order by kind then position, independent of placement order.
            placed.sort(key=lambda reg: (reg.kind, reg.center_xy))
            return tuple(placed)
    raise SceneError(
        f"cannot fit {len(kinds)} regions (lesions and look-alikes) of radius about "
        f"{max(radii_px):.0f} px inside a tissue outline of about {tissue.mean_radius:.0f} px "
        "radius; use fewer or smaller regions or a larger slide"
    )
