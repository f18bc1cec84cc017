"""A pathologist's annotations as tile labels: hand-made polygons with known answers (nested,
partial, unclassified, QuPath's format), and `histattn train --annotations` end to end on
cached features, in one and two stages."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from napari_histattn.io.regions import Region
from napari_histattn.io.tile_labels import find_annotations, read_tile_labels, tile_labels

CLASSES = ["benign", "lesion"]
SIDE = 100.0
# A 10 x 10 grid of 100-px tiles; tile (r, c) has its top-left corner at (100 c, 100 r).
RC = np.array([(r, c) for r in range(10) for c in range(10)])
XY = RC[:, ::-1] * SIDE


def _at(labels: np.ndarray, r: int, c: int) -> int:
    return int(labels[r * 10 + c])


def _region(polygon: Polygon, name: str | None) -> Region:
    return Region(polygon=polygon, class_name=name, color_rgb=None, rank=1, measurements={})


def test_centre_rule_nested_polygons_and_unannotated_tissue():
    normal = _region(box(0, 0, 1000, 600), "Normal")  # rows 0-5
    tumour = _region(box(200, 200, 500, 500), "Tumor")  # tiles rows 2-4, cols 2-4
    stroma = _region(box(0, 800, 300, 1000), "Stroma")  # no mapping: ignored
    loose = _region(box(700, 700, 1000, 1000), None)  # unclassified: ignored
    found = tile_labels(
        XY,
        SIDE,
        [normal, tumour, stroma, loose],
        CLASSES,
        class_map={"tumor": "lesion", "NORMAL": "benign"},
    )
    lab = found.labels
    assert {_at(lab, r, c) for r in range(2, 5) for c in range(2, 5)} == {1}
    assert _at(lab, 0, 0) == 0 and _at(lab, 5, 9) == 0 and _at(lab, 1, 4) == 0
    # Rows 6-9 are outside every mapped annotation: unlabelled, not benign.
    assert set(lab[60:].tolist()) == {-1}
    assert found.counts == {"lesion": 9, "benign": 60 - 9}
    assert found.ignored == {"Stroma": 1, "(unclassified)": 1}


def test_overlap_rule_needs_the_covered_share():
    # Covers column 3 fully and 40 % of column 4, rows 0-1.
    tumour = _region(box(300, 0, 440, 200), "lesion")
    half = tile_labels(XY, SIDE, [tumour], CLASSES, rule="overlap", min_overlap=0.5).labels
    assert _at(half, 0, 3) == 1 and _at(half, 1, 3) == 1 and _at(half, 0, 4) == -1
    loose = tile_labels(XY, SIDE, [tumour], CLASSES, rule="overlap", min_overlap=0.3).labels
    assert _at(loose, 0, 4) == 1
    # Centre rule: column 4's centre (450) is outside.
    assert _at(tile_labels(XY, SIDE, [tumour], CLASSES).labels, 0, 4) == -1
    with pytest.raises(ValueError, match="rule"):
        tile_labels(XY, SIDE, [tumour], CLASSES, rule="inside")
    with pytest.raises(ValueError, match="not one of the model's classes"):
        tile_labels(XY, SIDE, [tumour], CLASSES, class_map={"lesion": "tumour"})


def _qupath_feature(ring: list[list[float]], name: str) -> dict:
    return {
        "type": "Feature",
        "id": "a1b2",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "annotation",
            "classification": {"name": name, "colorRGB": -3670016},
            "isLocked": False,
        },
    }


def test_a_qupath_export_beside_the_slide_is_found_and_read(tmp_path: Path):
    ring = [[200.0, 200.0], [500.0, 200.0], [500.0, 500.0], [200.0, 500.0], [200.0, 200.0]]
    (tmp_path / "case-7.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [_qupath_feature(ring, "Tumor")]})
    )
    (tmp_path / "case-8.svs.json").write_text(json.dumps([_qupath_feature(ring, "Tumor")]))
    assert find_annotations(tmp_path / "case-7.svs", tmp_path) == tmp_path / "case-7.geojson"
    assert find_annotations(tmp_path / "case-8.svs", tmp_path) == tmp_path / "case-8.svs.json"
    assert find_annotations(tmp_path / "case-9.svs", tmp_path) is None  # unannotated
    found = read_tile_labels(
        tmp_path / "case-7.geojson", XY, SIDE, CLASSES, class_map={"Tumor": "lesion"}
    )
    assert found.counts == {"benign": 0, "lesion": 9}


def test_a_review_export_trains_on_what_the_reviewer_vouched_for(tmp_path: Path):
    """The classify widget's export beside the slide: accepted and reclassified model
    regions and the reviewer's own outlines label tiles; pending and rejected ones do not."""
    from napari_histattn.inference.review import RegionReview, expert_regions
    from napari_histattn.io.export import write_geojson

    accepted = _region(box(0, 0, 300, 300), "lesion")  # tiles rows 0-2, cols 0-2
    rejected = _region(box(600, 0, 900, 300), "lesion")
    pending = _region(box(0, 600, 300, 900), "lesion")
    relabelled = _region(box(600, 600, 900, 900), "lesion")
    review = RegionReview(author="JD")
    review.decide(accepted, "accepted")
    review.decide(rejected, "rejected")
    review.reclassify(relabelled, "benign")
    mine = expert_regions([_region(box(400, 400, 500, 500), "lesion")], author="JD")
    model = review.apply([accepted, rejected, pending, relabelled], model="demo")
    write_geojson(tmp_path / "case-1_regions.geojson", model + mine)
    found_file = find_annotations(tmp_path / "case-1.svs", tmp_path)
    assert found_file == tmp_path / "case-1_regions.geojson"
    lab = read_tile_labels(found_file, XY, SIDE, CLASSES).labels
    assert {_at(lab, r, c) for r in range(3) for c in range(3)} == {1}  # accepted
    assert {_at(lab, r, c) for r in range(6, 9) for c in range(6, 9)} == {0}  # reclassified
    assert _at(lab, 4, 4) == 1  # the reviewer's own outline
    assert {_at(lab, r, c) for r in range(3) for c in range(6, 9)} == {-1}  # rejected
    assert {_at(lab, r, c) for r in range(6, 9) for c in range(3)} == {-1}  # pending


