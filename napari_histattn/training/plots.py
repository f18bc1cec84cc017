"""ROC curve, confusion-matrix and reliability plots as PNG files.

Uses matplotlib's object API with the Agg canvas directly, so no GUI backend
is touched and pyplot's global state is never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from napari_histattn.training.metrics import (
    expected_calibration_error,
    reliability_bins,
    roc_auc_binary,
    roc_curve,
)


def _new_figure(size: tuple[float, float]):  # type: ignore[no-untyped-def]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:  # type: ignore[no-untyped-def]
    """Lay out ``fig`` and write it to ``path`` as PNG (making the folder)."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot_roc(
    y_true: ArrayLike,
    probabilities: ArrayLike,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "ROC curve",
) -> Path:
    """Write the ROC curve(s) to ``path`` (PNG).

    Binary problems get one curve (positive class = label 1); with more
    classes one one-vs-rest curve per class present. The legend gives each AUC.
    """
    t = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    fig = _new_figure((5.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    curves = [(1, class_names[1])] if len(class_names) == 2 else list(enumerate(class_names))
    for c, name in curves:
        positives = t == c
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, c])
        auc = roc_auc_binary(positives, probs[:, c])
        ax.plot(fpr, tpr, drawstyle="steps-post", label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False-positive rate")
    ax.set_ylabel("True-positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_confusion_matrix(
    cm: ArrayLike,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """Write the confusion matrix (rows true, columns predicted) to ``path`` (PNG),
    with the counts printed in each cell."""
    matrix = np.asarray(cm, dtype=np.int64)
    n = matrix.shape[0]
    side = max(4.0, 0.6 * n + 2.5)
    fig = _new_figure((side, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize="small")
    ax.set_yticklabels(class_names, fontsize="small")
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    threshold = matrix.max() / 2.0 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            colour = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour)
    return _save(fig, path)


def plot_reliability(
    y_true: ArrayLike,
    probabilities: ArrayLike,
    path: str | Path,
    title: str = "Reliability",
    n_bins: int = 10,
) -> Path:
    """Write the reliability diagram (accuracy against confidence per bin, the diagonal
    is calibration, bar labels give the counts) with the ECE in the title, to ``path``."""
    bins = reliability_bins(y_true, probabilities, n_bins)
    ece = expected_calibration_error(y_true, probabilities, n_bins)
    edges = np.asarray(bins["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    accuracy = np.nan_to_num(np.asarray(bins["accuracy"], dtype=np.float64))
    fig = _new_figure((5.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(
        centres, accuracy, width=1.0 / n_bins, edgecolor="black", color="#4c78a8", label="accuracy"
    )
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    for x, a, n in zip(centres, accuracy, bins["count"], strict=True):
        if n:
            ax.text(x, min(a + 0.02, 0.97), f"{int(n)}", ha="center", fontsize="x-small")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("Confidence (largest class probability)")
    ax.set_ylabel("Accuracy")
    ax.set_title(f"{title} (ECE {ece:.3f})" if ece == ece else title)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)
