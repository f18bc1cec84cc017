"""Fine-tuning on a reviewer's corrections: which marks label what, that the attention moves
onto the reviewer's lesions, that the saved checkpoint shows in Classify what was measured,
and the refusals."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shapely.geometry import box

from napari_histattn.errors import HistattnError
from napari_histattn.inference.review import RegionReview, expert_regions
from napari_histattn.io.export.geojson import write_geojson
from napari_histattn.io.grid import Region
from napari_histattn.progress import run_to_completion
from napari_histattn.training.corrections import (
    correction_marks,
    default_output,
    fine_tune_on_corrections,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from inference_helpers import make_checkpoint  # noqa: E402

CLASSES = ["benign", "lesion"]


@pytest.fixture(scope="module")
def corrected(tmp_path_factory: pytest.TempPathFactory, review_scene: Any) -> dict[str, Path]:
    """A generated slide, an untrained A-MIL checkpoint and a review export: two of the
    three lesions outlined by the reviewer, the look-alike outlined as benign."""
    folder = tmp_path_factory.mktemp("corrections")
    path = review_scene.copy_to(folder, "slide.tiff")
    lesions = [Region(p, class_name="lesion") for p in review_scene.lesions]
    lookalikes = [Region(p, class_name="benign") for p in review_scene.lookalikes]
    marks = expert_regions(lesions[:2] + lookalikes, author="JD")
    export = write_geojson(folder / "slide_regions.geojson", marks)
    return {
        "slide": path,
        "export": export,
        "checkpoint": make_checkpoint(folder, "amil", seed=0),
        "folder": folder,
    }


def _region(x: float, cls: str, **meta: str) -> Region:
    return Region(box(x, 0, x + 100, 100), class_name=cls, metadata=meta)


def test_decisions_and_outlines_become_marks() -> None:
    review = RegionReview(author="JD")
    accepted, rejected, pending, reclassified = (_region(x, "lesion") for x in (0, 200, 400, 600))
    review.decide(accepted, "accepted")
    review.decide(rejected, "rejected")
    review.reclassify(reclassified, "benign")
    regions = review.apply([accepted, rejected, pending, reclassified], model="demo")
    regions += expert_regions([_region(800, "lesion")], author="JD")
    marks = correction_marks(regions, CLASSES)
    by_x = {int(m.polygon.bounds[0]): m.class_name for m in marks}
    # accepted keeps its class, a rejection is the other class, pending labels nothing,
    # a reclassification is the reviewer's class, an outline its own
    assert by_x == {0: "lesion", 200: "benign", 600: "benign", 800: "lesion"}
    # with three classes a rejection says nothing about what the region is
    assert 200 not in {int(m.polygon.bounds[0]) for m in correction_marks(regions, [*CLASSES, "x"])}


def test_fine_tuning_moves_the_attention_onto_the_reviewers_lesions(corrected) -> None:
    from napari_histattn.inference.engine import classify
    from napari_histattn.inference.localisation import tissue_localisation_auc
    from napari_histattn.io.export.geojson_read import read_geojson_regions
    from napari_histattn.models.checkpoint import load, read_metadata

    out = corrected["folder"] / "tuned.safetensors"
    tuned = run_to_completion(
        fine_tune_on_corrections(
            corrected["checkpoint"], corrected["slide"], corrected["export"], out, device="cpu"
        )
    )
    # the untrained attention ranked the marked lesions below the rest; now above
    assert tuned.auc_before < 0.5 < 0.9 < tuned.auc_after
    assert tuned.record["marked_tiles"]["lesion"] > 0 and tuned.record["marked_tiles"]["benign"] > 0
    assert tuned.record["loss_last"] < tuned.record["loss_first"]
    assert f"{tuned.auc_before:.2f} -> {tuned.auc_after:.2f}" in tuned.summary()

    record = read_metadata(out)["training"]["fine_tuned"][-1]
    assert record["from_sha256"] == load(corrected["checkpoint"], device="cpu").sha256
    assert record["localisation_auc_after"] == pytest.approx(tuned.auc_after)
    # the encoder was not touched: only attention and head changed
    before, after = load(corrected["checkpoint"], "cpu").model, load(out, "cpu").model
    for name, value in before.encoder.state_dict().items():
        assert np.array_equal(value.numpy(), after.encoder.state_dict()[name].numpy()), name

    # Classify with the new checkpoint shows what was measured: the same localisation
    lesions = [
        r.polygon for r in read_geojson_regions(corrected["export"]) if r.class_name == "lesion"
    ]
    result = run_to_completion(classify(corrected["slide"], out, device="cpu"))
    auc, cells = tissue_localisation_auc(result, lesions)
    assert cells > 0 and auc == pytest.approx(tuned.auc_after, abs=1e-6)


def test_corrections_that_mark_one_class_only_are_refused(corrected, tmp_path) -> None:
    only = tmp_path / "slide_regions.geojson"
    regions = expert_regions([Region(box(700, 700, 1300, 1300), class_name="lesion")], author="JD")
    write_geojson(only, regions)
    gen = fine_tune_on_corrections(corrected["checkpoint"], corrected["slide"], only, device="cpu")
    with pytest.raises(HistattnError, match="mark only 'lesion' tiles; mark what is not"):
        run_to_completion(gen)


def test_other_families_and_a_cancel_leave_nothing_behind(corrected, tmp_path) -> None:
    from napari_histattn.inference.errors import Cancelled

    hatnet = make_checkpoint(tmp_path, "hatnet")
    with pytest.raises(HistattnError, match="needs an A-MIL checkpoint"):
        run_to_completion(fine_tune_on_corrections(hatnet, corrected["slide"], corrected["export"]))
    cancel = threading.Event()
    out = tmp_path / "never.safetensors"
    gen = fine_tune_on_corrections(
        corrected["checkpoint"], corrected["slide"], corrected["export"], out, cancel=cancel
    )
    with pytest.raises(Cancelled):
        for report in gen:
            if report.stage == "fine-tune":
                cancel.set()
    assert not out.exists()
    assert default_output("m/demo.safetensors", "a/b/s.svs") == Path("a/b/demo+s.safetensors")


def test_the_command_line_fine_tunes_and_reports(corrected, capsys) -> None:
    from napari_histattn.cli import main

    out = corrected["folder"] / "cli.safetensors"
    argv = ["finetune", str(corrected["checkpoint"]), str(corrected["slide"])]
    argv += [str(corrected["export"]), "--out", str(out), "--quiet", "--epochs", "20"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "marked tiles: benign" in printed and "localisation against your lesion marks" in printed
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert main(["finetune", str(corrected["checkpoint"]), str(corrected["slide"]), "none"]) == 1
    assert "corrections none is not a file" in capsys.readouterr().err
