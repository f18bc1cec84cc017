"""Temperature scaling (Guo et al. 2017) and the choice of a slide decision rule on validation data.

A model's logits ``z`` are divided by one temperature ``T`` fitted on held-out
validation data by minimising the negative log-likelihood; the arg-max (so
accuracy) is unchanged, the confidence is not. ``T > 1`` softens an
over-confident model. The same ``T`` turns probabilities into calibrated ones,
``softmax(log p / T)``, which equals ``softmax(z / T)`` for any softmax output
(:func:`apply_temperature`), so the engine can apply it to any family's output.

:func:`choose_decision` tries the slide decision rules a model offers (A-MIL:
attention pooling, top-k instance evidence, the larger of both), fits a
temperature to each on the validation data and keeps the rule with the highest
balanced accuracy (ties keep the earlier rule: attention pooling, the model's own).
For two classes each rule is scored at its best threshold on the margin
``l1 - l0``: a model trained on large lesions ranks small-lesion slides above
benign ones before it puts them above zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_histattn.stats import apply_temperature
from napari_histattn.training.metrics import balanced_accuracy, expected_calibration_error

__all__ = [
    "Calibration",
    "apply_temperature",
    "best_threshold",
    "choose_decision",
    "fit_temperature",
    "nll",
    "softmax",
]

#: The temperatures searched (log-spaced bounds). Validation sets of a few slides cannot
#: justify sharpening a model more than twofold: on the small-lesion benchmark a temperature
#: fitted to 7 validation slides reached 0.05 and pushed the test calls to 0 and 1.
T_MIN, T_MAX = 0.5, 20.0


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    logp = _log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 60) -> float:
    """The temperature in [0.5, 20] that minimises the NLL (golden-section search on log T;
    the NLL is unimodal in it). Deterministic; 1.0 when there is nothing to fit, and never
    below 1.0 when the logits classify every validation item correctly."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(labels) == 0 or not np.isfinite(logits).all():
        return 1.0
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    best = math.exp((lo + hi) / 2)
    if best < 1.0 and bool(np.all(logits.argmax(axis=1) == labels)):
        # Validation data the model separates perfectly pulls T toward 0 (every sharper
        # temperature lowers the NLL); a handful of slides is no evidence for that much
        # confidence, so such data may only soften.
        return 1.0
    # Never worse than leaving the model alone.
    return best if nll(logits, labels, best) <= nll(logits, labels, 1.0) else 1.0


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(n, C)`` logits (float64)."""
    return np.asarray(np.exp(_log_softmax(np.asarray(logits, dtype=np.float64))))


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it did on the validation data it was fitted on."""

    temperature: float
    n: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray) -> Calibration:
        t = fit_temperature(logits, labels)
        return cls(
            temperature=t,
            n=int(len(labels)),
            nll_before=nll(logits, labels),
            nll_after=nll(logits, labels, t),
            ece_before=expected_calibration_error(labels, softmax(logits)),
            ece_after=expected_calibration_error(labels, softmax(logits / t)),
        )

    def as_dict(self) -> dict[str, Any]:
        """What the checkpoint records under ``calibration``."""
        return {
            "method": "temperature scaling on the validation data",
            "temperature": round(self.temperature, 6),
            "n_validation": self.n,
            "validation_nll_before": round(self.nll_before, 6),
            "validation_nll_after": round(self.nll_after, 6),
            "validation_ece_before": round(self.ece_before, 6),
            "validation_ece_after": round(self.ece_after, 6),
        }


def best_threshold(margins: np.ndarray, labels: np.ndarray) -> float:
    """The margin threshold with the best balanced accuracy of ``margin > t`` on ``labels``
    (0/1); ties keep 0 when it is among them, else the middle of the widest gap."""
    m = np.asarray(margins, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    u = np.unique(m)
    if u.size == 0 or np.unique(y).size < 2:
        return 0.0
    gaps = np.diff(u)
    candidates = np.concatenate([[0.0, u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    widths = np.concatenate([[np.inf, np.inf], gaps, [np.inf]])
    scores = np.array([balanced_accuracy(y, (m > c).astype(np.int64)) for c in candidates])
    tied = np.flatnonzero(scores >= scores.max() - 1e-12)
    if 0 in tied:
        return 0.0
    return float(candidates[tied[np.argmax(widths[tied])]])


def shifted(logits: np.ndarray, threshold: float) -> np.ndarray:
    """Two-class logits with the positive logit lowered by ``threshold``."""
    out = np.array(logits, dtype=np.float64)
    out[:, 1] -= threshold
    return out


def choose_decision(
    candidates: Sequence[str], logits_by_rule: dict[str, np.ndarray], labels: np.ndarray
) -> tuple[str, dict[str, Any], float]:
    """The rule with the best balanced accuracy on validation (ties keep the earlier rule;
    the NLL after each rule's own temperature is recorded); for two classes each rule at
    its best margin threshold (:func:`best_threshold`). Returns the rule, every
    candidate's scores (for the checkpoint) and the chosen rule's threshold."""
    scores: dict[str, Any] = {}
    best: float | None = None
    chosen, chosen_t = candidates[0], 0.0
    for rule in candidates:
        logits = np.asarray(logits_by_rule[rule], dtype=np.float64)
        t = best_threshold(logits[:, 1] - logits[:, 0], labels) if logits.shape[1] == 2 else 0.0
        logits = shifted(logits, t) if t else logits
        cal = Calibration.fit(logits, labels)
        bacc = balanced_accuracy(labels, logits.argmax(axis=1))
        scores[rule] = {
            "balanced_accuracy": round(float(bacc), 6),
            "nll_calibrated": round(cal.nll_after, 6),
            "threshold": round(t, 6),
        }
        # Ties keep the earlier rule: once a threshold separates the validation slides
        # every rule's calibrated NLL is near 0, so it cannot tell them apart.
        if best is None or float(bacc) > best + 1e-9:
            best, chosen, chosen_t = float(bacc), rule, t
    return chosen, scores, chosen_t
