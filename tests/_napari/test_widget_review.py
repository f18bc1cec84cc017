"""Reviewing a result in the viewer: the region table, decisions that reach the canvas and
the export, the reviewer's own drawings, two models side by side, the cursor readout and
the domain warning. Through the manifest, in a shown viewer (Xvfb)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shapely.geometry import Point, Polygon, shape

from napari_histattn.inference.heatmap_scale import scale_fraction

pytestmark = pytest.mark.gui

WIDGET = ("napari-histattn", "Classify with attention")
ROOT = Path(__file__).resolve().parents[2]
DEMO_AMIL = ROOT / "sample_data" / "demo_amil.safetensors"
DEMO_HATNET = ROOT / "sample_data" / "demo_hatnet.safetensors"
MPP = 0.5
RUN_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def review_slide(
    tmp_path_factory: pytest.TempPathFactory, review_scene: Any
) -> tuple[Path, list[Polygon]]:
    """A 2048 x 2048 generated slide at 0.5 um/px with three lesions and a look-alike."""
    folder = tmp_path_factory.mktemp("review-slide")
    return review_scene.copy_to(folder, "review.tiff"), review_scene.lesions


def _open(make_napari_viewer: Any, slide: Path, checkpoint: Path) -> tuple[Any, Any]:
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)  # the size a pathologist's window has
    viewer.open(str(slide), plugin="napari-histattn")
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    assert widget.add_checkpoint(checkpoint)
    widget.device.value = "cpu"
    widget.threshold.value = 0.2  # several regions: the lesions, maybe the look-alike
    return viewer, widget


def _classify(qtbot: Any, widget: Any) -> None:
    widget.run_classify()
    qtbot.waitUntil(lambda: widget.is_idle, timeout=RUN_TIMEOUT_MS)


def _world_yx(l0_xy: tuple[float, float], translate_yx: Any = (0.0, 0.0)) -> np.ndarray:
    return np.asarray([l0_xy[1] * MPP, l0_xy[0] * MPP]) + np.asarray(translate_yx)


def test_table_steps_through_regions_and_centres_the_camera(
    make_napari_viewer, qtbot, review_slide
) -> None:
    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    _classify(qtbot, widget)
    regions = widget.regions_for()
    panel = widget.review
    assert len(regions) >= 2
    assert panel.table.native.rowCount() == len(regions)
    assert panel.table.native.item(0, 0).text() == str(regions[0].rank)
    assert "to review" in panel.heading.value

    panel.select(1)
    # Zoomed so that the region fills about a third of the canvas.
    x0, y0, x1, y1 = regions[1].polygon.bounds
    height, width = viewer.canvas.size
    fill = max(
        (x1 - x0) * MPP * viewer.camera.zoom / width, (y1 - y0) * MPP * viewer.camera.zoom / height
    )
    assert 0.3 <= fill <= 0.4
    centre = regions[1].polygon.centroid
    np.testing.assert_allclose(
        viewer.camera.center[-2:],
        _world_yx((centre.x, centre.y)),
        atol=0.6 * max(np.ptp(np.asarray(regions[1].polygon.bounds).reshape(2, 2), axis=0)) * MPP,
    )
    panel.step(1)  # next, then wrap around to the first
    for _ in range(len(regions) - 1):
        panel.step(1)
    assert panel.selected_index() == 1
    panel.step(-1)
    assert panel.selected_index() == 0


def test_decisions_are_drawn_and_reach_the_export(
    make_napari_viewer, qtbot, review_slide, tmp_path: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    _classify(qtbot, widget)
    panel = widget.review
    panel.reviewer.value = "JD"
    panel.select(0)
    panel.decide("accepted")
    panel.select(1)
    panel.decide("rejected")
    panel.select(2)
    panel.reclassify.value = "benign"  # a reclassification accepts the region as benign

    layer = widget.result_layers()["regions"]
    assert list(layer.features["review"][:3]) == ["accepted", "rejected", "accepted"]
    assert list(layer.features["label"][:3]) == ["#1 ok", "#2 no", "#3 ok: benign"]
    assert layer.features["class"][2] == "benign"
    assert not np.allclose(layer.edge_color[0], layer.edge_color[1])  # drawn differently
    assert "1 rejected" in panel.heading.value

    # The decisions survive a new threshold (they stay with the region's place).
    widget.threshold.value = 0.15
    assert list(widget.result_layers()["regions"].features["review"][:2]) == [
        "accepted",
        "rejected",
    ]

    written = widget.export_to(tmp_path / "review.geojson")
    doc = json.loads(written["geojson"].read_text())
    by_rank = {f["properties"]["measurements"]["rank"]: f["properties"] for f in doc["features"]}
    assert by_rank[1]["metadata"]["review"] == "accepted"
    assert by_rank[1]["metadata"]["author"] == "JD"
    assert by_rank[2]["metadata"]["review"] == "rejected"
    assert by_rank[3]["classification"]["name"] == "benign"
    assert by_rank[3]["metadata"]["model_class"] == "lesion"
    assert all(p["metadata"]["review"] == "pending" for r, p in by_rank.items() if r > 3)
    assert all(p["metadata"]["source"] == "model" for p in by_rank.values())
    assert doc["properties"]["provenance"]["review"]["accepted"] == 2


def test_a_new_shapes_layer_exports_in_level0_and_reimports_in_place(
    make_napari_viewer, qtbot, review_slide, tmp_path: Path
) -> None:
    from napari_histattn.inference.review import split_review
    from napari_histattn.io.export import read_geojson_regions

    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    _classify(qtbot, widget)
    square_l0 = np.asarray([[100, 200], [100, 400], [300, 400], [300, 200]], float)  # (x, y)
    drawn = viewer.add_shapes()  # napari's "New shapes layer": scale 1, world units
    assert drawn.metadata["mpp_xy"] == (MPP, MPP)  # took the slide's frame
    drawn.add([square_l0[:, ::-1] * MPP], shape_type="polygon")
    # ... and one drawn by mistake into the model's regions layer: never merged with them.
    regions_layer = widget.result_layers()["regions"]
    n_model = len(widget.regions_for())
    regions_layer.add([np.asarray([[10, 10], [10, 60], [60, 60]], float)], shape_type="polygon")
    assert regions_layer.features["source"].iloc[-1] == "expert"
    widget.threshold.value = 0.25  # a redraw moves it to the reviewer's own layer
    assert len(widget.regions_for()) == len(widget.result_layers()["regions"].data)
    assert len(drawn.data) == 2  # into the reviewer's layer already on this slide
    n_model = len(widget.regions_for())

    written = widget.export_to(tmp_path / "with-mine.geojson")
    model, expert = split_review(read_geojson_regions(written["geojson"]))
    assert len(model) == n_model
    assert len(expert) == 2
    (square,) = [r for r in expert if r.polygon.area > 20_000]
    assert square.polygon.equals_exact(Polygon(square_l0), tolerance=1e-6) or (
        square.polygon.symmetric_difference(Polygon(square_l0)).area < 1e-6
    )
    assert square.metadata["source"] == "expert"

    # Re-opened through the reader, the drawings lie where they were drawn.
    reopened = viewer.open(str(written["geojson"]), plugin="napari-histattn")[0]
    assert set(reopened.features["source"]) == {"model", "expert"}
    row = int(np.flatnonzero(reopened.features["name"] == square.name)[0])
    world = np.asarray(reopened.data[row]) * np.asarray(reopened.scale) + reopened.translate
    np.testing.assert_allclose(np.sort(world, axis=0), np.sort(square_l0[:, ::-1] * MPP, axis=0))


def test_two_models_stay_side_by_side_with_their_difference_stated(
    make_napari_viewer, qtbot, review_slide
) -> None:
    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    _classify(qtbot, widget)
    assert widget.add_checkpoint(DEMO_HATNET)
    _classify(qtbot, widget)
    results = widget.results_on()
    assert [r.model for r in results] == ["demo_amil", "demo_hatnet"]
    heatmaps = [layer.name for layer in viewer.layers if "attention (" in layer.name]
    assert any("demo_amil" in n for n in heatmaps) and any("demo_hatnet" in n for n in heatmaps)
    assert "demo_hatnet vs demo_amil:" in widget.result_label.value
    assert "top regions overlap" in widget.result_label.value
    amil, hatnet = (one.layers["heatmap"] for one in results)
    assert hatnet.visible and not amil.visible  # the new result in front, never two on top
    assert widget.heatmap_display.flip.enabled
    widget.flip_models()  # the panel's flip button, or "/"
    assert amil.visible and not hatnet.visible
    assert not results[1].layers["regions"].visible and results[0].layers["regions"].visible
    assert widget.model.value == str(DEMO_AMIL)  # the panel follows the shown model
    assert widget.result_for().provenance["model_name"] == "amil"
    assert "demo_amil vs demo_hatnet:" in widget.result_label.value
    widget.show_overlay.value = False
    widget.show_overlay.value = True  # back on: still one model in front
    assert amil.visible and not hatnet.visible
    widget.flip_models()
    assert hatnet.visible and not amil.visible and widget.model.value == str(DEMO_HATNET)


def test_colormap_contrast_and_opacity_reach_the_heatmap_and_the_scale_is_stated(
    make_napari_viewer, qtbot, review_slide
) -> None:
    from napari_histattn.inference.heatmap_scale import contrast_limits, ramp

    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    _classify(qtbot, widget)
    result, heatmap = widget.result_for(), widget.result_layers()["heatmap"]
    raw = np.asarray(result.attention, dtype=np.float64)
    assert np.allclose(heatmap.data, raw, equal_nan=True)  # the layer reads raw attention
    assert tuple(heatmap.contrast_limits) == pytest.approx((np.nanmin(raw), np.nanmax(raw)))
    text = viewer.canvas.overlays["text"]
    assert text.visible and f"to {np.nanmax(raw):.3g} (full range)" in text.text
    # the title never shares the colour bar's corner (it pushed the bar off the canvas)
    assert heatmap.colorbar.visible and text.position != heatmap.colorbar.position
    assert "raw value" in widget.heatmap_display.scale.value

    panel = widget.heatmap_display
    panel.colormap.value = "viridis"
    panel.contrast.value = "1-99 percentile"
    panel.opacity.value = 0.4
    assert heatmap.colormap.colors[-1] == pytest.approx(ramp(np.array([1.0]), "viridis")[0])
    assert heatmap.colormap.colors[0][3] == 0.0  # transparent low end kept
    assert tuple(heatmap.contrast_limits) == pytest.approx(contrast_limits(raw, "1-99 percentile"))
    assert heatmap.opacity == pytest.approx(0.4)
    assert "(1-99 percentile)" in text.text and "(1-99 percentile)" in panel.scale.value

    widget.run_classify()  # a new result is drawn the way the panel says
    qtbot.waitUntil(lambda: widget.is_idle, timeout=RUN_TIMEOUT_MS)
    again = widget.result_layers()["heatmap"]
    assert again is heatmap and again.opacity == pytest.approx(0.4)  # redrawn in place
    assert again.metadata["contrast"] == "1-99 percentile"


def test_cursor_readout_gives_the_heatmap_value_whatever_layer_is_selected(
    make_napari_viewer, qtbot, review_slide
) -> None:
    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    _classify(qtbot, widget)
    result = widget.result_for()
    heatmap = widget.result_layers()["heatmap"]
    assert heatmap.colorbar.visible and viewer.canvas.overlays["scale_bar"].visible
    r, c = result.top_cell()
    x_l0, y_l0 = result.cell_center_l0_xy(r, c)

    class Move:
        position = tuple(_world_yx((x_l0, y_l0)))

    viewer.layers.selection.active = viewer.layers[0]  # the slide, not the heatmap
    widget._on_mouse_move(viewer, Move())
    text = widget.readout.value.replace("\n", " ")
    assert f"attention {float(result.attention[r, c]):.4g}" in text
    lo, hi = (float(v) for v in heatmap.contrast_limits)
    on_ramp = scale_fraction(float(heatmap.data[r, c]), (lo, hi))
    assert f"({on_ramp:.2f} on the heatmap)" in text
    assert f"p(lesion) {float(result.cell_probs[r, c, 1]):.2f}" in text

    class Off:
        position = (-1000.0, -1000.0)

    widget._on_mouse_move(viewer, Off())
    assert widget.readout.value == "at cursor: —"


def test_synthetic_demo_on_the_cmu_slide_shows_the_domain_warning_first(
    make_napari_viewer, qtbot, cmu_svs: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, cmu_svs, DEMO_AMIL)
    _classify(qtbot, widget)
    lines = widget.result_label.value.splitlines()
    assert lines[:2] == ["OUTSIDE THE MODEL'S TRAINING DOMAIN:", "do not rely on this call"]
    assert "trained only on synthetic" in widget.result_label.value


def test_region_polygons_in_the_table_are_the_export_geometry(
    make_napari_viewer, qtbot, review_slide, tmp_path: Path
) -> None:
    """The top region of the table is the lesion, and the export has it at the same place."""
    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    _classify(qtbot, widget)
    top = widget.regions_for()[0]
    assert any(top.polygon.intersects(lesion) for lesion in review_slide[1])
    written = widget.export_to(tmp_path / "top.geojson")
    doc = json.loads(written["geojson"].read_text())
    first = shape(doc["features"][0]["geometry"])
    assert first.contains(Point(top.polygon.representative_point()))


def test_panel_states_localisation_against_open_ground_truth(
    make_napari_viewer, qtbot, review_slide
) -> None:
    import re

    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    _classify(qtbot, widget)
    assert "localisation AUC" not in widget.result_label.value  # no outlines open yet
    (truth,) = viewer.open(str(review_slide[0].with_suffix(".geojson")), plugin="napari-histattn")
    assert tuple(truth.metadata["mpp_xy"]) == (MPP, MPP)  # in micrometres, on the slide
    widget._update_state()
    text = widget.result_label.value.replace("\n", " ")
    found = re.search(r"\(3 lesion outline\(s\)\): localisation AUC (\d\.\d\d) over tissue", text)
    assert found, text
    assert float(found.group(1)) >= 0.9  # the demo finds the generated lesions


def test_progress_states_elapsed_time_and_what_is_left() -> None:
    import time

    from napari_histattn.progress import timing_text

    started = time.monotonic() - 20.0
    assert timing_text(started, 0.05) == " (20 s)"  # too early to estimate
    assert timing_text(started, 0.5) == " (20 s, about 20 s left)"
    assert timing_text(time.monotonic() - 600, 0.5) == " (10.0 min, about 10.0 min left)"


def test_threshold_step_and_decision_stay_on_budget(
    make_napari_viewer, qtbot, review_slide
) -> None:
    """A generous bound on the main thread (the measured numbers, about 0.05 s of our code
    and 0.12 s with the software-GL redraw, are in benchmarks/RESULTS.md)."""
    import time

    from qtpy.QtWidgets import QApplication

    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    _classify(qtbot, widget)
    app = QApplication.instance()
    worst = 0.0
    for value in (0.3, 0.4, 0.6, 0.2):
        started = time.perf_counter()
        widget.threshold.value = value
        app.processEvents()
        worst = max(worst, time.perf_counter() - started)
        qtbot.waitUntil(lambda: not widget.threshold_pending)
        widget.review.decide("accepted")
    assert worst < 2.0
    # Dragged: the first move draws at once, the moves after it wait, and the value the
    # slider stops on is drawn once the drag pauses.
    result = widget.result_for()
    drawn = []
    original = widget._apply_threshold
    widget._apply_threshold = lambda: (drawn.append(widget.threshold.value), original())[1]
    widget._threshold_timer.timeout.disconnect()
    widget._threshold_timer.timeout.connect(widget._apply_threshold)
    qtbot.wait(300)
    for value in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6):
        widget.threshold.value = value
    assert drawn == [pytest.approx(0.3)] and widget.threshold_pending
    qtbot.waitUntil(lambda: not widget.threshold_pending)
    assert drawn == [pytest.approx(0.3), pytest.approx(0.6)]
    expected = result.regions_at(0.6, result.top_k)
    assert [r.rank for r in widget.regions_for()] == [r.rank for r in expected]
    # In place: the same regions layer object, redrawn, not a new one each step.
    layer = widget.result_layers()["regions"]
    widget.threshold.value = 0.5
    assert widget.result_layers()["regions"] is layer


def test_panel_follows_the_slide_selected_in_the_layer_list(
    make_napari_viewer, qtbot, review_slide, cmu_svs: Path
) -> None:
    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    _classify(qtbot, widget)
    synthetic = viewer.layers[0]
    other = viewer.open(str(cmu_svs), plugin="napari-histattn")[0]
    viewer.layers.selection.active = other
    assert widget.layer.value is other
    assert widget.result_label.value == "—"  # never the other slide's result
    assert widget.review.table.native.rowCount() == 0
    viewer.layers.selection.active = synthetic
    assert widget.result_label.value.startswith("predicted: lesion")


def test_a_closed_widget_leaves_nothing_wired_to_the_viewer(
    make_napari_viewer, review_slide
) -> None:
    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    assert widget._on_mouse_move in viewer.mouse_move_callbacks
    keys = {str(k) for k in viewer.keymap}
    assert {".", ",", "Alt+A", "Alt+R", "/"} <= keys  # next, previous, accept, reject, flip
    widget._on_destroyed()
    assert widget._on_mouse_move not in viewer.mouse_move_callbacks
    assert not {".", ",", "Alt+A", "Alt+R", "/"} & {str(k) for k in viewer.keymap}


def test_a_drawing_moved_out_of_the_regions_layer_keeps_its_place_on_a_moved_slide(
    make_napari_viewer, qtbot, review_slide
) -> None:
    viewer, widget = _open(make_napari_viewer, review_slide[0], DEMO_AMIL)
    viewer.layers[0].translate = (100.0, 40.0)  # the user moved the slide layer
    _classify(qtbot, widget)
    regions_layer = widget.result_layers()["regions"]
    triangle = np.asarray([[10, 10], [10, 60], [60, 60]], float)
    regions_layer.add([triangle], shape_type="polygon")
    world = triangle + np.asarray(regions_layer.translate)
    widget.threshold.value = 0.25  # the redraw moves it to the reviewer's own layer
    (mine,) = [layer for layer in viewer.layers if layer.name.endswith("my annotations")]
    np.testing.assert_allclose(np.asarray(mine.data[0]) + np.asarray(mine.translate), world)
