"""Nuclei of the synthetic renderer: candidates on global per-class grids, stamps and clumps.

Grid cell ``(gx, gy)`` of a class holds at most one nucleus (or one look-alike
clump of 1-5 lymphocytes) whose position, shape and stain come from a
counter-based hash of ``(seed, class, gx, gy)``; stamping is batched to bound
memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_histattn.io.synthetic._geometry import Region, hash_u01
from napari_histattn.io.synthetic.scene import Scene
from napari_histattn.io.synthetic.tables import (
    _CLUMP_ASPECT,
    _CLUMP_GAP_UM,
    _CLUMP_MAX,
    _CLUMP_OD_SPREAD,
    _CLUMP_SPREAD,
    _EDGE_FADE,
    _P,
    NucleusClass,
)
from napari_histattn.io.synthetic.textures import (
    _orientation_spacing,
    _Textures,
    _value_noise_points,
)

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
