"""Decompression and allocation bombs are refused from the header, before any decode."""

from __future__ import annotations

from pathlib import Path

import pytest
from craft import write_tiff
from isolated import run_isolated

from napari_histattn.errors import SlideError
from napari_histattn.io.limits import MAX_TILE_PIXELS
from napari_histattn.io.slide import open_slide

OPEN_AND_READ = """
from napari_histattn.errors import SlideError
from napari_histattn.io.slide import open_slide
try:
    slide = open_slide({path!r})
    slide.read_region((0, 0), 0, (256, 256))
    slide.get_thumbnail((256, 256)) if hasattr(slide, "get_thumbnail") else None
except SlideError as exc:
    print("REFUSED", exc)
else:
    print("OPENED")
"""


@pytest.mark.parametrize(
    ("name", "width", "height", "layout"),
    [
        ("one-tile-65536", 65536, 65536, {"tile": (65536, 65536)}),
        ("one-strip-65536", 65536, 65536, {}),
        ("tile-1e6", 10**6, 10**6, {"tile": (10**6, 10**6)}),
        ("level-1e6", 10**6, 10**6, {"tile": (256, 256)}),
    ],
)
def test_a_bomb_is_refused_by_name_without_allocating(
    tmp_path: Path, name: str, width: int, height: int, layout: dict
) -> None:
    path = write_tiff(tmp_path / f"{name}.tiff", width, height, **layout)
    assert path.stat().st_size < 1000
    ended = run_isolated(OPEN_AND_READ.format(path=str(path)), memory_gib=2.0)
    assert not ended.crashed, ended.stderr[-2000:]
    assert ended.returncode == 0
    assert "REFUSED" in ended.stdout
    assert "beyond the limit" in ended.stdout  # the limit is named


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_both_tiff_backends_check_the_tile_size(tmp_path: Path, backend: str) -> None:
    side = int(MAX_TILE_PIXELS**0.5) * 2
    path = write_tiff(tmp_path / "big-tile.tiff", side, side, tile=(side, side))
    with pytest.raises(SlideError, match="per tile"):
        open_slide(path, backend=backend)


def test_ordinary_tiles_and_strips_still_open(tmp_path: Path) -> None:
    import zlib

    pixels = zlib.compress(b"\x80" * 256 * 256 * 3)
    tiled = write_tiff(tmp_path / "tiled.tiff", 256, 256, tile=(256, 256), data=pixels)
    strip = write_tiff(tmp_path / "strip.tiff", 256, 256, data=pixels)
    for path in (tiled, strip):
        with open_slide(path) as slide:
            rgb = slide.read_region((0, 0), 0, (256, 256))
            assert rgb.shape == (256, 256, 3)
            assert int(rgb[100, 100, 0]) == 128
            assert not slide.failed_tiles


def test_a_batch_survives_a_bomb_in_the_middle_of_its_folder(tmp_path: Path) -> None:
    from napari_histattn.io.synthetic import generate_synthetic_slide
    from napari_histattn.models.checkpoint import save
    from napari_histattn.models.registry import create_model

    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("a-good.tiff", "c-good.tiff"):
        generate_synthetic_slide(
            folder / name,
            768,
            768,
            seed=1,
            n_lesions=1,
            n_lookalikes=0,
            lesion_radius_px=80,
            mpp=0.5,
        )
    write_tiff(folder / "b-bomb.tiff", 65536, 65536, tile=(65536, 65536))
    model = create_model("amil", encoder="tiny", patch_size=16, embed_dim=8, attn_dim=6)
    ckpt = save(
        tmp_path / "amil",
        model,
        class_names=["benign", "lesion"],
        preprocessing={"patch_size": 16, "target_mpp": 1.0},
    )
    out = tmp_path / "out"
    ended = run_isolated(
        f"""
from napari_histattn.cli import main
raise SystemExit(main(["batch", {str(folder)!r}, "--checkpoint", {str(ckpt)!r},
                       "--out", {str(out)!r}, "--quiet", "--device", "cpu"]))
""",
        memory_gib=4.0,
        timeout_s=300,
    )
    assert ended.returncode == 1, ended.stderr[-2000:]  # one slide failed, not a crash
    assert "beyond the limit" in ended.stderr
    import csv

    with open(out / "batch_summary.csv", newline="") as handle:
        rows = {Path(r["slide"]).name: r["status"] for r in csv.DictReader(handle)}
    assert rows == {"a-good.tiff": "ok", "b-bomb.tiff": "failed", "c-good.tiff": "ok"}


OVERVIEW = """
from napari_histattn.errors import SlideError
from napari_histattn.io.slide import open_slide
from napari_histattn._napari.layers import slide_layer_data

with open_slide({path!r}) as slide:
    assert slide.read_level_region(0, (0, 0), (600, 600))[300, 300, 0] == 255
    assert not slide.failed_tiles
    for what, call in [("thumbnail", slide.thumbnail), ("layer", lambda: slide_layer_data(slide))]:
        try:
            call()
        except SlideError as exc:
            print("REFUSED", what, exc)
        else:
            print("BUILT", what)
"""


def test_a_huge_flat_image_never_decodes_all_of_level_0_for_an_overview(tmp_path: Path) -> None:
    import zlib

    # 130 KB on disk, 65536^2 px of white when decoded: 16,384 tiles that all point
    # at one deflate stream. An overview would decode 4.3 G px (minutes, on main
    # before this check: the computed levels recursed down to level 0).
    white = zlib.compress(b"\xff" * 512 * 512 * 3, 9)
    path = write_tiff(
        tmp_path / "flat.tiff", 65536, 65536, tile=(512, 512), data=white, every_tile=True
    )
    assert path.stat().st_size < 300_000
    ended = run_isolated(OVERVIEW.format(path=str(path)), memory_gib=3.0, timeout_s=60)
    assert not ended.crashed, ended.stderr[-2000:]
    assert ended.stdout.count("REFUSED") == 2, ended.stdout
    assert "has no pyramid and is 65,536 x 65,536 px" in ended.stdout
    assert "histattn pyramid flat.tiff flat.pyramid.tiff" in ended.stdout  # the way out


def test_a_flat_image_within_the_overview_limit_gets_computed_levels(tmp_path: Path) -> None:
    import zlib

    grey = zlib.compress(b"\x80" * 512 * 512 * 3, 9)
    path = write_tiff(
        tmp_path / "flat.tiff", 6144, 6144, tile=(512, 512), data=grey, every_tile=True
    )
    with open_slide(path) as slide:
        assert slide.overview_problem is None
        assert slide.computed_levels
        thumb = slide.thumbnail(512)
    assert thumb.shape == (512, 512, 3)
    assert int(thumb[256, 256, 0]) == 128
