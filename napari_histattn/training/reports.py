"""The files an evaluation writes: metrics JSON, ROC and confusion-matrix PNGs, predictions CSV.

Also the fold's test samples as a ``slide,label,patient`` CSV that ``--layout csv``
reads back. Used by :mod:`napari_histattn.training.experiment`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_histattn.training.datasets import (
    LabelledData,
)
from napari_histattn.training.loop import (
    Predictions,
)
from napari_histattn.training.metrics import write_metrics_json
from napari_histattn.training.plots import plot_confusion_matrix, plot_reliability, plot_roc


def write_evaluation(
    out_dir: Path,
    data: LabelledData,
    predictions: Predictions,
    metrics: dict[str, Any],
    class_names: Sequence[str],
    title: str = "",
) -> None:
    """Write ``metrics.json``, ``roc.png``, ``confusion_matrix.png``, ``reliability.png``
    (calibration, with the ECE that ``metrics.json`` records) and ``predictions.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_json(metrics, out_dir / "metrics.json")
    plot_roc(
        predictions.labels,
        predictions.probabilities,
        class_names,
        out_dir / "roc.png",
        title=f"ROC {title}".strip(),
    )
    plot_confusion_matrix(
        metrics["confusion_matrix"],
        class_names,
        out_dir / "confusion_matrix.png",
        title=f"Confusion matrix {title}".strip(),
    )
    if len(predictions.labels):
        plot_reliability(
            predictions.labels,
            predictions.probabilities,
            out_dir / "reliability.png",
            title=f"Reliability {title}".strip(),
        )
    with (out_dir / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "patient", "label", "predicted", *[f"p_{c}" for c in class_names]])
        for sample, label, probs in zip(
            data.samples, predictions.labels, predictions.probabilities, strict=True
        ):
            writer.writerow(
                [
                    str(sample.path),
                    sample.group,
                    class_names[int(label)],
                    class_names[int(np.argmax(probs))],
                    *[f"{p:.6f}" for p in probs],
                ]
            )


def write_sample_csv(data: LabelledData, path: Path) -> Path:
    """The samples as a ``slide,label,patient`` CSV (absolute paths) for ``--layout csv``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "label", "patient"])
        for s in data.samples:
            writer.writerow([str(s.path.resolve()), data.class_names[s.label], s.group])
    return path
