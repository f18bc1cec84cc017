"""Imports every model family so that its builders register themselves."""

from __future__ import annotations

import importlib
import importlib.util

FAMILY_MODULES = (
    "napari_histattn.models.amil",
    "napari_histattn.models.attention_sampling",
    "napari_histattn.models.dafl",
    "napari_histattn.models.hatnet",
    "napari_histattn.models.mldam",
)

for _module in FAMILY_MODULES:
    if importlib.util.find_spec(_module) is not None:
        importlib.import_module(_module)
