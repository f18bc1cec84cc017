"""Attention-based multiple-instance learning (A-MIL; Ilse, Tomczak & Welling, 2018) as a family plug-in.

- :mod:`.network`: attention pooling and the model, registered as ``"amil"``;
- :mod:`.slide`: how it runs over a whole slide;
- :mod:`.task`: its training adapter;
- this module: the family's declaration (family ``"mil"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from napari_histattn.models.amil.network import (
    DEFAULT_CHUNK_SIZE,
    AttentionMIL,
    AttentionPooling,
)
from napari_histattn.models.amil.slide import run_on_slide
from napari_histattn.models.amil.task import MILTask
from napari_histattn.models.family import Family, register_family, tile_params

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FAMILY",
    "AttentionMIL",
    "AttentionPooling",
    "MILTask",
    "bag_patch_size",
    "own_encoder_only",
    "run_on_slide",
]


def own_encoder_only(config: Mapping[str, Any], pre: Mapping[str, Any]) -> str | None:
    """A bag model explains its own patch encoder's evidence; one trained on cached
    features has none."""
    if pre.get("input") == "features" or config.get("encoder") == "none":
        return (
            "this checkpoint was trained on cached features and has no patch encoder of its "
            "own, so there is nothing to take gradients through"
        )
    return None


def bag_patch_size(config: Mapping[str, Any], pre: Mapping[str, Any]) -> int:
    """A bag model's tile side: its preprocessing's (features: the encoder's), else its own."""
    return int(pre.get("patch_size") or config.get("patch_size") or 1)


FAMILY = register_family(
    Family(
        name="mil",
        models=("amil",),
        run=run_on_slide,
        task=lambda options: MILTask(chunk_size=options.chunk_size),
        input="mil",
        default_batch_size=128,
        params=tile_params(bag_patch_size),
        explains=True,
        explain_refusal=own_encoder_only,
        description="attention MIL (Ilse et al. 2018): attention pooling over every tissue tile",
    )
)
