"""Attention sampling (Katharopoulos & Fleuret, ICML 2019) as a model family plug-in.

- :mod:`.network`: the model (attention network, feature network, the
  expectation estimator or REINFORCE), registered as ``"attention_sampling"``;
- :mod:`.slide`: how it runs over a whole slide (a low-resolution view, a few
  sampled high-resolution patches);
- :mod:`.task`: its training adapter;
- this module: the family's declaration (family ``"sampling"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from napari_histattn.models.attention_sampling.network import (
    AGGREGATIONS,
    AttentionNetwork,
    AttentionSampling,
    FeatureNetwork,
    downscale_image,
    grid_to_highres_xy,
)
from napari_histattn.models.attention_sampling.slide import run_on_slide
from napari_histattn.models.attention_sampling.task import (
    SamplingTask,
    StackedPatchSource,
    make_task,
)
from napari_histattn.models.family import Family, FamilyParam, register_family
from napari_histattn.models.validation import INT_FIELDS

__all__ = [
    "AGGREGATIONS",
    "FAMILY",
    "AttentionNetwork",
    "AttentionSampling",
    "FeatureNetwork",
    "SamplingTask",
    "StackedPatchSource",
    "downscale_image",
    "grid_to_highres_xy",
    "run_on_slide",
]


def _n_patches(config: Mapping[str, Any], pre: Mapping[str, Any]) -> int:
    return int(pre.get("n_patches") or config.get("n_patches") or 1)


def _rounds(config: Mapping[str, Any], pre: Mapping[str, Any]) -> int:
    return int(pre.get("sampling_rounds") or 1)


def _patch_size(config: Mapping[str, Any], pre: Mapping[str, Any]) -> int:
    return int(config.get("patch_size") or pre.get("patch_size") or 1)


FAMILY = register_family(
    Family(
        name="sampling",
        models=("attention_sampling",),
        run=run_on_slide,
        task=make_task,
        input="sampling",
        default_batch_size=64,
        explains=True,
        params=(
            FamilyParam(
                "n_patches",
                "patches drawn",
                "high-resolution patches drawn from the attention distribution",
                _n_patches,
                1,
                INT_FIELDS["n_patches"][1],
            ),
            FamilyParam(
                "patch_size",
                "patch size (px)",
                "patch side in model pixels",
                _patch_size,
                1,
                INT_FIELDS["patch_size"][1],
            ),
            FamilyParam(
                "rounds",
                "sampling rounds",
                "independent sampling rounds averaged (more rounds: a steadier call)",
                _rounds,
                1,
                64,
            ),
            FamilyParam(
                "seed",
                "seed",
                "seed of the sampling draws (the same seed gives the same result)",
                lambda config, pre: 0,
            ),
        ),
        description="attention sampling (Katharopoulos & Fleuret 2019): a low-resolution "
        "attention map decides which few high-resolution patches are read",
    )
)
