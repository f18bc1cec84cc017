"""Atomic file writes: a failed export never leaves a partial file or clobbers an earlier one.

The data goes to a temporary file in the target's own directory (so that the final
``os.replace`` is a rename within one file system, which POSIX and Windows make atomic),
is flushed and ``fsync``-ed, gets the permission bits a normal file would get, and only
then replaces the target. Any failure removes the temporary file and raises
:class:`~napari_histattn.errors.ExportError` naming the target and the cause.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from napari_histattn.errors import ExportError

__all__ = ["atomic_write", "current_umask", "describe_os_error"]

# Reasons in words for the errors a user can act on; anything else falls back to strerror.
_ERRNO_CAUSES = {
    errno.ENOSPC: "no space left on device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "the directory does not exist",
    errno.ENOTDIR: "a component of the directory path is not a directory",
    errno.EISDIR: "the target is a directory",
    errno.ENAMETOOLONG: "file name too long",
}


def current_umask() -> int:
    """Return the process umask without changing it for other threads.

    Linux reports it in ``/proc/self/status``; elsewhere the classic set-and-restore
    is used (briefly racy with other threads creating files, hence the preference).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def describe_os_error(exc: BaseException) -> str:
    """Return a short human-readable cause for an exception raised while writing."""
    if isinstance(exc, OSError):
        # The file name is left out on purpose: it is usually the temporary file,
        # which no longer exists when the user reads the message.
        return _ERRNO_CAUSES.get(exc.errno or -1) or exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    mode: Literal["w", "wb"] = "w",
    *,
    file_mode: int | None = None,
    encoding: str = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it appears complete or not at all.

    Parameters
    ----------
    path
        The file to create or replace. A symbolic link is followed (its target is
        replaced), as a plain ``open(path, "w")`` would.
    mode
        ``"w"`` (text, ``encoding``) or ``"wb"`` (binary).
    file_mode
        Permission bits of the finished file before the umask is applied. ``None``
        (default) behaves like a normal ``open``: an existing regular file keeps its
        permission bits, a new file gets ``0o666 & ~umask``. An explicit value is
        also masked by the umask (``file_mode & ~umask``).
    encoding
        Text encoding for ``"w"``.
    newline
        Passed to ``open`` in text mode (``""`` for the ``csv`` module).

    Yields
    ------
    file object
        Write to it inside the ``with`` block; the target is replaced on exit.

    Raises
    ------
    ExportError
        The directory is missing or not a directory, permission is denied, the disk
        is full, or the ``with`` block raised. The temporary file is removed and an
        earlier file at ``path`` is left untouched. ``BaseException`` that is not an
        ``Exception`` (``KeyboardInterrupt``) is re-raised unchanged after clean-up.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    directory = target.parent
    if target.is_dir():
        raise ExportError(Path(path), "the target is a directory")

    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name[:40]}.", suffix=".tmp", dir=directory
        )
    except OSError as exc:
        raise ExportError(
            Path(path), f"cannot create a file in {str(directory)!r}: {describe_os_error(exc)}"
        ) from exc
    tmp = Path(tmp_name)

    try:
        if mode == "wb":
            handle: IO[Any] = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise

    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if file_mode is None:
            try:
                existing = target.stat()
            except OSError:
                existing = None
            if existing is not None and stat.S_ISREG(existing.st_mode):
                bits = stat.S_IMODE(existing.st_mode)
            else:
                bits = 0o666 & ~current_umask()
        else:
            bits = file_mode & ~current_umask()
        os.chmod(tmp, bits)
        os.replace(tmp, target)
    except ExportError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(Path(path), describe_os_error(exc)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
