"""Bags of cached tile features (``histattn features``) for slide-label training of bag models.

Item ``(features (n, D), label)``: the feature file of each slide is found in
the features folder by the slide's stem (as ``histattn features`` names it) and
read when the item is asked for (only the files' attributes are held, so a
cohort of any size fits in memory); at most ``max_patches`` rows are used per bag (training draws a new
random subset each epoch, evaluation an evenly spaced one). Training on cached
features takes seconds per epoch on a CPU, because no pixel is read or encoded.

With an :class:`~napari_histattn.training.datasets.annotated.InstanceLabeller`
items are ``(features, instance_labels (n,), label)``: tiles inside a
pathologist's annotations carry a class, the others -1 (``labelled_only``
keeps only the annotated tiles, for stage 1 of two-stage training). ``positions``
puts each tile's grid (row, col) ``(n, 2)`` after the features (HATNet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from napari_histattn.inference.features import (
    FeatureFileError,
    feature_info,
    feature_path,
    read_features,
)
from napari_histattn.training.datasets.annotated import InstanceLabeller
from napari_histattn.training.datasets.layouts import DatasetError, LabelledData
from napari_histattn.training.transforms import sample_generator

__all__ = ["FeatureBagDataset"]


class FeatureBagDataset(Dataset[tuple[Tensor, int]]):
    """Bags of cached features; see the module docstring.

    Raises
    ------
    DatasetError
        A slide has no feature file, a file is torn, or the files disagree on the
        encoder or the feature width.
    """

    def __init__(
        self,
        data: LabelledData,
        features_dir: str | Path,
        *,
        max_patches: int | None = None,
        train: bool = False,
        seed: int = 0,
        labeller: InstanceLabeller | None = None,
        labelled_only: bool = False,
        positions: bool = False,
    ) -> None:
        self.data = data
        self.positions = positions
        self.labeller = labeller
        self.labelled_only = labelled_only
        self.features_dir = Path(features_dir)
        self.max_patches = max_patches
        self.train = train
        self.seed = seed
        self.epoch = 0
        self._paths: list[Path] = []
        self._infos: list[dict[str, Any]] = []
        self.encoder: dict[str, Any] | None = None
        for sample in data.samples:  # check every file now, naming the slide, not mid-epoch
            self._add(sample.path)

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _add(self, slide: Path) -> None:
        path = feature_path(self.features_dir, slide)
        if not path.is_file():
            raise DatasetError(
                path, f"no features for slide {slide.name}: run `histattn features` first"
            )
        try:
            info = feature_info(path)
        except FeatureFileError as exc:
            raise DatasetError(path, str(exc)) from exc
        keys = ("name", "dim", "weights_sha256", "random_seed")
        if self.encoder is None:
            self.encoder = info["encoder"]
        mine = {k: info["encoder"].get(k) for k in keys}
        first = {k: self.encoder.get(k) for k in keys}
        if mine != first:
            raise DatasetError(
                path, f"made with encoder {mine}, other slides with {first}: use one encoder"
            )
        self._paths.append(path)
        self._infos.append(info)

    def info(self, index: int) -> dict[str, Any]:
        """Item ``index``'s feature file attributes (``n``, ``patch_size``, ``encoder``...)."""
        return self._infos[index]

    @property
    def dim(self) -> int:
        """The feature width."""
        assert self.encoder is not None
        return int(self.encoder["dim"])

    def chosen(self, index: int) -> np.ndarray:
        """Rows of item ``index``'s features in the bag now."""
        n = int(self._infos[index]["n"])
        cap = self.max_patches
        if cap is None or n <= cap:
            return np.arange(n)
        if not self.train:
            return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))
        gen = sample_generator(self.seed, self.epoch, index)
        return np.sort(torch.randperm(n, generator=gen)[:cap].numpy())

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        try:
            cached = read_features(self._paths[index])
        except FeatureFileError as exc:
            raise DatasetError(self._paths[index], str(exc)) from exc
        label = self.data.samples[index].label
        tiles = None if self.labeller is None else self.tile_labels(index, cached)
        if tiles is not None and self.labelled_only:  # stage 1: the annotated tiles only
            chosen = np.flatnonzero(tiles >= 0)
            if chosen.size == 0:
                raise DatasetError(self._paths[index], "this slide has no annotated tiles")
        else:
            chosen = self.chosen(index)
        head: tuple[Any, ...] = (torch.from_numpy(np.ascontiguousarray(cached.features[chosen])),)
        if self.positions:
            head += (torch.from_numpy(np.ascontiguousarray(cached.grid_rc[chosen])),)
        if tiles is None:
            return (*head, label)
        return (*head, torch.from_numpy(tiles[chosen]), label)

    def label(self, index: int) -> int:
        """Item ``index``'s slide label (class index)."""
        return int(self.data.samples[index].label)

    def all_features(self, index: int) -> np.ndarray:
        """Every feature row ``(n, D)`` of item ``index``, whatever ``max_patches`` says."""
        try:
            return read_features(self._paths[index]).features
        except FeatureFileError as exc:
            raise DatasetError(self._paths[index], str(exc)) from exc

    def tile_labels(self, index: int, cached: Any = None) -> np.ndarray:
        """``(n,)`` annotation label of each of item ``index``'s tiles (-1: unlabelled)."""
        if cached is None:
            cached = read_features(self._paths[index])
        if self.labeller is None:
            return np.full(len(cached), -1, dtype=np.int64)
        return self.labeller.labels(
            self.data.samples[index].path, cached.coords_l0_xy, cached.tile_l0
        )

    def feature_stats(self, max_rows: int = 65536) -> tuple[Tensor, Tensor]:
        """Per-dimension mean and std over (up to ``max_rows``, evenly spread) feature rows."""
        per_bag = max(1, max_rows // max(1, len(self)))
        rows = []
        for index in range(len(self)):
            features = read_features(self._paths[index]).features
            take = np.unique(np.linspace(0, len(features) - 1, per_bag).round().astype(np.int64))
            rows.append(features[take])
        stacked = torch.from_numpy(np.concatenate(rows))
        return stacked.mean(dim=0), stacked.std(dim=0)
