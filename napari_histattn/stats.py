"""Statistics shared by the layers (NumPy only): the binary ROC AUC, temperature scaling and
the spread of a slide probability over sampling rounds.

Lives below ``inference`` and ``training`` so that both score attention maps and
predictions with one definition (:mod:`napari_histattn.training.metrics`
re-exports it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["UNSTABLE_RANGE", "apply_temperature", "probability_spread", "roc_auc_binary"]

#: A predicted-class probability that moves more than this over sampling rounds is flagged.
UNSTABLE_RANGE = 0.2


def _average_ranks(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks with tied values sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Boundaries of runs of equal values in the sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], sorted_values.size]
    run_ranks = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def roc_auc_binary(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve for binary labels (1 = positive).

    Equals the probability that a random positive scores above a random
    negative, ties counting one half (Mann-Whitney U / (n_pos * n_neg)).
    Returns ``nan`` unless both classes are present.
    """
    t = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise ValueError(f"labels {t.shape} and scores {s.shape} differ in shape")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def apply_temperature(probabilities: ArrayLike, temperature: float) -> NDArray[np.float64]:
    """``softmax(log p / T)`` along the last axis: for a softmax output this equals
    ``softmax(logits / T)`` (temperature scaling, Guo et al. 2017), so a fitted
    temperature calibrates any family's probabilities."""
    p = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0:
        return p
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    logp = np.log(np.clip(p, 1e-300, None)) / float(temperature)
    logp -= logp.max(axis=-1, keepdims=True)
    out = np.exp(logp)
    return np.asarray(out / out.sum(axis=-1, keepdims=True))


def probability_spread(
    per_round: ArrayLike, unstable_range: float = UNSTABLE_RANGE
) -> dict[str, Any]:
    """How the slide probabilities of ``(rounds, C)`` sampling rounds spread: min, max and std
    per class, and ``unstable`` when the rounds disagree on the call or the predicted class's
    probability ranges over more than ``unstable_range``."""
    rounds = np.asarray(per_round, dtype=np.float64)
    calls = rounds.argmax(axis=1)
    mean_call = int(rounds.mean(axis=0).argmax())
    width = float(rounds[:, mean_call].max() - rounds[:, mean_call].min())
    return {
        "min": [float(v) for v in rounds.min(axis=0)],
        "max": [float(v) for v in rounds.max(axis=0)],
        "std": [float(v) for v in rounds.std(axis=0)],
        "unstable": bool(len(set(calls.tolist())) > 1 or width > unstable_range),
    }
