"""Slide I/O: real slides against OpenSlide, fallbacks, bad input, computed levels."""

from __future__ import annotations

import json
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import pytest
from slide_test_helpers import Written, corrupt_tile

import napari_histattn.io.slide as slide_mod
from napari_histattn.errors import SlideError
from napari_histattn.io.levels import (
    COMPUTED_BLOCK,
    ArrayTooLargeError,
    LevelArray,
    downsample2,
    plan_computed_levels,
)
from napari_histattn.io.slide import (
    PLACEHOLDER_RGB,
    InvalidRegionError,
    SlideReadWarning,
    can_open,
    open_slide,
    rgba_to_rgb,
)

SHARED = ["CMU-1-Small-Region.svs", "boxes.tiff", "boxes_0.dcm", "boxes_1.dcm", "small.svs"]
BAD = ["broken.svs", "small_dicom.dcm", "unopenable.tiff", "unreadable.svs"]


def openslide_rgb(osr: openslide.OpenSlide, l0_xy, level, size_wh) -> tuple[np.ndarray, np.ndarray]:
    """OpenSlide's region composited on white (the reference), and its alpha."""
    rgba = np.asarray(osr.read_region(l0_xy, level, size_wh))
    return rgba_to_rgb(rgba), rgba[..., 3]


def assert_matches_openslide(ours: np.ndarray, ref: np.ndarray, alpha: np.ndarray) -> None:
    """Exact where OpenSlide's alpha is 0 or 255; within 1 where it is partial.

    Partial alpha arises only from sub-pixel placement at non-integer downsamples;
    we composite OpenSlide's premultiplied pixels directly, the reference
    composites its un-premultiplied ones, so rounding may differ by one.
    """
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - ref.astype(int))
    solid = (alpha == 0) | (alpha == 255)
    assert diff[solid].max(initial=0) == 0
    assert diff.max(initial=0) <= 1


# --------------------------------------------------------------------------- real slides


@pytest.mark.parametrize("name", SHARED)
def test_shared_slide_metadata_matches_openslide(shared_slides: Path, name: str) -> None:
    path = shared_slides / name
    osr = openslide.OpenSlide(str(path))
    with open_slide(path) as slide:
        assert slide.backend == "openslide"
        assert slide.vendor == osr.properties["openslide.vendor"]
        assert slide.level_count == osr.level_count
        assert slide.level_dimensions == tuple(osr.level_dimensions)
        assert slide.level_downsamples == pytest.approx(osr.level_downsamples)
        mpp = (float(osr.properties["openslide.mpp-x"]), float(osr.properties["openslide.mpp-y"]))
        if name == "boxes.tiff":  # 72 dpi in its resolution tags: a print DPI, no pixel size
            assert slide.mpp_xy is None and slide.mpp_source == "none"
        else:
            assert slide.mpp_xy == pytest.approx(mpp)
            assert slide.mpp_source == "openslide"
        assert slide.quickhash == osr.properties["openslide.quickhash-1"]
        assert slide.associated_image_names == tuple(osr.associated_images)
        for k in range(osr.level_count):
            tw = int(osr.properties[f"openslide.level[{k}].tile-width"])
            th = int(osr.properties[f"openslide.level[{k}].tile-height"])
            assert slide.level_tile_sizes[k] == (tw, th)
        assert slide.computed_levels == ()
        meta = json.loads(json.dumps(slide.metadata()))
        assert meta["quickhash"] == slide.quickhash
        assert meta["level_dimensions"] == [list(d) for d in osr.level_dimensions]
        assert meta["path"] == str(path)


