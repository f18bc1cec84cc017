"""Atomic writes: complete file or none, earlier file intact, clear errors.

Tests run as root in CI, where ``chmod 0o500`` does not stop a write, so failures are
made robustly: a parent that is a regular file, a missing directory, and OSError
injected into the write, ``fsync`` or ``os.replace`` (a full disk can surface at any
of these).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from napari_histattn import atomic
from napari_histattn.atomic import atomic_write, current_umask
from napari_histattn.errors import ExportError


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_writes_text_and_binary(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "a.txt") as f:
        f.write("héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    with atomic_write(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path) == []


def test_new_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        with atomic_write(tmp_path / "x.json") as f:
            f.write("{}")
        with atomic_write(tmp_path / "y.json", file_mode=0o644) as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "y.json").stat().st_mode & 0o777 == 0o640


def test_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old")
    target.chmod(0o600)
    with atomic_write(target) as f:
        f.write("new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o600


def test_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "out.json"
    with (
        pytest.raises(ExportError, match="does not exist") as info,
        atomic_write(target) as f,
    ):
        f.write("x")
    assert info.value.path == target
    assert not (tmp_path / "nope").exists()


def test_parent_is_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("i am a file")
    with (
        pytest.raises(ExportError, match="not a directory"),
        atomic_write(tmp_path / "file" / "out.json") as f,
    ):
        f.write("x")
    assert (tmp_path / "file").read_text() == "i am a file"


def test_target_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with (
        pytest.raises(ExportError, match="is a directory"),
        atomic_write(tmp_path / "dir") as f,
    ):
        f.write("x")
    assert (tmp_path / "dir").is_dir()


def test_disk_full_mid_write_keeps_earlier_file(tmp_path: Path) -> None:
    target = tmp_path / "regions.geojson"
    target.write_text("earlier export")
    with (
        pytest.raises(ExportError, match="no space left on device") as info,
        atomic_write(target) as f,
    ):
        f.write("partial ")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert isinstance(info.value.__cause__, OSError)
    assert target.read_text() == "earlier export"
    assert leftovers(tmp_path) == []


def test_disk_full_at_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.csv"
    target.write_text("earlier")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with (
        pytest.raises(ExportError, match="disk full"),
        atomic_write(target) as f,
    ):
        f.write("a" * 10_000)
    assert target.read_text() == "earlier"
    assert leftovers(tmp_path) == []


def test_replace_failure_keeps_earlier_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def refuse(src: object, dst: object) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with (
        pytest.raises(ExportError, match="permission denied"),
        atomic_write(target, "wb") as f,
    ):
        f.write(b"new")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_error_inside_block_is_wrapped_and_cleans_up(tmp_path: Path) -> None:
    with (
        pytest.raises(ExportError, match="ValueError: bad data"),
        atomic_write(tmp_path / "x.json") as f,
    ):
        f.write("{")
        raise ValueError("bad data")
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_is_not_wrapped_but_cleans_up(tmp_path: Path) -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        atomic_write(tmp_path / "x.json") as f,
    ):
        f.write("{")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_symlink_target_is_replaced_not_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    with atomic_write(link) as f:
        f.write("new")
    assert link.is_symlink()
    assert real.read_text() == "new"


def test_rejects_bad_mode(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="mode"),
        atomic_write(tmp_path / "x", "a"),  # type: ignore[arg-type]
    ):
        pass
