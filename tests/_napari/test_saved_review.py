"""A saved review read back without a viewer: who reviewed, at which threshold, which
slide it belongs to, and which decisions return to a result of which model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from shapely.geometry import box

from napari_histattn._napari.result_export import read_review
from napari_histattn.errors import AnnotationError, HistattnError
from napari_histattn.inference.review import RegionReview, expert_regions, same_outline
from napari_histattn.io.export import write_geojson
from napari_histattn.io.regions import Region

SLIDE = {"slide_path": "/data/a.svs", "slide_quickhash": "abc", "slide_size_l0_wh": [4000, 3000]}


def _region(rank: int, x: float, **metadata: str) -> Region:
    return Region(box(x, 0, x + 100, 100), class_name="lesion", rank=rank, metadata=metadata)


def _saved(tmp_path: Path, **provenance: object) -> Path:
    review = RegionReview(author="JD")
    model = [_region(1, 0), _region(2, 500), _region(3, 1000)]
    review.decide(model[0], "accepted")
    review.reclassify(model[1], "benign")
    regions = review.apply(model, model="demo_amil")
    regions.append(_region(4, 2000, source="model", model="other", review="rejected"))
    regions += expert_regions([_region(1, 3000)], author="JD")
    provenance = {**SLIDE, "threshold": 0.35, "review": {"author": "JD"}, **provenance}
    return write_geojson(tmp_path / "a_regions.geojson", regions, provenance=provenance)


def test_a_saved_review_gives_back_its_decisions_author_and_threshold(tmp_path: Path) -> None:
    saved = read_review(_saved(tmp_path))
    assert (saved.author, saved.threshold) == ("JD", 0.35)
    assert len(saved.model_regions) == 4 and len(saved.expert) == 1
    assert saved.expert[0].metadata["author"] == "JD"

    review = RegionReview()
    restored, other = saved.restore_into(review, "demo_amil")
    assert (restored, other) == (2, 1)  # the other model's rejection is left out
    assert review.author == "JD"
    applied = review.apply([_region(1, -10), _region(2, 480), _region(3, 1000)])
    assert [r.metadata["review"] for r in applied] == ["accepted", "accepted", "pending"]
    assert applied[1].class_name == "benign" and applied[1].metadata["model_class"] == "lesion"


def test_a_review_of_another_slide_is_refused_by_hash_or_size(tmp_path: Path) -> None:
    saved = read_review(_saved(tmp_path))
    ours = SimpleNamespace(provenance=dict(SLIDE))
    assert saved.misfit(ours) is None  # type: ignore[arg-type]
    other_hash = SimpleNamespace(provenance={**SLIDE, "slide_quickhash": "zzz"})
    assert "a.svs, a different slide" in str(saved.misfit(other_hash))  # type: ignore[arg-type]
    other_size = SimpleNamespace(
        provenance={**SLIDE, "slide_quickhash": None, "slide_size_l0_wh": [10, 10]}
    )
    assert "4000 x 3000 px" in str(saved.misfit(other_size))  # type: ignore[arg-type]


def test_a_plain_qupath_export_is_all_the_experts(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "qupath.geojson", [_region(1, 0), _region(2, 500)])
    saved = read_review(path)
    assert saved.model_regions == [] and len(saved.expert) == 2
    assert saved.author is None and saved.threshold is None
    assert saved.misfit(SimpleNamespace(provenance=SLIDE)) is None  # type: ignore[arg-type]


def test_unreadable_or_empty_files_are_refused_with_the_file_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="bad.geojson"):
        read_review(bad)
    empty = write_geojson(tmp_path / "empty.geojson", [])
    with pytest.raises(HistattnError, match="holds no region"):
        read_review(empty)


def test_outlines_within_half_a_pixel_are_one_and_an_author_is_kept() -> None:
    a = _region(1, 0)
    assert same_outline(a, Region(box(0.3, 0, 100.3, 100)))
    assert not same_outline(a, Region(box(2, 0, 102, 100)))
    kept = expert_regions([_region(1, 0, author="JD"), _region(2, 500)], author="AB")
    assert [r.metadata["author"] for r in kept] == ["JD", "AB"]
