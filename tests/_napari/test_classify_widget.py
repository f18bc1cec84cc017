"""The "Classify with attention" dock widget, opened through the manifest, end to end.

Runs use the demo checkpoints (``sample_data/demo_*.safetensors``) when they are
there, else tiny untrained checkpoints made here; the assertions that need a
trained model (A-MIL's heatmap maximum and top region on the true lesion,
attention sampling's lesion call) skip without the demo checkpoints. The slide is a
2048 x 2048 generated slide at 0.5 um/px with one lesion and one look-alike.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shapely.geometry import Point, Polygon, shape

from napari_histattn.errors import ExportError
from napari_histattn.io import frames

pytestmark = pytest.mark.gui

WIDGET = ("napari-histattn", "Classify with attention")
ROOT = Path(__file__).resolve().parents[2]
DEMO_AS = ROOT / "sample_data" / "demo_attention_sampling.safetensors"
DEMO_AMIL = ROOT / "sample_data" / "demo_amil.safetensors"
MPP = 0.5
RUN_TIMEOUT_MS = 120_000


@dataclass(frozen=True)
class WidgetSlide:
    path: Path
    lesion_l0: Polygon
    lookalike_l0: Polygon


@pytest.fixture(scope="module")
def widget_slide(tmp_path_factory: pytest.TempPathFactory) -> WidgetSlide:
    from napari_histattn.io.synthetic import generate_synthetic_slide

    made = generate_synthetic_slide(
        tmp_path_factory.mktemp("widget-slide") / "lesion.tiff",
        2048,
        2048,
        seed=5,
        n_lesions=1,
        n_lookalikes=1,
        lesion_radius_px=300,
        lookalike_radius_px=200,
        mpp=MPP,
    )
    (lesion,) = made.scene.lesions
    (lookalike,) = made.scene.lookalikes
    return WidgetSlide(made.path, Polygon(lesion.polygon_xy()), Polygon(lookalike.polygon_xy()))


def _tiny_checkpoint(folder: Path, name: str, **preprocessing: Any) -> Path:
    import torch

    from napari_histattn.models.checkpoint import save
    from napari_histattn.models.registry import create_model, model_example

    overrides: dict[str, Any] = {
        "attention_sampling": {"n_classes": 2, "n_patches": 16, "patch_size": 32, "downscale": 8},
        "amil": {"n_classes": 2, "patch_size": 32},
    }[name]
    pre: dict[str, Any] = {
        "attention_sampling": {"patch_size": 32, "downsample": 2.0, "downscale": 8},
        "amil": {"patch_size": 32, "target_mpp": 2.0, "tissue": {"thumbnail_size": 512}},
    }[name]
    torch.manual_seed(0)
    model = create_model(name, **{**model_example(name).config, **overrides})
    return save(
        folder / f"tiny_{name}.safetensors",
        model,
        class_names=["benign", "lesion"],
        preprocessing={**pre, "mean": [0.8, 0.6, 0.75], "std": [0.15, 0.2, 0.15], **preprocessing},
        training={"seed": 0, "note": "untrained widget-test checkpoint"},
    )


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("widget-checkpoints")
    return {name: _tiny_checkpoint(folder, name) for name in ("attention_sampling", "amil")}


@pytest.fixture(scope="module")
def as_checkpoint(tiny_checkpoints: dict[str, Path]) -> Path:
    """The demo attention-sampling checkpoint if trained yet, else the tiny one."""
    return DEMO_AS if DEMO_AS.is_file() else tiny_checkpoints["attention_sampling"]


@pytest.fixture
def errors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Messages the widget shows with napari's show_error."""
    from napari_histattn._napari import classify_widget

    shown: list[str] = []
    monkeypatch.setattr(classify_widget, "show_error", lambda message: shown.append(message))
    return shown


def _open(make_napari_viewer: Any, slide: Path | None, checkpoint: Path | None) -> tuple:
    viewer = make_napari_viewer()
    if slide is not None:
        viewer.open(str(slide), plugin="napari-histattn")
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    if checkpoint is not None:
        assert widget.add_checkpoint(checkpoint)
    return viewer, widget


def _classify(qtbot: Any, widget: Any) -> None:
    widget.run_classify()
    assert not widget.is_idle
    qtbot.waitUntil(lambda: widget.is_idle, timeout=RUN_TIMEOUT_MS)


