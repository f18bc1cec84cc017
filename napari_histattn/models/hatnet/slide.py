"""HATNet over a whole slide: every tissue tile encoded (or its cached features read), then
the two levels of self-attention over the tile grid."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from napari_histattn.errors import HistattnError
from napari_histattn.models.amil.slide import bag_embeddings, evidence
from napari_histattn.models.family import SlideOutput, softmax64, tile_info
from napari_histattn.models.feature_reference import FeatureDistances
from napari_histattn.models.tile_evidence import TileExplanations
from napari_histattn.progress import Progress


def run_on_slide(ctx: Any) -> Generator[Progress, None, SlideOutput]:
    """HATNet over a slide (stages ``tissue``/``features``, ``encode``, ``aggregate``).

    The tiles' embeddings are held (``N x D`` floats: self-attention needs the whole
    bag), then the model runs once on the tile grid. The heatmap is each tile's
    attention (word attention times its region's, summing to 1 over the slide); the
    two levels are :attr:`~napari_histattn.models.family.SlideOutput.attention_maps`
    ``"word"`` (sums to 1 inside each region) and ``"region"`` (each tile shows its
    region's attention, summing to 1 over the regions). Per-tile class probabilities
    are the head on each tile's own embedding, and the explanations (``ctx.explain``)
    are of that evidence (:class:`~napari_histattn.models.tile_evidence.TileExplanations`).
    ``n_patches`` (0: all) caps the bag at an evenly spaced subset of tiles.
    """
    model = ctx.model
    chunks: list[Tensor] = []
    explained = TileExplanations(ctx) if ctx.explain else None

    distances = FeatureDistances.of(ctx.checkpoint)  # how unlike the training tiles
    plan, ds, patch_size, chosen = yield from bag_embeddings(
        ctx, distances.tee(chunks.append), explained
    )
    n = int(chosen.size)
    if n == 0:
        raise HistattnError("no tissue tile to classify")
    rc = plan.grid_rc[chosen]

    with torch.inference_mode():
        features = torch.cat([c.float() for c in chunks]).unsqueeze(0)
        positions = torch.from_numpy(np.ascontiguousarray(rc)).unsqueeze(0).to(features.device)
        out = ctx.call(lambda: model.forward_features(features, positions), "the slide")
        probs = softmax64(out.logits)[0]
        per_tile = softmax64(out.instance_logits[0])
        weights = out.attention[0].float().cpu().numpy()
        word = out.word_attention[0].float().cpu().numpy()
        region_of = out.region_of_tile[0].cpu().numpy()
        region = out.region_attention[0].float().cpu().numpy()[region_of]

    rows, cols = plan.grid_shape

    def on_grid(values: np.ndarray) -> np.ndarray:
        grid = np.full((rows, cols), np.nan, dtype=np.float32)
        grid[rc[:, 0], rc[:, 1]] = values
        return grid

    cell_probs = np.full((rows, cols, len(ctx.class_names)), np.nan, dtype=np.float64)
    cell_probs[rc[:, 0], rc[:, 1]] = per_tile
    yield from ctx.report("aggregate", 1, 1)
    n_regions = int(out.region_mask[0].sum())
    return SlideOutput(
        probabilities=probs,
        attention=on_grid(weights),
        cell_l0=plan.tile_l0,
        cell_probs=cell_probs,
        info={
            **tile_info(ds, patch_size, n, len(plan)),
            **evidence(model, weights, per_tile),
            "region_size": int(model.region_size),
            "n_regions": n_regions,
            **distances.info(),
            **({} if explained is None else explained.info(probs)),
        },
        attention_maps={"word": on_grid(word), "region": on_grid(region)},
        explanations={} if explained is None else explained.on_grid(probs, rc, (rows, cols)),
    )
