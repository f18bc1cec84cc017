"""napari reader for whole-slide images (npe2 command ``napari-histattn.get_reader``).

:func:`napari_get_reader` only does cheap checks (suffix and
:func:`napari_histattn.io.slide.can_open`, which never raises) and returns
``None`` for anything it cannot read, so napari moves on to other readers. The
function it returns opens the slide for real; a slide that passed the cheap
check but still fails raises :class:`~napari_histattn.errors.SlideError`, whose
message names the file and the cause, and napari shows it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_histattn._napari.layers import LayerDataTuple, _stem, slide_layer_data
from napari_histattn.errors import SlideError

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


def _single_path_ok(path: Any) -> bool:
    """Cheap, never-raising check that one path is a slide file we can open."""
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
        ``read_slides(path) -> list of layer data tuples``, or ``None`` for a
        directory, a non-slide file, or anything that fails the cheap checks.
    """
    if isinstance(path, list | tuple):
        if not path or not all(_single_path_ok(p) for p in path):
            return None
        return read_slides
    if not _single_path_ok(path):
        return None
    return read_slides


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