def _assert_idle(widget: Any) -> None:
    assert widget.is_idle
    assert widget.classify_button.enabled
    assert not widget.cancel_button.enabled
    assert widget.progress.value == 0


def _world_yx_of_cell(layer: Any, rc: tuple[int, int]) -> np.ndarray:
    """World (y, x) where napari draws pixel ``rc`` of an image layer (its centre)."""
    return np.asarray(layer.translate) + np.asarray(layer.scale) * np.asarray(rc, dtype=float)


# --------------------------------------------------------------------------- the widget


def test_widget_opens_through_the_manifest_with_its_controls(
    make_napari_viewer, widget_slide: WidgetSlide, tiny_checkpoints, monkeypatch
) -> None:
    monkeypatch.setenv("HISTATTN_CHECKPOINTS", str(tiny_checkpoints["amil"].parent))
    viewer, widget = _open(make_napari_viewer, widget_slide.path, None)

    assert "Research use only" in widget.research_only.value
    assert not widget.research_only.native.isHidden()
    # Bundled checkpoints are found through HISTATTN_CHECKPOINTS, labelled by their metadata.
    labels = [label for label, _ in widget._model_choices()]
    assert any(label == "tiny_amil (amil: benign / lesion)" for label in labels)
    assert "auto" in widget.device.choices and "cpu" in widget.device.choices
    # The slide layer is picked, and it is a slide of ours: no warning note.
    assert widget.layer.value == viewer.layers[0]
    assert widget.layer_note.value == ""

    # Choosing a checkpoint fills in its family's defaults.
    assert widget.add_checkpoint(tiny_checkpoints["attention_sampling"])
    assert (widget.n_patches.value, widget.patch_size.value) == (16, 32)
    assert widget.batch_size.value == 64 and widget.n_patches.label == "patches drawn"
    assert widget.add_checkpoint(tiny_checkpoints["amil"])
    assert widget.n_patches.value == 0 and widget.n_patches.label == "max tiles (0 = all)"
    _assert_idle(widget)


def test_a_plain_image_layer_is_refused_with_a_clear_message(
    make_napari_viewer, tiny_checkpoints, errors: list[str]
) -> None:
    viewer, widget = _open(make_napari_viewer, None, tiny_checkpoints["attention_sampling"])
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="plain")
    assert widget.layer.value.name == "plain"
    assert "not a slide opened by napari-histattn" in widget.layer_note.value
    widget.run_classify()
    assert len(errors) == 1 and "File > Open" in errors[0]
    _assert_idle(widget)
    assert len(viewer.layers) == 1


def widget_slide_size_um(layer) -> tuple[float, float]:
    """World extent (y, x) of a slide layer."""
    lo, hi = (np.asarray(v)[-2:] for v in layer.extent.world)
    return tuple(float(v) for v in hi - lo)


