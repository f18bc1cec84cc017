"""A reviewer's decisions: tied to the region's place, applied to export, read back."""

from __future__ import annotations

import pytest
from shapely.geometry import box

from napari_histattn.errors import HistattnError
from napari_histattn.inference.compare import compare_regions
from napari_histattn.inference.review import RegionReview, expert_regions, split_review
from napari_histattn.io.regions import Region


def _region(rank: int, x: float, size: float = 100.0, cls: str = "lesion") -> Region:
    return Region(polygon=box(x, 0, x + size, size), class_name=cls, rank=rank)


def test_decisions_follow_the_region_through_a_new_threshold() -> None:
    review = RegionReview(author="JD")
    first, second = _region(1, 0), _region(2, 500)
    review.decide(first, "accepted")
    review.reclassify(second, "benign")
    # A lower threshold: regions grow and change rank; each decision stays with its place.
    grown = [_region(1, 450, 200), _region(2, -20, 160)]
    applied = review.apply(grown, model="demo")
    assert [r.metadata["review"] for r in applied] == ["accepted", "accepted"]
    assert applied[0].class_name == "benign" and applied[0].metadata["model_class"] == "lesion"
    assert applied[1].class_name == "lesion" and "model_class" not in applied[1].metadata
    assert applied[0].metadata["author"] == "JD" and applied[0].metadata["model"] == "demo"
    assert review.counts(grown + [_region(3, 2000)]) == {"pending": 1, "accepted": 2, "rejected": 0}
    # A later decision on the same place wins; accepting again keeps the new class.
    review.decide(grown[0], "rejected")
    review.decide(grown[0], "accepted")
    assert review.apply(grown)[0].class_name == "benign"
    with pytest.raises(HistattnError, match="one of pending, accepted, rejected"):
        review.decide(first, "maybe")


def test_reviewed_and_expert_regions_split_and_restore() -> None:
    review = RegionReview(author="JD")
    regions = [_region(1, 0), _region(2, 500)]
    review.decide(regions[1], "rejected")
    mine = expert_regions([_region(9, 1000, cls="lesion")], author="JD")
    assert mine[0].name == "Annotation 1" and mine[0].metadata == {
        "source": "expert",
        "author": "JD",
    }
    model, expert = split_review(review.apply(regions) + mine)
    assert len(model) == 2 and expert == mine
    again = RegionReview()
    again.restore(model)
    assert [d.decision for d in again.decisions] == ["rejected"]
    assert again.apply(regions)[1].metadata["review"] == "rejected"


def test_comparison_states_call_and_overlap() -> None:
    a = [_region(1, 0), _region(2, 500)]
    b = [_region(1, 50), _region(2, 2000)]
    diff = compare_regions("lesion", a, "benign", b)
    assert not diff.same_call and diff.top_match
    # overlap: 50x100 shared of (2 + 2) x 100 x 100 less the shared part
    assert diff.overlap == pytest.approx(5000 / (40000 - 5000))
    assert "a DIFFERENT call" in diff.line("x", "y")
    assert compare_regions("lesion", a, "lesion", []).overlap == 0.0