def test_cmu_svs_facts(cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as slide:
        assert slide.vendor == "aperio"
        assert slide.level_dimensions == ((2220, 2967),)
        assert slide.mpp_xy == pytest.approx((0.499, 0.499))
        assert slide.objective_power == 20
        assert set(slide.associated_image_names) == {"label", "macro", "thumbnail"}
        osr = openslide.OpenSlide(str(cmu_svs))
        for name in slide.associated_image_names:
            ours = slide.associated_image(name)
            ref = rgba_to_rgb(np.asarray(osr.associated_images[name].convert("RGBA")))
            np.testing.assert_array_equal(ours, ref)
        with pytest.raises(KeyError, match="no associated image"):
            slide.associated_image("nope")


def _random_regions(
    rng: np.random.Generator, w: int, h: int, n: int
) -> list[tuple[int, int, int, int]]:
    regions = []
    for _ in range(n):
        rw, rh = int(rng.integers(1, min(w, 300) + 1)), int(rng.integers(1, min(h, 300) + 1))
        x, y = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
        regions.append((x, y, rw, rh))
    # right and bottom borders, and the bottom-right corner
    regions += [
        (w - min(w, 70), 0, min(w, 70), min(h, 50)),
        (0, h - min(h, 33), min(w, 90), min(h, 33)),
    ]
    regions.append((max(0, w - 17), max(0, h - 13), min(w, 17), min(h, 13)))
    return regions


@pytest.mark.parametrize("name", SHARED)
def test_level_array_pixels_match_openslide(shared_slides: Path, name: str) -> None:
    path = shared_slides / name
    osr = openslide.OpenSlide(str(path))
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    with open_slide(path) as slide:
        for k, level in enumerate(slide.levels):
            w, h = slide.level_dimensions[k]
            ds = osr.level_downsamples[k]
            for x, y, rw, rh in _random_regions(rng, w, h, 6):
                ours = level[y : y + rh, x : x + rw]
                ref, alpha = openslide_rgb(osr, (round(x * ds), round(y * ds)), k, (rw, rh))
                assert_matches_openslide(ours, ref, alpha)


def test_pixels_match_openslide_on_generated_pyramid(jpeg_pyramid: Written) -> None:
    osr = openslide.OpenSlide(str(jpeg_pyramid.path))
    rng = np.random.default_rng(3)
    with open_slide(jpeg_pyramid.path) as slide:
        assert slide.backend == "openslide" and slide.vendor == "generic-tiff"
        assert slide.level_dimensions == ((2048, 1536), (1024, 768), (512, 384))
        assert slide.mpp_xy == pytest.approx((0.5, 0.5))
        for k, level in enumerate(slide.levels):
            w, h = slide.level_dimensions[k]
            for x, y, rw, rh in _random_regions(rng, w, h, 8):
                ref, alpha = openslide_rgb(osr, (x * 2**k, y * 2**k), k, (rw, rh))
                assert_matches_openslide(level[y : y + rh, x : x + rw], ref, alpha)


def test_read_region_beyond_the_border_is_white_like_openslide(cmu_svs: Path) -> None:
    osr = openslide.OpenSlide(str(cmu_svs))
    with open_slide(cmu_svs) as slide:
        for l0_xy in [(2200, 2950), (-10, -5), (5000, 5000), (17, 23)]:
            ours = slide.read_region(l0_xy, 0, (40, 30))
            ref, alpha = openslide_rgb(osr, l0_xy, 0, (40, 30))
            assert_matches_openslide(ours, ref, alpha)
        corner = slide.read_level_region(0, (2200, 2950), (40, 30))
        assert (corner[17:, :] == 255).all() and (corner[:, 20:] == 255).all()


def test_returned_arrays_are_writable_with_positive_strides(jpeg_pyramid: Written) -> None:
    # positive strides: torch.from_numpy and friends accept them (negative ones fail)
    with open_slide(jpeg_pyramid.path) as slide:
        for arr in (slide.read_region((3, 5), 0, (64, 32)), slide.levels[1][10:40, 7:99]):
            assert arr.flags.writeable and all(st > 0 for st in arr.strides)
            arr[0, 0] = 0


def test_public_openslide_path_gives_the_same_pixels(
    jpeg_pyramid: Written, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_slide(jpeg_pyramid.path) as slide:
        fast = slide.read_level_region(1, (100, 50), (300, 200))
    from napari_histattn.io import openslide_backend

    monkeypatch.setattr(openslide_backend, "_NATIVE_READ", None)
    with open_slide(jpeg_pyramid.path) as slide:
        np.testing.assert_array_equal(slide.read_level_region(1, (100, 50), (300, 200)), fast)


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_concurrent_reads_equal_sequential_reads(jpeg_pyramid: Written, backend: str) -> None:
    rng = np.random.default_rng(11)
    boxes = [
        (int(rng.integers(0, 3)), int(rng.integers(0, 400)), int(rng.integers(0, 300)))
        for _ in range(48)
    ]
    with open_slide(jpeg_pyramid.path, backend=backend) as slide:
        assert slide.backend == backend
        expected = [slide.levels[k][y : y + 100, x : x + 120] for k, x, y in boxes]
        with ThreadPoolExecutor(4) as pool:
            got = list(
                pool.map(lambda b: slide.levels[b[0]][b[2] : b[2] + 100, b[1] : b[1] + 120], boxes)
            )
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_thumbnail_and_best_level(jpeg_pyramid: Written, cmu_svs: Path) -> None:
    with open_slide(jpeg_pyramid.path) as slide:
        thumb = slide.thumbnail(256)
        assert thumb.shape == (192, 256, 3) and thumb.dtype == np.uint8
        assert slide.best_level_for_downsample(1.0) == 0
        assert slide.best_level_for_downsample(3.9) == 1
        assert slide.best_level_for_downsample(4.0) == 2
        assert slide.best_level_for_downsample(100) == 2
        assert slide.best_level_for_downsample(0.5) == 0
        # the thumbnail is a downscale of the image, not something else
        ref = slide.read_level_region(2, (0, 0), (512, 384)).astype(float)
        ref = ref.reshape(192, 2, 256, 2, 3).mean(axis=(1, 3))
        assert np.abs(thumb - ref).mean() < 2
    with open_slide(cmu_svs) as slide:
        thumb = slide.thumbnail(300)
        assert max(thumb.shape[:2]) == 300 and thumb.shape[2] == 3
        assert thumb.mean() < 250  # tissue, not a blank image


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("name", "can", "message"),
    [
        ("broken.svs", False, "cannot identify image file"),
        ("unopenable.tiff", False, "Unsupported TIFF compression: 52479"),
        ("small_dicom.dcm", True, "Couldn't get image flavor"),
    ],
)
def test_bad_slides_raise_slide_error(bad_slides: Path, name: str, can: bool, message: str) -> None:
    path = bad_slides / name
    # can_open is a cheap header check: it cannot see that OpenSlide will refuse
    # small_dicom.dcm (detected as DICOM, fails only when opened).
    assert can_open(path) is can
    with pytest.raises(SlideError) as info:
        open_slide(path)
    err = info.value
    assert err.path == path
    assert name in str(err) and message in str(err)
    assert err.__cause__ is not None


@pytest.mark.timeout(30)
def test_tifffile_fallback_refuses_unknown_compression_quickly(bad_slides: Path) -> None:
    with pytest.raises(SlideError, match="tifffile: unsupported TIFF compression: 52479"):
        open_slide(bad_slides / "unopenable.tiff", backend="tifffile")
    with pytest.raises(SlideError, match="OpenSlide .*52479"):
        open_slide(bad_slides / "unopenable.tiff")


def test_unreadable_svs_serves_placeholder_and_warns_once(bad_slides: Path) -> None:
    path = bad_slides / "unreadable.svs"
    assert can_open(path)
    slide = open_slide(path)
    assert slide.level_dimensions == ((16, 16),)
    with pytest.warns(SlideReadWarning, match="unreadable.svs") as record:
        first = slide.levels[0][...]
        second = slide.read_region((0, 0), 0, (16, 16))
        third = slide.levels[0][4:8, 2:10]
    assert len([w for w in record if issubclass(w.category, SlideReadWarning)]) == 1
    for arr in (first, second, third):
        assert (arr == np.array(PLACEHOLDER_RGB, dtype=np.uint8)).all()
    assert slide.failed_tiles == [(0, 0, 0)]
    assert slide.metadata()["failed_tiles"] == [[0, 0, 0]]
    # outside the (only, failed) tile the slide still answers: white, no new failures
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (slide.read_level_region(0, (16, 0), (8, 8)) == 255).all()
    slide.close()


def test_bad_tile_recovery_keeps_good_tiles(corrupt_pyramid: tuple[Path, Path]) -> None:
    clean_path, bad_path = corrupt_pyramid
    clean = open_slide(clean_path)
    with open_slide(bad_path) as slide:
        assert slide.backend == "openslide"
        region = ((0, 0), (1024, 1024))  # tiles 0-3 x 0-3; tile (1, 2) is corrupt
        with pytest.warns(SlideReadWarning) as record:
            got = slide.read_level_region(0, *region)
            again = slide.read_level_region(0, (200, 500), (200, 100))
        assert len(record) == 1
        assert slide.failed_tiles == [(0, 256, 512)]
        ref = clean.read_level_region(0, *region)
        bad = np.zeros((1024, 1024), dtype=bool)
        bad[512:768, 256:512] = True
        np.testing.assert_array_equal(got[~bad], ref[~bad])
        assert (got[bad] == 128).all()
        np.testing.assert_array_equal(again[:, :56], ref[500:600, 200:256])
        assert (again[12:, 56:] == 128).all()
        # the known bad tile is not asked of OpenSlide again: no further reopen
        generation = slide._backend._generation
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            later = slide.levels[0][500:800, 0:700]
            good = slide.levels[0][0:256, 0:256]
        assert slide._backend._generation == generation
        assert slide._backend._retired == []  # broken handles were closed once unused
        np.testing.assert_array_equal(good, clean.levels[0][0:256, 0:256])
        assert (later[12:268, 256:512] == 128).all()
        # the other levels are unaffected
        np.testing.assert_array_equal(slide.levels[1][...], clean.levels[1][...])
    clean.close()


def test_bad_tile_under_concurrent_reads(corrupt_pyramid: tuple[Path, Path]) -> None:
    clean_path, bad_path = corrupt_pyramid
    boxes = [(x, y) for x in range(0, 768, 128) for y in range(256, 1024, 128)]
    with open_slide(clean_path) as clean:
        expected = [clean.levels[0][y : y + 256, x : x + 256] for x, y in boxes]
    with warnings.catch_warnings(record=True) as record, open_slide(bad_path) as slide:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(4) as pool:
            got = list(
                pool.map(lambda b: slide.levels[0][b[1] : b[1] + 256, b[0] : b[0] + 256], boxes)
            )
        assert slide.failed_tiles == [(0, 256, 512)]
        assert slide._backend._retired == [] and slide._backend._users == {}
    assert len([w for w in record if issubclass(w.category, SlideReadWarning)]) == 1
    bad = np.zeros((1536, 2048), dtype=bool)
    bad[512:768, 256:512] = True
    for (x, y), a, b in zip(boxes, expected, got, strict=True):
        mask = bad[y : y + 256, x : x + 256]
        np.testing.assert_array_equal(b[~mask], a[~mask])
        assert (b[mask] == 128).all()


def test_corrupt_strip_in_tifffile_backend(strip_tiff: Written, tmp_path: Path) -> None:
    bad_path = tmp_path / "bad_strips.tif"
    corrupt_tile(strip_tiff.path, bad_path, page=0, tile_index=2)  # rows 74-110
    with open_slide(bad_path) as slide:
        assert slide.backend == "tifffile"
        with pytest.warns(SlideReadWarning):
            got = slide.read_level_region(0, (0, 0), (700, 460))
        assert slide.failed_tiles == [(0, 0, 74)]
    ref = strip_tiff.levels[0]
    np.testing.assert_array_equal(got[:74], ref[:74])
    np.testing.assert_array_equal(got[111:], ref[111:])
    assert (got[74:111] == 128).all()


@pytest.mark.parametrize(
    ("level", "xy", "size", "match"),
    [
        (99, (0, 0), (10, 10), "level 99 does not exist"),
        (-1, (0, 0), (10, 10), "level -1 does not exist"),
        (1.5, (0, 0), (10, 10), "level must be an integer"),
        (True, (0, 0), (10, 10), "level must be an integer"),
        (0, (0, 0), (-1, 10), "negative region size"),
        (0, (0, 0), (20000, 20000), "more than the limit"),
        (0, (0.5, 0), (10, 10), "pairs of integers"),
    ],
)
def test_invalid_reads_refused_before_openslide(
    jpeg_pyramid: Written, level, xy, size, match: str
) -> None:
    with open_slide(jpeg_pyramid.path) as slide:

        def forbidden(*args, **kwargs):
            raise AssertionError("OpenSlide must not be called for an invalid read")

        slide._backend._region = forbidden
        slide._backend._handle.read_region = forbidden
        for call in (
            lambda: slide.read_region(xy, level, size),
            lambda: slide.read_level_region(level, xy, size),
        ):
            with pytest.raises(InvalidRegionError, match=match) as info:
                call()
            assert isinstance(info.value, SlideError) and isinstance(info.value, ValueError)
            assert "pyramid.tiff" in str(info.value)
        if not isinstance(level, int) or not 0 <= level < 3:
            with pytest.raises(InvalidRegionError):
                slide.level_array(level)


def test_region_limit_is_configurable(cmu_svs: Path) -> None:
    with open_slide(cmu_svs, max_region_pixels=100) as slide:
        assert slide.read_region((0, 0), 0, (10, 10)).shape == (10, 10, 3)
        with pytest.raises(InvalidRegionError, match="more than the limit of 100"):
            slide.read_region((0, 0), 0, (11, 10))


def test_missing_directory_and_non_image(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a slide")
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    for path, match in [
        (tmp_path / "missing.svs", "no such file"),
        (tmp_path, "not a file"),
        (text, "notes.txt"),
        (empty, "empty.svs"),
    ]:
        assert can_open(path) is False
        with pytest.raises(SlideError, match=match):
            open_slide(path)
    with pytest.raises(ValueError, match="backend must be one of"):
        open_slide(text, backend="bioformats")


def test_close_waits_for_reads_in_flight(jpeg_pyramid: Written) -> None:
    slide = open_slide(jpeg_pyramid.path)
    started, release = threading.Event(), threading.Event()
    original = slide._backend.read

    def slow_read(level, lvl_xy, size_wh):
        started.set()
        release.wait(10)
        return original(level, lvl_xy, size_wh)

    slide._backend.read = slow_read
    with ThreadPoolExecutor(2) as pool:
        reading = pool.submit(slide.read_level_region, 0, (0, 0), (64, 64))
        assert started.wait(10)
        closing = pool.submit(slide.close)
        time.sleep(0.2)
        assert not closing.done()  # close() waits: the handle is still in use
        release.set()
        assert reading.result(10).shape == (64, 64, 3)
        closing.result(10)
    assert slide.closed


def test_closed_slide_refuses_reads(cmu_svs: Path) -> None:
    slide = open_slide(cmu_svs)
    level = slide.levels[0]
    slide.close()
    slide.close()  # idempotent
    assert slide.closed
    with pytest.raises(SlideError, match="closed"):
        level[0:10, 0:10]
    with pytest.raises(SlideError, match="closed"):
        slide.associated_image("label")


# --------------------------------------------------------------------------- fallbacks


def test_ome_tiff_opens_with_tifffile_and_ome_mpp(ome_pyramid: Written) -> None:
    # OpenSlide would read it as a one-level generic-tiff without mpp.
    assert openslide.OpenSlide(str(ome_pyramid.path)).level_count == 1
    assert can_open(ome_pyramid.path)
    with open_slide(ome_pyramid.path) as slide:
        assert slide.backend == "tifffile" and slide.format == "ome-tiff"
        assert slide.mpp_xy == pytest.approx((0.26, 0.27)) and slide.mpp_source == "ome"
        assert slide.level_dimensions == ((1200, 1000), (600, 500), (300, 250))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert slide.level_tile_sizes == ((128, 128),) * 3
        assert slide.quickhash is None
        for k, expected in enumerate(ome_pyramid.levels):
            np.testing.assert_array_equal(slide.levels[k][...], expected)
            np.testing.assert_array_equal(slide.levels[k][37:301, 5:190], expected[37:301, 5:190])


def test_tifffile_backend_reads_aperio_svs_like_openslide(cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as a, open_slide(cmu_svs, backend="tifffile") as b:
        assert b.backend == "tifffile" and b.vendor == "tifffile"
        assert b.level_dimensions == a.level_dimensions
        assert b.level_tile_sizes == a.level_tile_sizes == ((240, 240),)
        assert b.mpp_xy == pytest.approx((0.499, 0.499)) and b.mpp_source == "svs-description"
        assert b.objective_power == 20
        np.testing.assert_array_equal(
            b.levels[0][1000:1500, 700:1400], a.levels[0][1000:1500, 700:1400]
        )
        assert set(b.associated_image_names) == set(a.associated_image_names)
        for name in a.associated_image_names:
            np.testing.assert_array_equal(b.associated_image(name), a.associated_image(name))


def test_tifffile_backend_equals_openslide_on_jpeg_pyramid(jpeg_pyramid: Written) -> None:
    with open_slide(jpeg_pyramid.path) as a, open_slide(jpeg_pyramid.path, backend="tifffile") as b:
        assert b.backend == "tifffile"
        assert b.level_dimensions == a.level_dimensions
        assert b.mpp_xy == pytest.approx(a.mpp_xy) and b.mpp_source == "tiff-resolution"
        for k in range(3):
            np.testing.assert_array_equal(
                b.levels[k][100:400, 250:777], a.levels[k][100:400, 250:777]
            )


def test_lossless_pyramid_with_distinct_mpp(zlib_pyramid_odd: Written) -> None:
    with open_slide(zlib_pyramid_odd.path) as slide:
        assert slide.mpp_xy == pytest.approx((0.25, 0.3))
        np.testing.assert_array_equal(slide.levels[0][...], zlib_pyramid_odd.levels[0])
    with open_slide(zlib_pyramid_odd.path, backend="tifffile") as slide:
        assert slide.mpp_xy == pytest.approx((0.25, 0.3))
        for k, expected in enumerate(zlib_pyramid_odd.levels):
            np.testing.assert_array_equal(slide.levels[k][...], expected)


def test_strip_tiff(strip_tiff: Written) -> None:
    assert openslide.OpenSlide.detect_format(str(strip_tiff.path)) is None
    assert can_open(strip_tiff.path)
    with open_slide(strip_tiff.path) as slide:
        assert slide.backend == "tifffile"
        assert slide.level_dimensions == ((700, 460),)
        assert slide.level_tile_sizes == ((700, 37),)
        # 300 dpi is a print resolution, not a microscope's 84.67 um/px
        assert slide.mpp_xy is None and slide.mpp_source == "none"
        assert "print DPI" in slide.metadata_warnings[0]
        np.testing.assert_array_equal(slide.levels[0][...], strip_tiff.levels[0])
        np.testing.assert_array_equal(
            slide.read_level_region(0, (650, 440), (100, 40))[:20, :50],
            strip_tiff.levels[0][440:, 650:],
        )


def test_png_patch(png_patch: Written) -> None:
    assert can_open(png_patch.path)
    with open_slide(png_patch.path) as slide:
        assert slide.backend == "pillow" and slide.format == "png"
        assert slide.level_dimensions == ((700, 460),) and slide.computed_levels == ()
        assert slide.mpp_xy is None and slide.mpp_source == "none"
        np.testing.assert_array_equal(np.asarray(slide.levels[0]), png_patch.levels[0])
        assert slide.thumbnail(350).shape == (230, 350, 3)
    with open_slide(png_patch.path, mpp_override=(0.49, 0.51)) as slide:
        assert slide.mpp_xy == (0.49, 0.51) and slide.mpp_source == "override"
    with pytest.raises(ValueError, match="mpp_override"):
        open_slide(png_patch.path, mpp_override=(0.0, 0.5))


def test_rgba_png_is_composited_onto_white(rgba_png: tuple[Path, np.ndarray]) -> None:
    path, rgba = rgba_png
    with open_slide(path) as slide:
        got = slide.levels[0][...]
    np.testing.assert_array_equal(got[:, :20], rgba[:, :20, :3])
    assert (got[:, 40:] == 255).all()
    c = rgba[:, 20:40, :3].astype(int)
    np.testing.assert_array_equal(got[:, 20:40], (c * 128 + 255 * 127 + 127) // 255)


def test_rgba_to_rgb_rules() -> None:
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [200, 100, 0, 51]]], dtype=np.uint8)
    out = rgba_to_rgb(rgba)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(
        out[0, 2], [(200 * 51 + 255 * 204 + 127) // 255, (100 * 51 + 255 * 204 + 127) // 255, 204]
    )
    premult = rgba_to_rgb(np.array([[[40, 20, 0, 51]]], dtype=np.uint8), premultiplied=True)
    np.testing.assert_array_equal(premult[0, 0], [244, 224, 204])
    opaque = np.zeros((2, 2, 4), dtype=np.uint8)
    opaque[..., 3] = 255
    assert rgba_to_rgb(opaque).flags.c_contiguous


def test_argb_to_rgb_matches_openslide_conversion() -> None:
    # premultiplied ARGB words as OpenSlide's C library writes them
    argb = np.array([[0xFF102030, 0x00000000, 0x80402000, 0x33281400]], dtype=np.uint32)
    out = slide_mod.argb_to_rgb(argb)
    np.testing.assert_array_equal(out[0, 0], [0x10, 0x20, 0x30])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 2], [0x40 + 127, 0x20 + 127, 127])
    np.testing.assert_array_equal(out[0, 3], [0x28 + 204, 0x14 + 204, 204])


