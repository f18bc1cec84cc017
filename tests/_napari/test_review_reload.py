"""An exported review put back on another day: the threshold, the decisions on the
canvas and in the table, the expert's own outlines in place with their author, nothing
doubled by a second load or a re-opened file, and another slide's review refused.
Through the manifest, in a shown viewer (Xvfb)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shapely.geometry import Polygon

from napari_histattn._napari.result_export import default_export_path
from napari_histattn.errors import HistattnError
from napari_histattn.inference.review import split_review
from napari_histattn.io.export import read_geojson_regions

pytestmark = pytest.mark.gui

WIDGET = ("napari-histattn", "Classify with attention")
DEMO_AMIL = Path(__file__).resolve().parents[2] / "sample_data" / "demo_amil.safetensors"
MPP = 0.5
SQUARE_L0_XY = np.asarray([[100, 200], [100, 400], [300, 400], [300, 200]], float)


def _classified(make_napari_viewer: Any, qtbot: Any, slide: Path, threshold: float) -> Any:
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(str(slide), plugin="napari-histattn")
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    assert widget.add_checkpoint(DEMO_AMIL)
    widget.device.value = "cpu"
    widget.threshold.value = threshold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        widget.run_classify()
        qtbot.waitUntil(lambda: widget.is_idle, timeout=120_000)
    # The result's layers were added without napari selecting each, and silently.
    assert not [w for w in caught if "Private attribute" in str(w.message)]
    assert viewer.layers.selection.active is widget.layer.value
    return viewer, widget


def _review_and_export(viewer: Any, widget: Any, slide: Path) -> Path:
    panel = widget.review
    panel.reviewer.value = "JD"
    panel.select(0)
    panel.decide("accepted")
    panel.select(1)
    panel.decide("rejected")
    panel.select(2)
    panel.reclassify.value = "benign"
    drawn = viewer.add_shapes()  # napari's "New shapes layer": adopted, class "lesion"
    drawn.add([SQUARE_L0_XY[:, ::-1] * MPP], shape_type="polygon")
    return widget.export_to(default_export_path(slide))["geojson"]


def _decisions(widget: Any) -> list[tuple[str, str]]:
    features = widget.result_layers()["regions"].features
    return list(zip(features["review"][:3], features["class"][:3], strict=True))


def test_a_saved_review_comes_back_on_another_day(
    make_napari_viewer, qtbot, review_scene, tmp_path: Path
) -> None:
    slide = review_scene.copy_to(tmp_path, "again.tiff")
    viewer, widget = _classified(make_napari_viewer, qtbot, slide, 0.2)
    saved = _review_and_export(viewer, widget, slide)
    before = _decisions(widget)
    assert [d for d, _ in before] == ["accepted", "rejected", "accepted"]
    viewer.close()

    # Another day: the slide opened afresh, classified at another threshold.
    viewer, widget = _classified(make_napari_viewer, qtbot, slide, 0.35)
    assert widget.review.load_button.enabled
    assert all(d == "pending" for d in widget.result_layers()["regions"].features["review"])
    text = widget.load_review_from(saved)
    assert widget.threshold.value == pytest.approx(0.2)  # the regions it was made on
    assert _decisions(widget) == before  # on the canvas's layer
    assert "2 accepted, 1 rejected" in widget.review.heading.value  # and in the table
    assert widget.review.table.native.item(2, 1).text() == "benign (model: lesion)"
    assert widget.review.reviewer.value == "JD"
    assert "restored 3 decision(s) and 1 annotation(s)" in text
    assert str(saved) in widget.status.value

    (mine,) = [layer for layer in viewer.layers if layer.name.endswith("my annotations")]
    assert len(mine.data) == 1 and list(mine.features["class"]) == ["lesion"]
    world = np.asarray(mine.data[0]) * np.asarray(mine.scale) + mine.translate
    np.testing.assert_allclose(
        np.sort(world, axis=0), np.sort(SQUARE_L0_XY[:, ::-1] * MPP, axis=0), atol=1e-6
    )

    # Loaded twice, and the file also opened as a layer: the outline is still one.
    assert "1 annotation(s) were open already" in widget.load_review_from(saved)
    viewer.open(str(saved), plugin="napari-histattn")
    assert len(mine.data) == 1
    widget.review.reviewer.value = "AB"  # another reviewer carries on, and outlines more
    mine.add([(SQUARE_L0_XY[:, ::-1] + 1000) * MPP], shape_type="polygon")
    assert list(mine.features["author"]) == ["JD", ""]  # the load set no author for it
    again = widget.export_to(tmp_path / "carried-on.geojson")["geojson"]
    model, expert = split_review(read_geojson_regions(again))
    assert len(expert) == 2  # never merged into the loaded one
    loaded, new = sorted(expert, key=lambda r: r.polygon.bounds[0])
    assert loaded.metadata["author"] == "JD" and new.metadata["author"] == "AB"
    assert new.class_name == "lesion"  # the layer's class for new outlines, not the loaded one's
    square = Polygon(SQUARE_L0_XY)
    assert Polygon(loaded.polygon.exterior).symmetric_difference(square).area < 1e-6
    assert [r.metadata["review"] for r in sorted(model, key=lambda r: r.rank)][:3] == [
        "accepted",
        "rejected",
        "accepted",
    ]


def test_another_slides_review_is_refused_and_nothing_changes(
    make_napari_viewer, qtbot, review_scene, tmp_path: Path
) -> None:
    slide = review_scene.copy_to(tmp_path, "mine.tiff")
    viewer, widget = _classified(make_napari_viewer, qtbot, slide, 0.2)
    saved = _review_and_export(viewer, widget, slide)
    document = json.loads(saved.read_text())
    document["properties"]["provenance"]["slide_quickhash"] = "0" * 64
    foreign = tmp_path / "foreign_regions.geojson"
    foreign.write_text(json.dumps(document))
    widget.review.reviewer.value = ""
    widget.threshold.value = 0.35
    qtbot.waitUntil(lambda: not widget.threshold_pending)
    shapes_before = len(viewer.layers)
    reviewed_before = _decisions(widget)
    with pytest.raises(HistattnError, match="a different slide"):
        widget.load_review_from(foreign)
    assert widget.threshold.value == pytest.approx(0.35)
    assert _decisions(widget) == reviewed_before
    assert len(viewer.layers) == shapes_before
