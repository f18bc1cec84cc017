"""From a model name and labelled data to what training needs: the family, its datasets,
its adapter and the checkpoint's ``preprocessing``.

A family says which training input it consumes (:attr:`~napari_histattn.models.family.Family.input`);
:func:`make_dataset` builds that input's dataset (images, bags of tiles, sampling
views, or bags of cached features), :func:`make_task` the family's adapter, and
:func:`preprocessing_of` / :func:`feature_preprocessing` what a checkpoint records
so that inference rebuilds the same inputs.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from napari_histattn.errors import HistattnError
from napari_histattn.models.family import Family, TaskOptions, family_for_model, runnable_models
from napari_histattn.models.tasks import Task
from napari_histattn.progress import Progress
from napari_histattn.training.datasets import (
    FeatureBagDataset,
    ImageDataset,
    LabelledData,
    SlideBagDataset,
    SlideOptions,
    SlideSamplingDataset,
)
from napari_histattn.training.datasets.annotated import InstanceLabeller
from napari_histattn.training.transforms import Augment, Normalise


def family_of(model_name: str) -> Family:
    """The family plug-in of a trainable model name."""
    family = family_for_model(model_name)
    if family is None:
        known = ", ".join(runnable_models())
        raise HistattnError(f"model {model_name!r} cannot be trained here; use one of {known}")
    return family


def _slide_options(options: SlideOptions, config: dict[str, Any]) -> SlideOptions:
    """Slide options with the model's patch size and downscale."""
    changes: dict[str, Any] = {}
    if "patch_size" in config:
        changes["patch_size"] = int(config["patch_size"])
    if "downscale" in config:
        changes["downscale"] = int(config["downscale"])
    return replace(options, **changes)


def make_dataset(
    input_kind: str,
    data: LabelledData,
    config: dict[str, Any],
    options: SlideOptions,
    *,
    augment: Augment | None,
    normalise: Normalise | None,
    seed: int,
    labeller: InstanceLabeller | None = None,
    labelled_only: bool = False,
    per_class: int | None = None,
    positions: bool = False,
) -> Dataset[Any]:
    """The dataset for a family's ``input`` kind over ``data``.

    ``"image"``: fixed-size images; ``"mil"``: bags of tissue tiles (with their grid
    positions when ``positions``); ``"sampling"``: a low-resolution view plus a
    high-resolution patch source.
    """
    if input_kind == "image":
        return ImageDataset(data, int(config["input_size"]), augment, normalise, seed)
    if input_kind == "mil":
        return SlideBagDataset(
            data,
            _slide_options(options, config),
            augment,
            normalise,
            seed,
            labeller=labeller,
            labelled_only=labelled_only,
            per_class=per_class,
            positions=positions,
        )
    if input_kind == "sampling":
        return SlideSamplingDataset(data, _slide_options(options, config), normalise)
    raise ValueError(f"no dataset for training input {input_kind!r}")


def make_task(family: Family, normalise: Normalise, chunk_size: int | None = 256) -> Task:
    """The family's training adapter for data normalised by ``normalise``."""
    mean = None if normalise.mean is None else list(normalise.mean)
    std = None if normalise.std is None else list(normalise.std)
    return family.task(TaskOptions(mean=mean, std=std, chunk_size=chunk_size))


def preprocessing_of(
    input_kind: str, config: dict[str, Any], options: SlideOptions, normalise: Normalise
) -> dict[str, Any]:
    """The checkpoint's ``preprocessing``: everything needed to rebuild the inputs."""
    out: dict[str, Any] = {"input": input_kind, **normalise.as_dict()}
    if input_kind == "image":
        out["image_size"] = int(config["input_size"])
    else:
        out.update(_slide_options(options, config).preprocessing())
    return out


def warm_start(model: Any, weights: Path | None) -> str | None:
    """Load ``weights`` into the model's registry encoder; their SHA-256, or None."""
    if weights is None:
        return None
    warm = getattr(model, "warm_start_feature_encoder", None)
    if not callable(warm):
        raise HistattnError(f"model {model.model_name!r} has no encoder to warm-start")
    try:
        return str(warm(weights))
    except ValueError as exc:
        raise HistattnError(str(exc)) from exc


def feature_preprocessing(dataset: FeatureBagDataset, max_patches: int | None) -> dict[str, Any]:
    """The ``preprocessing`` of a checkpoint trained on cached features: the encoder that made
    them (name, weights SHA-256, its tile side, mpp and mean/std) and the tiling."""
    info = dataset.info(0)
    encoder = dict(dataset.encoder or {})
    pre = encoder.get("preprocessing") or {}
    return {
        "input": "features",
        "feature_encoder": encoder,
        "patch_size": int(info["patch_size"]),
        "target_mpp": pre.get("target_mpp"),
        "mean": pre.get("mean"),
        "std": pre.get("std"),
        "tissue": info["tissue"],
        "max_patches": max_patches,
    }


def options_from_preprocessing(pre: dict[str, Any]) -> SlideOptions:
    from napari_histattn.inference.patches import TissueSettings

    tissue = pre.get("tissue") or {}
    return SlideOptions(
        patch_size=int(pre.get("patch_size") or 224),
        target_mpp=pre.get("target_mpp"),
        level=pre.get("level"),
        downsample=pre.get("downsample"),
        tissue=TissueSettings(**tissue),
        max_patches=pre.get("max_patches"),
        downscale=int(pre.get("downscale") or 8),
    )


def stage1(
    model: Any, task: Task, dataset: Dataset[Any], spec: Any, class_names: list[str]
) -> Generator[Progress, None, None]:
    """Stage 1 of two-stage training: the model learns ``dataset`` (the annotated tiles of
    the annotated training slides) from their annotation labels alone, the slide-label
    terms of the loss off, for ``spec.stage1_epochs`` epochs; stage 2 (the caller's
    training) goes on from the weights it leaves."""
    from napari_histattn.training.loop import train

    settings = replace(spec.train, epochs=spec.stage1_epochs, decision="attention", calibrate=False)
    model.bag_loss_weight = 0.0
    try:
        yield from train(model, task, dataset, None, settings, class_names=class_names)
    finally:
        model.bag_loss_weight = 1.0
