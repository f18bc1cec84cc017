"""Export of attended regions and patches: GeoJSON (QuPath), CSV, PNG crops.

Every file is written through :func:`~napari_histattn.atomic.atomic_write`: it
appears complete or not at all, and a failed write raises
:class:`~napari_histattn.errors.ExportError` and leaves an earlier file untouched.

GeoJSON follows QuPath's conventions, so that QuPath's importer (File > Import
objects, or drag and drop) accepts it:

- a ``FeatureCollection`` of ``Feature`` objects;
- ``geometry`` a ``Polygon`` or ``MultiPolygon`` in level-0 pixel coordinates
  ``(x, y)`` (``y`` down), rings closed, exteriors counter-clockwise and holes
  clockwise in those coordinates (RFC 7946; QuPath accepts either orientation),
  repaired when self-intersecting;
- ``properties.objectType = "annotation"``, ``properties.name``,
  ``properties.classification = {"name": ..., "color": [r, g, b]}`` (always with a
  colour), ``properties.measurements`` as a mapping name -> number (QuPath >= 0.4
  writes and reads this form; QuPath 0.2/0.3 wrote a list of ``{"name", "value"}``,
  which :func:`read_geojson_regions` also reads). Non-finite measurements are left out
  because JSON has no NaN.

Provenance (package version, model, checkpoint SHA-256, seed, device, slide,
quickhash, mpp, time: whatever mapping the caller passes) is stored in the
collection's top-level ``properties`` member, which GeoJSON readers, QuPath included,
ignore.

One module per format: :mod:`.geojson` (:mod:`.geojson_read` reads it back),
:mod:`.patches_csv`, :mod:`.crops`; and :mod:`.napari_frames` converts Shapes-layer
vertices to level-0 polygons and back without importing napari. Everything public is
re-exported here.

GUI-free: numpy, shapely, Pillow, json and csv only.
"""

from __future__ import annotations

from napari_histattn.io.export.crops import write_region_crops
from napari_histattn.io.export.geojson import json_safe, regions_to_geojson, write_geojson
from napari_histattn.io.export.geojson_read import read_geojson_document, read_geojson_regions
from napari_histattn.io.export.napari_frames import l0_polygon_to_napari_yx, napari_yx_to_l0_polygon
from napari_histattn.io.export.patches_csv import (
    CSV_BASE_COLUMNS,
    read_patches_csv,
    write_patches_csv,
)

__all__ = [
    "CSV_BASE_COLUMNS",
    "json_safe",
    "l0_polygon_to_napari_yx",
    "napari_yx_to_l0_polygon",
    "read_geojson_document",
    "read_geojson_regions",
    "read_patches_csv",
    "regions_to_geojson",
    "write_geojson",
    "write_patches_csv",
    "write_region_crops",
]
