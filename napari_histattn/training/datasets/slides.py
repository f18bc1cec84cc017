"""Slide datasets: bags of tissue tiles (A-MIL) and low-resolution views plus patch sources (attention sampling)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from napari_histattn.inference.patches import (
    SlidePatchSource,
    TilePlan,
    TissueSettings,
    plan_tiles,
    read_tiles,
    read_view,
    target_downsample,
)
from napari_histattn.training.datasets.annotated import InstanceLabeller
from napari_histattn.training.datasets.layouts import DatasetError, LabelledData
from napari_histattn.training.transforms import (
    Augment,
    Normalise,
    sample_generator,
    to_float_tensor,
)


@dataclass(frozen=True)
class SlideOptions:
    """How slides become model inputs.

    Attributes
    ----------
    patch_size
        Side of the patches in output pixels.
    target_mpp, level, downsample
        The resolution of the patches: at most one of micrometres per pixel,
        a pyramid level, or level-0 pixels per pixel (none: level 0).
    tissue
        Tissue detection and tile filter (A-MIL bags).
    max_patches
        Most patches per A-MIL bag: training draws a new random subset each
        epoch, evaluation takes an evenly spaced one; None keeps every tissue
        tile (memory grows with the slide).
    downscale
        Attention sampling: high-resolution pixels per low-resolution pixel.
    """

    patch_size: int = 224
    target_mpp: float | None = None
    level: int | None = None
    downsample: float | None = None
    tissue: TissueSettings = field(default_factory=TissueSettings)
    max_patches: int | None = 512
    downscale: int = 8

    def preprocessing(self) -> dict[str, Any]:
        """The checkpoint's view of these options."""
        return {
            "patch_size": self.patch_size,
            "target_mpp": self.target_mpp,
            "level": self.level,
            "downsample": self.downsample,
            "downscale": self.downscale,
            "max_patches": self.max_patches,
            "tissue": vars(self.tissue),
        }


class _SlideCache:
    """Open slides, least recently used closed first (bounded file handles)."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._open: OrderedDict[Path, Any] = OrderedDict()

    def get(self, path: Path) -> Any:
        from napari_histattn.io.slide import open_slide

        slide = self._open.pop(path, None)
        if slide is None:
            slide = open_slide(path)
        self._open[path] = slide
        while len(self._open) > self.capacity:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return slide

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


class SlideBagDataset(Dataset[tuple[Tensor, int]]):
    """A-MIL bags: the tissue patches of each slide (or image), read lazily.

    Item ``(patches (n, 3, p, p), label)``, or ``(patches, instance_labels (n,),
    label)`` with a ``labeller``; ``positions`` puts each tile's grid (row, col)
    ``(n, 2)`` after the patches (HATNet). The tile plan of a slide is computed once (tissue
    on a thumbnail); each access reads only the patches of the bag (at most
    ``options.max_patches``). Augmentation is drawn per patch. ``labelled_only``
    keeps the annotated tiles only, and ``per_class`` at most that many of each
    annotation class (stage 1 of two-stage training).
    """

    def __init__(
        self,
        data: LabelledData,
        options: SlideOptions,
        augment: Augment | None = None,
        normalise: Normalise | None = None,
        seed: int = 0,
        labeller: InstanceLabeller | None = None,
        labelled_only: bool = False,
        per_class: int | None = None,
        positions: bool = False,
    ) -> None:
        if per_class is not None and (not labelled_only or per_class < 1):
            raise ValueError("per_class needs labelled_only and must be >= 1")
        self.data = data
        self.options = options
        self.labeller = labeller
        self.labelled_only = labelled_only
        self.per_class = per_class
        self.positions = positions
        self.augment = None if augment is None else replace(augment, per_instance=True)
        self.normalise = normalise or Normalise()
        self.seed = seed
        self.epoch = 0
        self._slides = _SlideCache()
        self._plans: dict[int, TilePlan] = {}

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self, index: int) -> TilePlan:
        """The tissue tiles of item ``index``."""
        if index not in self._plans:
            slide = self._slides.get(self.data.samples[index].path)
            ds = target_downsample(
                slide,
                target_mpp=self.options.target_mpp,
                level=self.options.level,
                downsample=self.options.downsample,
            )
            self._plans[index] = plan_tiles(slide, self.options.patch_size, ds, self.options.tissue)
        return self._plans[index]

    def tile_labels(self, index: int) -> np.ndarray:
        """``(n,)`` annotation label of every tile of :meth:`plan` (-1: unlabelled)."""
        plan = self.plan(index)
        if self.labeller is None:
            return np.full(len(plan), -1, dtype=np.int64)
        return self.labeller.labels(self.data.samples[index].path, plan.l0_xy, plan.tile_l0)

    def chosen_tiles(self, index: int) -> np.ndarray:
        """Indices into :meth:`plan` of the patches item ``index`` reads now."""
        if self.labelled_only:
            labels = self.tile_labels(index)
            chosen = np.flatnonzero(labels >= 0)
            if chosen.size == 0:
                raise DatasetError(self.data.samples[index].path, "no annotated tiles")
            if self.per_class is not None:
                return self._balanced(index, chosen, labels[chosen])
            cap = self.options.max_patches
            if cap is not None and chosen.size > cap:
                gen = sample_generator(self.seed, self.epoch, index)
                chosen = np.sort(chosen[torch.randperm(chosen.size, generator=gen)[:cap].numpy()])
            return chosen
        n = len(self.plan(index))
        cap = self.options.max_patches
        if cap is None or n <= cap:
            return np.arange(n)
        if self.augment is None:
            return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))
        gen = sample_generator(self.seed, self.epoch, index)
        return np.sort(torch.randperm(n, generator=gen)[:cap].numpy())

    def _balanced(self, index: int, chosen: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """At most ``per_class`` of the annotated tiles of each class, drawn anew each epoch:
        a small lesion's tiles are then as frequent as those of the tissue around it."""
        gen = sample_generator(self.seed, self.epoch, index)
        picks = []
        for value in np.unique(labels):
            members = chosen[labels == value]
            assert self.per_class is not None
            if members.size > self.per_class:
                order = torch.randperm(members.size, generator=gen)[: self.per_class].numpy()
                members = members[order]
            picks.append(members)
        return np.sort(np.concatenate(picks))

    def raw(self, index: int) -> Tensor:
        """The bag's patches without augmentation or normalisation."""
        slide = self._slides.get(self.data.samples[index].path)
        return to_float_tensor(read_tiles(slide, self.plan(index), self.chosen_tiles(index)))

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        chosen = self.chosen_tiles(index)
        slide = self._slides.get(self.data.samples[index].path)
        bag = to_float_tensor(read_tiles(slide, self.plan(index), chosen))
        if self.augment is not None:
            bag = self.augment(bag, sample_generator(self.seed, self.epoch, index))
        label = self.data.samples[index].label
        head: tuple[Any, ...] = (self.normalise(bag),)
        if self.positions:
            head += (torch.from_numpy(self.plan(index).grid_rc[chosen]),)
        if self.labeller is None:
            return (*head, label)
        return (*head, torch.from_numpy(self.tile_labels(index)[chosen]), label)

    def close(self) -> None:
        """Close the slides this dataset opened."""
        self._slides.close()


