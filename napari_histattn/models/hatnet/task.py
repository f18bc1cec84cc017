"""HATNet's training adapter: A-MIL's ragged bags, with each tile's grid position."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from napari_histattn.models.amil.task import MILTask
from napari_histattn.models.tasks import Batch, Call


class HATNetTask(MILTask):
    """Items ``(bag, positions (n, 2), label)`` or, with annotated tiles, ``(bag, positions,
    instance_labels, label)`` (the datasets' ``positions=True``); the bags are collated as
    :class:`~napari_histattn.models.amil.task.MILTask` does and the positions padded with 0
    (padding is masked); the call is ``model(bags, positions, mask=..., chunk_size=...)``."""

    family = "hatnet"

    def collate(self, items: Sequence[tuple[Any, ...]]) -> Batch:
        if len(items[0]) not in (3, 4):
            raise ValueError(
                "HATNet needs bags with tile positions (a dataset with positions=True)"
            )
        batch = super().collate([(item[0], *item[2:]) for item in items])
        longest = int(batch.inputs[0].shape[1])
        positions = torch.zeros(len(items), longest, 2, dtype=torch.long)
        for i, item in enumerate(items):
            positions[i, : item[1].shape[0]] = torch.as_tensor(item[1], dtype=torch.long)
        return Batch((batch.inputs[0], positions), batch.kwargs, batch.targets)

    def model_inputs(self, batch: Batch, device: torch.device, gen: torch.Generator | None) -> Call:
        (patches,), kwargs = super().model_inputs(
            Batch(batch.inputs[:1], batch.kwargs, batch.targets), device, gen
        )
        return (patches, batch.inputs[1].to(device)), kwargs
