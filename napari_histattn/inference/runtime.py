"""What a model family sees of a slide while it runs: :class:`SlideRun`.

A family's ``run(ctx)`` (see :mod:`napari_histattn.models.family`) gets one
:class:`SlideRun` and reaches the slide, the checkpoint's preprocessing, the
device and the progress stream only through it. Tiling, tissue detection and
patch reading are those of training (:mod:`napari_histattn.inference.patches`),
so a model sees at inference the inputs it was trained on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from napari_histattn.errors import HistattnError
from napari_histattn.inference.errors import Cancelled, NoTissueError, SlideTooSmallError
from napari_histattn.inference.lowres import LowResView
from napari_histattn.inference.patches import (
    MAX_UPSAMPLE,
    SlidePatchSource,
    TilePlan,
    TissueSettings,
    plan_tiles,
    read_tiles,
    resize_square,
    rgb_to_tensor,
    target_downsample,
)
from napari_histattn.io.slide import Slide
from napari_histattn.models.checkpoint import LoadedCheckpoint
from napari_histattn.models.family import Family, subset
from napari_histattn.progress import Progress

__all__ = ["MIN_TILE_TISSUE", "OOM_ERRORS", "SlideRun"]

#: A slide whose most tissue-covered tile holds less tissue than this has "no tissue".
MIN_TILE_TISSUE = 0.01

OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {
        getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
        torch.cuda.OutOfMemoryError,
        MemoryError,  # the CPU's: numpy or Python running out while building a batch
    }
)


@dataclass
class SlideRun:
    """One classification's state, and the slide services a family runner uses.

    Attributes
    ----------
    slide, checkpoint, family
        What runs on what.
    device, batch_size
        Where, and patches per model call (the engine halves it on out-of-memory).
    seed
        Seed of any random draws (``torch.Generator().manual_seed(seed)``).
    params
        Run parameters given by the caller (``n_patches``, ``patch_size``, and any
        the family declares); :meth:`param` falls back to the family's defaults.
    cancel
        Set to stop at the next progress report.
    features_dirs, encoder_weights
        Where cached features of this slide may be (``histattn features``), and the
        weights of the encoder a features-trained checkpoint was trained on.
    threads, amp
        torch's CPU threads for this run (:mod:`~napari_histattn.inference.threads`),
        and whether patch encoders run under bfloat16 autocast (:meth:`encoder_precision`).
    timings, messages
        Seconds per stage, and notes for the user (kept in provenance).
    """

    slide: Slide
    checkpoint: LoadedCheckpoint
    family: Family
    device: torch.device
    batch_size: int
    seed: int
    params: dict[str, Any]
    cancel: threading.Event | None
    features_dirs: list[Path] = field(default_factory=list)
    encoder_weights: Path | None = None
    threads: int = 1
    amp: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    _mark: float = field(default_factory=time.perf_counter)
    #: The stage that reported progress last (named in errors from inside the model).
    stage: str = "start"
    #: Upsample a slide whose pixels are coarser than the model's beyond MAX_UPSAMPLE.
    allow_upsample: bool = False
    #: The slide's level-0 um/px as the caller gives it (overrides the file's), and the
    #: training resolution an image without one was read as (:meth:`downsample`).
    slide_mpp: float | None = None
    assumed_mpp: float | None = None
    #: Post-hoc explanations asked for (:data:`~napari_histattn.inference.explain.METHODS`).
    explain: tuple[str, ...] = ()
    # Tile plans and the feature encoder survive an out-of-memory retry.
    plans: dict[tuple[int, float], TilePlan] = field(default_factory=dict)
    _encoder: Any = None

    @property
    def model(self) -> Any:
        return self.checkpoint.model

    @property
    def pre(self) -> dict[str, Any]:
        return self.checkpoint.preprocessing

    @property
    def class_names(self) -> list[str]:
        return list(self.checkpoint.class_names)

    @property
    def slide_size_l0_wh(self) -> tuple[int, int]:
        w0, h0 = self.slide.level_dimensions[0]
        return int(w0), int(h0)

    def param(self, name: str) -> Any:
        """Run parameter ``name``: the caller's value, else the family's default for
        this checkpoint (``None`` when neither gives one)."""
        if self.params.get(name) is not None:
            return self.params[name]
        declared = self.family.param(name)
        if declared is None:
            return None
        return declared.value_from(self.checkpoint.config, self.pre)

    # -- progress and cancellation

    def report(
        self, stage: str, done: int, total: int | None, message: str = ""
    ) -> Generator[Progress, None, None]:
        """Yield one progress report; raise :class:`Cancelled` if cancel was set meanwhile.

        Time since the previous report is charged to ``stage`` (the consumer's
        time between reports is not).
        """
        now = time.perf_counter()
        self.stage = stage
        self.timings[stage] = self.timings.get(stage, 0.0) + (now - self._mark)
        yield Progress(stage, done, total, message)
        self._mark = time.perf_counter()
        self.check_cancel(stage, done, total)

    def check_cancel(self, stage: str, done: int = 0, total: int | None = None) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(stage, done, total)

    def note(self, message: str) -> None:
        """Tell the user something about this run (kept in ``provenance["messages"]``)."""
        self.messages.append(message)

    # -- preprocessing read from the checkpoint

    @property
    def mpp_xy(self) -> tuple[float, float] | None:
        """The slide's level-0 um/px: the caller's (``slide_mpp``), else the file's."""
        if self.slide_mpp is not None:
            return (float(self.slide_mpp), float(self.slide_mpp))
        return self.slide.mpp_xy

    def downsample(self) -> float:
        """Level-0 pixels per model pixel, from the checkpoint's preprocessing.

        An image-level model (``input == "image"``) on an image that records no pixel
        size (a BreakHis PNG, a Kather tile) reads it at its own resolution, as if it
        were at the model's training magnification, and says so; other models need the
        slide's um/px."""
        pre = self.pre
        target = pre.get("target_mpp")
        explicit = pre.get("level") is not None or pre.get("downsample") is not None
        image_level = self.family.input == "image"
        if target is not None and self.mpp_xy is None and not explicit and image_level:
            self.assumed_mpp = float(target)
            note = (
                f"{Path(self.slide.path).name} records no pixel size: read as if at the "
                f"model's training resolution, {float(target):g} um/px; give the image's "
                "um/px if it is not"
            )
            if note not in self.messages:
                self.note(note)
            return 1.0
        ds = target_downsample(
            self.slide,
            target_mpp=target,
            level=pre.get("level"),
            downsample=pre.get("downsample"),
            max_upsample=None if self.allow_upsample else MAX_UPSAMPLE,
            mpp_xy=self.mpp_xy,
        )
        if ds < 1.0:
            note = f"the slide is upsampled {1 / ds:.1f}x to the model's resolution (its pixels are coarser)"
            if note not in self.messages:
                self.note(note)
        return ds

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

    def explain_tiles(
        self, images: torch.Tensor, classes: list[int], layer: Any, model: Any = None
    ) -> dict[tuple[str, int], torch.Tensor]:
        """The asked-for explanations of the evidence for each class of ``classes`` on a batch
        of tiles (:func:`~napari_histattn.inference.explain.explain`), of the model or of
        ``model`` (an image classifier made from it, such as a bag model's tile classifier)."""
        from napari_histattn.inference.explain import explain

        return explain(self.model if model is None else model, images, classes, self.explain,
                       layer=layer)  # fmt: skip

    def whole_image(self, size: int, max_side: int) -> torch.Tensor:
        """The whole slide, resized to ``size`` x ``size`` as image training resizes a file
        (PIL, bilinear), normalised: ``(1, 3, size, size)`` on the device. A slide larger
        than ``max_side`` on a side is refused: it is not one image."""
        w0, h0 = self.slide_size_l0_wh
        if max(w0, h0) > max_side:
            raise HistattnError(
                f"{Path(self.slide.path).name} is {w0}x{h0} px: checkpoint "
                f"{Path(self.checkpoint.path).name} was trained on whole images resized to "
                f"{size}x{size} px and classifies one image of at most {max_side} px a side; "
                "export the region to classify as an image, or use a model trained on tiles"
            )
        rgb = np.asarray(self.slide.read_region((0, 0), 0, (w0, h0)))[..., :3]
        resized = resize_square(rgb, size)
        mean, std = self.mean_std()
        return rgb_to_tensor(resized[None], mean, std).to(self.device)

    def check_size(self, side_l0: float, what: str) -> None:
        """Refuse a slide smaller than ``side_l0`` level-0 pixels (``what``: "one patch")."""
        w0, h0 = self.slide_size_l0_wh
        if min(w0, h0) < side_l0:
            raise SlideTooSmallError(
                self.slide.path,
                f"the slide is {w0}x{h0} px, smaller than {what} of {side_l0:g} level-0 px "
                f"that model {self.checkpoint.model_name!r} needs",
            )

    def level_for(self, downsample: float) -> int:
        """The pyramid level a read at ``downsample`` comes from."""
        return int(self.slide.best_level_for_downsample(downsample))

    def encoder_precision(self) -> Any:
        """The context a patch encoder runs in: bfloat16 autocast when ``amp`` is set
        (tensor cores on CUDA; attention, pooling and heads stay in float32 outside it),
        else nothing. Outputs made inside are cast back with ``.float()`` by the caller."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    # -- slide access

    def plan(self, patch_size: int, downsample: float) -> Generator[Progress, None, TilePlan]:
        """The tissue tiles of ``patch_size`` model pixels at ``downsample`` (stage ``tissue``)."""
        self.check_size(patch_size * downsample, "one tile")
        key = (patch_size, downsample)
        if key not in self.plans:
            yield from self.report("tissue", 0, 1)
            plan = plan_tiles(self.slide, patch_size, downsample, self.tissue_settings())
            best = float(plan.tissue_fraction.max()) if len(plan) else 0.0
            if best < MIN_TILE_TISSUE:
                raise NoTissueError(
                    self.slide.path,
                    f"no tissue found: at most {best:.1%} of any {plan.patch_size} px tile at "
                    f"downsample {plan.downsample:g} is tissue",
                )
            self.plans[key] = plan
        yield from self.report("tissue", 1, 1)
        return self.plans[key]

    def read_tiles(self, plan: TilePlan, indices: NDArray[np.int64]) -> torch.Tensor:
        """Tiles ``indices`` of ``plan`` as a normalised ``(n, 3, p, p)`` tensor on the device."""
        return self._to_model(read_tiles(self.slide, plan, indices))

    def _to_model(self, pixels: NDArray[np.uint8]) -> torch.Tensor:
        mean, std = self.mean_std()
        # Channels-last: oneDNN's convolutions on it are 1.6x faster for our encoders.
        tiles = rgb_to_tensor(pixels, mean, std, channels_last=True).to(self.device)
        return tiles.contiguous(memory_format=torch.channels_last)  # a no-op on the CPU

    def tile_batches(
        self, plan: TilePlan, indices: NDArray[np.int64]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(stop, tiles)`` for each batch of ``batch_size`` of ``indices`` in order: tiles
        ``indices[start:stop]`` of ``plan`` as :meth:`read_tiles` gives them, the next batch
        read in a thread while the caller encodes this one (OpenSlide's decoding and
        numpy release the GIL; at most two batches of pixels are held). Measured with the
        demo A-MIL on 2 cores: 26.4 -> 20.2 s on a 20k^2 slide, same peak memory."""
        from concurrent.futures import ThreadPoolExecutor

        n, size = int(indices.size), self.batch_size
        starts = list(range(0, n, size))
        if not starts:
            return
        # The thread reads uint8 pixels only; the float tensors are made here, so that the
        # large buffers are allocated and freed by one thread.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="histattn-tiles") as pool:
            ahead = pool.submit(read_tiles, self.slide, plan, indices[0:size])
            for start in starts:
                pixels = ahead.result()
                if start + size < n:
                    ahead = pool.submit(
                        read_tiles, self.slide, plan, indices[start + size : start + 2 * size]
                    )
                yield min(start + size, n), self._to_model(pixels)

    def low_res_tiles(self, downsample: float, tile: int, halo: int) -> LowResView:
        """The slide at ``downsample`` as normalised tiles with ``halo`` px of context, only
        where a thumbnail shows tissue (:class:`~napari_histattn.inference.lowres.LowResView`).

        Raises :class:`NoTissueError` when no tile is kept.
        """
        mean, std = self.mean_std()
        view = LowResView(
            self.slide,
            downsample,
            tile=tile,
            halo=halo,
            tissue=self.tissue_settings(),
            mean=mean,
            std=std,
            device=self.device,
        )
        if len(view) == 0:
            raise self.no_tissue(view.size_hw, downsample)
        return view

    def no_tissue(self, size_hw: tuple[int, int], downsample: float) -> NoTissueError:
        """The error of a view of ``size_hw`` that shows no tissue."""
        h, w = size_hw
        return NoTissueError(
            self.slide.path, f"no tissue found on the {w}x{h} px view at downsample {downsample:g}"
        )

    def patch_source(self, downsample: float, size_wh: tuple[int, int]) -> SlidePatchSource:
        """Patches of the slide at ``downsample`` in a ``size_wh`` high-resolution frame."""
        mean, std = self.mean_std()
        return SlidePatchSource(self.slide, downsample, size_wh=size_wh, mean=mean, std=std)

    def call(self, fn: Callable[[], Any], what: str) -> Any:
        """Run ``fn()``; a model that rejects its input becomes our error naming ``what``."""
        try:
            return fn()
        except OOM_ERRORS:
            raise
        except (ValueError, RuntimeError) as exc:
            raise HistattnError(
                f"model {self.checkpoint.model_name!r} ({self.checkpoint.path}) failed on "
                f"{what}: {exc}"
            ) from exc

    # -- encoded tiles (checkpoints trained on cached features)

    def encoded_tiles(
        self, described: dict[str, Any], cap: int | None, sink: Callable[[torch.Tensor], None]
    ) -> Generator[Progress, None, TilePlan]:
        """Tissue tiles and their features from the encoder ``described`` (a checkpoint's
        ``feature_encoder``): read from a matching cached feature file when there is one
        (stage ``features``), else read and encoded here (stages ``tissue``, ``encode``).
        At most ``cap`` tiles, evenly spaced (``None`` or 0: all). The features go to
        ``sink`` ``batch_size`` tiles at a time, in the order of the returned plan, so that
        a bag of any size is never held whole."""
        from napari_histattn.inference.features import (
            feature_chunks,
            feature_path,
            is_done,
            read_features,
        )

        settings = self.tissue_settings()
        for folder in self.features_dirs:
            path = feature_path(folder, self.slide.path)
            if is_done(path, self.slide, described, settings):
                cached = read_features(path, features=False)
                plan = TilePlan(
                    cached.coords_l0_xy,
                    cached.grid_rc,
                    cached.grid_shape,
                    cached.patch_size,
                    cached.downsample,
                    np.ones(len(cached), dtype=np.float64),
                )
                rows = subset(len(cached), cap)
                self.note(f"features read from {path}")
                done = 0
                for chunk in feature_chunks(path, rows, self.batch_size):
                    sink(torch.from_numpy(chunk).to(self.device))
                    done += len(chunk)
                    yield from self.report("features", done, len(rows), "cached")
                return _subplan(plan, rows)
        encoder = self._feature_encoder(described)
        pre = described["preprocessing"]
        mpp = pre.get("target_mpp") if self.mpp_xy is not None else None
        ds = target_downsample(
            self.slide,
            target_mpp=mpp,
            max_upsample=None if self.allow_upsample else MAX_UPSAMPLE,
            mpp_xy=self.mpp_xy,
        )
        plan = yield from self.plan(int(pre["input_size"]), ds)
        plan = _subplan(plan, subset(len(plan), cap))
        for start in range(0, len(plan), self.batch_size):
            stop = min(start + self.batch_size, len(plan))
            pixels = read_tiles(self.slide, plan, np.arange(start, stop))
            with torch.inference_mode():
                x = rgb_to_tensor(pixels, pre["mean"], pre["std"], channels_last=True)
                x = x.to(self.device)
                x = x.contiguous(memory_format=torch.channels_last)  # as histattn features runs it
                with self.encoder_precision():
                    features = self.call(partial(encoder.module, x), "the tiles")
                sink(features.float())
            yield from self.report("encode", stop, len(plan))
        return plan

    def _feature_encoder(self, described: dict[str, Any]) -> Any:
        from napari_histattn.models.encoders import create_encoder

        if self._encoder is None:
            name, sha = described["name"], described.get("weights_sha256")
            if sha is None:
                encoder = create_encoder(
                    name, pretrained=False, seed=int(described.get("random_seed") or 0)
                )
            else:
                encoder = create_encoder(name, self.encoder_weights, pretrained=True)
                if encoder.weights_sha256 != sha:
                    raise HistattnError(
                        f"model {self.checkpoint.model_name!r} was trained on features of encoder "
                        f"{name!r} with weights {sha[:12]}..., but {encoder.weights_path} has "
                        f"SHA-256 {str(encoder.weights_sha256)[:12]}...: give those weights"
                    )
            self._encoder = encoder
        self._encoder.module.to(self.device).eval().to(memory_format=torch.channels_last)
        return self._encoder


def _subplan(plan: TilePlan, rows: NDArray[np.int64]) -> TilePlan:
    if len(rows) == len(plan):
        return plan
    return TilePlan(
        plan.l0_xy[rows],
        plan.grid_rc[rows],
        plan.grid_shape,
        plan.patch_size,
        plan.downsample,
        plan.tissue_fraction[rows],
    )


def _triple(value: Any) -> list[float]:
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return values * 3 if len(values) == 1 else values


def given_params(params: Mapping[str, Any] | None, **keywords: Any) -> dict[str, Any]:
    """The caller's parameters: ``params`` plus the engine keywords that are not ``None``."""
    out = dict(params or {})
    out.update({k: v for k, v in keywords.items() if v is not None})
    return out
