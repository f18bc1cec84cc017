"""Image-level attention models over a whole slide, tile by tile (stages ``tissue``,
``tiles``, ``aggregate``): the slide call from the tiles' probabilities
(:mod:`napari_histattn.models.tile_calls`), the stitched attention and explanations.

Shared by the families whose models classify whole images (the attention CNN, MLDAM).
Such a model returns a :class:`~napari_histattn.models.outputs.CNNAttentionOutput` and
has ``cells_per_tile(patch_size)`` (the side of its attention grid on one tile) and
``gradcam_layer`` (the convolution block Grad-CAM reads). An output's ``levels`` (MLDAM's
coarser attention levels) become :attr:`~napari_histattn.models.family.SlideOutput.attention_maps`
on the attention's cells, weighted by the tiles' evidence as the attention is.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from napari_histattn.models import tile_calls
from napari_histattn.models.family import (
    FamilyParam,
    SlideOutput,
    softmax64,
    subset,
    tile_info,
    tile_params,
)
from napari_histattn.progress import Progress

__all__ = ["image_params", "image_size", "run_on_slide", "top_k_default"]


def image_size(config: Mapping[str, Any], pre: Mapping[str, Any]) -> int:
    """A checkpoint's tile side: the image size it was trained on."""
    return int(pre.get("image_size") or config.get("input_size") or 224)


def top_k_default(config: Mapping[str, Any], pre: Mapping[str, Any]) -> int:
    """A checkpoint's ``slide_top_k``: its own (preprocessing), else the measured default."""
    return int(pre.get("slide_top_k", tile_calls.DEFAULT_TOP_K))


