"""Typed outputs of the model families.

Every family returns a dataclass with ``logits`` and its attention both before
(``attention_logits``) and after normalisation (``attention``). Shapes use
B = batch, C = classes, N = instances/patches, h, w = attention-grid size.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class AttentionOutput:
    """Common base.

    Attributes
    ----------
    logits
        ``(B, C)`` class scores before softmax.
    attention
        Normalised attention weights (shape per family, see subclasses).
    attention_logits
        Raw attention scores before normalisation (same shape as ``attention``).
    """

    logits: Tensor
    attention: Tensor
    attention_logits: Tensor


@dataclass
class MILOutput(AttentionOutput):
    """A-MIL: ``attention`` and ``attention_logits`` are ``(B, N)``; each row of
    ``attention`` sums to 1 over the bag's N instances (padding masked out).

    ``features`` ``(B, N, D)`` are the instance embeddings the attention pooled and
    ``mask`` ``(B, N)`` the real instances (``None``: all), kept for instance-level
    losses. ``bag_logits`` ``(B, C)`` are the attention-pooled logits (``logits`` are
    the model's decision rule over them and ``instance_logits`` ``(B, N, C)``, the
    head on each instance); ``instance_targets`` ``(B, N)`` long are instance labels
    from annotations (-1: unlabelled), set by the training adapter."""

    features: Tensor | None = None
    mask: Tensor | None = None
    bag_logits: Tensor | None = None
    instance_logits: Tensor | None = None
    instance_targets: Tensor | None = None


@dataclass
class HATNetOutput(MILOutput):
    """HATNet: as :class:`MILOutput` (``attention`` ``(B, N)`` is each tile's word attention
    times its region's attention and sums to 1 over the bag; ``features`` and
    ``instance_logits`` are each tile's own, before the tiles attend to each other), plus
    both attention levels.

    ``word_attention`` ``(B, N)`` sums to 1 over the tiles of each region;
    ``region_attention`` ``(B, R)`` sums to 1 over each bag's regions (0 at padding);
    ``region_of_tile`` ``(B, N)`` long is each tile's index on the region axis (-1 at
    padding); ``region_rc`` ``(B, R, 2)`` long the regions' grid (row, col) in regions and
    ``region_mask`` ``(B, R)`` the real ones."""

    word_attention: Tensor | None = None
    region_attention: Tensor | None = None
    region_of_tile: Tensor | None = None
    region_rc: Tensor | None = None
    region_mask: Tensor | None = None


@dataclass
class SamplingOutput(AttentionOutput):
    """Attention sampling.

    ``attention`` is ``(B, h, w)``, the distribution over positions of the
    low-resolution attention grid (sums to 1 per image); ``attention_logits`` the
    scores before the softmax. ``samples_rc`` is ``(B, N, 2)`` long, the sampled
    grid positions (row, col); ``sample_attention`` is ``(B, N)``, the attention
    at each sample; ``features`` is ``(B, N, D)`` the patch features, when computed.
    """

    samples_rc: Tensor | None = None
    sample_attention: Tensor | None = None
    features: Tensor | None = None


@dataclass
class CNNAttentionOutput(AttentionOutput):
    """Channel/spatial attention CNN.

    ``attention`` is ``(B, H, W)`` at the input resolution: the spatial attention
    that each position receives (column sums of E' from the last S-Attn module,
    normalised to sum to 1 per image, upsampled); ``attention_logits`` the same
    before normalisation (the received attention mass at feature resolution,
    upsampled).

    ``levels`` (MLDAM): the model's further attention levels by name, each ``(B, h, w)``
    at its own resolution, as relative mass (1 = uniform within the image).
    """

    levels: dict[str, Tensor] | None = None
