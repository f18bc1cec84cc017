"""A slide file replaced or rewritten under an open slide is refused, never served
under the old file's metadata; coordinates a backend would wrap are refused."""

from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

import pytest
from craft import write_tiff

from napari_histattn.errors import SlideError
from napari_histattn.io.slide import InvalidRegionError, open_slide


def _slide(path: Path, value: int, side: int = 512) -> Path:
    data = zlib.compress(bytes([value]) * 256 * 256 * 3)
    return write_tiff(path, side, side, tile=(256, 256), data=data)


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
@pytest.mark.parametrize("how", ["replaced", "rewritten", "deleted"])
def test_a_changed_file_is_refused(tmp_path: Path, backend: str, how: str) -> None:
    path = _slide(tmp_path / "slide.tiff", 200)
    with open_slide(path, backend=backend) as slide:
        assert int(slide.read_region((0, 0), 0, (8, 8))[0, 0, 0]) == 200
        if how == "replaced":  # a new file moved over the old name (new inode)
            other = _slide(tmp_path / "other.tiff", 40, side=1024)
            os.replace(other, path)
        elif how == "rewritten":  # the same inode overwritten in place
            new = _slide(tmp_path / "new.tiff", 40)
            with open(path, "r+b") as handle:
                handle.write(new.read_bytes())
            os.utime(path, ns=(1, 1))  # even with a size that happens to match
        else:
            path.unlink()
        with pytest.raises(SlideError, match="replaced or modified|gone"):
            slide.read_region((0, 0), 0, (8, 8))
        with pytest.raises(SlideError):
            slide.thumbnail(64)


def test_an_unchanged_copy_elsewhere_is_fine(tmp_path: Path) -> None:
    path = _slide(tmp_path / "slide.tiff", 200)
    with open_slide(path) as slide:
        shutil.copy(path, tmp_path / "copy.tiff")
        assert slide.read_region((0, 0), 0, (8, 8)).shape == (8, 8, 3)


@pytest.mark.parametrize("xy", [(2**63, 0), (0, -(2**63)), (2**64 + 5, 2**64)])
def test_coordinates_that_would_wrap_are_refused(tmp_path: Path, xy: tuple[int, int]) -> None:
    slide = open_slide(_slide(tmp_path / "slide.tiff", 200))
    with slide, pytest.raises(InvalidRegionError, match="never wrapped"):
        slide.read_region(xy, 0, (8, 8))
