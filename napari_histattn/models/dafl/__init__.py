"""The channel/spatial attention CNN (DAFL; Wu et al., ISBI 2019) as a family plug-in.

- :mod:`.network`: C-Attn, S-Attn and the VGG they sit in, registered as ``"dafl_cnn"``;
- :mod:`.slide`: how it runs over a whole slide;
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
from napari_histattn.models.dafl.slide import image_size, run_on_slide, top_k_default
from napari_histattn.models.family import Family, FamilyParam, register_family, tile_params
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
        params=(
            *tile_params(image_size),
            FamilyParam(
                "slide_top_k",
                "tiles deciding the call (0 = mean)",
                "the slide is the most severe class that this many of its most suspicious "
                "tiles show (classes in the checkpoint's order, most benign first); 0: the "
                "mean of the tile probabilities",
                default=top_k_default,
            ),
        ),
        description="channel/spatial attention CNN (DAFL, Wu et al.) run tile by tile",
        explains=True,
    )
)
