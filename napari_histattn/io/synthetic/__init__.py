"""Synthetic H&E-like whole-slide images with known lesions and benign look-alikes."""

from __future__ import annotations

from napari_histattn.io.synthetic._geometry import Region
from napari_histattn.io.synthetic.render import render_region
from napari_histattn.io.synthetic.scene import Scene, SceneError, make_scene

__all__ = ["Region", "Scene", "SceneError", "make_scene", "render_region"]
