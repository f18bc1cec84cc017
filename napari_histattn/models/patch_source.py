"""Where attention sampling reads its high-resolution patches.

The model samples positions on its low-resolution attention grid (``grid_rc``,
row then column) and asks a :class:`PatchSource` for the square patches centred
on the matching high-resolution pixels (``hr_xy``, x first, in the pixel frame
of the high-resolution image the source serves). Only the sampled patches are
ever read: a slide implementation (in ``napari_histattn.inference``) reads them
through the slide I/O from one pyramid level; :class:`TensorPatchSource` serves
in-memory tensors for tests and training. ``models`` does not import ``io``, so
the slide implementation lives outside this package and only needs to follow the
protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class PatchSource(Protocol):
    """High-resolution images, one per batch index, that patches are read from.

    Coordinate frame: ``hr_xy`` is the pixel frame of the high-resolution image
    (x = column, y = row, origin at the top-left corner of the top-left pixel,
    so pixel (x, y) covers ``[x, x+1) x [y, y+1)``).
    """

    def high_res_size_wh(self, batch_index: int) -> tuple[int, int]:
        """Width and height in pixels of image ``batch_index`` at high resolution."""
        ...

    def patches(self, batch_index: int, centers_hr_xy: Tensor, patch_size: int) -> Tensor:
        """Read square patches centred on ``centers_hr_xy``.

        Parameters
        ----------
        batch_index
            Which image of the batch.
        centers_hr_xy
            ``(n, 2)`` float patch centres (x, y) in high-resolution pixels.
        patch_size
            Side p of the square patches, in high-resolution pixels.

        Returns
        -------
        Tensor
            ``(n, 3, p, p)`` float32 patches, preprocessed as the model expects.
            The patch covers pixels ``patch_origin_hr_xy(center, p)`` to that plus
            ``p`` (exclusive); pixels outside the image are filled with the
            source's padding value.
        """
        ...


def patch_origin_hr_xy(centers_hr_xy: Tensor, patch_size: int) -> Tensor:
    """Integer top-left pixel of the ``patch_size`` square centred on each centre.

    ``floor(center - p/2 + 1/2)``: the nearest integer origin, so a centre at a
    pixel boundary with even ``p`` gives an exactly centred patch.

    Returns
    -------
    Tensor
        ``(n, 2)`` long (x, y).
    """
    return torch.floor(centers_hr_xy - patch_size / 2 + 0.5).long()


class TensorPatchSource:
    """A :class:`PatchSource` over an in-memory batch ``(B, 3, H, W)``.

    Parameters
    ----------
    high_res
        ``(B, C, H, W)`` float images (already normalised as the model expects).
    pad_value
        Value of the pixels of a patch that fall outside the image.
    """

    def __init__(self, high_res: Tensor, pad_value: float = 0.0) -> None:
        if high_res.dim() != 4:
            raise ValueError(f"high_res must be (B, C, H, W), got shape {tuple(high_res.shape)}")
        self.high_res = high_res
        self.pad_value = float(pad_value)

    def __len__(self) -> int:
        return int(self.high_res.shape[0])

    def high_res_size_wh(self, batch_index: int) -> tuple[int, int]:
        return int(self.high_res.shape[3]), int(self.high_res.shape[2])

    def patches(self, batch_index: int, centers_hr_xy: Tensor, patch_size: int) -> Tensor:
        image = self.high_res[batch_index]
        c, h, w = image.shape
        origin = patch_origin_hr_xy(centers_hr_xy.to(torch.float64).cpu(), patch_size)
        origin = origin.to(image.device)
        offsets = torch.arange(patch_size, device=image.device)
        xs = origin[:, 0:1] + offsets  # (n, p)
        ys = origin[:, 1:2] + offsets  # (n, p)
        inside = ((ys >= 0) & (ys < h)).unsqueeze(2) & ((xs >= 0) & (xs < w)).unsqueeze(1)
        # Gather with clamped indices (one advanced-indexing read for all patches),
        # then overwrite what fell outside the image.
        rows = ys.clamp(0, h - 1)[:, :, None]
        cols = xs.clamp(0, w - 1)[:, None, :]
        out = image[:, rows, cols]  # (C, n, p, p)
        out = out.permute(1, 0, 2, 3)
        pad = torch.full_like(out, self.pad_value)
        return torch.where(inside.unsqueeze(1), out, pad).to(torch.float32)


def read_patches(source: PatchSource, centers_hr_xy: Tensor, patch_size: int) -> Tensor:
    """Patches for a whole batch: ``(B, n, 2)`` centres to ``(B, n, C, p, p)``."""
    return torch.stack(
        [source.patches(b, centers_hr_xy[b], patch_size) for b in range(centers_hr_xy.shape[0])]
    )
