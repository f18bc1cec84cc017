"""The patch table as CSV (level-0 ``x, y, w, h``, attention, ``prob_<class>``): write and read back."""

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_histattn.atomic import atomic_write, describe_os_error
from napari_histattn.errors import AnnotationError, ExportError
from napari_histattn.io.export.geojson import _number
from napari_histattn.io.regions import Patch, PatchTable

CSV_BASE_COLUMNS = ("x", "y", "w", "h", "attention")
_PROB_PREFIX = "prob_"


# --------------------------------------------------------------------------- CSV


def _csv_number(value: float) -> str:
    if not math.isfinite(value):
        return ""
    number = _number(value)
    return str(number) if isinstance(number, int) else repr(number)


def _as_patch(item: Patch | Mapping[str, Any]) -> Patch:
    if isinstance(item, Patch):
        return item
    if isinstance(item, Mapping):
        probs = dict(item.get("probs") or {})
        for key, value in item.items():
            if str(key).startswith(_PROB_PREFIX):
                probs[str(key)[len(_PROB_PREFIX) :]] = value
        return Patch((item["x"], item["y"]), (item["w"], item["h"]), item["attention"], probs=probs)
    raise TypeError(f"expected a Patch or a mapping, got {type(item).__name__}")


def write_patches_csv(
    path: str | os.PathLike[str],
    patches: Iterable[Patch | Mapping[str, Any]],
    *,
    class_names: Sequence[str] | None = None,
    unreadable: Sequence[bool] | None = None,
) -> Path:
    """Write patches as CSV with header ``x,y,w,h,attention,prob_<class>...``, atomically.

    Parameters
    ----------
    path
        Target file.
    patches
        :class:`~napari_histattn.io.regions.Patch` objects or mappings with keys
        ``x, y, w, h, attention`` (level-0 pixels) and ``probs`` (class -> probability)
        or ``prob_<class>`` keys.
    class_names
        Order of the probability columns; by default the classes in order of first
        appearance. A class missing from a patch gives an empty cell.
    unreadable
        One flag per patch: it overlaps a tile that could not be decoded (its pixels
        were grey placeholders). Given, it adds an ``unreadable`` column (1 or 0).

    Returns
    -------
    pathlib.Path
        The file written. Numbers are written exactly (integers without a decimal
        point, other floats by ``repr``), so reading gives back the same values.

    Raises
    ------
    ExportError
        The file could not be written, or a patch is malformed.
    """
    target = Path(path)
    rows: Sequence[Patch]
    if isinstance(patches, PatchTable):
        rows = patches  # columns: each row's Patch is made as it is written
    else:
        try:
            rows = [_as_patch(p) for p in patches]
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(target, f"malformed patch ({type(exc).__name__}: {exc})") from exc
    if class_names is not None:
        names = [str(n) for n in class_names]
    elif isinstance(rows, PatchTable):
        names = list(rows.class_names)
    else:
        seen: dict[str, None] = {}
        for patch in rows:
            seen.update(dict.fromkeys(patch.probs))
        names = list(seen)
    flags = None if unreadable is None else [bool(f) for f in unreadable]
    if flags is not None and len(flags) != len(rows):
        raise ExportError(target, f"{len(flags)} unreadable flags for {len(rows)} patches")
    extra = [] if flags is None else ["unreadable"]
    with atomic_write(target, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*CSV_BASE_COLUMNS, *(f"{_PROB_PREFIX}{n}" for n in names), *extra])
        for i, patch in enumerate(rows):
            writer.writerow(
                [
                    _csv_number(patch.l0_xy[0]),
                    _csv_number(patch.l0_xy[1]),
                    _csv_number(patch.size_l0_wh[0]),
                    _csv_number(patch.size_l0_wh[1]),
                    _csv_number(patch.attention),
                    *(_csv_number(patch.probs[n]) if n in patch.probs else "" for n in names),
                    *([] if flags is None else [int(flags[i])]),
                ]
            )
    return target


def read_patches_csv(path: str | os.PathLike[str]) -> list[Patch]:
    """Read a CSV written by :func:`write_patches_csv`.

    The first five columns must be ``x, y, w, h, attention``; ``prob_<class>`` columns
    give the probabilities, other columns are ignored. An empty attention cell reads as
    NaN; an empty probability cell leaves that class out of the patch.

    Raises
    ------
    AnnotationError
        The file cannot be read, has the wrong header, or a cell is not a number.
    """
    source = Path(path)
    try:
        with open(source, encoding="utf-8-sig", newline="") as handle:
            table = list(csv.reader(handle))
    except OSError as exc:
        raise AnnotationError(source, describe_os_error(exc)) from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AnnotationError(source, f"not a readable CSV file ({exc})") from exc
    if not table:
        raise AnnotationError(source, "empty file (no header)")
    header = [h.strip() for h in table[0]]
    if tuple(h.lower() for h in header[: len(CSV_BASE_COLUMNS)]) != CSV_BASE_COLUMNS:
        raise AnnotationError(
            source, f"header must start with {','.join(CSV_BASE_COLUMNS)}, got {','.join(header)}"
        )
    prob_columns = [
        (i, h[len(_PROB_PREFIX) :]) for i, h in enumerate(header) if h.startswith(_PROB_PREFIX)
    ]
    patches: list[Patch] = []
    for line, row in enumerate(table[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise AnnotationError(
                source, f"line {line} has {len(row)} cells, the header has {len(header)}"
            )
        try:
            x, y, w, h = (float(row[i]) for i in range(4))
            attention = float(row[4]) if row[4].strip() else math.nan
            probs = {name: float(row[i]) for i, name in prob_columns if row[i].strip()}
        except ValueError as exc:
            raise AnnotationError(source, f"line {line}: {exc}") from exc
        patches.append(Patch((x, y), (w, h), attention, probs))
    return patches
