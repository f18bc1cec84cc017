"""Fixtures for the inference tests: a small generated slide and tiny checkpoints.

Plain helpers live in ``inference_helpers.py`` (tests import them from there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from inference_helpers import FAMILIES, LesionSlide, make_checkpoint, write_flat_tiff

from napari_histattn.models.checkpoint import LoadedCheckpoint, load


@pytest.fixture(scope="session")
def lesion_slide(tmp_path_factory: pytest.TempPathFactory) -> LesionSlide:
    """A 2048 x 2048 synthetic slide with one lesion and no look-alikes."""
    from napari_histattn.io.synthetic import generate_synthetic_slide

    folder = tmp_path_factory.mktemp("inference-slide")
    made = generate_synthetic_slide(
        folder / "lesion.tiff",
        2048,
        2048,
        seed=3,
        n_lesions=1,
        n_lookalikes=0,
        lesion_radius_px=260,
        mpp=0.5,
    )
    polygons = [np.asarray(r.polygon_xy()) for r in made.scene.lesions]
    return LesionSlide(made.path, polygons, (2048, 2048))


@pytest.fixture(scope="session")
def blank_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A white (glass only) 1024 x 1024 slide: no tissue."""
    return write_flat_tiff(
        tmp_path_factory.mktemp("blank") / "blank.tiff", (250, 250, 250), (1024, 1024)
    )


@pytest.fixture(scope="session")
def tiny_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pink 40 x 40 slide: smaller than one patch of any test checkpoint."""
    return write_flat_tiff(tmp_path_factory.mktemp("tiny") / "tiny.tiff", (200, 100, 160), (40, 40))


@pytest.fixture(scope="session")
def checkpoint_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {name: make_checkpoint(folder, name) for name in FAMILIES}


@pytest.fixture
def loaded(checkpoint_paths: dict[str, Path]) -> dict[str, LoadedCheckpoint]:
    """Freshly loaded checkpoints (on the CPU) of every family."""
    return {name: load(path, device="cpu") for name, path in checkpoint_paths.items()}
