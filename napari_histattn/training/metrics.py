"""Evaluation metrics, written with NumPy only.

Classification: accuracy, balanced accuracy, ROC AUC (binary, and macro
one-vs-rest for several classes) computed from the Mann-Whitney rank statistic
with ties counted as one half, the ROC curve, the confusion matrix and the
patient-level accuracy by majority vote (the DAFL paper's patient-level
figure). Localisation: ROC AUC of an attention map against a lesion mask and the
fraction of attention mass inside the lesions.

A metric that is undefined on the data (AUC with one class present) is
``nan`` in Python and ``null`` in the JSON that :func:`write_metrics_json`
writes.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from napari_histattn.stats import roc_auc_binary


def _labels(y: ArrayLike) -> NDArray[np.int64]:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of predictions equal to the labels (``nan`` when empty)."""
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    if t.size == 0:
        return math.nan
    return float(np.mean(t == p))


def confusion_matrix(
    y_true: ArrayLike, y_pred: ArrayLike, n_classes: int | None = None
) -> NDArray[np.int64]:
    """Confusion matrix ``cm[i, j]`` = number of samples of true class i predicted as j.

    Parameters
    ----------
    y_true, y_pred
        Integer class labels, shape ``(n,)``.
    n_classes
        Number of classes; by default one more than the largest label seen.
    """
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    if n_classes is None:
        n_classes = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean recall over the classes present in ``y_true`` (``nan`` when empty)."""
    t, p = _labels(y_true), _labels(y_pred)
    if t.size == 0:
        return math.nan
    recalls = [float(np.mean(p[t == c] == c)) for c in np.unique(t)]
    return float(np.mean(recalls))


def roc_auc(y_true: ArrayLike, probabilities: ArrayLike) -> float:
    """ROC AUC from class probabilities.

    Parameters
    ----------
    y_true
        Integer labels ``(n,)``.
    probabilities
        ``(n, C)`` class probabilities (or scores). With C = 2 this is the
        binary AUC of column 1; with C > 2 the unweighted mean of the
        one-vs-rest AUCs over the classes that have both positives and
        negatives in ``y_true``. A 1-D array is taken as positive-class scores.
    """
    t = _labels(y_true)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim == 1:
        return roc_auc_binary(t == 1, probs)
    if probs.ndim != 2 or probs.shape[0] != t.size:
        raise ValueError(f"probabilities must be (n, C) with n={t.size}, got {probs.shape}")
    if probs.shape[1] == 2:
        return roc_auc_binary(t == 1, probs[:, 1])
    aucs = [roc_auc_binary(t == c, probs[:, c]) for c in range(probs.shape[1])]
    defined = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(defined)) if defined else math.nan


def roc_curve(
    y_true: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """False- and true-positive rates at every distinct score threshold.

    Returns
    -------
    fpr, tpr, thresholds
        Starting at (0, 0) with threshold ``inf`` and ending at (1, 1).
        Empty-class rates are ``nan``.
    """
    t = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    # Last index of each run of equal scores: the curve moves only between distinct scores.
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    tps = np.cumsum(t_sorted)[last] if s.size else np.zeros(0)
    fps = (last + 1) - tps
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(last.size + 1, np.nan)
        fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(last.size + 1, np.nan)
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr.astype(np.float64), tpr.astype(np.float64), thresholds


def majority_vote(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    groups: Sequence[str],
    probabilities: ArrayLike | None = None,
) -> dict[str, tuple[int, int]]:
    """Per group (patient): (true label, majority predicted label).

    The group's true label is its most frequent image label. A tie between
    predicted labels is broken by the larger summed probability when
    ``probabilities`` is given, otherwise by the smaller label.
    """
    t, p = _labels(y_true), _labels(y_pred)
    probs = None if probabilities is None else np.asarray(probabilities, dtype=np.float64)
    g = np.asarray(list(groups), dtype=object)
    if g.shape != t.shape:
        raise ValueError(f"groups ({g.size}) and labels ({t.size}) differ in length")
    result: dict[str, tuple[int, int]] = {}
    for name in sorted(set(g.tolist())):
        sel = g == name
        true_label = int(np.bincount(t[sel]).argmax())
        votes = np.bincount(p[sel])
        best = np.flatnonzero(votes == votes.max())
        if best.size > 1 and probs is not None:
            mass = probs[sel][:, best].sum(axis=0)
            winner = int(best[int(np.argmax(mass))])
        else:
            winner = int(best[0])
        result[str(name)] = (true_label, winner)
    return result


def patient_accuracy(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    groups: Sequence[str],
    probabilities: ArrayLike | None = None,
) -> float:
    """Fraction of patients whose majority-vote prediction equals their label."""
    votes = majority_vote(y_true, y_pred, groups, probabilities)
    if not votes:
        return math.nan
    return float(np.mean([t == p for t, p in votes.values()]))


def reliability_bins(
    y_true: ArrayLike, probabilities: ArrayLike, n_bins: int = 10
) -> dict[str, list[float]]:
    """Top-label reliability: per confidence bin, the mean confidence, the accuracy and the count.

    The confidence of a sample is its largest class probability; it is correct when
    that class is the label. Bins split [0, 1] evenly (the last includes 1); empty
    bins report NaN.
    """
    t = _labels(y_true)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != t.size:
        raise ValueError(f"probabilities must be (n, C) with n={t.size}, got {probs.shape}")
    confidence = probs.max(axis=1) if t.size else np.zeros(0)
    correct = (probs.argmax(axis=1) == t) if t.size else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    out: dict[str, list[float]] = {
        "edges": edges.tolist(),
        "confidence": [],
        "accuracy": [],
        "count": [],
    }
    for b in range(n_bins):
        inside = which == b
        n = int(inside.sum())
        out["count"].append(float(n))
        out["confidence"].append(float(confidence[inside].mean()) if n else math.nan)
        out["accuracy"].append(float(correct[inside].mean()) if n else math.nan)
    return out


def expected_calibration_error(
    y_true: ArrayLike, probabilities: ArrayLike, n_bins: int = 10
) -> float:
    """ECE: the count-weighted mean gap between accuracy and confidence over the bins of
    :func:`reliability_bins` (0 for a calibrated model; NaN without samples)."""
    bins = reliability_bins(y_true, probabilities, n_bins)
    total = sum(bins["count"])
    if total == 0:
        return math.nan
    return float(
        sum(
            n * abs(a - c)
            for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True)
            if n
        )
        / total
    )


def classification_metrics(
    y_true: ArrayLike,
    probabilities: ArrayLike,
    class_names: Sequence[str],
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every classification metric as a JSON-ready dict.

    Parameters
    ----------
    y_true
        Integer labels ``(n,)``.
    probabilities
        ``(n, C)`` class probabilities; the prediction is the arg-max.
    class_names
        The C class names, in label order.
    groups
        Patient (or slide) id per sample; adds ``patient_accuracy`` (majority
        vote per patient), ``n_patients`` and ``patients`` (each patient's label
        and voted prediction).
    """
    t = _labels(y_true)
    probs = np.asarray(probabilities, dtype=np.float64)
    pred = probs.argmax(axis=1) if probs.size else np.zeros(0, dtype=np.int64)
    n_classes = len(class_names)
    metrics: dict[str, Any] = {
        "n": int(t.size),
        "accuracy": accuracy(t, pred),
        "balanced_accuracy": balanced_accuracy(t, pred),
        "roc_auc": roc_auc(t, probs) if t.size else math.nan,
        "confusion_matrix": confusion_matrix(t, pred, n_classes).tolist(),
        "class_names": list(class_names),
        "ece": expected_calibration_error(t, probs) if t.size else math.nan,
        "reliability": reliability_bins(t, probs) if t.size else {},
    }
    if n_classes > 2 and t.size:
        metrics["roc_auc_per_class"] = {
            name: roc_auc_binary(t == c, probs[:, c]) for c, name in enumerate(class_names)
        }
    if groups is not None:
        votes = majority_vote(t, pred, groups, probs)
        metrics["patient_accuracy"] = (
            float(np.mean([a == b for a, b in votes.values()])) if votes else math.nan
        )
        metrics["n_patients"] = len(votes)
        metrics["patients"] = {
            g: {"label": class_names[a], "predicted": class_names[b]} for g, (a, b) in votes.items()
        }
    return metrics


