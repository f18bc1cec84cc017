"""Family adapters: how the training loop batches, calls and scores each model family.

Three families, each with its own dataset item and model call:

``image`` (``dafl_cnn``)
    Items ``(image (3, H, W), label)``; ``model(images (B, 3, H, W))``.
``mil`` (``amil``)
    Items ``(patches (n, 3, p, p), label)`` with bags of different sizes; the
    batch pads them to the largest bag and passes a ``(B, N)`` mask:
    ``model(patches (B, N, 3, p, p), mask=mask, chunk_size=...)``.
``sampling`` (``attention_sampling``)
    Items ``(low_res (3, h, w), source, label)`` where ``source`` is a
    high-resolution ``(3, H, W)`` tensor or a one-image
    :class:`~napari_histattn.models.patch_source.PatchSource`; the batch stacks
    the views (padding them to a common size with ``pad_value``) and combines
    the sources: ``model(low_res, patch_source, generator=g)``.

The loss is ``model.loss(output, targets)`` when the model defines one
(attention sampling adds its entropy and REINFORCE terms) and cross-entropy
otherwise. Validation always scores plain cross-entropy so that the selected
checkpoint does not depend on regularisers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from napari_histattn.models.outputs import AttentionOutput
from napari_histattn.models.patch_source import PatchSource, TensorPatchSource

FAMILY_OF_MODEL = {
    "dafl_cnn": "image",
    "amil": "mil",
    "attention_sampling": "sampling",
}


@dataclass
class Batch:
    """Model inputs of one batch.

    Attributes
    ----------
    inputs
        Positional inputs of the model call (family specific).
    kwargs
        Keyword inputs (``mask``, ``chunk_size``...).
    targets
        ``(B,)`` long labels.
    """

    inputs: tuple[Any, ...]
    kwargs: dict[str, Any]
    targets: Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])


class Task:
    """Base adapter; subclasses implement :meth:`collate` and :meth:`call`."""

    family = ""

    def collate(self, items: Sequence[tuple[Any, ...]]) -> Batch:
        """Combine dataset items into a :class:`Batch`."""
        raise TypeError(f"{type(self).__name__} does not batch items")

    def call(
        self,
        model: nn.Module,
        batch: Batch,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> AttentionOutput:
        """Run the model on a batch (inputs moved to ``device``)."""
        raise TypeError(f"{type(self).__name__} does not call models")

    def loss(self, model: nn.Module, output: AttentionOutput, targets: Tensor) -> Tensor:
        """Training loss: ``model.loss`` when the model has one, else cross-entropy."""
        model_loss = getattr(model, "loss", None)
        if callable(model_loss):
            result: Tensor = model_loss(output, targets)
            return result
        return F.cross_entropy(output.logits, targets)


def _targets(items: Sequence[tuple[Any, ...]]) -> Tensor:
    return torch.tensor([int(item[-1]) for item in items], dtype=torch.long)


class ImageTask(Task):
    """Patch classifiers: a batch is a stack of equally sized images."""

    family = "image"

    def collate(self, items: Sequence[tuple[Any, ...]]) -> Batch:
        return Batch((torch.stack([item[0] for item in items]),), {}, _targets(items))

    def call(
        self,
        model: nn.Module,
        batch: Batch,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> AttentionOutput:
        output: AttentionOutput = model(batch.inputs[0].to(device))
        return output


class MILTask(Task):
    """A-MIL: ragged bags padded to the largest, with a mask.

    Parameters
    ----------
    chunk_size
        Patches encoded at once (bounds activation memory in inference).
    """

    family = "mil"

    def __init__(self, chunk_size: int | None = 256) -> None:
        self.chunk_size = chunk_size

    def collate(self, items: Sequence[tuple[Any, ...]]) -> Batch:
        bags = [item[0] for item in items]
        longest = max(int(b.shape[0]) for b in bags)
        patches = bags[0].new_zeros((len(bags), longest, *bags[0].shape[1:]))
        mask = torch.zeros(len(bags), longest, dtype=torch.bool)
        for i, bag in enumerate(bags):
            patches[i, : bag.shape[0]] = bag
            mask[i, : bag.shape[0]] = True
        return Batch((patches,), {"mask": mask}, _targets(items))

    def call(
        self,
        model: nn.Module,
        batch: Batch,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> AttentionOutput:
        mask = batch.kwargs["mask"].to(device)
        # The model moves each chunk to its device itself, so patches may stay on the CPU.
        output: AttentionOutput = model(batch.inputs[0], mask=mask, chunk_size=self.chunk_size)
        return output


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
                return Batch((torch.stack(views), source), {}, _targets(items))
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
        return Batch((low_res, StackedPatchSource(sources, sizes_wh)), {}, _targets(items))

    def call(
        self,
        model: nn.Module,
        batch: Batch,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> AttentionOutput:
        low_res, source = batch.inputs
        output: AttentionOutput = model(low_res.to(device), source, generator=generator)
        return output


def task_for_model(model_name: str, **options: Any) -> Task:
    """The adapter for a registered model name (see :data:`FAMILY_OF_MODEL`)."""
    family = FAMILY_OF_MODEL.get(model_name)
    if family == "image":
        return ImageTask()
    if family == "mil":
        return MILTask(**options)
    if family == "sampling":
        return SamplingTask(**options)
    known = ", ".join(sorted(FAMILY_OF_MODEL))
    raise ValueError(f"no training adapter for model {model_name!r}; trainable models: {known}")
