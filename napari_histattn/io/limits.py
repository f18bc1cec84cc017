"""What a slide's header may claim before we believe it: sizes, tiles and resolution.

A TIFF of a few bytes can declare one tile of 65536^2 pixels; OpenSlide then
asks GLib for 16 GiB and the process aborts (no Python exception to catch), and
tifffile allocates the whole strip before it decodes a byte. So the geometry a
backend reports is checked here, from the header alone, before any pixel is
decoded (:func:`check_geometry`), and a resolution that no microscope produces is
treated as unknown rather than believed (:func:`plausible_mpp`).

The limits are far above any real slide: the largest whole-slide images are
about 200,000 x 100,000 px at level 0, with tiles of 240-4096 px or strips of a
few rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from napari_histattn.errors import SlideError
from napari_histattn.units import MPP_RANGE

__all__ = [
    "MAX_COORDINATE",
    "MAX_LEVEL_PIXELS",
    "MAX_LEVEL_SIDE",
    "MAX_OVERVIEW_SOURCE_PIXELS",
    "MAX_TILE_PIXELS",
    "MPP_RANGE",
    "check_geometry",
    "check_mpp_override",
    "plausible_mpp",
    "print_resolution",
]

#: Longest side of a level, in pixels (2^20: 262 mm at 0.25 um/px).
MAX_LEVEL_SIDE = 2**20
#: Most pixels in one level (2^37, about 370,000^2).
MAX_LEVEL_PIXELS = 2**37
#: Most pixels in one stored tile or strip: what one decode allocates (2^26: 256 MiB as RGBA).
MAX_TILE_PIXELS = 2**26
#: Most pixels an overview (thumbnail, zoomed-out view, tissue mask) may be computed
#: from when the smallest stored level is large, as in an image without a pyramid
#: (2^30, about 32,768^2: a minute or so of decoding on a laptop). Beyond it the
#: slide refuses to build one and says how to write a pyramid.
MAX_OVERVIEW_SOURCE_PIXELS = 2**30
#: Largest absolute coordinate, in level-0 pixels, a read or an annotation may use
#: (2^40): far beyond any slide, far below the 2^63 at which an int64 would wrap.
MAX_COORDINATE = 2**40
#: A resolution tag in pixels per inch at or below this is a screen or print DPI
#: (72, 96, 300, 600 ...), not a microscope's: 1200 dpi is 21 um/px.
MAX_PRINT_DPI = 1200.0


def check_geometry(
    path: Path,
    level_dimensions: Sequence[tuple[int, int]],
    level_tile_sizes: Sequence[tuple[int, int]],
) -> None:
    """Refuse levels and tiles that no slide has, before anything is decoded.

    Raises
    ------
    SlideError
        Naming the level, what it claims and the limit it breaks.
    """
    if not level_dimensions:
        raise SlideError(path, "the file declares no image levels")
    for level, (w, h) in enumerate(level_dimensions):
        if w <= 0 or h <= 0:
            raise SlideError(path, f"level {level} declares {w} x {h} px")
        if max(w, h) > MAX_LEVEL_SIDE or w * h > MAX_LEVEL_PIXELS:
            raise SlideError(
                path,
                f"level {level} declares {w:,} x {h:,} px, beyond the limit of "
                f"{MAX_LEVEL_SIDE:,} px a side and {MAX_LEVEL_PIXELS:.2e} px in all "
                "(the header is damaged or hostile)",
            )
    for level, (tw, th) in enumerate(level_tile_sizes):
        if tw <= 0 or th <= 0:
            raise SlideError(path, f"level {level} declares tiles of {tw} x {th} px")
        if tw * th > MAX_TILE_PIXELS:
            raise SlideError(
                path,
                f"level {level} stores tiles (or strips) of {tw:,} x {th:,} px; decoding one "
                f"would allocate {4 * tw * th / 2**30:.1f} GiB, beyond the limit of "
                f"{MAX_TILE_PIXELS:,} px per tile",
            )


def plausible_mpp(
    mpp_xy: tuple[float, float] | None,
) -> tuple[tuple[float, float] | None, str | None]:
    """``(mpp_xy, None)`` when it is a microscope's resolution, else ``(None, why)``."""
    if mpp_xy is None:
        return None, None
    low, high = MPP_RANGE
    mx, my = mpp_xy
    if all(math.isfinite(v) and low <= v <= high for v in (mx, my)):
        return (mx, my), None
    return None, (
        f"the file's resolution ({mx:.4g} x {my:.4g} um/px) is outside {low:g}-{high:g} um/px "
        "and was ignored: the slide has no known pixel size"
    )


def print_resolution(px_per_unit: float, um_per_unit: float) -> bool:
    """Whether a TIFF resolution is a screen or print DPI rather than a microscope's.

    Ordinary image files carry 72, 96 or 300 dpi, in inches or converted to
    centimetres (72 dpi is 28.35 px/cm); read as a physical size, 72 dpi would be
    352.78 um/px. Anything at or below :data:`MAX_PRINT_DPI` (21 um/px) from a
    resolution tag is taken for one: a true 20-30 um/px overview image stored with
    such tags loses its pixel size, which a user can give back as an override.
    """
    if px_per_unit <= 0 or um_per_unit <= 0:
        return False
    return px_per_unit * 25400.0 / um_per_unit <= MAX_PRINT_DPI * (1 + 1e-9)


def overview_problem(
    path: Path, smallest_level_wh: tuple[int, int], stored_levels: int
) -> str | None:
    """Why no overview is computed for a slide whose smallest stored level is this large.

    ``None`` when the level is within :data:`MAX_OVERVIEW_SOURCE_PIXELS`.
    """
    w, h = smallest_level_wh
    if w * h <= MAX_OVERVIEW_SOURCE_PIXELS:
        return None
    size = f"{w:,} x {h:,} px"
    what = f"has no pyramid and is {size}" if stored_levels == 1 else f"has no level below {size}"
    return (
        f"{path.name} {what}: an overview would decode all {w * h / 1e9:.1f} G px "
        f"(more than the {MAX_OVERVIEW_SOURCE_PIXELS / 1e9:.1f} G px limit). Write a pyramidal "
        f"copy once with: histattn pyramid {path.name} {path.stem}.pyramid.tiff"
    )


def check_mpp_override(mpp_override: tuple[float, float]) -> tuple[float, float]:
    """A user's ``(mpp_x, mpp_y)``: two finite numbers within :data:`MPP_RANGE`, else ValueError."""
    try:
        mx, my = (float(v) for v in mpp_override)
    except (TypeError, ValueError):
        raise ValueError(
            f"mpp_override must be two positive numbers, got {mpp_override!r}"
        ) from None
    if not (math.isfinite(mx) and math.isfinite(my) and mx > 0 and my > 0):
        raise ValueError(f"mpp_override must be two positive numbers, got {mpp_override!r}")
    low, high = MPP_RANGE
    if not (low <= mx <= high and low <= my <= high):
        raise ValueError(
            f"mpp_override must be within {low:g}-{high:g} um/px (a microscope's), "
            f"got {mpp_override!r}"
        )
    return mx, my
