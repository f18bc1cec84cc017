"""Two results on one slide, side by side in numbers: do they make the same call and look at
the same places?

GUI-free; the classify widget states it under the result when a slide has two results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shapely.ops import unary_union

from napari_histattn.io.regions import Region

__all__ = ["Comparison", "compare_regions"]


@dataclass(frozen=True)
class Comparison:
    """How two results on one slide differ.

    Attributes
    ----------
    same_call
        Whether both predicted the same class.
    overlap
        Intersection over union of the two results' top regions (0 when either has none).
    top_match
        Whether the two most attended regions overlap at all.
    """

    same_call: bool
    overlap: float
    top_match: bool

    def line(self, this: str, other: str) -> str:
        """``"vs demo_hatnet: same call; top regions overlap 42% (IoU), #1 regions overlap"``."""
        call = "same call" if self.same_call else "a DIFFERENT call"
        top = "#1 regions overlap" if self.top_match else "#1 regions apart"
        return f"{this} vs {other}: {call}; top regions overlap {self.overlap:.0%} (IoU), {top}"


def compare_regions(
    call_a: str, regions_a: Sequence[Region], call_b: str, regions_b: Sequence[Region], top: int = 5
) -> Comparison:
    """Compare two results by their calls and their ``top`` regions (level-0 pixels)."""
    best_a = sorted(regions_a, key=lambda r: r.rank)[:top]
    best_b = sorted(regions_b, key=lambda r: r.rank)[:top]
    if not best_a or not best_b:
        return Comparison(call_a == call_b, 0.0, False)
    union_a = unary_union([r.polygon for r in best_a])
    union_b = unary_union([r.polygon for r in best_b])
    both = union_a.union(union_b).area
    overlap = union_a.intersection(union_b).area / both if both > 0 else 0.0
    top_match = best_a[0].polygon.intersects(best_b[0].polygon)
    return Comparison(call_a == call_b, float(overlap), bool(top_match))
