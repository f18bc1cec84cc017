"""Attention-based multiple-instance learning (A-MIL; Ilse, Tomczak & Welling, 2018).

An image or slide is a bag of N patches. A patch encoder (see
:mod:`napari_histattn.models.encoders`) maps each patch to an embedding
``h_n`` (D-d); attention pooling weighs the embeddings and a linear head
classifies the pooled bag embedding.

Attention (Ilse et al., Eqs. 8-9), per branch k of K:

- plain: ``s_nk = w_k^T tanh(V h_n)``
- gated: ``s_nk = w_k^T (tanh(V h_n) * sigmoid(U h_n))``

``a_nk = softmax_n(s_nk)`` over the bag's (unmasked) instances; the bag
embedding is ``z_k = sum_n a_nk h_n``; the K embeddings are concatenated
(``K * D``) and a linear layer gives the class logits. The pooling is a
weighted sum over instances, so the output does not depend on the order of the
instances in the bag.

Shapes: patches ``(B, N, C, h, w)``; features ``(B, N, D)``; optional ``mask``
``(B, N)`` bool, True for real instances (False for padding of ragged bags).
:class:`~napari_histattn.models.outputs.MILOutput` has ``logits`` ``(B, n_classes)``,
``attention`` ``(B, N)`` (rows sum to 1, exactly 0 at padding) and
``attention_logits`` ``(B, N)`` (the scores ``s`` before the softmax; at padding
they are the unmasked raw scores, meaningless). With K > 1 branches both are the
mean over branches, so ``attention`` still sums to 1; the per-branch values are
available from :meth:`AttentionMIL.attention_scores`.

Registered name: ``"amil"``; family ``"mil"`` (its plug-in declaration is at the end).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from napari_histattn.models.encoders import MIN_PATCH_SIZE, build_encoder
from napari_histattn.models.family import (
    Family,
    SlideOutput,
    register_family,
    softmax64,
    subset,
    tile_info,
    tile_params,
)
from napari_histattn.models.outputs import MILOutput
from napari_histattn.models.registry import ModelExample, register_model
from napari_histattn.models.tasks import Batch, Call, Task, targets_of
from napari_histattn.progress import Progress

#: Default number of patches encoded at once by :meth:`AttentionMIL.encode`.
DEFAULT_CHUNK_SIZE = 512


class AttentionPooling(nn.Module):
    """Attention pooling over a bag: plain (tanh) or gated (tanh * sigmoid).

    Parameters
    ----------
    in_dim
        Instance embedding width D.
    attn_dim
        Hidden width of the attention network (L in Ilse et al.; 128 there).
    n_branches
        Number K of attention branches.
    gated
        Gated attention if True.
    dropout
        Dropout on the attention hidden layer (training only).
    """

    def __init__(
        self,
        in_dim: int,
        attn_dim: int = 128,
        n_branches: int = 1,
        gated: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.gated = gated
        self.n_branches = n_branches
        self.attention_v = nn.Linear(in_dim, attn_dim)
        self.attention_u = nn.Linear(in_dim, attn_dim) if gated else None
        self.dropout = nn.Dropout(dropout)
        self.attention_w = nn.Linear(attn_dim, n_branches)

    def scores(self, features: Tensor) -> Tensor:
        """Attention scores ``s`` before the softmax: ``(B, N, D) -> (B, N, K)``."""
        hidden = torch.tanh(self.attention_v(features))
        if self.attention_u is not None:
            hidden = hidden * torch.sigmoid(self.attention_u(features))
        return self.attention_w(self.dropout(hidden))

    def forward(
        self, features: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pool a batch of bags.

        Parameters
        ----------
        features
            ``(B, N, D)`` instance embeddings.
        mask
            ``(B, N)`` bool, True for real instances; None means all are real.

        Returns
        -------
        tuple[Tensor, Tensor, Tensor]
            Pooled embeddings ``(B, K, D)``, weights ``(B, N, K)`` (softmax over N,
            0 at masked instances) and scores ``(B, N, K)``.
        """
        scores = self.scores(features)
        masked = scores
        if mask is not None:
            masked = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        weights = torch.softmax(masked, dim=1)
        pooled = torch.einsum("bnk,bnd->bkd", weights, features)
        return pooled, weights, scores