def run_on_slide(ctx: Any) -> Generator[Progress, None, SlideOutput]:
    """An image-level model tile by tile over a slide (stages ``tissue``, ``tiles``, ``aggregate``).

    Tiles of side ``patch_size`` (default the checkpoint's ``image_size``) cover
    the tissue. The slide call is made from the tile probabilities by
    :func:`~napari_histattn.models.tile_calls.slide_call`: by default the most
    severe class that the ``slide_top_k`` most suspicious tiles show (0: the mean of
    the tiles). Each tile's spatial attention (``attention_logits``: 1 = uniform within
    the tile; for the attention CNN the mass each position receives in its last S-Attn
    module) is average-pooled to ``k x k`` cells, ``k = model.cells_per_tile``, and
    multiplied by the tile's evidence for the call
    (:func:`~napari_histattn.models.tile_calls.evidence`), so that the stitched map
    compares across tiles and shows what the call rests on. The patch table has one
    row per tile (attention: the mean of its cells). Explanations asked for
    (``ctx.explain``: Grad-CAM at ``model.gradcam_layer``, guided Grad-CAM,
    saliency) are of each tile's log-odds of the same evidence, average-pooled to the
    same cells.

    A checkpoint trained on whole images (``histattn train`` on an image folder: it
    records an ``image_size`` but no pixel size, level, downsample or tile size)
    classifies the whole image resized to that size, as it was trained, instead of
    tiles of it (:func:`_run_on_whole_image`).
    """
    if _whole_images(ctx):
        return (yield from _run_on_whole_image(ctx))
    model = ctx.model
    ds = ctx.downsample()
    patch_size = int(ctx.param("patch_size") or image_size(ctx.checkpoint.config, ctx.pre))
    top_k = int(ctx.param("slide_top_k"))
    plan = yield from ctx.plan(patch_size, ds)
    chosen = subset(len(plan), ctx.param("n_patches"))
    n = int(chosen.size)
    k = max(1, int(model.cells_per_tile(patch_size)))
    tile_probs: list[NDArray[np.float64]] = []
    tile_att: list[NDArray[np.float32]] = []
    # (method, evidence class) -> per batch (b, k, k); every class after the first is
    # explained, since the call (which says whose evidence the map shows) comes last.
    explained: dict[tuple[str, int], list[NDArray[np.float32]]] = {}
    levels: dict[str, list[NDArray[np.float32]]] = {}  # the model's further attention levels
    evidence_classes = list(range(1, len(ctx.class_names)))
    for stop, images in ctx.tile_batches(plan, chosen):  # the next batch read meanwhile
        with torch.inference_mode():
            out = ctx.call(partial(model, images), "the tiles")
            tile_probs.append(softmax64(out.logits))
            # Mean received attention mass per cell: 1 is uniform within the tile.
            tile_att.append(_cells(out.attention_logits, k))
            for name, values in (getattr(out, "levels", None) or {}).items():
                levels.setdefault(name, []).append(_cells(values, k))
        if ctx.explain:
            maps = ctx.call(
                partial(ctx.explain_tiles, images, evidence_classes, model.gradcam_layer),
                "the explanations",
            )
            for key, value in maps.items():
                explained.setdefault(key, []).append(_cells(value, k))
        yield from ctx.report("tiles", stop, n)

    probs_tiles = np.concatenate(tile_probs)  # (n, C)
    att_tiles = np.concatenate(tile_att)  # (n, k, k)
    probs = tile_calls.slide_call(probs_tiles, top_k)
    support = tile_calls.evidence(probs_tiles, int(np.argmax(probs)))
    weighted = att_tiles * support[:, None, None].astype(np.float32)

    rows, cols = plan.grid_shape
    n_classes = probs_tiles.shape[1]
    att_map = np.full((rows * k, cols * k), np.nan, dtype=np.float32)
    cell_probs = np.full((rows * k, cols * k, n_classes), np.nan, dtype=np.float64)
    rc = plan.grid_rc[chosen]
    # Tile (r, c) covers cells r*k..r*k+k-1, c*k..c*k+k-1: one assignment for all tiles.
    cell_r = (rc[:, 0, None] * k + np.arange(k)[None, :])[:, :, None]  # (n, k, 1)
    cell_c = (rc[:, 1, None] * k + np.arange(k)[None, :])[:, None, :]  # (n, 1, k)
    att_map[cell_r, cell_c] = weighted
    cell_probs[cell_r, cell_c] = probs_tiles[:, None, None, :]
    shown = min(max(int(np.argmax(probs)), 1), n_classes - 1)  # as tile_calls.evidence
    explanations = {}
    for (method, c), parts in explained.items():
        if c == shown:
            explanations[method] = np.full_like(att_map, np.nan)
            explanations[method][cell_r, cell_c] = np.concatenate(parts)
    level_maps = {}
    for name, parts in levels.items():  # weighted by the tiles' evidence, as the attention
        level_maps[name] = np.full_like(att_map, np.nan)
        level_maps[name][cell_r, cell_c] = np.concatenate(parts) * support[:, None, None]
    tile = plan.tile_l0
    xy_l0 = (rc[:, ::-1] * tile).astype(np.float64)
    wh_l0 = np.full((n, 2), tile, dtype=np.float64)
    yield from ctx.report("aggregate", 1, 1)
    return SlideOutput(
        probabilities=probs,
        attention=att_map,
        cell_l0=tile / k,
        cell_probs=cell_probs,
        patches=(xy_l0, wh_l0, weighted.reshape(n, -1).mean(axis=1), probs_tiles),
        info={
            **tile_info(ds, patch_size, n, len(plan)),
            "cells_per_tile": k,
            "slide_probability": tile_calls.rule_name(top_k, ctx.class_names),
            "slide_top_k": top_k,
            "tile_calls": tile_calls.tile_summary(probs_tiles, ctx.class_names),
            **({"explained_class": ctx.class_names[shown]} if explanations else {}),
        },
        explanations=explanations,
        attention_maps=level_maps,
    )


def _cells(maps: torch.Tensor, k: int) -> NDArray[np.float32]:
    """``(b, h, w)`` maps average-pooled to ``(b, k, k)`` cells, as float32 NumPy."""
    pooled = F.adaptive_avg_pool2d(maps.detach().float().unsqueeze(1), (k, k))
    out: NDArray[np.float32] = pooled[:, 0].cpu().numpy()
    return out


