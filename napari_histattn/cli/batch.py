"""``histattn batch``: classify many slides with one checkpoint, here or on a Dask cluster.

``SLIDES`` is a folder (every whole-slide image in it, not recursive:
``.svs .tif .tiff .ndpi .vms .vmu .scn .mrxs .svslide .bif``) or a CSV whose
``slide`` (or ``path``) column, else its first column, lists slide files
(relative paths are relative to the CSV; any format ``histattn classify``
opens). Each slide's outputs go to ``DIR/<slide stem>/`` as with ``histattn
classify``; ``DIR/batch_summary.csv`` and ``batch_summary.json`` have one row per
slide and are written atomically at the end.

Slides run in parallel on ``dask.distributed``: by default a local cluster of
worker processes sized to the machine (one per core, one slide at a time each;
one slide or one core runs in this process); ``--dask-workers N`` sets the
workers (0: in this process), ``--scheduler tcp://HOST:8786`` uses a running
cluster, for example one started on Slurm with ``dask-jobqueue`` (README). Every
worker opens its own slides and loads the checkpoint once, so the paths must be
visible to the workers.

Resumable: a slide whose outputs in ``DIR/<stem>/`` were finished by a batch
with the same slide file, checkpoint and options is not run again (its row says
``earlier run``); an unfinished folder is redone; ``--redo`` redoes all. A slide
that fails is reported and the others continue (a worker killed during a slide
makes Dask retry it on another worker); the exit code is 1 if any failed. A
slide whose result is not usable (too many undecodable tiles, see
:func:`~napari_histattn.inference.result.ClassificationResult.unreliable_reason`)
has its outputs written, status ``unreliable`` and no predicted class; the exit
code is then 3 unless a slide failed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import (
    CLUSTER_ARGS,
    add_cluster_arguments,
    add_command,
    cluster_spec,
)
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

#: Written into a slide's output folder after its outputs: what made them.
REQUEST_FILE = "batch_request.json"

#: Options that change a slide's outputs (device, batch size and threads do not; bfloat16
#: encoders do, slightly).
_RESULT_OPTIONS = (
    "seed",
    "n_patches",
    "patch_size",
    "param",
    "features",
    "encoder_weights",
    "top_k",
    "threshold",
    "crops",
    "allow_upsample",
    "amp",
    "mpp",
    "explain",
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
    add_cluster_arguments(parser)
    parser.add_argument(
        "--redo", action="store_true", help="classify every slide again, finished or not"
    )
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


def folder_names(slides: list[Path]) -> list[str]:
    """One output folder name per slide: its stem, made unique with ``-2``, ``-3``..."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for slide in slides:
        stem = slide.stem or "slide"
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        names.append(stem if count == 1 else f"{stem}-{count}")
    return names


@dataclass(frozen=True)
class SlideJob:
    """One slide of a batch: what a worker needs (plain, picklable values)."""

    slide: Path
    out_dir: Path
    checkpoint: Path
    checkpoint_sha256: str
    options: dict[str, Any]
    redo: bool = False

    def request(self) -> dict[str, Any]:
        """What made this slide's outputs: the slide file, the checkpoint, the options."""
        try:
            stat = self.slide.stat()
            identity: dict[str, Any] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        except OSError:
            identity = {}
        options = {k: self.options.get(k) for k in _RESULT_OPTIONS}
        return json.loads(
            json.dumps(
                {
                    "slide": str(self.slide.resolve()),
                    **identity,
                    "checkpoint_sha256": self.checkpoint_sha256,
                    "options": options,
                },
                default=str,
            )
        )


_CHECKPOINTS: dict[tuple[str, str], Any] = {}


def _checkpoint(job: SlideJob) -> Any:
    """The job's checkpoint, loaded once per process."""
    from napari_histattn.models.checkpoint import load

    key = (str(job.checkpoint), job.checkpoint_sha256)
    if key not in _CHECKPOINTS:
        _CHECKPOINTS[key] = load(job.checkpoint, device="cpu")
    return _CHECKPOINTS[key]


def _earlier_row(job: SlideJob) -> dict[str, Any] | None:
    """The row of outputs a batch already finished for this request, else None."""
    try:
        request = json.loads((job.out_dir / REQUEST_FILE).read_text(encoding="utf-8"))
        summary = json.loads((job.out_dir / "summary.json").read_text(encoding="utf-8"))
        probs = {str(name): float(p) for name, p in summary["probabilities"].items()}
        unreliable = summary.get("unreliable")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if request != job.request():
        return None
    row: dict[str, Any] = {f"prob_{n}": p for n, p in probs.items()}
    if unreliable:
        row.update(status="unreliable", predicted_class="", error=str(unreliable))
    else:
        row.update(status="ok", predicted_class=summary.get("predicted_class", ""), error="")
    return row


