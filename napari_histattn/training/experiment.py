"""Cross-validated training and checkpoint evaluation over on-disk data (what the CLI runs).

:func:`cross_validate` splits a :class:`~napari_histattn.training.datasets.LabelledData`
into patient-wise folds, trains one model per fold (best epoch on validation
loss), evaluates it on the fold's held-out patients and writes, per fold and
pooled over the folds: the checkpoint, metrics JSON, ROC and confusion-matrix
PNGs and per-sample predictions. :func:`evaluate_checkpoint` rebuilds the
inputs from a checkpoint's preprocessing and scores it on other data.

Output layout of ``out_dir``::

    metrics.json            pooled out-of-fold metrics, per-fold metrics, mean and std
    roc.png, confusion_matrix.png, predictions.csv
    fold-1/model.safetensors (+ model.json), metrics.json, roc.png,
           confusion_matrix.png, predictions.csv, test.csv (the fold's test
           samples as a ``slide,label,patient`` CSV that ``--layout csv`` reads)
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from napari_histattn.errors import HistattnError
from napari_histattn.progress import Progress
from napari_histattn.training.datasets import (
    DatasetError,
    FeatureBagDataset,
    LabelledData,
    Sample,
    SlideOptions,
    estimate_normalisation,
)
from napari_histattn.training.inputs import (
    family_of,
    feature_preprocessing,
    make_dataset,
    make_task,
    options_from_preprocessing,
    preprocessing_of,
    warm_start,
)
from napari_histattn.training.loop import (
    EvalResult,
    Predictions,
    TrainConfig,
    evaluate,
    seed_everything,
    train,
)
from napari_histattn.training.metrics import classification_metrics
from napari_histattn.training.reports import write_evaluation, write_sample_csv
from napari_histattn.training.splits import cross_validation_folds
from napari_histattn.training.transforms import Augment, Normalise, as_triple

__all__ = [
    "ExperimentResult",
    "ExperimentSpec",
    "FoldResult",
    "cross_validate",
    "evaluate_checkpoint",
    "family_of",
    "make_dataset",
    "make_task",
    "relabel",
]

#: Metrics averaged over folds in ``metrics.json``.
SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "roc_auc", "patient_accuracy", "loss")


@dataclass
class ExperimentSpec:
    """What to train and how.

    Attributes
    ----------
    model_name
        A trainable registered model (``dafl_cnn``, ``amil``, ``attention_sampling``).
    model_config
        Keyword configuration; ``n_classes`` is set from the data.
    train
        Optimisation settings (seed, epochs, device...).
    folds
        Number of patient-wise folds (1: one train/validation/test split).
    val_fraction, test_fraction
        Validation share of each fold's training patients; test share when
        ``folds == 1``.
    slide_options
        Resolution, tissue and bag settings for the ``amil`` and
        ``attention_sampling`` families (``patch_size`` and ``downscale`` are
        taken from the model configuration).
    augment
        Flips, 90-degree rotations and light colour jitter during training.
    chunk_size
        A-MIL patches encoded at once.
    features_dir
        Train a bag model on cached features (``histattn features``) found here,
        one ``<slide stem>.h5`` per slide, instead of reading pixels; the model
        takes features (``encoder="none"``) and its checkpoint records the
        encoder that made them.
    encoder_weights
        Warm-start the model's registry encoder (A-MIL's ``encoder``, attention
        sampling's ``feature_encoder``) from these local weights before training.
    """

    model_name: str
    model_config: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    folds: int = 5
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    slide_options: SlideOptions = field(default_factory=SlideOptions)
    augment: Augment | None = field(default_factory=Augment)
    chunk_size: int | None = 256
    features_dir: Path | None = None
    encoder_weights: Path | None = None


@dataclass
class FoldResult:
    """One fold's outcome."""

    index: int
    checkpoint_path: Path | None
    metrics: dict[str, Any]
    best_epoch: int
    test_indices: np.ndarray
    predictions: Predictions


@dataclass
class ExperimentResult:
    """Every fold plus the pooled out-of-fold metrics."""

    folds: list[FoldResult]
    metrics: dict[str, Any]
    out_dir: Path


def _full_config(spec: ExperimentSpec, n_classes: int) -> dict[str, Any]:
    from napari_histattn.models.registry import default_config

    return {**default_config(spec.model_name), **spec.model_config, "n_classes": n_classes}


def _groups_if_meaningful(data: LabelledData) -> list[str] | None:
    groups = data.groups
    return groups if len(set(groups)) < len(groups) else None


def _close(dataset: Any) -> None:
    close = getattr(dataset, "close", None)
    if callable(close):
        close()


