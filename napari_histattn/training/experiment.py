"""Cross-validated training and checkpoint evaluation over on-disk data (what the CLI runs).

:func:`cross_validate` splits a :class:`~napari_histattn.training.datasets.LabelledData`
into patient-wise folds, trains one model per fold (best epoch on validation
loss), evaluates it on the fold's held-out patients and writes, per fold and
pooled over the folds: the checkpoint, metrics JSON, ROC and confusion-matrix
PNGs and per-sample predictions. :func:`evaluate_checkpoint` (in
:mod:`.evaluation`, re-exported) scores a checkpoint on other data. With annotations
an A-MIL fold can train in two stages (annotated tiles first, then slide labels).

Output layout of ``out_dir``::

    metrics.json            pooled out-of-fold metrics, per-fold metrics, mean and std
    roc.png, confusion_matrix.png, predictions.csv
    fold-1/model.safetensors (+ model.json), metrics.json, roc.png,
           confusion_matrix.png, predictions.csv, test.csv (the fold's test
           samples as a ``slide,label,patient`` CSV that ``--layout csv`` reads)
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from torch.utils.data import Dataset

from napari_histattn.errors import HistattnError
from napari_histattn.progress import Progress
from napari_histattn.training.datasets import (
    FeatureBagDataset,
    LabelledData,
    SlideOptions,
    estimate_normalisation,
)
from napari_histattn.training.datasets.annotated import Annotations, InstanceLabeller
from napari_histattn.training.datasets.layouts import data_domain
from napari_histattn.training.evaluation import (
    _close,
    _groups_if_meaningful,
    evaluate_checkpoint,
    relabel,
)
from napari_histattn.training.inputs import (
    family_of,
    feature_preprocessing,
    make_dataset,
    make_task,
    preprocessing_of,
    stage1,
    warm_start,
)
from napari_histattn.training.instance_mil import InstanceMILConfig, instance_mil_stage
from napari_histattn.training.loop import (
    EvalResult,
    Predictions,
    TrainConfig,
    evaluate,
    seed_everything,
    train,
)
from napari_histattn.training.metrics import classification_metrics
from napari_histattn.training.patch_stage import freeze_encoder, stage1_on_patches
from napari_histattn.training.reports import write_evaluation, write_sample_csv
from napari_histattn.training.splits import cross_validation_folds
from napari_histattn.training.transforms import Augment, Normalise

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
    annotations
        A-MIL: a pathologist's annotations (GeoJSON per slide) as tile labels for the
        model's annotation loss; unannotated tiles and slides are unlabelled.
    stage1_epochs
        With ``annotations``: epochs of stage 1 (the annotated tiles of the annotated
        training slides, annotation loss only) before stage 2 (every slide, slide labels
        plus the annotation loss); 0 trains both at once.
    stage1_per_class
        Stage 1 as a patch classifier (:mod:`~napari_histattn.training.patch_stage`):
        at most this many annotated tiles per class per slide each epoch, the encoder
        and a head over the slide classes plus ``instance_classes``; None: stage 1
        trains the bag model on every annotated tile.
    instance_classes
        Annotation classes that are their own class in a patch-classifier stage 1
        (look-alikes, normal tissue), beside the slide classes.
    freeze_encoder
        Stage 2 trains attention and head only (pixel training).
    instance_mil
        Two-class A-MIL on cached features: fit the head by instance MIL from slide
        labels first (:mod:`~napari_histattn.training.instance_mil`), then train the
        attention with the head frozen.
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
    annotations: Annotations | None = None
    stage1_epochs: int = 0
    stage1_per_class: int | None = None
    instance_classes: tuple[str, ...] = ()
    freeze_encoder: bool = False
    instance_mil: InstanceMILConfig | None = None


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
    labeller = None
    if spec.annotations is not None:
        if family.input != "mil":
            raise HistattnError(
                f"model {spec.model_name!r} does not learn from tile labels; annotations train amil"
            )
        labeller = InstanceLabeller(spec.annotations, class_names)
    domain = data_domain(data)  # what the checkpoint says it knows (inference warns outside it)
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
                    labeller=labeller if part is train_data else None,
                    positions=family.bag_positions,
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
                labeller=labeller,
                positions=family.bag_positions,
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
                    positions=family.bag_positions,
                )
                for part in (val_data, test_data)
            )
        if labeller is not None:  # every annotation file read now, naming a bad one
            for index in range(len(train_data)):
                cast(Any, train_set).tile_labels(index)
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
        stage1_record: dict[str, Any] = {}
        if labeller is not None and spec.stage1_epochs > 0 and spec.stage1_per_class:
            stage1_record = yield from _staged(
                stage1_on_patches(
                    model, train_data, labeller, spec, config, normalise, class_names
                ),
                f"{stage} stage 1",
            )
        elif labeller is not None and spec.stage1_epochs > 0:
            annotated = _stage1_set(train_data, labeller, spec, config, probe, normalise)
            yield from _staged(
                stage1(model, task, annotated, spec, class_names), f"{stage} stage 1"
            )
            _close(annotated)
        if spec.freeze_encoder:
            stage1_record["frozen_encoder_parameters"] = freeze_encoder(model)
        if spec.instance_mil is not None:
            if not isinstance(train_set, FeatureBagDataset) or spec.model_name != "amil":
                raise HistattnError("instance MIL trains amil on cached --features")
            record = yield from _staged(
                instance_mil_stage(model, train_set, cast(Any, val_set), spec.instance_mil),
                f"{stage} stage 1",
            )
            stage1_record["instance_mil"] = {**record, "positive_class": class_names[1]}
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
                    "domain": domain,
                    "fold": fold.index + 1,
                    "folds": k,
                    "split_sizes": {
                        "train": len(fold.train),
                        "val": len(fold.val),
                        "test": len(fold.test),
                    },
                    "eval_seed": seed,
                    **({"warm_start_sha256": warm} if warm else {}),
                    **(
                        {"annotations": labeller.summary(), "stage1_epochs": spec.stage1_epochs}
                        if labeller is not None
                        else {}
                    ),
                    **({"stage1": stage1_record} if stage1_record else {}),
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
                temperature=result.temperature,
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
            "temperature": result.temperature,
            **({"decision": result.decision["chosen"]} if result.decision else {}),
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


def _stage1_set(
    train_data: LabelledData,
    labeller: InstanceLabeller,
    spec: ExperimentSpec,
    config: dict[str, Any],
    probe: FeatureBagDataset | None,
    normalise: Normalise,
) -> Dataset[Any]:
    """The annotated tiles of the annotated training slides (stage 1)."""
    keep = [i for i, s in enumerate(train_data.samples) if labeller.has_annotations(s.path)]
    if not keep:
        raise HistattnError(
            "stage 1 needs annotated training slides; none has a GeoJSON file in "
            f"{labeller.annotations.folder}"
        )
    part = train_data.subset(keep)
    seed = spec.train.seed
    family = family_of(spec.model_name)
    if probe is not None:
        return FeatureBagDataset(
            part,
            probe.features_dir,
            max_patches=spec.slide_options.max_patches,
            train=True,
            seed=seed,
            labeller=labeller,
            labelled_only=True,
            positions=family.bag_positions,
        )
    return make_dataset(
        family.input,
        part,
        config,
        spec.slide_options,
        augment=spec.augment,
        normalise=normalise,
        seed=seed,
        labeller=labeller,
        labelled_only=True,
        positions=family.bag_positions,
    )


def _fold_stat(per_fold: list[dict[str, Any]], fn: Any) -> dict[str, float]:
    out = {}
    for key in SUMMARY_KEYS:
        values = [m[key] for m in per_fold if isinstance(m.get(key), float)]
        values = [v for v in values if not np.isnan(v)]
        if values:
            out[key] = float(fn(values))
    return out
