"""Classify a slide with a checkpoint: a generator that yields progress and returns a result.

:func:`classify` runs a checkpoint over a whole slide, reading only what its
model family needs, and returns a
:class:`~napari_histattn.inference.result.ClassificationResult`. It yields one
:class:`~napari_histattn.progress.Progress` per batch; drain it with
:func:`~napari_histattn.progress.run_to_completion` (tests),
:func:`~napari_histattn.progress.run_with_tqdm` (CLI) or napari's
``thread_worker`` (widget).

The resolution comes from the checkpoint's ``preprocessing`` (``target_mpp``,
``level`` or ``downsample``: level-0 pixels per model pixel, 1 when none is
given), and so do the patch size, ``mean``/``std`` and the tissue settings.
Tiling, tissue detection and patch reading are those of training
(:mod:`napari_histattn.inference.patches`), so a model sees at inference the
inputs it was trained on.

Families
--------
attention sampling (``attention_sampling``; stages ``low-res``, ``sample``, ``patches``, ``aggregate``)
    The low-resolution view (the slide at ``downsample * downscale``, read from
    the best pyramid level and resized) goes through the attention network;
    ``n_patches`` locations are drawn from its distribution with a
    ``torch.Generator`` seeded by ``seed``; only those patches are read at high
    resolution (through :class:`~napari_histattn.inference.patches.SlidePatchSource`),
    in batches of ``batch_size``, and aggregated as the model does in training
    (the expectation estimator or the attention-weighted mean). The attention
    map is the attention network's distribution over the low-resolution grid:
    every low-resolution pixel is one cell (stride = size = ``downsample *
    downscale`` level-0 pixels); cells that are not tissue on the view are NaN.
    The patch table is the distinct sampled patches (clipped to the slide); their class probabilities
    are the classifier applied to that patch's feature alone (the prediction if
    all attention were on it).
A-MIL (``amil``; stages ``tissue``, ``encode``, ``aggregate``)
    Tissue tiles of ``patch_size`` at the checkpoint's resolution (tissue found
    on a thumbnail) are read and encoded ``batch_size`` at a time under
    ``torch.inference_mode``, so at most one batch of pixels is in memory;
    ``forward_features`` then pools all features. Per-patch attention is the
    heatmap (one cell per tile, NaN where no tile was kept); per-patch class
    probabilities are the head applied to that patch's embedding alone.
    ``n_patches`` (optional) caps the bag at an evenly spaced subset of tiles.
attention CNN (``dafl_cnn``; stages ``tissue``, ``tiles``, ``aggregate``)
    Runs tile by tile over the tissue tiles (tile side ``patch_size``, default
    the checkpoint's ``image_size``). Slide probabilities are the **mean of the
    tile probabilities**. Each tile's spatial attention (the attention mass each
    position receives in the last S-Attn module, 1 = uniform within the tile)
    is average-pooled to ``k x k`` cells, ``k`` the module's own grid size, and
    multiplied by the tile's probability of the slide's predicted class, so
    that the stitched map compares across tiles: it is high where the model
    attends inside tiles that it calls the predicted class. The patch table has
    one row per tile (attention: the mean of its cells).

Device
------
``"auto"`` uses CUDA when present, otherwise MPS or the CPU, and says so in a
``"device"`` progress message (also kept in ``provenance["messages"]``). An
explicit CUDA device that is missing also falls back to the CPU with a
message. When the device runs out of memory the batch size is halved and the
run restarts; at batch size 1 it moves to the CPU. A caller's
:class:`~napari_histattn.models.checkpoint.LoadedCheckpoint` model is moved to
the device used.

Reproducibility and cancellation
--------------------------------
The same seed on the same device gives the same result (sampling draws on a
CPU generator, models run in eval mode). When ``cancel`` is set the generator
raises :class:`~napari_histattn.inference.errors.Cancelled` as soon as it is
resumed after its current progress report: no further batch runs and no result
is returned.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from functools import partial
from os import PathLike
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from numpy.typing import NDArray

from napari_histattn import __version__
from napari_histattn.errors import HistattnError
from napari_histattn.inference.errors import (
    Cancelled,
    NoTissueError,
    SlideTooSmallError,
    UnsupportedModelError,
)
from napari_histattn.inference.patches import (
    SlidePatchSource,
    TilePlan,
    TissueSettings,
    plan_tiles,
    read_tiles,
    read_view,
    rgb_to_tensor,
    target_downsample,
    tissue_mask,
)
from napari_histattn.inference.result import ClassificationResult, SampledLocations, make_regions
from napari_histattn.io.regions import GridGeometry, Patch, grid_patches
from napari_histattn.io.slide import Slide, open_slide
from napari_histattn.models import ats_core
from napari_histattn.models.attention_sampling import grid_to_highres_xy
from napari_histattn.models.checkpoint import LoadedCheckpoint
from napari_histattn.models.checkpoint import load as load_checkpoint
from napari_histattn.models.device import resolve_device
from napari_histattn.models.patch_source import patch_origin_hr_xy
from napari_histattn.progress import Progress
from napari_histattn.training.tasks import FAMILY_OF_MODEL

__all__ = ["DEFAULT_BATCH_SIZE", "MIN_TILE_TISSUE", "classify", "select_device"]

#: Default patches (or tiles) per batch, by family.
DEFAULT_BATCH_SIZE = {"sampling": 64, "mil": 128, "image": 32}

#: A slide whose most tissue-covered tile holds less tissue than this has "no tissue".
MIN_TILE_TISSUE = 0.01

_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {
        getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
        torch.cuda.OutOfMemoryError,
    }
)


def select_device(name: str | torch.device = "auto") -> tuple[torch.device, list[str]]:
    """The device to run on, and messages saying why it is not CUDA.

    ``"auto"`` gives CUDA when present, else MPS or the CPU (with a message). A
    CUDA device that does not exist falls back to the CPU (with a message);
    other unknown names raise :class:`~napari_histattn.errors.HistattnError`.
    """
    text = str(name).strip().lower()
    if text == "auto":
        device = resolve_device("auto")
        if device.type == "cuda":
            return device, []
        where = "Apple MPS" if device.type == "mps" else "the CPU"
        return device, [f"CUDA is not available: running on {where}"]
    try:
        return resolve_device(name), []
    except HistattnError as exc:
        if text.startswith("cuda"):
            return torch.device("cpu"), [f"{exc}; falling back to the CPU"]
        raise


@dataclass
class _Raw:
    """What a family runner returns before regions and provenance are added."""

    probabilities: NDArray[np.float64]
    attention: NDArray[np.float32]
    geometry: GridGeometry
    patches: list[Patch]
    cell_probs: NDArray[np.float64] | None = None
    samples: SampledLocations | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    """State shared by the family runners of one classification."""

    slide: Slide
    checkpoint: LoadedCheckpoint
    family: str
    device: torch.device
    batch_size: int
    seed: int
    n_patches: int | None
    patch_size: int | None
    cancel: threading.Event | None
    timings: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    _mark: float = field(default_factory=time.perf_counter)
    # Tile plans survive an out-of-memory retry, so tissue is detected once.
    plans: dict[tuple[int, float], TilePlan] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        return self.checkpoint.model

    @property
    def pre(self) -> dict[str, Any]:
        return self.checkpoint.preprocessing

    def report(
        self, stage: str, done: int, total: int | None, message: str = ""
    ) -> Generator[Progress, None, None]:
        """Yield one progress report; raise :class:`Cancelled` if cancel was set meanwhile.

        Time since the previous report is charged to ``stage`` (the consumer's
        time between reports is not).
        """
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + (now - self._mark)
        yield Progress(stage, done, total, message)
        self._mark = time.perf_counter()
        self.check_cancel(stage, done, total)

    def check_cancel(self, stage: str, done: int = 0, total: int | None = None) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(stage, done, total)

    # -- preprocessing read from the checkpoint

    def downsample(self) -> float:
        """Level-0 pixels per model pixel, from the checkpoint's preprocessing."""
        pre = self.pre
        return target_downsample(
            self.slide,
            target_mpp=pre.get("target_mpp"),
            level=pre.get("level"),
            downsample=pre.get("downsample"),
        )

    def tissue_settings(self) -> TissueSettings:
        given = self.pre.get("tissue")
        if not isinstance(given, dict):
            return TissueSettings()
        known = {f.name for f in fields(TissueSettings)}
        return TissueSettings(**{k: v for k, v in given.items() if k in known})

    def mean_std(self) -> tuple[list[float] | None, list[float] | None]:
        mean, std = self.pre.get("mean"), self.pre.get("std")
        if mean is None or std is None:
            return None, None
        return _triple(mean), _triple(std)

    def check_size(self, side_l0: float, what: str) -> None:
        w0, h0 = self.slide.level_dimensions[0]
        if min(w0, h0) < side_l0:
            raise SlideTooSmallError(
                self.slide.path,
                f"the slide is {w0}x{h0} px, smaller than {what} of {side_l0:g} level-0 px "
                f"that model {self.checkpoint.model_name!r} needs",
            )


