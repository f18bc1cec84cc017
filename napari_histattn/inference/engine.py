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
The engine holds no per-family code. A checkpoint's ``model_name`` picks its
:class:`~napari_histattn.models.family.Family` (the plug-in declared in the
family's module: ``models/amil/``, ``models/dafl.py``,
``models/attention_sampling/``); its ``run(ctx)`` reads what it needs through
the :class:`~napari_histattn.inference.runtime.SlideRun` it is given and returns
a :class:`~napari_histattn.models.family.SlideOutput`. The engine shares the
rest: device choice, out-of-memory halving, cancellation, provenance, regions
and assembling the :class:`~napari_histattn.inference.result.ClassificationResult`.
Each family's docstring (``run_on_slide``) says what its stages compute.

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
import os
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from napari_histattn import __version__
from napari_histattn.errors import HistattnError
from napari_histattn.inference.devices import device_batch_size, free_memory, select_device
from napari_histattn.inference.domain import domain_warnings, training_domain
from napari_histattn.inference.errors import ModelRunError, UnsupportedModelError
from napari_histattn.inference.explain import parse_methods
from napari_histattn.inference.integrity import (
    UNREADABLE_LIMIT,
    failed_rects_l0,
    glass_warning,
    unreadable_area,
    unreadable_mask,
)
from napari_histattn.inference.result import ClassificationResult, make_regions
from napari_histattn.inference.runtime import OOM_ERRORS, SlideRun, given_params
from napari_histattn.inference.threads import run_threads, torch_threads
from napari_histattn.io.limits import MPP_RANGE, check_mpp_override
from napari_histattn.io.regions import GridGeometry, PatchTable, grid_patches
from napari_histattn.io.slide import Slide, open_slide
from napari_histattn.models.checkpoint import LoadedCheckpoint
from napari_histattn.models.checkpoint import load as load_checkpoint
from napari_histattn.models.family import (
    SlideOutput,
    family_for_model,
    list_families,
    runnable_models,
)
from napari_histattn.progress import Progress
from napari_histattn.stats import apply_temperature, probability_spread

__all__ = ["FEATURES_ENV_VAR", "classify", "device_batch_size", "select_device"]


#: Folders (``os.pathsep``-separated) where cached slide features are looked for.
FEATURES_ENV_VAR = "HISTATTN_FEATURES"


