"""Augmentation and normalisation of float RGB tensors.

Tensors are ``(..., 3, H, W)`` floats in [0, 1] (a single image, a bag of
patches or a batch). Augmentation draws from an explicit ``torch.Generator``
so a (seed, epoch, index) triple reproduces it, whatever the order in which
samples are visited. Normalisation uses a mean and standard deviation that are
recorded in the checkpoint's preprocessing, so inference applies the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor


def to_float_tensor(rgb: NDArray[np.uint8]) -> Tensor:
    """``(H, W, 3)`` or ``(N, H, W, 3)`` uint8 RGB -> ``(3, H, W)`` / ``(N, 3, H, W)``
    float32 in [0, 1]."""
    arr = np.asarray(rgb)
    if arr.shape[-1] != 3:
        raise ValueError(f"expected RGB with 3 channels last, got shape {arr.shape}")
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True, order="C")  # torch.from_numpy needs writable memory
    t = torch.from_numpy(arr).to(torch.float32).div_(255.0)
    return t.movedim(-1, -3).contiguous()


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A ``torch.Generator`` seeded from (seed, epoch, index), independent of visit order."""
    # Negative parts (e.g. -1 for "not an epoch") wrap to distinct non-negative words.
    words = [int(v) & 0xFFFFFFFF for v in (seed, epoch, index)]
    mixed = np.random.SeedSequence(words).generate_state(1)[0]
    return torch.Generator().manual_seed(int(mixed))


@dataclass(frozen=True)
class Augment:
    """Random flips, 90-degree rotations and light colour jitter.

    The same draw applies to every image of the leading dimensions (a bag of
    patches is flipped/rotated patch by patch with independent draws when
    ``per_instance`` is true, as for MIL bags whose instances have no common
    orientation).

    Attributes
    ----------
    flips
        Horizontal and vertical flips, each with probability 1/2.
    rotate90
        Rotation by a uniformly drawn multiple of 90 degrees (square images
        only; non-square images are left unrotated).
    brightness, contrast, saturation
        Maximum relative change: a factor is drawn uniformly from
        [1 - x, 1 + x]. Zero disables it.
    per_instance
        Draw independently for each item of the first dimension of a 4-D input.
    """

    flips: bool = True
    rotate90: bool = True
    brightness: float = 0.05
    contrast: float = 0.05
    saturation: float = 0.05
    per_instance: bool = False

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augment ``(3, H, W)`` or ``(N, 3, H, W)`` float images in [0, 1]."""
        if images.ndim == 4 and self.per_instance:
            return torch.stack([self._one(img, generator) for img in images])
        return self._one(images, generator)

    def _uniform(self, generator: torch.Generator) -> float:
        return float(torch.rand((), generator=generator))

    def _one(self, img: Tensor, generator: torch.Generator) -> Tensor:
        # Draw every random number even when an option is off, so the stream
        # (and thus other options' draws) does not depend on the settings.
        flip_h, flip_v, rot = (self._uniform(generator) for _ in range(3))
        factors = [1.0 + (2.0 * self._uniform(generator) - 1.0) * a for a in self._amounts()]
        if self.flips and flip_h < 0.5:
            img = img.flip(-1)
        if self.flips and flip_v < 0.5:
            img = img.flip(-2)
        if self.rotate90 and img.shape[-1] == img.shape[-2]:
            img = torch.rot90(img, int(rot * 4) % 4, dims=(-2, -1))
        brightness, contrast, saturation = factors
        if brightness != 1.0:
            img = img * brightness
        if contrast != 1.0:
            mean = img.mean(dim=(-3, -2, -1), keepdim=True)
            img = (img - mean) * contrast + mean
        if saturation != 1.0:
            grey = (img * _LUMA.to(img).view(3, 1, 1)).sum(dim=-3, keepdim=True)
            img = (img - grey) * saturation + grey
        return img.clamp(0.0, 1.0)

    def _amounts(self) -> tuple[float, float, float]:
        return (self.brightness, self.contrast, self.saturation)


_LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Normalise:
    """``(x - mean) / std`` per channel; the identity when ``mean``/``std`` are None."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __call__(self, images: Tensor) -> Tensor:
        if self.mean is None or self.std is None:
            return images
        mean = torch.tensor(self.mean, dtype=images.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(3, 1, 1)
        return (images - mean) / std

    def as_dict(self) -> dict[str, list[float] | None]:
        """``{"mean": [...], "std": [...]}`` for the checkpoint's preprocessing."""
        return {
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }


def mean_std(images: Iterable[Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation over every pixel of ``images``.

    Each item is ``(..., 3, H, W)``; sums are accumulated in float64 so the
    result does not depend on how the pixels are split into items.
    """
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for img in images:
        flat = img.detach().to(torch.float64).movedim(-3, 0).reshape(3, -1)
        total += flat.sum(dim=1)
        total_sq += (flat * flat).sum(dim=1)
        count += flat.shape[1]
    if count == 0:
        raise ValueError("cannot compute mean/std of no images")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def as_triple(values: Sequence[float]) -> tuple[float, float, float]:
    """A 3-tuple of floats from a sequence of three numbers."""
    if len(values) != 3:
        raise ValueError(f"expected 3 values (one per RGB channel), got {len(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))
