"""Exports are all or nothing: an earlier set survives a failure, nothing stale is left,
two exports into one folder never mix, long and non-UTF-8 names work or fail clearly."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from napari_histattn.errors import ExportError
from napari_histattn.io.export.exportset import ExportSet, read_manifest


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".histattn")
    }


def _write(folder: Path, files: dict[str, bytes], name: str = "export") -> None:
    with ExportSet(folder, name) as staged:
        for rel, data in files.items():
            staged.path(rel).write_bytes(data)


def test_a_failure_half_way_leaves_the_earlier_set(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    _write(folder, {"a.png": b"old a", "b.csv": b"old b", "crops/1.png": b"old crop"})
    (folder / "notes.txt").write_text("the user's own file")
    before = _snapshot(folder)
    with pytest.raises(OSError, match="disk full"), ExportSet(folder) as staged:
        staged.path("a.png").write_bytes(b"new a")
        raise OSError(28, "disk full")  # as a write of b.csv would
    assert _snapshot(folder) == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".histattn")]  # no debris


def test_a_failure_while_moving_puts_the_earlier_files_back(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "out"
    _write(folder, {"a.png": b"old a", "b.csv": b"old b"})
    before = _snapshot(folder)
    real_replace = os.replace
    calls = {"n": 0}

    def failing(src, dst):  # the fourth rename (placing b.csv) fails
        calls["n"] += 1
        if calls["n"] == 4:
            raise PermissionError(13, "permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(ExportError, match="permission denied"):
        _write(folder, {"a.png": b"new a", "b.csv": b"new b"})
    monkeypatch.setattr(os, "replace", real_replace)
    assert _snapshot(folder) == before


def test_a_name_that_is_a_directory_fails_before_anything_moves(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    _write(folder, {"a.png": b"old a"})
    (folder / "b.csv").mkdir()
    with pytest.raises(ExportError, match="directory"):
        _write(folder, {"a.png": b"new a", "b.csv": b"new b"})
    assert (folder / "a.png").read_bytes() == b"old a"


def test_a_smaller_set_leaves_no_stale_files_and_no_other_file_is_touched(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    _write(
        folder, {"a.png": b"1", "crops/1.png": b"c1", "crops/2.png": b"c2", "crops/3.png": b"c3"}
    )
    (folder / "mine.txt").write_text("keep")
    _write(folder, {"a.png": b"2", "crops/1.png": b"c1'"})
    assert _snapshot(folder) == {
        "a.png": b"2",
        "crops/1.png": b"c1'",
        "export.manifest.json": (folder / "export.manifest.json").read_bytes(),
        "mine.txt": b"keep",
    }
    manifest = read_manifest(folder / "export.manifest.json")
    assert sorted(manifest) == ["a.png", "crops/1.png"]
    import hashlib

    assert manifest["a.png"] == hashlib.sha256(b"2").hexdigest()
    _write(folder, {"a.png": b"3"})  # no crops at all: the folder goes too
    assert not (folder / "crops").exists()


def test_two_exports_into_one_folder_never_mix(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            with ExportSet(folder) as staged:
                staged.path("a.png").write_bytes(b"first")
                inside.set()
                release.wait(10)
                staged.path("b.csv").write_bytes(b"first")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    worker = threading.Thread(target=slow)
    worker.start()
    assert inside.wait(10)
    with pytest.raises(ExportError, match="already running|another export"):
        _write(folder, {"a.png": b"second", "b.csv": b"second"})
    release.set()
    worker.join(10)
    assert not errors
    assert _snapshot(folder)["a.png"] == b"first" and _snapshot(folder)["b.csv"] == b"first"


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".histattn-export.lock").write_text("999999999")  # no such process
    _write(folder, {"a.png": b"x"})
    assert (folder / "a.png").read_bytes() == b"x"
    assert not (folder / ".histattn-export.lock").exists()


def test_long_names_work_up_to_the_limit_and_fail_clearly_beyond(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    fits = "r" * (255 - len(".manifest.json"))
    _write(folder, {"a.png": b"x"}, name=fits)
    assert (folder / f"{fits}.manifest.json").is_file()
    with pytest.raises(ExportError, match="too long"):
        _write(folder, {"a.png": b"y"}, name="r" * 250)
    assert (folder / "a.png").read_bytes() == b"x"


def test_a_non_utf8_folder_name_works(tmp_path: Path) -> None:
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9-\xff"))
    _write(folder, {"a.png": b"x", "crops/1.png": b"c"})
    assert (folder / "a.png").read_bytes() == b"x"
    assert sorted(read_manifest(folder / "export.manifest.json")) == ["a.png", "crops/1.png"]