def _staged(gen: Generator[Progress, None, Any], stage: str) -> Generator[Progress, None, Any]:
    while True:
        try:
            report = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(stage, report.done, report.total, report.message)


def cross_validate(
    data: LabelledData, spec: ExperimentSpec, out_dir: str | Path
) -> Generator[Progress, None, ExperimentResult]:
    """Patient-wise k-fold training and testing; see the module docstring for the outputs.

    Yields
    ------
    Progress
        Stages ``"fold i/k train"`` and ``"fold i/k test"``, once per batch.
    """
    out = Path(out_dir)
    family = family_of(spec.model_name)
    class_names = list(data.class_names)
    config = _full_config(spec, len(class_names))
    probe = None
    if spec.features_dir is not None:
        if family.input != "mil":
            raise HistattnError(
                f"model {spec.model_name!r} does not take bags of tiles, so it cannot train on "
                "cached features; use amil"
            )
        probe = FeatureBagDataset(data, spec.features_dir)  # every slide has a usable file
        config = {**config, "encoder": "none", "embed_dim": probe.dim, "standardise": True}
        config["patch_size"] = int(probe.info(0)["patch_size"])
    seed = spec.train.seed
    splits = cross_validation_folds(
        data.labels, data.groups, spec.folds, seed, spec.val_fraction, spec.test_fraction
    )
    fold_results: list[FoldResult] = []
    k = len(splits)
    for fold in splits:
        name = f"fold-{fold.index + 1}"
        stage = f"fold {fold.index + 1}/{k}"
        train_data, val_data, test_data = (
            data.subset(fold.train),
            data.subset(fold.val),
            data.subset(fold.test),
        )
        train_set: Dataset[Any]
        val_set: Dataset[Any]
        test_set: Dataset[Any]
        if probe is not None:
            train_set, val_set, test_set = (
                FeatureBagDataset(
                    part,
                    probe.features_dir,
                    max_patches=spec.slide_options.max_patches,
                    train=part is train_data,
                    seed=seed,
                )
                for part in (train_data, val_data, test_data)
            )
            normalise = Normalise()
        else:
            train_set = make_dataset(
                family.input,
                train_data,
                config,
                spec.slide_options,
                augment=spec.augment,
                normalise=None,
                seed=seed,
            )
            normalise = estimate_normalisation(train_set)
            train_set.normalise = normalise  # type: ignore[attr-defined]
            val_set, test_set = (
                make_dataset(
                    family.input,
                    part,
                    config,
                    spec.slide_options,
                    augment=None,
                    normalise=normalise,
                    seed=seed,
                )
                for part in (val_data, test_data)
            )
        task = make_task(family, normalise, spec.chunk_size)
        if probe is not None:
            preprocessing = feature_preprocessing(probe, spec.slide_options.max_patches)
        else:
            preprocessing = preprocessing_of(family.input, config, spec.slide_options, normalise)
        seed_everything(seed)
        from napari_histattn.models.registry import create_model

        model = create_model(spec.model_name, **config)
        if isinstance(train_set, FeatureBagDataset):
            model.set_feature_scaling(*train_set.feature_stats())  # type: ignore[operator]
        warm = warm_start(model, spec.encoder_weights)
        result = yield from _staged(
            train(
                model,
                task,
                train_set,
                val_set,
                spec.train,
                class_names=class_names,
                preprocessing=preprocessing,
                checkpoint_path=out / name / "model.safetensors",
                training_info={
                    "data": data.summary(),
                    "fold": fold.index + 1,
                    "folds": k,
                    "split_sizes": {
                        "train": len(fold.train),
                        "val": len(fold.val),
                        "test": len(fold.test),
                    },
                    "eval_seed": seed,
                    **({"warm_start_sha256": warm} if warm else {}),
                },
                val_groups=_groups_if_meaningful(val_data),
            ),
            f"{stage} train",
        )
        evaluation: EvalResult = yield from _staged(
            evaluate(
                result.model,
                task,
                test_set,
                class_names,
                groups=_groups_if_meaningful(test_data),
                batch_size=spec.train.batch_size,
                device=spec.train.device,
                seed=seed,
            ),
            f"{stage} test",
        )
        for dataset in (train_set, val_set, test_set):
            _close(dataset)
        metrics = {
            **evaluation.metrics,
            "fold": fold.index + 1,
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "checkpoint": str(result.checkpoint_path),
        }
        write_evaluation(
            out / name, test_data, evaluation.predictions, metrics, class_names, f"({stage})"
        )
        write_sample_csv(test_data, out / name / "test.csv")
        fold_results.append(
            FoldResult(
                fold.index + 1,
                result.checkpoint_path,
                metrics,
                result.best_epoch,
                fold.test,
                evaluation.predictions,
            )
        )

    # Pooled out-of-fold predictions: every test sample once.
    order = np.concatenate([f.test_indices for f in fold_results])
    pooled_data = data.subset(order)
    probs = np.concatenate([f.predictions.probabilities for f in fold_results])
    labels = np.concatenate([f.predictions.labels for f in fold_results])
    pooled = Predictions(probs, labels, float(np.mean([f.predictions.loss for f in fold_results])))
    metrics = classification_metrics(labels, probs, class_names, _groups_if_meaningful(pooled_data))
    per_fold = [f.metrics for f in fold_results]
    metrics.update(
        {
            "model": spec.model_name,
            "model_config": config,
            "folds": k,
            "seed": seed,
            "data": data.summary(),
            "fold_mean": _fold_stat(per_fold, np.mean),
            "fold_std": _fold_stat(per_fold, np.std),
            "per_fold": per_fold,
        }
    )
    write_evaluation(out, pooled_data, pooled, metrics, class_names, "(all folds)")
    return ExperimentResult(fold_results, metrics, out)


