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

Tables and tuned constants live in :mod:`.tables`, textures and value noise in
:mod:`.textures`, regions and nuclei in :mod:`.nuclei`; this module composites
a window from them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from napari_histattn.io.synthetic._geometry import Region
from napari_histattn.io.synthetic.nuclei import (
    _batches,
    _density_weight,
    _draw_nuclei,
    _fade,
    _max_extent_px,
    _Nuclei,
    _nuclei,
    _region_stain,
    _stamps,
    _tissue_state,
    _windows_regions,
)
from napari_histattn.io.synthetic.scene import Scene
from napari_histattn.io.synthetic.tables import (
    _BG_OD,
    _CELL_OD,
    _EXACT_NUCLEI_MAX_DS,
    _N_ORIENT,
    _STROMA_OD,
    BACKGROUND,
    E_VEC,
    H_VEC,
    NucleusClass,
    nucleus_classes,
)
from napari_histattn.io.synthetic.textures import (
    _gather,
    _lerp_outer,
    _orientation_spacing,
    _orientation_weights,
    _sample_bilinear,
    _stain_spacing,
    _tex_offset,
    _textures,
    _value_noise_grid,
)

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