def _triple(value: Any) -> list[float]:
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return values * 3 if len(values) == 1 else values


def _softmax64(logits: torch.Tensor) -> NDArray[np.float64]:
    probs: NDArray[np.float64] = torch.softmax(logits.detach().double(), dim=-1).cpu().numpy()
    return probs


def _check_tiles(run: _Run, plan: TilePlan) -> None:
    best = float(plan.tissue_fraction.max()) if len(plan) else 0.0
    if best < MIN_TILE_TISSUE:
        raise NoTissueError(
            run.slide.path,
            f"no tissue found: at most {best:.1%} of any {plan.patch_size} px tile at "
            f"downsample {plan.downsample:g} is tissue",
        )


def _subset(n: int, cap: int | None) -> NDArray[np.int64]:
    """All of ``range(n)``, or an evenly spaced subset of at most ``cap`` (as evaluation does)."""
    if cap is None or n <= cap:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, max(1, cap)).round().astype(np.int64))


def _model_call(run: _Run, fn: Callable[[], Any], what: str) -> Any:
    """Run ``fn``; a model that rejects its input becomes our error naming the cause."""
    try:
        return fn()
    except _OOM_ERRORS:
        raise
    except (ValueError, RuntimeError) as exc:
        raise HistattnError(
            f"model {run.checkpoint.model_name!r} ({run.checkpoint.path}) failed on {what}: {exc}"
        ) from exc