def _fold_stat(per_fold: list[dict[str, Any]], fn: Any) -> dict[str, float]:
    out = {}
    for key in SUMMARY_KEYS:
        values = [m[key] for m in per_fold if isinstance(m.get(key), float)]
        values = [v for v in values if not np.isnan(v)]
        if values:
            out[key] = float(fn(values))
    return out


def relabel(data: LabelledData, class_names: Sequence[str]) -> LabelledData:
    """``data`` with labels re-indexed to ``class_names`` (matched by name).

    Raises
    ------
    DatasetError
        If the data has a class the checkpoint does not know.
    """
    names = list(class_names)
    unknown = sorted({data.class_names[s.label] for s in data.samples} - set(names))
    if unknown:
        raise DatasetError(
            data.root,
            f"class(es) {unknown} are not among the checkpoint's classes {names}",
        )
    samples = [
        Sample(s.path, names.index(data.class_names[s.label]), s.group, s.subtype, s.magnification)
        for s in data.samples
    ]
    return LabelledData(data.layout, data.root, names, samples)


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    data: LabelledData,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    device: str = "auto",
    seed: int | None = None,
    features_dir: str | Path | None = None,
) -> Generator[Progress, None, EvalResult]:
    """Score a checkpoint on ``data`` and write the evaluation files to ``out_dir``.

    The inputs are rebuilt from the checkpoint's preprocessing (image size or
    patch size and resolution, mean/std); a checkpoint trained on cached features
    reads them from ``features_dir``. Attention sampling draws from
    ``seed`` (default: the seed the checkpoint was evaluated with in training).
    """
    from napari_histattn.models import checkpoint

    loaded = checkpoint.load(checkpoint_path, device=device)
    pre = loaded.preprocessing
    family = family_of(loaded.model_name)
    input_kind = str(pre.get("input") or family.input)
    data = relabel(data, loaded.class_names)
    mean, std = pre.get("mean"), pre.get("std")
    normalise = (
        Normalise(as_triple(mean), as_triple(std))
        if mean is not None and std is not None
        else Normalise()
    )
    config = dict(loaded.config)
    if input_kind == "image" and pre.get("image_size") is not None:
        config["input_size"] = int(pre["image_size"])
    options = options_from_preprocessing(pre)
    dataset: Dataset[Any]
    if input_kind == "features":
        if features_dir is None:
            raise HistattnError(
                f"{loaded.path} was trained on cached features: give the folder of this "
                "data's features (histattn evaluate --features DIR)"
            )
        dataset = FeatureBagDataset(data, features_dir, max_patches=pre.get("max_patches"))
    else:
        dataset = make_dataset(
            input_kind, data, config, options, augment=None, normalise=normalise, seed=0
        )
    training = loaded.metadata.get("training") or {}
    eval_seed = int(
        seed if seed is not None else training.get("eval_seed", training.get("seed", 0))
    )
    task = make_task(family, normalise)
    result: EvalResult = yield from evaluate(
        loaded.model,
        task,
        dataset,
        loaded.class_names,
        groups=_groups_if_meaningful(data),
        batch_size=batch_size,
        device=device,
        seed=eval_seed,
    )
    _close(dataset)
    result.metrics["checkpoint"] = str(loaded.path)
    result.metrics["checkpoint_sha256"] = loaded.sha256
    write_evaluation(Path(out_dir), data, result.predictions, result.metrics, loaded.class_names)
    return result