def classify(
    slide: Slide | str | PathLike[str],
    checkpoint: LoadedCheckpoint | str | PathLike[str],
    *,
    device: str | torch.device = "auto",
    seed: int | None = None,
    batch_size: int | None = None,
    n_patches: int | None = None,
    patch_size: int | None = None,
    top_k: int | None = 5,
    threshold: float = 0.5,
    cancel: threading.Event | None = None,
    params: Mapping[str, Any] | None = None,
    features_dir: str | PathLike[str] | None = None,
    encoder_weights: str | PathLike[str] | None = None,
    allow_upsample: bool = False,
    threads: int | None = None,
    amp: bool = False,
    slide_mpp: float | None = None,
    explain: str | Sequence[str] | None = None,
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
        Seed of attention sampling's draws (default 0; other families are deterministic).
    batch_size
        Patches or tiles per model call; default: the family's
        ``default_batch_size``. Halved automatically on out-of-memory.
    n_patches
        Attention sampling: patches drawn (default: the model's). A-MIL and the
        attention CNN: at most this many tissue tiles, evenly spaced (default: all).
    patch_size
        Patch (tile) side in model pixels; default from the checkpoint.
    params
        Further run parameters by name, as the family declares them
        (:attr:`~napari_histattn.models.family.Family.params`); ``seed``,
        ``n_patches`` and ``patch_size`` given as keywords take precedence.
    features_dir
        A checkpoint trained on cached features (``histattn features``) reads this
        slide's features from ``<features_dir>/<slide stem>.h5`` when that file was
        made from this slide file with the checkpoint's encoder and weights (also
        looked for in the folders of ``$HISTATTN_FEATURES`` and in ``features/``
        beside the slide, so the widget finds them too); otherwise the encoder runs
        here.
    encoder_weights
        The weights of that encoder (a ``.safetensors`` file or a folder), checked
        against the SHA-256 the checkpoint records; default: looked for as
        :func:`~napari_histattn.models.encoders.create_encoder` does.
    top_k
        Regions kept (None: all).
    threshold
        Regions are the connected cells whose percentile-normalised attention is
        at least this (0 to 1).
    allow_upsample
        Classify a slide whose pixels are more than
        :data:`~napari_histattn.inference.patches.MAX_UPSAMPLE` times coarser than the
        model's (refused by default; a smaller upsampling is noted in the messages).
    threads
        torch's CPU threads for this run (restored after it); default: the usable
        cores less those other processes are busy on, or ``$HISTATTN_TORCH_THREADS``
        (:func:`~napari_histattn.inference.threads.torch_threads`).
    amp
        Run patch encoders under bfloat16 autocast (A-MIL; for CUDA's tensor cores:
        faster, probabilities within about 1e-2 of float32). Off by default.
    slide_mpp
        The slide's level-0 micrometres per pixel, for a file that records none (or
        records a wrong one: this value wins, and provenance says it was given). Without
        it, an image-level model reads such an image at its own resolution as if at the
        model's training magnification (and says so); other models refuse it.
    explain
        Post-hoc explanations to compute beside the attention (``"gradcam"``,
        ``"guided_gradcam"``, ``"saliency"``, or several, comma-separated):
        :attr:`ClassificationResult.explanations`, maps on the attention's grid
        (:mod:`~napari_histattn.inference.explain`). Families that cannot refuse them.
    cancel
        When set, the run stops at its next progress report by raising
        :class:`~napari_histattn.inference.errors.Cancelled`.

    Yields
    ------
    Progress
        One per batch; stages ``"device"`` (messages), the family's own (for
        example ``"low-res"``, ``"sample"``, ``"patches"`` for attention sampling,
        ``"tissue"``, ``"encode"`` for A-MIL, ``"tiles"`` for the attention CNN),
        ``"aggregate"`` and ``"regions"``.

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
        if ckpt.integrity_note:
            messages.append(ckpt.integrity_note)
        family = family_for_model(ckpt.model_name)
        if family is None:
            raise UnsupportedModelError(ckpt.path, ckpt.model_name, runnable_models())
        if batch_size is not None and batch_size < 1:
            raise HistattnError(f"batch_size must be at least 1, got {batch_size}")
        initial_batch = int(
            batch_size or device_batch_size(family.default_batch_size, torch_device)
        )
        n_threads, threads_why = torch_threads(threads)
        unknown = sorted(set(params or {}) - {p.name for p in family.params})
        if unknown:
            takes = ", ".join(p.name for p in family.params) or "none"
            raise HistattnError(
                f"model family {family.name!r} ({ckpt.model_name}) has no run parameter "
                f"{', '.join(map(repr, unknown))}; it takes: {takes}"
            )
        methods = parse_methods(explain)
        refusal = family.cannot_explain(ckpt.config, ckpt.preprocessing) if methods else None
        if refusal is not None:
            raise HistattnError(
                f"{refusal} ({ckpt.model_name}, {Path(ckpt.path).name}); families that "
                "explain: "
                + ", ".join(
                    f"{f.name!r} ({', '.join(f.models)})" for f in list_families() if f.explains
                )
            )
        given = given_params(params, seed=seed, n_patches=n_patches, patch_size=patch_size)
        ignored: list[str] = []
        for name, value in list(given.items()):
            declared = family.param(name)
            if declared is None or value is None:
                continue
            if not declared.applies_to(ckpt.config, ckpt.preprocessing):
                messages.append(
                    f"run parameter {name!r} does not apply to this checkpoint: ignored"
                )
                del given[name]
                continue
            given[name] = declared.check(value)
        run = SlideRun(
            slide=the_slide,
            checkpoint=ckpt,
            family=family,
            device=torch_device,
            batch_size=initial_batch,
            seed=int(given.get("seed", 0)),
            params=given,
            cancel=cancel,
            messages=list(messages),
            features_dirs=_features_dirs(features_dir, the_slide.path),
            encoder_weights=None if encoder_weights is None else Path(encoder_weights),
            allow_upsample=bool(allow_upsample),
            slide_mpp=_checked_mpp(slide_mpp),
            explain=methods,
            threads=n_threads,
            amp=bool(amp),
        )
        if "busy" in threads_why:  # a slower run than usual: say why
            run.note(f"torch runs on {n_threads} thread(s): {threads_why}")
        for name in ignored:
            run.note(f"run parameter {name!r} does not apply to this checkpoint: ignored")
        for message in messages:
            yield from run.report("device", 0, None, message)
        ckpt.model.to(run.device).eval()

        with run_threads(run.threads):
            raw = yield from _run_family(run)
        result = _assemble(run, raw, top_k=top_k, threshold=threshold, device_requested=device)
        yield from run.report("regions", 1, 1)
        result.provenance["timings_s"] = {**run.timings, "wall": time.perf_counter() - started}
        result.provenance["torch_threads_why"] = threads_why
        return result
    finally:
        if opened is not None:
            opened.close()


