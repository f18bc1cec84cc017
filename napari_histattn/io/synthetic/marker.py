"""How a slide written by our generator is recognised: the first words of its description.

Kept apart from the writer so that reading the mark imports nothing heavy; the
domain check (:mod:`napari_histattn.inference.domain`) and training's record of
what it learnt from use it.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SYNTHETIC_DESCRIPTION", "is_synthetic_properties"]

#: The start of level 0's ImageDescription in every slide :func:`write_synthetic_slide`
#: writes (``"<this>|seed=...|mpp=..."``).
SYNTHETIC_DESCRIPTION = "napari-histattn synthetic H&E slide"

# Where the backends put that description: tifffile's and OpenSlide's generic-tiff name.
_DESCRIPTION_KEYS = ("tiff.ImageDescription", "openslide.comment")


def is_synthetic_properties(properties: Mapping[str, str]) -> bool:
    """Whether a slide's properties carry the generator's description."""
    return any(
        str(properties.get(key, "")).startswith(SYNTHETIC_DESCRIPTION) for key in _DESCRIPTION_KEYS
    )