class SlideSamplingDataset(Dataset[tuple[Tensor, SlidePatchSource, int]]):
    """Attention sampling over slides: a low-resolution view plus a patch source.

    Item ``(low_res (3, h, w), source, label)``: the view is the slide at
    ``downsample * downscale`` level-0 pixels per pixel (``downsample`` from
    ``target_mpp``/``level``/``downsample`` of the options); ``source`` is a
    :class:`~napari_histattn.inference.patches.SlidePatchSource` at
    ``downsample`` reporting ``view size * downscale`` as its size, so that grid
    cells and patches cover the same area. Only the sampled patches are read.
    No augmentation (a flipped view would no longer match its source).
    """

    def __init__(
        self,
        data: LabelledData,
        options: SlideOptions,
        normalise: Normalise | None = None,
    ) -> None:
        self.data = data
        self.options = options
        self.normalise = normalise or Normalise()
        self._slides = _SlideCache()

    def __len__(self) -> int:
        return len(self.data)

    def _downsample(self, slide: Any) -> float:
        return target_downsample(
            slide,
            target_mpp=self.options.target_mpp,
            level=self.options.level,
            downsample=self.options.downsample,
        )

    def raw(self, index: int) -> Tensor:
        """The low-resolution view without normalisation."""
        slide = self._slides.get(self.data.samples[index].path)
        return to_float_tensor(read_view(slide, self._downsample(slide) * self.options.downscale))

    def __getitem__(self, index: int) -> tuple[Tensor, SlidePatchSource, int]:
        slide = self._slides.get(self.data.samples[index].path)
        ds = self._downsample(slide)
        view = to_float_tensor(read_view(slide, ds * self.options.downscale))
        h, w = int(view.shape[-2]), int(view.shape[-1])
        source = SlidePatchSource(
            slide,
            ds,
            size_wh=(w * self.options.downscale, h * self.options.downscale),
            mean=self.normalise.mean,
            std=self.normalise.std,
        )
        return self.normalise(view), source, self.data.samples[index].label

    def close(self) -> None:
        """Close the slides this dataset opened."""
        self._slides.close()
