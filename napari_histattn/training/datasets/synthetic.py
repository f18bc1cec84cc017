"""Synthetic in-memory datasets from :mod:`napari_histattn.io.synthetic` for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from napari_histattn.training.transforms import (
    Augment,
    Normalise,
    sample_generator,
    to_float_tensor,
)


@dataclass(frozen=True)
class SyntheticSpec:
    """Generated square images with or without lesions (io.synthetic).

    Positives (label 1, ``"lesion"``) carry ``n_lesions`` lesions and
    ``positive_lookalikes`` benign look-alikes; negatives (label 0,
    ``"normal"``) carry ``negative_lookalikes`` look-alikes. Look-alikes match
    lesions at low resolution and differ only in nuclear morphology, so with
    look-alikes in the negatives only high resolution separates the classes;
    without them the task is easy (a dark region or none).

    Attributes
    ----------
    image_size
        Side in level-0 pixels.
    lesion_radius_px
        Mean lesion (and look-alike) radius in level-0 pixels.
    tissue_fraction, mpp
        As :func:`napari_histattn.io.synthetic.make_scene`.
    """

    image_size: int = 256
    lesion_radius_px: float = 24.0
    n_lesions: int = 1
    positive_lookalikes: int = 0
    negative_lookalikes: int = 0
    tissue_fraction: float = 0.8
    mpp: float = 0.5


class SyntheticScenes:
    """Deterministic generated images, lesion masks and labels from a list of seeds.

    Parameters
    ----------
    spec
        What to generate.
    seeds
        One image per seed (the scene's seed).
    labels
        Label per seed; by default ``seed % 2`` (1 = lesion).
    cache
        Keep rendered images in memory.
    """

    class_names = ("normal", "lesion")

    def __init__(
        self,
        spec: SyntheticSpec,
        seeds: Sequence[int],
        labels: Sequence[int] | None = None,
        cache: bool = True,
    ) -> None:
        self.spec = spec
        self.seeds = [int(s) for s in seeds]
        self.labels = np.array(
            [s % 2 for s in self.seeds] if labels is None else list(labels), dtype=np.int64
        )
        if self.labels.shape != (len(self.seeds),):
            raise ValueError(f"{len(self.seeds)} seeds but {self.labels.size} labels")
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        self._scenes: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def groups(self) -> list[str]:
        """One group per image (its seed)."""
        return [f"seed-{s}" for s in self.seeds]

    def scene(self, index: int) -> Any:
        """The :class:`napari_histattn.io.synthetic.Scene` of image ``index``."""
        if index not in self._scenes:
            from napari_histattn.io.synthetic import make_scene

            positive = bool(self.labels[index])
            spec = self.spec
            self._scenes[index] = make_scene(
                spec.image_size,
                spec.image_size,
                n_lesions=spec.n_lesions if positive else 0,
                lesion_radius_px=spec.lesion_radius_px,
                n_lookalikes=spec.positive_lookalikes if positive else spec.negative_lookalikes,
                tissue_fraction=spec.tissue_fraction,
                mpp=spec.mpp,
                seed=self.seeds[index],
            )
        return self._scenes[index]

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` at full resolution, ``(S, S, 3)`` uint8."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        from napari_histattn.io.synthetic import render_region

        size = self.spec.image_size
        rgb = np.asarray(render_region(self.scene(index), (0, 0), (size, size), 1.0))
        if self._cache is not None:
            self._cache[index] = rgb
        return rgb

    def lesion_mask(self, index: int, downsample: int = 1) -> np.ndarray:
        """Boolean lesion mask of image ``index`` at ``downsample`` (pixel centres tested)."""
        size = self.spec.image_size // downsample
        centres = (np.arange(size) + 0.5) * downsample
        mask = np.zeros((size, size), dtype=bool)
        for region in self.scene(index).lesions:
            mask |= region.rho(centres[None, :], centres[:, None]) < 1.0
        return mask


class _SyntheticBase:
    def __init__(
        self,
        scenes: SyntheticScenes,
        augment: Augment | None,
        normalise: Normalise | None,
        seed: int,
    ) -> None:
        self.scenes = scenes
        self.augment = augment
        self.normalise = normalise or Normalise()
        self.seed = seed
        self.epoch = 0
        self.class_names = list(scenes.class_names)

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def labels(self) -> np.ndarray:
        return self.scenes.labels

    @property
    def groups(self) -> list[str]:
        return self.scenes.groups

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _augmented(self, index: int) -> Tensor:
        image = to_float_tensor(self.scenes.image(index))
        if self.augment is not None:
            image = self.augment(image, sample_generator(self.seed, self.epoch, index))
        return image


class SyntheticImageDataset(_SyntheticBase, Dataset[tuple[Tensor, int]]):
    """Generated images for patch classifiers: item ``(image (3, s, s), label)``.

    ``image_size`` resizes (area filter) the ``spec.image_size`` render to ``s``.
    """

    def __init__(
        self,
        scenes: SyntheticScenes,
        image_size: int | None = None,
        augment: Augment | None = None,
        normalise: Normalise | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(scenes, augment, normalise, seed)
        self.image_size = image_size

    def _resize(self, image: Tensor) -> Tensor:
        if self.image_size is None or image.shape[-1] == self.image_size:
            return image
        size = (self.image_size, self.image_size)
        return F.interpolate(image[None], size=size, mode="area")[0]

    def raw(self, index: int) -> Tensor:
        return self._resize(to_float_tensor(self.scenes.image(index)))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self._resize(self._augmented(index))
        return self.normalise(image), int(self.scenes.labels[index])


class SyntheticBagDataset(_SyntheticBase, Dataset[tuple[Tensor, int]]):
    """Generated images as A-MIL bags of ``patch_size`` tiles: item ``(bag (n, 3, p, p), label)``.

    Every tile of the grid is an instance (the tile order is row-major on
    :meth:`grid_shape`); augmentation flips/rotates each tile on its own.
    """

    def __init__(
        self,
        scenes: SyntheticScenes,
        patch_size: int = 32,
        augment: Augment | None = None,
        normalise: Normalise | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            scenes,
            None if augment is None else replace(augment, per_instance=True),
            normalise,
            seed,
        )
        if scenes.spec.image_size < patch_size:
            raise ValueError("patch_size is larger than the images")
        self.patch_size = patch_size

    def grid_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the tile grid."""
        n = self.scenes.spec.image_size // self.patch_size
        return n, n

    def _tiles(self, image: Tensor) -> Tensor:
        rows, cols = self.grid_shape()
        p = self.patch_size
        crop = image[:, : rows * p, : cols * p]
        tiles = crop.reshape(3, rows, p, cols, p).permute(1, 3, 0, 2, 4)
        return tiles.reshape(rows * cols, 3, p, p).contiguous()

    def raw(self, index: int) -> Tensor:
        return self._tiles(to_float_tensor(self.scenes.image(index)))

    def tile_lesion_fraction(self, index: int) -> np.ndarray:
        """``(rows, cols)`` fraction of each tile inside a lesion."""
        rows, cols = self.grid_shape()
        p = self.patch_size
        mask = self.scenes.lesion_mask(index)[: rows * p, : cols * p]
        return mask.reshape(rows, p, cols, p).mean(axis=(1, 3))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        bag = self.raw(index)
        if self.augment is not None:
            bag = self.augment(bag, sample_generator(self.seed, self.epoch, index))
        return self.normalise(bag), int(self.scenes.labels[index])


class SyntheticSamplingDataset(_SyntheticBase, Dataset[tuple[Tensor, Tensor, int]]):
    """Generated images for attention sampling: item ``(low_res (3, s/d, s/d),
    high_res (3, s, s), label)`` with ``d = downscale``; the view is the area
    average of the (augmented) full-resolution image."""

    def __init__(
        self,
        scenes: SyntheticScenes,
        downscale: int = 8,
        augment: Augment | None = None,
        normalise: Normalise | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(scenes, augment, normalise, seed)
        self.downscale = downscale

    def _view(self, image: Tensor) -> Tensor:
        size = max(1, image.shape[-1] // self.downscale)
        return F.interpolate(image[None], size=(size, size), mode="area")[0]

    def raw(self, index: int) -> Tensor:
        return self._view(to_float_tensor(self.scenes.image(index)))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image = self._augmented(index)
        high = self.normalise(image)
        return self._view(high), high, int(self.scenes.labels[index])
