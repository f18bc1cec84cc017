"""Procedural H&E-like rendering of any window of a synthetic scene.

The appearance model is Beer-Lambert colour mixing of two stains, as in colour
deconvolution (Ruifrok & Johnston 2001): every pixel has an eosin optical
density (stroma, cytoplasm) and a hematoxylin optical density (nuclei), and
``RGB = 255 * exp(-(OD_glass + OD_E * e + OD_H * h))``.

Nuclei come from fixed global grids, one grid per nuclear class: grid cell
``(gx, gy)`` holds at most one nucleus whose position, shape and stain are
drawn from a counter-based hash of ``(seed, class, gx, gy)``. A window renders
the nuclei of every cell whose nucleus can reach into it, so tiles join
seamlessly and any window is independent of any other.

Nuclear classes (sizes in micrometres, so the slide scales with ``mpp``):

* ``normal``: sparse spindle and oval stromal nuclei, aligned with the fibres.
* ``lesion``: crowded, enlarged, pleomorphic nuclei (irregular outline, coarse
  clumped chromatin, accentuated membrane, nucleoli).
* ``lymph`` (benign look-alike, a lymphoid aggregate): small, round, uniform
  nuclei. They sit in tight clumps on the lesion's own site grid: every site
  draws a nuclear area and stain from the lesion's distributions and fills that
  area with 1-5 small round cells instead of one large pleomorphic nucleus. The
  sites, their density and their stain budget are the lesion's, so at 8-16 um/px
  (where a site is one or two pixels) the two kinds have the same statistics;
  only at full resolution do size, shape, chromatin and nucleoli tell them apart.

Fine textures (collagen fibres, clefts, cytoplasm granularity, chromatin) are
periodic tables (1024 px) shared by all scenes and offset per seed; slowly
varying fields (stain intensity, fibre orientation) are hashed value noise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from napari_histattn.io.synthetic._geometry import Region, hash_u01
from napari_histattn.io.synthetic.scene import Scene

# Stain optical-density directions (unit vectors, RGB). Eosin gives pink, hematoxylin
# blue-purple; close to Ruifrok & Johnston's, shifted for a typical modern H&E look.
E_VEC = np.array([0.10, 0.86, 0.50], dtype=np.float32)
E_VEC /= np.linalg.norm(E_VEC)
H_VEC = np.array([0.62, 0.74, 0.26], dtype=np.float32)
H_VEC /= np.linalg.norm(H_VEC)

BACKGROUND = 243  # glass, grey level of every channel outside the tissue
_BG_OD = np.float32(-np.log(BACKGROUND / 255.0))

_P = 1024  # period of the fine texture tables, px
_N_ORIENT = 4  # fibre orientations in the tables: 0, 45, 90, 135 degrees
# Above this downsample, nuclei are rendered by their expected contribution
# instead of individually (thumbnails of huge slides).
_EXACT_NUCLEI_MAX_DS = 24.0


@dataclass(frozen=True)
class NucleusClass:
    """Parameters of one nuclear population (lengths in micrometres)."""

    name: str
    stream: int  # hash stream base: distinct per class
    grid_um: float  # one candidate nucleus per grid cell
    keep: float  # probability that a candidate exists (density)
    jitter: float  # position jitter as a fraction of the grid cell
    radius_um: tuple[float, float]  # long semi-axis range
    aspect: tuple[float, float]  # short / long semi-axis range
    harmonics: tuple[float, float]  # outline irregularity amplitude range (modes 2-5)
    od: tuple[float, float]  # hematoxylin optical density range
    chromatin: float  # amplitude of the chromatin texture
    coarse: bool  # coarse clumped chromatin (lesion) instead of fine (benign)
    rim: float  # membrane accentuation
    nucleolus: float  # probability of a visible nucleolus
    align: bool  # long axis follows the fibre orientation
    # Clumped class: each site fills the area of one drawn nucleus (radius_um, aspect)
    # with 1-5 small round cells of this radius range, in a ring.
    clump_um: tuple[float, float] | None = None

    def scaled(self, size: float, od: float, keep: float) -> NucleusClass:
        return replace(
            self,
            radius_um=(self.radius_um[0] * size, self.radius_um[1] * size),
            od=(self.od[0] * od, self.od[1] * od),
            keep=min(1.0, self.keep * keep),
        )


NORMAL = NucleusClass(
    name="normal",
    stream=100,
    grid_um=15.0,
    keep=0.55,
    jitter=0.8,
    radius_um=(2.6, 3.8),
    aspect=(0.3, 0.75),
    harmonics=(0.0, 0.04),
    od=(0.9, 1.35),
    chromatin=0.18,
    coarse=False,
    rim=0.1,
    nucleolus=0.0,
    align=True,
)
LESION = NucleusClass(
    name="lesion",
    stream=200,
    grid_um=11.5,
    keep=0.9,
    jitter=0.45,
    radius_um=(4.2, 6.6),
    aspect=(0.55, 0.95),
    harmonics=(0.06, 0.2),
    od=(0.75, 1.5),
    chromatin=0.75,
    coarse=True,
    rim=0.55,
    nucleolus=0.6,
    align=False,
)
# The constants of the look-alike below were tuned by measurement, not derived (lesion
# nuclei overlap and saturate, clumps do not): lesion vs look-alike mean colour within
# 2 grey levels, and power spectra of region interiors within 14 % in every band from
# 12 to 128 um wavelength, the scales an 8-16 um/px view can see.
_LYMPH_OD_GAIN = 1.22  # stain of a site: the lesion's times this
LYMPH = NucleusClass(
    name="lymph",
    stream=300,
    # Sites, site area and stain drawn as the lesion's, so that low resolution cannot tell
    # them apart; each site then becomes a clump (_draw_clumps).
    grid_um=LESION.grid_um,
    keep=LESION.keep,
    jitter=LESION.jitter,
    radius_um=LESION.radius_um,
    aspect=LESION.aspect,
    harmonics=(0.0, 0.025),
    od=(LESION.od[0] * _LYMPH_OD_GAIN, LESION.od[1] * _LYMPH_OD_GAIN),
    chromatin=0.12,
    coarse=False,
    rim=0.15,
    nucleolus=0.0,
    align=False,
    clump_um=(2.5, 3.1),
)
_CLUMP_MAX = 5  # cells per clump
_CLUMP_GAP_UM = 1.0  # gap between neighbouring cells of a clump (they stay separable)
_CLUMP_ASPECT = (0.86, 1.0)
# Ring size: at 0.5 the clump's ink spreads as far as the nucleus' would (second moment
# about the site); 0.6 matches the spectrum at 12-32 um wavelengths.
_CLUMP_SPREAD = 0.6
# Extra site-to-site stain variation (uniform, relative): saturation in the dark small
# cells compresses the variation of a site's ink, which sets the power at 32-128 um.
_CLUMP_OD_SPREAD = 0.9
_HYPERCHROMATIC = (1.22, 1.3, 1.15)  # size, od, density factors of the diffuse variant

# Eosin optical density of stroma (before fibre texture) and of the cellular
# background (cytoplasm) inside lesions and look-alikes; the cytoplasm is denser than
# stroma so that a region of either kind stands out from the stroma by ~25 grey levels.
_STROMA_OD = 0.50
_CELL_OD = 0.48
# Fade of region density at the outline, as a fraction of the normalised radius.
_EDGE_FADE = 0.15


def nucleus_classes(scene: Scene) -> tuple[NucleusClass, NucleusClass, NucleusClass]:
    """``(normal, lesion, lymph)`` classes for a scene (with its diffuse variant applied)."""
    normal = NORMAL
    if scene.diffuse == "hyperchromatic":
        normal = NORMAL.scaled(*_HYPERCHROMATIC)
    return normal, LESION, LYMPH


# ----------------------------------------------------------------------------- textures


@dataclass(frozen=True)
class _Textures:
    fibres: np.ndarray  # (4, P, P) eosin multiplier, mean 1, one per orientation
    cells: np.ndarray  # (P, P) cytoplasm granularity multiplier, mean 1
    fine: np.ndarray  # (P, P) fine isotropic noise, N(0, 1), benign chromatin
    coarse: np.ndarray  # (P, P) clumped chromatin multiplier, mean 1
    # Block statistics (mean, variance) of fibres and cells for 2**L downsampling, L >= 1.
    fibre_pyr: tuple[tuple[np.ndarray, np.ndarray], ...]
    cell_pyr: tuple[tuple[np.ndarray, np.ndarray], ...]


def _filtered_noise(rng: np.random.Generator, envelope: np.ndarray) -> np.ndarray:
    """White noise filtered by a frequency ``envelope`` (real-FFT layout), periodic, N(0, 1)."""
    from scipy import fft

    noise = rng.standard_normal((_P, _P), dtype=np.float32)
    out = fft.irfft2(fft.rfft2(noise) * envelope, s=(_P, _P))
    out -= out.mean()
    out /= out.std()
    return out.astype(np.float32)


def _freqs() -> tuple[np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(_P).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(_P).astype(np.float32)[None, :]
    return fy, fx


def _oriented_envelope(angle: float, along_px: float, across_px: float) -> np.ndarray:
    fy, fx = _freqs()
    # Frequency along the fibre direction is small (long fibres), across is larger.
    fu = fx * np.cos(angle) + fy * np.sin(angle)
    fv = -fx * np.sin(angle) + fy * np.cos(angle)
    return np.exp(-2.0 * np.pi**2 * ((fu * along_px) ** 2 + (fv * across_px) ** 2))


def _iso_envelope(scale_px: float) -> np.ndarray:
    fy, fx = _freqs()
    return np.exp(-2.0 * np.pi**2 * (fx**2 + fy**2) * scale_px**2)


def _pyramid(tex: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Block mean and variance of a (..., P, P) texture for blocks of 2, 4, ..., P."""
    if tex.ndim == 3:
        per = [_pyramid(t) for t in tex]
        return tuple(
            (np.stack([p[k][0] for p in per]), np.stack([p[k][1] for p in per]))
            for k in range(len(per[0]))
        )
    levels = []
    mean = tex.astype(np.float64)
    sq = mean**2
    while mean.shape[-1] > 1:
        shape = (mean.shape[0] // 2, 2, mean.shape[1] // 2, 2)
        mean = mean.reshape(shape).mean(axis=(1, 3))
        sq = sq.reshape(shape).mean(axis=(1, 3))
        levels.append((mean.astype(np.float32), np.maximum(sq - mean**2, 0.0).astype(np.float32)))
    return tuple(levels)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@lru_cache(maxsize=1)
def _textures() -> _Textures:
    # Fixed seed: the tables are shared by all scenes (each scene offsets them by its
    # seed), so they are computed once per process.
    rng = np.random.default_rng(20240601)
    fibres = np.empty((_N_ORIENT, _P, _P), dtype=np.float32)
    for i in range(_N_ORIENT):
        ang = np.pi * i / _N_ORIENT
        fib = _filtered_noise(rng, _oriented_envelope(ang, 14.0, 1.3))
        bundles = _filtered_noise(rng, _oriented_envelope(ang, 40.0, 6.0))
        wavy = _filtered_noise(rng, _iso_envelope(3.0))
        # Collagen: streaky fibres, pale clefts between bundles.
        m = np.clip(1.0 + 0.38 * fib + 0.12 * wavy, 0.3, None)
        cleft = _smoothstep((bundles - 1.05) / 0.5)
        m *= 1.0 - 0.8 * cleft
        fibres[i] = m / m.mean()
    cells = np.clip(1.0 + 0.22 * _filtered_noise(rng, _iso_envelope(1.2)), 0.3, None)
    cells /= cells.mean()
    fine = _filtered_noise(rng, _iso_envelope(0.8)).astype(np.float32)
    blobs = _filtered_noise(rng, _iso_envelope(1.1))
    # Clumped chromatin: dark clumps on a pale (vesicular) background.
    coarse = 0.45 + 1.6 * _smoothstep((blobs + 0.1) / 1.2)
    coarse /= coarse.mean()
    return _Textures(
        fibres=fibres,
        cells=cells.astype(np.float32),
        fine=fine,
        coarse=coarse.astype(np.float32),
        fibre_pyr=_pyramid(fibres),
        cell_pyr=_pyramid(cells),
    )


def _tex_offset(scene: Scene) -> tuple[int, int]:
    u = hash_u01(scene.seed, 7, np.array([1, 2]), np.array([3, 4]))
    return int(u[0] * _P), int(u[1] * _P)


def _gather(tex: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``tex[..., ys, xs]`` on an outer grid with periodic wrap (integer coordinates)."""
    return tex[..., (ys % tex.shape[-2])[:, None], (xs % tex.shape[-1])[None, :]]


def _sample_bilinear(tex: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Periodic bilinear sample of ``tex`` (..., H, W) at an outer grid of float coordinates."""
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    fy = (ys - y0).astype(np.float32)[:, None]
    fx = (xs - x0).astype(np.float32)[None, :]
    a = _gather(tex, y0, x0)
    b = _gather(tex, y0, x0 + 1)
    c = _gather(tex, y0 + 1, x0)
    d = _gather(tex, y0 + 1, x0 + 1)
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


# ----------------------------------------------------------------------------- value noise


def _lerp_outer(
    field: np.ndarray, iy: np.ndarray, fy: np.ndarray, ix: np.ndarray, fx: np.ndarray
) -> np.ndarray:
    """Interpolate ``field`` (..., ny, nx) on an outer grid: rows ``iy + fy``, columns ``ix + fx``.

    Gathers instead of matrix products: BLAS threads stall on a busy 2-core machine.
    """
    fy = fy.astype(np.float32)[:, None]
    fx = fx.astype(np.float32)
    rows = field[..., iy, :] * (1.0 - fy) + field[..., iy + 1, :] * fy
    return rows[..., ix] * (1.0 - fx) + rows[..., ix + 1] * fx


def _value_noise_grid(
    seed: int, stream: int, ys: np.ndarray, xs: np.ndarray, spacing: float
) -> np.ndarray:
    """Smooth noise in [0, 1] on an outer grid of level-0 coordinates."""
    ty, tx = ys / spacing, xs / spacing
    iy, ix = np.floor(ty).astype(np.int64), np.floor(tx).astype(np.int64)
    iy0, ix0 = int(iy.min()), int(ix.min())
    gy, gx = np.meshgrid(np.arange(iy0, iy.max() + 2), np.arange(ix0, ix.max() + 2), indexing="ij")
    lattice = hash_u01(seed, stream, gx, gy)
    return _lerp_outer(lattice, iy - iy0, _smoothstep(ty - iy), ix - ix0, _smoothstep(tx - ix))


def _value_noise_points(
    seed: int, stream: int, y: np.ndarray, x: np.ndarray, spacing: float
) -> np.ndarray:
    """The same field as :func:`_value_noise_grid`, at scattered points."""
    ty, tx = y / spacing, x / spacing
    iy, ix = np.floor(ty).astype(np.int64), np.floor(tx).astype(np.int64)
    fy, fx = _smoothstep(ty - iy), _smoothstep(tx - ix)
    v00 = hash_u01(seed, stream, ix, iy)
    v01 = hash_u01(seed, stream, ix + 1, iy)
    v10 = hash_u01(seed, stream, ix, iy + 1)
    v11 = hash_u01(seed, stream, ix + 1, iy + 1)
    return ((v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy).astype(
        np.float32
    )


def _orientation_spacing(scene: Scene) -> float:
    return 300.0 / scene.mpp  # fibre direction changes over ~0.3 mm


def _stain_spacing(scene: Scene) -> float:
    return 500.0 / scene.mpp


def _orientation_weights(psi: np.ndarray) -> np.ndarray:
    """Blend weights (4, ...) of the four fibre tables for orientation ``psi`` in [0, pi)."""
    alphas = np.pi * np.arange(_N_ORIENT) / _N_ORIENT
    w = np.maximum(np.cos(2.0 * (psi[None] - alphas.reshape(-1, *([1] * psi.ndim)))), 0.0) ** 2
    return (w / w.sum(axis=0, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- regions


def _windows_regions(
    scene: Scene, x0: float, y0: float, x1: float, y1: float, pad: float
) -> list[Region]:
    return [r for r in scene.regions if r.overlaps_bbox(x0 - pad, y0 - pad, x1 + pad, y1 + pad)]


def _fade(rho: np.ndarray) -> np.ndarray:
    """Region weight: 1 well inside, 0 outside, linear over the last 15 % of the radius."""
    return np.clip((1.0 - rho) / _EDGE_FADE, 0.0, 1.0).astype(np.float32)


def _tissue_state(scene: Scene, x0: float, y0: float, x1: float, y1: float) -> str:
    """``"inside"``, ``"outside"`` or ``"edge"`` for a level-0 box."""
    import shapely

    box = shapely.box(x0, y0, x1, y1)
    poly = scene.tissue_shape
    if poly.contains(box):
        return "inside"
    if not poly.intersects(box):
        return "outside"
    return "edge"


# ----------------------------------------------------------------------------- nuclei


@dataclass
class _Nuclei:
    cls: NucleusClass
    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray  # long semi-axis, px
    q: np.ndarray  # aspect
    phi: np.ndarray
    od: np.ndarray
    harm_amp: np.ndarray  # (N, 4) modes 2..5
    harm_phase: np.ndarray
    nuc_dx: np.ndarray
    nuc_dy: np.ndarray
    nuc_on: np.ndarray
    half: int  # stamp half-size, px


_STAMP_BATCH_PX = 1 << 18  # stamp pixels per batch: bounds the temporaries to a few MB


def _batches(nuc: _Nuclei, step: int = 1) -> list[_Nuclei]:
    """Split nuclei into batches of about ``_STAMP_BATCH_PX`` stamp pixels."""
    side = len(range(-nuc.half, nuc.half + 1, step))
    per = max(1, _STAMP_BATCH_PX // (side * side))
    n = nuc.cx.size
    if n <= per:
        return [nuc]
    out = []
    for i in range(0, n, per):
        sl = slice(i, i + per)
        out.append(
            _Nuclei(
                cls=nuc.cls,
                cx=nuc.cx[sl],
                cy=nuc.cy[sl],
                a=nuc.a[sl],
                q=nuc.q[sl],
                phi=nuc.phi[sl],
                od=nuc.od[sl],
                harm_amp=nuc.harm_amp[sl],
                harm_phase=nuc.harm_phase[sl],
                nuc_dx=nuc.nuc_dx[sl],
                nuc_dy=nuc.nuc_dy[sl],
                nuc_on=nuc.nuc_on[sl],
                half=nuc.half,
            )
        )
    return out


def _stamp_half_px(cls: NucleusClass, mpp: float) -> int:
    """Half-size of one nucleus' stamp: its largest outline radius plus a margin."""
    harm = sum(cls.harmonics[1] / (1.0 + 0.3 * m) for m in range(4))
    # A clump's cells are its class's radius range, give or take 4 %.
    radius_um = cls.radius_um[1] if cls.clump_um is None else cls.clump_um[1] * 1.05
    return int(np.ceil(radius_um / mpp * (1.0 + harm) + 1.5))


def _max_extent_px(cls: NucleusClass, mpp: float) -> int:
    """How far from its site a class draws ink, px (a clump's ring included)."""
    ring_um = 0.0
    if cls.clump_um is not None:
        # The ring's long semi-axis is at most sqrt(_CLUMP_SPREAD) times the site's.
        ring_um = np.sqrt(_CLUMP_SPREAD) * cls.radius_um[1]
    return _stamp_half_px(cls, mpp) + int(np.ceil(ring_um / mpp))


def _candidates(
    scene: Scene, cls: NucleusClass, x0: float, y0: float, x1: float, y1: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Candidate nucleus centres of a class whose stamps can reach the box."""
    g = cls.grid_um / scene.mpp
    half = _max_extent_px(cls, scene.mpp)
    reach = half + g
    gx = np.arange(int(np.floor((x0 - reach) / g)), int(np.floor((x1 + reach) / g)) + 1)
    gy = np.arange(int(np.floor((y0 - reach) / g)), int(np.floor((y1 + reach) / g)) + 1)
    if gx.size == 0 or gy.size == 0:
        return None
    mesh_x, mesh_y = np.meshgrid(gx, gy)
    gxx, gyy = mesh_x.ravel(), mesh_y.ravel()
    s = cls.stream
    cx = (gxx + 0.5 + cls.jitter * (hash_u01(scene.seed, s, gxx, gyy) - 0.5)) * g
    cy = (gyy + 0.5 + cls.jitter * (hash_u01(scene.seed, s + 1, gxx, gyy) - 0.5)) * g
    inside = (cx > x0 - half) & (cx < x1 + half) & (cy > y0 - half) & (cy < y1 + half)
    keep_u = hash_u01(scene.seed, s + 2, gxx, gyy)
    return gxx[inside], gyy[inside], cx[inside], cy[inside], keep_u[inside]


# Lesions and look-alikes vary in cellularity and staining from region to region, with
# the same spread for both kinds: small differences that remain between the kinds at low
# resolution are then well inside the variation within each kind.
_REGION_CELLULARITY = (0.85, 1.1)
_REGION_STAIN = (0.9, 1.1)


def _region_character(scene: Scene, region: Region) -> tuple[float, float]:
    """``(cellularity, stain)`` factors of a lesion or look-alike, hashed from its centre."""
    cx = np.array([int(round(region.center_xy[0]))])
    cy = np.array([int(round(region.center_xy[1]))])
    u_c = float(hash_u01(scene.seed, 400, cx, cy)[0])
    u_s = float(hash_u01(scene.seed, 401, cx, cy)[0])
    lo_c, hi_c = _REGION_CELLULARITY
    lo_s, hi_s = _REGION_STAIN
    return lo_c + (hi_c - lo_c) * u_c, lo_s + (hi_s - lo_s) * u_s


def _region_kind(cls: NucleusClass) -> str | None:
    return {"lesion": "lesion", "lymph": "lookalike"}.get(cls.name)


def _density_weight(
    scene: Scene, cls: NucleusClass, cx: np.ndarray, cy: np.ndarray, regions: list[Region]
) -> np.ndarray:
    """Probability factor in [0, 1] for a class at nucleus centres."""
    region_w = {
        "lesion": np.zeros(cx.shape, np.float32),
        "lookalike": np.zeros(cx.shape, np.float32),
    }
    kind = _region_kind(cls)
    for r in regions:
        w = _fade(r.rho(cx, cy))
        if kind is not None and r.kind == kind:
            w = w * np.float32(_region_character(scene, r)[0])
        region_w[r.kind] = np.maximum(region_w[r.kind], w)
    if kind is not None:
        return region_w[kind]
    # Normal nuclei give way to a region by its outline's fade alone, whatever its cellularity.
    rho_t = scene.tissue.rho(cx, cy)
    tissue_w = np.clip((1.0 - rho_t) * scene.tissue.mean_radius / 6.0, 0.0, 1.0)
    return (tissue_w * (1.0 - np.maximum(region_w["lesion"], region_w["lookalike"]))).astype(
        np.float32
    )


def _region_stain(
    scene: Scene, cls: NucleusClass, cx: np.ndarray, cy: np.ndarray, regions: list[Region]
) -> np.ndarray:
    """Hematoxylin factor at nucleus centres: the slide's, times the region's own."""
    out = np.full(cx.shape, scene.stain[1], np.float32)
    kind = _region_kind(cls)
    for r in regions:
        if r.kind == kind:
            inside = r.rho(cx, cy) < 1.0
            out[inside] = scene.stain[1] * _region_character(scene, r)[1]
    return out


def _nuclei(
    scene: Scene,
    cls: NucleusClass,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    regions: list[Region],
) -> _Nuclei | None:
    cand = _candidates(scene, cls, x0, y0, x1, y1)
    if cand is None:
        return None
    gx, gy, cx, cy, keep_u = cand
    if cls.name != "normal" and not regions:
        return None
    prob = cls.keep * _density_weight(scene, cls, cx, cy, regions)
    sel = keep_u < prob
    if not sel.any():
        return None
    psi = None
    if cls.align:
        psi = np.pi * _value_noise_points(
            scene.seed, 11, cy[sel], cx[sel], _orientation_spacing(scene)
        )
    hema = _region_stain(scene, cls, cx[sel], cy[sel], regions)
    return _draw_nuclei(scene.seed, cls, gx[sel], gy[sel], cx[sel], cy[sel], scene.mpp, hema, psi)


def _draw_nuclei(
    seed: int,
    cls: NucleusClass,
    gx: np.ndarray,
    gy: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    mpp: float,
    hema: float | np.ndarray,
    psi: np.ndarray | None = None,
) -> _Nuclei:
    """Shape, stain and chromatin of the nuclei at sites ``(gx, gy)`` centred at ``(cx, cy)`` px.

    ``hema`` scales the hematoxylin stain (per site or for all); ``psi`` is the local
    fibre orientation for classes aligned with the fibres.
    """
    s = cls.stream

    def u(k: int) -> np.ndarray:
        return hash_u01(seed, s + k, gx, gy)

    def rng_range(k: int, lo_hi: tuple[float, float]) -> np.ndarray:
        return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * u(k)

    a = rng_range(3, cls.radius_um) / mpp
    q = rng_range(4, cls.aspect)
    phi = np.pi * u(5) if psi is None else psi + 0.35 * (u(5) - 0.5)
    od = rng_range(6, cls.od) * np.asarray(hema, np.float32)
    if cls.clump_um is not None:
        return _draw_clumps(seed, cls, gx, gy, cx, cy, mpp, a, q, phi, od)
    amp = np.stack([rng_range(7 + m, cls.harmonics) / (1.0 + 0.3 * m) for m in range(4)], axis=1)
    phase = np.stack([2.0 * np.pi * u(11 + m) for m in range(4)], axis=1)
    nr = 0.45 * np.sqrt(u(15))
    na = 2.0 * np.pi * u(16)
    return _Nuclei(
        cls=cls,
        cx=cx,
        cy=cy,
        a=a.astype(np.float32),
        q=q.astype(np.float32),
        phi=phi.astype(np.float32),
        od=od.astype(np.float32),
        harm_amp=amp.astype(np.float32),
        harm_phase=phase.astype(np.float32),
        nuc_dx=(nr * np.cos(na)).astype(np.float32),
        nuc_dy=(nr * np.sin(na)).astype(np.float32),
        nuc_on=u(17) < cls.nucleolus,
        half=_stamp_half_px(cls, mpp),
    )


def _draw_clumps(
    seed: int,
    cls: NucleusClass,
    gx: np.ndarray,
    gy: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    mpp: float,
    a: np.ndarray,
    q: np.ndarray,
    phi: np.ndarray,
    od: np.ndarray,
) -> _Nuclei:
    """Replace each site's nucleus (semi-axes ``a``, ``a q`` px, angle ``phi``) by a clump.

    The clump is a ring of small round cells around the site, sized so that the
    clump's ink spreads about as far as the nucleus' would (second moment about the
    site, scaled by ``_CLUMP_SPREAD``) and stained so that it removes about as much
    light: at a resolution where a site is a pixel or two, a clump and a nucleus look
    alike.
    """
    assert cls.clump_um is not None
    s = cls.stream
    r_lo, r_hi = cls.clump_um[0] / mpp, cls.clump_um[1] / mpp
    gap = _CLUMP_GAP_UM / mpp
    q_cell = 0.5 * (_CLUMP_ASPECT[0] + _CLUMP_ASPECT[1])
    r = r_lo + (r_hi - r_lo) * hash_u01(seed, s + 20, gx, gy)
    # Second moment of a uniform ellipse: a^2 (1 + q^2) / 4; of a ring of semi-axes
    # (R, R q) with cells of radius r: R^2 (1 + q^2) / 2 + r^2 / 2.
    ring_a = np.sqrt(np.maximum(_CLUMP_SPREAD * a * a - r * r / (1.0 + q * q), 0.0))
    # Ramanujan's approximation of the perimeter of the ellipse (ring_a, ring_a q).
    h_e = ((1.0 - q) / (1.0 + q)) ** 2
    perimeter = np.pi * ring_a * (1.0 + q) * (1.0 + 3.0 * h_e / (10.0 + np.sqrt(4.0 - 3.0 * h_e)))
    n = np.clip(np.floor(perimeter / (2.0 * r + gap)), 1, _CLUMP_MAX).astype(np.int64)
    ring_a = np.where(n > 1, ring_a, 0.0)
    # Stain: the cells cover less area than the nucleus, so they are darker.
    area_ratio = (a * a * q) / (n * r * r * q_cell)
    od_cell = od * area_ratio * (1.0 + _CLUMP_OD_SPREAD * (hash_u01(seed, s + 22, gx, gy) - 0.5))
    theta0 = 2.0 * np.pi * hash_u01(seed, s + 21, gx, gy)
    site = np.repeat(np.arange(n.size), n)
    j = np.arange(site.size) - np.repeat(np.cumsum(n) - n, n)
    cgx = gx[site] * _CLUMP_MAX + j
    cgy = gy[site]

    def u(k: int) -> np.ndarray:
        return hash_u01(seed, s + 30 + k, cgx, cgy)

    # Cells evenly spaced by arc length along the elliptical ring (even spacing of the
    # ellipse's parameter would crowd them at the ends of the long axis).
    t_grid = np.linspace(0.0, 2.0 * np.pi, 65)
    arc = np.concatenate(
        [
            np.zeros((n.size, 1)),
            np.cumsum(
                np.hypot(np.diff(np.cos(t_grid))[None, :], q[:, None] * np.diff(np.sin(t_grid))),
                axis=1,
            ),
        ],
        axis=1,
    )
    frac = (theta0[site] / (2.0 * np.pi) + j / n[site] + 0.02 * (u(0) - 0.5)) % 1.0
    target = frac * arc[site, -1]
    k = np.clip(np.sum(arc[site] <= target[:, None], axis=1) - 1, 0, t_grid.size - 2)
    seg = arc[site, k + 1] - arc[site, k]
    t = t_grid[k] + (target - arc[site, k]) / np.maximum(seg, 1e-12) * (t_grid[1] - t_grid[0])
    ex, ey = ring_a[site] * np.cos(t), ring_a[site] * q[site] * np.sin(t)
    c, sn = np.cos(phi[site]), np.sin(phi[site])
    cell_a = r[site] * (1.0 + 0.08 * (u(2) - 0.5))
    cell_q = _CLUMP_ASPECT[0] + (_CLUMP_ASPECT[1] - _CLUMP_ASPECT[0]) * u(3)
    amp = np.stack(
        [cls.harmonics[0] + (cls.harmonics[1] - cls.harmonics[0]) * u(4 + m) for m in range(4)],
        axis=1,
    ) / (1.0 + 0.3 * np.arange(4))
    phase = np.stack([2.0 * np.pi * u(8 + m) for m in range(4)], axis=1)
    m = site.size
    return _Nuclei(
        cls=cls,
        cx=cx[site] + ex * c - ey * sn,
        cy=cy[site] + ex * sn + ey * c,
        a=cell_a.astype(np.float32),
        q=cell_q.astype(np.float32),
        phi=(np.pi * u(12)).astype(np.float32),
        od=(od_cell[site] * (1.0 + 0.1 * (u(13) - 0.5))).astype(np.float32),
        harm_amp=amp.astype(np.float32),
        harm_phase=phase.astype(np.float32),
        nuc_dx=np.zeros(m, np.float32),
        nuc_dy=np.zeros(m, np.float32),
        nuc_on=np.zeros(m, bool),
        half=_stamp_half_px(cls, mpp),
    )


def _stamps(
    nuc: _Nuclei, tex: _Textures, offset: tuple[int, int], mpp: float, step: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-nucleus stamps: level-0 pixel x, y (N, S, S) int64 and hematoxylin OD (N, S, S).

    ``step > 1`` samples every ``step``-th pixel (for downsampled output, where each
    sample then stands for ``step**2`` pixels).
    """
    h = nuc.half
    off = np.arange(-h, h + 1, step)
    bx = np.floor(nuc.cx).astype(np.int64)
    by = np.floor(nuc.cy).astype(np.int64)
    px = bx[:, None, None] + off[None, None, :]
    py = by[:, None, None] + off[None, :, None]
    dx = (px + 0.5 - nuc.cx[:, None, None]).astype(np.float32)
    dy = (py + 0.5 - nuc.cy[:, None, None]).astype(np.float32)
    c, s = np.cos(nuc.phi)[:, None, None], np.sin(nuc.phi)[:, None, None]
    a = nuc.a[:, None, None]
    b = (nuc.a * nuc.q)[:, None, None]
    uu = (dx * c + dy * s) / a
    vv = (-dx * s + dy * c) / b
    rho = np.sqrt(uu * uu + vv * vv)
    inv = 1.0 / np.maximum(rho, 1e-6)
    c1, s1 = uu * inv, vv * inv
    # Outline radius 1 + sum_m A_m cos(m theta + p_m), m = 2..5, by the angle recurrence.
    boundary = np.ones_like(rho)
    ck, sk = c1 * c1 - s1 * s1, 2.0 * c1 * s1
    for m in range(4):
        pc = np.cos(nuc.harm_phase[:, m])[:, None, None]
        ps = np.sin(nuc.harm_phase[:, m])[:, None, None]
        boundary += nuc.harm_amp[:, m][:, None, None] * (ck * pc - sk * ps)
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
    mean_r = np.sqrt(a * b)
    inside_px = (boundary - rho) * mean_r  # ~ distance to the outline, px (positive inside)
    alpha = np.clip(inside_px / 0.9 + 0.5, 0.0, 1.0)
    cls = nuc.cls
    ox, oy = offset
    if cls.coarse:
        chrom = tex.coarse[(py + oy) % _P, (px + ox) % _P]
        texture = 1.0 + cls.chromatin * (chrom - 1.0)
    else:
        chrom = tex.fine[(py + oy) % _P, (px + ox) % _P]
        texture = 1.0 + cls.chromatin * chrom
    rim = 1.0 + cls.rim * np.exp(-(((inside_px - 1.0) / 1.3) ** 2))
    od = alpha * nuc.od[:, None, None] * np.maximum(texture, 0.1) * rim
    if cls.nucleolus > 0 and nuc.nuc_on.any():
        ncx = nuc.nuc_dx[:, None, None] * a
        ncy = nuc.nuc_dy[:, None, None] * a
        r2 = (dx - ncx) ** 2 + (dy - ncy) ** 2
        sig = 0.7 / mpp
        od = od + (nuc.nuc_on[:, None, None] * alpha) * 1.1 * np.exp(-r2 / (2 * sig * sig))
    px, py = np.broadcast_arrays(px, py)
    return px, py, od.astype(np.float32)


# ----------------------------------------------------------------------------- render


def render_region(
    scene: Scene,
    l0_xy: tuple[float, float],
    size_wh: tuple[int, int],
    downsample: float = 1.0,
) -> np.ndarray:
    """Render a window of a synthetic slide.

    Parameters
    ----------
    scene
        The slide layout (:func:`make_scene`).
    l0_xy
        Top-left corner of the window in level-0 pixels (may lie outside the slide:
        the pattern continues, glass outside the tissue).
    size_wh
        Output size (width, height) in output pixels, as OpenSlide's ``read_region``.
    downsample
        Level-0 pixels per output pixel. At 1 every nucleus is drawn; above 1 the
        output approximates the mean of the level-0 pixels it covers (nuclei are
        still placed individually up to a downsample of 24, then by their
        expected contribution).

    Returns
    -------
    numpy.ndarray
        ``(h, w, 3)`` uint8 RGB.
    """
    w, h = int(size_wh[0]), int(size_wh[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"size_wh must be positive, got {size_wh}")
    d = float(downsample)
    if not d >= 1.0:
        raise ValueError(f"downsample must be >= 1, got {downsample}")
    x0, y0 = float(l0_xy[0]), float(l0_xy[1])
    x1, y1 = x0 + w * d, y0 + h * d
    state = _tissue_state(scene, x0, y0, x1, y1)
    if state == "outside":
        return np.full((h, w, 3), BACKGROUND, dtype=np.uint8)
    if d == 1.0 and x0.is_integer() and y0.is_integer():
        return _render_full(scene, int(x0), int(y0), w, h, state)
    return _render_low(scene, x0, y0, w, h, d, state)


def _linear_index(t: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and fraction locating each ``t`` between consecutive ``grid`` points."""
    if grid.size == 1:
        return np.zeros(t.size, np.int64), np.zeros(t.size)
    i = np.clip(np.searchsorted(grid, t, side="right") - 1, 0, grid.size - 2)
    return i, np.clip((t - grid[i]) / (grid[i + 1] - grid[i]), 0.0, 1.0)


def _coarse(t: np.ndarray, spacing: float) -> np.ndarray:
    """Global grid (multiples of ``spacing``) covering ``t``: the same for every window."""
    i0 = int(np.floor(t[0] / spacing))
    i1 = int(np.ceil(t[-1] / spacing))
    return np.arange(i0, max(i1, i0 + 1) + 1) * spacing


def _eosin_fields(scene: Scene, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slowly varying eosin level (h, w) and fibre orientation weights (4, h, w).

    Both vary over hundreds of micrometres, so they are evaluated on a grid of
    16 px and interpolated linearly (two small matrix products).
    """
    cy, cx = _coarse(ys, 16.0), _coarse(xs, 16.0)
    e_lf = (
        _STROMA_OD
        * scene.stain[0]
        * (0.82 + 0.36 * _value_noise_grid(scene.seed, 10, cy, cx, _stain_spacing(scene)))
    )
    wts = _orientation_weights(
        np.pi * _value_noise_grid(scene.seed, 11, cy, cx, _orientation_spacing(scene))
    )
    if cy.size == 1 or cx.size == 1:
        e_lf = np.broadcast_to(e_lf, (ys.size, xs.size))
        return e_lf.astype(np.float32), np.broadcast_to(wts, (4, ys.size, xs.size)).astype(
            np.float32
        )
    iy, fy = _linear_index(ys, cy)
    ix, fx = _linear_index(xs, cx)
    e_full = _lerp_outer(e_lf.astype(np.float32), iy, fy, ix, fx)
    w_full = _lerp_outer(wts, iy, fy, ix, fx)
    return e_full.astype(np.float32), w_full.astype(np.float32)


def _region_weight(
    scene: Scene, regions: list[Region], ys: np.ndarray, xs: np.ndarray
) -> np.ndarray | None:
    if not regions:
        return None
    wreg = np.zeros((ys.size, xs.size), np.float32)
    for r in regions:
        bx0, by0, bx1, by1 = r.bbox_l0
        jy = np.nonzero((ys >= by0) & (ys <= by1))[0]
        jx = np.nonzero((xs >= bx0) & (xs <= bx1))[0]
        if jy.size == 0 or jx.size == 0:
            continue
        sub = _fade(r.rho(xs[None, jx], ys[jy, None]))
        view = wreg[jy[0] : jy[-1] + 1, jx[0] : jx[-1] + 1]
        np.maximum(view, sub, out=view)
    return wreg


def _tissue_alpha(scene: Scene, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    rho = scene.tissue.rho(xs[None, :], ys[:, None])
    # (1 - rho) * R is the distance to the outline along the ray: a ~1.5 px soft edge.
    return np.clip((1.0 - rho) * scene.tissue.mean_radius / 1.5 + 0.5, 0.0, 1.0).astype(np.float32)


def _all_nuclei(
    scene: Scene, x0: float, y0: float, x1: float, y1: float, regions: list[Region], step: int = 1
) -> list[_Nuclei]:
    """Nuclei of every class that reach the box, in batches of bounded stamp size."""
    out = []
    for cls in nucleus_classes(scene):
        nuc = _nuclei(scene, cls, x0, y0, x1, y1, regions)
        if nuc is not None:
            out.extend(_batches(nuc, step))
    return out


def _to_uint8(transmission: np.ndarray) -> np.ndarray:
    return np.clip(transmission * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def _render_full(scene: Scene, x0: int, y0: int, w: int, h: int, state: str) -> np.ndarray:
    tex = _textures()
    ox, oy = _tex_offset(scene)
    xs_i = np.arange(x0, x0 + w)
    ys_i = np.arange(y0, y0 + h)
    xs, ys = xs_i + 0.5, ys_i + 0.5
    pad = max(_max_extent_px(c, scene.mpp) for c in nucleus_classes(scene))
    regions = _windows_regions(scene, x0, y0, x0 + w, y0 + h, pad)

    e_lf, wts = _eosin_fields(scene, ys, xs)
    fib = np.zeros((h, w), np.float32)
    for i in range(_N_ORIENT):
        if wts[i].max() > 0:
            fib += wts[i] * _gather(tex.fibres[i], ys_i + oy, xs_i + ox)
    od_e = e_lf * fib
    wreg = _region_weight(scene, regions, ys, xs)
    if wreg is not None:
        cells = _CELL_OD * scene.stain[0] * _gather(tex.cells, ys_i + oy, xs_i + ox)
        od_e = od_e * (1.0 - wreg) + cells * wreg
    if state == "edge":
        od_e *= _tissue_alpha(scene, ys, xs)

    od_h = np.zeros(h * w, np.float32)
    for batch in _all_nuclei(scene, x0, y0, x0 + w, y0 + h, regions):
        px, py, od = _stamps(batch, tex, (ox, oy), scene.mpp)
        ix, iy = px - x0, py - y0
        ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h) & (od > 1e-3)
        od_h += np.bincount((iy[ok] * w + ix[ok]), weights=od[ok], minlength=h * w).astype(
            np.float32
        )
    total = _BG_OD + od_e[..., None] * E_VEC + od_h.reshape(h, w)[..., None] * H_VEC
    return _to_uint8(np.exp(-total))


def _render_low(
    scene: Scene, x0: float, y0: float, w: int, h: int, d: float, state: str
) -> np.ndarray:
    tex = _textures()
    ox, oy = _tex_offset(scene)
    xs = x0 + (np.arange(w) + 0.5) * d
    ys = y0 + (np.arange(h) + 0.5) * d
    x1, y1 = x0 + w * d, y0 + h * d
    pad = max(_max_extent_px(c, scene.mpp) for c in nucleus_classes(scene))
    regions = _windows_regions(scene, x0, y0, x1, y1, pad)

    # Fine textures: block mean and variance from the texture pyramid at the nearest
    # coarser-or-equal power of two; the mean transmission of a block is then
    # exp(-mu) * exp(var / 2) per channel (second-order cumulant expansion).
    level = min(int(np.floor(np.log2(d))), len(tex.fibre_pyr))
    scale = 2.0**level

    def stats(
        full: np.ndarray, pyr: tuple[tuple[np.ndarray, np.ndarray], ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        ty = (ys + oy) / scale - 0.5
        tx = (xs + ox) / scale - 0.5
        if level == 0:
            return _sample_bilinear(full, ty, tx), np.zeros((*full.shape[:-2], h, w), np.float32)
        mean, var = pyr[level - 1]
        return _sample_bilinear(mean, ty, tx), _sample_bilinear(var, ty, tx)

    e_lf, wts = _eosin_fields(scene, ys, xs)
    f_mean, f_var = stats(tex.fibres, tex.fibre_pyr)
    mu = e_lf * np.einsum("ihw,ihw->hw", wts, f_mean)
    var = e_lf**2 * np.einsum("ihw,ihw->hw", wts**2, f_var)
    wreg = _region_weight(scene, regions, ys, xs)
    if wreg is not None:
        c_mean, c_var = stats(tex.cells, tex.cell_pyr)
        ce = _CELL_OD * scene.stain[0]
        mu = mu * (1.0 - wreg) + ce * c_mean * wreg
        var = var * (1.0 - wreg) ** 2 + (ce**2) * c_var * wreg**2
    tissue_t = np.exp(-(_BG_OD + mu[..., None] * E_VEC) + 0.5 * var[..., None] * E_VEC**2)

    if d <= _EXACT_NUCLEI_MAX_DS:
        deficit = np.zeros((3, h * w), np.float64)
        step = int(np.clip(np.floor(d / 4.0), 1, 4))
        for batch in _all_nuclei(scene, x0, y0, x1, y1, regions, step):
            px, py, od = _stamps(batch, tex, (ox, oy), scene.mpp, step)
            ix = np.floor((px + 0.5 - x0) / d).astype(np.int64)
            iy = np.floor((py + 0.5 - y0) / d).astype(np.int64)
            ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h) & (od > 1e-3)
            idx = iy[ok] * w + ix[ok]
            odk = od[ok]
            for c in range(3):
                deficit[c] += np.bincount(
                    idx, weights=1.0 - np.exp(-odk * H_VEC[c]), minlength=h * w
                )
        frac = (deficit * (step * step) / (d * d)).T.reshape(h, w, 3).astype(np.float32)
    else:
        frac = _expected_deficit(scene, regions, ys, xs)
    out_t = tissue_t * np.clip(1.0 - frac, 0.0, 1.0)

    if state == "edge":
        cover = _tissue_coverage(scene, ys, xs, d)
        out_t = cover[..., None] * out_t + (1.0 - cover[..., None]) * np.exp(-_BG_OD)
    return _to_uint8(out_t)


def _tissue_coverage(scene: Scene, ys: np.ndarray, xs: np.ndarray, d: float) -> np.ndarray:
    """Fraction of each output pixel covered by tissue (k x k supersampling)."""
    k = int(min(4, np.ceil(d)))
    sub = (np.arange(k) + 0.5) / k - 0.5
    sy = (ys[:, None] + sub[None, :] * d).ravel()
    sx = (xs[:, None] + sub[None, :] * d).ravel()
    alpha = _tissue_alpha(scene, sy, sx)
    return alpha.reshape(ys.size, k, xs.size, k).mean(axis=(1, 3))


@lru_cache(maxsize=32)
def _mean_deficit(cls: NucleusClass, mpp: float, hema: float) -> np.ndarray:
    """Mean per-site sum over pixels of ``1 - exp(-OD_H h)`` (3,), by rendering a sample.

    A site is one nucleus, or one clump for a clumped class.
    """
    n = 256
    g = np.arange(n)
    # Sites far apart on one row; a fixed seed, so the value is the same for every scene.
    nuc = _draw_nuclei(
        12345, cls, g, np.full(n, 7), g * 256.0 + 128.0, np.full(n, 128.0), mpp, hema
    )
    _, _, od = _stamps(nuc, _textures(), (0, 0), mpp)
    return np.array([np.sum(1.0 - np.exp(-od * H_VEC[c])) / n for c in range(3)])


def _expected_deficit(
    scene: Scene, regions: list[Region], ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    frac = np.zeros((ys.size, xs.size, 3), np.float32)
    for cls in nucleus_classes(scene):
        if cls.name != "normal" and not regions:
            continue
        density = cls.keep * _density_weight(scene, cls, xx.ravel(), yy.ravel(), regions)
        # Regional stain factors scale the deficit about linearly (thumbnails only).
        stain = _region_stain(scene, cls, xx.ravel(), yy.ravel(), regions) / scene.stain[1]
        per_px = _mean_deficit(cls, scene.mpp, scene.stain[1]) / (cls.grid_um / scene.mpp) ** 2
        frac += (density * stain).reshape(ys.size, xs.size)[..., None] * per_px.astype(np.float32)
    return frac
