"""Running a model over a dataset: predictions, evaluation metrics and the choice of a decision rule.

:func:`predict` runs a model in eval and inference mode (attention sampling
seeded per batch) and keeps the logits; :func:`evaluate` adds every metric of
:mod:`napari_histattn.training.metrics`; :func:`choose_decision_rule` sets a
model's slide decision rule from the validation data
(:func:`napari_histattn.training.calibration.choose_decision`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from napari_histattn.models.device import resolve_device
from napari_histattn.progress import Progress
from napari_histattn.training.calibration import choose_decision, shifted, softmax
from napari_histattn.training.metrics import classification_metrics
from napari_histattn.training.tasks import Batch, Task
from napari_histattn.training.transforms import sample_generator

__all__ = [
    "EvalResult",
    "Predictions",
    "choose_decision_rule",
    "evaluate",
    "predict",
    "validate",
]


@dataclass
class Predictions:
    """Model outputs over a dataset, in dataset order.

    Attributes
    ----------
    probabilities
        ``(n, C)`` softmax of the logits.
    labels
        ``(n,)`` true labels.
    loss
        Mean cross-entropy.
    logits
        ``(n, C)`` logits before any temperature, when kept.
    logits_by_rule
        ``(n, C)`` logits under each of a model's decision rules, when asked for.
    """

    probabilities: np.ndarray
    labels: np.ndarray
    loss: float
    logits: np.ndarray | None = None
    logits_by_rule: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def predicted(self) -> np.ndarray:
        """``(n,)`` arg-max labels."""
        return self.probabilities.argmax(axis=1)


def _batches(
    dataset: Dataset[Any],
    task: Task,
    batch_size: int,
    order: Sequence[int],
) -> Iterator[tuple[list[int], Batch]]:
    for start in range(0, len(order), batch_size):
        indices = [int(i) for i in order[start : start + batch_size]]
        yield indices, task.collate([dataset[i] for i in indices])


def _n_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def predict(
    model: nn.Module,
    task: Task,
    dataset: Dataset[Any],
    *,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    seed: int = 0,
    stage: str = "evaluate",
    temperature: float = 1.0,
    per_rule: Callable[[Any], dict[str, Tensor]] | None = None,
) -> Generator[Progress, None, Predictions]:
    """Run ``model`` over ``dataset`` in eval mode and inference mode.

    Attention sampling draws its samples from a generator seeded by (seed,
    batch), so the same seed gives the same predictions. Probabilities and the
    loss use ``logits / temperature`` (a calibration fitted in training);
    :attr:`Predictions.logits` keeps the logits before it. ``per_rule`` (a model's
    ``rule_logits``) also keeps, from the same pass, the logits of every decision rule
    in :attr:`Predictions.logits_by_rule`.
    """
    dev = resolve_device(device)
    model.to(dev).eval()
    n = len(dataset)  # type: ignore[arg-type]
    total = _n_batches(n, batch_size)
    probs: list[Tensor] = []
    raw: list[Tensor] = []
    labels: list[Tensor] = []
    by_rule: dict[str, list[Tensor]] = {}
    loss_sum = 0.0
    with torch.inference_mode():
        for b, (_, batch) in enumerate(_batches(dataset, task, batch_size, range(n))):
            output = task.call(model, batch, dev, sample_generator(seed, -1, b))
            for rule, value in (per_rule(output) if per_rule else {}).items():
                by_rule.setdefault(rule, []).append(value.float().cpu())
            logits = output.logits.float().cpu()
            raw.append(logits)
            logits = logits / float(temperature)
            loss_sum += float(F.cross_entropy(logits, batch.targets, reduction="sum"))
            probs.append(torch.softmax(logits, dim=1))
            labels.append(batch.targets)
            yield Progress(stage, b + 1, total)
    if not probs:
        raise ValueError("cannot predict on an empty dataset")
    return Predictions(
        probabilities=torch.cat(probs).numpy().astype(np.float64),
        labels=torch.cat(labels).numpy(),
        loss=loss_sum / n,
        logits=torch.cat(raw).numpy().astype(np.float64),
        logits_by_rule={r: torch.cat(v).numpy().astype(np.float64) for r, v in by_rule.items()},
    )


def _from_logits(logits: np.ndarray, labels: np.ndarray) -> Predictions:
    """Predictions (temperature 1) from logits kept by another pass."""
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    return Predictions(softmax(logits), labels, loss, logits)


def validate(
    model: nn.Module,
    task: Task,
    val_set: Dataset[Any],
    config: Any,
    device: torch.device,
    progress: tuple[int, int, str],
    per_rule: Callable[[Any], dict[str, Tensor]] | None = None,
) -> Generator[Progress, None, Predictions]:
    """:func:`predict` on the validation data with the training settings (``config``:
    batch size and seed), its progress shown as ``(offset, total, message)`` of the
    ``"train"`` stage."""
    offset, total, message = progress
    return (
        yield from _relabel(
            predict(
                model,
                task,
                val_set,
                batch_size=config.batch_size,
                device=device,
                seed=config.seed,
                per_rule=per_rule,
            ),
            offset,
            total,
            message,
        )
    )


def choose_decision_rule(
    model: nn.Module,
    task: Task,
    val_set: Dataset[Any],
    config: Any,
    device: torch.device,
    total: int,
) -> Generator[Progress, None, tuple[dict[str, Any], Predictions | None]]:
    """Set the model's slide decision rule (``config.decision``; ``"auto"``: the best on the
    validation data) when the model offers rules. Returns what was chosen and why, and the
    validation predictions under the chosen rule when they were computed (one pass scores
    every rule: they share the forward)."""
    rules: tuple[str, ...] | None = getattr(model, "decision_rules", None)
    set_decision: Callable[..., None] | None = getattr(model, "set_decision", None)
    rule_logits: Callable[[Any], dict[str, Tensor]] | None = getattr(model, "rule_logits", None)
    if not rules or set_decision is None or rule_logits is None:
        if config.decision not in ("auto", "attention"):
            raise ValueError(f"model {getattr(model, 'model_name', '')!r} has no decision rules")
        return {}, None
    if config.decision != "auto":
        set_decision(config.decision)
        return {"chosen": config.decision, "how": "fixed by the training configuration"}, None
    predictions = yield from validate(
        model,
        task,
        val_set,
        config,
        device,
        (total, total, "validating the decision rules"),
        per_rule=rule_logits,
    )
    chosen, scores, threshold = choose_decision(
        rules, predictions.logits_by_rule, predictions.labels
    )
    set_decision(chosen, threshold)
    info = {
        "chosen": chosen,
        "threshold": threshold,
        "how": "best balanced accuracy on the validation data, each rule at its best margin "
        "threshold; ties keep the earlier rule",
        "candidates": scores,
    }
    logits = predictions.logits_by_rule[chosen]
    return info, _from_logits(
        shifted(logits, threshold) if threshold else logits, predictions.labels
    )


def _relabel(
    gen: Generator[Progress, None, Predictions], offset: int, total: int, message: str
) -> Generator[Progress, None, Predictions]:
    """Re-emit a sub-generator's progress as part of the ``"train"`` stage."""
    while True:
        try:
            report = next(gen)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        yield Progress("train", min(total, offset + report.done), total, message)


@dataclass
class EvalResult:
    """Metrics and predictions of :func:`evaluate`."""

    metrics: dict[str, Any]
    predictions: Predictions


def evaluate(
    model: nn.Module,
    task: Task,
    dataset: Dataset[Any],
    class_names: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    seed: int = 0,
    temperature: float = 1.0,
) -> Generator[Progress, None, EvalResult]:
    """Predict over ``dataset`` and compute every classification metric.

    ``groups`` (patient id per item) adds the patient-level majority-vote
    accuracy; ``temperature`` is the calibration the checkpoint records. Yields
    stage ``"evaluate"`` once per batch.
    """
    predictions = yield from predict(
        model,
        task,
        dataset,
        batch_size=batch_size,
        device=device,
        seed=seed,
        temperature=temperature,
    )
    metrics = classification_metrics(
        predictions.labels, predictions.probabilities, class_names, groups
    )
    metrics["loss"] = predictions.loss
    return EvalResult(metrics, predictions)
