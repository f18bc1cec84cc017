"""The training loop and evaluation, as generators that yield progress.

:func:`train` runs Adam with learning-rate decay, early stopping on the
validation loss and best-checkpoint selection on it, deterministic from a seed
(Python, NumPy and torch seeded; shuffling, augmentation and attention sampling
draw from generators seeded by (seed, epoch, index)). It yields one
:class:`~napari_histattn.progress.Progress` per batch and returns a
:class:`TrainResult`; the best checkpoint is written through
:func:`napari_histattn.models.checkpoint.save` when a path is given.

After the best epoch is loaded, a model that offers slide decision rules gets
one chosen on the validation data, and a temperature is fitted to the
validation logits (:mod:`napari_histattn.training.calibration`); both are
saved in the checkpoint. :func:`predict` and :func:`evaluate` (re-exported
from :mod:`napari_histattn.training.predict`) run a model over a dataset.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import Dataset

from napari_histattn.models.device import resolve_device
from napari_histattn.progress import Progress
from napari_histattn.training.calibration import Calibration, softmax
from napari_histattn.training.metrics import classification_metrics, jsonable
from napari_histattn.training.predict import (
    EvalResult,
    Predictions,
    _batches,
    _n_batches,
    choose_decision_rule,
    evaluate,
    predict,
    validate,
)
from napari_histattn.training.tasks import Task
from napari_histattn.training.transforms import sample_generator

__all__ = [
    "EpochRecord",
    "EvalResult",
    "Predictions",
    "SCHEDULERS",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "predict",
    "seed_everything",
    "train",
]

SCHEDULERS = ("step", "cosine", "none")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may draw from the legacy global state
    torch.manual_seed(seed)


@dataclass
class TrainConfig:
    """Optimisation settings.

    Attributes
    ----------
    epochs
        Maximum number of epochs.
    batch_size
        Items per batch.
    lr, weight_decay
        Adam learning rate and (L2) weight decay.
    scheduler
        ``"step"`` (multiply the rate by ``gamma`` every ``step_size``
        epochs), ``"cosine"`` (cosine annealing to 0 over ``epochs``) or
        ``"none"``.
    step_size, gamma
        StepLR settings.
    patience
        Stop after this many epochs without a lower validation loss; None
        never stops early.
    seed
        Seeds everything random in training.
    device
        ``"auto"`` (cuda, then mps, then cpu) or a torch device name.
    grad_clip
        Clip the gradient norm to this value, if given.
    decision
        A model that offers slide decision rules (A-MIL: ``decision_rules``):
        ``"auto"`` picks one on the validation data
        (:func:`~napari_histattn.training.calibration.choose_decision`), a rule
        name fixes it.
    calibrate
        Fit a temperature to the best epoch's validation logits and record it in
        the checkpoint (needs validation data with at least two classes).
    """

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    scheduler: str = "step"
    step_size: int = 30
    gamma: float = 0.5
    patience: int | None = 10
    seed: int = 0
    device: str = "auto"
    grad_clip: float | None = None
    decision: str = "auto"
    calibrate: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")


@dataclass
class EpochRecord:
    """What happened in one epoch (``val_*`` are None without validation data)."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float


@dataclass
class TrainResult:
    """The outcome of :func:`train`.

    Attributes
    ----------
    model
        The trained model with the best epoch's weights loaded, in eval mode.
    best_state
        The best epoch's ``state_dict`` (CPU tensors).
    best_epoch
        0-based epoch with the lowest validation loss (training loss when there
        is no validation data).
    best_val_loss
        That loss.
    history
        One :class:`EpochRecord` per epoch run.
    stopped_early
        Whether early stopping ended training.
    val_metrics
        Classification metrics of the best model on the validation data.
    checkpoint_path
        The saved ``.safetensors`` file, or None.
    calibration
        The temperature fitted on the validation data (None: not calibrated).
    decision
        The decision rule chosen and every candidate's validation scores (empty for
        a model without rules).
    """

    model: nn.Module
    best_state: dict[str, Tensor]
    best_epoch: int
    best_val_loss: float
    history: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False
    val_metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint_path: Path | None = None
    calibration: Calibration | None = None
    decision: dict[str, Any] = field(default_factory=dict)

    @property
    def temperature(self) -> float:
        """The fitted temperature (1.0 when uncalibrated)."""
        return 1.0 if self.calibration is None else self.calibration.temperature

    def summary(self) -> dict[str, Any]:
        """JSON-ready training summary (history, best epoch, metrics)."""
        return jsonable(
            {
                "best_epoch": self.best_epoch,
                "best_val_loss": self.best_val_loss,
                "epochs_run": len(self.history),
                "stopped_early": self.stopped_early,
                "history": [vars(r) for r in self.history],
                "val_metrics": self.val_metrics,
                "decision": self.decision,
                "calibration": None if self.calibration is None else self.calibration.as_dict(),
            }
        )


