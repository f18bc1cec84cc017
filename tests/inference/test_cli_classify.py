"""``histattn classify`` and ``histattn batch`` end to end on a generated slide."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from napari_histattn.cli import main
from napari_histattn.cli.batch import list_slides
from napari_histattn.errors import HistattnError
from napari_histattn.inference.engine import classify
from napari_histattn.progress import run_to_completion


@pytest.mark.parametrize("name", ["attention_sampling", "amil"])
def test_cli_classify_matches_the_python_api(
    name, lesion_slide, checkpoint_paths, tmp_path, capsys
) -> None:
    ck = checkpoint_paths[name]
    out = tmp_path / "out"
    code = main(
        ["classify", str(lesion_slide.path), "--checkpoint", str(ck), "--out", str(out)]
        + ["--seed", "11", "--device", "cpu", "--top-k", "3", "--quiet"]
        + (["--contrast", "percentile"] if name == "amil" else [])
    )
    assert code == 0
    printed = capsys.readouterr().out

    api = run_to_completion(classify(lesion_slide.path, ck, device="cpu", seed=11, top_k=3))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted_class"] == api.predicted_class
    assert summary["probabilities"] == pytest.approx(api.probabilities_by_class, abs=1e-12)
    assert np.array_equal(np.load(out / "attention.npy"), api.attention, equal_nan=True)
    assert len(summary["regions"]) == len(api.regions) <= 3
    contrast = "1-99 percentile" if name == "amil" else "full range"
    assert summary["heatmap"]["contrast"] == contrast
    assert api.predicted_class in printed and str(out) in printed
    for file in ("heatmap.png", "regions.geojson", "patches.csv"):
        assert (out / file).is_file()


def test_cli_classify_errors_are_reported_not_raised(lesion_slide, tmp_path, capsys) -> None:
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"\x80\x04.")
    code = main(
        ["classify", str(lesion_slide.path), "--checkpoint", str(bad), "--out", str(tmp_path / "o")]
    )
    assert code == 1
    assert "pickle" in capsys.readouterr().err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_batch_continues_past_a_bad_slide(lesion_slide, checkpoint_paths, tmp_path, capsys) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(lesion_slide.path, slides / "good.tiff")
    (slides / "broken.svs").write_bytes(b"this is not a slide" * 50)
    (slides / "notes.txt").write_text("ignored: not a slide extension")
    out = tmp_path / "batch"
    code = main(
        ["batch", str(slides), "--checkpoint", str(checkpoint_paths["amil"]), "--out", str(out)]
        + ["--device", "cpu", "--quiet"]
    )
    assert code == 1  # one slide failed
    with open(out / "batch_summary.csv", newline="") as handle:
        rows = {row["slide"].rsplit("/", 1)[-1]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"good.tiff", "broken.svs"}
    assert rows["broken.svs"]["status"] == "failed" and "broken.svs" in rows["broken.svs"]["error"]
    good = rows["good.tiff"]
    assert good["status"] == "ok" and good["predicted_class"] in ("benign", "lesion")
    assert float(good["prob_benign"]) + float(good["prob_lesion"]) == pytest.approx(1.0)
    assert (out / "good" / "summary.json").is_file()
    assert not (out / "broken").exists()
    assert "FAILED" in capsys.readouterr().err


def test_batch_reads_a_csv_of_slides(lesion_slide, tmp_path) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text(f"slide,label\n{lesion_slide.path},1\nrelative/other.svs,0\n")
    assert list_slides(listing) == [lesion_slide.path, tmp_path / "relative" / "other.svs"]
    plain = tmp_path / "plain.csv"
    plain.write_text(f"{lesion_slide.path}\n")
    assert list_slides(plain) == [lesion_slide.path]
    with pytest.raises(HistattnError):
        list_slides(tmp_path / "nothing-here")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HistattnError, match="no slides"):
        list_slides(empty)
