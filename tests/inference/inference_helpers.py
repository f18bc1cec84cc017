"""Helpers shared by the inference tests (imported by name: ``conftest`` is ambiguous
across test folders, so tests never import from it).

Small generated slides and tiny checkpoints.

The slide is a 2048 x 2048 synthetic H&E slide at 0.5 um/px with one lesion
(two pyramid levels). The checkpoints are untrained tiny models of each family,
built from the registry's example configurations and saved through
``models.checkpoint.save`` with preprocessing like training writes, at
resolutions that keep every run to a fraction of a second on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from napari_histattn.models.checkpoint import save
from napari_histattn.models.registry import create_model, model_example

FAMILIES = ("attention_sampling", "amil", "dafl_cnn", "mldam", "hatnet")

# Mean/std of H&E-ish pixels; any fixed values exercise the normalisation path.
_MEAN = [0.8, 0.6, 0.75]
_STD = [0.15, 0.2, 0.15]

#: Per model: config overrides over the registry example, and preprocessing.
CHECKPOINT_SPECS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "attention_sampling": (
        {"n_classes": 2, "n_patches": 8, "patch_size": 32, "downscale": 8},
        {
            "input": "sampling",
            "patch_size": 32,
            "downsample": 2.0,
            "downscale": 8,
            "mean": _MEAN,
            "std": _STD,
        },
    ),
    "amil": (
        {"n_classes": 2, "patch_size": 32},
        {
            "input": "mil",
            "patch_size": 32,
            "target_mpp": 2.0,
            "mean": _MEAN,
            "std": _STD,
            "tissue": {"thumbnail_size": 512},
        },
    ),
    "dafl_cnn": (
        {"n_classes": 2, "input_size": 32},
        {
            "input": "image",
            "image_size": 32,
            "downsample": 16.0,
            "mean": _MEAN,
            "std": _STD,
            "tissue": {"thumbnail_size": 512},
        },
    ),
    "mldam": (
        {"n_classes": 2, "input_size": 32, "levels": 2},
        {
            "input": "image",
            "image_size": 32,
            "downsample": 16.0,
            "mean": _MEAN,
            "std": _STD,
            "tissue": {"thumbnail_size": 512},
        },
    ),
}

# HATNet reads bags of tiles as A-MIL does.
CHECKPOINT_SPECS["hatnet"] = CHECKPOINT_SPECS["amil"]

CLASS_NAMES = ["benign", "lesion"]


@dataclass(frozen=True)
class LesionSlide:
    path: Path
    lesion_polygons_l0: list[np.ndarray]
    size_wh: tuple[int, int]


def write_flat_tiff(path: Path, rgb: tuple[int, int, int], size_wh: tuple[int, int]) -> Path:
    """A one-level TIFF of one colour at 0.5 um/px (so target_mpp checkpoints apply)."""
    w, h = size_wh
    pixels = np.empty((h, w, 3), dtype=np.uint8)
    pixels[:] = rgb
    tifffile.imwrite(
        path, pixels, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER"
    )
    return path


def make_checkpoint(folder: Path, name: str, seed: int = 0, **preprocessing_overrides: Any) -> Path:
    """Save an untrained tiny ``name`` checkpoint into ``folder``; returns the weights path."""
    overrides, preprocessing = CHECKPOINT_SPECS[name]
    torch.manual_seed(seed)
    model = create_model(name, **{**model_example(name).config, **overrides})
    return save(
        folder / f"{name}.safetensors",
        model,
        class_names=CLASS_NAMES,
        preprocessing={**preprocessing, **preprocessing_overrides},
        training={"seed": seed, "note": "untrained test checkpoint"},
    )
