"""One export is a set of files that lands whole or not at all.

An export (heatmap, attention, regions, patches, crops, summary) is written into
a staging folder beside its target first (:class:`ExportSet`). Only when every
file is written does :meth:`ExportSet.commit` move them into place, with a
manifest written last that names the files of this set and their SHA-256
(``<name>.manifest.json``). A failure while writing (disk full, a name that is a
directory, permission) leaves the earlier set untouched; a failure while moving
puts the earlier files back. Files the previous manifest named that this set
does not write (the crops of regions that are gone) are removed, and nothing
else in the folder is touched. A lock file refuses a second export into the same
folder while one is committing or staging (a lock left by a dead process is
taken over).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from napari_histattn.atomic import atomic_write, describe_os_error
from napari_histattn.errors import ExportError

__all__ = ["MANIFEST_FORMAT", "ExportSet", "read_manifest"]

MANIFEST_FORMAT = "napari-histattn-export"
_LOCK = ".histattn-export.lock"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of a manifest, ``{}`` when missing or not ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if data.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        return {}
    return {str(k): str(v) for k, v in files.items() if _is_relative(str(k))}


def _is_relative(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    lock = folder / _LOCK
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and _pid_alive(holder) and holder != os.getpid():
                raise ExportError(
                    folder,
                    f"another export into this folder is running (process {holder}); "
                    "wait for it or choose another folder",
                ) from None
            if holder == os.getpid():
                raise ExportError(folder, "an export into this folder is already running") from None
            lock.unlink(missing_ok=True)  # left by a process that died
            continue
        except OSError as exc:
            raise ExportError(folder, describe_os_error(exc)) from exc
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        break
    else:
        raise ExportError(folder, f"cannot take the export lock {lock.name}")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


class ExportSet:
    """Stage the files of one export, then put them in place together.

    Use as a context manager: write each file to :meth:`path` (its final name
    relative to ``folder``), and the set is committed when the block ends
    without an exception; with one, the staging folder is removed and the
    folder is as it was.

    Parameters
    ----------
    folder
        Where the files go (created if missing).
    name
        The set's name: its manifest is ``<name>.manifest.json`` in ``folder``.
    """

    def __init__(self, folder: str | os.PathLike[str], name: str = "export") -> None:
        self.folder = Path(folder)
        self.name = name
        self.manifest = self.folder / f"{name}.manifest.json"
        self._staging: Path | None = None
        self._lock: contextlib.AbstractContextManager[None] | None = None
        self.committed: dict[str, Path] = {}

    # -- staging

    def __enter__(self) -> ExportSet:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExportError(self.folder, describe_os_error(exc)) from exc
        if not self.folder.is_dir():
            raise ExportError(self.folder, "not a directory")
        self._lock = _folder_lock(self.folder)
        self._lock.__enter__()
        try:
            self._staging = Path(tempfile.mkdtemp(prefix=".histattn-staging-", dir=self.folder))
        except OSError as exc:
            self._release()
            raise ExportError(self.folder, describe_os_error(exc)) from exc
        return self

    def path(self, relative: str) -> Path:
        """Where to write the file that will be ``folder / relative``."""
        if self._staging is None:
            raise RuntimeError("ExportSet.path() outside its with-block")
        if not _is_relative(relative):
            raise ExportError(self.folder / relative, "export file names must stay in the folder")
        target = self._staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if kind is None:
                self._commit()
        finally:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    # -- commit

    def _staged(self) -> list[str]:
        assert self._staging is not None
        return sorted(
            str(p.relative_to(self._staging)) for p in self._staging.rglob("*") if p.is_file()
        )

    def _commit(self) -> None:
        assert self._staging is not None
        new = self._staged()
        clashes = [n for n in new if (self.folder / n).is_dir()]
        if clashes:
            raise ExportError(self.folder / clashes[0], "the target is a directory")
        hashes = {n: _sha256(self._staging / n) for n in new}
        old = read_manifest(self.manifest)
        stale = [n for n in old if n not in hashes and (self.folder / n).is_file()]
        backup = Path(tempfile.mkdtemp(prefix=".histattn-backup-", dir=self.folder))
        moved_aside: list[str] = []
        placed: list[str] = []
        current = self.manifest.name
        try:
            for name in [*new, *stale]:  # what is replaced or goes, kept until the end
                current = name
                if (self.folder / name).is_file():
                    (backup / name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self.folder / name, backup / name)
                    moved_aside.append(name)
            for name in new:
                current = name
                (self.folder / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._staging / name, self.folder / name)
                placed.append(name)
            current = self.manifest.name
            record = {
                "format": MANIFEST_FORMAT,
                "name": self.name,
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "files": hashes,
            }
            with atomic_write(self.manifest, "w") as handle:
                handle.write(json.dumps(record, indent=1) + "\n")
        except BaseException as exc:
            for name in placed:  # back as it was
                with contextlib.suppress(OSError):
                    (self.folder / name).unlink()
            for name in moved_aside:
                with contextlib.suppress(OSError):
                    os.replace(backup / name, self.folder / name)
            shutil.rmtree(backup, ignore_errors=True)
            if isinstance(exc, ExportError):
                raise
            if isinstance(exc, OSError):
                raise ExportError(self.folder / current, describe_os_error(exc)) from exc
            raise
        shutil.rmtree(backup, ignore_errors=True)
        for name in stale:  # empty folders the stale files leave (crops/)
            parent = (self.folder / name).parent
            while parent != self.folder:
                with contextlib.suppress(OSError):
                    parent.rmdir()
                parent = parent.parent
        self.committed = {n: self.folder / n for n in new}
