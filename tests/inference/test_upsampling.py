"""A slide much coarser than the model's resolution is refused unless asked; a mild
upsampling is noted in the result."""

from __future__ import annotations

import pytest
from inference_helpers import FAMILIES, make_checkpoint, write_flat_tiff

from napari_histattn.errors import HistattnError
from napari_histattn.inference.engine import classify
from napari_histattn.io.slide import open_slide
from napari_histattn.progress import run_to_completion


@pytest.fixture(scope="module")
def coarse_slide(tmp_path_factory):
    return write_flat_tiff(
        tmp_path_factory.mktemp("coarse") / "coarse.tiff", (200, 110, 170), (128, 128)
    )


@pytest.fixture(scope="module")
def at_1um(tmp_path_factory):
    """Checkpoints of every family that work at 1 um/px."""
    folder = tmp_path_factory.mktemp("at-1um")
    return {
        name: make_checkpoint(folder, name, target_mpp=1.0, downsample=None, level=None)
        for name in FAMILIES
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_ten_times_coarser_is_refused_unless_allowed(coarse_slide, at_1um, family) -> None:
    with open_slide(coarse_slide, mpp_override=(10.0, 10.0)) as slide:
        with pytest.raises(HistattnError, match=r"upsampled 10\.0x, beyond 4x"):
            run_to_completion(classify(slide, at_1um[family], device="cpu"))
        result = run_to_completion(
            classify(slide, at_1um[family], device="cpu", allow_upsample=True)
        )
    assert any("upsampled 10.0x" in m for m in result.provenance["messages"])


def test_a_mild_upsampling_is_noted(coarse_slide, at_1um) -> None:
    with open_slide(coarse_slide, mpp_override=(2.0, 2.0)) as slide:
        result = run_to_completion(classify(slide, at_1um["amil"], device="cpu"))
    assert any("upsampled 2.0x" in m for m in result.provenance["messages"])
