"""Synthetic H&E-like whole-slide images with known lesions and benign look-alikes.

* :func:`make_scene` lays out a slide (tissue outline, lesions, look-alikes) as a
  small JSON-serialisable :class:`Scene`.
* :func:`render_region` renders any window of it at any downsample, deterministically.
* :func:`write_synthetic_slide` writes it as a pyramidal JPEG TIFF that OpenSlide
  opens as ``generic-tiff``, with ground truth (GeoJSON, label mask, JSON) beside it.
* :func:`generate_synthetic_slide` does both; :func:`synthetic_sample_slide` is the
  cached demo slide.
"""

from __future__ import annotations

from napari_histattn.io.synthetic._geometry import Region
from napari_histattn.io.synthetic.ground_truth import (
    LABELS,
    class_tiles,
    label_mask,
    lesion_mask,
    scene_geojson,
)
from napari_histattn.io.synthetic.render import BACKGROUND, render_region
from napari_histattn.io.synthetic.sample import (
    SampleParams,
    cached_sample_slide,
    default_cache_dir,
    generate_synthetic_slide,
    iter_sample_slide,
    synthetic_sample_slide,
)
from napari_histattn.io.synthetic.scene import Scene, SceneError, make_scene
from napari_histattn.io.synthetic.tiles import SyntheticWriteError
from napari_histattn.io.synthetic.writer import SyntheticSlide, write_synthetic_slide

__all__ = [
    "BACKGROUND",
    "LABELS",
    "Region",
    "Scene",
    "SceneError",
    "SyntheticSlide",
    "SyntheticWriteError",
    "default_cache_dir",
    "generate_synthetic_slide",
    "class_tiles",
    "label_mask",
    "lesion_mask",
    "make_scene",
    "render_region",
    "scene_geojson",
    "synthetic_sample_slide",
    "SampleParams",
    "cached_sample_slide",
    "iter_sample_slide",
    "write_synthetic_slide",
]
