"""Small synthetic images for the slide I/O tests, generated with tifffile and Pillow.

Every fixture writes into a session temporary folder; nothing binary lives in git.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from slide_test_helpers import Written, corrupt_tile, halve, pattern, write_pyramid_tiff


@pytest.fixture(scope="session")
def io_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slides")


@pytest.fixture(scope="session")
def jpeg_pyramid(io_dir: Path) -> Written:
    """Generic tiled JPEG TIFF, 2048x1536, 3 levels, mpp (0.5, 0.5) in cm resolution tags."""
    l0 = pattern(1536, 2048, seed=1)
    levels = [l0, halve(l0), halve(halve(l0))]
    path = write_pyramid_tiff(io_dir / "pyramid.tiff", levels, mpp_xy=(0.5, 0.5))
    return Written(path, levels, (0.5, 0.5))


@pytest.fixture(scope="session")
def zlib_pyramid_odd(io_dir: Path) -> Written:
    """Lossless tiled pyramid with odd sizes and different mpp in x and y (tifffile-readable exactly)."""
    l0 = pattern(901, 1203, seed=2)
    levels = [l0, halve(l0)]
    path = write_pyramid_tiff(
        io_dir / "odd.tiff", levels, tile=128, compression="zlib", mpp_xy=(0.25, 0.3)
    )
    return Written(path, levels, (0.25, 0.3))


@pytest.fixture(scope="session")
def ome_pyramid(io_dir: Path) -> Written:
    """OME-TIFF with a SubIFD pyramid (lossless), PhysicalSize 0.26 x 0.27 µm, objective 40x."""
    l0 = pattern(1000, 1200, seed=3)
    levels = [l0, halve(l0), halve(halve(l0))]
    path = io_dir / "pyramid.ome.tiff"
    metadata = {
        "axes": "YXS",
        "PhysicalSizeX": 0.26,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": 0.27,
        "PhysicalSizeYUnit": "µm",
    }
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            l0,
            subifds=len(levels) - 1,
            tile=(128, 128),
            compression="zlib",
            photometric="rgb",
            metadata=metadata,
        )
        for level in levels[1:]:
            tif.write(level, tile=(128, 128), compression="zlib", photometric="rgb", subfiletype=1)
    return Written(path, levels, (0.26, 0.27))


@pytest.fixture(scope="session")
def strip_tiff(io_dir: Path) -> Written:
    """Strip (untiled) TIFF, 700x460, 300 dpi (inch resolution unit)."""
    rgb = pattern(460, 700, seed=4)
    path = io_dir / "strips.tif"
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        rowsperstrip=37,
        compression="zlib",
        resolution=(300, 300),
        resolutionunit="INCH",
        metadata=None,
    )
    return Written(path, [rgb], None)  # 300 dpi is a print resolution: no pixel size


@pytest.fixture(scope="session")
def png_patch(io_dir: Path) -> Written:
    """BreakHis-sized RGB PNG, 700x460."""
    rgb = pattern(460, 700, seed=5)
    path = io_dir / "patch.png"
    Image.fromarray(rgb).save(path)
    return Written(path, [rgb])


@pytest.fixture(scope="session")
def rgba_png(io_dir: Path) -> tuple[Path, np.ndarray]:
    """RGBA PNG with opaque, half-transparent and fully transparent pixels."""
    rgba = np.zeros((40, 60, 4), dtype=np.uint8)
    rgba[..., :3] = pattern(40, 60, seed=6)
    rgba[..., 3] = 255
    rgba[:, 20:40, 3] = 128
    rgba[:, 40:, 3] = 0
    path = io_dir / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    return path, rgba


@pytest.fixture(scope="session")
def big_flat_tiff(io_dir: Path) -> Written:
    """Tiled JPEG TIFF of 5000x4000 with no pyramid: gets computed levels."""
    rgb = pattern(4000, 5000, seed=7)
    path = write_pyramid_tiff(io_dir / "flat.tiff", [rgb], mpp_xy=(0.5, 0.5))
    return Written(path, [rgb], (0.5, 0.5))


@pytest.fixture(scope="session")
def big_png(io_dir: Path) -> Written:
    """Plain PNG of 4200x300: larger than the computed-level trigger on one side."""
    rgb = pattern(300, 4200, seed=8)
    path = io_dir / "wide.png"
    Image.fromarray(rgb).save(path, compress_level=1)
    return Written(path, [rgb])


@pytest.fixture
def corrupt_pyramid(jpeg_pyramid: Written, tmp_path: Path) -> tuple[Path, Path]:
    """(clean, corrupted) copies of ``jpeg_pyramid``; level-0 tile (col 1, row 2) is zeroed."""
    clean = tmp_path / "clean.tiff"
    clean.write_bytes(jpeg_pyramid.path.read_bytes())
    bad = tmp_path / "bad.tiff"
    tiles_across = -(-2048 // 256)
    corrupt_tile(clean, bad, page=0, tile_index=2 * tiles_across + 1)
    return clean, bad
