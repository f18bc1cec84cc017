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


# A small synthetic sample (about 1.5k x 1.2k px at 2 um/px, so lesions of the
# default 200 um radius fit): the real default takes tens of seconds to render.
TINY_SAMPLE = {"width": 1536, "height": 1152, "mpp": 2.0, "workers": 1}


def _tiny_params() -> object:
    from napari_histattn.io.synthetic import SampleParams

    return SampleParams(width=1536, height=1152, mpp=2.0)


TINY_SAMPLE_PARAMS = _tiny_params()


@pytest.fixture(scope="session")
def tiny_sample_kwargs() -> dict[str, float]:
    """Arguments of ``synthetic_sample_slide`` that make the sample tiny."""
    return dict(TINY_SAMPLE)


@pytest.fixture(scope="session")
def tiny_sample_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the tiny synthetic sample, generated once per session."""
    from napari_histattn.io.synthetic import synthetic_sample_slide

    cache = tmp_path_factory.mktemp("histattn-cache")
    synthetic_sample_slide(cache, **TINY_SAMPLE)
    return cache


@pytest.fixture
def tiny_sample_env(tiny_sample_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the synthetic sample tiny and point its cache at ``tiny_sample_cache``.

    In this process ``synthetic_sample_slide`` is wrapped with the tiny size and the
    napari sample command makes the tiny one;
    ``HISTATTN_CACHE`` (inherited by subprocesses) points at the cache folder.
    """
    import functools

    import napari_histattn._napari.sample_data as sample_data
    import napari_histattn.io.synthetic as synthetic

    monkeypatch.setenv("HISTATTN_CACHE", str(tiny_sample_cache))
    monkeypatch.setattr(sample_data, "SAMPLE", TINY_SAMPLE_PARAMS)
    monkeypatch.setattr(sample_data, "SAMPLE_WORKERS", 1)
    monkeypatch.setattr(
        synthetic,
        "synthetic_sample_slide",
        functools.partial(synthetic.synthetic_sample_slide, **TINY_SAMPLE),
    )
    return tiny_sample_cache
