"""Slides and images that record no pixel size: the caller's um/px, or an image-level model's
training resolution, stated; never a silent guess for a slide model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from inference_helpers import make_checkpoint

from napari_histattn.cli import main as cli
from napari_histattn.errors import HistattnError
from napari_histattn.inference.engine import classify
from napari_histattn.inference.result import ClassificationResult
from napari_histattn.progress import run_to_completion


def run(slide: Path, checkpoint: Path, **kwargs: object) -> tuple[ClassificationResult, None]:
    return run_to_completion(classify(slide, checkpoint, **kwargs)), None  # type: ignore[arg-type]


def _pixels(seed: int = 0) -> np.ndarray:
    """Pink tissue with darker blobs on glass, 640 x 640."""
    rng = np.random.default_rng(seed)
    rgb = np.full((640, 640, 3), 245, dtype=np.uint8)
    rgb[64:576, 64:576] = (200, 110, 170)
    for y, x in rng.integers(80, 540, size=(12, 2)):
        rgb[y : y + 24, x : x + 24] = (120, 40, 120)
    return rgb


@pytest.fixture
def png(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "patch.png"  # PNGs carry no pixel size
    Image.fromarray(_pixels()).save(path)
    return path


@pytest.fixture
def image_checkpoint(tmp_path: Path) -> Path:
    """The image-level family, at a target resolution (2 um/px) instead of a fixed downsample."""
    return make_checkpoint(tmp_path, "dafl_cnn", downsample=None, target_mpp=2.0)


def test_an_image_model_reads_an_image_without_mpp_at_its_training_resolution(
    png: Path, image_checkpoint: Path
) -> None:
    result, _ = run(png, image_checkpoint, device="cpu")
    prov = result.provenance
    assert prov["downsample_used"] == 1.0 and prov["mpp_assumed"] == 2.0
    assert prov["slide_mpp_xy"] is None
    assert any("records no pixel size" in m and "2 um/px" in m for m in prov["messages"])


def test_a_slide_model_refuses_a_slide_without_mpp_and_says_how_to_give_one(
    png: Path, checkpoint_paths: dict[str, Path]
) -> None:
    with pytest.raises(HistattnError, match=r"records no pixel size.*--mpp"):
        run(png, checkpoint_paths["amil"], device="cpu")


def test_a_given_mpp_is_used_as_the_files_own_would_be(
    tmp_path: Path, png: Path, checkpoint_paths: dict[str, Path]
) -> None:
    # The same pixels as a TIFF that records 0.5 um/px.
    tiff = tmp_path / "patch.tiff"
    tifffile.imwrite(tiff, _pixels(), photometric="rgb", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")  # fmt: skip
    given, _ = run(png, checkpoint_paths["amil"], device="cpu", slide_mpp=0.5)
    recorded, _ = run(tiff, checkpoint_paths["amil"], device="cpu")
    assert np.allclose(given.probabilities, recorded.probabilities)
    assert np.allclose(given.attention, recorded.attention, equal_nan=True)
    assert given.provenance["slide_mpp_xy"] == [0.5, 0.5]
    assert given.provenance["slide_mpp_source"] == "given"
    assert given.provenance["downsample_used"] == 4.0  # 2 um/px from 0.5
    assert given.provenance["mpp_assumed"] is None
    # A given value overrides a file's own.
    other, _ = run(tiff, checkpoint_paths["amil"], device="cpu", slide_mpp=1.0)
    assert other.provenance["downsample_used"] == 2.0


@pytest.mark.parametrize("bad", [-1.0, 0.0, 5000.0, "abc", float("nan")])
def test_a_bad_mpp_is_a_clear_error(bad, png: Path, checkpoint_paths: dict[str, Path]) -> None:
    with pytest.raises(HistattnError, match="um/px must be a number"):
        run(png, checkpoint_paths["amil"], device="cpu", slide_mpp=bad)


def test_cli_mpp(tmp_path: Path, png: Path, checkpoint_paths: dict[str, Path], capsys) -> None:
    out = tmp_path / "out"
    argv = ["classify", str(png), "--checkpoint", str(checkpoint_paths["amil"])]
    argv += ["--out", str(out), "--device", "cpu", "--quiet"]
    assert cli(argv) != 0
    assert "--mpp" in capsys.readouterr().err
    assert cli([*argv, "--mpp", "0.5"]) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["slide_mpp_xy"] == [0.5, 0.5]
    regions = json.loads((out / "regions.geojson").read_text())
    areas = [f["properties"]["measurements"].get("area_um2") for f in regions["features"]]
    assert areas and all(a is not None and a > 0 for a in areas)  # areas in um^2 from it