def _checked_mpp(mpp: float | None) -> float | None:
    """A caller's slide um/px: a number within a microscope's range, else HistattnError."""
    if mpp is None:
        return None
    try:
        return check_mpp_override((mpp, mpp))[0]
    except ValueError:
        low, high = MPP_RANGE
        raise HistattnError(
            f"the slide's um/px must be a number within {low:g}-{high:g}, got {mpp!r}"
        ) from None


def _run_family(run: SlideRun) -> Generator[Progress, None, SlideOutput]:
    """The family's runner, retried with half the batch on out-of-memory (then on the CPU)."""
    ckpt, the_slide = run.checkpoint, run.slide
    while True:
        try:
            return (yield from run.family.run(run))
        except (HistattnError, GeneratorExit):
            raise
        except OOM_ERRORS as exc:
            free_memory(run.device)
            if run.batch_size > 1:
                run.batch_size = max(1, run.batch_size // 2)
                message = (
                    f"{run.device} ran out of memory; retrying with batch size {run.batch_size}"
                )
            elif run.device.type != "cpu":
                message = f"{run.device} ran out of memory at batch size 1; falling back to the CPU"
                run.device = torch.device("cpu")
                run.batch_size = device_batch_size(run.family.default_batch_size, run.device)
                ckpt.model.to(run.device)
            else:
                raise HistattnError(
                    f"out of memory on the CPU even with batch size 1 while classifying "
                    f"{the_slide.path}: {exc}"
                ) from exc
            run.messages.append(message)
            yield from run.report("device", 0, None, message)
        except Exception as exc:  # a bug or a bad input deep in the model: say where
            raise ModelRunError(ckpt, run.stage, exc) from exc


def _features_dirs(given: str | PathLike[str] | None, slide_path: Path) -> list[Path]:
    """Where a slide's cached features are looked for: the folder given, the folders of
    ``$HISTATTN_FEATURES``, then ``features/`` beside the slide."""
    folders = [] if given is None else [Path(given)]
    env = os.environ.get(FEATURES_ENV_VAR, "")
    folders += [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    return [*folders, slide_path.parent / "features"]


def _assemble(
    run: SlideRun,
    raw: SlideOutput,
    *,
    top_k: int | None,
    threshold: float,
    device_requested: str | torch.device,
) -> ClassificationResult:
    slide, ckpt = run.slide, run.checkpoint
    ds = float(raw.info["downsample"])
    mpp = run.mpp_xy
    provenance: dict[str, Any] = {
        "package": "napari-histattn",
        "package_version": __version__,
        "torch_version": torch.__version__,
        "model_name": ckpt.model_name,
        "family": run.family.name,
        "checkpoint_path": str(ckpt.path),
        "checkpoint_sha256": ckpt.sha256,
        "class_names": list(ckpt.class_names),
        "seed": run.seed,
        "device": str(run.device),
        "device_requested": str(device_requested),
        "batch_size": run.batch_size,
        "torch_threads": run.threads,
        "amp": run.amp,
        "slide_path": str(slide.path),
        "slide_quickhash": slide.quickhash,
        "slide_size_l0_wh": list(slide.level_dimensions[0]),
        "slide_mpp_xy": None if mpp is None else [float(mpp[0]), float(mpp[1])],
        "slide_mpp_source": "given"
        if run.slide_mpp is not None
        else getattr(slide, "mpp_source", None),
        "mpp_used_xy": None if mpp is None else [float(mpp[0]) * ds, float(mpp[1]) * ds],
        "mpp_assumed": run.assumed_mpp,
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
    temperature = ckpt.temperature
    if temperature != 1.0:  # calibrated on validation data in training
        provenance["probabilities_uncalibrated"] = [float(v) for v in probs]
        probs = apply_temperature(probs, temperature)
    provenance["calibration_temperature"] = temperature
    rounds = provenance.get("round_probabilities")
    if rounds is not None:  # a sampling family's rounds, on the scale of the call shown
        provenance["probability_spread"] = probability_spread(
            apply_temperature(np.asarray(rounds), temperature)
        )
    side = float(raw.cell_l0)
    geometry = GridGeometry((0.0, 0.0), (side, side), (side, side))
    names = list(ckpt.class_names)
    if raw.patches is None:
        patches = grid_patches(
            raw.attention, geometry, class_names=names, cell_probs=raw.cell_probs
        )
    else:
        xy_l0, wh_l0, attention, patch_probs = raw.patches
        patches = PatchTable(xy_l0, wh_l0, attention, patch_probs, names)
    unreadable = _account_unreadable(slide, patches, raw, provenance)
    glass = glass_warning(slide.thumbnail(256))
    provenance["glass_warning"] = glass
    domain = training_domain(ckpt.metadata)
    provenance["training_domain"] = domain.as_dict()
    provenance["domain_warnings"] = domain_warnings(
        domain, slide, slide_mpp=None if mpp is None else float(mpp[0]), ood=raw.info.get("ood")
    )
    result = ClassificationResult(
        class_names=names,
        probabilities=probs,
        attention=raw.attention,
        geometry=geometry,
        patches=patches,
        regions=[],
        provenance=provenance,
        family=run.family.name,
        samples=raw.samples,
        cell_probs=raw.cell_probs,
        threshold=float(threshold),
        top_k=top_k,
        explanations=dict(raw.explanations),
        attention_maps=dict(raw.attention_maps),
    )
    result.regions = make_regions(result, threshold, top_k)
    result.unreadable = unreadable
    return result


def _account_unreadable(
    slide: Slide, patches: PatchTable, raw: SlideOutput, provenance: dict[str, Any]
) -> NDArray[np.bool_] | None:
    """Record what share of the patches (and sampled draws) came from undecodable tiles;
    the per-patch mask, or None when every tile decoded."""
    failed = failed_rects_l0(slide)
    provenance["unreadable_tiles"] = int(failed.shape[0])
    if not failed.shape[0]:
        provenance["unreadable_fraction"] = 0.0
        return None
    mask = unreadable_mask(patches.l0_xy, patches.size_l0_wh, failed)
    shares = [float(mask.mean()) if mask.size else 0.0]
    shares.append(unreadable_area(failed, slide.level_dimensions[0]))
    samples = raw.samples
    if samples is not None and len(samples):
        size = np.broadcast_to(np.asarray(samples.patch_l0_wh, dtype=np.float64), (len(samples), 2))
        drawn = unreadable_mask(samples.origins_l0_xy, size, failed)
        counts = samples.counts.astype(np.float64)
        shares.append(float(counts[drawn].sum() / max(1.0, counts.sum())))
    provenance["unreadable_fraction"] = max(shares)
    provenance["unreadable_limit"] = UNREADABLE_LIMIT
    return mask
