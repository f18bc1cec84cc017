"""A pathologist's review of what the model attended to: decisions on its regions, and
their own annotations beside them.

GUI-free, so that the review panel, the export and the command line share one
meaning. A decision is tied to a point of the region it was made on (level-0
pixels), not to the region's rank or name: moving the region threshold rebuilds
the regions, and a decision stays with the region that still holds its point.

Everything leaves as :class:`~napari_histattn.io.regions.Region` objects whose
``metadata`` says who made them, in QuPath's object-metadata convention:

* model regions: ``source = "model"``, ``model`` (checkpoint name), ``review``
  (``pending``, ``accepted`` or ``rejected``), ``model_class`` when the reviewer
  gave another class (the region's class is then the reviewer's), ``author``;
* expert annotations: ``source = "expert"``, ``author``.

:func:`split_review` reads such regions back (a re-imported export).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from shapely.geometry import Point

from napari_histattn.errors import HistattnError
from napari_histattn.io.regions import Region

__all__ = [
    "DECISIONS",
    "Decision",
    "RegionReview",
    "expert_regions",
    "same_outline",
    "split_review",
]

#: What a reviewer can say about a model region.
DECISIONS = ("pending", "accepted", "rejected")


@dataclass(frozen=True)
class Decision:
    """A reviewer's word on one model region.

    Attributes
    ----------
    decision
        One of :data:`DECISIONS`.
    class_name
        The reviewer's class, when it differs from the model's (a reclassification).
    anchor_l0_xy
        A point inside the region it was made on, in level-0 pixels.
    """

    decision: str
    anchor_l0_xy: tuple[float, float]
    class_name: str | None = None


def _anchor(region: Region) -> tuple[float, float]:
    point = region.polygon.representative_point()
    return (float(point.x), float(point.y))


@dataclass
class RegionReview:
    """Decisions on a result's attended regions, by one reviewer.

    Attributes
    ----------
    author
        Who reviewed (written with every decision), or None.
    decisions
        The decisions made so far, in order; a later one on the same region wins.
    """

    author: str | None = None
    decisions: list[Decision] = field(default_factory=list)

    def decide(self, region: Region, decision: str, *, class_name: str | None = None) -> Decision:
        """Record ``decision`` on ``region`` (and the reviewer's class, if any).

        Raises
        ------
        HistattnError
            ``decision`` is not one of :data:`DECISIONS`.
        """
        if decision not in DECISIONS:
            raise HistattnError(
                f"a review decision is one of {', '.join(DECISIONS)}, not {decision!r}"
            )
        if class_name == region.class_name:
            class_name = None
        made = Decision(decision, _anchor(region), class_name)
        previous = self.decision_for(region)
        if previous is not None and class_name is None and decision != "pending":
            made = replace(made, class_name=previous.class_name)  # accepting keeps a new class
        self.decisions.append(made)
        return made

    def reclassify(self, region: Region, class_name: str) -> Decision:
        """The reviewer says the region is ``class_name`` (which accepts it)."""
        return self.decide(region, "accepted", class_name=class_name)

    def decision_for(self, region: Region) -> Decision | None:
        """The latest decision whose point lies in ``region``, or None."""
        for made in reversed(self.decisions):
            if region.polygon.covers(Point(made.anchor_l0_xy)):
                return made
        return None

    def counts(self, regions: Iterable[Region]) -> dict[str, int]:
        """How many of ``regions`` are pending, accepted and rejected."""
        out = dict.fromkeys(DECISIONS, 0)
        for region in regions:
            made = self.decision_for(region)
            out["pending" if made is None else made.decision] += 1
        return out

    def apply(self, regions: Sequence[Region], *, model: str | None = None) -> list[Region]:
        """``regions`` with their decisions: the reviewer's class where they gave one and
        the metadata the module docstring lists."""
        out = []
        for region in regions:
            made = self.decision_for(region)
            metadata = {**region.metadata, "source": "model"}
            if model:
                metadata["model"] = model
            metadata["review"] = "pending" if made is None else made.decision
            if self.author and made is not None:
                metadata["author"] = self.author
            class_name = region.class_name
            if made is not None and made.class_name is not None:
                metadata["model_class"] = str(region.class_name)
                class_name = made.class_name
            out.append(
                replace(
                    region,
                    class_name=class_name,
                    color_rgb=None if class_name != region.class_name else region.color_rgb,
                    metadata=metadata,
                )
            )
        return out

    def restore(self, regions: Iterable[Region]) -> None:
        """Take the decisions back from reviewed regions (:meth:`apply`'s output, re-imported)."""
        for region in regions:
            decision = region.metadata.get("review")
            if decision in DECISIONS and decision != "pending":
                changed = "model_class" in region.metadata
                self.decisions.append(
                    Decision(decision, _anchor(region), region.class_name if changed else None)
                )


#: Two outlines closer than this (level-0 pixels, Hausdorff distance) are one annotation.
SAME_OUTLINE_PX = 0.5


def same_outline(a: Region, b: Region) -> bool:
    """Whether two regions are the same outline (within :data:`SAME_OUTLINE_PX`): an
    annotation loaded twice, or open both as a re-opened file and in the annotations layer."""
    return bool(a.polygon.hausdorff_distance(b.polygon) <= SAME_OUTLINE_PX)


def expert_regions(regions: Iterable[Region], *, author: str | None = None) -> list[Region]:
    """A reviewer's own annotations, marked as theirs (``source = "expert"``); one that
    records its author already (re-imported from another reviewer's export) keeps it."""
    out = []
    for index, region in enumerate(regions, start=1):
        metadata = {**region.metadata, "source": "expert"}
        if author and not metadata.get("author"):
            metadata["author"] = author
        name = region.name if region.name and not region.name.startswith("Attention") else None
        out.append(
            replace(region, name=name or f"Annotation {index}", rank=index, metadata=metadata)
        )
    return out


def split_review(regions: Iterable[Region]) -> tuple[list[Region], list[Region]]:
    """Re-imported regions as ``(model regions, expert annotations)``; regions without a
    ``source`` (a plain QuPath export) count as the expert's."""
    model: list[Region] = []
    expert: list[Region] = []
    for region in regions:
        (model if region.metadata.get("source") == "model" else expert).append(region)
    return model, expert
