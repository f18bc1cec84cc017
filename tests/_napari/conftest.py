"""Fixtures for the napari-side tests.

napari's pytest plugin (``napari.utils._testsupport``, which provides
``make_napari_viewer``) is registered through napari's ``pytest11`` entry
point, so it needs no ``pytest_plugins`` line here; pytest-xvfb gives the GUI
tests a virtual display with Mesa OpenGL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def no_mpp_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small tiled RGB TIFF without any resolution information (no mpp)."""
    import tifffile

    path = tmp_path_factory.mktemp("no-mpp") / "no_mpp.tiff"
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(512, 384, 3), dtype=np.uint8)
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        tile=(256, 256),
        compression="zlib",
        resolution=None,
        resolutionunit=1,  # NONE: no physical unit
        metadata=None,
    )
    return path
