"""Patches from slides: tissue detection, tiling, and a slide-backed patch source.

Shared by training and inference:

- :func:`tissue_mask` finds tissue on a low-resolution RGB view by saturation
  and brightness (glass is bright and grey, stained tissue is coloured).
- :func:`plan_tiles` lays a grid of square patches at a target resolution
  (a micrometres-per-pixel, a pyramid level or a downsample) over a slide
  and keeps those with enough tissue; coordinates are level-0 pixels.
- :func:`read_tiles` reads only the planned patches, from the best pyramid
  level, resizing when the level's scale is not exactly the target's.
- :class:`SlidePatchSource` implements the attention-sampling
  :class:`~napari_histattn.models.patch_source.PatchSource` protocol by reading
  only the sampled patches through the slide I/O; :func:`read_view` reads the
  low-resolution view the attention network sees.

Frames: the "high-resolution" frame (``hr_xy``) of a patch source is the slide
resampled at ``downsample`` level-0 pixels per pixel, so
``l0_xy = hr_xy * downsample``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

from napari_histattn.errors import HistattnError
from napari_histattn.models.patch_source import patch_origin_hr_xy


class SlideLike(Protocol):
    """What this module needs of :class:`napari_histattn.io.slide.Slide`."""

    path: Any
    mpp_xy: tuple[float, float] | None
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    def read_region(
        self, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]
    ) -> np.ndarray: ...

    def best_level_for_downsample(self, downsample: float) -> int: ...

    def thumbnail(self, max_size: int = 1024) -> np.ndarray: ...


@dataclass(frozen=True)
class TissueSettings:
    """Thresholds of :func:`tissue_mask` and the tile filter.

    Attributes
    ----------
    saturation_min
        Minimum HSV saturation ((max - min) / max of R, G, B) of tissue.
    brightness_max
        Maximum mean of R, G, B (0-1) of tissue; brighter is glass.
    min_fraction
        A tile is kept when at least this fraction of it is tissue.
    thumbnail_size
        Longer side of the view tissue is detected on.
    """

    saturation_min: float = 0.07
    brightness_max: float = 0.92
    min_fraction: float = 0.5
    thumbnail_size: int = 1024


def tissue_mask(
    rgb: NDArray[np.uint8], saturation_min: float = 0.07, brightness_max: float = 0.92
) -> NDArray[np.bool_]:
    """Tissue pixels of an ``(h, w, 3)`` uint8 RGB view.

    A pixel is tissue when its saturation ((max - min) / max of R, G, B) is at
    least ``saturation_min`` and its mean intensity at most ``brightness_max``
    (both on a 0-1 scale). Computed on the integers (12x faster than in float).
    """
    arr = np.asarray(rgb, dtype=np.uint8)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    high = np.maximum(np.maximum(r, g), b)
    spread = high - np.minimum(np.minimum(r, g), b)  # uint8: high >= low
    saturated = spread >= float(saturation_min) * high  # float64: exact at the boundary
    if saturation_min > 0:
        saturated &= high > 0  # black has saturation 0
    total = r.astype(np.uint16) + g + b
    return saturated & (total <= 3 * 255 * float(brightness_max))


#: Most a slide is upsampled to reach a model's resolution unless the caller allows
#: more: a 10 um/px image under a 1 um/px model would be blown up 10x (a 29 um/px
#: DICOM overview planned 179,427 tiles of mush).
MAX_UPSAMPLE = 4.0


def target_downsample(
    slide: SlideLike,
    *,
    target_mpp: float | None = None,
    level: int | None = None,
    downsample: float | None = None,
    max_upsample: float | None = MAX_UPSAMPLE,
    mpp_xy: tuple[float, float] | None = None,
) -> float:
    """Level-0 pixels per output pixel for one of the three ways to say the resolution.

    Exactly one of ``target_mpp`` (needs the slide's mpp), ``level`` (a
    pyramid level's downsample) or ``downsample`` may be given; none means 1.
    A result below ``1 / max_upsample`` (the slide's pixels are that much coarser
    than the model's) is refused; None allows any upsampling. ``mpp_xy``: the slide's
    level-0 micrometres per pixel when the caller knows them better than the file
    (default: the slide's own).

    Raises
    ------
    HistattnError
        If several are given, the slide has no mpp for ``target_mpp``, the
        value is out of range, or the slide would be upsampled beyond ``max_upsample``.
    """
    given = [v is not None for v in (target_mpp, level, downsample)]
    if sum(given) > 1:
        raise HistattnError("give only one of target_mpp, level or downsample")
    mpp = slide.mpp_xy if mpp_xy is None else mpp_xy
    if target_mpp is not None:
        if mpp is None:
            raise HistattnError(
                f"{Path(slide.path).name}: the slide records no pixel size, and the model works at "
                f"{target_mpp:g} um/px; give the slide's um/px (histattn classify --mpp, the "
                "widget's 'slide um/px' box, classify(slide_mpp=...))"
            )
        if target_mpp <= 0:
            raise HistattnError(f"target_mpp must be positive, got {target_mpp}")
        ds = float(target_mpp) / float(np.mean(mpp))
        if max_upsample is not None and ds * max_upsample < 1.0:
            raise HistattnError(
                f"{slide.path}: the slide has {float(np.mean(mpp)):.3g} um/px and the "
                f"model works at {target_mpp:g} um/px: the slide would be upsampled "
                f"{1 / ds:.1f}x, beyond {max_upsample:g}x, and the model would see blurred "
                "pixels; allow it explicitly (the widget's 'allow upsampling' box, "
                "histattn classify --allow-upsample, or allow_upsample=True) if that is intended"
            )
        return ds
    if level is not None:
        if not 0 <= level < len(slide.level_downsamples):
            raise HistattnError(
                f"{slide.path}: level {level} does not exist "
                f"(levels 0 to {len(slide.level_downsamples) - 1})"
            )
        return float(slide.level_downsamples[level])
    if downsample is not None:
        if downsample <= 0:
            raise HistattnError(f"downsample must be positive, got {downsample}")
        return float(downsample)
    return 1.0


def read_scaled(
    slide: SlideLike, l0_xy: tuple[int, int], size_wh: tuple[int, int], downsample: float
) -> NDArray[np.uint8]:
    """Read ``size_wh`` pixels at ``downsample`` level-0 pixels per pixel from ``l0_xy``.

    Reads the best pyramid level at or below that scale and resizes (area
    filter) when its downsample differs: by a whole factor, each output pixel is the
    rounded mean of its block of level pixels (the same whatever window it is read
    in, which PIL's two-pass filter is not to the last grey level); otherwise PIL's box
    filter. Outside the slide is white.
    """
    level = slide.best_level_for_downsample(downsample)
    level_ds = float(slide.level_downsamples[level])
    w, h = size_wh
    if math.isclose(level_ds, downsample, rel_tol=1e-6):
        return np.asarray(slide.read_region(l0_xy, level, (w, h)))
    read_w = max(1, math.ceil(w * downsample / level_ds))
    read_h = max(1, math.ceil(h * downsample / level_ds))
    factor = downsample / level_ds
    whole = round(factor)
    if abs(factor - whole) < 1e-9 and read_w == w * whole and read_h == h * whole:
        rgb = np.asarray(slide.read_region(l0_xy, level, (read_w, read_h)))
        return block_mean(rgb, whole)
    rgb = np.asarray(slide.read_region(l0_xy, level, (read_w, read_h)))
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BOX))


def block_mean(rgb: NDArray[np.uint8], factor: int) -> NDArray[np.uint8]:
    """``(h * f, w * f, 3)`` -> ``(h, w, 3)``: the mean of each ``f x f`` block, rounded
    half up (``f^2`` strided additions: as fast as PIL's filter, 8x faster than a
    reduction over a reshaped array)."""
    f = int(factor)
    h, w = rgb.shape[0] // f, rgb.shape[1] // f
    acc = np.zeros((h, w, rgb.shape[2]), dtype=np.uint16 if f * f * 255 < 2**16 else np.uint32)
    for dy in range(f):
        rows = rgb[dy : h * f : f]
        for dx in range(f):
            acc += rows[:, dx : w * f : f]
    n = f * f
    return ((acc + n // 2) // n).astype(np.uint8)


@dataclass(frozen=True)
class TilePlan:
    """Tissue tiles of one slide.

    Attributes
    ----------
    l0_xy
        ``(n, 2)`` int64 top-left corners in level-0 pixels.
    grid_rc
        ``(n, 2)`` int64 (row, col) of each tile on the tile grid.
    grid_shape
        ``(rows, cols)`` of the whole grid (tissue or not).
    patch_size
        Tile side in output pixels.
    downsample
        Level-0 pixels per output pixel.
    tissue_fraction
        ``(n,)`` fraction of each tile covered by tissue.
    """

    l0_xy: NDArray[np.int64]
    grid_rc: NDArray[np.int64]
    grid_shape: tuple[int, int]
    patch_size: int
    downsample: float
    tissue_fraction: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.l0_xy.shape[0])

    @property
    def tile_l0(self) -> float:
        """Tile side in level-0 pixels."""
        return self.patch_size * self.downsample


#: Longest thumbnail side :func:`plan_tiles` asks for to give every tile a pixel
#: (4,096: a 200,000^2 px slide in 64-px level-0 tiles; larger grids use the fallback).
MAX_PLAN_THUMBNAIL = 4096


def plan_tiles(
    slide: SlideLike,
    patch_size: int,
    downsample: float,
    tissue: TissueSettings | None = None,
) -> TilePlan:
    """Non-overlapping ``patch_size`` tiles at ``downsample`` that contain tissue.

    Tissue is detected on a thumbnail (:func:`tissue_mask`); a tile is kept
    when the thumbnail pixels it covers are at least ``min_fraction`` tissue.
    The thumbnail has at least one pixel per tile (its longer side grows past
    ``thumbnail_size`` up to :data:`MAX_PLAN_THUMBNAIL`); a tile that still holds
    no thumbnail pixel's centre (a slide whose smallest level readable whole is
    coarser) takes the value of the thumbnail pixel under its centre, so no tile
    is dropped for being smaller than a thumbnail pixel. When no tile passes, the
    tiles with the most tissue (at least one) are kept so that every slide gives a bag.
    """
    tissue = tissue or TissueSettings()
    if patch_size < 1:
        raise HistattnError(f"patch_size must be positive, got {patch_size}")
    width0, height0 = slide.level_dimensions[0]
    tile_l0 = patch_size * downsample
    cols = max(1, int(width0 // tile_l0))
    rows = max(1, int(height0 // tile_l0))
    size = max(tissue.thumbnail_size, min(MAX_PLAN_THUMBNAIL, max(rows, cols) + 1))
    thumb = np.asarray(slide.thumbnail(size))
    mask = tissue_mask(thumb, tissue.saturation_min, tissue.brightness_max).astype(np.float64)
    th, tw = mask.shape
    sx, sy = tw / width0, th / height0  # thumbnail pixels per level-0 pixel
    # Tissue fraction per tile: mean of the thumbnail pixels whose centres fall in it.
    ys = (np.arange(th) + 0.5) / sy
    xs = (np.arange(tw) + 0.5) / sx
    row_of = np.minimum((ys // tile_l0).astype(np.int64), rows)  # `rows` collects the remainder
    col_of = np.minimum((xs // tile_l0).astype(np.int64), cols)
    sums = np.zeros((rows + 1, cols + 1))
    counts = np.zeros((rows + 1, cols + 1))
    np.add.at(sums, (row_of[:, None], col_of[None, :]), mask)
    np.add.at(counts, (row_of[:, None], col_of[None, :]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)[:rows, :cols]
    empty_r, empty_c = np.nonzero(counts[:rows, :cols] == 0)
    if empty_r.size:  # tiles smaller than a thumbnail pixel: the pixel under the centre
        centre_y = np.minimum(((empty_r + 0.5) * tile_l0 * sy).astype(np.int64), th - 1)
        centre_x = np.minimum(((empty_c + 0.5) * tile_l0 * sx).astype(np.int64), tw - 1)
        fraction[empty_r, empty_c] = mask[centre_y, centre_x]
    keep = fraction >= tissue.min_fraction
    if not keep.any():
        keep = fraction >= fraction.max()
    r, c = np.nonzero(keep)
    grid_rc = np.stack([r, c], axis=1).astype(np.int64)
    l0_xy = np.stack([np.round(c * tile_l0), np.round(r * tile_l0)], axis=1).astype(np.int64)
    return TilePlan(l0_xy, grid_rc, (rows, cols), patch_size, downsample, fraction[r, c])


#: Most tiles read in one strip (bounds a strip to 64 tiles side by side).
MAX_TILES_PER_READ = 64


def _strips_are_exact(slide: SlideLike, plan: TilePlan) -> bool:
    """Whether a strip of adjacent tiles read at once equals the tiles read one by one.

    True when a tile is a whole number of pixels of the level it is read from (so the
    area filter averages the same pixel blocks) and starts on a whole level-0 pixel.
    """
    level = slide.best_level_for_downsample(plan.downsample)
    level_px = plan.patch_size * plan.downsample / float(slide.level_downsamples[level])
    return abs(level_px - round(level_px)) < 1e-9 and abs(plan.tile_l0 - round(plan.tile_l0)) < 1e-9


def read_tiles(
    slide: SlideLike, plan: TilePlan, indices: Sequence[int] | NDArray[np.int64] | None = None
) -> NDArray[np.uint8]:
    """Read the planned tiles at ``indices`` (all by default): ``(n, p, p, 3)`` uint8.

    Runs of tiles that are neighbours in one grid row (consecutive in ``indices``) are
    read as one strip when that gives the same pixels (:func:`_strips_are_exact`): one
    ``read_region`` call instead of one per tile, which is most of the reading time on
    a slide of thousands of small tiles.
    """
    idx = np.arange(len(plan)) if indices is None else np.asarray(indices, dtype=np.int64)
    p = plan.patch_size
    out = np.empty((idx.size, p, p, 3), dtype=np.uint8)
    rc = plan.grid_rc[idx]
    max_run = MAX_TILES_PER_READ if _strips_are_exact(slide, plan) else 1
    j = 0
    while j < idx.size:
        k = j + 1
        while (
            k < idx.size
            and k - j < max_run
            and rc[k, 0] == rc[j, 0]
            and rc[k, 1] == rc[j, 1] + (k - j)
        ):
            k += 1
        x, y = plan.l0_xy[int(idx[j])]
        strip = read_scaled(slide, (int(x), int(y)), ((k - j) * p, p), plan.downsample)
        out[j:k] = strip.reshape(p, k - j, p, 3).transpose(1, 0, 2, 3)
        j = k
    return out


def view_size_wh(slide: SlideLike, downsample: float) -> tuple[int, int]:
    """Size of the whole slide at ``downsample`` level-0 pixels per pixel (at least 1x1)."""
    w0, h0 = slide.level_dimensions[0]
    return max(1, int(w0 // downsample)), max(1, int(h0 // downsample))


def read_view(slide: SlideLike, downsample: float) -> NDArray[np.uint8]:
    """The whole slide at ``downsample`` level-0 pixels per pixel, ``(h, w, 3)`` uint8."""
    return read_scaled(slide, (0, 0), view_size_wh(slide, downsample), downsample)


def resize_square(rgb: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """``(H, W, 3)`` uint8 resized to ``size`` x ``size`` (PIL bilinear, antialiased), as
    image training resizes its files (:func:`napari_histattn.training.datasets.images.read_rgb`)
    and a whole-image checkpoint sees an image at inference; unchanged when already that size."""
    from PIL import Image

    if rgb.shape[:2] == (size, size):
        return rgb
    image = Image.fromarray(np.ascontiguousarray(rgb[..., :3]))
    resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(resized, dtype=np.uint8)


def rgb_to_tensor(
    rgb: NDArray[np.uint8],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels_last: bool = False,
) -> Tensor:
    """``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` float32 in [0, 1], then
    ``(x - mean) / std`` per channel when both are given.

    Computed in numpy, in one thread: torch's parallel element-wise kernels waited
    on busy cores for 150x their time on a loaded machine (0.26 s -> 38.8 s per
    slide), and these are a few MB per batch. ``channels_last`` returns a 4-d batch
    in torch's channels-last memory format without a copy (what our encoders run on).
    """
    arr = np.asarray(rgb, dtype=np.uint8)
    pixels = np.divide(arr, np.float32(255.0), dtype=np.float32)  # a new array, never a view
    if mean is not None and std is not None:
        pixels -= np.asarray(list(mean), dtype=np.float32)
        pixels /= np.asarray(list(std), dtype=np.float32)
    t = torch.from_numpy(pixels).movedim(-1, -3)
    if channels_last and t.dim() == 4:
        return t  # the (N, H, W, C) buffer seen as (N, C, H, W): channels-last strides
    return t.contiguous()


class SlidePatchSource:
    """A :class:`~napari_histattn.models.patch_source.PatchSource` over one slide.

    Serves batch index 0 only (combine several with
    :class:`napari_histattn.training.tasks.StackedPatchSource`). Only the
    requested patches are read, each from the best pyramid level for
    ``downsample``; pixels outside the slide are white (glass), normalised like
    the rest.

    Parameters
    ----------
    slide
        An open :class:`napari_histattn.io.slide.Slide`.
    downsample
        Level-0 pixels per high-resolution pixel.
    size_wh
        High-resolution size to report; by default the slide's size at
        ``downsample``. Attention sampling uses ``view size * downscale`` so that
        the attention grid and the patches cover the same area.
    mean, std
        Per-channel normalisation of the patches (as the model was trained).
    """

    def __init__(
        self,
        slide: SlideLike,
        downsample: float = 1.0,
        size_wh: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if downsample <= 0:
            raise ValueError(f"downsample must be positive, got {downsample}")
        self.slide = slide
        self.downsample = float(downsample)
        self.size_wh = size_wh if size_wh is not None else view_size_wh(slide, downsample)
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.reads = 0  # patches read so far (tests check that only samples are read)

    def __len__(self) -> int:
        return 1

    def high_res_size_wh(self, batch_index: int) -> tuple[int, int]:
        self._check(batch_index)
        return int(self.size_wh[0]), int(self.size_wh[1])

    def patches(self, batch_index: int, centers_hr_xy: Tensor, patch_size: int) -> Tensor:
        self._check(batch_index)
        origins = patch_origin_hr_xy(centers_hr_xy.detach().to(torch.float64).cpu(), patch_size)
        rgb = np.empty((origins.shape[0], patch_size, patch_size, 3), dtype=np.uint8)
        for j, (x, y) in enumerate(origins.tolist()):
            l0_xy = (round(x * self.downsample), round(y * self.downsample))
            rgb[j] = read_scaled(self.slide, l0_xy, (patch_size, patch_size), self.downsample)
        self.reads += int(origins.shape[0])
        return rgb_to_tensor(rgb, self.mean, self.std)

    @staticmethod
    def _check(batch_index: int) -> None:
        if batch_index != 0:
            raise IndexError(
                f"a SlidePatchSource serves one slide (batch index 0), got {batch_index}"
            )
