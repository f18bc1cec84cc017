"""Training adapters by model name: each family's :class:`~napari_histattn.models.tasks.Task`.

The adapters live with their families (``MILTask`` in :mod:`napari_histattn.models.amil`,
``ImageTask`` in :mod:`napari_histattn.models.tasks` (shared by image classifiers), ``SamplingTask`` in
:mod:`napari_histattn.models.attention_sampling`); this module finds one by
model name and re-exports them for existing imports.
"""

from __future__ import annotations

from typing import Any

from napari_histattn.models.amil import MILTask
from napari_histattn.models.attention_sampling import SamplingTask, StackedPatchSource
from napari_histattn.models.family import TaskOptions, family_for_model, runnable_models
from napari_histattn.models.tasks import Batch, ImageTask, Task

__all__ = [
    "Batch",
    "ImageTask",
    "MILTask",
    "SamplingTask",
    "StackedPatchSource",
    "Task",
    "task_for_model",
]


def task_for_model(model_name: str, **options: Any) -> Task:
    """The adapter of a registered model's family.

    ``options`` are the adapter's own keywords (``chunk_size`` for A-MIL,
    ``pad_value`` for attention sampling); without them the family builds its
    adapter from default :class:`~napari_histattn.models.family.TaskOptions`.
    """
    family = family_for_model(model_name)
    if family is None:
        known = ", ".join(runnable_models())
        raise ValueError(f"no training adapter for model {model_name!r}; trainable models: {known}")
    task = family.task(TaskOptions())
    if options:
        task = type(task)(**options)
    return task