def _upsample_nearest(attention: NDArray[np.float64], shape: tuple[int, int]) -> NDArray[Any]:
    rows = (np.arange(shape[0]) * attention.shape[0]) // shape[0]
    cols = (np.arange(shape[1]) * attention.shape[1]) // shape[1]
    return attention[np.ix_(rows, cols)]


def _attention_and_mask(
    attention: ArrayLike, lesion_mask: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    att = np.asarray(attention, dtype=np.float64)
    mask = np.asarray(lesion_mask).astype(bool)
    if att.ndim != 2 or mask.ndim != 2:
        raise ValueError(f"attention and mask must be 2-D, got {att.shape} and {mask.shape}")
    if att.shape != mask.shape:
        # Each mask pixel takes the attention of the grid cell that covers it.
        att = _upsample_nearest(att, (mask.shape[0], mask.shape[1]))
    return att, mask


def localisation_auc(attention: ArrayLike, lesion_mask: ArrayLike) -> float:
    """ROC AUC of attention as a per-pixel lesion detector.

    Parameters
    ----------
    attention
        ``(h, w)`` attention (any monotone scale).
    lesion_mask
        ``(H, W)`` boolean lesion mask covering the same field of view; the
        attention is upsampled to it by nearest neighbour when the shapes
        differ. ``nan`` when the mask is all lesion or all background.
    """
    att, mask = _attention_and_mask(attention, lesion_mask)
    return roc_auc_binary(mask.ravel(), att.ravel())


def attention_mass_in_lesion(attention: ArrayLike, lesion_mask: ArrayLike) -> float:
    """Fraction of the (non-negative) attention mass that falls inside lesions.

    Shapes as in :func:`localisation_auc`; the attention is spread uniformly
    over the pixels of its grid cell, so a cell half covered by lesion
    contributes half its mass.
    """
    att, mask = _attention_and_mask(attention, lesion_mask)
    if np.any(att < 0):
        raise ValueError("attention mass needs non-negative attention weights")
    total = att.sum()
    if total <= 0:
        return math.nan
    return float(att[mask].sum() / total)


def jsonable(value: Any) -> Any:
    """``value`` with NumPy types, paths and tuples made JSON-ready; NaN/inf become None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(value, Path):
        return str(value)
    return value


def write_metrics_json(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``metrics`` as indented JSON (NaN as ``null``), atomically.

    NumPy scalars and arrays become plain numbers and lists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(jsonable(metrics), indent=2, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
