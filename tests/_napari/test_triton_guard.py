"""Regression test: torch's triton import after napari's GL canvas must not crash napari.

Without the guard in ``napari_histattn._napari``, importing ``torchvision.models``
(a ResNet-18 encoder) after a napari canvas has drawn on Mesa ends the process with
SIGSEGV: triton's LLVM clashes with Mesa's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import sys
import numpy as np
import napari
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=True)
viewer.add_image(np.random.default_rng(0).random((64, 64)))
for _ in range(10):
    QApplication.processEvents()
viewer.screenshot()          # the GL context has drawn
import napari_histattn._napari   # what napari does when it loads any of our contributions
from napari_histattn.models.encoders import build_encoder
encoder, dim = build_encoder("resnet18")   # imports torchvision.models -> torch._dynamo
print("ENCODER_DIM", dim, flush=True)
viewer.close()
"""


@pytest.mark.gui
@pytest.mark.slow
def test_resnet_encoder_after_gl_canvas_does_not_crash() -> None:
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (pytest-xvfb provides one)")
    env = {k: v for k, v in os.environ.items() if k != "HISTATTN_ALLOW_TRITON"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stderr[-3000:]}"
    assert "ENCODER_DIM 512" in result.stdout
