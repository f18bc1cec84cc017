"""napari reader for whole-slide images (npe2 command ``napari-histattn.get_reader``).

:func:`napari_get_reader` never raises: it returns ``None`` for anything it
cannot read, so napari moves on to other readers. It first makes cheap checks
(suffix, :func:`napari_histattn.io.slide.can_open`), then opens the slide and
decodes one tile, because some bad files pass every header check. The function
it returns builds the layers from that already-open slide. Opening a slide
explicitly (:func:`read_slides`) raises
:class:`~napari_histattn.errors.SlideError`, whose message names the file and
the cause.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_histattn._napari.layers import LayerDataTuple, _stem, slide_layer_data
from napari_histattn.errors import SlideError

if TYPE_CHECKING:
    from napari_histattn.io.slide import Slide

PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]
ReaderFunction = Callable[[PathOrPaths], list[LayerDataTuple]]

# Names the manifest routes to us (kept in step with napari.yaml's
# filename_patterns); `.ome.tif(f)` ends in `.tif(f)`.
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".png",
    ".jpg",
    ".jpeg",
)


def _cheap_ok(path: Any) -> bool:
    """Cheap, never-raising check: a slide-like name, a file, and ``can_open``."""
    try:
        if not isinstance(path, str | os.PathLike):
            return False
        p = Path(path)
        if not p.name.lower().endswith(SLIDE_SUFFIXES) or not p.is_file():
            return False
        from napari_histattn.io.slide import can_open

        return bool(can_open(p))
    except Exception:  # the reader contract: never raise to napari
        return False


def _open_and_probe(path: str | os.PathLike) -> Slide | None:
    """Open a slide that passed the cheap checks and decode one tile, or return ``None``.

    Headers alone miss files that OpenSlide detects but cannot open (a DICOM
    frame set without ImageType) and files whose tiles cannot be decoded at all
    (``unreadable.svs``); napari should try other readers for those. Opening
    parses headers only and the probe decodes a single tile of the smallest
    stored level, so this stays cheap on a 100k^2 slide.
    """
    from napari_histattn.io.slide import open_slide

    try:
        slide = open_slide(Path(path))
    except Exception:
        return None
    try:
        stored = slide.level_count - len(getattr(slide, "computed_levels", ()))
        level = max(stored - 1, 0)
        level_w, level_h = slide.level_dimensions[level]
        tile_w, tile_h = slide.level_tile_sizes[level]
        size_wh = (max(1, min(tile_w, level_w, 512)), max(1, min(tile_h, level_h, 512)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failed probe is our answer, not news
            slide.read_level_region(level, (0, 0), size_wh)
        if slide.failed_tiles:
            slide.close()
            return None
        return slide
    except Exception:
        slide.close()
        return None


def _as_paths(path: PathOrPaths) -> list[str | os.PathLike[Any]]:
    """napari's one path or list of paths, as a list."""
    if isinstance(path, list | tuple):
        return list(path)
    return [path]  # type: ignore[list-item]  # a str or PathLike, not a Sequence of them


def napari_get_reader(path: PathOrPaths) -> ReaderFunction | None:
    """Return a function that reads ``path`` into layers, or ``None`` if we cannot.

    Parameters
    ----------
    path
        One file path, or a list of them (each becomes its own layer; the list
        is refused unless every file is readable).

    Returns
    -------
    callable or None
        ``read(path) -> list of layer data tuples``, or ``None`` for a
        directory, a non-slide file, or a slide that cannot be opened or whose
        first tile cannot be decoded. Never raises.
    """
    paths = _as_paths(path)
    if not paths or not all(_cheap_ok(p) for p in paths):
        return None
    slides: list[Slide] = []
    for p in paths:
        slide = _open_and_probe(p)
        if slide is None:
            for opened in slides:
                opened.close()
            return None
        slides.append(slide)
    opened_for = [str(Path(p)) for p in paths]

    def read(path: PathOrPaths) -> list[LayerDataTuple]:
        if [str(Path(p)) for p in _as_paths(path)] == opened_for:
            return [slide_layer_data(s) for s in slides]
        return read_slides(path)

    return read


def read_slides(path: PathOrPaths) -> list[LayerDataTuple]:
    """Open one or several slides as RGB image layers (multiscale when pyramidal).

    Parameters
    ----------
    path
        A slide path or a list of them.

    Returns
    -------
    list of tuple
        One ``(data, kwargs, "image")`` per slide, as built by
        :func:`napari_histattn._napari.layers.slide_layer_data`.

    Raises
    ------
    SlideError
        A file cannot be opened; the message names it and the cause.
    """
    from napari_histattn.io.slide import open_slide

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    return [slide_layer_data(open_slide(Path(p))) for p in paths]


def associated_image_layers(
    path: str | os.PathLike, names: Sequence[str] | None = None
) -> list[LayerDataTuple]:
    """Associated images of a slide (label, macro, thumbnail) as plain RGB layers.

    They are not added when a slide is opened; their names are in the slide
    layer's ``metadata["associated_images"]``. Add them with
    ``for data, kw, kind in associated_image_layers(path): viewer.add_image(data, **kw)``.

    Parameters
    ----------
    path
        The slide file.
    names
        Which images (default: all the slide has).

    Returns
    -------
    list of tuple
        ``(rgb_array, kwargs, "image")`` per image, named ``"<stem> <name>"``,
        in pixel units (associated images have no physical scale).
    """
    from napari_histattn.io.slide import open_slide

    slide = open_slide(Path(path))
    try:
        available = list(slide.associated_image_names)
        wanted = available if names is None else list(names)
        missing = [n for n in wanted if n not in available]
        if missing:
            raise SlideError(
                path,
                f"no associated image {', '.join(map(repr, missing))}; "
                f"it has {', '.join(map(repr, available)) or 'none'}",
            )
        stem = _stem(Path(path))
        return [
            (
                slide.associated_image(n),
                {"name": f"{stem} {n}", "rgb": True, "contrast_limits": [0, 255]},
                "image",
            )
            for n in wanted
        ]
    finally:
        slide.close()
