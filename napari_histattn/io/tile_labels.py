"""A pathologist's annotations as tile labels: GeoJSON polygons with a class, in level-0 pixels.

The annotations of a slide are a GeoJSON file beside it or in an annotations
folder (QuPath's "Export objects as GeoJSON", our own region export, or the
generator's ground truth), found by :func:`find_annotations` as
``<slide stem>.geojson`` (or ``.json``, or ``<slide name>.geojson``).
:func:`tile_labels` maps them to one label per tile:

- ``rule="centre"``: a tile takes the class of the polygon that contains its
  centre; when polygons nest (a tumour outlined inside a "normal" region), the
  smallest containing polygon wins.
- ``rule="overlap"``: a tile takes the class whose polygons cover at least
  ``min_overlap`` of its area (the largest covered share wins).

A tile that no annotation labels is **unlabelled** (-1), never negative: a
partially annotated slide only teaches what was outlined. Annotation class
names are matched to the model's classes case-insensitively, or through an
explicit ``class_map`` (``{"Tumor": "lesion", "Stroma": "benign"}``; a value of
``None`` ignores that annotation class); other names are ignored and reported
by :attr:`TileLabels.ignored`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from numpy.typing import NDArray

from napari_histattn.io.export.geojson_read import read_geojson_regions
from napari_histattn.io.regions import Region

__all__ = [
    "RULES",
    "TileLabels",
    "find_annotations",
    "read_tile_labels",
    "resolve_class",
    "tile_labels",
]

RULES = ("centre", "overlap")
#: File names tried for a slide's annotations, in order.
#: Annotation file names beside a slide, in order: QuPath's and ours, then the classify
#: widget's review export (``<stem>_regions.geojson``).
_PATTERNS = (
    "{stem}.geojson",
    "{stem}.json",
    "{name}.geojson",
    "{name}.json",
    "{stem}_regions.geojson",
)


def find_annotations(
    slide_path: str | os.PathLike[str], folder: str | os.PathLike[str]
) -> Path | None:
    """The annotation file of ``slide_path`` in ``folder``, or None when it has none."""
    slide = Path(slide_path)
    for pattern in _PATTERNS:
        candidate = Path(folder) / pattern.format(stem=slide.stem, name=slide.name)
        if candidate.is_file():
            return candidate
    return None


def resolve_class(
    name: str | None, class_names: Sequence[str], class_map: Mapping[str, str | None] | None
) -> int | None:
    """The model class index an annotation class maps to, or None (ignored)."""
    if name is None:
        return None
    lowered = {k.casefold(): v for k, v in (class_map or {}).items()}
    if name.casefold() in lowered:
        target = lowered[name.casefold()]
        if target is None:
            return None
        matches = [i for i, c in enumerate(class_names) if c.casefold() == target.casefold()]
        if not matches:
            raise ValueError(
                f"annotation class {name!r} maps to {target!r}, which is not one of the "
                f"model's classes {list(class_names)}"
            )
        return matches[0]
    matches = [i for i, c in enumerate(class_names) if c.casefold() == name.casefold()]
    return matches[0] if matches else None


@dataclass
class TileLabels:
    """Labels of a slide's tiles from its annotations.

    Attributes
    ----------
    labels
        ``(n,)`` int64 class index per tile, -1 for unlabelled tiles.
    counts
        Labelled tiles per model class name.
    ignored
        Annotation class names that map to no model class, with their polygon count.
    """

    labels: NDArray[np.int64]
    counts: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)


def tile_labels(
    tiles_l0_xy: NDArray[np.integer] | NDArray[np.floating],
    tile_l0: float,
    regions: Sequence[Region],
    class_names: Sequence[str],
    *,
    class_map: Mapping[str, str | None] | None = None,
    rule: str = "centre",
    min_overlap: float = 0.5,
) -> TileLabels:
    """Label square tiles (top-left corners ``tiles_l0_xy`` (n, 2), side ``tile_l0`` level-0
    pixels) from annotation ``regions``; see the module docstring for the rules.

    Raises
    ------
    ValueError
        An unknown rule, an overlap outside (0, 1], or a ``class_map`` target that is not
        a model class.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be within (0, 1], got {min_overlap}")
    xy = np.asarray(tiles_l0_xy, dtype=np.float64).reshape(-1, 2)
    n = xy.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    ignored: dict[str, int] = {}
    by_class: list[tuple[int, Region]] = []
    for region in regions:
        index = resolve_class(region.class_name, class_names, class_map)
        if index is None:
            key = region.class_name or "(unclassified)"
            ignored[key] = ignored.get(key, 0) + 1
        else:
            by_class.append((index, region))
    if n and by_class:
        if rule == "centre":
            _by_centre(labels, xy + tile_l0 / 2.0, by_class)
        else:
            _by_overlap(labels, xy, float(tile_l0), by_class, min_overlap, len(class_names))
    counts = {name: int((labels == i).sum()) for i, name in enumerate(class_names)}
    return TileLabels(labels, counts, ignored)


