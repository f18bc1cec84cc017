"""Instance-level MIL from slide labels (Campanella et al. 2019), the stage that teaches a
two-class A-MIL on cached features to score single tiles before its attention learns.

Slide labels give tile labels in two places only: every tile of a benign slide is benign
(the multiple-instance assumption), and the most suspicious tiles of a positive slide are
the likeliest to be the lesion. Rounds of a convex fit use both:

1. round 0 labels every tile of a positive slide positive (the naive start);
2. a class-balanced, L2-regularised logistic regression over the standardised features
   (full batch, L-BFGS: deterministic, seconds on a CPU) scores every tile;
3. the next round labels only the ``top_k`` highest-scoring tiles of each positive
   slide positive, every (sampled) tile of a benign slide negative, and refits;

until the chosen tiles stop changing or ``rounds`` are done. Validation slides choose
the round (the ROC AUC of the slide score, the mean of a slide's ``top_k`` tile
margins; ties go to the later round). The fit becomes the A-MIL head, which A-MIL
applies to each tile alone (its instance logits) and to the attention-pooled
embedding: a lesion of two tiles then carries a margin that attention pooling or the
``top_k`` decision rule can call positive, where slide-label training of the whole
network spread its evidence over the slide (``benchmarks/small_lesions.py``). Stage 2
trains the attention pooling on slide labels with the head frozen.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from napari_histattn.errors import HistattnError
from napari_histattn.progress import Progress
from napari_histattn.stats import roc_auc_binary

__all__ = ["FeatureBags", "InstanceMILConfig", "fit_logistic", "instance_mil_stage"]


class FeatureBags(Protocol):
    """Bags of tile features with slide labels
    (:class:`~napari_histattn.training.datasets.features.FeatureBagDataset`)."""

    def __len__(self) -> int: ...

    def label(self, index: int) -> int: ...

    def all_features(self, index: int) -> np.ndarray: ...


@dataclass(frozen=True)
class InstanceMILConfig:
    """How instance MIL runs (see the module docstring).

    rounds
        Pseudo-labelling rounds after the naive start (0: the naive fit alone).
    top_k
        Tiles per positive slide labelled positive, and averaged for its slide score.
    l2
        L2 penalty on the weights of the standardised features.
    negative_tiles
        At most this many tiles per benign slide in each fit (evenly spaced), which
        bounds memory on a large cohort; every tile is still scored.
    """

    rounds: int = 5
    top_k: int = 3
    l2: float = 1e-2
    negative_tiles: int = 2048

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.top_k < 1 or self.l2 < 0 or self.negative_tiles < 1:
            raise HistattnError(
                "instance MIL needs rounds >= 0, top_k >= 1, l2 >= 0 and negative_tiles >= 1"
            )


def fit_logistic(
    x: Tensor, y: Tensor, weight: Tensor, l2: float, max_iter: int = 200
) -> tuple[Tensor, Tensor]:
    """Weighted, L2-regularised logistic regression ``(w (D,), b ())`` of ``y`` (0/1) on
    ``x`` ``(n, D)``: L-BFGS on the weighted mean loss, from zero (so deterministic)."""
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )
    total = weight.sum()

    def closure() -> Tensor:
        optimizer.zero_grad()
        losses = torch.nn.functional.binary_cross_entropy_with_logits(
            x @ w + b, y, reduction="none"
        )
        loss = (losses * weight).sum() / total + l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


class _Bags:
    """The standardised features of a dataset's bags, read once (positives whole, benign
    slides thinned to ``negative_tiles``), with each bag's label (1: the positive class)."""

    def __init__(self, data: FeatureBags, mean: Tensor, std: Tensor, negative_tiles: int) -> None:
        self.features: list[Tensor] = []
        self.labels: list[int] = []
        for index in range(len(data)):
            label = int(data.label(index))
            rows = data.all_features(index)
            if label == 0 and len(rows) > negative_tiles:
                keep = np.linspace(0, len(rows) - 1, negative_tiles).round().astype(np.int64)
                rows = rows[np.unique(keep)]
            x = (torch.from_numpy(np.asarray(rows, dtype=np.float32)) - mean) / std
            self.features.append(x)
            self.labels.append(label)

    def slide_scores(self, w: Tensor, b: Tensor, top_k: int) -> np.ndarray:
        """Each bag's mean of its ``top_k`` largest tile margins."""
        return np.array(
            [float(torch.topk(x @ w + b, min(top_k, len(x))).values.mean()) for x in self.features]
        )


