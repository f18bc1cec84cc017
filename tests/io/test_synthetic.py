"""The synthetic slide generator: OpenSlide compatibility, determinism, ground truth, and
the property the models rely on: look-alikes match lesions at low resolution and differ
only at full resolution."""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image
from scipy import ndimage

from napari_histattn.cli import main as cli_main
from napari_histattn.errors import HistattnError
from napari_histattn.io.synthetic import (
    BACKGROUND,
    Scene,
    SceneError,
    SyntheticSlide,
    SyntheticWriteError,
    class_tiles,
    generate_synthetic_slide,
    label_mask,
    lesion_mask,
    make_scene,
    render_region,
    synthetic_sample_slide,
    write_synthetic_slide,
)
from napari_histattn.io.synthetic.render import E_VEC, H_VEC
from napari_histattn.progress import Progress, run_to_completion

SIZE = (2048, 1536)
ARGS = {"seed": 3, "lesion_radius_px": 200.0, "n_lesions": 2, "n_lookalikes": 2}


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    path = tmp_path_factory.mktemp("synth") / "slide.tiff"
    return generate_synthetic_slide(path, *SIZE, **ARGS)


@pytest.fixture(scope="module")
def level0(slide: SyntheticSlide) -> np.ndarray:
    with openslide.OpenSlide(slide.path) as osr:
        return np.asarray(osr.read_region((0, 0), 0, SIZE).convert("RGB"))


