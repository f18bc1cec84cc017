"""A slide's resolution is believed only when a microscope could have produced it."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from craft import write_tiff

from napari_histattn.io.slide import open_slide

PIXELS = zlib.compress(b"\xe0" * 256 * 256 * 3)


def _aperio(tmp_path: Path, mpp: str) -> Path:
    text = f"Aperio Image Library v12.0.15\n256x256 [0,0 256x256] (256x256) JPEG/RGB Q=70|AppMag = 20|MPP = {mpp}"
    return write_tiff(
        tmp_path / "aperio.svs", 256, 256, tile=(256, 256), data=PIXELS, description=text
    )


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
@pytest.mark.parametrize("mpp", ["1e30", "4e13", "-0.5", "0", "nan", "inf", "0.0000001"])
def test_an_absurd_mpp_is_unknown_not_believed(tmp_path: Path, backend: str, mpp: str) -> None:
    with open_slide(_aperio(tmp_path, mpp), backend=backend) as slide:
        assert slide.mpp_xy is None
        assert slide.mpp_source == "none"
        if mpp not in ("-0.5", "0", "nan", "inf"):  # not even a positive number: silently none
            assert any("outside" in note for note in slide.metadata_warnings)
        # the slide still opens and reads: a viewer can show it
        assert slide.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_a_plausible_mpp_is_kept(tmp_path: Path, backend: str) -> None:
    with open_slide(_aperio(tmp_path, "0.2527"), backend=backend) as slide:
        assert slide.mpp_xy == pytest.approx((0.2527, 0.2527))
        assert slide.metadata_warnings == []


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
@pytest.mark.parametrize("dpi", [72, 96, 300])
@pytest.mark.parametrize("unit", ["inch", "centimetre"])
def test_a_print_dpi_is_not_a_pixel_size(tmp_path: Path, backend: str, dpi: int, unit: str) -> None:
    per_unit, code = (dpi, 2) if unit == "inch" else (dpi / 2.54, 3)
    path = write_tiff(
        tmp_path / "photo.tiff",
        256,
        256,
        tile=(256, 256),
        data=PIXELS,
        resolution=per_unit,
        resolution_unit=code,
    )
    with open_slide(path, backend=backend) as slide:
        assert slide.mpp_xy is None  # not 352.78 um/px
        assert any("print DPI" in note for note in slide.metadata_warnings)


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_a_microscope_resolution_in_centimetres_is_kept(tmp_path: Path, backend: str) -> None:
    path = write_tiff(
        tmp_path / "scan.tiff", 256, 256, tile=(256, 256), data=PIXELS, resolution=40000
    )
    with open_slide(path, backend=backend) as slide:
        assert slide.mpp_xy == pytest.approx((0.25, 0.25))


@pytest.mark.parametrize("override", [(1e30, 1e30), (1e-9, 1e-9), (float("nan"), 0.5), (-1, 1)])
def test_an_absurd_override_is_refused(tmp_path: Path, override: tuple[float, float]) -> None:
    path = write_tiff(tmp_path / "scan.tiff", 256, 256, tile=(256, 256), data=PIXELS)
    with pytest.raises(ValueError, match="mpp_override"):
        open_slide(path, mpp_override=override)


@pytest.mark.parametrize(("top", "bits"), [(4095, 12), (1023, 10), (65535, 16)])
@pytest.mark.parametrize("layout", ["tiled", "strips"])
def test_16_bit_grey_is_scaled_by_its_real_range(
    tmp_path: Path, top: int, bits: int, layout: str
) -> None:
    import numpy as np
    import tifffile

    grey = np.linspace(0, top, 256 * 256).reshape(256, 256).astype(np.uint16)
    path = tmp_path / "grey16.tiff"
    extra = {"tile": (128, 128)} if layout == "tiled" else {"rowsperstrip": 16}
    tifffile.imwrite(path, grey, photometric="minisblack", **extra)
    with open_slide(path) as slide:
        rgb = slide.read_region((0, 0), 0, (256, 256))
        assert slide.backend == "tifffile"  # not OpenSlide, which keeps the top 8 bits
        assert int(rgb.min()) == 0 and int(rgb.max()) == 255  # not black, not clipped white
        assert abs(int(rgb[128, 128, 0]) - 128) <= 1
        assert (bits < 16) == any(f"{bits}-bit values" in n for n in slide.metadata_warnings)


def test_a_16_bit_png_is_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    grey = np.linspace(0, 4095, 128 * 128).reshape(128, 128).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(grey).save(path)
    with open_slide(path) as slide:
        rgb = slide.read_region((0, 0), 0, (128, 128))
    assert int(rgb.min()) == 0 and int(rgb.max()) == 255
    assert 100 < int(rgb[64, 64, 0]) < 156


def test_a_vendor_mpp_is_kept_beside_a_print_dpi_tag(tmp_path: Path) -> None:
    """An SVS whose TIFF tags also say 72 dpi: Aperio's own MPP is the pixel size."""
    text = "Aperio Image Library v12.0.15\n256x256 (256x256) JPEG/RGB Q=70|AppMag = 20|MPP = 0.25"
    path = write_tiff(
        tmp_path / "scan.svs",
        256,
        256,
        tile=(256, 256),
        data=PIXELS,
        description=text,
        resolution=72,
        resolution_unit=2,
    )
    with open_slide(path, backend="openslide") as slide:
        assert slide.mpp_xy == pytest.approx((0.25, 0.25))
        assert slide.metadata_warnings == []


def test_the_real_72_dpi_tiff_has_no_pixel_size(shared_slides: Path) -> None:
    """boxes.tiff stores 28.35 px/cm (72 dpi): it used to read as 352.78 um/px."""
    with open_slide(shared_slides / "boxes.tiff") as slide:
        assert slide.mpp_xy is None and slide.mpp_source == "none"
        assert "print DPI" in slide.metadata_warnings[0]
    with open_slide(shared_slides / "CMU-1-Small-Region.svs") as slide:
        assert slide.mpp_xy == pytest.approx((0.499, 0.499))  # Aperio's own MPP, kept
