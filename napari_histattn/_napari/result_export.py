"""A reviewed result to files: QuPath GeoJSON of the model's regions with the reviewer's
decisions and the reviewer's own annotations, the patches as CSV, optional PNG crops;
and such a review read back (:func:`read_review`), to carry on with it another day.

GUI-free (no Qt, no napari), so that the classify widget and tests share it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_histattn.errors import HistattnError
from napari_histattn.inference.review import RegionReview, split_review
from napari_histattn.io.export import (
    read_geojson_document,
    write_geojson,
    write_patches_csv,
    write_region_crops,
)
from napari_histattn.io.export.exportset import ExportSet
from napari_histattn.io.regions import Region

if TYPE_CHECKING:
    from napari_histattn.inference.result import ClassificationResult
    from napari_histattn.io.slide import Slide

__all__ = [
    "SavedReview",
    "default_export_path",
    "export_paths",
    "export_result",
    "model_label",
    "read_review",
]


def model_label(result: ClassificationResult) -> str:
    """The model's short name in layer names and exports: the checkpoint file's stem."""
    path = result.provenance.get("checkpoint_path")
    return Path(str(path)).stem if path else str(result.provenance.get("model_name", "model"))


def default_export_path(slide_path: Path) -> Path:
    """Where a slide's review is saved by default: ``<slide stem>_regions.geojson`` beside
    it (an annotation file for ``histattn train --annotations`` and ``histattn finetune``)."""
    return slide_path.with_name(f"{slide_path.stem}_regions.geojson")


def export_paths(geojson_path: str | os.PathLike[str]) -> dict[str, Path]:
    """Files of an export named after the GeoJSON: ``<stem>.geojson``, ``<stem>_patches.csv``, ``<stem>_crops/``."""
    target = Path(geojson_path)
    if target.suffix.lower() != ".geojson":
        target = target.with_name(target.name + ".geojson")
    return {
        "geojson": target,
        "csv": target.with_name(f"{target.stem}_patches.csv"),
        "crops": target.with_name(f"{target.stem}_crops"),
    }


def export_result(
    result: ClassificationResult,
    slide: Slide,
    geojson_path: str | os.PathLike[str],
    *,
    regions: Sequence[Region] | None = None,
    threshold: float | None = None,
    crops: bool = False,
    review: RegionReview | None = None,
    expert: Sequence[Region] = (),
) -> dict[str, Path]:
    """Write a result's regions as QuPath GeoJSON, its patches as CSV, optionally PNG crops.

    Every feature says who made it in its ``metadata``
    (:mod:`napari_histattn.inference.review`): the model's regions carry the reviewer's
    decision and class, the reviewer's own annotations follow them.

    Parameters
    ----------
    result
        The classification.
    slide
        Its slide (mpp for the GeoJSON, pixels for the crops).
    geojson_path
        The GeoJSON file (its folder is created if missing); the CSV and the crop
        folder are named after it (:func:`export_paths`).
    regions, threshold
        The regions to write and the threshold they were made with (the widget's
        slider); default ``result.regions`` and ``result.threshold``.
    crops
        Also write full-resolution PNG crops of the model's regions.
    review
        The reviewer's decisions on the regions (none: every region is pending).
    expert
        The reviewer's own annotations, in level-0 pixels, marked by
        :func:`~napari_histattn.inference.review.expert_regions`.

    Returns
    -------
    dict of str to Path
        ``"geojson"``, ``"csv"`` and, with ``crops``, ``"crop_<rank>"``.

    Raises
    ------
    ExportError
        A file cannot be written, or another export into the folder is running.
        The files are one set (:class:`~napari_histattn.io.export.exportset.ExportSet`):
        an earlier export of the same name is left intact on failure, and its
        crops of regions this export does not write are removed on success.
    """
    paths = export_paths(geojson_path)
    folder = paths["geojson"].parent
    chosen = list(result.regions if regions is None else regions)
    provenance = {
        **result.provenance,
        "predicted_class": result.predicted_class,
        "probabilities": result.probabilities_by_class,
        "threshold": result.threshold if threshold is None else float(threshold),
    }
    names = {key: path.name for key, path in paths.items()}
    review = RegionReview() if review is None else review
    features = review.apply(chosen, model=model_label(result)) + list(expert)
    provenance["review"] = {
        "author": review.author,
        **review.counts(chosen),
        "expert_annotations": len(expert),
    }
    with ExportSet(folder, paths["geojson"].stem) as staged:
        write_geojson(
            staged.path(names["geojson"]), features, provenance=provenance, mpp_xy=slide.mpp_xy
        )
        write_patches_csv(
            staged.path(names["csv"]),
            result.patches,
            class_names=result.class_names,
            unreadable=None if result.unreadable is None else result.unreadable.tolist(),
        )
        crop_names: list[str] = []
        if crops and chosen:
            w, h = slide.level_dimensions[0]
            files = write_region_crops(
                staged.path(names["crops"]),
                chosen,
                slide.read_region,
                top_k=len(chosen),
                slide_l0_wh=(w, h),
            )
            crop_names = [f"{names['crops']}/{f.name}" for f in files]
    written = {"geojson": folder / names["geojson"], "csv": folder / names["csv"]}
    ranked = sorted(chosen, key=lambda r: r.rank)
    written.update({f"crop_{r.rank}": folder / n for r, n in zip(ranked, crop_names, strict=False)})
    return written


@dataclass(frozen=True)
class SavedReview:
    """A review read back from its GeoJSON (:func:`export_result`'s, or QuPath's).

    Attributes
    ----------
    path
        The file.
    model_regions
        The model's regions with the decisions made on them (``source = "model"``).
    expert
        The reviewer's own annotations (everything else: a plain QuPath export is all
        the expert's), in level-0 pixels.
    provenance
        The export's provenance (slide, model, threshold, review counts), ``{}`` for a
        file that has none.
    """

    path: Path
    model_regions: list[Region]
    expert: list[Region]
    provenance: dict[str, Any]

    @property
    def author(self) -> str | None:
        """Who reviewed, as the export recorded it."""
        review = self.provenance.get("review")
        author = review.get("author") if isinstance(review, Mapping) else None
        return str(author) if author else None

    @property
    def threshold(self) -> float | None:
        """The region threshold the model's regions were exported at."""
        try:
            value = float(self.provenance["threshold"])
        except (KeyError, TypeError, ValueError):
            return None
        return value if 0.0 < value < 1.0 else None

    def misfit(self, result: ClassificationResult) -> str | None:
        """Why this review cannot be of ``result``'s slide (another slide by its quick
        hash, or another size: its coordinates would land elsewhere), or None."""
        theirs, ours = self.provenance, result.provenance
        slide = Path(str(theirs.get("slide_path") or "another slide")).name
        hashes = theirs.get("slide_quickhash"), ours.get("slide_quickhash")
        if all(hashes) and hashes[0] != hashes[1]:
            return f"it is the review of {slide}, a different slide (its quick hash differs)"
        sizes = theirs.get("slide_size_l0_wh"), ours.get("slide_size_l0_wh")
        if all(sizes) and [int(v) for v in sizes[0]] != [int(v) for v in sizes[1]]:  # type: ignore[union-attr]
            w, h = (int(v) for v in sizes[0])  # type: ignore[union-attr]
            return f"it is the review of {slide}, {w} x {h} px at level 0, a different slide"
        return None

    def restore_into(self, review: RegionReview, model: str) -> tuple[int, int]:
        """Put the decisions on ``model``'s regions back into ``review`` (the author too,
        when it has none); returns ``(decisions restored, regions of other models left
        out)``. Decisions are tied to points, so they land on today's regions of the
        same model whatever the threshold."""
        mine = [r for r in self.model_regions if r.metadata.get("model") in (None, model)]
        before = len(review.decisions)
        review.restore(mine)
        if review.author is None and self.author:
            review.author = self.author
        return len(review.decisions) - before, len(self.model_regions) - len(mine)


def read_review(path: str | os.PathLike[str]) -> SavedReview:
    """Read a saved review (the model's regions with decisions, and the expert's own).

    Raises
    ------
    AnnotationError
        The file is not GeoJSON with valid polygons (the message names it).
    HistattnError
        It holds no region at all.
    """
    source = Path(path)
    regions, properties = read_geojson_document(source)
    if not regions:
        raise HistattnError(f"{source} holds no region to restore")
    model_regions, expert = split_review(regions)
    provenance = properties.get("provenance")
    return SavedReview(
        source, model_regions, expert, dict(provenance) if isinstance(provenance, dict) else {}
    )