def instance_mil_stage(
    model: Any,
    train_set: FeatureBags,
    val_set: FeatureBags | None,
    config: InstanceMILConfig,
) -> Generator[Progress, None, dict[str, Any]]:
    """Fit ``model``'s head by instance MIL (see the module docstring) and freeze it.

    ``model`` is a two-class A-MIL on cached features (``encoder="none"``,
    ``standardise``, its feature scaling set). Yields stage ``instance MIL`` once per
    round; returns the record for the checkpoint (rounds run, the chosen one, the
    validation ROC AUC of each, tiles labelled).
    """
    if getattr(model, "encoder", 0) is not None or int(getattr(model, "n_classes", 0)) != 2:
        raise HistattnError(
            "instance MIL trains a two-class A-MIL on cached --features (a benign class first, "
            "then the positive class)"
        )
    mean, std = model.get_buffer("feature_mean"), model.get_buffer("feature_std")
    train = _Bags(train_set, mean, std, config.negative_tiles)
    if not {0, 1} <= set(train.labels):
        raise HistattnError("instance MIL needs benign and positive training slides")
    val = None if val_set is None or len(val_set) == 0 else _Bags(val_set, mean, std, 1 << 30)
    val_labels = None if val is None else np.asarray(val.labels) == 1
    negatives = torch.cat([x for x, y in zip(train.features, train.labels, strict=True) if y == 0])
    positives = [x for x, y in zip(train.features, train.labels, strict=True) if y == 1]
    chosen: list[Tensor] = list(positives)  # round 0: every tile of a positive slide
    history: list[dict[str, Any]] = []
    best: tuple[float, int, Tensor, Tensor] | None = None
    previous: list[Tensor] | None = None
    total = config.rounds + 1
    for round_ in range(total):
        pos = torch.cat(chosen)
        x = torch.cat([negatives, pos])
        y = torch.cat([torch.zeros(len(negatives)), torch.ones(len(pos))])
        weight = torch.where(y == 1, len(negatives) / len(pos), 1.0)
        w, b = fit_logistic(x, y, weight, config.l2)
        score: float | None = None  # no validation slides of both classes: the last round
        if val is not None and val_labels is not None and 0 < val_labels.sum() < val_labels.size:
            score = float(roc_auc_binary(val_labels, val.slide_scores(w, b, config.top_k)))
        history.append({"round": round_, "positive_tiles": int(len(pos)), "val_roc_auc": score})
        key = -1.0 if score is None or score != score else score
        if best is None or key >= best[0]:
            best = (key, round_, w, b)
        shown = "-" if score is None else f"{score:.2f}"
        yield Progress("instance MIL", round_ + 1, total, f"round {round_}: val ROC AUC {shown}")
        picks = [torch.topk(p @ w + b, min(config.top_k, len(p))).indices for p in positives]
        if previous is not None and all(
            torch.equal(a.sort().values, c.sort().values)
            for a, c in zip(picks, previous, strict=True)
        ):
            break
        previous = picks
        chosen = [p[i] for p, i in zip(positives, picks, strict=True)]
    assert best is not None
    _set_head(model, best[2], best[3])
    return {
        "rounds_run": len(history),
        "chosen_round": best[1],
        "top_k": config.top_k,
        "l2": config.l2,
        "negative_tiles": config.negative_tiles,
        "history": history,
    }


def _set_head(model: Any, w: Tensor, b: Tensor) -> None:
    """Make A-MIL's linear head the margin ``w . h + b`` (class 0's logit 0, class 1's the
    margin) and freeze it. The head sees the branch embeddings side by side, and A-MIL's
    instance logits repeat a tile's embedding once per branch, so each branch gets
    ``w / branches``: a tile alone scores its margin, a pooled bag the mean margin under
    the attention."""
    linear = model.head[-1]
    branches = linear.weight.shape[1] // w.shape[0]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.weight[1] = (w / branches).repeat(branches).to(linear.weight)
        linear.bias[1] = b.to(linear.bias)
    for p in model.head.parameters():
        p.requires_grad_(False)
