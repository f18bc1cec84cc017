"""The channel/spatial attention CNN (DAFL; Wu et al., ISBI 2019) as a family plug-in.

- :mod:`.network`: C-Attn, S-Attn and the VGG they sit in, registered as ``"dafl_cnn"``;
- :mod:`napari_histattn.models.image_tiles`: how it runs over a whole slide;
- this module: the family's declaration (family ``"image"``).
"""

from __future__ import annotations

from napari_histattn.models.dafl.network import (
    BACKBONES,
    AttentionMap,
    AttentionVGG,
    ChannelAttention,
    SpatialAttention,
    build_dafl_cnn,
)
from napari_histattn.models.family import Family, register_family
from napari_histattn.models.image_tiles import image_params, run_on_slide
from napari_histattn.models.tasks import ImageTask

__all__ = [
    "BACKBONES",
    "FAMILY",
    "AttentionMap",
    "AttentionVGG",
    "ChannelAttention",
    "SpatialAttention",
    "build_dafl_cnn",
    "run_on_slide",
]

FAMILY = register_family(
    Family(
        name="image",
        models=("dafl_cnn",),
        run=run_on_slide,
        task=lambda options: ImageTask(),
        input="image",
        default_batch_size=32,
        params=image_params(),
        description="channel/spatial attention CNN (DAFL, Wu et al.) run tile by tile",
        explains=True,
    )
)
