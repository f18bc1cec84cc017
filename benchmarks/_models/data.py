"""Generated images at model resolution, with per-pixel labels, and patch sampling.

An image is a square synthetic scene (:func:`napari_histattn.io.synthetic.make_scene`)
rendered at the model's resolution (``model_mpp``, by default 1.0 um/px: the
level-0 scene at 0.5 um/px averaged over 2 x 2 pixels, as a slide pyramid's
level 1). Every image carries the same number of dark regions: a positive
(``"lesion"``) image has one lesion and ``n_regions - 1`` benign look-alikes, a
negative (``"benign"``) image has ``n_regions`` look-alikes. Look-alikes match
lesions in size, darkness and density at low resolution and differ only in
nuclear morphology, so counting or finding dark regions does not tell the
classes apart; only high-resolution patches do.

Labels per pixel: 0 glass, 1 tissue, 2 look-alike, 3 lesion (pixel centres
tested against the scene's outlines, as :func:`napari_histattn.io.synthetic.label_mask`).

Rendered images are cached as ``.npz`` files named by a hash of the scene, so a
change of the generator renders afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GLASS, TISSUE, LOOKALIKE, LESION = 0, 1, 2, 3

#: Seed ranges of the training images by lesion radius (um), and of the test images.
#: The demo checkpoints train on the first images of each training range; the
#: benchmark on all of them (a curriculum from the largest radius down), and both
#: are tested on seeds that neither trains on.
TRAIN_SEEDS_BY_RADIUS = {150.0: 100_000, 125.0: 110_000, 100.0: 120_000}
TEST_SEED_START = 900_000
#: Patch-level classes of stage 1 (index = class id).
PATCH_CLASSES = ("normal", "lookalike", "lesion")
#: Image/slide-level classes of the attention models.
SLIDE_CLASSES = ("benign", "lesion")


@dataclass(frozen=True)
class DataSpec:
    """What one generated image looks like.

    Attributes
    ----------
    size_l0
        Side of the scene in level-0 pixels.
    scene_mpp
        Micrometres per level-0 pixel (the demo slide has 0.5).
    model_mpp
        Micrometres per pixel the models see.
    n_regions
        Dark regions per image (lesions plus look-alikes).
    tissue_fraction
        Fraction of the image covered by tissue.
    """

    size_l0: int = 2048
    scene_mpp: float = 0.5
    model_mpp: float = 1.0
    n_regions: int = 3
    tissue_fraction: float = 0.8

    @property
    def downsample(self) -> float:
        """Level-0 pixels per model pixel."""
        return self.model_mpp / self.scene_mpp

    @property
    def size(self) -> int:
        """Side of the image in model pixels."""
        return int(round(self.size_l0 / self.downsample))


@dataclass
class ImageSet:
    """Generated images with labels.

    Attributes
    ----------
    rgb
        ``(n, S, S, 3)`` uint8 at model resolution.
    labels
        ``(n, S, S)`` uint8 per-pixel labels (0 glass, 1 tissue, 2 look-alike, 3 lesion).
    y
        ``(n,)`` int64 image labels (0 benign, 1 lesion).
    seeds
        Scene seed of each image.
    radius_um
        Mean lesion/look-alike radius of each image, micrometres.
    """

    rgb: np.ndarray
    labels: np.ndarray
    y: np.ndarray
    seeds: list[int]
    radius_um: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: Sequence[int] | np.ndarray) -> ImageSet:
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(
            self.rgb[idx],
            self.labels[idx],
            self.y[idx],
            [self.seeds[i] for i in idx],
            self.radius_um[idx],
        )

    @staticmethod
    def concat(sets: Sequence[ImageSet]) -> ImageSet:
        return ImageSet(
            np.concatenate([s.rgb for s in sets]),
            np.concatenate([s.labels for s in sets]),
            np.concatenate([s.y for s in sets]),
            [seed for s in sets for seed in s.seeds],
            np.concatenate([s.radius_um for s in sets]),
        )

    def lesion_masks(self) -> np.ndarray:
        """``(n, S, S)`` bool lesion masks."""
        return self.labels == LESION

    def summary(self) -> dict[str, Any]:
        return {
            "n_images": len(self),
            "n_lesion": int(self.y.sum()),
            "n_benign": int((self.y == 0).sum()),
            "size_px": int(self.rgb.shape[1]),
            "seeds": [min(self.seeds), max(self.seeds)] if self.seeds else [],
            "radius_um": sorted({float(r) for r in self.radius_um}),
            "lesion_fraction_of_positive_images": float(
                (self.labels[self.y == 1] == LESION).mean() if self.y.any() else 0.0
            ),
        }


def make_image_scene(spec: DataSpec, seed: int, positive: bool, radius_um: float) -> Any:
    """The scene of one image; retries a few derived seeds when the regions do not fit."""
    from napari_histattn.io.synthetic import SceneError, make_scene

    n_lesions = 1 if positive else 0
    last: Exception | None = None
    for attempt in range(5):
        try:
            return make_scene(
                spec.size_l0,
                spec.size_l0,
                n_lesions=n_lesions,
                lesion_radius_px=radius_um / spec.scene_mpp,
                n_lookalikes=spec.n_regions - n_lesions,
                tissue_fraction=spec.tissue_fraction,
                mpp=spec.scene_mpp,
                seed=seed + 1_000_003 * attempt,
            )
        except SceneError as exc:
            last = exc
    raise RuntimeError(f"cannot lay out an image for seed {seed}: {last}")


def label_image(scene: Any, size: int, downsample: float) -> np.ndarray:
    """Per-pixel labels at ``downsample`` (pixel centres tested against the outlines)."""
    centres = (np.arange(size) + 0.5) * downsample
    x, y = centres[None, :], centres[:, None]
    labels = np.zeros((size, size), np.uint8)
    labels[scene.tissue.rho(x, y) < 1.0] = TISSUE
    for kind, value in (("lookalike", LOOKALIKE), ("lesion", LESION)):
        for region in scene.regions:
            if region.kind == kind:
                labels[region.rho(x, y) < 1.0] = value
    return labels


def _render_one(
    args: tuple[DataSpec, int, bool, float, str | None],
) -> tuple[np.ndarray, np.ndarray]:
    spec, seed, positive, radius_um, cache_dir = args
    from napari_histattn.io.synthetic import render_region

    scene = make_image_scene(spec, seed, positive, radius_um)
    key_src = json.dumps(
        {"scene": scene.to_dict(), "downsample": spec.downsample, "size": spec.size},
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"img-{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                return z["rgb"], z["labels"]
        except (OSError, ValueError, KeyError):
            pass
    k = spec.downsample
    if float(k).is_integer() and k > 1:
        # Full resolution averaged over k x k blocks: what a slide pyramid (or a box
        # resize of level 0) gives, and twice as fast as rendering at the downsample.
        k = int(k)
        full = render_region(scene, (0, 0), (spec.size * k, spec.size * k), 1.0)
        blocks = full.reshape(spec.size, k, spec.size, k, 3).astype(np.float32)
        rgb = np.clip(blocks.mean(axis=(1, 3)) + 0.5, 0, 255).astype(np.uint8)
    else:
        rgb = np.asarray(render_region(scene, (0, 0), (spec.size, spec.size), spec.downsample))
    labels = label_image(scene, spec.size, spec.downsample)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, rgb=rgb, labels=labels)
        os.replace(tmp, path)
    return rgb, labels


def build_images(
    spec: DataSpec,
    seeds: Sequence[int],
    radius_um: float | Sequence[float],
    *,
    cache_dir: str | Path | None = None,
    workers: int = 2,
) -> ImageSet:
    """Render (or read from the cache) one image per seed; odd seeds are lesion images.

    Parameters
    ----------
    spec
        Image layout.
    seeds
        Scene seeds; label ``seed % 2`` (1 = lesion), so balanced sets come from
        consecutive seeds.
    radius_um
        Mean region radius (one value, or one per seed).
    cache_dir
        Where rendered images are cached (None: no cache).
    workers
        Rendering processes.
    """
    seeds = [int(s) for s in seeds]
    radii = (
        [float(radius_um)] * len(seeds) if np.isscalar(radius_um) else [float(r) for r in radius_um]  # type: ignore[union-attr]
    )
    jobs = [
        (spec, s, bool(s % 2), r, None if cache_dir is None else str(cache_dir))
        for s, r in zip(seeds, radii, strict=True)
    ]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = list(pool.map(_render_one, jobs, chunksize=1))
    else:
        out = [_render_one(j) for j in jobs]
    return ImageSet(
        rgb=np.stack([o[0] for o in out]),
        labels=np.stack([o[1] for o in out]),
        y=np.array([s % 2 for s in seeds], dtype=np.int64),
        seeds=seeds,
        radius_um=np.array(radii),
    )


def mean_std(images: ImageSet, max_pixels: int = 2_000_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-1 scale) over a strided subset of all pixels."""
    flat = images.rgb.reshape(-1, 3)
    step = max(1, flat.shape[0] // max_pixels)
    sample = flat[::step].astype(np.float64) / 255.0
    return [round(float(v), 4) for v in sample.mean(0)], [round(float(v), 4) for v in sample.std(0)]


def _window_fraction(mask: np.ndarray, p: int) -> np.ndarray:
    """Fraction of each p x p window (top-left anchored) that is True: ``(S-p+1, S-p+1)``."""
    c = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    s = c[p:, p:] - c[:-p, p:] - c[p:, :-p] + c[:-p, :-p]
    return s / (p * p)


def sample_patches(
    images: ImageSet, patch_size: int, per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labelled patches for stage 1: normal tissue, look-alike and lesion.

    A patch is ``lesion`` (``lookalike``) when at least half of it lies inside a
    lesion (look-alike); ``normal`` when at least half is tissue and none of it
    is a lesion or look-alike. Up to ``per_class`` patches of each class are
    drawn per image (uniformly among the valid positions; twice as many lesion
    patches, since only half the images have a lesion).

    Returns
    -------
    tuple
        ``(patches (M, p, p, 3) uint8, classes (M,) int64)`` with classes indexing
        :data:`PATCH_CLASSES`.
    """
    rng = np.random.default_rng(seed)
    p = patch_size
    out_x: list[np.ndarray] = []
    out_y: list[int] = []
    for i in range(len(images)):
        lab = images.labels[i]
        tissue = _window_fraction(lab >= TISSUE, p)
        regions = _window_fraction(lab >= LOOKALIKE, p)
        candidates = {
            0: (tissue >= 0.5) & (regions == 0.0),
            1: _window_fraction(lab == LOOKALIKE, p) >= 0.5,
            2: _window_fraction(lab == LESION, p) >= 0.5,
        }
        for cls, ok in candidates.items():
            rr, cc = np.nonzero(ok)
            if rr.size == 0:
                continue
            # Lesions occur in half the images: twice as many per lesion image keeps the
            # classes balanced.
            k = 2 * per_class if cls == 2 else per_class
            pick = rng.choice(rr.size, size=min(k, rr.size), replace=False)
            for j in pick:
                r, c = int(rr[j]), int(cc[j])
                out_x.append(images.rgb[i, r : r + p, c : c + p])
                out_y.append(cls)
    return np.stack(out_x), np.array(out_y, dtype=np.int64)


def tile_grid(images_rgb: np.ndarray, patch_size: int) -> np.ndarray:
    """Non-overlapping tiles, row-major: ``(n, S, S, 3)`` -> ``(n, T, p, p, 3)``."""
    n, s = images_rgb.shape[0], images_rgb.shape[1]
    g = s // patch_size
    crop = images_rgb[:, : g * patch_size, : g * patch_size]
    tiles = crop.reshape(n, g, patch_size, g, patch_size, 3).transpose(0, 1, 3, 2, 4, 5)
    return tiles.reshape(n, g * g, patch_size, patch_size, 3)


def tile_fractions(mask: np.ndarray, patch_size: int) -> np.ndarray:
    """Fraction of each tile that is True: ``(n, S, S)`` -> ``(n, g, g)``."""
    n, s = mask.shape[0], mask.shape[1]
    g = s // patch_size
    crop = mask[:, : g * patch_size, : g * patch_size].astype(np.float32)
    return crop.reshape(n, g, patch_size, g, patch_size).mean(axis=(2, 4))
