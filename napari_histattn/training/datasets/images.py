"""Image datasets: labelled image files as fixed-size tensors, and the normalisation estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from napari_histattn.inference.patches import resize_square
from napari_histattn.training.datasets.layouts import (
    DatasetError,
    LabelledData,
)
from napari_histattn.training.transforms import (
    Augment,
    Normalise,
    as_triple,
    mean_std,
    sample_generator,
    to_float_tensor,
)


def read_rgb(path: Path, size: int | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB, resized to ``size`` x ``size``
    (bilinear, antialiased) when given."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(path, f"cannot read image: {exc}") from exc
    return rgb if size is None else resize_square(rgb, size)


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """Whole images (patches) for a patch classifier such as ``dafl_cnn``.

    Parameters
    ----------
    data
        Labelled image files.
    image_size
        Images are resized to ``image_size`` x ``image_size``; None keeps the
        file's size (then every file must have the same size to batch).
    augment
        Random augmentation, or None (evaluation).
    normalise
        Applied after augmentation.
    seed
        Seeds augmentation together with the epoch (:meth:`set_epoch`) and index.
    cache
        Keep decoded (resized) images in memory after the first read.
    """

    def __init__(
        self,
        data: LabelledData,
        image_size: int | None = None,
        augment: Augment | None = None,
        normalise: Normalise | None = None,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        self.data = data
        self.image_size = image_size
        self.augment = augment
        self.normalise = normalise or Normalise()
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch``."""
        self.epoch = epoch

    def raw(self, index: int) -> Tensor:
        """Image ``index`` as ``(3, H, W)`` float in [0, 1], without augmentation."""
        if self._cache is not None and index in self._cache:
            rgb = self._cache[index]
        else:
            rgb = read_rgb(self.data.samples[index].path, self.image_size)
            if self._cache is not None:
                self._cache[index] = rgb
        return to_float_tensor(rgb)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.raw(index)
        if self.augment is not None:
            image = self.augment(image, sample_generator(self.seed, self.epoch, index))
        return self.normalise(image), self.data.samples[index].label


def estimate_normalisation(dataset: Any, max_items: int = 32) -> Normalise:
    """Per-channel mean/std over the raw pixels of up to ``max_items`` items
    (evenly spread over the dataset), for :class:`Normalise`.

    ``dataset.raw(index)`` must return ``(..., 3, H, W)`` floats in [0, 1].
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot estimate normalisation from an empty dataset")
    picks = np.unique(np.linspace(0, n - 1, min(n, max_items)).round().astype(int))
    mean, std = mean_std(dataset.raw(int(i)) for i in picks)
    return Normalise(as_triple(mean), as_triple(std))


# -- slides (and any image io.slide opens) -----------------------------------------------
