"""Full-resolution PNG crops of attended regions, with provenance in their text chunks."""

import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from napari_histattn import __version__
from napari_histattn.atomic import atomic_write, describe_os_error
from napari_histattn.errors import ExportError, HistattnError
from napari_histattn.io.regions import Region

ReadRegion = Callable[[tuple[int, int], int, tuple[int, int]], ArrayLike]


# --------------------------------------------------------------------------- PNG crops


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug or "region"


def _crop_window(
    bounds: tuple[float, float, float, float],
    max_size: int,
    slide_l0_wh: tuple[int, int] | None,
) -> tuple[tuple[int, int], tuple[int, int]]:
    minx, miny, maxx, maxy = bounds
    x0, y0 = max(math.floor(minx), 0), max(math.floor(miny), 0)
    x1, y1 = math.ceil(maxx), math.ceil(maxy)
    if slide_l0_wh is not None:
        x1, y1 = min(x1, int(slide_l0_wh[0])), min(y1, int(slide_l0_wh[1]))

    def clip(lo: int, hi: int) -> tuple[int, int]:
        # Larger than max_size: keep a max_size window centred on the region.
        if hi - lo <= max_size:
            return lo, hi - lo
        start = max(int(round((lo + hi) / 2 - max_size / 2)), 0)
        return start, max_size

    (x, w), (y, h) = clip(x0, x1), clip(y0, y1)
    return (x, y), (w, h)


def write_region_crops(
    out_dir: str | os.PathLike[str],
    regions: Iterable[Region],
    read_region: ReadRegion,
    *,
    top_k: int = 5,
    max_size: int = 2048,
    slide_l0_wh: tuple[int, int] | None = None,
    prefix: str = "region",
) -> list[Path]:
    """Write PNG crops of the ``top_k`` best-ranked regions, read at full resolution.

    Parameters
    ----------
    out_dir
        Folder for the crops (created if missing).
    regions
        Regions in level-0 pixels; the ``top_k`` with the lowest ``rank`` are written.
    read_region
        ``read_region(l0_xy, level, size_wh) -> (h, w, 3|4) or (h, w) uint8`` array,
        called with ``level=0``; ``Slide.read_region`` fits.
    top_k
        How many crops at most.
    max_size
        Longest side of a crop in level-0 pixels; a larger region is cropped to a
        ``max_size`` window centred on its bounding box (full resolution is kept,
        nothing is downscaled).
    slide_l0_wh
        Slide size, to keep crops inside the slide; crops never start below 0.
    prefix
        File name prefix: files are ``<prefix>_<rank>_<class>.png``.

    Returns
    -------
    list of pathlib.Path
        The PNG files, best region first. Each PNG records the crop's level-0 window
        and the region's name in text chunks.

    Raises
    ------
    ExportError
        The folder or a file cannot be written, or ``read_region`` returned something
        that is not an image of the requested size. Errors of ours raised by
        ``read_region`` (a :class:`~napari_histattn.errors.SlideError`) pass through.
    """
    if max_size < 1 or top_k < 0:
        raise ValueError(f"need max_size >= 1 and top_k >= 0, got {max_size}, {top_k}")
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(folder, describe_os_error(exc)) from exc
    chosen = sorted(regions, key=lambda r: r.rank)[:top_k]
    written: list[Path] = []
    for region in chosen:
        label = region.class_name or "unclassified"
        target = folder / f"{prefix}_{region.rank:02d}_{_slug(label)}.png"
        l0_xy, size_wh = _crop_window(region.polygon.bounds, max_size, slide_l0_wh)
        if size_wh[0] <= 0 or size_wh[1] <= 0:
            raise ExportError(target, f"region {region.name!r} lies outside the slide")
        try:
            pixels = np.asarray(read_region(l0_xy, 0, size_wh))
        except HistattnError:
            raise
        except Exception as exc:
            raise ExportError(
                target, f"reading the region failed ({type(exc).__name__}: {exc})"
            ) from exc
        expected = (size_wh[1], size_wh[0])
        if (
            pixels.dtype != np.uint8
            or pixels.shape[:2] != expected
            or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4)))
        ):
            raise ExportError(
                target,
                f"read_region returned {pixels.dtype} {pixels.shape}; expected uint8 "
                f"{expected} with 3 or 4 channels",
            )
        info = PngInfo()
        info.add_text("histattn:l0_xywh", json.dumps([*l0_xy, *size_wh]))
        info.add_text("histattn:region", str(region.name))
        info.add_text("Software", f"napari-histattn {__version__}")
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", pnginfo=info)
        with atomic_write(target, "wb") as handle:
            handle.write(buffer.getvalue())
        written.append(target)
    return written