def _set_epoch(dataset: Dataset[Any], epoch: int) -> None:
    set_epoch: Callable[[int], None] | None = getattr(dataset, "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)


def _make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_size, gamma=config.gamma
        )
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except normalisation layers whose parameters are all frozen:
    they stay in eval mode, so a frozen encoder's running statistics do not drift."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def train(
    model: nn.Module,
    task: Task,
    train_set: Dataset[Any],
    val_set: Dataset[Any] | None,
    config: TrainConfig,
    *,
    class_names: Sequence[str],
    preprocessing: dict[str, Any] | None = None,
    checkpoint_path: str | Path | None = None,
    training_info: dict[str, Any] | None = None,
    val_groups: Sequence[str] | None = None,
) -> Generator[Progress, None, TrainResult]:
    """Train ``model`` and select its best epoch on the validation loss.

    Parameters
    ----------
    model
        A model from :func:`~napari_histattn.models.registry.create_model`.
        Seed (:func:`seed_everything`) before creating it for reproducible
        initial weights.
    task
        The family adapter (:func:`~napari_histattn.training.tasks.task_for_model`).
    train_set, val_set
        Datasets of the family's items; ``val_set`` may be None (then the
        training loss selects the epoch and early stopping is off).
    config
        Optimisation settings.
    class_names
        Class names in label order (saved in the checkpoint).
    preprocessing
        Saved in the checkpoint (patch size, mpp or level, mean/std, downscale...).
    checkpoint_path
        Where to save the best model; nothing is saved when None.
    training_info
        Extra JSON-ready facts for the checkpoint's ``training`` metadata
        (data summary...); the seed, epochs and results are added.
    val_groups
        Patient id per validation item, for the patient-level accuracy.

    Yields
    ------
    Progress
        Stage ``"train"``, once per training or validation batch.

    Returns
    -------
    TrainResult
    """
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model.to(device)
    n_train = len(train_set)  # type: ignore[arg-type]
    if n_train == 0:
        raise ValueError("the training set is empty")
    n_val = 0 if val_set is None else len(val_set)  # type: ignore[arg-type]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _make_scheduler(optimizer, config)
    per_epoch = _n_batches(n_train, config.batch_size) + _n_batches(n_val, config.batch_size)
    total = per_epoch * config.epochs
    done = 0

    history: list[EpochRecord] = []
    best_loss = math.inf
    best_epoch = -1
    best_state: dict[str, Tensor] = {}
    stale = 0
    stopped_early = False
    for epoch in range(config.epochs):
        train_mode(model)
        _set_epoch(train_set, epoch)
        order = torch.randperm(n_train, generator=sample_generator(config.seed, epoch, -1))
        loss_sum, seen = 0.0, 0
        lr = float(optimizer.param_groups[0]["lr"])
        for b, (_, batch) in enumerate(
            _batches(train_set, task, config.batch_size, order.tolist())
        ):
            output = task.call(model, batch, device, sample_generator(config.seed, epoch, b))
            loss = task.loss(model, output, batch.targets.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {float(loss)} at epoch {epoch}, batch {b}; "
                    "lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            loss_sum += float(loss.detach()) * len(batch)
            seen += len(batch)
            done += 1
            yield Progress(
                "train",
                done,
                total,
                f"epoch {epoch + 1}/{config.epochs} loss {loss_sum / seen:.4f}",
            )
        if scheduler is not None:
            scheduler.step()
        train_loss = loss_sum / seen

        val_loss: float | None = None
        val_accuracy: float | None = None
        if val_set is not None and n_val:
            predictions = yield from validate(
                model,
                task,
                val_set,
                config,
                device,
                (done, total, f"epoch {epoch + 1}/{config.epochs} validating"),
            )
            done += _n_batches(n_val, config.batch_size)
            val_loss = predictions.loss
            val_accuracy = float(np.mean(predictions.predicted == predictions.labels))
        history.append(EpochRecord(epoch, train_loss, val_loss, val_accuracy, lr))

        selection_loss = val_loss if val_loss is not None else train_loss
        if selection_loss < best_loss:
            best_loss, best_epoch, stale = selection_loss, epoch, 0
            best_state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if val_loss is not None and config.patience is not None and stale >= config.patience:
            stopped_early = True
            break

    model.load_state_dict(best_state)
    model.eval()
    val_metrics: dict[str, Any] = {}
    calibration: Calibration | None = None
    decision: dict[str, Any] = {}
    if val_set is not None and n_val:
        decision, chosen = yield from choose_decision_rule(
            model, task, val_set, config, device, total
        )
        predictions = chosen or (
            yield from validate(
                model, task, val_set, config, device, (total, total, "validating the best epoch")
            )
        )
        assert predictions.logits is not None
        if config.calibrate and len(np.unique(predictions.labels)) > 1:
            calibration = Calibration.fit(predictions.logits, predictions.labels)
            probabilities = softmax(predictions.logits / calibration.temperature)
        else:
            probabilities = predictions.probabilities
        val_metrics = classification_metrics(
            predictions.labels, probabilities, class_names, val_groups
        )
    result = TrainResult(
        model=model,
        best_state=best_state,
        best_epoch=best_epoch,
        best_val_loss=best_loss,
        history=history,
        stopped_early=stopped_early,
        val_metrics=val_metrics,
        calibration=calibration,
        decision=decision,
    )
    if checkpoint_path is not None:
        from napari_histattn.models import checkpoint

        training = jsonable(
            {
                **(training_info or {}),
                "seed": config.seed,
                "config": vars(config),
                **result.summary(),
            }
        )
        result.checkpoint_path = checkpoint.save(
            checkpoint_path,
            model,
            class_names=list(class_names),
            preprocessing=jsonable(preprocessing or {}),
            training=training,
            calibration=None if calibration is None else calibration.as_dict(),
        )
    return result
