"""HATNet-style hierarchical self-attention over a slide's tiles (after Mehta et al. 2020).

HATNet reads a biopsy as words (patch embeddings) grouped into bags (crops of
the image), lets the words of a bag attend to each other, pools each bag with
attention, lets the bags attend to each other across the image and pools them
into one image representation. Here, on a slide's tile grid:

1. **Words**: each tissue tile's embedding ``h_n`` (D-d), from the model's own
   patch encoder or from cached features of a registry encoder (``encoder="none"``).
2. **Bags** (we call them *regions*, as a pathologist would): the tiles of one
   ``region_size x region_size`` block of the tile grid; tile ``(r, c)`` is in
   region ``(r // k, c // k)`` at slot ``(r % k) * k + c % k``. Each word gets a
   learned embedding of its slot.
3. **Word self-attention**: ``word_layers`` pre-norm transformer blocks among the
   words of each region (padding slots masked), then gated attention pooling
   (Ilse et al.) over them: the *word attention* ``a_n`` sums to 1 in each region,
   and the region embedding is ``e_g = sum_n a_n w_n``.
4. **Region self-attention**: each region embedding plus a learned projection of
   a 2-D sinusoidal code of the region's grid position, then ``region_layers``
   transformer blocks among the regions of the slide, then attention pooling:
   the *region attention* ``b_g`` sums to 1 over the slide's regions.
5. **Head**: a linear layer on the pooled slide embedding.

A tile's attention is ``a_n * b_g(n)``, which sums to 1 over the slide's tiles,
so the heatmap reads as A-MIL's does. The head applied to each tile's own embedding
(before the tiles attend to each other) gives per-tile class scores, the tile's own
evidence as A-MIL's are: they make the instance decision rules, losses and region
classes of :class:`~napari_histattn.models.amil.AttentionMIL` work unchanged (this
class subclasses it; its ``pooling`` is the region pooling). Scores of the
contextualised words were tried first: trained from slide labels only, the head never
sees single words, and on the demo slide look-alike regions scored "lesion".

Everything is equivariant to the order of the tiles and depends on their grid
positions only through the region grouping, the slots and the region code, so
the output does not change when the bag is shuffled with its positions. Self-
attention goes through :func:`torch.nn.functional.scaled_dot_product_attention`,
whose fused CPU kernel keeps memory linear in the number of regions, with or without a
padding mask (30,000 regions: 0.7 GB peak, where the attention matrix alone would be
14 GB; ``benchmarks/hatnet_memory.py``).

Shapes: features ``(B, N, D)`` or patches ``(B, N, C, h, w)``; positions
``(B, N, 2)`` long grid ``(row, col)``; ``mask`` ``(B, N)`` bool (True: real
tile). The output is a :class:`~napari_histattn.models.outputs.HATNetOutput`.

Registered name: ``"hatnet"`` (the family plug-in is :mod:`napari_histattn.models.hatnet`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from napari_histattn.models.amil.network import DEFAULT_CHUNK_SIZE, AttentionMIL, AttentionPooling
from napari_histattn.models.outputs import HATNetOutput
from napari_histattn.models.registry import ModelExample, register_model

__all__ = ["HATNet", "Regions", "SelfAttentionBlock", "group_regions"]

#: Width of the sinusoidal code of a region's grid position (before its projection).
POSITION_CODE_DIM = 32


class SelfAttentionBlock(nn.Module):
    """A pre-norm transformer encoder block: multi-head self-attention and a GELU MLP,
    each added back to its input; padding (``mask`` False) is neither attended to nor
    changed."""

    def __init__(self, dim: int, n_heads: int, ff_mult: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"the embedding width {dim} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = float(dropout)
        self.norm_attention = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.project = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim)
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B, L, D) -> (B, L, D)``; ``mask`` ``(B, L)`` bool, None: all real."""
        b, length, dim = x.shape
        q, k, v = (
            self.qkv(self.norm_attention(x))
            .reshape(b, length, 3, self.n_heads, dim // self.n_heads)
            .permute(2, 0, 3, 1, 4)
        )
        attn_mask = None if mask is None else mask[:, None, None, :]
        mixed = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.project(mixed.transpose(1, 2).reshape(b, length, dim))
        x = x + self.mlp(self.norm_mlp(x))
        return x if mask is None else x * mask[..., None]


@dataclass
class Regions:
    """How a batch's tiles group into regions (all long tensors).

    Attributes
    ----------
    of_tile
        ``(B, N)`` the tile's region, an index into the batch's region axis (-1: padding).
    slot
        ``(B, N)`` the tile's slot in its region, ``0 .. k*k - 1``.
    flat
        ``(B, N)`` the tile's region in the flat list of all the batch's regions (-1: padding).
    batch
        ``(G,)`` the bag each flat region belongs to; ``index`` ``(G,)`` its place on that
        bag's region axis.
    rc
        ``(B, R, 2)`` each region's grid (row, col) in regions (0 at padding); ``mask``
        ``(B, R)`` bool, the real regions.
    """

    of_tile: Tensor
    slot: Tensor
    flat: Tensor
    batch: Tensor
    index: Tensor
    rc: Tensor
    mask: Tensor

    @property
    def count(self) -> int:
        """Regions in the whole batch."""
        return int(self.batch.shape[0])


def group_regions(positions: Tensor, mask: Tensor, region_size: int) -> Regions:
    """Group tiles at grid ``positions`` ``(B, N, 2)`` into ``region_size``-square regions.

    Raises
    ------
    ValueError
        A position is negative, or two real tiles of one bag share a position.
    """
    k = int(region_size)
    if bool((positions[mask] < 0).any()):
        raise ValueError("tile positions must be non-negative grid (row, col)")
    b_count, n = mask.shape
    region_rc = torch.div(positions, k, rounding_mode="floor")
    slot = (positions[..., 0] % k) * k + positions[..., 1] % k
    span = int(region_rc[..., 1].max()) + 1 if n else 1
    rows = int(region_rc[..., 0].max()) + 1 if n else 1
    bag = torch.arange(b_count, device=mask.device)[:, None].expand(b_count, n)
    key = (bag * rows + region_rc[..., 0]) * span + region_rc[..., 1]
    unique, inverse = torch.unique(key[mask], return_inverse=True)
    if torch.unique(inverse * (k * k) + slot[mask]).numel() != inverse.numel():
        raise ValueError("two tiles of one bag share a grid position")
    flat = torch.full_like(key, -1)
    flat[mask] = inverse
    region_batch = unique // (rows * span)
    counts = torch.bincount(region_batch, minlength=b_count)
    first = torch.cumsum(counts, 0) - counts
    index = torch.arange(unique.numel(), device=mask.device) - first[region_batch]
    width = max(1, int(counts.max()) if counts.numel() else 1)
    rc = torch.zeros(b_count, width, 2, dtype=torch.long, device=mask.device)
    within = unique % (rows * span)
    rc[region_batch, index] = torch.stack([within // span, within % span], dim=1)
    region_mask = torch.zeros(b_count, width, dtype=torch.bool, device=mask.device)
    region_mask[region_batch, index] = True
    of_tile = torch.full_like(key, -1)
    of_tile[mask] = index[inverse]
    return Regions(of_tile, slot, flat, region_batch, index, rc, region_mask)


def position_code(rc: Tensor, dim: int = POSITION_CODE_DIM) -> Tensor:
    """A 2-D sinusoidal code ``(..., dim)`` of grid positions ``rc`` ``(..., 2)``: half the
    channels for the row, half for the column, at geometric wavelengths 1 to 10,000."""
    quarter = dim // 4
    frequencies = torch.exp(
        -math.log(10_000.0) * torch.arange(quarter, device=rc.device, dtype=torch.float32) / quarter
    )
    angles = rc.float()[..., None] * frequencies  # (..., 2, quarter)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class HATNet(AttentionMIL):
    """Hierarchical self-attention over words (tiles) and regions; see the module docstring.

    Parameters
    ----------
    region_size
        Side of a region in tiles (k; regions hold k*k words).
    n_heads
        Attention heads of every transformer block (must divide the embedding width).
    word_layers, region_layers
        Transformer blocks among the words of a region and among the regions of a slide.
    ff_mult
        Width of the blocks' MLP as a multiple of the embedding width.
    Others
        As :class:`~napari_histattn.models.amil.AttentionMIL` (encoder, embedding,
        attention width, gating, dropout, feature standardisation, the instance-level
        decision rules and losses). One attention branch.
    """

    def __init__(
        self,
        encoder: str = "small_cnn",
        in_channels: int = 3,
        patch_size: int = 28,
        n_classes: int = 2,
        embed_dim: int | None = None,
        attn_dim: int = 128,
        gated: bool = True,
        dropout: float = 0.0,
        standardise: bool = False,
        region_size: int = 4,
        n_heads: int = 4,
        word_layers: int = 1,
        region_layers: int = 1,
        ff_mult: int = 2,
        instance_loss_weight: float = 0.0,
        instance_k: int = 8,
        decision: str = "attention",
        decision_k: int = 1,
        decision_threshold: float = 0.0,
        topk_loss_weight: float = 0.0,
        annotation_loss_weight: float = 1.0,
        negative_loss_weight: float = 0.0,
    ) -> None:
        super().__init__(
            encoder=encoder,
            in_channels=in_channels,
            patch_size=patch_size,
            n_classes=n_classes,
            embed_dim=embed_dim,
            attn_dim=attn_dim,
            n_branches=1,
            gated=gated,
            dropout=dropout,
            standardise=standardise,
            instance_loss_weight=instance_loss_weight,
            instance_k=instance_k,
            decision=decision,
            decision_k=decision_k,
            decision_threshold=decision_threshold,
            topk_loss_weight=topk_loss_weight,
            annotation_loss_weight=annotation_loss_weight,
            negative_loss_weight=negative_loss_weight,
        )
        if region_size < 1 or word_layers < 0 or region_layers < 0 or ff_mult < 1:
            raise ValueError("region_size and ff_mult must be >= 1, the layer counts >= 0")
        dim = self.embed_dim
        self.region_size = int(region_size)
        self.word_slot = nn.Embedding(self.region_size**2, dim)
        self.word_blocks = nn.ModuleList(
            SelfAttentionBlock(dim, n_heads, ff_mult, dropout) for _ in range(word_layers)
        )
        self.word_pooling = AttentionPooling(dim, attn_dim, 1, gated, dropout)
        self.region_position = nn.Linear(POSITION_CODE_DIM, dim)
        self.region_blocks = nn.ModuleList(
            SelfAttentionBlock(dim, n_heads, ff_mult, dropout) for _ in range(region_layers)
        )
        nn.init.normal_(self.word_slot.weight, std=0.02)
        nn.init.normal_(self.region_position.weight, std=0.02)
        nn.init.zeros_(self.region_position.bias)

    def forward_features(  # type: ignore[override]
        self, features: Tensor, positions: Tensor, mask: Tensor | None = None
    ) -> HATNetOutput:
        """Classify bags of tile features ``(B, N, D)`` at grid ``positions`` ``(B, N, 2)``."""
        if features.dim() != 3 or features.shape[-1] != self.embed_dim:
            raise ValueError(
                f"features must be (B, N, {self.embed_dim}), got shape {tuple(features.shape)}"
            )
        b, n, dim = features.shape
        if positions.shape != (b, n, 2):
            raise ValueError(
                f"positions must be (B, N, 2) = {(b, n, 2)}, got {tuple(positions.shape)}"
            )
        if n == 0:
            raise ValueError("empty bag: HATNet needs at least one tile per bag")
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=features.device)
        mask = mask.to(device=features.device, dtype=torch.bool)
        if mask.shape != (b, n) or not bool(mask.any(dim=1).all()):
            raise ValueError("mask must be (B, N) with at least one real tile per bag")
        positions = positions.to(device=features.device, dtype=torch.long)
        if self.standardise:
            features = (features - self.get_buffer("feature_mean")) / self.get_buffer("feature_std")
        regions = group_regions(positions, mask, self.region_size)
        real_flat, real_slot = regions.flat[mask], regions.slot[mask]

        # Words: the (G, k*k, D) slots of every region of the batch.
        slots = self.region_size**2
        words = features.new_zeros(regions.count, slots, dim).index_put(
            (real_flat, real_slot), features[mask] + self.word_slot(real_slot)
        )
        word_mask = torch.zeros(regions.count, slots, dtype=torch.bool, device=mask.device)
        word_mask[real_flat, real_slot] = True
        for block in self.word_blocks:
            words = block(words, word_mask)
        pooled_words, word_weights, word_scores = self.word_pooling(words, word_mask)

        # Regions: (B, R, D) per bag, with their grid code.
        region_embeddings = features.new_zeros(*regions.mask.shape, dim).index_put(
            (regions.batch, regions.index), pooled_words[:, 0]
        )
        code = self.region_position(position_code(regions.rc - _bag_origin(regions)))
        region_embeddings = (region_embeddings + code) * regions.mask[..., None]
        for block in self.region_blocks:
            region_embeddings = block(region_embeddings, regions.mask)
        pooled, region_weights, region_scores = self.pooling(region_embeddings, regions.mask)
        bag_logits = self.head(pooled.flatten(1))

        # Back to tiles: the two attention levels and their product.
        word_attention = _on_tiles(word_weights[real_flat, real_slot, 0], mask)
        word_logits = _on_tiles(word_scores[real_flat, real_slot, 0], mask)
        bag_index = torch.arange(b, device=mask.device)[:, None].expand(b, n)[mask]
        region_of = regions.of_tile[mask]
        tile_region_attention = _on_tiles(region_weights[bag_index, region_of, 0], mask)
        tile_region_logits = _on_tiles(region_scores[bag_index, region_of, 0], mask)
        instance_logits = self.instance_logits(features)  # each tile's own evidence
        return HATNetOutput(
            logits=self.decide(bag_logits, instance_logits, mask, self.decision),
            attention=word_attention * tile_region_attention,
            attention_logits=word_logits + tile_region_logits,
            features=features,
            mask=mask,
            bag_logits=bag_logits,
            instance_logits=instance_logits,
            word_attention=word_attention,
            region_attention=region_weights[..., 0],
            region_of_tile=regions.of_tile,
            region_rc=regions.rc,
            region_mask=regions.mask,
        )

    def forward(  # type: ignore[override]
        self,
        patches: Tensor,
        positions: Tensor,
        mask: Tensor | None = None,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    ) -> HATNetOutput:
        """Encode bags of patches ``(B, N, C, h, w)`` (or take features ``(B, N, D)`` with
        ``encoder="none"``) at grid ``positions`` ``(B, N, 2)`` and classify them."""
        if self.encoder is None and patches.dim() == 3:
            return self.forward_features(patches.to(self._device()), positions, mask)
        if patches.dim() != 5:
            raise ValueError(f"patches must be (B, N, C, h, w), got shape {tuple(patches.shape)}")
        return self.forward_features(self.encode(patches, chunk_size), positions, mask)


def _on_tiles(values: Tensor, mask: Tensor) -> Tensor:
    """The real tiles' ``values`` ``(n_real,)`` laid back on ``(B, N)``, 0 at padding."""
    return values.new_zeros(mask.shape).masked_scatter(mask, values)


def _bag_origin(regions: Regions) -> Tensor:
    """``(B, 1, 2)``: the smallest region row and column of each bag, so that the position
    code is relative to where the tissue starts, not to the slide's corner."""
    big = torch.iinfo(torch.long).max
    rc = regions.rc.masked_fill(~regions.mask[..., None], big)
    return rc.min(dim=1, keepdim=True).values


def _example_input(
    config: dict[str, Any], batch_size: int, seed: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    n_tiles = 7
    size = int(config["patch_size"])
    patches = torch.rand(
        batch_size, n_tiles, config["in_channels"], size, size, generator=generator
    )
    # Seven tiles of a 4 x 4 grid: regions of 2 x 2 tiles hold 1 to 3 of them.
    order = torch.randperm(16, generator=generator)[:n_tiles]
    positions = torch.stack([order // 4, order % 4], dim=1).expand(batch_size, n_tiles, 2)
    mask = torch.ones(batch_size, n_tiles, dtype=torch.bool)
    mask[0, -2:] = False  # a ragged first bag, padded to N
    return (patches, positions.clone()), {"mask": mask, "chunk_size": 3}


# The class is its own builder: create_model reads the defaults from __init__.
register_model(
    "hatnet",
    example=ModelExample(
        config={
            "encoder": "tiny",
            "patch_size": 12,
            "embed_dim": 8,
            "attn_dim": 6,
            "n_classes": 3,
            "region_size": 2,
            "n_heads": 2,
        },
        make_input=_example_input,
    ),
)(HATNet)