# --------------------------------------------------------------------------- computed levels


def naive_downsample2(rgb: np.ndarray) -> np.ndarray:
    """Reference for downsample2: loop over output pixels, replicate the last row/column."""
    h, w = rgb.shape[:2]
    out = np.empty(((h + 1) // 2, (w + 1) // 2, rgb.shape[2]), dtype=np.uint8)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            rows = [min(2 * r, h - 1), min(2 * r + 1, h - 1)]
            cols = [min(2 * c, w - 1), min(2 * c + 1, w - 1)]
            total = sum(rgb[i, j].astype(int) for i in rows for j in cols)
            out[r, c] = (total + 2) // 4
    return out


@pytest.mark.parametrize("shape", [(6, 8), (7, 9), (1, 1), (5, 2)])
def test_downsample2_is_the_documented_area_mean(shape: tuple[int, int]) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    np.testing.assert_array_equal(downsample2(rgb), naive_downsample2(rgb))
    assert downsample2(np.full((4, 4, 3), 255, np.uint8)).max() == 255  # no overflow


def test_plan_computed_levels() -> None:
    assert plan_computed_levels((4096, 3000)) == []
    assert plan_computed_levels((5000, 4000)) == [(2500, 2000), (1250, 1000), (625, 500)]
    assert plan_computed_levels((100_001, 20))[-1][0] <= 1024


def test_computed_levels_of_big_flat_tiff(
    big_flat_tiff: Written, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_slide(big_flat_tiff.path) as slide:
        assert slide.backend == "openslide"
        assert slide.level_dimensions == ((5000, 4000), (2500, 2000), (1250, 1000), (625, 500))
        assert slide.level_downsamples == (1.0, 2.0, 4.0, 8.0)
        assert slide.computed_levels == (1, 2, 3)
        assert slide.level_tile_sizes[1:] == ((COMPUTED_BLOCK, COMPUTED_BLOCK),) * 3
        assert slide.metadata()["computed_levels"] == [1, 2, 3]
        assert [lv.computed for lv in slide.levels] == [False, True, True, True]

        # no stored level is ever read whole: record what the backend is asked for
        sizes: list[tuple[int, int]] = []
        original = slide._backend.read

        def spy(level, lvl_xy, size_wh):
            sizes.append(size_wh)
            return original(level, lvl_xy, size_wh)

        monkeypatch.setattr(slide._backend, "read", spy)
        top = np.asarray(slide.levels[3])
        assert top.shape == (500, 625, 3)
        assert sizes and max(w * h for w, h in sizes) <= (2 * COMPUTED_BLOCK) ** 2
        monkeypatch.undo()

        level0 = slide.read_level_region(0, (0, 0), (5000, 4000))
        expected = [level0]
        for _ in range(3):
            expected.append(downsample2(expected[-1]))
        np.testing.assert_array_equal(top, expected[3])
        rng = np.random.default_rng(5)
        for k in (1, 2):
            h, w = expected[k].shape[:2]
            for x, y, rw, rh in _random_regions(rng, w, h, 5):
                np.testing.assert_array_equal(
                    slide.levels[k][y : y + rh, x : x + rw], expected[k][y : y + rh, x : x + rw]
                )
        # reading via level-0 coordinates and past the border
        np.testing.assert_array_equal(
            slide.read_region((4000, 3200), 1, (300, 200))[:, :250],
            expected[1][1600:1800, 2000:2250],
        )
        assert (slide.read_level_region(2, (1200, 990), (100, 20))[10:] == 255).all()
        assert slide.best_level_for_downsample(5.0) == 2
        thumb = slide.thumbnail(512)
        assert thumb.shape == (410, 512, 3)


def test_computed_levels_of_a_wide_png(big_png: Written) -> None:
    with open_slide(big_png.path) as slide:
        assert slide.backend == "pillow"
        assert slide.level_dimensions == ((4200, 300), (2100, 150), (1050, 75), (525, 38))
        expected = downsample2(downsample2(downsample2(big_png.levels[0])))
        np.testing.assert_array_equal(np.asarray(slide.levels[3]), expected)


# --------------------------------------------------------------------------- LevelArray


@pytest.fixture(scope="module")
def odd_slide(zlib_pyramid_odd: Written):
    with open_slide(zlib_pyramid_odd.path, backend="tifffile") as slide:
        yield slide, zlib_pyramid_odd.levels[0]


def test_level_array_is_numpy_like(odd_slide) -> None:
    slide, full = odd_slide
    level = slide.level_array(0)
    assert isinstance(level, LevelArray)
    assert level.shape == (901, 1203, 3) and level.dtype == np.uint8 and level.ndim == 3
    assert level.size == 901 * 1203 * 3 and len(level) == 901
    assert level.level == 0 and level.downsample == 1.0
    assert slide.level_array(1).downsample == pytest.approx(slide.level_downsamples[1])
    assert slide.level_array(0) is level
    np.testing.assert_array_equal(np.asarray(level), full)
    assert np.asarray(level, dtype=np.float32).dtype == np.float32


@pytest.mark.parametrize(
    "key",
    [
        np.s_[10:20, 30:50],
        np.s_[::7, ::13],
        np.s_[5:800:3, 1000:10:-9],
        np.s_[::-1, ::-1],
        np.s_[-50:, -40:-3],
        np.s_[100, 10:20],
        np.s_[10:20, -1],
        np.s_[3, 4],
        np.s_[3, 4, 1],
        np.s_[..., 0],
        np.s_[..., 1:3],
        np.s_[10:30, ...],
        np.s_[10:30, 5:9, ::-1],
        np.s_[..., 5:9, :],
        np.s_[np.int64(7) : np.int64(9), 0:2],
        np.s_[20:10, :],
        np.s_[:, 2000:3000],
        np.s_[899:905, 1200:1210],
        (),
    ],
)
def test_level_array_slicing_matches_numpy(odd_slide, key) -> None:
    slide, full = odd_slide
    got = slide.level_array(0)[key]
    want = full[key]
    assert got.shape == want.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_level_array_rejects_what_it_cannot_do(odd_slide) -> None:
    slide, _ = odd_slide
    level = slide.level_array(0)
    with pytest.raises(IndexError):
        level[901]
    with pytest.raises(IndexError):
        level[0, 0, 0, 0]
    with pytest.raises(IndexError):
        level[..., ...]
    with pytest.raises(TypeError):
        level[[1, 2, 3]]
    with pytest.raises(IndexError):
        level[None]


def test_level_array_refuses_to_materialise_huge_levels(
    odd_slide, zlib_pyramid_odd: Written
) -> None:
    with open_slide(zlib_pyramid_odd.path, max_array_bytes=1_000_000) as slide:
        with pytest.raises(
            ArrayTooLargeError, match="refusing to load level 0 of 'odd.tiff' whole"
        ):
            np.asarray(slide.levels[0])
        # slicing a window is still fine, and a small level materialises
        assert slide.levels[0][0:100, 0:100].shape == (100, 100, 3)
        assert np.asarray(slide.levels[1]).shape == (450, 601, 3)
