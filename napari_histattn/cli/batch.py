"""``histattn batch``: classify many slides with one checkpoint.

``SLIDES`` is a folder (every whole-slide image in it, not recursive:
``.svs .tif .tiff .ndpi .vms .vmu .scn .mrxs .svslide .bif``) or a CSV whose
``slide`` (or ``path``) column, else its first column, lists slide files
(relative paths are relative to the CSV; any format ``histattn classify``
opens). Each slide's outputs go to ``DIR/<slide stem>/`` as with ``histattn
classify``, and ``DIR/batch_summary.csv`` has one row per slide. A slide that
fails is reported and skipped; the others continue, and the exit code is 1 if
any failed. A slide whose result is not usable (too many undecodable tiles, see
:func:`~napari_histattn.inference.result.ClassificationResult.unreliable_reason`)
has its outputs written, status ``unreliable`` and no predicted class; the exit
code is then 3 unless a slide failed.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import add_command
from napari_histattn.cli.classify import (
    EXIT_UNRELIABLE,
    _check_args,
    add_classify_arguments,
    classify_to_folder,
)

#: Extensions picked up from a folder (plain images and DICOM files only through a CSV).
SLIDE_SUFFIXES = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif"}
)


def register(subparsers: Any) -> None:
    """Add the ``batch`` subcommand."""
    parser = add_command(
        subparsers,
        "batch",
        "classify every slide of a folder or CSV into one output folder per slide",
        __doc__,
    )
    parser.add_argument(
        "slides",
        type=Path,
        metavar="SLIDES_DIR_OR_CSV",
        help="folder of slides or CSV listing them",
    )
    add_classify_arguments(parser)
    parser.set_defaults(func=run)


def list_slides(source: Path) -> list[Path]:
    """The slides a folder holds or a CSV lists, in order (folders: sorted by name).

    Raises
    ------
    HistattnError
        ``source`` is missing, neither a folder nor a CSV, or lists nothing.
    """
    from napari_histattn.errors import AnnotationError, HistattnError

    if source.is_dir():
        slides = sorted(
            p for p in source.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES
        )
        if not slides:
            raise HistattnError(
                f"no slides in {source} (looked for {', '.join(sorted(SLIDE_SUFFIXES))})"
            )
        return slides
    if not source.is_file():
        raise HistattnError(f"{source}: no such folder or CSV file")
    try:
        rows = [r for r in csv.reader(source.read_text(encoding="utf-8-sig").splitlines()) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AnnotationError(source, f"not a readable CSV file ({exc})") from exc
    if not rows:
        raise AnnotationError(source, "the CSV lists no slides")
    header = [cell.strip().lower() for cell in rows[0]]
    named = next((header.index(n) for n in ("slide", "path") if n in header), None)
    column = 0 if named is None else named
    first_line = 1 if named is None else 2
    if named is not None:
        rows = rows[1:]
    slides = []
    for line, row in enumerate(rows, start=first_line):
        cell = row[column].strip() if column < len(row) else ""
        if not cell:
            raise AnnotationError(source, f"row {line} names no slide")
        path = Path(cell).expanduser()
        slides.append(path if path.is_absolute() else source.parent / path)
    if not slides:
        raise AnnotationError(source, "the CSV lists no slides")
    return slides


def _folder_names(slides: list[Path]) -> list[str]:
    """One output folder name per slide: its stem, made unique with ``-2``, ``-3``..."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for slide in slides:
        stem = slide.stem or "slide"
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        names.append(stem if count == 1 else f"{stem}-{count}")
    return names


def _write_summary(path: Path, rows: list[dict[str, Any]], class_names: list[str]) -> None:
    columns = [
        "slide",
        "status",
        "predicted_class",
        *(f"prob_{c}" for c in class_names),
        "out_dir",
        "seconds",
        "error",
    ]
    _write_rows(path, rows, columns)


def _write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A summary CSV with ``columns``, written atomically."""
    from napari_histattn.atomic import atomic_write

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path, "w", newline="") as handle:
        handle.write(buffer.getvalue())


def run(args: argparse.Namespace) -> int:
    from napari_histattn.models.checkpoint import load

    _check_args(args)
    slides = list_slides(args.slides)
    checkpoint = load(args.checkpoint, device="cpu")  # once; classify moves it to the device
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    failed = unreliable = 0
    for index, (slide, name) in enumerate(zip(slides, _folder_names(slides), strict=True), 1):
        out_dir = args.out / name
        print(f"[{index}/{len(slides)}] {slide}", file=sys.stderr)
        started = time.perf_counter()
        row: dict[str, Any] = {"slide": str(slide), "out_dir": str(out_dir)}
        try:
            result, _ = classify_to_folder(slide, checkpoint, out_dir, args)
        except Exception as exc:  # one bad slide must not stop the batch
            failed += 1
            message = str(exc) or type(exc).__name__
            print(f"FAILED {slide}: {message}", file=sys.stderr)
            row.update(status="failed", error=f"{type(exc).__name__}: {message}", out_dir="")
        else:
            row.update({f"prob_{n}": p for n, p in result.probabilities_by_class.items()})
            reason = result.unreliable_reason()
            if reason is None:
                row.update(status="ok", predicted_class=result.predicted_class, error="")
                print(f"{slide.name}: {result.predicted_class}")
            else:  # written, but not a call
                unreliable += 1
                row.update(status="unreliable", predicted_class="", error=reason)
                print(f"UNRELIABLE {slide}: {reason}", file=sys.stderr)
        row["seconds"] = f"{time.perf_counter() - started:.2f}"
        rows.append(row)
    summary = args.out / "batch_summary.csv"
    _write_summary(summary, rows, list(checkpoint.class_names))
    done = len(slides) - failed - unreliable
    print(f"{done} of {len(slides)} slides classified; summary in {summary}")
    if unreliable:
        print(f"{unreliable} result(s) not usable: damaged slide files", file=sys.stderr)
    return 1 if failed else EXIT_UNRELIABLE if unreliable else 0
