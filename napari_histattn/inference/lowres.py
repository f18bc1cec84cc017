"""A slide's low-resolution view in tiles with a halo, read only where there is tissue.

Attention sampling runs its attention network on the whole slide at ``downsample``
level-0 pixels per pixel (its "view"): 6,250^2 px for a 100k^2 slide at the demo's
16x, 1.2 GB as float32 and several GB of activations in one pass. :class:`LowResView`
serves that view as ``tile`` x ``tile`` squares (view pixels) with ``halo`` pixels of
context on every side, clipped to the view:

- each tile is read from the pyramid level closest to ``downsample`` (never a
  larger level resized when a smaller one exists) and normalised as in training;
- tiles whose footprint shows no tissue on a thumbnail of the slide (dilated by one
  thumbnail pixel) are not read at all (:attr:`LowResView.kept`);
- a network of stride-1 convolutions with a receptive half-width of at most
  ``halo`` gives on a tile's inner square exactly what one pass over the whole view
  gives there (the crop edges at the view border are the view's own edges, zero
  padded alike).

Memory is one tile's input and activations plus the outputs the caller keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import ndimage

from napari_histattn.errors import HistattnError
from napari_histattn.inference.patches import (
    SlideLike,
    TissueSettings,
    read_scaled,
    rgb_to_tensor,
    tissue_mask,
    view_size_wh,
)

__all__ = ["LowResView", "ViewTile"]


@dataclass(frozen=True)
class ViewTile:
    """One tile of the view.

    Attributes
    ----------
    rows, cols
        The tile's inner square in view pixels (row and column ranges).
    inner
        Where that square lies in ``crop`` (row slice, column slice).
    crop
        ``(1, 3, h, w)`` normalised pixels: the inner square and its halo.
    tissue
        Tissue mask of the inner square.
    """

    rows: slice
    cols: slice
    inner: tuple[slice, slice]
    crop: torch.Tensor
    tissue: NDArray[np.bool_]


class LowResView:
    """The slide at ``downsample`` in tiles; see the module docstring."""

    def __init__(
        self,
        slide: SlideLike,
        downsample: float,
        *,
        tile: int,
        halo: int,
        tissue: TissueSettings,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        device: torch.device | str = "cpu",
        channels_last: bool = True,
    ) -> None:
        if tile < 1 or halo < 0:
            raise ValueError(f"tile must be >= 1 and halo >= 0, got {tile} and {halo}")
        self.slide = slide
        self.downsample = float(downsample)
        self.tile, self.halo = int(tile), int(halo)
        self.settings = tissue
        self.mean, self.std = mean, std
        self.device = torch.device(device)
        self.channels_last = channels_last
        w, h = view_size_wh(slide, self.downsample)
        self.size_hw = (h, w)
        self.grid_hw = (math.ceil(h / self.tile), math.ceil(w / self.tile))
        self.kept = self._tiles_with_tissue()

    def __iter__(self) -> Iterator[ViewTile]:
        """The kept tiles, row by row; the next one is read in a thread while the caller
        works on this one (OpenSlide and numpy release the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        cells = [(int(r), int(c)) for r, c in zip(*np.nonzero(self.kept), strict=True)]
        if not cells:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="histattn-view") as pool:
            ahead = pool.submit(self.read, *cells[0])
            for nxt in [*cells[1:], None]:
                tile = ahead.result()
                if nxt is not None:
                    ahead = pool.submit(self.read, *nxt)
                yield tile

    def __len__(self) -> int:
        return int(self.kept.sum())

    def read(self, r: int, c: int) -> ViewTile:
        """Tile ``(r, c)`` of the tile grid with its halo."""
        h, w = self.size_hw
        y0, x0 = r * self.tile, c * self.tile
        y1, x1 = min(h, y0 + self.tile), min(w, x0 + self.tile)
        top, left = max(0, y0 - self.halo), max(0, x0 - self.halo)
        bottom, right = min(h, y1 + self.halo), min(w, x1 + self.halo)
        ds = self.downsample
        rgb = read_scaled(
            self.slide, (round(left * ds), round(top * ds)), (right - left, bottom - top), ds
        )
        inner = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        s = self.settings
        mask = tissue_mask(rgb[inner], s.saturation_min, s.brightness_max)
        # Channels-last: 1.8x faster 3x3 convolutions of few channels on the CPU.
        crop = rgb_to_tensor(rgb[None], self.mean, self.std, self.channels_last).to(self.device)
        if self.channels_last:  # a no-op on the CPU
            crop = crop.contiguous(memory_format=torch.channels_last)
        return ViewTile(slice(y0, y1), slice(x0, x1), inner, crop, mask)

    def _tiles_with_tissue(self) -> NDArray[np.bool_]:
        """Tiles whose footprint shows tissue on the thumbnail, dilated by one pixel.

        One tile, or a thumbnail coarser than a tile, keeps every tile.
        """
        rows, cols = self.grid_hw
        h, w = self.size_hw
        every = np.ones((rows, cols), dtype=bool)
        size = self.settings.thumbnail_size
        if rows * cols == 1:
            return every
        try:
            thumb = np.asarray(self.slide.thumbnail(size))
        except HistattnError:  # no overview (a huge flat image): read every tile
            return every
        s = self.settings
        mask = tissue_mask(thumb, s.saturation_min, s.brightness_max)
        th, tw = mask.shape
        # Dilate by one thumbnail pixel: the thumbnail's averaging can hide a thin strip.
        ys, xs = np.nonzero(ndimage.binary_dilation(mask))
        # The view tiles each thumbnail pixel overlaps (its footprint in view pixels).
        sy, sx = h / th, w / tw
        if sy > self.tile or sx > self.tile:
            return every
        kept = np.zeros((rows, cols), dtype=bool)
        r0 = np.clip((ys * sy // self.tile).astype(np.int64), 0, rows - 1)
        r1 = np.clip((((ys + 1) * sy - 1e-9) // self.tile).astype(np.int64), 0, rows - 1)
        c0 = np.clip((xs * sx // self.tile).astype(np.int64), 0, cols - 1)
        c1 = np.clip((((xs + 1) * sx - 1e-9) // self.tile).astype(np.int64), 0, cols - 1)
        for dr in (0, 1):  # a thumbnail pixel spans at most two tiles each way
            for dc in (0, 1):
                kept[np.where(dr, r1, r0), np.where(dc, c1, c0)] = True
        return kept