# --------------------------------------------------------------------------- attention sampling


def _run_sampling(run: _Run) -> Generator[Progress, None, _Raw]:
    model = run.model
    ds = run.downsample()
    downscale = int(run.pre.get("downscale") or model.downscale)
    patch_size = int(run.patch_size or model.patch_size)
    n = int(run.n_patches or model.n_patches)
    if n < 1 or patch_size < 1:
        raise HistattnError(f"n_patches and patch_size must be >= 1, got {n} and {patch_size}")
    view_ds = ds * downscale
    run.check_size(max(patch_size, downscale) * ds, "one patch")
    mean, std = run.mean_std()

    yield from run.report("low-res", 0, 1)
    view = read_view(run.slide, view_ds)
    h, w = int(view.shape[0]), int(view.shape[1])
    settings = run.tissue_settings()
    tissue = tissue_mask(view, settings.saturation_min, settings.brightness_max)
    if not tissue.any():
        raise NoTissueError(
            run.slide.path, f"no tissue found on the {w}x{h} px view at downsample {view_ds:g}"
        )
    low_res = rgb_to_tensor(view, mean, std).unsqueeze(0).to(run.device)
    yield from run.report("low-res", 1, 1)

    k = h * w
    replace = bool(getattr(model, "replace", False))
    if not replace and n > k:
        run.messages.append(f"n_patches {n} exceeds the {k} grid positions; using {k}")
        n = k
    with torch.inference_mode():
        _, attention = _model_call(run, partial(model.attention_map, low_res), "the low-res view")
        generator = torch.Generator().manual_seed(int(run.seed))
        idx, sample_attention = ats_core.sample(attention.reshape(1, k), n, replace, generator)
    samples_rc = torch.stack([idx // w, idx % w], dim=-1)[0].cpu()
    high_res_hw = (h * downscale, w * downscale)
    # The same centres as AttentionSampling.forward: grid cells map onto the high-res frame.
    centers_hr_xy = grid_to_highres_xy(samples_rc, (h, w), high_res_hw)
    yield from run.report("sample", 1, 1)

    source = SlidePatchSource(
        run.slide, ds, size_wh=(w * downscale, h * downscale), mean=mean, std=std
    )
    chunks: list[torch.Tensor] = []
    bs = run.batch_size
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        patches = source.patches(0, centers_hr_xy[start:stop], patch_size)
        with torch.inference_mode():
            batch = patches.to(device=run.device, dtype=low_res.dtype).unsqueeze(0)
            chunks.append(_model_call(run, partial(model.sample_features, batch), "the patches")[0])
        yield from run.report("patches", stop, n)

    with torch.inference_mode():
        features = torch.cat(chunks).unsqueeze(0)  # (1, n, D)
        if getattr(model, "aggregation", "expectation") == "expectation":
            pooled = ats_core.expectation(sample_attention, features, replace)
        else:
            weights = sample_attention / sample_attention.sum(dim=1, keepdim=True)
            pooled = torch.einsum("bn,bnd->bd", weights, features)
        probs = _softmax64(model.classifier(pooled))[0]
        per_patch = _softmax64(model.classifier(features[0]))

    draws = idx[0].cpu().numpy()
    unique, first, counts = np.unique(draws, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    first, counts = first[order], counts[order]
    att_np = attention[0].float().cpu().numpy()
    centers_l0 = centers_hr_xy[first].numpy() * ds
    origins_hr = patch_origin_hr_xy(centers_hr_xy[first], patch_size).numpy()
    origins_l0 = np.round(origins_hr * ds).astype(np.int64)
    rc = samples_rc[first].numpy().astype(np.int64)
    cell_att = att_np[rc[:, 0], rc[:, 1]].astype(np.float64)
    side = patch_size * ds
    samples = SampledLocations(
        centers_l0_xy=centers_l0.astype(np.float64),
        origins_l0_xy=origins_l0,
        grid_rc=rc,
        attention=cell_att,
        counts=counts.astype(np.int64),
        patch_l0_wh=(side, side),
    )
    names = run.checkpoint.class_names
    # The table clips each patch to the slide (a patch at the border was read partly
    # beyond it, as white glass); samples.origins_l0_xy keeps the window that was read.
    w0, h0 = run.slide.level_dimensions[0]
    x0 = np.clip(origins_l0[:, 0], 0, w0).astype(np.float64)
    y0 = np.clip(origins_l0[:, 1], 0, h0).astype(np.float64)
    x1 = np.clip(origins_l0[:, 0] + side, 0, w0)
    y1 = np.clip(origins_l0[:, 1] + side, 0, h0)
    patch_list = [
        Patch(
            (x0[j], y0[j]),
            (x1[j] - x0[j], y1[j] - y0[j]),
            float(cell_att[j]),
            dict(zip(names, per_patch[first[j]].tolist(), strict=True)),
        )
        for j in range(len(first))
    ]
    att_map = att_np.astype(np.float32)
    att_map[~tissue] = np.nan
    yield from run.report("aggregate", 1, 1)
    return _Raw(
        probabilities=probs,
        attention=att_map,
        geometry=GridGeometry((0.0, 0.0), (view_ds, view_ds), (view_ds, view_ds)),
        patches=patch_list,
        samples=samples,
        info={
            "downsample": ds,
            "patch_size": patch_size,
            "n_patches": n,
            "downscale": downscale,
            "low_res_downsample": view_ds,
            "low_res_level_used": int(run.slide.best_level_for_downsample(view_ds)),
            "low_res_size_wh": [w, h],
            "replace": replace,
        },
    )


# --------------------------------------------------------------------------- A-MIL


def _plan(run: _Run, patch_size: int, ds: float) -> Generator[Progress, None, TilePlan]:
    run.check_size(patch_size * ds, "one tile")
    key = (patch_size, ds)
    if key not in run.plans:
        yield from run.report("tissue", 0, 1)
        plan = plan_tiles(run.slide, patch_size, ds, run.tissue_settings())
        _check_tiles(run, plan)
        run.plans[key] = plan
    yield from run.report("tissue", 1, 1)
    return run.plans[key]


def _run_mil(run: _Run) -> Generator[Progress, None, _Raw]:
    model = run.model
    ds = run.downsample()
    patch_size = int(run.patch_size or run.pre.get("patch_size") or model.patch_size)
    plan = yield from _plan(run, patch_size, ds)
    chosen = _subset(len(plan), run.n_patches)
    n = int(chosen.size)
    mean, std = run.mean_std()
    chunks: list[torch.Tensor] = []
    bs = run.batch_size
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        pixels = read_tiles(run.slide, plan, chosen[start:stop])
        with torch.inference_mode():
            images = rgb_to_tensor(pixels, mean, std).to(run.device)
            chunks.append(
                _model_call(run, partial(model.encode, images, chunk_size=None), "the tiles")
            )
        yield from run.report("encode", stop, n)

    with torch.inference_mode():
        features = torch.cat(chunks).unsqueeze(0)  # (1, n, D)
        out = _model_call(run, partial(model.forward_features, features), "the bag")
        probs = _softmax64(out.logits)[0]
        weights = out.attention[0].float().cpu().numpy()
        # The head on one embedding repeated over the K branches: the bag made of that patch.
        branches = int(getattr(model.pooling, "n_branches", 1))
        per_patch = _softmax64(model.head(features[0].repeat(1, branches)))

    rows, cols = plan.grid_shape
    n_classes = len(run.checkpoint.class_names)
    att_map = np.full((rows, cols), np.nan, dtype=np.float32)
    cell_probs = np.full((rows, cols, n_classes), np.nan, dtype=np.float64)
    rc = plan.grid_rc[chosen]
    att_map[rc[:, 0], rc[:, 1]] = weights
    cell_probs[rc[:, 0], rc[:, 1]] = per_patch
    side = plan.tile_l0
    geometry = GridGeometry((0.0, 0.0), (side, side), (side, side))
    names = run.checkpoint.class_names
    yield from run.report("aggregate", 1, 1)
    return _Raw(
        probabilities=probs,
        attention=att_map,
        geometry=geometry,
        patches=grid_patches(att_map, geometry, class_names=names, cell_probs=cell_probs),
        cell_probs=cell_probs,
        info={
            "downsample": ds,
            "patch_size": patch_size,
            "n_patches": n,
            "n_tissue_tiles": len(plan),
        },
    )


# --------------------------------------------------------------------------- attention CNN


def _cells_per_tile(model: Any, patch_size: int) -> int:
    """Side of the last S-Attn module's grid for a ``patch_size`` input (>= 1)."""
    pools = getattr(model, "pools", None)
    last = getattr(model, "last_sattn_block", None)
    if pools is None or last is None:
        return 1
    n_pools = sum(isinstance(p, nn.MaxPool2d) for p in list(pools)[: int(last)])
    return max(1, patch_size // (2**n_pools))


def _run_image(run: _Run) -> Generator[Progress, None, _Raw]:
    model = run.model
    pre = run.pre
    ds = run.downsample()
    image_size = int(pre.get("image_size") or run.checkpoint.config.get("input_size") or 224)
    patch_size = int(run.patch_size or image_size)
    plan = yield from _plan(run, patch_size, ds)
    chosen = _subset(len(plan), run.n_patches)
    n = int(chosen.size)
    k = _cells_per_tile(model, patch_size)
    mean, std = run.mean_std()
    tile_probs: list[NDArray[np.float64]] = []
    tile_att: list[NDArray[np.float32]] = []
    bs = run.batch_size
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        pixels = read_tiles(run.slide, plan, chosen[start:stop])
        with torch.inference_mode():
            images = rgb_to_tensor(pixels, mean, std).to(run.device)
            out = _model_call(run, partial(model, images), "the tiles")
            tile_probs.append(_softmax64(out.logits))
            # Mean received attention mass per cell: 1 is uniform within the tile.
            pooled = F.adaptive_avg_pool2d(out.attention_logits.float().unsqueeze(1), (k, k))
            tile_att.append(pooled[:, 0].cpu().numpy())
        yield from run.report("tiles", stop, n)

    probs_tiles = np.concatenate(tile_probs)  # (n, C)
    att_tiles = np.concatenate(tile_att)  # (n, k, k)
    probs = probs_tiles.mean(axis=0)
    probs = probs / probs.sum()
    predicted = int(np.argmax(probs))
    weighted = att_tiles * probs_tiles[:, predicted, None, None]

    rows, cols = plan.grid_shape
    n_classes = probs_tiles.shape[1]
    att_map = np.full((rows * k, cols * k), np.nan, dtype=np.float32)
    cell_probs = np.full((rows * k, cols * k, n_classes), np.nan, dtype=np.float64)
    rc = plan.grid_rc[chosen]
    for j, (r, c) in enumerate(rc.tolist()):
        att_map[r * k : (r + 1) * k, c * k : (c + 1) * k] = weighted[j]
        cell_probs[r * k : (r + 1) * k, c * k : (c + 1) * k] = probs_tiles[j]
    tile = plan.tile_l0
    geometry = GridGeometry((0.0, 0.0), (tile / k, tile / k), (tile / k, tile / k))
    names = run.checkpoint.class_names
    patch_list = [
        Patch(
            (float(rc[j, 1] * tile), float(rc[j, 0] * tile)),
            (tile, tile),
            float(weighted[j].mean()),
            dict(zip(names, probs_tiles[j].tolist(), strict=True)),
        )
        for j in range(n)
    ]
    yield from run.report("aggregate", 1, 1)
    return _Raw(
        probabilities=probs,
        attention=att_map,
        geometry=geometry,
        patches=patch_list,
        cell_probs=cell_probs,
        info={
            "downsample": ds,
            "patch_size": patch_size,
            "n_patches": n,
            "n_tissue_tiles": len(plan),
            "cells_per_tile": k,
            "slide_probability": "mean of tile probabilities",
        },
    )


_RUNNERS: dict[str, Callable[[_Run], Generator[Progress, None, _Raw]]] = {
    "sampling": _run_sampling,
    "mil": _run_mil,
    "image": _run_image,
}


# --------------------------------------------------------------------------- entry point


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def classify(
    slide: Slide | str | PathLike[str],
    checkpoint: LoadedCheckpoint | str | PathLike[str],
    *,
    device: str | torch.device = "auto",
    seed: int = 0,
    batch_size: int | None = None,
    n_patches: int | None = None,
    patch_size: int | None = None,
    top_k: int | None = 5,
    threshold: float = 0.5,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, ClassificationResult]:
    """Classify one slide; a generator that yields progress and returns the result.

    Parameters
    ----------
    slide
        An open :class:`~napari_histattn.io.slide.Slide` (left open), or a path
        (opened and closed here).
    checkpoint
        A :class:`~napari_histattn.models.checkpoint.LoadedCheckpoint` (its model
        is moved to the device used) or a checkpoint path (loaded safely).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` or ``"mps"``; see the
        module docstring for the fall-backs.
    seed
        Seed of attention sampling's draws (other families are deterministic).
    batch_size
        Patches or tiles per model call; default by family
        (:data:`DEFAULT_BATCH_SIZE`). Halved automatically on out-of-memory.
    n_patches
        Attention sampling: patches drawn (default: the model's). A-MIL and the
        attention CNN: at most this many tissue tiles, evenly spaced (default: all).
    patch_size
        Patch (tile) side in model pixels; default from the checkpoint.
    top_k
        Regions kept (None: all).
    threshold
        Regions are the connected cells whose percentile-normalised attention is
        at least this (0 to 1).
    cancel
        When set, the run stops at its next progress report by raising
        :class:`~napari_histattn.inference.errors.Cancelled`.

    Yields
    ------
    Progress
        One per batch; stages ``"device"`` (messages), ``"low-res"``, ``"sample"``,
        ``"patches"`` (attention sampling), ``"tissue"``, ``"encode"`` (A-MIL),
        ``"tiles"`` (attention CNN), ``"aggregate"`` and ``"regions"``.

    Returns
    -------
    ClassificationResult

    Raises
    ------
    SlideError
        The slide cannot be opened or read; :class:`NoTissueError` when no tissue
        is found; :class:`SlideTooSmallError` when the slide is smaller than one patch.
    CheckpointError
        The checkpoint cannot be loaded; :class:`UnsupportedModelError` when its
        model family has no inference path.
    Cancelled
        ``cancel`` was set.
    HistattnError
        Other failures (a model that rejects its input, out of memory on the CPU).
    """
    started = time.perf_counter()
    opened: Slide | None = None
    try:
        if isinstance(slide, Slide):
            the_slide = slide
        else:
            the_slide = opened = open_slide(slide)
        torch_device, messages = select_device(device)
        if isinstance(checkpoint, LoadedCheckpoint):
            ckpt = checkpoint
        else:
            ckpt = load_checkpoint(checkpoint, device="cpu")
        family = FAMILY_OF_MODEL.get(ckpt.model_name)
        if family is None or family not in _RUNNERS:
            raise UnsupportedModelError(ckpt.path, ckpt.model_name, list(FAMILY_OF_MODEL))
        if batch_size is not None and batch_size < 1:
            raise HistattnError(f"batch_size must be at least 1, got {batch_size}")
        initial_batch = int(batch_size or DEFAULT_BATCH_SIZE[family])
        run = _Run(
            slide=the_slide,
            checkpoint=ckpt,
            family=family,
            device=torch_device,
            batch_size=initial_batch,
            seed=int(seed),
            n_patches=n_patches,
            patch_size=patch_size,
            cancel=cancel,
            messages=list(messages),
        )
        for message in messages:
            yield from run.report("device", 0, None, message)
        ckpt.model.to(run.device).eval()

        while True:
            try:
                raw = yield from _RUNNERS[family](run)
                break
            except _OOM_ERRORS as exc:
                _free(run.device)
                if run.batch_size > 1:
                    run.batch_size = max(1, run.batch_size // 2)
                    message = (
                        f"{run.device} ran out of memory; retrying with batch size {run.batch_size}"
                    )
                elif run.device.type != "cpu":
                    message = (
                        f"{run.device} ran out of memory at batch size 1; falling back to the CPU"
                    )
                    run.device = torch.device("cpu")
                    run.batch_size = initial_batch
                    ckpt.model.to(run.device)
                else:
                    raise HistattnError(
                        f"out of memory on the CPU even with batch size 1 while classifying "
                        f"{the_slide.path}: {exc}"
                    ) from exc
                run.messages.append(message)
                yield from run.report("device", 0, None, message)

        result = _assemble(run, raw, top_k=top_k, threshold=threshold, device_requested=device)
        yield from run.report("regions", 1, 1)
        result.provenance["timings_s"] = {**run.timings, "wall": time.perf_counter() - started}
        return result
    finally:
        if opened is not None:
            opened.close()


def _assemble(
    run: _Run,
    raw: _Raw,
    *,
    top_k: int | None,
    threshold: float,
    device_requested: str | torch.device,
) -> ClassificationResult:
    slide, ckpt = run.slide, run.checkpoint
    ds = float(raw.info["downsample"])
    mpp = slide.mpp_xy
    provenance: dict[str, Any] = {
        "package": "napari-histattn",
        "package_version": __version__,
        "torch_version": torch.__version__,
        "model_name": ckpt.model_name,
        "family": run.family,
        "checkpoint_path": str(ckpt.path),
        "checkpoint_sha256": ckpt.sha256,
        "class_names": list(ckpt.class_names),
        "seed": run.seed,
        "device": str(run.device),
        "device_requested": str(device_requested),
        "batch_size": run.batch_size,
        "slide_path": str(slide.path),
        "slide_quickhash": slide.quickhash,
        "slide_size_l0_wh": list(slide.level_dimensions[0]),
        "slide_mpp_xy": None if mpp is None else [float(mpp[0]), float(mpp[1])],
        "mpp_used_xy": None if mpp is None else [float(mpp[0]) * ds, float(mpp[1]) * ds],
        "downsample_used": ds,
        "level_used": int(slide.best_level_for_downsample(ds)),
        **{k: v for k, v in raw.info.items() if k != "downsample"},
        "threshold": float(threshold),
        "top_k": top_k,
        "messages": list(run.messages),
        "timings_s": dict(run.timings),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    probs = np.asarray(raw.probabilities, dtype=np.float64)
    if not np.all(np.isfinite(probs)) or not math.isclose(float(probs.sum()), 1.0, abs_tol=1e-6):
        raise HistattnError(
            f"model {ckpt.model_name!r} ({ckpt.path}) gave invalid probabilities {probs.tolist()}"
        )
    result = ClassificationResult(
        class_names=list(ckpt.class_names),
        probabilities=probs,
        attention=raw.attention,
        geometry=raw.geometry,
        patches=raw.patches,
        regions=[],
        provenance=provenance,
        family=run.family,
        samples=raw.samples,
        cell_probs=raw.cell_probs,
        threshold=float(threshold),
        top_k=top_k,
    )
    result.regions = make_regions(result, threshold, top_k)
    return result
