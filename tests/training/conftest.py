"""Fixtures for the training tests: one torch thread (the CI machine has two cores,
shared with other test processes) and small generated data sets."""

from __future__ import annotations

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