class AttentionMIL(nn.Module):
    """A-MIL: patch encoder, attention pooling and a linear multi-class head.

    Parameters
    ----------
    encoder
        Patch encoder name (``"small_cnn"``, ``"resnet18"``, ``"tiny"``), or
        ``"none"`` for a model that only takes precomputed features (B, N, embed_dim).
    in_channels
        Channels of the patches.
    patch_size
        Patch side in pixels (metadata for preprocessing; checked against the
        encoder's minimum).
    n_classes
        Number of classes of the head.
    embed_dim
        Instance embedding width D; None keeps the encoder's natural width
        (required with ``encoder="none"``).
    attn_dim
        Hidden width of the attention network.
    n_branches
        Attention branches K.
    gated
        Gated attention (True) or plain tanh attention.
    dropout
        Dropout on the attention hidden layer and before the head.
    """

    def __init__(
        self,
        encoder: str = "small_cnn",
        in_channels: int = 3,
        patch_size: int = 28,
        n_classes: int = 2,
        embed_dim: int | None = None,
        attn_dim: int = 128,
        n_branches: int = 1,
        gated: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}")
        if n_branches < 1:
            raise ValueError(f"n_branches must be at least 1, got {n_branches}")
        self.encoder_name = encoder
        self.n_classes = n_classes
        self.patch_size = patch_size
        self.encoder: nn.Module | None
        if encoder == "none":
            if embed_dim is None:
                raise ValueError('encoder="none" needs embed_dim (the width of the given features)')
            self.encoder, self.embed_dim = None, embed_dim
        else:
            minimum = MIN_PATCH_SIZE.get(encoder, 1)
            if patch_size < minimum:
                raise ValueError(
                    f"encoder {encoder!r} needs patches of at least {minimum} px, got {patch_size}"
                )
            self.encoder, self.embed_dim = build_encoder(encoder, in_channels, embed_dim)
        self.pooling = AttentionPooling(self.embed_dim, attn_dim, n_branches, gated, dropout)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(n_branches * self.embed_dim, n_classes)
        )

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, patches: Tensor, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> Tensor:
        """Encode patches in chunks of at most ``chunk_size``.

        Each chunk is moved to the model's device on its own, so patches may stay
        on the CPU while the model runs on a GPU; under ``torch.no_grad`` or
        ``torch.inference_mode`` the memory held is one chunk's activations plus
        the features. Under autograd every chunk's activations are kept for the
        backward pass, as without chunking.

        Parameters
        ----------
        patches
            ``(B, N, C, h, w)`` or ``(N, C, h, w)``.
        chunk_size
            Patches per encoder call; None encodes everything at once.

        Returns
        -------
        Tensor
            ``(B, N, D)`` or ``(N, D)`` features on the model's device.
        """
        if self.encoder is None:
            raise ValueError(
                'this A-MIL model has encoder="none": pass features to forward_features'
            )
        if patches.dim() not in (4, 5):
            raise ValueError(
                f"patches must be (B, N, C, h, w) or (N, C, h, w), got shape {tuple(patches.shape)}"
            )
        lead = patches.shape[:-3]
        flat = patches.reshape(-1, *patches.shape[-3:])
        device = self._device()
        step = flat.shape[0] if chunk_size is None else max(1, int(chunk_size))
        chunks = [
            self.encoder(flat[start : start + step].to(device, non_blocking=True))
            for start in range(0, flat.shape[0], step)
        ]
        if not chunks:
            return torch.zeros(*lead, self.embed_dim, device=device)
        return torch.cat(chunks).reshape(*lead, self.embed_dim)

    def attention_scores(self, features: Tensor) -> Tensor:
        """Per-branch attention scores ``(B, N, K)`` before the softmax."""
        return self.pooling.scores(features)

    def forward_features(self, features: Tensor, mask: Tensor | None = None) -> MILOutput:
        """Classify bags of precomputed instance features.

        Parameters
        ----------
        features
            ``(B, N, D)`` embeddings (from :meth:`encode`, or any extractor when
            ``encoder="none"``).
        mask
            ``(B, N)`` bool, True for real instances. Every bag needs at least one.

        Returns
        -------
        MILOutput
            ``logits`` ``(B, n_classes)``, ``attention`` and ``attention_logits`` ``(B, N)``.
        """
        if features.dim() != 3 or features.shape[-1] != self.embed_dim:
            raise ValueError(
                f"features must be (B, N, {self.embed_dim}), got shape {tuple(features.shape)}"
            )
        if features.shape[1] == 0:
            raise ValueError("empty bag: A-MIL needs at least one instance per bag")
        if mask is not None:
            mask = mask.to(device=features.device, dtype=torch.bool)
            if mask.shape != features.shape[:2]:
                raise ValueError(
                    f"mask must be (B, N) = {tuple(features.shape[:2])}, got {tuple(mask.shape)}"
                )
            if not bool(mask.any(dim=1).all()):
                raise ValueError("every bag needs at least one unmasked instance")
        pooled, weights, scores = self.pooling(features, mask)
        logits = self.head(pooled.flatten(1))
        return MILOutput(
            logits=logits, attention=weights.mean(-1), attention_logits=scores.mean(-1)
        )

    def forward(
        self,
        patches: Tensor,
        mask: Tensor | None = None,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    ) -> MILOutput:
        """Encode a batch of bags of patches ``(B, N, C, h, w)`` and classify them.

        See :meth:`encode` for ``chunk_size`` and :meth:`forward_features` for the output.
        """
        if patches.dim() != 5:
            raise ValueError(f"patches must be (B, N, C, h, w), got shape {tuple(patches.shape)}")
        return self.forward_features(self.encode(patches, chunk_size), mask)


