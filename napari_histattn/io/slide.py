"""Open whole-slide images and plain images behind one read-only, thread-safe API.

Backends, tried in this order by :func:`open_slide`:

``openslide``
    Anything ``OpenSlide.detect_format`` recognises (Aperio SVS including JPEG 2000,
    generic tiled TIFF, DICOM WSI, Hamamatsu NDPI/VMS, MIRAX, Leica, Philips, Ventana,
    Zeiss, ...), through openslide-python with the bundled openslide-bin.
``tifffile``
    TIFF files that OpenSlide refuses: OME-TIFF and other pyramids, strip TIFFs.
    Pixels are decoded tile by tile (or strip by strip) on demand.
``pillow``
    Plain images (PNG, JPEG, BMP, ...), such as BreakHis patches; decoded once.

All pixels come out as ``(h, w, 3)`` uint8 RGB; alpha is composited onto white.
A large image without a pyramid gets computed levels (2x2 area means, see
:mod:`napari_histattn.io.levels`). Reads are validated before any backend call:
a level that does not exist, a negative size or an oversized region raise
:class:`InvalidRegionError` (OpenSlide itself silently returns transparent pixels
for a level of 99).

OpenSlide puts a handle into a terminal error state after one undecodable tile.
:class:`Slide` recovers: it reopens the handle, re-reads the region tile by tile on
the file's tile grid, serves mid-grey (128, 128, 128) for each tile that fails,
records it in :attr:`Slide.failed_tiles`, and warns once with
:class:`SlideReadWarning`. Later reads skip known bad tiles without touching
OpenSlide, so they keep working.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_histattn.errors import SlideError
from napari_histattn.io.backend import (
    PLACEHOLDER_RGB,
    BackendFactory,
    _Backend,
    _FailureSink,
    argb_to_rgb,
    logger,
    rgba_to_rgb,
)
from napari_histattn.io.handle import (
    DEFAULT_MAX_REGION_PIXELS,
    InvalidRegionError,
    Slide,
    SlideReadWarning,
)
from napari_histattn.io.levels import DEFAULT_MAX_ARRAY_BYTES
from napari_histattn.io.limits import check_mpp_override
from napari_histattn.io.openslide_backend import _OpenSlideBackend
from napari_histattn.io.pillow_backend import _PillowBackend
from napari_histattn.io.tiff_backend import _TiffBackend

__all__ = [
    "DEFAULT_MAX_REGION_PIXELS",
    "PLACEHOLDER_RGB",
    "InvalidRegionError",
    "Slide",
    "SlideReadWarning",
    "can_open",
    "open_slide",
    "argb_to_rgb",
    "rgba_to_rgb",
]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"\xff\xd8\xff",  # JPEG
    b"BM",  # BMP
    b"GIF87a",
    b"GIF89a",
)


# --------------------------------------------------------------------------- opening


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _detect_openslide(path: Path) -> str | None:
    try:
        import openslide

        return openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None


_BACKENDS = ("openslide", "tifffile", "pillow")


def open_slide(
    path: str | os.PathLike[str],
    *,
    mpp_override: tuple[float, float] | None = None,
    backend: str | None = None,
    max_region_pixels: int = DEFAULT_MAX_REGION_PIXELS,
    max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES,
) -> Slide:
    """Open a whole-slide image or a plain image.

    Parameters
    ----------
    path
        The file (for DICOM WSI, any one file of the series).
    mpp_override
        ``(mpp_x, mpp_y)`` to use instead of the file's own (``mpp_source`` becomes
        ``"override"``).
    backend
        Force ``"openslide"``, ``"tifffile"`` or ``"pillow"``; by default OpenSlide
        for what it detects (except generic TIFFs whose pyramid or OME metadata only
        tifffile sees), tifffile for other TIFFs, Pillow for other images.
    max_region_pixels
        Largest ``width * height`` one read may request.
    max_array_bytes
        Largest level ``np.asarray(level_array)`` will materialise.

    Returns
    -------
    Slide

    Raises
    ------
    SlideError
        The file is missing or no backend can open it; the message names the file
        and why each backend that was tried refused it (the first refusal is
        chained as ``__cause__``).
    """
    if mpp_override is not None:
        check_mpp_override(mpp_override)
    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS} or None, got {backend!r}")
    p = Path(path)
    if not p.exists():
        raise SlideError(p, "no such file")
    if not p.is_file():
        raise SlideError(p, "not a file")
    try:
        head = _head(p)
    except OSError as exc:
        raise SlideError(p, f"cannot read the file: {exc}") from exc

    vendor = _detect_openslide(p)
    is_tiff = head[:4] in _TIFF_MAGIC
    if backend is not None:
        order = [backend]
    elif vendor is not None:
        order = ["openslide", "tifffile"] if is_tiff else ["openslide"]
    else:
        order = ["tifffile"] if is_tiff else ["pillow"]

    causes: list[str] = []
    first_exc: BaseException | None = None
    for name in order:
        try:
            return Slide(
                p,
                _backend_factory(name, p, vendor),
                mpp_override=mpp_override,
                max_region_pixels=max_region_pixels,
                max_array_bytes=max_array_bytes,
            )
        except SlideError:
            raise
        except Exception as exc:
            label = {"openslide": f"OpenSlide ({vendor or 'not detected'})"}.get(name, name)
            causes.append(f"{label}: {exc}")
            first_exc = first_exc or exc
    if vendor is None and not is_tiff and backend is None:
        causes.insert(0, "not a format OpenSlide recognises nor a TIFF")
    raise SlideError(p, "; ".join(causes)) from first_exc


def _backend_factory(name: str, path: Path, vendor: str | None) -> BackendFactory:
    """A function that builds backend ``name`` for ``path``, given the Slide as sink."""

    def build(sink: _FailureSink) -> _Backend:
        if name == "pillow":
            return _PillowBackend(path)
        if name == "tifffile":
            return _TiffBackend(path, sink)
        import openslide

        handle = openslide.OpenSlide(str(path))
        try:
            if vendor == "generic-tiff" and _tifffile_sees_more(path, handle.level_count):
                try:
                    tiff = _TiffBackend(path, sink)
                except Exception as exc:
                    logger.debug("tifffile could not open %s (%s); using OpenSlide", path, exc)
                else:
                    handle.close()
                    return tiff
            return _OpenSlideBackend(path, handle, sink)
        except BaseException:
            handle.close()
            raise

    return build


def _tifffile_sees_more(path: Path, openslide_levels: int) -> bool:
    """True for a tiled TIFF that OpenSlide reads as generic-tiff but tifffile reads better.

    OpenSlide's generic-tiff takes levels from successive IFDs only: it misses
    SubIFD pyramids (OME-TIFF, ``tifffile`` output) and OME physical sizes, and it
    reads 16-bit samples by their top 8 bits (a 12-bit image comes out black).
    """
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            if tif.pages.first.dtype == np.uint16:  # libtiff's RGBA path keeps the top 8 bits
                return True
            return bool(tif.is_ome) or len(tif.series[0].levels) > openslide_levels
    except Exception:
        return False


def _tiff_readable(path: Path, *, vendor: str | None) -> bool:
    """Cheap TIFF check from the first IFD: codec available, sample layout supported."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        page = tif.pages.first
        if page.compression not in tifffile.TIFF.DECOMPRESSORS:
            return False
        if vendor is not None:
            return True
        return (
            page.dtype in (np.uint8, np.uint16)
            and int(page.photometric) in (0, 1, 2, 3, 6)
            and page.samplesperpixel in (1, 2, 3, 4)
        )


def can_open(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`open_slide` is likely to open ``path``; cheap, never raises.

    Looks at the file's magic bytes, asks ``OpenSlide.detect_format``, and for TIFF
    files checks that the first page's compression can be decoded. No pixel data is
    read. A True answer can still end in :class:`SlideError` for files that are
    damaged beyond their headers (for example a DICOM file OpenSlide detects but
    cannot open).
    """
    try:
        p = Path(path)
        if not p.is_file():
            return False
        head = _head(p)
        vendor = _detect_openslide(p)
        if head[:4] in _TIFF_MAGIC:
            return _tiff_readable(p, vendor=vendor)
        if vendor is not None:
            return True
        if head.startswith(_IMAGE_MAGIC) or head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            from PIL import Image

            with Image.open(p) as img:
                return img.size[0] > 0 and img.size[1] > 0
        return False
    except Exception:
        return False
