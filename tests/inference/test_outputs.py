"""write_outputs: every file, QuPath GeoJSON conventions, CSV agreement, napari geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import box, shape

from napari_histattn.errors import ExportError, HistattnError
from napari_histattn.inference.engine import classify
from napari_histattn.inference.outputs import (
    attention_rgba,
    heatmap_napari_geometry,
    render_overlay,
    write_outputs,
)
from napari_histattn.inference.result import ClassificationResult
from napari_histattn.io.export import read_geojson_regions, read_patches_csv
from napari_histattn.io.regions import GridGeometry
from napari_histattn.io.slide import open_slide
from napari_histattn.progress import run_to_completion


@pytest.fixture(scope="module")
def results(lesion_slide, checkpoint_paths) -> dict[str, ClassificationResult]:
    from napari_histattn.models.checkpoint import load

    out = {}
    with open_slide(lesion_slide.path) as slide:
        for name in ("attention_sampling", "amil"):
            ckpt = load(checkpoint_paths[name], device="cpu")
            out[name] = run_to_completion(classify(slide, ckpt, device="cpu", seed=2))
    return out


@pytest.mark.parametrize("name", ["attention_sampling", "amil"])
def test_write_outputs_writes_every_file(name, results, lesion_slide, tmp_path) -> None:
    result = results[name]
    with open_slide(lesion_slide.path) as slide:
        files = write_outputs(result, slide, tmp_path / "out", crops=True)
        thumb_shape = slide.thumbnail(1024).shape
    for key in ("heatmap", "attention", "geojson", "csv", "summary"):
        assert files[key].is_file(), key
    crops = sorted(k for k in files if k.startswith("crop_"))
    assert len(crops) == len(result.regions) >= 1
    assert not list((tmp_path / "out").glob(".*.tmp"))  # no temporary files left behind

    # Heatmap: the thumbnail's size, with the attention blended in where the map is finite.
    heatmap = np.asarray(Image.open(files["heatmap"]))
    assert heatmap.shape == thumb_shape
    assert "histattn:geometry" in Image.open(files["heatmap"]).text
    assert "(full range)" in Image.open(files["heatmap"]).text["histattn:contrast"]

    # Raw attention round-trips exactly.
    assert np.array_equal(np.load(files["attention"]), result.attention, equal_nan=True)

    # GeoJSON in QuPath's conventions, regions inside the slide.
    doc = json.loads(files["geojson"].read_text())
    assert doc["type"] == "FeatureCollection"
    assert (
        doc["properties"]["provenance"]["checkpoint_sha256"]
        == result.provenance["checkpoint_sha256"]
    )
    assert len(doc["features"]) == len(result.regions)
    slide_box = box(0, 0, *lesion_slide.size_wh)
    for feature, region in zip(doc["features"], result.regions, strict=True):
        props = feature["properties"]
        assert feature["type"] == "Feature"
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == region.class_name
        assert len(props["classification"]["color"]) == 3
        assert props["measurements"]["attention_max"] == pytest.approx(
            region.measurements["attention_max"]
        )
        geom = shape(feature["geometry"])
        assert geom.is_valid and slide_box.contains(geom)
        rings = feature["geometry"]["coordinates"]
        first_ring = rings[0] if feature["geometry"]["type"] == "Polygon" else rings[0][0]
        assert first_ring[0] == first_ring[-1]  # closed
        assert shapely.equals_exact(geom, region.polygon, tolerance=1e-6) or geom.equals(
            region.polygon
        )
    assert [r.class_name for r in read_geojson_regions(files["geojson"])] == [
        r.class_name for r in result.regions
    ]

    # The CSV agrees with the result's patch table.
    rows = read_patches_csv(files["csv"])
    assert len(rows) == len(result.patches)
    for row, patch in zip(rows, result.patches, strict=True):
        assert row.l0_xy == patch.l0_xy and row.size_l0_wh == patch.size_l0_wh
        assert row.attention == pytest.approx(patch.attention, rel=1e-12)
        assert dict(row.probs) == pytest.approx(dict(patch.probs))

    # The summary names every file and the napari placement.
    summary = json.loads(files["summary"].read_text())
    assert summary["predicted_class"] == result.predicted_class
    assert summary["probabilities"] == pytest.approx(result.probabilities_by_class)
    assert summary["provenance"]["slide_quickhash"] == result.provenance["slide_quickhash"]
    assert set(summary["files"]) == set(files)
    scale, translate = heatmap_napari_geometry(result, (0.5, 0.5))
    assert summary["geometry"]["napari"]["scale_yx"] == pytest.approx(list(scale))
    assert summary["geometry"]["napari"]["translate_yx"] == pytest.approx(list(translate))
    assert summary["geometry"]["shape_rc"] == list(result.grid_shape)
    if result.samples is not None:
        assert sum(summary["samples"]["counts"]) == result.samples.n_draws
    finite = result.attention[np.isfinite(result.attention)]
    assert summary["heatmap"]["contrast"] == "full range"  # the viewer's default
    assert summary["heatmap"]["contrast_limits"] == pytest.approx([finite.min(), finite.max()])


def test_rewriting_replaces_files_and_an_unwritable_folder_is_our_error(
    results, lesion_slide, tmp_path
) -> None:
    result = results["amil"]
    with open_slide(lesion_slide.path) as slide:
        first = write_outputs(result, slide, tmp_path / "out")
        before = first["geojson"].read_bytes()
        again = write_outputs(result, slide, tmp_path / "out")
        assert again["geojson"].read_bytes() == before  # deterministic, replaced in place
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        with pytest.raises(ExportError):
            write_outputs(result, slide, blocker)
        with pytest.raises(ExportError):
            write_outputs(result, slide, blocker / "below")


def test_outputs_refuse_another_slide(results, tmp_path) -> None:
    from inference_helpers import write_flat_tiff

    other = write_flat_tiff(tmp_path / "other.tiff", (200, 100, 160), (300, 200))
    with open_slide(other) as slide, pytest.raises(HistattnError, match="another|300x200"):
        write_outputs(results["amil"], slide, tmp_path / "out")


def test_heatmap_napari_geometry_puts_pixels_on_patch_centres() -> None:
    geometry = GridGeometry((10.0, 20.0), (64.0, 32.0), (128.0, 32.0))
    scale, translate = heatmap_napari_geometry(geometry, None)
    assert scale == (32.0, 64.0)
    assert translate == (20.0 + 31.0 / 2.0, 10.0 + 127.0 / 2.0)
    scale_um, translate_um = heatmap_napari_geometry(geometry, (0.25, 0.5))
    assert scale_um == (16.0, 16.0)
    assert translate_um == pytest.approx((translate[0] * 0.5, translate[1] * 0.25))


def test_overlay_colours_only_attended_cells() -> None:
    attention = np.array([[np.nan, 0.0], [0.5, 1.0]], dtype=np.float32)
    result = ClassificationResult(
        class_names=["a", "b"],
        probabilities=np.array([0.5, 0.5]),
        attention=attention,
        geometry=GridGeometry((0.0, 0.0), (50.0, 50.0), (50.0, 50.0)),
        patches=[],
        regions=[],
        provenance={},
        family="mil",
    )
    rgba = attention_rgba(attention)
    assert rgba[0, 0, 3] == 0 and np.all(rgba[1, :, 3] == 255)
    grey = np.full((100, 100, 3), 128, dtype=np.uint8)
    out = render_overlay(result, grey, (100, 100), alpha=0.4)
    assert np.all(out[:50, :50] == 128)  # NaN cell: the slide shows through
    assert not np.all(out[50:, 50:] == 128)
    assert not np.array_equal(out[50:, :50], out[50:, 50:])  # 0.5 and 1.0 differ in colour


def test_the_png_contrast_is_the_viewers_full_range_unless_percentiles_are_asked() -> None:
    # One lesion-like cell at 1.0, one look-alike at 0.6, the rest 0: the raw attention
    # tells them apart, and so does the default; the 1-99 percentile stretch draws both
    # at the top of the ramp.
    attention = np.zeros((10, 20), dtype=np.float32)
    attention[2, 3], attention[7, 15] = 1.0, 0.6
    full = attention_rgba(attention)
    assert not np.array_equal(full[2, 3], full[7, 15])
    stretched = attention_rgba(attention, contrast="1-99 percentile")
    assert np.array_equal(stretched[2, 3], stretched[7, 15])
    with pytest.raises(ValueError, match="unknown contrast"):
        attention_rgba(attention, contrast="log")


def test_write_outputs_with_fewer_regions_leaves_no_stale_crops(
    lesion_slide, checkpoint_paths, tmp_path
) -> None:
    from dataclasses import replace

    from napari_histattn.io.export.exportset import read_manifest
    from napari_histattn.io.grid import Region

    with open_slide(lesion_slide.path) as slide:
        result = run_to_completion(classify(slide, checkpoint_paths["amil"], device="cpu"))
        boxes = [box(200 * i, 0, 200 * i + 128, 128) for i in range(3)]
        regions = [Region(b, "lesion", rank=i + 1, name=None) for i, b in enumerate(boxes)]
        result = replace(result, regions=regions)
        out = tmp_path / "out"
        write_outputs(result, slide, out, crops=True)
        assert len(list((out / "crops").iterdir())) == len(result.regions)
        fewer = replace(result, regions=result.regions[:1])
        files = write_outputs(fewer, slide, out, crops=True)
    assert [p.name for p in (out / "crops").iterdir()] == [files["crop_1"].name]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["regions"]) == 1
    listed = read_manifest(out / "outputs.manifest.json")
    assert "summary.json" in listed and f"crops/{files['crop_1'].name}" in listed
    assert np.isfinite(summary["probabilities"]["lesion"])