def test_classify_adds_an_aligned_heatmap_regions_and_samples(
    make_napari_viewer, qtbot, widget_slide: WidgetSlide, as_checkpoint: Path, errors
) -> None:
    viewer, widget = _open(make_napari_viewer, widget_slide.path, as_checkpoint)
    slide_layer = viewer.layers[0]
    _classify(qtbot, widget)
    assert errors == []
    shown = widget.result_layers()
    assert set(shown) == {"heatmap", "regions", "samples"}
    heatmap, regions, samples = shown["heatmap"], shown["regions"], shown["samples"]
    result = widget.result_for(slide_layer)

    # Display settings of the heatmap.
    assert heatmap.name == f"{slide_layer.name} attention ({as_checkpoint.stem})"
    # Warm inferno, transparent only near 0 (ignored tissue keeps its colours) and
    # fully opaque from moderate attention, so that the heat shows at whole-slide zoom.
    colours = heatmap.colormap.map(np.array([0.0, 0.1, 0.3, 1.0]))
    assert colours[0, 3] == 0.0 and 0.0 < colours[1, 3] < 1.0
    assert colours[2, 3] == 1.0 and colours[3, 3] == 1.0
    assert colours[3, 0] > 0.9 and colours[3, 1] > 0.9  # inferno's pale yellow top
    assert colours[2, 0] > colours[2, 2]  # warm, not the blue of the low end
    # The raw attention, its full range between the ends of the ramp (the colour bar
    # reads raw values and nothing the raw map tells apart is clipped together).
    data = np.asarray(heatmap.data)
    np.testing.assert_array_equal(data, np.asarray(result.attention, dtype=np.float32))
    assert tuple(heatmap.contrast_limits) == pytest.approx((np.nanmin(data), np.nanmax(data)))
    assert 0.6 <= heatmap.opacity <= 0.9
    assert heatmap.blending == "translucent"
    assert np.isnan(data).any(), "glass should be NaN (drawn transparent)"

    # Geometry: each heatmap pixel on the centre of its patch, in micrometres.
    g = result.geometry
    np.testing.assert_allclose(
        heatmap.scale, (g.stride_l0_xy[1] * MPP, g.stride_l0_xy[0] * MPP), rtol=1e-9
    )
    np.testing.assert_allclose(
        heatmap.translate,
        (
            (g.origin_l0_xy[1] + (g.patch_l0_wh[1] - 1) / 2) * MPP,
            (g.origin_l0_xy[0] + (g.patch_l0_wh[0] - 1) / 2) * MPP,
        ),
        rtol=1e-9,
    )
    # The most attended cell is drawn at full scale on the centre of its patch.
    top_rc = result.top_cell()
    assert data[top_rc] == np.float32(heatmap.contrast_limits[1])
    cx, cy = result.cell_center_l0_xy(*top_rc)
    expected = frames.l0_xy_to_napari_yx((cx - 0.5, cy - 0.5), (MPP, MPP))
    np.testing.assert_allclose(_world_yx_of_cell(heatmap, top_rc), expected, atol=1e-6)

    # Regions: features, metadata for the writer, same world as the slide.
    assert regions.nshapes == sum(
        len(getattr(r.polygon, "geoms", [r.polygon])) for r in result.regions
    )
    assert regions.nshapes >= 1
    assert {"name", "rank", "class", "attention"} <= set(regions.features.columns)
    # Each region's own class, or the neutral "Attention" (never the slide's by default).
    assert set(regions.features["class"]) <= {*result.class_names, "Attention"}
    # Outlines in one bright colour unlike the ground truth's yellow and cyan, wide
    # enough to see with the whole slide on screen (about 1/350 of its extent).
    np.testing.assert_allclose(regions.edge_color, [[0.2, 1.0, 0.2, 1.0]] * regions.nshapes)
    extent_um = max(widget_slide_size_um(slide_layer))
    assert min(regions.edge_width) >= extent_um / 400
    assert regions.metadata["mpp_xy"] == (MPP, MPP)
    assert regions.metadata["slide_path"] == str(widget_slide.path)
    top = result.regions[0].polygon
    rank1 = np.asarray(regions.data[int(np.flatnonzero(regions.features["rank"] == 1)[0])])
    drawn = Polygon(rank1[:, ::-1] / MPP)  # napari draws outer rings (no holes)
    rings = [Polygon(p.exterior) for p in getattr(top, "geoms", [top])]
    assert min(drawn.symmetric_difference(r).area for r in rings) < 1e-6 * drawn.area

    # Samples: one point per distinct sampled location, at its centre.
    assert len(samples.data) == len(result.samples)
    np.testing.assert_allclose(samples.data, result.samples.centers_l0_xy[:, ::-1] * MPP, rtol=1e-9)

    # The result panel names the predicted class and each class's probability.
    text = widget.result_label.value
    assert f"predicted: {result.predicted_class}" in text
    for name, p in result.probabilities_by_class.items():
        assert f"{name}: {p:.3f}" in text
    # ...and each attended region with its own evidence, or none.
    for region in widget.regions_for():
        assert f"#{region.rank} " in text

    # Show attention overlay hides and shows every result layer.
    widget.show_overlay.value = False
    assert not any(layer.visible for layer in widget.result_layers().values())
    widget.show_overlay.value = True
    assert all(layer.visible for layer in widget.result_layers().values())

    # The threshold slider recomputes the regions from the stored result.
    area_at = {}
    for threshold in (0.8, 0.3):
        widget.threshold.value = threshold
        qtbot.waitUntil(lambda: not widget.threshold_pending)  # a quick second move lands
        layer = widget.result_layers()["regions"]
        assert layer in viewer.layers
        area_at[threshold] = sum(r.polygon.area for r in widget.regions_for(slide_layer))
        expected_regions = result.regions_at(threshold, result.top_k)
        assert layer.nshapes == sum(
            len(getattr(r.polygon, "geoms", [r.polygon])) for r in expected_regions
        )
    assert area_at[0.3] > area_at[0.8]
    _assert_idle_after_success(widget)


