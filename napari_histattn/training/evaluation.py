"""Scoring a saved checkpoint on other data (``histattn evaluate``).

:func:`evaluate_checkpoint` rebuilds the inputs from a checkpoint's
preprocessing (image size or patch size and resolution, mean/std; cached
features for a features-trained model), applies its recorded calibration and
writes the evaluation files; :func:`relabel` matches the data's classes to the
checkpoint's by name.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from napari_histattn.errors import HistattnError
from napari_histattn.progress import Progress
from napari_histattn.training.datasets import (
    DatasetError,
    FeatureBagDataset,
    LabelledData,
    Sample,
)
from napari_histattn.training.inputs import (
    family_of,
    make_dataset,
    make_task,
    options_from_preprocessing,
)
from napari_histattn.training.loop import EvalResult, evaluate
from napari_histattn.training.reports import write_evaluation
from napari_histattn.training.transforms import Normalise, as_triple

__all__ = ["evaluate_checkpoint", "relabel"]


def _groups_if_meaningful(data: LabelledData) -> list[str] | None:
    """Patient ids when some patient has several items (else the patient accuracy is moot)."""
    groups = data.groups
    return groups if len(set(groups)) < len(groups) else None


def _close(dataset: Any) -> None:
    """Close a dataset's open slides, if it holds any."""
    close = getattr(dataset, "close", None)
    if callable(close):
        close()


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
        dataset = FeatureBagDataset(
            data,
            features_dir,
            max_patches=pre.get("max_patches"),
            positions=family.bag_positions,
        )
    else:
        dataset = make_dataset(
            input_kind,
            data,
            config,
            options,
            augment=None,
            normalise=normalise,
            seed=0,
            positions=family.bag_positions,
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
        temperature=loaded.temperature,
    )
    _close(dataset)
    result.metrics["checkpoint"] = str(loaded.path)
    result.metrics["checkpoint_sha256"] = loaded.sha256
    result.metrics["temperature"] = loaded.temperature
    write_evaluation(Path(out_dir), data, result.predictions, result.metrics, loaded.class_names)
    return result
