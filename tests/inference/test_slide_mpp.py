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


def test_a_whole_image_checkpoint_classifies_the_whole_image(tmp_path: Path) -> None:
    """Trained on image files (``histattn train`` on a folder: whole images resized to
    ``image_size``), it sees the whole image resized, not tiles of it."""
    import torch
    from PIL import Image

    from napari_histattn.inference.patches import rgb_to_tensor
    from napari_histattn.models.checkpoint import load

    path = tmp_path / "breakhis.png"
    rgb = _pixels()[:300, :500]
    Image.fromarray(rgb).save(path)
    ck_path = make_checkpoint(tmp_path, "dafl_cnn", downsample=None)
    result, _ = run(path, ck_path, device="cpu", explain="gradcam")
    prov = result.provenance
    assert prov["whole_image"] is True and prov["n_patches"] == 1
    assert any("whole image resized to 32x32" in m for m in prov["messages"])
    ck = load(ck_path, device="cpu")
    resized = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.Resampling.BILINEAR))
    x = rgb_to_tensor(resized[None], ck.preprocessing["mean"], ck.preprocessing["std"])
    with torch.no_grad():
        expected = torch.softmax(ck.model.eval()(x).logits.double(), dim=1)[0].numpy()
    assert np.allclose(result.probabilities, expected, atol=1e-6)
    # The model's 8 x 8 grid laid on square cells over the 500 x 300 image.
    assert result.grid_shape == (5, 8) and result.geometry.stride_l0_xy == (62.5, 62.5)
    assert result.explanations["gradcam"].shape == (5, 8)
    # A tile size given by the caller tiles instead.
    tiled, _ = run(path, ck_path, device="cpu", patch_size=32)
    assert "whole_image" not in tiled.provenance and tiled.provenance["n_patches"] > 1


def test_a_whole_image_checkpoint_refuses_a_slide(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "wide.png"
    Image.fromarray(np.full((8, 9000, 3), 200, dtype=np.uint8)).save(path)
    with pytest.raises(HistattnError, match="trained on whole images"):
        run(path, make_checkpoint(tmp_path, "dafl_cnn", downsample=None), device="cpu")
