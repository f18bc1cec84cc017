"""Stage 1 as a patch classifier: the encoder learns the annotation classes from balanced tiles.

The bag form of stage 1 (:func:`~napari_histattn.training.inputs.stage1`) trains the
A-MIL model on every annotated tile with the slide classes only. On slides where a
lesion of a few dozen tiles sits among thousands of normal ones and look-alikes
of its size, that teaches "normal vs. everything else", and the look-alikes,
mapped to benign, are drowned by normal tissue (measured in
``benchmarks/small_lesions.py``). This form does what the demo recipe does:

- the annotation classes stay apart (``instance_classes``: a look-alike or a
  "tissue" outline is its own class in stage 1, beside the slide classes);
- each epoch draws at most ``per_class`` annotated tiles of each class from each
  annotated slide (:class:`~napari_histattn.training.datasets.slides.SlideBagDataset`
  ``per_class``), so a small lesion is as frequent as the tissue around it;
- the encoder and a temporary linear head over those classes are trained with
  cross-entropy on the tiles; then the model's slide head starts from that head
  (a slide class's row is the mean of the rows of the stage-1 classes that map
  to it), and stage 2 (optionally with the encoder frozen) learns attention and
  head from slide labels.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from napari_histattn.errors import HistattnError
from napari_histattn.models.device import resolve_device
from napari_histattn.progress import Progress
from napari_histattn.training.datasets.annotated import Annotations, InstanceLabeller
from napari_histattn.training.datasets.layouts import LabelledData
from napari_histattn.training.evaluation import _close
from napari_histattn.training.inputs import family_of, make_dataset
from napari_histattn.training.loop import TrainConfig, train_mode
from napari_histattn.training.transforms import Normalise

__all__ = [
    "freeze_encoder",
    "head_targets",
    "patch_stage1",
    "stage1_classes",
    "stage1_labeller",
    "stage1_on_patches",
]


def stage1_classes(slide_classes: Sequence[str], instance_classes: Sequence[str]) -> list[str]:
    """The slide classes, then each instance class that is not one of them."""
    known = {name.lower() for name in slide_classes}
    extra = [name for name in instance_classes if name.lower() not in known]
    return [*slide_classes, *dict.fromkeys(extra)]


def stage1_labeller(
    annotations: Annotations, slide_classes: Sequence[str], instance_classes: Sequence[str]
) -> InstanceLabeller:
    """Tile labels over :func:`stage1_classes`: an instance class labels its own tiles
    (its ``class_map`` entry, which says what it counts as in stage 2, is set aside)."""
    own = {name.lower() for name in instance_classes}
    class_map = {k: v for k, v in annotations.class_map.items() if k.lower() not in own}
    return InstanceLabeller(
        replace(annotations, class_map=class_map),
        stage1_classes(slide_classes, instance_classes),
    )


def head_targets(
    classes: Sequence[str], slide_classes: Sequence[str], annotations: Annotations
) -> list[int | None]:
    """For each stage-1 class, the slide class whose head row it starts (None: none):
    itself for a slide class, its ``class_map`` entry (``lookalike=benign``) for an
    instance class."""
    lowered = [name.lower() for name in slide_classes]
    mapped = {k.lower(): v for k, v in annotations.class_map.items()}
    targets: list[int | None] = []
    for name in classes:
        target = name if name.lower() in lowered else mapped.get(name.lower())
        targets.append(None if target is None else lowered.index(target.lower()))
    return targets


def patch_stage1(
    model: Any,
    dataset: Any,
    classes: Sequence[str],
    targets: Sequence[int | None],
    settings: TrainConfig,
    epochs: int,
    chunk_size: int | None = 256,
    tile_batch: int = 64,
) -> Generator[Progress, None, dict[str, Any]]:
    """Train ``model.encoder`` plus a linear head over ``classes`` on ``dataset``'s
    annotated tiles, then start ``model``'s slide head from it.

    ``dataset`` yields ``(patches, instance_labels, slide_label)`` (a
    ``SlideBagDataset`` with ``labelled_only`` and ``per_class``); the tiles of
    ``settings.batch_size`` slides at a time are shuffled and learnt ``tile_batch``
    at a time. Yields progress per group of slides; returns what stage 1 did (for the checkpoint's training
    record): classes, tiles per class in the last epoch, loss and balanced
    accuracy of the last epoch.
    """
    if getattr(model, "encoder", None) is None:
        raise HistattnError("stage 1 on patches trains the encoder; this model has none")
    device = resolve_device(settings.device)
    model.to(device)
    torch.manual_seed(settings.seed)
    head = nn.Linear(int(model.embed_dim), len(classes)).to(device)
    params = [p for p in model.encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimiser = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    order_gen = torch.Generator().manual_seed(settings.seed)
    n, batch = len(dataset), max(1, settings.batch_size)
    steps = epochs * -(-n // batch)
    done = optimiser_steps = 0
    counts = np.zeros(len(classes), np.int64)
    hits = np.zeros(len(classes), np.int64)
    losses: list[float] = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        train_mode(model)
        counts[:], hits[:], losses = 0, 0, []
        order = torch.randperm(n, generator=order_gen).tolist()
        for start in range(0, n, batch):
            items = [dataset[i] for i in order[start : start + batch]]
            patches = torch.cat([item[0] for item in items])
            labels = torch.cat([item[1] for item in items])
            keep = torch.nonzero(labels >= 0).flatten()
            # The tiles of these slides, shuffled, in minibatches: one optimiser step per
            # ``tile_batch`` tiles, not per group of slides (a few steps an epoch stalls).
            keep = keep[torch.randperm(keep.numel(), generator=order_gen)]
            for first in range(0, keep.numel(), tile_batch):
                pick = keep[first : first + tile_batch]
                logits = head(model.encode(patches[pick], chunk_size=chunk_size))
                target = labels[pick].to(device)
                loss = nn.functional.cross_entropy(logits, target)
                if not torch.isfinite(loss):
                    raise HistattnError(
                        f"stage 1 diverged at epoch {epoch + 1} (loss {loss.item()})"
                    )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
                y = target.cpu().numpy()
                counts += np.bincount(y, minlength=len(classes))
                right = y[logits.argmax(1).cpu().numpy() == y]
                hits += np.bincount(right, minlength=len(classes))
                optimiser_steps += 1
            done += 1
            yield Progress(
                "stage 1 patches", done, steps, f"epoch {epoch + 1}/{epochs} loss {losses[-1]:.3f}"
            )
    _start_head(model, head, targets)
    seen = counts > 0
    return {
        "form": "patches",
        "classes": list(classes),
        "epochs": epochs,
        "optimiser_steps": optimiser_steps,
        "tile_batch": tile_batch,
        "tiles_last_epoch": {c: int(k) for c, k in zip(classes, counts, strict=True)},
        "loss_last_epoch": float(np.mean(losses)) if losses else float("nan"),
        "balanced_accuracy_last_epoch": float(np.mean(hits[seen] / counts[seen]))
        if seen.any()
        else float("nan"),
        "head_started_from": {c: t for c, t in zip(classes, targets, strict=True)},
    }


def _start_head(model: Any, head: nn.Linear, targets: Sequence[int | None]) -> None:
    """The model's slide head rows from the stage-1 head (mean over the classes mapped to each)."""
    final = model.head[-1] if isinstance(model.head, nn.Sequential) else model.head
    if not isinstance(final, nn.Linear) or final.in_features != head.in_features:
        return  # several attention branches: the head sees concatenated features
    with torch.no_grad():
        for c in range(final.out_features):
            rows = [j for j, t in enumerate(targets) if t == c]
            if rows:
                final.weight[c].copy_(head.weight[rows].mean(0))
                final.bias[c].copy_(head.bias[rows].mean(0))