def _by_centre(
    labels: NDArray[np.int64], centres: NDArray[np.float64], regions: list[tuple[int, Region]]
) -> None:
    # Largest polygons first, so that smaller (nested) ones overwrite them.
    for index, region in sorted(regions, key=lambda item: -item[1].polygon.area):
        inside = shapely.contains_xy(region.polygon, centres[:, 0], centres[:, 1])
        labels[inside] = index


def _by_overlap(
    labels: NDArray[np.int64],
    corners: NDArray[np.float64],
    side: float,
    regions: list[tuple[int, Region]],
    min_overlap: float,
    n_classes: int,
) -> None:
    tiles = shapely.box(corners[:, 0], corners[:, 1], corners[:, 0] + side, corners[:, 1] + side)
    tree = shapely.STRtree(tiles)
    cover = np.zeros((corners.shape[0], n_classes), dtype=np.float64)
    unions: dict[int, list[object]] = {}
    for index, region in regions:
        unions.setdefault(index, []).append(region.polygon)
    for index, polygons in unions.items():
        union = shapely.union_all(polygons)
        hits = tree.query(union, predicate="intersects")
        if hits.size:
            cover[hits, index] = shapely.area(shapely.intersection(tiles[hits], union)) / side**2
    best = cover.argmax(axis=1)
    share = cover[np.arange(cover.shape[0]), best]
    labels[share >= min_overlap - 1e-12] = best[share >= min_overlap - 1e-12]


def reviewed_for_training(regions: Sequence[Region]) -> list[Region]:
    """The regions a reviewed export (the classify widget's, ``properties.metadata``) lets
    training use: the reviewer's own annotations and the model regions they accepted (with
    their class, a reclassification's included). Model regions still pending, or rejected,
    are left out: the model's own guess is no label, and a rejection says what a region is
    not, not what it is. Regions without that metadata (QuPath's, ours) all count."""
    return [
        r
        for r in regions
        if r.metadata.get("source") != "model" or r.metadata.get("review") == "accepted"
    ]


def read_tile_labels(
    path: str | os.PathLike[str],
    tiles_l0_xy: NDArray[np.integer] | NDArray[np.floating],
    tile_l0: float,
    class_names: Sequence[str],
    *,
    class_map: Mapping[str, str | None] | None = None,
    rule: str = "centre",
    min_overlap: float = 0.5,
) -> TileLabels:
    """:func:`tile_labels` from an annotation file (:class:`~napari_histattn.errors.AnnotationError`
    when it cannot be read); of a reviewed export, only what the reviewer vouched for
    (:func:`reviewed_for_training`)."""
    return tile_labels(
        tiles_l0_xy,
        tile_l0,
        reviewed_for_training(read_geojson_regions(path)),
        class_names,
        class_map=class_map,
        rule=rule,
        min_overlap=min_overlap,
    )
