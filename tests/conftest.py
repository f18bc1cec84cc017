"""Shared fixtures.

Real test files live in ``../shared/data/`` (relative to the project root), never in
this repository. Tests that need them use the ``shared_data`` fixture, which skips
with a clear reason when the folder is absent (a clone outside the team).
``HISTATTN_SHARED_DATA`` points elsewhere if needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import napari_histattn._napari  # noqa: F401  (installs the triton guard before any GL canvas)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("HISTATTN_SHARED_DATA")
    if env:
        return Path(env)
    return PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The team's folder of real test slides (``../shared/data``)."""
    path = _shared_data_dir()
    if not (path / "slides").is_dir():
        pytest.skip(f"shared test data not found at {path} (set HISTATTN_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def shared_slides(shared_data: Path) -> Path:
    return shared_data / "slides"


@pytest.fixture(scope="session")
def bad_slides(shared_data: Path) -> Path:
    return shared_data / "bad-slides"


@pytest.fixture(scope="session")
def cmu_svs(shared_slides: Path) -> Path:
    """CMU-1-Small-Region.svs: a real Aperio SVS, 2220x2967, mpp 0.499 (CC0)."""
    return shared_slides / "CMU-1-Small-Region.svs"
