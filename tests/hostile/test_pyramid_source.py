"""A pyramid is never written over pixels that could not be decoded."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from craft import write_tiff

from napari_histattn.io.pyramid import write_pyramid
from napari_histattn.io.tiff_writer import TiffWriteError
from napari_histattn.progress import run_to_completion


def test_a_source_with_undecodable_tiles_is_refused_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    path = write_tiff(
        tmp_path / "broken.tiff", 1024, 1024, tile=(512, 512), data=zlib.compress(b"\0" * 64)
    )
    with pytest.raises(TiffWriteError, match="could not be decoded"):
        run_to_completion(write_pyramid(path, tmp_path / "out.tiff"))
    assert not (tmp_path / "out.tiff").exists()
    assert not list(tmp_path.glob(".*partial"))