def classify_job(job: SlideJob) -> dict[str, Any]:
    """Classify one slide into its folder (a cohort task); never raises for a bad slide."""
    from napari_histattn.atomic import atomic_write
    from napari_histattn.inference.cohort import worker_torch_threads

    worker_torch_threads()
    started = time.perf_counter()
    row: dict[str, Any] = {"slide": str(job.slide), "out_dir": str(job.out_dir), "run": "this run"}
    earlier = None if job.redo else _earlier_row(job)
    if earlier is not None:
        return {**row, **earlier, "run": "earlier run", "seconds": "0.00"}
    try:
        args = argparse.Namespace(**job.options)
        result, _ = classify_to_folder(job.slide, _checkpoint(job), job.out_dir, args)
        with atomic_write(job.out_dir / REQUEST_FILE) as handle:
            json.dump(job.request(), handle, indent=1)
    except Exception as exc:  # one bad slide must not stop the batch
        row.update(failed_row(job, exc))
    else:
        row.update({f"prob_{n}": p for n, p in result.probabilities_by_class.items()})
        reason = result.unreliable_reason()
        if reason is None:
            row.update(status="ok", predicted_class=result.predicted_class, error="")
        else:  # written, but not a call
            row.update(status="unreliable", predicted_class="", error=reason)
    row["seconds"] = f"{time.perf_counter() - started:.2f}"
    return row


def failed_row(job: SlideJob, exc: BaseException) -> dict[str, Any]:
    """The row of a slide whose run raised, or whose worker died."""
    message = str(exc) or type(exc).__name__
    if type(exc).__name__ == "KilledWorker":
        message = f"the worker died (killed or out of memory) each time it ran this slide: {exc}"
    return {
        "slide": str(job.slide),
        "status": "failed",
        "error": f"{type(exc).__name__}: {message}",
        "out_dir": "",
        "run": "this run",
    }


def _write_summary(
    out: Path, rows: list[dict[str, Any]], class_names: list[str], where: str
) -> Path:
    from napari_histattn.atomic import atomic_write

    columns = [
        "slide",
        "status",
        "predicted_class",
        *(f"prob_{c}" for c in class_names),
        "out_dir",
        "run",
        "seconds",
        "error",
    ]
    path = out / "batch_summary.csv"
    write_rows(path, rows, columns)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    with atomic_write(out / "batch_summary.json") as handle:
        json.dump(
            {"ran_on": where, "counts": counts, "slides": rows}, handle, indent=1, default=str
        )
    return path


def write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A summary CSV with ``columns``, written atomically."""
    from napari_histattn.atomic import atomic_write

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path, "w", newline="") as handle:
        handle.write(buffer.getvalue())


def run(args: argparse.Namespace) -> int:
    from napari_histattn.inference.cohort import run_cohort, runs_here
    from napari_histattn.models.checkpoint import load

    _check_args(args)
    slides = list_slides(args.slides)
    spec = cluster_spec(args)
    checkpoint = load(args.checkpoint, device="cpu")  # a bad checkpoint fails before any slide
    args.out.mkdir(parents=True, exist_ok=True)
    options = {
        k: v
        for k, v in vars(args).items()
        if k not in ("func", "slides", "out", "checkpoint", "redo", *CLUSTER_ARGS)
    }
    # Stage bars per slide only here; a worker's would go to its log.
    options["quiet"] = args.quiet or not runs_here(len(slides), spec)
    # Absolute paths: a worker of a remote cluster does not share this process's folder.
    for name in ("features", "encoder_weights"):
        if options.get(name) is not None:
            options[name] = Path(options[name]).absolute()
    jobs = [
        SlideJob(
            slide.absolute(),
            (args.out / name).absolute(),
            args.checkpoint.absolute(),
            checkpoint.sha256,
            options,
            args.redo,
        )
        for slide, name in zip(slides, folder_names(slides), strict=True)
    ]
    _CHECKPOINTS[(str(args.checkpoint.absolute()), checkpoint.sha256)] = checkpoint  # runs here

    def report(index: int, row: dict[str, Any]) -> None:
        name = Path(row["slide"]).name
        if row["status"] == "failed":
            print(f"FAILED {row['slide']}: {row['error']}", file=sys.stderr)
        elif row["status"] == "unreliable":
            print(f"UNRELIABLE {row['slide']}: {row['error']}", file=sys.stderr)
        else:
            done = " (earlier run)" if row.get("run") == "earlier run" else ""
            print(f"{name}: {row['predicted_class']}{done}")

    rows = run_cohort(
        classify_job,
        jobs,
        [job.out_dir.name for job in jobs],
        spec,
        failed_row,
        on_row=report,
        quiet=args.quiet,
    )
    summary = _write_summary(args.out, rows, list(checkpoint.class_names), spec.describe())
    failed = sum(row["status"] == "failed" for row in rows)
    unreliable = sum(row["status"] == "unreliable" for row in rows)
    done = len(slides) - failed - unreliable
    print(f"{done} of {len(slides)} slides classified; summary in {summary}")
    if unreliable:
        print(f"{unreliable} result(s) not usable: damaged slide files", file=sys.stderr)
    return 1 if failed else EXIT_UNRELIABLE if unreliable else 0
