"""'Fine-tune on my corrections' in the viewer: the reviewer's outlines (a new Shapes layer,
its shapes of the model's positive class by default) and decisions are saved beside the
slide, the model is fine-tuned in a worker, and its result joins the original's on the
slide with the localisation before and after stated. Through the manifest, in a shown
viewer (Xvfb)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shapely.geometry import Polygon

pytestmark = pytest.mark.gui

WIDGET = ("napari-histattn", "Classify with attention")
DEMO_AMIL = Path(__file__).resolve().parents[2] / "sample_data" / "demo_amil.safetensors"
MPP = 0.5
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def slide(
    tmp_path_factory: pytest.TempPathFactory, review_scene: Any
) -> tuple[Path, list[Polygon], list[Polygon]]:
    """A generated slide at 0.5 um/px with three lesions and a look-alike, and their outlines."""
    path = review_scene.copy_to(tmp_path_factory.mktemp("finetune-slide"), "tuned.tiff")
    return path, review_scene.lesions, review_scene.lookalikes


def _world(polygon: Polygon) -> np.ndarray:
    """A level-0 polygon as napari (y, x) world coordinates of the slide layer."""
    return np.asarray(polygon.exterior.coords)[:-1, ::-1] * MPP


def test_fine_tune_on_my_corrections_adds_the_tuned_result_and_states_before_and_after(
    make_napari_viewer, qtbot, slide
) -> None:
    from napari_histattn.models.checkpoint import read_metadata

    path, lesions, lookalikes = slide
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(str(path), plugin="napari-histattn")
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    assert widget.add_checkpoint(DEMO_AMIL)
    widget.device.value = "cpu"
    panel = widget.fine_tune
    assert not panel.button.enabled  # nothing to correct before a result
    widget.run_classify()
    qtbot.waitUntil(lambda: widget.is_idle, timeout=TIMEOUT_MS)
    assert panel.button.enabled

    drawn = viewer.add_shapes(name="my outlines")  # napari's "New shapes layer"
    drawn.add([_world(p) for p in lesions[:2]], shape_type="polygon")
    assert list(drawn.features["class"]) == ["lesion", "lesion"]  # the positive class
    drawn.add([_world(lookalikes[0])], shape_type="polygon")
    features = drawn.features.copy()
    features.loc[2, "class"] = "benign"  # the reviewer says what the look-alike is
    drawn.features = features
    widget.review.reviewer.value = "JD"

    panel.button.clicked.emit()  # as the user clicks: save, fine-tune, classify again
    assert panel.running and panel.button.text == "Cancel fine-tuning"
    qtbot.waitUntil(lambda: not panel.running and widget.is_idle, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: len(widget.results_on()) == 2, timeout=TIMEOUT_MS)

    saved = path.with_name(f"{path.stem}_regions.geojson")
    doc = json.loads(saved.read_text())
    expert = [
        f["properties"]
        for f in doc["features"]
        if f["properties"]["metadata"]["source"] == "expert"
    ]
    assert sorted(p["classification"]["name"] for p in expert) == ["benign", "lesion", "lesion"]
    assert all(p["metadata"]["author"] == "JD" for p in expert)

    tuned = panel.last
    assert tuned.checkpoint_path == path.with_name(f"demo_amil+{path.stem}.safetensors")
    record = read_metadata(tuned.checkpoint_path)["training"]["fine_tuned"][-1]
    assert record["marked_tiles"]["lesion"] > 0 and record["marked_tiles"]["benign"] > 0
    assert tuned.auc_after >= tuned.auc_before - 0.01 and tuned.mass_after > tuned.mass_before
    # the tuned model's result is the chosen one, the original is still on the slide
    assert widget.model.value == str(tuned.checkpoint_path)
    assert {r.key for r in widget.results_on()} == {str(DEMO_AMIL), str(tuned.checkpoint_path)}
    assert widget.heatmap_display.flip.enabled
    note = panel.note.value.replace("\n", " ")
    assert f"{tuned.auc_before:.2f} -> {tuned.auc_after:.2f}" in note and "flips" in note