def _assert_idle_after_success(widget: Any) -> None:
    assert widget.is_idle
    assert widget.classify_button.enabled and not widget.cancel_button.enabled
    assert widget.export_button.enabled
    assert widget.status.value == "done"


@pytest.mark.skipif(
    not DEMO_AMIL.is_file(), reason="demo checkpoint not trained yet (sample_data/)"
)
def test_demo_amil_puts_the_heatmap_maximum_and_top_region_on_the_lesion(
    make_napari_viewer, qtbot, widget_slide: WidgetSlide, tmp_path: Path
) -> None:
    # A-MIL's attention comes from the full-resolution tiles, so it can single out the
    # lesion against the look-alike.
    viewer, widget = _open(make_napari_viewer, widget_slide.path, DEMO_AMIL)
    _classify(qtbot, widget)
    heatmap = widget.result_layers()["heatmap"]
    y, x = _world_yx_of_cell(heatmap, widget.result_for().top_cell())
    # World (micrometres) to level-0 pixels through the frames module.
    l0 = frames.napari_yx_to_l0_xy((y, x), (MPP, MPP))
    assert widget_slide.lesion_l0.buffer(0.5).contains(Point(l0)), l0

    written = widget.export_to(tmp_path / "regions.geojson")
    doc = json.loads(written["geojson"].read_text())
    top = min(doc["features"], key=lambda f: f["properties"]["measurements"]["rank"])
    assert shape(top["geometry"]).intersects(widget_slide.lesion_l0)
    assert not shape(top["geometry"]).intersects(widget_slide.lookalike_l0)


@pytest.mark.skipif(not DEMO_AS.is_file(), reason="demo checkpoint not trained yet (sample_data/)")
def test_demo_attention_sampling_calls_the_lesion_by_the_patches_it_read(
    make_napari_viewer, qtbot, widget_slide: WidgetSlide, tmp_path: Path
) -> None:
    # Attention sampling's attention network sees the 8 um/px view, where lesions and
    # look-alikes look alike by design, so it attends to both; the patches it reads at
    # full resolution decide the slide's class and each region's class.
    viewer, widget = _open(make_napari_viewer, widget_slide.path, DEMO_AS)
    _classify(qtbot, widget)
    result = widget.result_for()
    assert result.class_names[int(np.argmax(result.probabilities))] == "lesion"

    written = widget.export_to(tmp_path / "regions.geojson")
    doc = json.loads(written["geojson"].read_text())
    called = [
        shape(f["geometry"])
        for f in doc["features"]
        if f["properties"].get("classification", {}).get("name") == "lesion"
    ]
    assert called, [f["properties"].get("classification") for f in doc["features"]]
    for geometry in called:
        assert geometry.intersects(widget_slide.lesion_l0)
        assert not geometry.intersects(widget_slide.lookalike_l0)


