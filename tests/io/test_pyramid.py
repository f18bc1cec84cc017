"""``histattn pyramid``: a flat image becomes a pyramidal TIFF with the same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_histattn.cli import main
from napari_histattn.io.pyramid import pyramid_dimensions, write_pyramid
from napari_histattn.io.slide import open_slide
from napari_histattn.io.tiff_writer import TiffWriteError
from napari_histattn.progress import Progress, run_to_completion


@pytest.fixture
def flat(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (1300, 2100, 3), dtype=np.uint8)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(
        path,
        rgb,
        tile=(256, 256),
        compression="zlib",
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    return path, rgb


def _mean2(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    s = rgb[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).astype(np.uint32).sum(axis=(1, 3))
    return ((s + 2) // 4).astype(np.uint8)


def test_deflate_pyramid_keeps_every_pixel_and_the_resolution(
    flat: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    src, rgb = flat
    reports: list[Progress] = []
    out = run_to_completion(
        write_pyramid(src, tmp_path / "out.tiff", compression="deflate"), reports.append
    )
    assert {r.stage for r in reports} == {"level 0", "pyramid"}
    assert reports[0].total == 6  # tile rows of 256 px over 1300 px
    with open_slide(out) as slide:
        assert slide.level_dimensions == ((2100, 1300), (1050, 650), (525, 325))
        assert not slide.computed_levels  # stored, not computed on demand
        assert slide.mpp_xy == pytest.approx((0.25, 0.25))
        assert np.array_equal(slide.read_level_region(0, (0, 0), (2100, 1300)), rgb)
        level1 = slide.read_level_region(1, (0, 0), (1050, 650))
    assert np.array_equal(level1, _mean2(rgb))  # 2x2 area mean, rounded
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_jpeg_pyramid_is_close_and_small(flat: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    src, _ = flat
    smooth = np.zeros((1300, 2100, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 2100, dtype=np.uint8)[None, :]
    smooth[..., 1] = 140
    tifffile.imwrite(src, smooth, tile=(256, 256), compression="zlib")
    out = run_to_completion(write_pyramid(src, tmp_path / "out.tiff", jpeg_quality=95))
    with open_slide(out) as slide:
        got = slide.read_level_region(0, (0, 0), (2100, 1300)).astype(int)
        assert slide.mpp_xy is None  # the source had none; none is invented
    assert np.abs(got - smooth).mean() < 2.0


def test_pyramid_dimensions_halve_down_to_1024() -> None:
    assert pyramid_dimensions(5000, 3000, 2) == [
        (5000, 3000),
        (2500, 1500),
        (1250, 750),
        (625, 375),
    ]
    assert pyramid_dimensions(1024, 10, 2) == [(1024, 10)]
    assert pyramid_dimensions(4097, 5, 4)[-1] == (257, 1)


def test_refuses_to_overwrite_or_to_write_over_its_source(
    flat: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    src, _ = flat
    with pytest.raises(TiffWriteError, match="is the source"):
        run_to_completion(write_pyramid(src, src, overwrite=True))
    existing = tmp_path / "exists.tiff"
    existing.write_bytes(b"keep me")
    with pytest.raises(TiffWriteError, match="exists"):
        run_to_completion(write_pyramid(src, existing))
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(TiffWriteError, match="multiple of 16"):
        run_to_completion(write_pyramid(src, tmp_path / "x.tiff", tile_size=100))


def test_cli_writes_the_pyramid_and_reports_the_levels(
    flat: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = flat
    out = tmp_path / "cli.tiff"
    assert main(["pyramid", str(src), str(out), "--quiet"]) == 0
    assert "levels 2100x1300 1050x650 525x325" in capsys.readouterr().out
    assert main(["pyramid", str(src), str(out), "--quiet"]) == 1  # exists, not replaced
    assert "exists" in capsys.readouterr().err
