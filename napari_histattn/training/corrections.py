"""Fine-tune an A-MIL checkpoint on a reviewer's corrections of one slide.

The classify widget's review export (``<slide stem>_regions.geojson``) holds the model's
regions with the reviewer's decisions and the reviewer's own outlines.
:func:`fine_tune_on_corrections` turns them into tile labels (:func:`correction_marks`),
encodes every tissue tile of the slide once through the inference path (the same tiles,
resolution and normalisation that Classify uses, so the "after" below is what the new
checkpoint shows), and trains the attention and the head on those embeddings with the
encoder frozen:

- the slide's class (cross-entropy of the attention-pooled logits), so that the call
  stays the reviewer's;
- each marked tile's class (cross-entropy of the head on that tile alone);
- the attention of each marked tile: a positive mark's above every other mark's (a
  logistic loss on the difference of their attention scores, over random pairs), and
  above the unmarked tissue's at ``unmarked_weight`` (default half): the localisation
  below counts unmarked tissue as "not a lesion", and so does this term, so outline
  every lesion you see (an unmarked one is pushed down) or set it to 0.

The encoder is frozen because one slide is far too little to retrain it, and because
then the checkpoint's feature reference (its out-of-distribution score) stays valid.
The localisation before and after (ROC AUC over tissue tiles of the attention against
the reviewer's positive marks, and the attention mass inside them) is measured on the
very marks the model was fitted to: it says the correction took, not that the model now
generalises; judge that on other slides.

A rejected model region says what a region is not; in a two-class model that is the
other class, so it labels its tiles as such here (:func:`correction_marks`). Pending
model regions label nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from napari_histattn.errors import HistattnError
from napari_histattn.io.export.geojson_read import read_geojson_regions
from napari_histattn.io.grid import Region
from napari_histattn.io.tile_labels import reviewed_for_training, tile_labels
from napari_histattn.progress import Progress
from napari_histattn.stats import roc_auc_binary

__all__ = [
    "FineTuned",
    "correction_marks",
    "default_output",
    "fine_tune_on_corrections",
]

#: Index of the positive class of a two-class model (``benign / lesion``).
POSITIVE = 1
#: Most (positive mark, other mark) pairs of the attention's ranking term per step.
MAX_PAIRS = 8192


@dataclass
class FineTuned:
    """What :func:`fine_tune_on_corrections` did, before and after.

    Attributes
    ----------
    checkpoint_path
        The new checkpoint (``.safetensors`` plus its JSON sidecar).
    positive_class, positive_index
        The class whose marks the localisation is measured against, and its index.
    auc_before, auc_after
        ROC AUC over the slide's tissue tiles of the attention against the reviewer's
        marks of ``positive_class`` (NaN without both marked and other tiles).
    mass_before, mass_after
        Fraction of the attention inside those marks.
    probabilities_before, probabilities_after
        The slide's class probabilities.
    record
        The training record written into the checkpoint (``training["fine_tuned"]``).
    """

    checkpoint_path: Path
    positive_class: str
    positive_index: int
    auc_before: float
    auc_after: float
    mass_before: float
    mass_after: float
    probabilities_before: list[float]
    probabilities_after: list[float]
    record: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """Before and after, in words."""
        return (
            f"localisation against your {self.positive_class} marks (ROC AUC over tissue "
            f"tiles) {self.auc_before:.2f} -> {self.auc_after:.2f}; attention inside them "
            f"{self.mass_before:.2f} -> {self.mass_after:.2f}; p({self.positive_class}) "
            f"{self.probabilities_before[self.positive_index]:.2f} -> "
            f"{self.probabilities_after[self.positive_index]:.2f}. Measured on the marks it was fitted "
            "to: the correction took, not a test of other slides."
        )


def default_output(checkpoint: str | os.PathLike[str], slide: str | os.PathLike[str]) -> Path:
    """Where the fine-tuned checkpoint goes by default: beside the slide,
    ``<checkpoint stem>+<slide stem>.safetensors``."""
    slide_path = Path(slide)
    return slide_path.with_name(f"{Path(checkpoint).stem}+{slide_path.stem}.safetensors")


def correction_marks(regions: Sequence[Region], class_names: Sequence[str]) -> list[Region]:
    """The regions of a review export that label tiles when fine-tuning: what training
    uses (:func:`~napari_histattn.io.tile_labels.reviewed_for_training`: the reviewer's
    outlines, accepted and reclassified model regions), and, in a two-class model, each
    rejected model region as the other class than the one the model gave it."""
    marks = list(reviewed_for_training(regions))
    if len(class_names) != 2:
        return marks
    lowered = [name.casefold() for name in class_names]
    for region in regions:
        meta = region.metadata
        if meta.get("source") != "model" or meta.get("review") != "rejected":
            continue
        given = (region.class_name or "").casefold()
        if given in lowered:
            other = class_names[1 - lowered.index(given)]
            marks.append(replace(region, class_name=other))
    return marks


def _check_model(ckpt: Any) -> Any:
    from napari_histattn.models.family import family_for_model

    family = family_for_model(ckpt.model_name)
    model = ckpt.model
    if family is None or ckpt.model_name != "amil" or not hasattr(model, "forward_features"):
        raise HistattnError(
            f"fine-tuning on corrections needs an A-MIL checkpoint; {Path(ckpt.path).name} "
            f"is {ckpt.model_name!r}"
        )
    return family


def _labels(
    regions: list[Region], plan: Any, chosen: np.ndarray, class_names: list[str], source: Path
) -> np.ndarray:
    found = tile_labels(plan.l0_xy[chosen], plan.tile_l0, regions, class_names)
    present = [name for name, count in found.counts.items() if count > 0]
    if not present:
        raise HistattnError(
            f"{source.name} marks no tissue tile of this slide with one of the model's classes "
            f"({', '.join(class_names)}): accept, reject or reclassify a region, or outline "
            "tissue with one of those classes"
            + (f" (ignored classes: {', '.join(found.ignored)})" if found.ignored else "")
        )
    if len(present) < 2:
        raise HistattnError(
            f"your corrections mark only {present[0]!r} tiles; mark what is not "
            f"{present[0]!r} too (reject or reclassify a model region, or outline such "
            "tissue), so that the attention learns what to leave"
        )
    return found.labels


def _slide_class(labels: np.ndarray, class_names: list[str], given: str | None) -> int:
    if given is not None:
        lowered = [name.casefold() for name in class_names]
        if given.casefold() not in lowered:
            raise HistattnError(f"slide class {given!r} is not one of {', '.join(class_names)}")
        return lowered.index(given.casefold())
    if len(class_names) != 2:
        raise HistattnError(
            f"a model with {len(class_names)} classes needs the slide's class to fine-tune "
            "(--slide-class)"
        )
    return POSITIVE if bool((labels == POSITIVE).any()) else 0


@torch.no_grad()
def _measure(model: Any, features: torch.Tensor, positive: np.ndarray, temperature: float) -> Any:
    model.eval()
    out = model.forward_features(features[None])
    attention = out.attention[0].double().cpu().numpy()
    probabilities = torch.softmax(out.logits[0].double() / temperature, 0).cpu().numpy()
    auc = roc_auc_binary(positive, attention) if 0 < positive.sum() < positive.size else np.nan
    mass = float(attention[positive].sum() / max(attention.sum(), 1e-300))
    return float(auc), mass, [float(p) for p in probabilities]


def _loss(
    model: Any,
    features: torch.Tensor,
    labels: torch.Tensor,
    slide: int,
    pos_index: int,
    step: int,
    unmarked_weight: float,
) -> torch.Tensor:
    out = model.forward_features(features[None])
    logits = out.bag_logits if out.bag_logits is not None else out.logits
    loss = nn.functional.cross_entropy(logits, torch.tensor([slide], device=logits.device))
    marked = labels >= 0
    instance = out.instance_logits[0][marked]
    loss = loss + nn.functional.cross_entropy(instance, labels[marked])
    scores = out.attention_logits[0]
    pos = scores[labels == pos_index]
    for others, weight in (
        (scores[(labels >= 0) & (labels != pos_index)], 1.0),
        (scores[labels < 0], unmarked_weight),
    ):
        if not (pos.numel() and others.numel() and weight > 0):
            continue
        # Pairwise: a positive mark's attention above the other's (the softmax is blind to
        # a common shift, so only the order counts); at most MAX_PAIRS random pairs.
        gen = torch.Generator().manual_seed(step)
        n_pairs = min(MAX_PAIRS, pos.numel() * others.numel())
        i = torch.randint(pos.numel(), (n_pairs,), generator=gen).to(scores.device)
        j = torch.randint(others.numel(), (n_pairs,), generator=gen).to(scores.device)
        loss = loss + weight * nn.functional.softplus(others[j] - pos[i]).mean()
    return loss


def fine_tune_on_corrections(
    checkpoint: str | os.PathLike[str],
    slide: str | os.PathLike[str],
    corrections: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    epochs: int = 100,
    lr: float = 5e-3,
    seed: int = 0,
    device: str = "auto",
    slide_class: str | None = None,
    slide_mpp: float | None = None,
    unmarked_weight: float = 0.5,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, FineTuned]:
    """Fine-tune an A-MIL ``checkpoint`` on the reviewer's ``corrections`` (a review export
    GeoJSON) of ``slide`` and save the result to ``out`` (default
    :func:`default_output`); see the module docstring for what is trained and measured.

    Yields progress (stages ``tissue``, ``encode``, ``fine-tune``); returns a
    :class:`FineTuned`. ``slide_class`` is the slide's class (default, two classes: the
    positive class when any tile is marked so, else the other); ``slide_mpp`` the
    slide's um/px for a file that records none, as Classify takes it;
    ``unmarked_weight`` the weight of unmarked tissue as the attention's negatives.

    Raises
    ------
    HistattnError
        Not an A-MIL checkpoint, corrections that mark fewer than two classes' tiles, a
        slide the checkpoint cannot read; :class:`~napari_histattn.errors.AnnotationError`
        for an unreadable GeoJSON; ``Cancelled`` when ``cancel`` is set.
    """
    from napari_histattn.inference.devices import select_device
    from napari_histattn.inference.runtime import SlideRun
    from napari_histattn.io.slide import open_slide
    from napari_histattn.models.amil.slide import bag_embeddings
    from napari_histattn.models.checkpoint import load, save

    if epochs < 1:
        raise HistattnError(f"epochs must be at least 1, got {epochs}")
    if not 0.0 <= unmarked_weight <= 1.0:
        raise HistattnError(f"unmarked_weight must be within 0-1, got {unmarked_weight}")
    source = Path(corrections)
    regions = read_geojson_regions(source)
    ckpt = load(checkpoint, device="cpu")
    family = _check_model(ckpt)
    class_names = list(ckpt.class_names)
    marks = correction_marks(regions, class_names)
    torch_device, _ = select_device(device)
    model: Any = ckpt.model.to(torch_device)
    pieces: list[torch.Tensor] = []
    with open_slide(slide) as the_slide:
        run = SlideRun(
            slide=the_slide,
            checkpoint=ckpt,
            family=family,
            device=torch_device,
            batch_size=int(family.default_batch_size),
            seed=seed,
            params={},
            cancel=cancel,
            slide_mpp=slide_mpp,
        )
        model.eval()
        plan, _, _, chosen = yield from bag_embeddings(run, pieces.append)
    features = torch.cat(pieces).float().to(torch_device)
    labels_np = _labels(marks, plan, chosen, class_names, source)
    target = _slide_class(labels_np, class_names, slide_class)
    # The class whose marks the attention should find: the positive one of two.
    pos_index = POSITIVE if len(class_names) == 2 else target
    positive = labels_np == pos_index
    temperature = float(ckpt.temperature)
    auc0, mass0, probs0 = _measure(model, features, positive, temperature)

    torch.manual_seed(seed)
    params = [*model.pooling.parameters(), *model.head.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr)
    labels = torch.from_numpy(labels_np).to(torch_device)
    losses: list[float] = []
    for epoch in range(epochs):
        if cancel is not None and cancel.is_set():
            from napari_histattn.inference.errors import Cancelled

            raise Cancelled("fine-tune", epoch, epochs)
        model.train()
        loss = _loss(model, features, labels, target, pos_index, epoch, unmarked_weight)
        if not torch.isfinite(loss):
            raise HistattnError(f"fine-tuning diverged at step {epoch + 1} (loss {loss.item()})")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        yield Progress("fine-tune", epoch + 1, epochs, f"loss {losses[-1]:.3f}")
    auc1, mass1, probs1 = _measure(model, features, positive, temperature)

    counts = {name: int((labels_np == i).sum()) for i, name in enumerate(class_names)}
    record = {
        "from_checkpoint": Path(ckpt.path).name,
        "from_sha256": ckpt.sha256,
        "slide": str(Path(slide)),
        "corrections": str(source),
        "slide_class": class_names[target],
        "marked_tiles": counts,
        "tissue_tiles": int(chosen.size),
        "trained": "attention and head; encoder frozen",
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "unmarked_weight": unmarked_weight,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "localisation_auc_before": auc0,
        "localisation_auc_after": auc1,
        "attention_mass_before": mass0,
        "attention_mass_after": mass1,
        "measured_on": "the marks it was fitted to",
        "calibration": "kept from the original checkpoint (not refitted on one slide)",
    }
    meta = ckpt.metadata
    training = dict(meta.get("training") or {})
    training["fine_tuned"] = [*_as_list(training.get("fine_tuned")), record]
    model.eval()
    path = save(
        default_output(checkpoint, slide) if out is None else out,
        model.cpu(),
        class_names=class_names,
        preprocessing=dict(ckpt.preprocessing),
        training=training,
        extra=dict(meta.get("extra") or {}),
        calibration=meta.get("calibration"),
    )
    return FineTuned(
        checkpoint_path=path,
        positive_class=class_names[pos_index],
        positive_index=pos_index,
        auc_before=auc0,
        auc_after=auc1,
        mass_before=mass0,
        mass_after=mass1,
        probabilities_before=probs0,
        probabilities_after=probs1,
        record=record,
    )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
