"""The exception types that users of napari-histattn see.

Every error a user must act on is one of these, with a message that names the
file (or object) and the cause. Lower-level exceptions (OpenSlideError,
tifffile, safetensors, OSError) are chained as ``__cause__``.
"""

from __future__ import annotations

import os
from pathlib import Path


class HistattnError(Exception):
    """Base class of every napari-histattn error."""


class SlideError(HistattnError):
    """A slide or image cannot be opened or read.

    Parameters
    ----------
    path
        The file concerned.
    cause
        Human-readable reason, for example ``"unsupported TIFF compression 52479"``.
    """

    def __init__(self, path: str | os.PathLike[str], cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"Cannot open slide {str(self.path)!r}: {cause}")


class CheckpointError(HistattnError):
    """A model checkpoint is unsafe, corrupt, or does not match its model."""

    def __init__(self, path: str | os.PathLike[str], cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"Cannot load checkpoint {str(self.path)!r}: {cause}")


class ExportError(HistattnError):
    """An export (GeoJSON, CSV, PNG) could not be written; nothing partial was left."""

    def __init__(self, path: str | os.PathLike[str], cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"Cannot write {str(self.path)!r}: {cause}")


class AnnotationError(HistattnError):
    """An annotation file (GeoJSON regions, CSV of patches) is malformed or unreadable."""

    def __init__(self, path: str | os.PathLike[str], cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"Cannot read annotations {str(self.path)!r}: {cause}")
