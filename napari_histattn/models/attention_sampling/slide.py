"""Attention sampling over a whole slide (stages ``low-res``, ``sample``, ``patches``, ``aggregate``).

The low-resolution view (the slide at ``downsample * downscale``, read from the
pyramid level closest to it) goes through the attention network in tiles with the
network's receptive half-width of context (the scores of one pass, in bounded
memory); tiles that a thumbnail shows as glass are not read and get attention 0, the
softmax is over the rest;
``n_patches`` locations are drawn from its distribution with a
``torch.Generator`` seeded by the run's seed; only those patches are read at
high resolution, in batches of ``batch_size``, and aggregated as the model does
in training (the expectation estimator or the attention-weighted mean). The
attention map is the attention network's distribution over the low-resolution
grid: every low-resolution pixel is one cell (stride = size = ``downsample *
downscale`` level-0 pixels); cells that are not tissue on the view are NaN.
With ``rounds`` > 1 the sampling is repeated with derived seeds and the slide
probabilities are averaged (the estimator's variance falls as 1/rounds); the
spread over rounds is recorded, and flagged when the call moves. The patch table
is the distinct sampled patches of all rounds (clipped to the slide); their
class probabilities are the classifier applied to that patch's feature alone
(the prediction if all attention were on it). Explanations asked for (``ctx.explain``)
are of that per-patch evidence, each distinct sampled patch read again (stage
``explain``) and its map averaged onto its cell; cells no patch was drawn from are NaN
(:class:`~napari_histattn.models.tile_evidence.TileExplanations`).
"""

from __future__ import annotations

from collections.abc import Generator
from functools import partial
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from napari_histattn.errors import HistattnError
from napari_histattn.models import ats_core
from napari_histattn.models.attention_sampling.network import grid_to_highres_xy
from napari_histattn.models.family import SampledLocations, SlideOutput, softmax64
from napari_histattn.models.patch_source import patch_origin_hr_xy
from napari_histattn.models.tile_evidence import TileExplanations
from napari_histattn.progress import Progress

__all__ = ["ROUND_SEED_STRIDE", "run_on_slide"]

#: Seed offset between sampling rounds (round r draws from ``seed + r * stride``).
ROUND_SEED_STRIDE = 1_000_003


#: Side of the view tiles the attention network runs on (view pixels); each is read
#: with the network's receptive half-width of context, so the scores are those of one
#: pass over the whole view. Tests make it small.
VIEW_TILE = 512


def _view_scores(
    ctx: Any, model: Any, view_ds: float
) -> Generator[Progress, None, tuple[torch.Tensor, NDArray[np.bool_]]]:
    """Attention logits over the view (``-inf`` on tiles without tissue) and its tissue."""
    view = ctx.low_res_tiles(view_ds, VIEW_TILE, model.attention_net.halo)
    h, w = view.size_hw
    scores = torch.full((h, w), float("-inf"), dtype=torch.float32)
    tissue = np.zeros((h, w), dtype=bool)
    yield from ctx.report("low-res", 0, len(view))
    for done, tile in enumerate(view, 1):
        with torch.inference_mode():
            crop_scores = ctx.call(partial(model.attention_scores, tile.crop), "the low-res view")
        scores[tile.rows, tile.cols] = crop_scores[0][tile.inner].float().cpu()
        tissue[tile.rows, tile.cols] = tile.tissue
        yield from ctx.report("low-res", done, len(view))
    if not tissue.any():
        raise ctx.no_tissue((h, w), view_ds)
    return scores.to(ctx.device), tissue