def _example_input(
    config: dict[str, Any], batch_size: int, seed: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    n_instances = 5
    size = int(config["patch_size"])
    patches = torch.rand(
        batch_size, n_instances, config["in_channels"], size, size, generator=generator
    )
    mask = torch.ones(batch_size, n_instances, dtype=torch.bool)
    mask[0, -2:] = False  # a ragged first bag, padded to N
    return (patches,), {"mask": mask, "chunk_size": 3}


# The class is its own builder: create_model reads the defaults from __init__.
register_model(
    "amil",
    example=ModelExample(
        config={"encoder": "tiny", "patch_size": 12, "embed_dim": 8, "attn_dim": 6, "n_classes": 3},
        make_input=_example_input,
    ),
)(AttentionMIL)


# --------------------------------------------------------------------------- the family plug-in


class MILTask(Task):
    """Training adapter: ragged bags padded to the largest, with a ``(B, N)`` mask.

    Items are ``(patches (n, 3, p, p), label)``; the call is
    ``model(patches (B, N, 3, p, p), mask=mask, chunk_size=...)``.

    Parameters
    ----------
    chunk_size
        Patches encoded at once (bounds activation memory).
    """

    family = "mil"

    def __init__(self, chunk_size: int | None = 256) -> None:
        self.chunk_size = chunk_size

    def collate(self, items: Sequence[tuple[Any, ...]]) -> Batch:
        bags = [item[0] for item in items]
        longest = max(int(b.shape[0]) for b in bags)
        patches = bags[0].new_zeros((len(bags), longest, *bags[0].shape[1:]))
        mask = torch.zeros(len(bags), longest, dtype=torch.bool)
        for i, bag in enumerate(bags):
            patches[i, : bag.shape[0]] = bag
            mask[i, : bag.shape[0]] = True
        return Batch((patches,), {"mask": mask}, targets_of(items))

    def model_inputs(self, batch: Batch, device: torch.device, gen: torch.Generator | None) -> Call:
        # The model moves each chunk to its device itself, so patches may stay on the CPU.
        mask = batch.kwargs["mask"].to(device)
        return (batch.inputs[0],), {"mask": mask, "chunk_size": self.chunk_size}


def run_on_slide(ctx: Any) -> Generator[Progress, None, SlideOutput]:
    """A-MIL over a slide (stages ``tissue``, ``encode``, ``aggregate``).

    Tissue tiles of ``patch_size`` at the checkpoint's resolution are read and
    encoded ``batch_size`` at a time under ``torch.inference_mode``, so at most
    one batch of pixels is in memory; ``forward_features`` then pools all
    features. Per-patch attention is the heatmap (one cell per tile, NaN where
    no tile was kept); per-patch class probabilities are the head applied to
    that patch's embedding alone. ``n_patches`` (optional, 0: all) caps the bag
    at an evenly spaced subset of tiles.
    """
    model = ctx.model
    ds = ctx.downsample()
    patch_size = int(ctx.param("patch_size") or ctx.pre.get("patch_size") or model.patch_size)
    plan = yield from ctx.plan(patch_size, ds)
    chosen = subset(len(plan), ctx.param("n_patches"))
    n = int(chosen.size)
    chunks: list[Tensor] = []
    bs = ctx.batch_size
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        with torch.inference_mode():
            images = ctx.read_tiles(plan, chosen[start:stop])
            chunks.append(ctx.call(partial(model.encode, images, chunk_size=None), "the tiles"))
        yield from ctx.report("encode", stop, n)

    with torch.inference_mode():
        features = torch.cat(chunks).unsqueeze(0)  # (1, n, D)
        out = ctx.call(partial(model.forward_features, features), "the bag")
        probs = softmax64(out.logits)[0]
        weights = out.attention[0].float().cpu().numpy()
        # The head on one embedding repeated over the K branches: the bag made of that patch.
        branches = int(getattr(model.pooling, "n_branches", 1))
        per_patch = softmax64(model.head(features[0].repeat(1, branches)))

    rows, cols = plan.grid_shape
    att_map = np.full((rows, cols), np.nan, dtype=np.float32)
    cell_probs = np.full((rows, cols, len(ctx.class_names)), np.nan, dtype=np.float64)
    rc = plan.grid_rc[chosen]
    att_map[rc[:, 0], rc[:, 1]] = weights
    cell_probs[rc[:, 0], rc[:, 1]] = per_patch
    yield from ctx.report("aggregate", 1, 1)
    return SlideOutput(
        probabilities=probs,
        attention=att_map,
        cell_l0=plan.tile_l0,
        cell_probs=cell_probs,
        info=tile_info(ds, patch_size, n, len(plan)),
    )


def _patch_size(config: Mapping[str, Any], pre: Mapping[str, Any]) -> int:
    return int(pre.get("patch_size") or config.get("patch_size") or 1)


FAMILY = register_family(
    Family(
        name="mil",
        models=("amil",),
        run=run_on_slide,
        task=lambda options: MILTask(chunk_size=options.chunk_size),
        input="mil",
        default_batch_size=128,
        params=tile_params(_patch_size),
        description="attention MIL (Ilse et al. 2018): attention pooling over every tissue tile",
    )
)
