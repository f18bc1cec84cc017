"""HATNet-style hierarchical self-attention (after Mehta et al. 2020) as a family plug-in.

- :mod:`.network`: the model, registered as ``"hatnet"``;
- :mod:`.slide`: how it runs over a whole slide;
- :mod:`.task`: its training adapter (bags with tile positions);
- this module: the family's declaration (family ``"hatnet"``).

It trains as A-MIL does (``input="mil"``: bags of tissue tiles, or of cached
features with ``--features``; slide labels, optionally annotations), with each
tile's grid position in the bag (``bag_positions``).
"""

from __future__ import annotations

from napari_histattn.models.amil import bag_patch_size, own_encoder_only
from napari_histattn.models.family import Family, register_family, tile_params
from napari_histattn.models.hatnet.network import HATNet, SelfAttentionBlock, group_regions
from napari_histattn.models.hatnet.slide import run_on_slide
from napari_histattn.models.hatnet.task import HATNetTask

__all__ = ["FAMILY", "HATNet", "HATNetTask", "SelfAttentionBlock", "group_regions", "run_on_slide"]


FAMILY = register_family(
    Family(
        name="hatnet",
        models=("hatnet",),
        run=run_on_slide,
        task=lambda options: HATNetTask(chunk_size=options.chunk_size),
        input="mil",
        bag_positions=True,
        default_batch_size=128,
        params=tile_params(bag_patch_size),
        explains=True,
        explain_refusal=own_encoder_only,
        description="HATNet-style hierarchical self-attention (Mehta et al. 2020): tiles attend "
        "within regions, regions across the slide",
    )
)
