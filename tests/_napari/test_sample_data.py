"""Sample data through the manifest, and the ``histattn demo`` command end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_histattn.errors import SlideError

npe2 = pytest.importorskip("npe2")


def _open_sample(key: str) -> list:
    """Run the manifest's sample-data command, as napari's File > Open Sample does."""
    pm = npe2.PluginManager.instance()
    pm.discover()
    for contrib in pm.get_manifest("napari-histattn").contributions.sample_data:
        if contrib.key == key:
            return contrib.open(_registry=pm.commands)
    raise AssertionError(f"no sample {key!r} in the manifest")


# --- the synthetic sample --------------------------------------------------------


def test_synthetic_sample_is_a_slide_and_its_ground_truth(tiny_sample_env: Path) -> None:
    layers = _open_sample("synthetic")
    assert [kind for _, _, kind in layers] == ["image", "shapes"]
    (image, image_kw, _), (polygons, shapes_kw, _) = layers

    assert image_kw["rgb"] is True
    mpp_xy = image_kw["metadata"]["mpp_xy"]
    assert mpp_xy is not None and image_kw["metadata"]["mpp_source"] != "none"
    np.testing.assert_allclose(image_kw["scale"], (mpp_xy[1], mpp_xy[0]))
    level0 = image[0] if image_kw["multiscale"] else image
    height_um = level0.shape[0] * image_kw["scale"][0]
    width_um = level0.shape[1] * image_kw["scale"][1]

    classes = list(shapes_kw["features"]["class"])
    assert set(classes) == {"lesion", "lookalike"}
    assert len(polygons) == len(classes)
    for poly in polygons:
        assert poly.ndim == 2 and poly.shape[1] == 2 and len(poly) >= 3
        assert poly[:, 0].min() >= 0 and poly[:, 0].max() <= height_um
        assert poly[:, 1].min() >= 0 and poly[:, 1].max() <= width_um
    # Same units as the image, so the two layers share the scale bar.
    assert shapes_kw.get("units") == image_kw.get("units")
    # Coloured by class: lesions and look-alikes differ.
    colors = np.asarray(shapes_kw["edge_color"])
    lesion_color = colors[classes.index("lesion")]
    lookalike_color = colors[classes.index("lookalike")]
    assert not np.allclose(lesion_color, lookalike_color)


def test_synthetic_polygons_sit_on_darker_tissue(tiny_sample_env: Path) -> None:
    """The overlay is aligned: inside a polygon the slide is darker than around it."""
    (image, image_kw, _), (polygons, shapes_kw, _) = _open_sample("synthetic")
    level0 = image[0] if image_kw["multiscale"] else image
    sy, sx = image_kw["scale"]
    for poly in polygons:
        cy, cx = poly.mean(axis=0)
        r, c = int(cy / sy), int(cx / sx)
        inner = np.asarray(level0[max(r - 8, 0) : r + 8, max(c - 8, 0) : c + 8]).mean()
        slide_mean = np.asarray(image[-1] if image_kw["multiscale"] else image).mean()
        assert inner < slide_mean, "polygon centre is not on the dense region it outlines"


def test_ground_truth_layer_from_geojson(tmp_path: Path) -> None:
    from napari_histattn._napari.layers import ground_truth_shapes_layer

    square = [[10, 20], [110, 20], [110, 70], [10, 70], [10, 20]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [square]},
                "properties": {"classification": {"name": "lesion"}},
            },
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [square]},
                "properties": {"classification": {"name": "tissue"}},
            },
        ],
    }
    path = tmp_path / "gt.geojson"
    path.write_text(json.dumps(doc))
    polygons, kwargs, kind = ground_truth_shapes_layer(path, (0.5, 0.25))
    assert kind == "shapes"
    assert list(kwargs["features"]["class"]) == ["lesion"]  # tissue is left out
    (poly,) = polygons
    # Level-0 (x, y) -> napari (y, x) in micrometres; the closing vertex dropped.
    np.testing.assert_allclose(poly[0], (20 * 0.25, 10 * 0.5))
    np.testing.assert_allclose(poly[1], (20 * 0.25, 110 * 0.5))
    assert len(poly) == 4
    (pixel_poly,), pixel_kw, _ = ground_truth_shapes_layer(path, None)
    np.testing.assert_allclose(pixel_poly[2], (70, 110))


# --- the CMU sample ----------------------------------------------------------------


def test_cmu_sample_opens_from_shared_data(cmu_svs: Path, monkeypatch) -> None:
    monkeypatch.setenv("HISTATTN_SHARED_DATA", str(cmu_svs.parent.parent))
    ((data, kwargs, kind),) = _open_sample("cmu-1-small-region")
    assert kind == "image"
    assert kwargs["metadata"]["vendor"] == "aperio"
    np.testing.assert_allclose(kwargs["scale"], (0.499, 0.499), atol=1e-3)


def test_cmu_sample_without_the_file_says_what_to_do(monkeypatch, tmp_path: Path) -> None:
    from napari_histattn._napari import sample_data

    monkeypatch.setattr(sample_data, "find_cmu_small_region", lambda: None)
    with pytest.raises(SlideError, match="HISTATTN_SHARED_DATA"):
        sample_data.cmu_small_region()


# --- histattn demo --------------------------------------------------------------------


# Runs `histattn demo` with the synthetic sample made tiny (as tiny_sample_env does
# in-process), so that the subprocess renders nothing and hits the cache.
_DEMO_RUNNER = """
import functools, sys
import napari_histattn.io.synthetic as synthetic
synthetic.synthetic_sample_slide = functools.partial(synthetic.synthetic_sample_slide, **{tiny!r})
from napari_histattn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_demo(args: list[str], tiny: dict, tmp_path: Path) -> Path:
    out = tmp_path / "demo.png"
    runner = _DEMO_RUNNER.format(tiny=tiny)
    proc = subprocess.run(
        [sys.executable, "-c", runner, "demo", "--screenshot", str(out), *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(out) in proc.stdout
    return out


def _assert_not_blank(png: Path) -> np.ndarray:
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(float)
    assert rgb.shape[0] > 200 and rgb.shape[1] > 200
    assert rgb.std() > 20, "screenshot is a flat colour"
    assert rgb.mean() > 30, "screenshot is (nearly) black"
    return rgb


@pytest.mark.gui
@pytest.mark.slow
def test_demo_screenshot_of_the_synthetic_sample(
    tiny_sample_env: Path, tiny_sample_kwargs: dict, tmp_path: Path
) -> None:
    png = _run_demo(["--canvas-only"], tiny_sample_kwargs, tmp_path)
    rgb = _assert_not_blank(png)
    # The lesion overlay is drawn: its yellow outline colour is on screen.
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    yellow = (r > 200) & (g > 170) & (b < 80)
    assert yellow.sum() > 50, "no lesion outline in the screenshot"


def test_demo_shows_another_slide_without_an_overlay(cmu_svs: Path) -> None:
    from napari_histattn.cli.demo import demo_layers

    ((data, kwargs, kind),) = demo_layers(cmu_svs)
    assert kind == "image" and kwargs["metadata"]["vendor"] == "aperio"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 display check")
def test_demo_without_a_display_explains_xvfb(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run(
        [sys.executable, "-m", "napari_histattn", "demo", "--screenshot", str(tmp_path / "x.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "xvfb-run" in proc.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.gui
def test_open_sample_in_napari(make_napari_viewer, tiny_sample_env: Path) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-histattn", "synthetic")
    image, shapes = layers
    assert image.rgb is True and shapes.nshapes >= 2
    assert set(shapes.features["class"]) == {"lesion", "lookalike"}
    # The overlay lies within the slide's extent, in the same (micrometre) world.
    lo, hi = image.extent.world
    assert np.all(shapes.extent.world[0] >= lo - 1e-6)
    assert np.all(shapes.extent.world[1] <= hi + 1e-6)
    assert [str(u) for u in shapes.units] == [str(u) for u in image.units]


@pytest.mark.gui
def test_first_use_generates_the_sample_in_a_worker_under_its_outlines(
    make_napari_viewer, qtbot, tiny_sample_env: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("HISTATTN_CACHE", str(tmp_path / "empty-cache"))  # first use
    viewer = make_napari_viewer()
    (outlines,) = viewer.open_sample("napari-histattn", "synthetic")
    # Returned before the slide was written: the outlines (its layout) alone, at once.
    assert [layer.name for layer in viewer.layers] == ["ground truth"]
    assert set(outlines.features["class"]) == {"lesion", "lookalike"}
    assert outlines.metadata["geojson_path"] is None
    with pytest.raises(SlideError, match="still being generated"):  # a second click
        viewer.open_sample("napari-histattn", "synthetic")

    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=180_000)
    slide, shapes = viewer.layers
    assert slide.rgb and shapes is outlines  # the slide went under its outlines
    truth = Path(outlines.metadata["geojson_path"])
    assert truth.is_file() and (tmp_path / "empty-cache") in truth.parents
    assert "Sample slide ready" in viewer.status
    # The outlines drawn early are the ones the written slide's ground truth holds.
    from napari_histattn._napari.layers import ground_truth_shapes_layer

    polygons, _, _ = ground_truth_shapes_layer(truth, slide.metadata["mpp_xy"])
    assert len(polygons) == len(outlines.data)
    for written, early in zip(polygons, outlines.data, strict=True):
        np.testing.assert_allclose(written, early)
    # Cached now: the next use opens both layers in one step.
    viewer.layers.clear()
    assert [layer.name for layer in viewer.open_sample("napari-histattn", "synthetic")] == [
        "synthetic slide",
        "ground truth",
    ]
