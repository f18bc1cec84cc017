"""napari-histattn: whole-slide images in napari with attention models beside them.

Importing this package is cheap: it imports no Qt, napari, magicgui or torch
(a test checks this in a subprocess). Import the subpackages you need:
``napari_histattn.io`` (slides), ``napari_histattn.models``,
``napari_histattn.inference``, ``napari_histattn.training``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from napari_histattn.errors import (
    CheckpointError,
    ExportError,
    HistattnError,
    SlideError,
)
from napari_histattn.progress import Progress

__all__ = [
    "CheckpointError",
    "ExportError",
    "HistattnError",
    "Progress",
    "SlideError",
    "__version__",
]