def run_on_slide(ctx: Any) -> Generator[Progress, None, SlideOutput]:
    """Attention sampling over ``ctx``'s slide; see the module docstring."""
    model = ctx.model
    ds = ctx.downsample()
    downscale = int(ctx.pre.get("downscale") or model.downscale)
    patch_size = int(ctx.param("patch_size") or model.patch_size)
    n = int(ctx.param("n_patches") or model.n_patches)
    if n < 1 or patch_size < 1:
        raise HistattnError(f"n_patches and patch_size must be >= 1, got {n} and {patch_size}")
    view_ds = ds * downscale
    ctx.check_size(max(patch_size, downscale) * ds, "one patch")

    scores, tissue = yield from _view_scores(ctx, model, view_ds)
    h, w = int(scores.shape[0]), int(scores.shape[1])
    k = h * w
    with torch.inference_mode():
        attention = torch.softmax(scores.reshape(1, k), dim=1).reshape(1, h, w)
    # Cells of tiles not computed (no tissue on the thumbnail) have attention 0; draws
    # are made among the others only, so their cost follows the tissue, not the slide.
    flat = attention.reshape(1, k)
    ran = torch.isfinite(scores.reshape(-1))
    computed = None if bool(ran.all()) else torch.nonzero(ran).squeeze(1)
    drawable = flat if computed is None else flat[:, computed]
    k_drawn = k if computed is None else int(computed.numel())
    replace = bool(getattr(model, "replace", False))
    if not replace and n > k_drawn:
        ctx.note(f"n_patches {n} exceeds the {k_drawn} grid positions; using {k_drawn}")
        n = k_drawn
    rounds = max(1, int(ctx.param("rounds") or 1))
    source = ctx.patch_source(ds, (w * downscale, h * downscale))
    # Round 0 draws from the run's seed itself (one round is the model's own forward).
    generators = [
        torch.Generator().manual_seed(int(ctx.seed) + ROUND_SEED_STRIDE * r) for r in range(rounds)
    ]
    with torch.inference_mode():
        rounds_drawn = ats_core.sample_rounds(drawable, n, replace, generators)
    all_idx, all_att, all_feats, round_probs = [], [], [], []
    for r, (idx, sample_attention) in enumerate(rounds_drawn):
        if computed is not None:
            idx = computed[idx]
        samples_rc = torch.stack([idx // w, idx % w], dim=-1)[0].cpu()
        # The same centres as AttentionSampling.forward: grid cells map onto the high-res frame.
        centers_hr_xy = grid_to_highres_xy(samples_rc, (h, w), (h * downscale, w * downscale))
        yield from ctx.report("sample", r + 1, rounds)
        chunks: list[torch.Tensor] = []
        bs = ctx.batch_size
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            patches = source.patches(0, centers_hr_xy[start:stop], patch_size)
            with torch.inference_mode():
                batch = patches.to(device=ctx.device, dtype=torch.float32).unsqueeze(0)
                chunks.append(ctx.call(partial(model.sample_features, batch), "the patches")[0])
            yield from ctx.report("patches", r * n + stop, rounds * n)
        with torch.inference_mode():
            features = torch.cat(chunks).unsqueeze(0)  # (1, n, D)
            if getattr(model, "aggregation", "expectation") == "expectation":
                pooled = ats_core.expectation(sample_attention, features, replace)
            else:
                weights = sample_attention / sample_attention.sum(dim=1, keepdim=True)
                pooled = torch.einsum("bn,bnd->bd", weights, features)
            round_probs.append(softmax64(model.classifier(pooled))[0])
        all_idx.append(idx)
        all_att.append(sample_attention)
        all_feats.append(features[0])
    per_round = np.stack(round_probs)
    probs = per_round.mean(axis=0)
    idx = torch.cat(all_idx, dim=1)
    samples_rc = torch.stack([idx // w, idx % w], dim=-1)[0].cpu()
    centers_hr_xy = grid_to_highres_xy(samples_rc, (h, w), (h * downscale, w * downscale))
    with torch.inference_mode():
        per_patch = softmax64(model.classifier(torch.cat(all_feats)))

    draws = idx[0].cpu().numpy()
    _, first, counts = np.unique(draws, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    first, counts = first[order], counts[order]
    att_np = attention[0].float().cpu().numpy()
    origins_hr = patch_origin_hr_xy(centers_hr_xy[first], patch_size).numpy()
    origins_l0 = np.round(origins_hr * ds).astype(np.int64)
    rc = samples_rc[first].numpy().astype(np.int64)
    cell_att = att_np[rc[:, 0], rc[:, 1]].astype(np.float64)
    side = patch_size * ds
    samples = SampledLocations(
        centers_l0_xy=(centers_hr_xy[first].numpy() * ds).astype(np.float64),
        origins_l0_xy=origins_l0,
        grid_rc=rc,
        attention=cell_att,
        counts=counts.astype(np.int64),
        patch_l0_wh=(side, side),
    )
    # The table clips each patch to the slide (a patch at the border was read partly
    # beyond it, as white glass); samples.origins_l0_xy keeps the window that was read.
    w0, h0 = ctx.slide_size_l0_wh
    xy0 = np.clip(origins_l0, 0, (w0, h0)).astype(np.float64)
    xy1 = np.clip(origins_l0 + side, 0, (w0, h0)).astype(np.float64)
    att_map = att_np.astype(np.float32)
    att_map[~tissue] = np.nan
    explained = TileExplanations(ctx) if ctx.explain else None
    if explained is not None:  # each distinct sampled patch, read again with gradients
        read = centers_hr_xy[first]
        for start in range(0, len(read), ctx.batch_size):
            stop = min(start + ctx.batch_size, len(read))
            patches = source.patches(0, read[start:stop], patch_size)
            explained.add(patches.to(device=ctx.device, dtype=torch.float32))
            yield from ctx.report("explain", stop, len(read))
    yield from ctx.report("aggregate", 1, 1)
    return SlideOutput(
        probabilities=probs,
        attention=att_map,
        cell_l0=view_ds,
        patches=(xy0, xy1 - xy0, cell_att, per_patch[first]),
        samples=samples,
        info={
            "downsample": ds,
            "patch_size": patch_size,
            "n_patches": n,
            "downscale": downscale,
            "low_res_downsample": view_ds,
            "low_res_level_used": ctx.level_for(view_ds),
            "low_res_size_wh": [w, h],
            "replace": replace,
            "sampling_rounds": rounds,
            # The engine turns these into the spread it reports, after calibration.
            **({"round_probabilities": per_round.tolist()} if rounds > 1 else {}),
            **({} if explained is None else explained.info(probs)),
        },
        explanations={} if explained is None else explained.on_grid(probs, rc, (h, w)),
    )
