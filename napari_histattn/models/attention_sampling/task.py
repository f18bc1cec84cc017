"""Attention sampling's training adapter: low-resolution views plus a patch source.

Items are ``(low_res (3, h, w), source, label)`` where ``source`` is a
high-resolution ``(3, H, W)`` tensor or a one-image
:class:`~napari_histattn.models.patch_source.PatchSource`; the batch stacks the
views (padding them to a common size with ``pad_value``) and combines the
sources: ``model(low_res, patch_source, generator=g)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Generator, Tensor

from napari_histattn.models.family import TaskOptions
from napari_histattn.models.patch_source import PatchSource, TensorPatchSource
from napari_histattn.models.tasks import Batch, Call, Task, targets_of

__all__ = ["SamplingTask", "StackedPatchSource", "make_task"]


class StackedPatchSource:
    """One :class:`PatchSource` over per-image sources (each serving batch index 0).

    Parameters
    ----------
    sources
        One single-image source per batch index.
    sizes_wh
        Optional high-resolution size to report per image (used when the
        low-resolution views were padded to a common size: the reported size
        grows with the padding so that grid cells keep their scale; patches
        beyond the image are padding).
    """

    def __init__(
        self, sources: Sequence[PatchSource], sizes_wh: Sequence[tuple[int, int]] | None = None
    ) -> None:
        self.sources = list(sources)
        self.sizes_wh = None if sizes_wh is None else [tuple(s) for s in sizes_wh]

    def __len__(self) -> int:
        return len(self.sources)

    def high_res_size_wh(self, batch_index: int) -> tuple[int, int]:
        if self.sizes_wh is not None:
            w, h = self.sizes_wh[batch_index]
            return int(w), int(h)
        return self.sources[batch_index].high_res_size_wh(0)

    def patches(self, batch_index: int, centers_hr_xy: Tensor, patch_size: int) -> Tensor:
        return self.sources[batch_index].patches(0, centers_hr_xy, patch_size)


class SamplingTask(Task):
    """Attention sampling: low-resolution views plus a patch source.

    Parameters
    ----------
    pad_value
        Per-channel value used to pad low-resolution views to a common size
        (the normalised background colour), or a scalar.
    """

    family = "sampling"

    def __init__(self, pad_value: float | Sequence[float] = 0.0) -> None:
        self.pad_value = pad_value

    def collate(self, items: Sequence[tuple[Any, ...]]) -> Batch:
        views = [item[0] for item in items]
        raw_sources = [item[1] for item in items]
        h = max(int(v.shape[-2]) for v in views)
        w = max(int(v.shape[-1]) for v in views)
        same_size = all(tuple(v.shape[-2:]) == (h, w) for v in views)
        if same_size and all(isinstance(s, Tensor) for s in raw_sources):
            shapes = {tuple(s.shape) for s in raw_sources}
            if len(shapes) == 1:
                source: PatchSource = TensorPatchSource(torch.stack(raw_sources))
                return Batch((torch.stack(views), source), {}, targets_of(items))
        sources: list[PatchSource] = [
            TensorPatchSource(s.unsqueeze(0)) if isinstance(s, Tensor) else s for s in raw_sources
        ]
        low_res = views[0].new_empty((len(views), views[0].shape[0], h, w))
        fill = torch.as_tensor(self.pad_value, dtype=low_res.dtype).reshape(-1, 1, 1)
        low_res[:] = fill.expand(low_res.shape[1], h, w)
        sizes_wh = []
        for i, (view, src) in enumerate(zip(views, sources, strict=True)):
            vh, vw = int(view.shape[-2]), int(view.shape[-1])
            low_res[i, :, :vh, :vw] = view
            # Keep the high-resolution pixels per grid cell of this image.
            src_w, src_h = src.high_res_size_wh(0)
            sizes_wh.append((round(src_w * w / vw), round(src_h * h / vh)))
        return Batch((low_res, StackedPatchSource(sources, sizes_wh)), {}, targets_of(items))

    def model_inputs(self, batch: Batch, device: torch.device, gen: Generator | None) -> Call:
        low_res, source = batch.inputs
        return (low_res.to(device), source), {"generator": gen}


def make_task(options: TaskOptions) -> SamplingTask:
    """The adapter; views are padded with normalised white (glass)."""
    if options.mean is None or options.std is None:
        return SamplingTask(pad_value=1.0)
    white = [(1.0 - m) / s for m, s in zip(options.mean, options.std, strict=True)]
    return SamplingTask(pad_value=white)
