"""A-MIL over a whole slide: every tissue tile encoded (or its cached features read), then pooled."""

from __future__ import annotations

from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from napari_histattn.errors import HistattnError
from napari_histattn.models.amil.streaming import StreamedPooling
from napari_histattn.models.family import (
    SlideOutput,
    softmax64,
    subset,
    tile_info,
)
from napari_histattn.models.feature_reference import FeatureDistances
from napari_histattn.models.tile_evidence import TileExplanations
from napari_histattn.progress import Progress


def run_on_slide(ctx: Any) -> Generator[Progress, None, SlideOutput]:
    """A-MIL over a slide (stages ``tissue``, ``encode``, ``aggregate``).

    Tissue tiles of ``patch_size`` at the checkpoint's resolution are read and
    encoded ``batch_size`` at a time under ``torch.inference_mode``, and each
    batch's embeddings are pooled in as they come (:class:`.streaming.StreamedPooling`,
    equal to ``forward_features`` on the whole bag), so that neither the pixels nor
    the embeddings of the whole bag are ever held. Per-patch attention is the
    heatmap (one cell per tile, NaN where no tile was kept); per-patch class
    probabilities are the head applied to that patch's embedding alone. ``n_patches`` (optional, 0: all) caps the bag
    at an evenly spaced subset of tiles.
    """
    model = ctx.model
    pooling = StreamedPooling(model)
    explained = TileExplanations(ctx) if ctx.explain else None

    def pool(features: Tensor) -> None:
        with torch.inference_mode():
            ctx.call(partial(pooling.add, features), "the bag")

    distances = FeatureDistances.of(ctx.checkpoint)  # how unlike the training tiles
    plan, ds, patch_size, chosen = yield from bag_embeddings(ctx, distances.tee(pool), explained)
    n = int(chosen.size)

    with torch.inference_mode():
        out = ctx.call(pooling.finish, "the bag")
        probs = softmax64(out.logits)[0]
        weights = out.attention[0].float().cpu().numpy()
        # The head on each embedding alone: the bag made of that patch.
        per_patch = softmax64(out.instance_logits[0])

    rows, cols = plan.grid_shape
    att_map = np.full((rows, cols), np.nan, dtype=np.float32)
    cell_probs = np.full((rows, cols, len(ctx.class_names)), np.nan, dtype=np.float64)
    rc = plan.grid_rc[chosen]
    att_map[rc[:, 0], rc[:, 1]] = weights
    cell_probs[rc[:, 0], rc[:, 1]] = per_patch
    explanations = {} if explained is None else explained.on_grid(probs, rc, plan.grid_shape)
    yield from ctx.report("aggregate", 1, 1)
    return SlideOutput(
        probabilities=probs,
        attention=att_map,
        cell_l0=plan.tile_l0,
        cell_probs=cell_probs,
        info={
            **tile_info(ds, patch_size, n, len(plan)),
            **evidence(model, weights, per_patch),
            **distances.info(),
            **({} if explained is None else explained.info(probs)),
        },
        explanations=explanations,
    )


def evidence(model: Any, weights: np.ndarray, per_patch: np.ndarray) -> dict[str, Any]:
    """What a reviewer needs beside the slide probability: the decision rule, the
    attention-weighted patch probability of each class and the most confident patch,
    so that "one small region, very confident" reads as such."""
    weighted = (weights.astype(np.float64)[:, None] * per_patch).sum(axis=0)
    return {
        "decision": str(getattr(model, "decision", "attention")),
        "decision_k": int(getattr(model, "decision_k", 1)),
        "decision_threshold": float(getattr(model, "decision_threshold", 0.0)),
        "attention_weighted_patch_probability": [float(v) for v in weighted],
        "top_patch_probability": [float(v) for v in per_patch.max(axis=0)],
    }


def bag_embeddings(
    ctx: Any, sink: Callable[[Tensor], None], explained: TileExplanations | None = None
) -> Generator[Progress, None, tuple[Any, float, int, np.ndarray]]:
    """Every tile's embedding of a bag model's slide, given to ``sink`` in batches: from the
    cached features of the checkpoint's recorded encoder (a model trained on features) or
    from the model's own encoder (then also given to ``explained``). Returns the tile
    plan, its downsample and tile side, and the plan's rows in the bag."""
    model = ctx.model
    if model.encoder is None:  # trained on cached features: the recorded encoder makes them
        described = ctx.pre.get("feature_encoder")
        if not isinstance(described, dict):
            raise HistattnError(
                f"model {ctx.checkpoint.model_name!r} takes features, but its checkpoint "
                "records no feature_encoder"
            )
        plan = yield from ctx.encoded_tiles(described, ctx.param("n_patches"), sink)
        return plan, plan.downsample, plan.patch_size, np.arange(len(plan))
    ds = ctx.downsample()
    patch_size = int(ctx.param("patch_size") or ctx.pre.get("patch_size") or model.patch_size)
    plan = yield from ctx.plan(patch_size, ds)
    chosen = subset(len(plan), ctx.param("n_patches"))
    yield from encode_tiles(ctx, plan, chosen, sink, explained)
    return plan, ds, patch_size, chosen


def encode_tiles(
    ctx: Any,
    plan: Any,
    chosen: Any,
    sink: Callable[[Tensor], None],
    explained: TileExplanations | None = None,
) -> Generator[Progress, None, None]:
    """The model's own encoder over the chosen tiles, one batch at a time (stage ``encode``),
    each batch's embeddings given to ``sink`` (and the batch to ``explained``), the next
    batch read while this one is encoded."""
    n = int(chosen.size)
    for stop, images in ctx.tile_batches(plan, chosen):
        with torch.inference_mode():
            with ctx.encoder_precision():
                features = ctx.call(partial(ctx.model.encode, images, chunk_size=None), "the tiles")
            sink(features.float())
        if explained is not None:
            explained.add(images)
        yield from ctx.report("encode", stop, n)
