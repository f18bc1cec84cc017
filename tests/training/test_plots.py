"""ROC and confusion-matrix PNGs are real images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from napari_histattn.training.plots import plot_confusion_matrix, plot_roc


def test_plots_write_pngs(tmp_path):
    y = np.array([0, 1, 2, 2, 1, 0])
    probs = np.eye(3)[[0, 1, 2, 1, 1, 2]] * 0.8 + 0.2 / 3
    roc = plot_roc(y, probs, ["a", "b", "c"], tmp_path / "roc.png")
    cm = plot_confusion_matrix(
        [[2, 0, 0], [0, 2, 0], [1, 1, 0]], ["a", "b", "c"], tmp_path / "cm.png"
    )
    for path in (roc, cm):
        with Image.open(path) as im:
            assert im.format == "PNG"
            arr = np.asarray(im.convert("RGB"))
        assert arr.shape[0] >= 300 and arr.shape[1] >= 300
        assert arr.std() > 10  # something was drawn, not a blank canvas
    binary = plot_roc(
        [0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], ["n", "p"], tmp_path / "b.png"
    )
    assert binary.stat().st_size > 1000
