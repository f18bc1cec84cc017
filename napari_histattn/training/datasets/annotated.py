"""Instance labels for bag training from a pathologist's annotations (GeoJSON per slide).

:class:`Annotations` says where the files are and how their classes and polygons
become tile labels (:mod:`napari_histattn.io.tile_labels`); :class:`InstanceLabeller`
labels the tiles of each slide once and keeps the labels, so that a bag dataset
can return ``(bag, instance_labels, label)`` items: -1 marks an unlabelled tile
(outside every annotation, or on a slide without annotations), never a negative.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from napari_histattn.errors import AnnotationError
from napari_histattn.io.tile_labels import find_annotations, read_tile_labels
from napari_histattn.training.datasets.layouts import DatasetError

__all__ = ["Annotations", "InstanceLabeller"]


@dataclass(frozen=True)
class Annotations:
    """Where a cohort's annotations are and how they label tiles.

    Attributes
    ----------
    folder
        The folder of ``<slide stem>.geojson`` files (slides without one are
        unannotated).
    class_map
        Annotation class name to model class name (``None``: ignore the class);
        names equal to a model class map to it without an entry.
    rule, min_overlap
        ``"centre"`` (the tile centre is inside) or ``"overlap"`` (at least
        ``min_overlap`` of the tile is covered).
    """

    folder: Path
    class_map: Mapping[str, str | None] = field(default_factory=dict)
    rule: str = "centre"
    min_overlap: float = 0.5


class InstanceLabeller:
    """Tile labels of each slide from :class:`Annotations`, computed once per slide."""

    def __init__(self, annotations: Annotations, class_names: Sequence[str]) -> None:
        if not annotations.folder.is_dir():
            raise DatasetError(annotations.folder, "the annotations folder does not exist")
        self.annotations = annotations
        self.class_names = list(class_names)
        self._labels: dict[Path, NDArray[np.int64]] = {}
        self.counts: dict[str, int] = {name: 0 for name in self.class_names}
        self.ignored: dict[str, int] = {}
        self.annotated_slides: set[Path] = set()

    def has_annotations(self, slide: Path) -> bool:
        """Whether the slide has an annotation file."""
        return find_annotations(slide, self.annotations.folder) is not None

    def labels(self, slide: Path, tiles_l0_xy: NDArray[Any], tile_l0: float) -> NDArray[np.int64]:
        """``(n,)`` labels of the slide's tiles (all -1 without annotations)."""
        cached = self._labels.get(slide)
        if cached is not None and cached.shape[0] == len(tiles_l0_xy):
            return cached
        path = find_annotations(slide, self.annotations.folder)
        if path is None:
            labels = np.full(len(tiles_l0_xy), -1, dtype=np.int64)
        else:
            try:
                found = read_tile_labels(
                    path,
                    tiles_l0_xy,
                    tile_l0,
                    self.class_names,
                    class_map=self.annotations.class_map,
                    rule=self.annotations.rule,
                    min_overlap=self.annotations.min_overlap,
                )
            except (AnnotationError, ValueError) as exc:
                raise DatasetError(path, str(exc)) from exc
            labels = found.labels
            self.annotated_slides.add(slide)
            for name, count in found.counts.items():
                self.counts[name] += count
            for name, count in found.ignored.items():
                self.ignored[name] = self.ignored.get(name, 0) + count
        self._labels[slide] = labels
        return labels

    def summary(self) -> dict[str, Any]:
        """What the annotations contributed (for the checkpoint's training record)."""
        return {
            "folder": str(self.annotations.folder),
            "rule": self.annotations.rule,
            "min_overlap": self.annotations.min_overlap,
            "class_map": dict(self.annotations.class_map),
            "annotated_slides": len(self.annotated_slides),
            "labelled_tiles": dict(self.counts),
            "ignored_annotation_classes": dict(self.ignored),
        }