def freeze_encoder(model: Any) -> int:
    """Stop the encoder's parameters from learning (stage 2 with a frozen encoder); the
    training loop keeps its normalisation layers in eval mode. Returns how many
    parameters were frozen."""
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise HistattnError("--freeze-encoder needs a model with an encoder (not cached features)")
    frozen = 0
    for p in encoder.parameters():
        p.requires_grad_(False)
        frozen += p.numel()
    return frozen


def stage1_on_patches(
    model: Any,
    train_data: LabelledData,
    labeller: InstanceLabeller,
    spec: Any,
    config: dict[str, Any],
    normalise: Normalise,
    class_names: list[str],
) -> Generator[Progress, None, dict[str, Any]]:
    """Stage 1 as a patch classifier on the balanced annotated tiles of the annotated
    training slides (``spec``: an ``ExperimentSpec`` with ``stage1_per_class``)."""
    assert spec.annotations is not None
    classes = stage1_classes(class_names, spec.instance_classes)
    own = stage1_labeller(spec.annotations, class_names, spec.instance_classes)
    keep = [i for i, s in enumerate(train_data.samples) if labeller.has_annotations(s.path)]
    if not keep:
        raise HistattnError(
            "stage 1 needs annotated training slides; none has a GeoJSON file in "
            f"{labeller.annotations.folder}"
        )
    dataset = make_dataset(
        family_of(spec.model_name).input,
        train_data.subset(keep),
        config,
        spec.slide_options,
        augment=spec.augment,
        normalise=normalise,
        seed=spec.train.seed,
        labeller=own,
        labelled_only=True,
        per_class=spec.stage1_per_class,
    )
    try:
        record = yield from patch_stage1(
            model,
            dataset,
            classes,
            head_targets(classes, class_names, spec.annotations),
            spec.train,
            spec.stage1_epochs,
            spec.chunk_size,
        )
    finally:
        _close(dataset)
    return {
        **record,
        "per_class": spec.stage1_per_class,
        "labelled_tiles": own.summary()["labelled_tiles"],
    }
