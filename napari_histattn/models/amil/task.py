"""A-MIL's training adapter: ragged bags (of tiles, or of cached features) padded to the largest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from napari_histattn.models.outputs import AttentionOutput, MILOutput
from napari_histattn.models.tasks import Batch, Call, Task, targets_of


class MILTask(Task):
    """Training adapter: ragged bags padded to the largest, with a ``(B, N)`` mask.

    Items are ``(patches (n, 3, p, p), label)``, or ``(patches, instance_labels (n,),
    label)`` with annotated tiles (padded with -1 and set on the output as
    ``instance_targets`` for the model's annotation loss); the call is
    ``model(patches (B, N, 3, p, p), mask=mask, chunk_size=...)``.

    Parameters
    ----------
    chunk_size
        Patches encoded at once (bounds activation memory).
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
        kwargs: dict[str, Any] = {"mask": mask}
        if len(items[0]) == 3:  # (bag, instance labels, label): annotated tiles
            labels = torch.full((len(bags), longest), -1, dtype=torch.long)
            for i, item in enumerate(items):
                labels[i, : item[1].shape[0]] = item[1]
            kwargs["instance_targets"] = labels
        return Batch((patches,), kwargs, targets_of(items))

    def model_inputs(self, batch: Batch, device: torch.device, gen: torch.Generator | None) -> Call:
        # The model moves each chunk to its device itself, so patches may stay on the CPU.
        mask = batch.kwargs["mask"].to(device)
        return (batch.inputs[0],), {"mask": mask, "chunk_size": self.chunk_size}

    def call(
        self,
        model: nn.Module,
        batch: Batch,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> AttentionOutput:
        output = super().call(model, batch, device, generator)
        targets = batch.kwargs.get("instance_targets")
        if targets is not None and isinstance(output, MILOutput):
            output.instance_targets = targets.to(device)
        return output