def test_export_follows_qupath_conventions_and_the_csv_agrees(
    make_napari_viewer, qtbot, widget_slide: WidgetSlide, tiny_checkpoints, tmp_path: Path
) -> None:
    checkpoint = DEMO_AMIL if DEMO_AMIL.is_file() else tiny_checkpoints["amil"]
    viewer, widget = _open(make_napari_viewer, widget_slide.path, checkpoint)
    _classify(qtbot, widget)
    result = widget.result_for(viewer.layers[0])
    widget.threshold.value = 0.3
    written = widget.export_to(tmp_path / "out" / "regions.geojson", crops=True)
    assert written["csv"].name == "regions_patches.csv"

    doc = json.loads(written["geojson"].read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"]
    assert doc["properties"]["mpp_xy"] == [MPP, MPP]
    provenance = doc["properties"]["provenance"]
    assert provenance["checkpoint_sha256"] == result.provenance["checkpoint_sha256"]
    assert provenance["threshold"] == pytest.approx(0.3)
    assert provenance["predicted_class"] == result.predicted_class
    for feature in doc["features"]:
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] in {*result.class_names, "Attention"}
        colour = props["classification"]["color"]
        assert len(colour) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
        assert {"attention_max", "attention_mass", "rank"} <= set(props["measurements"])
        geometry = shape(feature["geometry"])
        assert geometry.is_valid and geometry.area > 0
        for ring in feature["geometry"]["coordinates"][:1]:
            assert ring[0] == ring[-1]

    with written["csv"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(result.patches)
    assert set(rows[0]) == {"x", "y", "w", "h", "attention"} | {
        f"prob_{n}" for n in result.class_names
    }
    # A-MIL: one row per tile. Each region's attention mass is the sum of the CSV
    # attention of the patches it covers, and its maximum their maximum.
    centres = [
        Point(float(r["x"]) + float(r["w"]) / 2, float(r["y"]) + float(r["h"]) / 2) for r in rows
    ]
    for feature in doc["features"]:
        region = shape(feature["geometry"])
        inside = [
            float(r["attention"]) for r, c in zip(rows, centres, strict=True) if region.contains(c)
        ]
        m = feature["properties"]["measurements"]
        assert sum(inside) == pytest.approx(m["attention_mass"], rel=1e-5)
        assert max(inside) == pytest.approx(m["attention_max"], rel=1e-5)
    crops = [k for k in written if k.startswith("crop_")]
    assert len(crops) == len(doc["features"])


def test_same_seed_gives_the_same_heatmap_and_the_engine_agrees(
    make_napari_viewer, qtbot, widget_slide: WidgetSlide, as_checkpoint: Path
) -> None:
    from napari_histattn.inference.engine import classify
    from napari_histattn.progress import run_to_completion

    viewer, widget = _open(make_napari_viewer, widget_slide.path, as_checkpoint)
    widget.device.value = "cpu"
    widget.seed.value = 7
    maps = []
    for _ in range(2):
        _classify(qtbot, widget)
        maps.append(np.array(widget.result_layers()["heatmap"].data, copy=True))
    np.testing.assert_array_equal(maps[0], maps[1])
    # Running the same model again replaces its layers.
    assert sum(layer.metadata.get("histattn_result") == "heatmap" for layer in viewer.layers) == 1

    # ... in place (no layer removed and added: that froze the viewer for 0.9 s), with
    # the new run's values, samples and regions, and no decision carried over.
    before = dict(widget.result_layers())
    drawn_before = np.array(before["samples"].data, copy=True)
    widget.review.select(0)
    widget.review.decide("rejected")
    widget.seed.value = 8
    _classify(qtbot, widget)
    after, result = widget.result_layers(), widget.result_for()
    assert set(after) == set(before) and all(after[k] is before[k] for k in before)
    heat = np.asarray(result.attention, dtype=np.float32)
    np.testing.assert_array_equal(after["heatmap"].data, heat)
    assert tuple(after["heatmap"].contrast_limits) == pytest.approx(
        (np.nanmin(heat), np.nanmax(heat))
    )
    assert after["heatmap"].metadata["provenance"]["seed"] == 8
    np.testing.assert_allclose(
        np.sort(after["samples"].features["attention"]), np.sort(result.samples.attention)
    )
    assert len(after["samples"].data) == len(result.samples.attention)
    assert not np.array_equal(np.asarray(after["samples"].data), drawn_before)  # seed 8's draws
    assert len(after["regions"].data) == len(widget.regions_for())
    assert set(after["regions"].features["review"]) <= {"pending"}

    # The widget is a thin layer over the engine: same seed, same map and class.
    direct = run_to_completion(classify(widget_slide.path, as_checkpoint, device="cpu", seed=7))
    np.testing.assert_array_equal(maps[1], np.asarray(direct.attention, dtype=np.float32))
    assert widget.result_for(viewer.layers[0]).predicted_class == direct.predicted_class


# --------------------------------------------------------------------------- cancel and errors


class _SlowEngine:
    """Stands in for engine.classify: many small batches, stopping as the engine does."""

    def __init__(self) -> None:
        self.batches = 0

    def classify(self, slide: Any, checkpoint: Any, *, cancel: threading.Event, **_: Any):
        from napari_histattn.inference.errors import Cancelled
        from napari_histattn.progress import Progress

        for i in range(2000):
            time.sleep(0.005)
            self.batches += 1
            yield Progress("patches", i + 1, 2000)
            if cancel.is_set():
                raise Cancelled("patches", i + 1, 2000)
        raise AssertionError("the run was never cancelled")


@pytest.fixture
def slow_engine(monkeypatch: pytest.MonkeyPatch) -> _SlowEngine:
    from napari_histattn.inference import engine

    fake = _SlowEngine()
    monkeypatch.setattr(engine, "classify", fake.classify)
    return fake


def test_cancel_stops_the_run_within_one_batch_and_adds_nothing(
    make_napari_viewer, qtbot, widget_slide, as_checkpoint, slow_engine, errors
) -> None:
    viewer, widget = _open(make_napari_viewer, widget_slide.path, as_checkpoint)
    widget.run_classify()
    qtbot.waitUntil(lambda: slow_engine.batches >= 5, timeout=20_000)
    assert widget.cancel_button.enabled and not widget.classify_button.enabled
    widget.cancel()
    at_cancel = slow_engine.batches
    qtbot.waitUntil(lambda: widget.is_idle, timeout=20_000)
    assert slow_engine.batches <= at_cancel + 1
    assert [layer.name for layer in viewer.layers] == [viewer.layers[0].name]
    assert widget.result_layers() == {}
    assert errors == []
    _assert_idle(widget)
    assert widget.status.value.startswith("cancelled")


def test_removing_the_slide_layer_mid_run_cancels_it(
    make_napari_viewer, qtbot, widget_slide, as_checkpoint, slow_engine, errors
) -> None:
    viewer, widget = _open(make_napari_viewer, widget_slide.path, as_checkpoint)
    widget.run_classify()
    qtbot.waitUntil(lambda: slow_engine.batches >= 3, timeout=20_000)
    viewer.layers.remove(viewer.layers[0])
    at_remove = slow_engine.batches
    qtbot.waitUntil(lambda: widget.is_idle, timeout=20_000)
    assert slow_engine.batches <= at_remove + 1
    assert len(viewer.layers) == 0
    assert errors == []
    assert widget.layer.value is None and not widget.cancel_button.enabled


def test_two_slides_run_independently(
    make_napari_viewer, qtbot, widget_slide, as_checkpoint, errors
) -> None:
    viewer, widget = _open(make_napari_viewer, widget_slide.path, as_checkpoint)
    viewer.open(str(widget_slide.path), plugin="napari-histattn", name="second")
    first, second = viewer.layers[0], viewer.layers["second"]
    widget.layer.value = first
    widget.run_classify()
    widget.layer.value = second
    widget.run_classify()
    qtbot.waitUntil(lambda: widget.is_idle, timeout=RUN_TIMEOUT_MS)
    assert errors == []
    for layer in (first, second):
        assert widget.result_layers(layer)["heatmap"].name.startswith(layer.name)


def test_a_bad_checkpoint_gives_a_notification_and_leaves_the_widget_idle(
    make_napari_viewer, qtbot, widget_slide, tiny_checkpoints, tmp_path: Path, errors
) -> None:
    viewer, widget = _open(make_napari_viewer, widget_slide.path, None)
    # Not a checkpoint at all: refused when chosen.
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    assert widget.add_checkpoint(garbage) is False
    assert len(errors) == 1 and "garbage.safetensors" in errors[0]

    # A readable header with corrupted weights: the run fails in the worker.
    source = tiny_checkpoints["attention_sampling"]
    broken = tmp_path / "broken.safetensors"
    blob = bytearray(source.read_bytes())
    blob[-8:] = b"\xff" * 8
    broken.write_bytes(bytes(blob))
    broken.with_suffix(".json").write_text(source.with_suffix(".json").read_text())
    assert widget.add_checkpoint(broken)
    _classify(qtbot, widget)
    assert len(errors) == 2 and "broken.safetensors" in errors[1]
    assert len(viewer.layers) == 1
    _assert_idle(widget)
    assert widget.status.value.startswith("failed")


def test_an_unwritable_export_raises_our_error_and_keeps_the_earlier_file(
    make_napari_viewer, qtbot, widget_slide, as_checkpoint, tmp_path: Path, monkeypatch
) -> None:
    viewer, widget = _open(make_napari_viewer, widget_slide.path, as_checkpoint)
    target = tmp_path / "regions.geojson"
    with pytest.raises(Exception, match="Classify"):
        widget.export_to(target)  # nothing to export yet
    _classify(qtbot, widget)
    written = widget.export_to(target)
    before = {k: p.read_bytes() for k, p in written.items()}

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    widget.threshold.value = 0.2  # a different export, which must not land
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ExportError, match="regions.geojson"):
        widget.export_to(target)
    monkeypatch.undo()
    assert {k: p.read_bytes() for k, p in written.items()} == before
    manifest = "regions.manifest.json"  # the set's manifest, written last
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [manifest, *(p.name for p in written.values())]
    )

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError):
        widget.export_to(blocker / "regions.geojson")


