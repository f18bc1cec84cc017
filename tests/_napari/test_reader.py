"""The napari reader: cheap refusals, micrometre layers, metadata, and napari itself."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from napari_histattn._napari.reader import (
    associated_image_layers,
    napari_get_reader,
    read_slides,
)
from napari_histattn.errors import SlideError

CMU_MPP = 0.499


# --- what the reader refuses -------------------------------------------------------


def test_every_bad_slide_is_refused(bad_slides: Path) -> None:
    files = sorted(p for p in bad_slides.iterdir() if p.is_file())
    assert files, "bad-slides folder is empty"
    for path in files:
        assert napari_get_reader(str(path)) is None, path.name


def test_text_file_directory_and_junk_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a slide\n")
    fake_tiff = tmp_path / "fake.tiff"
    fake_tiff.write_text("not a tiff either\n")
    folder = tmp_path / "slides.svs"  # a directory with a slide-like name
    folder.mkdir()
    for path in (text, fake_tiff, folder, tmp_path, tmp_path / "missing.svs"):
        assert napari_get_reader(str(path)) is None, path
    for junk in (None, 42, [], b"x.svs"):
        assert napari_get_reader(junk) is None  # type: ignore[arg-type]


def test_a_list_is_read_only_when_every_file_is_readable(
    cmu_svs: Path, bad_slides: Path, tmp_path: Path
) -> None:
    good = napari_get_reader([str(cmu_svs), str(cmu_svs)])
    assert callable(good)
    layers = good([str(cmu_svs), str(cmu_svs)])
    assert len(layers) == 2
    assert napari_get_reader([str(cmu_svs), str(bad_slides / "broken.svs")]) is None


def test_every_shared_slide_gets_a_reader(shared_slides: Path) -> None:
    files = sorted(p for p in shared_slides.iterdir() if p.is_file())
    assert files
    for path in files:
        reader = napari_get_reader(str(path))
        assert callable(reader), path.name
        ((data, kwargs, layer_type),) = reader(str(path))
        assert layer_type == "image"
        assert kwargs["rgb"] is True
        level0 = data[0] if kwargs["multiscale"] else data
        assert level0.dtype == np.uint8 and level0.shape[-1] == 3
        assert kwargs["metadata"]["level_dimensions"], path.name


# --- what the reader returns ---------------------------------------------------------


def test_cmu_layer_is_rgb_in_micrometres_with_slide_metadata(cmu_svs: Path) -> None:
    ((data, kwargs, layer_type),) = napari_get_reader(str(cmu_svs))(str(cmu_svs))
    assert layer_type == "image"
    assert kwargs["rgb"] is True
    assert kwargs["name"] == "CMU-1-Small-Region"
    np.testing.assert_allclose(kwargs["scale"], (CMU_MPP, CMU_MPP), atol=1e-3)
    assert tuple(kwargs["translate"]) == (0.0, 0.0)
    assert list(kwargs["contrast_limits"]) == [0, 255]
    level0 = data[0] if kwargs["multiscale"] else data
    assert level0.shape == (2967, 2220, 3)
    # A single small level is shown as a plain image, read once.
    assert kwargs["multiscale"] is False
    meta = kwargs["metadata"]
    assert meta["vendor"] == "aperio"
    assert meta["mpp_source"] == "openslide"
    assert meta["quickhash"]
    assert Path(meta["path"]).name == cmu_svs.name
    assert {"label", "macro", "thumbnail"} <= set(meta["associated_images"])
    assert meta["slide"].mpp_xy is not None
    if "units" in kwargs:
        assert tuple(kwargs["units"]) == ("micrometer", "micrometer")


def test_slide_without_mpp_is_in_pixels_and_says_so(no_mpp_tiff: Path) -> None:
    reader = napari_get_reader(str(no_mpp_tiff))
    assert callable(reader), "a plain tiled TIFF must be readable (no .tiff refusal)"
    ((data, kwargs, _),) = reader(str(no_mpp_tiff))
    assert tuple(kwargs["scale"]) == (1.0, 1.0)
    assert kwargs["metadata"]["mpp_source"] == "none"
    if "units" in kwargs:
        assert tuple(kwargs["units"]) == ("pixel", "pixel")
    level0 = data[0] if kwargs["multiscale"] else data
    assert level0.shape == (512, 384, 3)


def test_layer_keeps_the_slide_open(cmu_svs: Path) -> None:
    ((data, kwargs, _),) = read_slides(str(cmu_svs))
    del kwargs["metadata"]["slide"]  # only the lazy level is left holding it
    gc.collect()
    tile = np.asarray(data[100:164, 200:264])
    assert tile.shape == (64, 64, 3)
    assert tile.std() > 0


def test_read_raises_our_error_for_a_file_that_passed_no_check(bad_slides: Path) -> None:
    with pytest.raises(SlideError, match="broken.svs"):
        read_slides(str(bad_slides / "broken.svs"))


def test_associated_images_are_reachable(cmu_svs: Path) -> None:
    layers = associated_image_layers(cmu_svs)
    names = {kw["name"] for _, kw, _ in layers}
    assert names == {f"CMU-1-Small-Region {n}" for n in ("label", "macro", "thumbnail")}
    for data, kwargs, layer_type in layers:
        assert layer_type == "image" and kwargs["rgb"] is True
        assert data.ndim == 3 and data.shape[2] == 3 and data.dtype == np.uint8
    with pytest.raises(SlideError, match="no associated image 'nope'"):
        associated_image_layers(cmu_svs, ["nope"])


# --- inside napari ---------------------------------------------------------------------


@pytest.mark.gui
def test_viewer_open_through_the_plugin(make_napari_viewer, cmu_svs: Path) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(str(cmu_svs), plugin="napari-histattn")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.rgb is True
    np.testing.assert_allclose(layer.scale, (CMU_MPP, CMU_MPP), atol=1e-3)
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert layer.metadata["vendor"] == "aperio"
    assert tuple(layer.contrast_limits) == (0, 255)
    # World extent in micrometres: 2220 x 2967 px at 0.499 um/px.
    extent = layer.extent.world[1] - layer.extent.world[0]
    np.testing.assert_allclose(extent, (2967 * CMU_MPP, 2220 * CMU_MPP), rtol=2e-3)


@pytest.mark.gui
def test_screenshot_of_the_shown_slide_is_not_blank(
    make_napari_viewer, cmu_svs: Path, qtbot
) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.open(str(cmu_svs), plugin="napari-histattn")
    viewer.reset_view()
    qtbot.wait(300)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    rgb = shot[..., :3].astype(float)
    h, w = rgb.shape[:2]
    centre = rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    assert centre.mean() > 60, "canvas is (nearly) black"
    assert centre.std() > 15, "canvas is a flat colour"
    # Tissue is pink/purple: red and blue above green on average.
    r, g, b = (centre[..., i].mean() for i in range(3))
    assert r > g and b > g


class _ReadSpy:
    """Wraps a lazy level and records the size of every read napari makes."""

    def __init__(self, level) -> None:
        self._level = level
        self.shape = level.shape
        self.dtype = level.dtype
        self.ndim = len(level.shape)
        self.size = int(np.prod(level.shape))
        self.reads: list[int] = []

    def __getitem__(self, key):
        out = np.asarray(self._level[key])
        self.reads.append(out.size)
        return out

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self._level[:, :, :])
        self.reads.append(out.size)
        return out if dtype is None else out.astype(dtype)


@pytest.mark.gui
def test_adding_a_multiscale_slide_reads_no_whole_high_res_level(
    make_napari_viewer, qtbot, tmp_path: Path
) -> None:
    import tifffile

    from napari_histattn._napari.layers import slide_layer_data
    from napari_histattn.io.slide import open_slide

    path = tmp_path / "pyramid.tiff"
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(2048, 2048, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        for k in range(4):
            tif.write(
                base[:: 2**k, :: 2**k],
                photometric="rgb",
                tile=(256, 256),
                compression="jpeg",
                resolution=(1e4 / 0.5, 1e4 / 0.5),
                resolutionunit="CENTIMETER",
                subfiletype=1 if k else 0,
            )
    data, kwargs, _ = slide_layer_data(open_slide(path))
    assert kwargs["multiscale"] is True and len(data) == 4
    spies = [_ReadSpy(level) for level in data]
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(spies, **kwargs)
    viewer.reset_view()
    qtbot.wait(100)
    assert tuple(layer.contrast_limits) == (0, 255)
    # napari reads the smallest level whole (its thumbnail) and, for the whole
    # slide on screen, a level about the canvas's size: never level 0 whole.
    assert spies[-1].reads, "napari read nothing at all"
    assert not spies[0].reads
    # Zoomed in on a corner, napari reads a window of level 0, not all of it.
    scene = getattr(viewer, "scene", None)  # napari >= 0.9 moved the camera there
    camera = scene.camera if scene is not None else viewer.camera
    camera.zoom *= 16
    camera.center = (100 * 0.5, 100 * 0.5)
    qtbot.wait(200)
    assert spies[0].reads, "zoomed in, napari should show level 0"
    assert all(n < spies[0].size / 4 for n in spies[0].reads), "level 0 read whole"


@pytest.mark.gui
def test_viewer_opens_a_slide_without_mpp_in_pixels(make_napari_viewer, no_mpp_tiff: Path) -> None:
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(no_mpp_tiff), plugin="napari-histattn")
    assert tuple(layer.scale) == (1.0, 1.0)
    assert [str(u) for u in layer.units] == ["pixel", "pixel"]
    assert layer.metadata["mpp_source"] == "none"