def image_params() -> tuple[FamilyParam, ...]:
    """The run parameters of an image-level family: the tile cap, the tile side and
    ``slide_top_k``."""
    return (
        *tile_params(image_size),
        FamilyParam(
            "slide_top_k",
            "tiles deciding the call (0 = mean)",
            "the slide is the most severe class that this many of its most suspicious "
            "tiles show (classes in the checkpoint's order, most benign first); 0: the "
            "mean of the tile probabilities",
            default=top_k_default,
        ),
    )


#: The largest side (level-0 px) of an image that a whole-image checkpoint classifies.
MAX_WHOLE_IMAGE_SIDE = 8192


def _whole_images(ctx: Any) -> bool:
    """Whether the checkpoint was trained on whole images (and the caller asks for no tiles)."""
    pre = ctx.pre
    recorded = ("target_mpp", "downsample", "level", "patch_size")
    return all(pre.get(key) is None for key in recorded) and ctx.params.get("patch_size") is None


def _run_on_whole_image(ctx: Any) -> Generator[Progress, None, SlideOutput]:
    """One forward pass over the whole image resized to the checkpoint's ``image_size``.

    The attention (and any explanation) comes on the model's own ``k x k`` grid over the
    squashed image; it is laid on square cells of side ``max(w, h) / k`` level-0 pixels
    over the image (each cell takes the grid value under its centre).
    """
    model = ctx.model
    size = image_size(ctx.checkpoint.config, ctx.pre)
    images = ctx.whole_image(size, MAX_WHOLE_IMAGE_SIDE)
    ctx.note(
        f"classified the whole image resized to {size}x{size} px, as the checkpoint was "
        "trained (it records no pixel size or tile size)"
    )
    with torch.inference_mode():
        out = ctx.call(partial(model, images), "the image")
        probs = softmax64(out.logits)[0]
    k = max(1, int(model.cells_per_tile(size)))
    called = int(np.argmax(probs))
    w0, h0 = ctx.slide_size_l0_wh
    side = max(w0, h0) / k
    rows, cols = max(1, math.ceil(h0 / side)), max(1, math.ceil(w0 / side))
    # The model's grid cell under each square cell's centre (the image was squashed).
    grid_r = np.minimum(((np.arange(rows) + 0.5) * side / h0 * k).astype(int), k - 1)
    grid_c = np.minimum(((np.arange(cols) + 0.5) * side / w0 * k).astype(int), k - 1)

    def laid(values: torch.Tensor) -> NDArray[np.float32]:
        cells = _cells(values, k)[0]
        return np.ascontiguousarray(cells[grid_r[:, None], grid_c[None, :]])

    explanations = {}
    if ctx.explain and len(ctx.class_names) > 1:
        shown = min(max(called, 1), len(ctx.class_names) - 1)
        maps = ctx.call(partial(ctx.explain_tiles, images, [shown], model.gradcam_layer),
                        "the explanations")  # fmt: skip
        explanations = {method: laid(v) for (method, _), v in maps.items()}
    att_map = laid(out.attention_logits)
    level_maps = {name: laid(v) for name, v in (getattr(out, "levels", None) or {}).items()}
    yield from ctx.report("tiles", 1, 1)
    n_classes = probs.shape[0]
    return SlideOutput(
        probabilities=probs,
        attention=att_map,
        cell_l0=side,
        cell_probs=np.broadcast_to(probs, (rows, cols, n_classes)).copy(),
        patches=(
            np.zeros((1, 2)),
            np.array([[float(w0), float(h0)]]),
            np.array([float(att_map.mean())]),
            probs[None, :],
        ),  # fmt: skip
        info={
            "downsample": max(w0, h0) / size,
            "patch_size": size,
            "n_patches": 1,
            "n_tissue_tiles": 1,
            "whole_image": True,
            "slide_probability": f"the whole image, resized to {size}x{size} px as in training",
        },
        explanations=explanations,
        attention_maps=level_maps,
    )
