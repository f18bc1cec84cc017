"""The training adapter's contract: a :class:`Batch` of model inputs and a :class:`Task`.

Each model family declares its ``Task`` (how dataset items are collated and how
the model is called on a batch) in its family module, or reuses
:class:`ImageTask`, the adapter of any image classifier; the
training loop (:mod:`napari_histattn.training.loop`) drives any of them. The
loss is ``model.loss(output, targets)`` when the model defines one (attention
sampling adds its entropy and REINFORCE terms) and cross-entropy otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Generator, Tensor

from napari_histattn.models.outputs import AttentionOutput

__all__ = ["Batch", "Call", "ImageTask", "Task", "image_example_input", "targets_of"]


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


#: ``(args, kwargs)`` of one ``model(*args, **kwargs)`` call.
Call = tuple[tuple[Any, ...], dict[str, Any]]


class Task:
    """Base adapter; subclasses implement :meth:`collate` and :meth:`model_inputs`."""

    family = ""

    def collate(self, items: Sequence[tuple[Any, ...]]) -> Batch:
        """Combine dataset items into a :class:`Batch`."""
        raise TypeError(f"{type(self).__name__} does not batch items")

    def model_inputs(self, batch: Batch, device: torch.device, gen: Generator | None) -> Call:
        """The model call's arguments for ``batch`` (moved to ``device`` as the model needs)."""
        raise TypeError(f"{type(self).__name__} does not call models")

    def call(
        self,
        model: nn.Module,
        batch: Batch,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> AttentionOutput:
        """Run the model on a batch; ``generator`` drives any sampling inside the model."""
        args, kwargs = self.model_inputs(batch, device, generator)
        output: AttentionOutput = model(*args, **kwargs)
        return output

    def loss(self, model: nn.Module, output: AttentionOutput, targets: Tensor) -> Tensor:
        """Training loss: ``model.loss`` when the model has one, else cross-entropy."""
        model_loss = getattr(model, "loss", None)
        if callable(model_loss):
            result: Tensor = model_loss(output, targets)
            return result
        return F.cross_entropy(output.logits, targets)


def targets_of(items: Sequence[tuple[Any, ...]]) -> Tensor:
    return torch.tensor([int(item[-1]) for item in items], dtype=torch.long)


class ImageTask(Task):
    """Training adapter: items ``(image (3, H, W), label)``; ``model(images (B, 3, H, W))``."""

    family = "image"

    def collate(self, items: Sequence[tuple[Any, ...]]) -> Batch:
        return Batch((torch.stack([item[0] for item in items]),), {}, targets_of(items))

    def model_inputs(self, batch: Batch, device: torch.device, gen: Generator | None) -> Call:
        return (batch.inputs[0].to(device),), {}


def image_example_input(
    config: dict[str, Any], batch_size: int, seed: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A registry example input of an image model: random ``(B, in_channels, s, s)`` images,
    ``s`` the config's ``input_size``."""
    generator = torch.Generator().manual_seed(seed)
    size = int(config["input_size"])
    return (torch.rand(batch_size, config["in_channels"], size, size, generator=generator),), {}
