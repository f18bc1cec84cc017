"""Shared fixtures.

Real test files live in ``../shared/data/`` (relative to the project root), never in
this repository. Tests that need them use the ``shared_data`` fixture, which skips
with a clear reason when the folder is absent (a clone outside the team).
``HISTATTN_SHARED_DATA`` points elsewhere if needed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from shapely.geometry import Polygon

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


@dataclass(frozen=True)
class ReviewScene:
    """The generated slide that review, fine-tune and correction tests share: 2048 x 2048
    px at 0.5 um/px (seed 5) with three lesions and a look-alike, and their outlines
    (level-0 pixels)."""

    path: Path
    lesions: list[Polygon]
    lookalikes: list[Polygon]

    def copy_to(self, folder: Path, name: str) -> Path:
        """A copy of the slide and its ground-truth GeoJSON in ``folder`` (a test writes
        its exports beside it)."""
        folder.mkdir(parents=True, exist_ok=True)
        target = Path(shutil.copyfile(self.path, folder / name))
        truth = self.path.with_suffix(".geojson")
        if truth.is_file():
            shutil.copyfile(truth, target.with_suffix(".geojson"))
        return target


@pytest.fixture(scope="session")
def review_scene(tmp_path_factory: pytest.TempPathFactory) -> ReviewScene:
    """:class:`ReviewScene`, generated once a session (the tests copy the file)."""
    from napari_histattn.io.synthetic import generate_synthetic_slide

    made = generate_synthetic_slide(
        tmp_path_factory.mktemp("review-scene") / "scene.tiff",
        2048,
        2048,
        seed=5,
        n_lesions=3,
        n_lookalikes=1,
        lesion_radius_px=200,
        lookalike_radius_px=200,
        mpp=0.5,
    )
    return ReviewScene(
        made.path,
        [Polygon(x.polygon_xy()) for x in made.scene.lesions],
        [Polygon(x.polygon_xy()) for x in made.scene.lookalikes],
    )
