"""Fixtures for the training tests: one torch thread (the CI machine has two cores,
shared with other test processes) and small generated data sets."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from napari_histattn.training.datasets import SyntheticScenes, SyntheticSpec

# An easy task: a lesion (crowded dark nuclei) or no region at all, at 2 um/px so that a
# 96 px image shows a whole lesion. Training on it must succeed in seconds.
EASY = SyntheticSpec(image_size=96, lesion_radius_px=12, mpp=2.0)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def easy_scenes() -> dict[str, SyntheticScenes]:
    """Train / validation / test images from disjoint seeds (labels = seed % 2)."""
    scenes = {
        "train": SyntheticScenes(EASY, range(0, 40)),
        "val": SyntheticScenes(EASY, range(100, 116)),
        "test": SyntheticScenes(EASY, range(200, 230)),
    }
    for part in scenes.values():
        for i in range(len(part)):
            part.image(i)  # render once for every test that uses them
    return scenes


#: Slides of the cached-features cohort (``cohort``; ``test_features_training`` counts them).
N_SLIDES = 12


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Slides and a labels CSV (``slide,label,patient``): half with lesions, half without."""
    from napari_histattn.io.synthetic import generate_synthetic_slide

    folder = tmp_path_factory.mktemp("cohort")
    rows = []
    for i in range(N_SLIDES):
        lesion = i % 2 == 0
        made = generate_synthetic_slide(
            folder / f"s{i:02d}.tiff",
            1024,
            1024,
            seed=100 + i,
            n_lesions=1 + (i % 4 == 0) if lesion else 0,
            lesion_radius_px=110,
            n_lookalikes=0,
            mpp=1.0,
        )
        rows.append([made.path.name, "lesion" if lesion else "benign", f"p{i}"])
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as fh:
        csv.writer(fh).writerows([["slide", "label", "patient"], *rows])
    return folder, labels


@pytest.fixture(scope="session")
def features(cohort: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from napari_histattn.cli import main

    out = tmp_path_factory.mktemp("features")
    assert (
        main(["features", str(cohort[1]), "--encoder", "tiny", "--out", str(out), "--quiet"]) == 0
    )
    return out
