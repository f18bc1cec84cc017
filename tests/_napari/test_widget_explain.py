"""The classify widget's side maps (explanations, HATNet's attention levels) and its "slide
um/px" box, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.gui

WIDGET = ("napari-histattn", "Classify with attention")
DEMO_DAFL = Path(__file__).resolve().parents[2] / "sample_data" / "demo_dafl_cnn.safetensors"


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from napari_histattn.io.synthetic import generate_synthetic_slide

    made = generate_synthetic_slide(
        tmp_path_factory.mktemp("explain-slide") / "lesion.tiff", 1024, 1024, seed=5,
        n_lesions=1, n_lookalikes=1, lesion_radius_px=150, lookalike_radius_px=100, mpp=0.5,
    )  # fmt: skip
    return Path(made.path)


def _classify(qtbot: Any, viewer: Any, widget: Any) -> Any:
    widget.run_classify()
    qtbot.waitUntil(lambda: widget.is_idle, timeout=240_000)
    return widget.result_for()


def test_explanations_become_hidden_aligned_layers(make_napari_viewer, qtbot, slide) -> None:
    viewer = make_napari_viewer()
    viewer.open(str(slide), plugin="napari-histattn")
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    assert widget.add_checkpoint(DEMO_DAFL)
    assert not widget.explain.native.isHidden()  # the attention CNN computes explanations
    widget.explain.value = "+ all three"
    result = _classify(qtbot, viewer, widget)
    assert result is not None and set(result.explanations) == {
        "gradcam", "guided_gradcam", "saliency"
    }  # fmt: skip
    layers = widget.result_layers()
    heatmap = layers["heatmap"]
    for method, title in (("gradcam", "Grad-CAM"), ("saliency", "saliency")):
        layer = layers[f"explanation:{method}"]
        assert title in layer.name and not layer.visible
        np.testing.assert_allclose(layer.scale, heatmap.scale)
        np.testing.assert_allclose(layer.translate, heatmap.translate)
    # The overlay toggle hides everything; turning it on again leaves explanations as they were.
    layers["explanation:gradcam"].visible = True
    widget.show_overlay.value = False
    assert not any(layer.visible for layer in layers.values())
    widget.show_overlay.value = True
    assert heatmap.visible and not layers["explanation:saliency"].visible


def test_hatnet_levels_become_hidden_aligned_layers(
    make_napari_viewer, qtbot, slide, tmp_path
) -> None:
    import torch

    from napari_histattn.models.checkpoint import save
    from napari_histattn.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("hatnet", encoder="tiny", patch_size=32, embed_dim=8, attn_dim=8,
                         n_heads=2, region_size=2)  # fmt: skip
    path = save(tmp_path / "hatnet.safetensors", model, class_names=["benign", "lesion"],
                preprocessing={"input": "mil", "patch_size": 32, "target_mpp": 2.0,
                               "mean": [0.5] * 3, "std": [0.25] * 3})  # fmt: skip
    viewer = make_napari_viewer()
    viewer.open(str(slide), plugin="napari-histattn")
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    assert widget.add_checkpoint(path)
    result = _classify(qtbot, viewer, widget)
    assert result is not None and set(result.attention_maps) == {"word", "region"}
    layers = widget.result_layers()
    heatmap = layers["heatmap"]
    assert heatmap.visible
    for level in ("word", "region"):
        layer = layers[f"attention:{level}"]
        assert f"{level} attention" in layer.name and not layer.visible
        np.testing.assert_allclose(layer.scale, heatmap.scale)
        np.testing.assert_allclose(layer.translate, heatmap.translate)
    widget.show_overlay.value = False
    widget.show_overlay.value = True
    assert heatmap.visible and not layers["attention:word"].visible


def test_slide_mpp_box_reaches_the_engine(make_napari_viewer, qtbot, slide, tmp_path) -> None:
    # A slide model on a slide that records no pixel size: refused, then run with the box.
    import tifffile

    from napari_histattn.io.slide import open_slide
    from napari_histattn.models.checkpoint import load, save

    with open_slide(slide) as s:
        pixels = np.asarray(s.read_region((0, 0), 0, (1024, 1024)))[..., :3]
    bare = tmp_path / "bare.tiff"
    tifffile.imwrite(bare, pixels, photometric="rgb", tile=(256, 256))
    ck = load(Path(__file__).resolve().parents[2] / "sample_data" / "demo_amil.safetensors")
    path = save(tmp_path / "amil.safetensors", ck.model, class_names=ck.class_names,
                preprocessing=ck.preprocessing)  # fmt: skip
    viewer = make_napari_viewer()
    viewer.open(str(bare), plugin="napari-histattn")
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    assert widget.add_checkpoint(path)
    assert not widget.explain.native.isHidden()  # A-MIL explains its encoder's tile evidence
    assert "records no pixel size" in widget.layer_note.value  # says what to do
    assert not widget.layer_note.native.isHidden()
    widget.slide_mpp.value = 0.5
    result = _classify(qtbot, viewer, widget)
    assert result is not None
    assert result.provenance["slide_mpp_source"] == "given"
    assert result.provenance["slide_mpp_xy"] == [0.5, 0.5]
    assert result.explanations == {}
    # A bag model trained on cached features has no encoder to explain: the box hides.
    from napari_histattn.models.registry import create_model

    on_features = save(tmp_path / "features.safetensors",
                       create_model("amil", encoder="none", embed_dim=8, n_classes=2),
                       class_names=["benign", "lesion"],
                       preprocessing={"input": "features", "patch_size": 32})  # fmt: skip
    assert widget.add_checkpoint(on_features)
    assert widget.explain.native.isHidden()