# --------------------------------------------------------------------------- histattn demo

_DEMO_RUNNER = """
import functools, sys
import napari_histattn.io.synthetic as synthetic
synthetic.synthetic_sample_slide = functools.partial(synthetic.synthetic_sample_slide, **{tiny!r})
from napari_histattn.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_demo_classify_saves_a_screenshot_with_the_overlay(
    tiny_sample_env: Path, tiny_sample_kwargs: dict, tmp_path: Path, tiny_checkpoints
) -> None:
    import subprocess
    import sys

    from PIL import Image

    out = tmp_path / "overlay.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _DEMO_RUNNER.format(tiny=tiny_sample_kwargs),
            "demo",
            "--classify",
            "--checkpoint",
            str(tiny_checkpoints["attention_sampling"]),
            "--screenshot",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "histattn demo: predicted " in proc.stdout
    rgb = np.asarray(Image.open(out).convert("RGB")).astype(float)
    assert rgb.shape[0] > 300 and rgb.std() > 20
    # The docked widget is in the window: its research-use label is drawn in amber.
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    assert ((r > 200) & (g > 140) & (g < 190) & (b < 40)).sum() > 50


def test_demo_without_a_checkpoint_says_where_it_looked() -> None:
    from napari_histattn.cli.demo import _classify_and_wait
    from napari_histattn.errors import HistattnError

    class NoModel:
        class model:  # noqa: N801 - mimics the widget's attribute
            value = None

    with pytest.raises(HistattnError, match="--checkpoint"):
        _classify_and_wait(NoModel())


def test_a_result_built_on_undecodable_tiles_shows_a_warning_not_a_diagnosis(
    make_napari_viewer, qtbot, widget_slide, as_checkpoint
) -> None:
    viewer, widget = _open(make_napari_viewer, widget_slide.path, as_checkpoint)
    _classify(qtbot, widget)
    shown = next(iter(widget._shown.values()))
    assert widget.result_label.value.startswith("predicted: ")
    shown.result.provenance.update(unreadable_tiles=12, unreadable_fraction=0.2)
    widget._show_result(shown)
    text = widget.result_label.value
    assert text.startswith("NOT A DIAGNOSIS: 20.0% of what the model read")
    assert "predicted:" not in text
    assert "12 undecodable tile(s)" in text


def test_a_coarse_slide_is_refused_until_upsampling_is_allowed_in_the_widget(
    make_napari_viewer, qtbot, tmp_path: Path, tiny_checkpoints: dict[str, Path], errors
) -> None:
    import tifffile

    # 10 um/px against the A-MIL checkpoint's 2 um/px: a 5x upsampling, beyond the 4x limit.
    rgb = np.full((256, 256, 3), 245, np.uint8)
    rgb[40:220, 40:220] = (190, 110, 170)  # a pink block of "tissue"
    coarse = tmp_path / "coarse.tif"
    tifffile.imwrite(coarse, rgb, resolution=(1e3, 1e3), resolutionunit="CENTIMETER")
    viewer, widget = _open(make_napari_viewer, coarse, tiny_checkpoints["amil"])
    widget.device.value = "cpu"
    assert not widget.allow_upsample.value  # refused unless asked
    _classify(qtbot, widget)
    assert len(errors) == 1 and "upsampled 5.0x, beyond 4x" in errors[0]
    assert "'allow upsampling' box" in errors[0]  # the message names the control
    assert widget.result_layers() == {}

    widget.allow_upsample.value = True
    _classify(qtbot, widget)
    assert len(errors) == 1
    result = widget.result_for(viewer.layers[0])
    assert any("upsampled 5.0x" in m for m in result.provenance["messages"])
    assert "heatmap" in widget.result_layers()