# ----------------------------------------------------------------- end to end on cached features


@pytest.fixture(scope="module")
def annotated_cohort(tmp_path_factory: pytest.TempPathFactory):
    """Slides whose lesions are small (one lesion among normal tissue), their labels CSV, the
    generator's ground truth as annotations for half of the slides, and cached features."""
    from napari_histattn.cli import main
    from napari_histattn.io.synthetic import generate_synthetic_slide

    folder = tmp_path_factory.mktemp("annotated")
    notes = folder / "annotations"
    notes.mkdir()
    rows = []
    for i in range(12):
        lesion = i % 2 == 0
        made = generate_synthetic_slide(
            folder / f"a{i:02d}.tiff",
            1024,
            1024,
            seed=300 + i,
            n_lesions=1 if lesion else 0,
            lesion_radius_px=90,
            n_lookalikes=0,
            mpp=1.0,
        )
        rows.append([made.path.name, "lesion" if lesion else "benign", f"p{i}"])
        if i % 4 in (0, 1):  # partial annotation: half of the slides
            (notes / f"a{i:02d}.geojson").write_bytes(made.geojson_path.read_bytes())
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as fh:
        csv.writer(fh).writerows([["slide", "label", "patient"], *rows])
    feats = folder / "features"
    assert main(["features", str(labels), "--encoder", "tiny", "--out", str(feats), "--quiet"]) == 0
    return labels, notes, feats


@pytest.mark.parametrize("stage1", [0, 3])
def test_train_with_annotations_records_them_and_uses_the_annotated_tiles(
    annotated_cohort, tmp_path: Path, stage1: int, capsys
):
    from napari_histattn.cli import main
    from napari_histattn.models import checkpoint

    labels, notes, feats = annotated_cohort
    out = tmp_path / "run"
    argv = ["train", "--labels", str(labels), "--features", str(feats), "--model", "amil"]
    argv += ["--folds", "1", "--epochs", "4", "--lr", "2e-3", "--out", str(out), "--quiet"]
    argv += ["--annotations", str(notes), "--annotation-class", "tissue=benign"]
    argv += ["--stage1-epochs", str(stage1)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "annotated slide(s)" in printed and "lookalike" not in printed
    meta = checkpoint.read_metadata(out / "fold-1" / "model.safetensors")
    used = meta["training"]["annotations"]
    assert used["annotated_slides"] >= 1 and used["labelled_tiles"]["lesion"] > 0
    assert used["labelled_tiles"]["benign"] > used["labelled_tiles"]["lesion"]
    assert meta["training"]["stage1_epochs"] == stage1
    assert "calibration" in meta and meta["training"]["decision"]["chosen"]


def test_annotations_for_a_model_without_tiles_and_bad_options_are_usage_errors(
    annotated_cohort, tmp_path: Path
):
    from napari_histattn.cli import main

    labels, notes, feats = annotated_cohort
    base = ["train", "--labels", str(labels), "--model", "amil", "--out", str(tmp_path / "x")]
    assert main([*base, "--stage1-epochs", "2"]) != 0
    assert main([*base, "--annotations", str(tmp_path / "missing")]) != 0
    argv = [*base, "--features", str(feats), "--annotations", str(notes), "--folds", "1"]
    assert main([*argv, "--annotation-class", "tissue=stroma", "--epochs", "1"]) != 0