def _mean_down(img: np.ndarray, f: int) -> np.ndarray:
    h, w = img.shape[0] // f * f, img.shape[1] // f * f
    return img[:h, :w].reshape(h // f, f, w // f, f, 3).astype(np.float64).mean(axis=(1, 3))


def _hematoxylin(img: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density by colour deconvolution with the renderer's stain vectors."""
    od = -np.log(np.maximum(img.astype(np.float64), 1.0) / BACKGROUND)
    stains = np.stack([E_VEC, H_VEC], axis=1).astype(np.float64)  # (3, 2)
    conc = od.reshape(-1, 3) @ np.linalg.pinv(stains).T
    return conc[:, 1].reshape(img.shape[:2])


def _nuclei_stats(img: np.ndarray) -> dict[str, float]:
    """Segment nuclei (smoothed hematoxylin above a threshold, touching ones split) and
    measure their size, shape and chromatin heterogeneity (hematoxylin CV in the core)."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    raw = _hematoxylin(img)
    h = ndimage.gaussian_filter(raw, 0.7)
    mask = h > 0.45
    # Touching nuclei (lymphocytes in an aggregate) are split by a watershed of the
    # distance to the background, seeded at its 1-px-deep maxima.
    dist = ndimage.distance_transform_edt(mask)
    markers, _ = ndimage.label(h_maxima(ndimage.gaussian_filter(dist, 1.0), 1.0))
    labels = watershed(-dist, markers, mask=mask)
    # Labels whose marker fell outside the mask are empty; keep them out of the stats.
    idx = np.unique(labels[labels > 0])
    area = ndimage.sum_labels(np.ones_like(h), labels, idx)
    core = labels * (ndimage.distance_transform_edt(mask) > 2)
    core_n = ndimage.sum_labels(np.ones_like(h), core, idx)
    keep = (area >= 12) & (core_n >= 4)
    yy, xx = np.mgrid[: h.shape[0], : h.shape[1]].astype(np.float64)
    my, mx = ndimage.mean(yy, labels, idx), ndimage.mean(xx, labels, idx)
    vy = ndimage.mean(yy**2, labels, idx) - my**2
    vx = ndimage.mean(xx**2, labels, idx) - mx**2
    cxy = ndimage.mean(xx * yy, labels, idx) - mx * my
    tr, det = vx + vy, vx * vy - cxy**2
    l1 = tr / 2 + np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    l2 = tr / 2 - np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    ecc = np.sqrt(1 - np.clip(l2 / np.maximum(l1, 1e-9), 0, 1))
    safe = idx[keep]
    with np.errstate(invalid="ignore"):  # scipy warns inside its per-label variance
        chromatin = ndimage.standard_deviation(raw, core, safe) / ndimage.mean(raw, core, safe)
    return {
        "n": float(keep.sum()),
        "area": float(np.median(area[keep])),
        "ecc": float(np.median(ecc[keep])),
        "chromatin_cv": float(np.median(chromatin)),
    }


# ----------------------------------------------------------------------------- the TIFF


def test_opens_in_openslide_as_generic_tiff_with_size_levels_and_mpp(slide: SyntheticSlide) -> None:
    with openslide.OpenSlide(slide.path) as osr:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert osr.dimensions == SIZE
        assert osr.level_count == 2
        assert osr.level_dimensions == ((2048, 1536), (512, 384))
        assert osr.level_dimensions == slide.level_dimensions
        assert osr.level_downsamples == pytest.approx((1.0, 4.0))
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(osr.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        assert osr.properties["tiff.ResolutionUnit"] == "centimeter"


def test_requested_level_count_is_written(tmp_path: Path) -> None:
    scene = make_scene(1024, 1024, n_lesions=1, n_lookalikes=0, lesion_radius_px=100, seed=1)
    out = run_to_completion(
        write_synthetic_slide(tmp_path / "l3.tiff", scene, levels=3, level_factor=2)
    )
    with openslide.OpenSlide(out.path) as osr:
        assert osr.level_dimensions == ((1024, 1024), (512, 512), (256, 256))


def test_pixels_match_the_renderer_and_lower_level_is_the_mean(
    slide: SyntheticSlide, level0: np.ndarray
) -> None:
    ref = render_region(slide.scene, (0, 0), SIZE)
    # JPEG q85 4:2:0 costs a couple of grey levels on average, nothing more.
    assert np.abs(ref.astype(int) - level0).mean() < 4.0
    with openslide.OpenSlide(slide.path) as osr:
        low = np.asarray(osr.read_region((0, 0), 1, (512, 384)).convert("RGB")).astype(float)
    assert np.abs(_mean_down(ref, 4) - low).mean() < 6.0
    assert np.abs(_mean_down(ref, 4).mean(axis=(0, 1)) - low.mean(axis=(0, 1))).max() < 2.0


def test_glass_outside_the_tissue(slide: SyntheticSlide, level0: np.ndarray) -> None:
    labels = label_mask(slide.scene, 1)
    glass = level0[labels == 0]
    assert glass.size > 0
    assert np.abs(glass.astype(int) - BACKGROUND).mean() < 2.0


def test_same_arguments_give_byte_identical_files(slide: SyntheticSlide, tmp_path: Path) -> None:
    again = generate_synthetic_slide(tmp_path / "slide.tiff", *SIZE, **ARGS)
    for a, b in (
        (slide.path, again.path),
        (slide.geojson_path, again.geojson_path),
        (slide.mask_path, again.mask_path),
        (slide.meta_path, again.meta_path),
    ):
        assert a.read_bytes() == b.read_bytes(), a.name
    other = generate_synthetic_slide(tmp_path / "other.tiff", *SIZE, **{**ARGS, "seed": 4})
    assert other.path.read_bytes() != slide.path.read_bytes()


def test_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    scene = make_scene(1024, 768, n_lesions=1, n_lookalikes=1, lesion_radius_px=120, seed=5)
    one = run_to_completion(write_synthetic_slide(tmp_path / "one.tiff", scene, workers=1))
    two = run_to_completion(write_synthetic_slide(tmp_path / "two.tiff", scene, workers=2))
    assert one.path.read_bytes() == two.path.read_bytes()


def test_writer_reports_progress_and_returns_the_slide(tmp_path: Path) -> None:
    scene = make_scene(768, 512, n_lesions=1, n_lookalikes=0, lesion_radius_px=80, seed=2)
    reports: list[Progress] = []
    out = run_to_completion(write_synthetic_slide(tmp_path / "p.tiff", scene), reports.append)
    tile_reports = [r for r in reports if r.stage == "tiles"]
    assert [r.done for r in tile_reports] == [1, 2]
    assert all(r.total == 2 for r in tile_reports)
    assert out.path.is_file() and out.scene == scene


def test_closing_the_generator_early_leaves_no_files(tmp_path: Path) -> None:
    scene = make_scene(1024, 1024, n_lesions=1, n_lookalikes=0, lesion_radius_px=100, seed=2)
    gen = write_synthetic_slide(tmp_path / "c.tiff", scene)
    next(gen)
    gen.close()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- rendering


def test_windows_join_seamlessly() -> None:
    scene = make_scene(3000, 2400, lesion_radius_px=250, seed=7)
    lesion = scene.lesions[0]
    x0, y0 = int(lesion.center_xy[0]) - 600, int(lesion.center_xy[1]) - 500
    big = render_region(scene, (x0, y0), (1200, 1000))
    for dx, dy, w, h in (
        (0, 0, 256, 256),
        (256, 0, 256, 256),
        (301, 417, 333, 211),
        (700, 650, 500, 350),
    ):
        part = render_region(scene, (x0 + dx, y0 + dy), (w, h))
        np.testing.assert_array_equal(part, big[dy : dy + h, dx : dx + w])
    # Four quadrants reassemble the whole window exactly.
    quads = [
        [render_region(scene, (x0 + qx, y0 + qy), (600, 500)) for qx in (0, 600)] for qy in (0, 500)
    ]
    np.testing.assert_array_equal(
        np.concatenate([np.concatenate(r, axis=1) for r in quads], axis=0), big
    )


def test_downsampled_render_approximates_the_mean_of_level0() -> None:
    scene = make_scene(4096, 4096, lesion_radius_px=400, seed=11)
    full = render_region(scene, (1024, 1024), (2048, 2048))
    for d in (4, 16):
        approx = render_region(scene, (1024, 1024), (2048 // d, 2048 // d), downsample=d).astype(
            float
        )
        exact = _mean_down(full, d)
        assert np.abs(approx.mean(axis=(0, 1)) - exact.mean(axis=(0, 1))).max() < 4.0, d
        assert np.abs(approx - exact).mean() < 10.0, d
    thumb = render_region(scene, (0, 0), (64, 64), downsample=64)
    assert thumb.shape == (64, 64, 3)
    assert (thumb[0, 0] == BACKGROUND).all() and thumb[32, 32].mean() < BACKGROUND - 40


def test_render_validates_arguments() -> None:
    scene = make_scene(512, 512, n_lesions=0, n_lookalikes=0, seed=0)
    with pytest.raises(ValueError, match="size_wh"):
        render_region(scene, (0, 0), (0, 10))
    with pytest.raises(ValueError, match="downsample"):
        render_region(scene, (0, 0), (10, 10), downsample=0.5)
    far = render_region(scene, (-5000, -5000), (64, 32))
    assert far.shape == (32, 64, 3) and (far == BACKGROUND).all()


def test_lesions_are_darker_and_more_crowded_than_normal_tissue(
    slide: SyntheticSlide, level0: np.ndarray
) -> None:
    labels = label_mask(slide.scene, 1)
    gray = level0.astype(float).mean(axis=2)
    lesion, normal = labels == 3, labels == 1
    assert lesion.sum() > 50_000 and normal.sum() > 200_000
    assert gray[normal].mean() - gray[lesion].mean() > 25.0
    hema = ndimage.gaussian_filter(_hematoxylin(level0), 1.5) > 0.45
    assert hema[lesion].mean() > 2.5 * hema[normal].mean()
    # Every lesion stands out on its own, not just on average.
    for region in slide.scene.lesions:
        inside = region.rho(*np.meshgrid(np.arange(SIZE[0]) + 0.5, np.arange(SIZE[1]) + 0.5)) < 0.8
        assert gray[inside].mean() < gray[normal].mean() - 25.0


def _region_windows(kind: str, seeds: tuple[int, ...]) -> list[np.ndarray]:
    out = []
    for seed in seeds:
        scene = make_scene(4000, 4000, lesion_radius_px=450, seed=seed)
        for region in scene.regions:
            if region.kind == kind:
                cx, cy = region.center_xy
                out.append(render_region(scene, (int(cx) - 256, int(cy) - 256), (512, 512)))
    return out


def test_lookalikes_match_lesions_at_1_16_and_differ_at_full_resolution() -> None:
    seeds = (0, 1, 2)
    lesions, looks = _region_windows("lesion", seeds), _region_windows("lookalike", seeds)

    def low_stats(imgs: list[np.ndarray]) -> tuple[np.ndarray, float]:
        lows = [_mean_down(im, 16) for im in imgs]
        mean = np.mean([lo.mean(axis=(0, 1)) for lo in lows], axis=0)
        std = float(np.mean([lo.std(axis=(0, 1)).mean() for lo in lows]))
        return mean, std

    (m_les, s_les), (m_look, s_look) = low_stats(lesions), low_stats(looks)
    assert np.abs(m_les - m_look).max() < 4.0, (m_les, m_look)
    assert 0.85 < s_les / s_look < 1.18, (s_les, s_look)
    # Against normal tissue the same statistic differs by far more.
    normal = make_scene(4000, 4000, n_lesions=0, n_lookalikes=0, seed=0)
    m_norm = _mean_down(render_region(normal, (1744, 1744), (512, 512)), 16).mean(axis=(0, 1))
    assert np.abs(m_norm - m_les).max() > 25.0

    st_les = [_nuclei_stats(im) for im in lesions]
    st_look = [_nuclei_stats(im) for im in looks]
    area_les = np.median([s["area"] for s in st_les])
    area_look = np.median([s["area"] for s in st_look])
    assert area_les > 1.8 * area_look, (area_les, area_look)
    # Coarse, clumped chromatin in lesions; fine, even chromatin in the lymphocytes.
    assert np.median([s["chromatin_cv"] for s in st_les]) > 2.0 * np.median(
        [s["chromatin_cv"] for s in st_look]
    )
    assert np.median([s["ecc"] for s in st_les]) > np.median([s["ecc"] for s in st_look]) + 0.1


def test_hyperchromatic_variant_darkens_normal_nuclei() -> None:
    plain = make_scene(2000, 2000, n_lesions=0, n_lookalikes=0, seed=9)
    hyper = make_scene(2000, 2000, n_lesions=0, n_lookalikes=0, seed=9, diffuse="hyperchromatic")
    a = render_region(plain, (744, 744), (512, 512))
    b = render_region(hyper, (744, 744), (512, 512))
    assert _hematoxylin(b).mean() > 1.3 * _hematoxylin(a).mean()
    assert _nuclei_stats(b)["area"] > 1.2 * _nuclei_stats(a)["area"]


# ----------------------------------------------------------------------------- ground truth


def test_geojson_is_a_labelled_feature_collection(slide: SyntheticSlide) -> None:
    gj = json.loads(slide.geojson_path.read_text())
    assert gj["type"] == "FeatureCollection"
    names = [f["properties"]["classification"]["name"] for f in gj["features"]]
    assert sorted(names) == ["lesion", "lesion", "lookalike", "lookalike", "tissue"]
    for feature in gj["features"]:
        assert feature["type"] == "Feature"
        assert feature["properties"]["objectType"] == "annotation"
        color = feature["properties"]["classification"]["color"]
        assert len(color) == 3 and all(0 <= c <= 255 for c in color)
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert feature["geometry"]["type"] == "Polygon"
        assert (ring[0] == ring[-1]).all() and len(ring) > 60
        assert (ring[:, 0] >= 0).all() and (ring[:, 0] <= SIZE[0]).all()
        assert (ring[:, 1] >= 0).all() and (ring[:, 1] <= SIZE[1]).all()
    lesions = [f for f in gj["features"] if f["properties"]["classification"]["name"] == "lesion"]
    expected = sorted(tuple(np.round(r.polygon_xy()[0], 2)) for r in slide.scene.lesions)
    assert sorted(tuple(f["geometry"]["coordinates"][0][0]) for f in lesions) == expected


def test_mask_and_metadata_align_with_the_polygons(slide: SyntheticSlide) -> None:
    import shapely

    meta = json.loads(slide.meta_path.read_text())
    d = meta["mask_downsample"]
    assert d == slide.mask_downsample
    assert meta["size_wh"] == list(SIZE) and meta["mpp"] == 0.5 and meta["seed"] == 3
    assert meta["levels"] == 2 and Scene.from_dict(meta["scene"]) == slide.scene
    mask = np.asarray(Image.open(slide.mask_path))
    assert mask.shape == (math.ceil(SIZE[1] / d), math.ceil(SIZE[0] / d))
    np.testing.assert_array_equal(mask, label_mask(slide.scene, d))
    np.testing.assert_array_equal(mask == 3, lesion_mask(slide.scene, d))
    for region in slide.scene.regions:
        poly = shapely.Polygon(region.polygon_xy())
        label = 3 if region.kind == "lesion" else 2
        cx, cy = poly.representative_point().coords[0]
        assert mask[int(cy / d), int(cx / d)] == label
    lesion_area = sum(shapely.Polygon(r.polygon_xy()).area for r in slide.scene.lesions)
    assert (mask == 3).sum() * d * d == pytest.approx(lesion_area, rel=0.05)
    tissue_area = shapely.Polygon(slide.scene.tissue.polygon_xy()).area
    assert (mask > 0).sum() * d * d == pytest.approx(tissue_area, rel=0.03)


def test_scene_round_trips_through_json() -> None:
    scene = make_scene(5000, 3000, seed=42, diffuse="hyperchromatic")
    again = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
    assert again == scene
    assert make_scene(5000, 3000, seed=42, diffuse="hyperchromatic") == scene
    assert make_scene(5000, 3000, seed=43) != scene
    assert len(scene.lesions) == 2 and len(scene.lookalikes) == 2


# ----------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_writing_8192_square_keeps_memory_bounded(tmp_path: Path) -> None:
    scene = make_scene(8192, 8192, lesion_radius_px=400, seed=1)
    # Warm up what every process pays once, whatever the slide size: imports, the
    # shared texture tables (about 45 MB), the scene's prepared polygons.
    run_to_completion(
        write_synthetic_slide(
            tmp_path / "warm.tiff",
            make_scene(512, 512, n_lesions=1, n_lookalikes=1, lesion_radius_px=40),
        )
    )
    render_region(scene, (4000, 4000), (16, 16))
    tracemalloc.start()
    try:
        out = run_to_completion(write_synthetic_slide(tmp_path / "big.tiff", scene))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = 8192 * 8192 * 3
    # The full level-0 array would be 201 MB; the writer holds tile rows only.
    assert peak < 0.25 * full, f"peak {peak / 1e6:.0f} MB"
    with openslide.OpenSlide(out.path) as osr:
        assert osr.level_dimensions == ((8192, 8192), (2048, 2048), (512, 512))


# ----------------------------------------------------------------------------- errors and CLI


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0, "height": 100}, "at least 64"),
        ({"width": 1000, "height": 1000, "lesion_radius_px": -5}, "radius"),
        ({"width": 1000, "height": 1000, "lesion_radius_px": 900}, "cannot fit"),
        ({"width": 1000, "height": 1000, "n_lesions": -1}, "counts"),
        ({"width": 1000, "height": 1000, "diffuse": "purple"}, "diffuse"),
        ({"width": 1000, "height": 1000, "tissue_fraction": 1.5}, "tissue_fraction"),
        ({"width": 1000, "height": 1000, "mpp": 0}, "mpp"),
    ],
)
def test_bad_scene_arguments_raise_scene_error(kwargs: dict, match: str) -> None:
    with pytest.raises(SceneError, match=match) as info:
        make_scene(**kwargs)
    assert isinstance(info.value, HistattnError)


def test_bad_writer_arguments_raise(tmp_path: Path) -> None:
    scene = make_scene(512, 512, n_lesions=0, n_lookalikes=0)
    for kwargs in ({"tile_size": 100}, {"jpeg_quality": 0}, {"levels": 0}, {"workers": 0}):
        with pytest.raises(SyntheticWriteError):
            run_to_completion(write_synthetic_slide(tmp_path / "x.tiff", scene, **kwargs))
    with pytest.raises(SyntheticWriteError, match="does not exist"):
        run_to_completion(write_synthetic_slide(tmp_path / "missing" / "x.tiff", scene))


def test_cli_writes_a_slide_and_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.tiff"
    rc = cli_main(
        [
            "synth",
            str(out),
            "--size",
            "1024x768",
            "--lesion-radius",
            "120",
            "--lookalikes",
            "1",
            "--seed",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    with openslide.OpenSlide(out) as osr:
        assert osr.dimensions == (1024, 768)
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    gj = json.loads((tmp_path / "cli.geojson").read_text())
    assert [f["properties"]["classification"]["name"] for f in gj["features"]].count(
        "lookalike"
    ) == 1
    assert (tmp_path / "cli.mask.png").is_file() and (tmp_path / "cli.json").is_file()

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["synth", str(out), "--size", "0x100"])
    assert exit_info.value.code == 2
    assert "at least 64" in capsys.readouterr().err
    rc = cli_main(
        [
            "synth",
            str(tmp_path / "big.tiff"),
            "--size",
            "1000x1000",
            "--lesion-radius",
            "900",
            "--quiet",
        ]
    )
    assert rc == 1
    assert "cannot fit" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sample slide


def test_sample_slide_is_generated_once_then_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTATTN_CACHE", str(tmp_path))
    # A half-written entry from an interrupted run is never picked up.
    (tmp_path / ".synthetic-deadbeef-partial").mkdir()
    first = synthetic_sample_slide(width=1024, height=768, lesion_radius_px=100, workers=1)
    assert first.path.parent.parent == tmp_path
    assert first.path.is_file() and first.geojson_path.is_file() and first.mask_path.is_file()
    with openslide.OpenSlide(first.path) as osr:
        assert osr.dimensions == (1024, 768)
    assert len(first.scene.lesions) == 2 and len(first.scene.lookalikes) == 2
    stamp = first.path.stat().st_mtime_ns
    second = synthetic_sample_slide(width=1024, height=768, lesion_radius_px=100, workers=1)
    assert second == first and second.path.stat().st_mtime_ns == stamp
    other = synthetic_sample_slide(
        tmp_path / "elsewhere", width=1024, height=768, lesion_radius_px=100, seed=1, workers=1
    )
    assert other.path.parent != first.path.parent
    # An entry whose slide went missing is regenerated.
    first.path.unlink()
    third = synthetic_sample_slide(width=1024, height=768, lesion_radius_px=100, workers=1)
    assert third.path.is_file()


def test_class_tiles_are_centred_on_their_ground_truth(slide: SyntheticSlide) -> None:
    glass = class_tiles(slide.path, slide.scene, 0, 16, 5, seed=1)
    assert glass.shape == (5, 16, 16, 3) and glass.dtype == np.uint8
    lesion = class_tiles(slide.path, slide.scene, 3, 16, 40, seed=1)
    tissue = class_tiles(slide.path, slide.scene, 1, 16, 40, seed=1)
    # The same seed draws the same tiles; glass is the background colour.
    np.testing.assert_array_equal(class_tiles(slide.path, slide.scene, 3, 16, 40, seed=1), lesion)
    assert np.abs(glass.astype(float) - BACKGROUND).max() < 12

    def stain(tiles: np.ndarray) -> float:
        return float(_hematoxylin(tiles.reshape(-1, tiles.shape[2], 3)).mean())

    assert stain(lesion) > 1.3 * stain(tissue), (stain(lesion), stain(tissue))
    with pytest.raises(ValueError, match="no pixel of label 7"):
        class_tiles(slide.path, slide.scene, 7, 16, 5)
