"""Placeholder pixels never become a confident answer: undecodable tiles are counted,
reported in every output, and beyond 1 % of what the model read the call is withheld."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_histattn.cli import main
from napari_histattn.inference.engine import classify
from napari_histattn.inference.integrity import UNREADABLE_LIMIT, unreadable_area, unreadable_mask
from napari_histattn.progress import run_to_completion


def _damage(src: Path, dst: Path, share: float) -> Path:
    """Copy ``src`` with the first ``share`` of every level's tiles zeroed (undecodable)."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        pages = list(tif.pages)
        for page in pages:
            for sub in [page, *(getattr(page, "pages", None) or [])]:
                offsets, counts = sub.dataoffsets, sub.databytecounts
                for i in range(max(1, int(len(offsets) * share))):
                    data[offsets[i] : offsets[i] + counts[i]] = bytes(counts[i])
    dst.write_bytes(bytes(data))
    return dst


def _cli(command: str, source: Path, checkpoint: Path, out: Path) -> int:
    argv = [command, str(source), "--checkpoint", str(checkpoint), "--out", str(out)]
    return main([*argv, "--quiet", "--device", "cpu"])


@pytest.fixture(scope="module")
def damaged(lesion_slide, tmp_path_factory) -> Path:
    return _damage(lesion_slide.path, tmp_path_factory.mktemp("damaged") / "damaged.tiff", 0.4)


@pytest.mark.parametrize("family", ["amil", "attention_sampling", "dafl_cnn"])
def test_a_damaged_slide_gives_no_diagnosis(damaged, checkpoint_paths, family) -> None:
    result = run_to_completion(classify(damaged, checkpoint_paths[family], device="cpu"))
    assert result.provenance["unreadable_tiles"] > 0
    assert result.unreadable_fraction > UNREADABLE_LIMIT
    reason = result.unreliable_reason()
    assert reason is not None and "could not be decoded" in reason
    assert result.evidence_lines()[0].startswith(
        f"{result.provenance['unreadable_tiles']} undecodable"
    )
    assert result.summary()["unreliable"] == reason


def test_an_intact_slide_records_zero(lesion_slide, checkpoint_paths) -> None:
    result = run_to_completion(classify(lesion_slide.path, checkpoint_paths["amil"], device="cpu"))
    assert result.provenance["unreadable_tiles"] == 0
    assert result.unreadable_fraction == 0.0
    assert result.unreliable_reason() is None and result.unreadable is None


def test_the_cli_exits_non_zero_and_every_output_says_so(
    damaged, checkpoint_paths, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    assert _cli("classify", damaged, checkpoint_paths["amil"], out) == 3
    assert "do not use this call" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unreliable"] and summary["unreadable_fraction"] > UNREADABLE_LIMIT
    geojson = json.loads((out / "regions.geojson").read_text())
    assert geojson["properties"]["provenance"]["unreadable_fraction"] > UNREADABLE_LIMIT
    with open(out / "patches.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # grey tiles read as glass, so here no tissue patch lies on one; the column says which do
    assert {r["unreadable"] for r in rows} <= {"0", "1"}


def test_patches_on_failed_tiles_are_flagged() -> None:
    failed = np.array([[0.0, 0.0, 256.0, 256.0], [1024.0, 0.0, 1280.0, 256.0]])
    xy = np.array([[0, 0], [200, 200], [256, 0], [1000, 100], [2000, 2000]], dtype=float)
    wh = np.full((5, 2), 64.0)
    assert unreadable_mask(xy, wh, failed).tolist() == [True, True, False, True, False]
    # 2 tiles of 256^2 on a 2048^2 slide: 1/32 of its area
    assert unreadable_area(failed, (2048, 2048)) == pytest.approx(2 / 64)
    assert unreadable_area(failed[:0], (2048, 2048)) == 0.0


def test_batch_marks_the_damaged_slide_and_goes_on(
    damaged, lesion_slide, checkpoint_paths, tmp_path
) -> None:
    listing = tmp_path / "slides.csv"
    listing.write_text(f"slide\n{damaged}\n{lesion_slide.path}\n")
    out = tmp_path / "batch"
    assert _cli("batch", listing, checkpoint_paths["amil"], out) == 3
    with open(out / "batch_summary.csv", newline="") as handle:
        rows = {Path(r["slide"]).name: r for r in csv.DictReader(handle)}
    assert rows["damaged.tiff"]["status"] == "unreliable"
    assert rows["damaged.tiff"]["predicted_class"] == ""
    assert rows["lesion.tiff"]["status"] == "ok"


def test_glass_that_is_not_white_is_flagged(tmp_path, checkpoint_paths) -> None:
    """Teal tissue on salmon glass (YCbCr frames read as RGB) is flagged, not trusted."""
    from inference_helpers import write_flat_tiff

    from napari_histattn._napari.layers import slide_layer_data
    from napari_histattn.inference.integrity import glass_warning
    from napari_histattn.io.slide import open_slide

    salmon = write_flat_tiff(tmp_path / "salmon.tiff", (250, 160, 140), (512, 512))
    white = write_flat_tiff(tmp_path / "white.tiff", (245, 244, 246), (512, 512))
    assert glass_warning(np.full((8, 8, 3), (245, 244, 246), dtype=np.uint8)) is None
    result = run_to_completion(classify(salmon, checkpoint_paths["amil"], device="cpu"))
    assert "not near white" in result.provenance["glass_warning"]
    assert result.evidence_lines()[0].startswith("warning: the glass is not near white")
    from napari_histattn._napari.result_panel import panel_text

    assert panel_text(result, []).startswith("OUTSIDE THE MODEL'S TRAINING DOMAIN:")
    with open_slide(salmon) as slide:
        _, kwargs, _ = slide_layer_data(slide)
        assert any("not near white" in w for w in kwargs["metadata"]["warnings"])
    with open_slide(white) as slide:
        _, kwargs, _ = slide_layer_data(slide)
        assert kwargs["metadata"]["warnings"] == []
