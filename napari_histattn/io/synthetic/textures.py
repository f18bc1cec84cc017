"""Fine periodic texture tables (fibres, clefts, granularity, chromatin) and hashed value noise.

Tables are 1024-px periodic images shared by all scenes and offset per seed;
slowly varying fields (stain intensity, fibre orientation) are value noise over
hashed grid values, so any window of a scene is independent of any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from napari_histattn.io.synthetic._geometry import hash_u01
from napari_histattn.io.synthetic.scene import Scene
from napari_histattn.io.synthetic.tables import (
    _N_ORIENT,
    _P,
)


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
