"""``histattn features``: encode every tissue tile of each slide once and cache the features.

``SLIDES`` is a slide, a folder of slides or a CSV listing them (as for
``histattn batch``). Each slide's features go to ``DIR/<slide stem>.h5`` (HDF5:
``features``, level-0 ``coords``, the encoder and its weights' SHA-256; see
``napari_histattn.inference.features``). The run is resumable: a slide whose
file is complete and was made from the same slide file, encoder, weights and
tissue settings is skipped; a torn file is redone. A slide that fails is
reported and skipped; ``DIR/features_summary.csv`` lists every slide, and the
exit code is 1 if any failed. Slides run on Dask as ``histattn batch`` runs them
(``--dask-workers``, ``--scheduler``; each worker makes the encoder once).

Pretrained weights are local files: ``--encoder uni --encoder-weights
~/models/uni/pytorch_model.safetensors`` (``histattn encoders`` lists the
encoders and where their weights come from). Without ``--encoder-weights`` a
pretrained encoder is looked for in ``$HISTATTN_ENCODER_WEIGHTS`` and the local
Hugging Face cache; ``--random-weights`` uses random weights (for timing only).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import add_cluster_arguments, add_command, cluster_spec


def register(subparsers: Any) -> None:
    """Add the ``features`` subcommand."""
    parser = add_command(
        subparsers,
        "features",
        "encode the tissue tiles of slides once and cache the features",
        __doc__,
    )
    parser.add_argument("slides", type=Path, metavar="SLIDES", help="a slide, a folder or a CSV")
    parser.add_argument("--encoder", required=True, metavar="NAME", help="see `histattn encoders`")
    parser.add_argument(
        "--encoder-weights", type=Path, metavar="PATH", help=".safetensors or folder"
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="random weights (speed measurements only)"
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        metavar="PX",
        help="tile side for this project's small CNNs (tiny, small_cnn), which read any size: "
        "a larger field of view (default: their own 32 / 28 px)",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:<i> or mps")
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="tiles per batch")
    parser.add_argument(
        "--workers", type=int, default=2, metavar="N", help="reader threads (default 2)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cluster_arguments(parser)
    parser.set_defaults(func=run)


def _slides(source: Path) -> list[Path]:
    """One slide file, or the slides of a folder or CSV (as ``histattn batch`` lists them)."""
    from napari_histattn.cli.batch import list_slides

    if source.is_file() and source.suffix.lower() != ".csv":
        return [source]
    return list_slides(source)


@dataclass(frozen=True)
class FeatureJob:
    """One slide of ``histattn features``: what a worker needs (plain, picklable values)."""

    slide: Path
    target: Path
    encoder: str
    encoder_weights: Path | None
    random_weights: bool
    batch_size: int
    device: str
    reader_threads: int
    progress: bool = False
    tile_size: int | None = None


_ENCODERS: dict[tuple[str, str | None, bool, int | None], Any] = {}


def _encoder(job: FeatureJob) -> Any:
    """The job's encoder, made (and its weights read) once per process."""
    from napari_histattn.models.encoders import create_encoder

    weights = None if job.encoder_weights is None else str(job.encoder_weights)
    key = (job.encoder, weights, job.random_weights, job.tile_size)
    if key not in _ENCODERS:
        pretrained = False if job.random_weights else None
        _ENCODERS[key] = create_encoder(
            job.encoder, job.encoder_weights, pretrained=pretrained, input_size=job.tile_size
        )
    return _ENCODERS[key]


def features_job(job: FeatureJob) -> dict[str, Any]:
    """Encode one slide's tissue tiles into its feature file (a cohort task)."""
    from napari_histattn.inference.cohort import worker_torch_threads
    from napari_histattn.inference.features import extract_features, is_done
    from napari_histattn.io.slide import open_slide
    from napari_histattn.progress import run_with_tqdm

    worker_torch_threads()
    started = time.perf_counter()
    row: dict[str, Any] = {"slide": str(job.slide), "features": str(job.target)}
    try:
        encoder = _encoder(job)
        with open_slide(job.slide) as slide:
            if is_done(job.target, slide, encoder.describe()):
                row.update(status="skipped (done)", n_tiles="", error="")
            else:
                made = run_with_tqdm(
                    extract_features(
                        slide,
                        encoder,
                        job.target,
                        batch_size=job.batch_size,
                        device=job.device,
                        workers=job.reader_threads,
                    ),
                    disable=not job.progress,
                )
                row.update(status="ok", n_tiles=len(made), error="")
    except Exception as exc:  # one bad slide must not stop the others
        row.update(failed_features_row(job, exc))
    row["seconds"] = f"{time.perf_counter() - started:.2f}"
    return row


def failed_features_row(job: FeatureJob, exc: BaseException) -> dict[str, Any]:
    """The row of a slide whose encoding raised, or whose worker died."""
    message = str(exc) or type(exc).__name__
    return {
        "slide": str(job.slide),
        "features": str(job.target),
        "status": "failed",
        "n_tiles": "",
        "error": f"{type(exc).__name__}: {message}",
    }


def run(args: argparse.Namespace) -> int:
    from napari_histattn.cli.batch import write_rows
    from napari_histattn.errors import HistattnError
    from napari_histattn.inference.cohort import run_cohort, runs_here
    from napari_histattn.inference.features import feature_path

    if args.batch_size < 1 or args.workers < 1:
        raise HistattnError("--batch-size and --workers must be at least 1")
    if args.random_weights and args.encoder_weights is not None:
        raise HistattnError("give --encoder-weights or --random-weights, not both")
    from napari_histattn.models.encoders import encoder_spec, sized_spec

    try:  # a wrong name or tile size is told before any slide is read
        sized_spec(encoder_spec(args.encoder), args.tile_size)
    except ValueError as exc:
        raise HistattnError(str(exc)) from exc
    slides = _slides(args.slides)
    spec = cluster_spec(args)
    tile_bars = runs_here(len(slides), spec) and not args.quiet  # a worker's bars go to its log
    jobs = [
        FeatureJob(  # absolute paths: a remote worker does not share this folder
            slide.absolute(),
            feature_path(args.out, slide).absolute(),
            args.encoder,
            None if args.encoder_weights is None else args.encoder_weights.absolute(),
            args.random_weights,
            args.batch_size,
            args.device,
            args.workers,
            tile_bars,
            tile_size=args.tile_size,
        )
        for slide in slides
    ]
    encoder = _encoder(jobs[0])  # missing weights fail here, before any slide
    if encoder.weights_path is None:
        print(f"note: encoder {args.encoder!r} has random weights", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)

    def report(index: int, row: dict[str, Any]) -> None:
        if row["status"] == "failed":
            print(f"FAILED {row['slide']}: {row['error']}", file=sys.stderr)
        else:
            print(f"{Path(row['slide']).name}: {row['status']}", file=sys.stderr)

    rows = run_cohort(
        features_job,
        jobs,
        [job.target.stem for job in jobs],
        spec,
        failed_features_row,
        on_row=report,
        quiet=args.quiet,
    )
    failed = sum(row["status"] == "failed" for row in rows)
    summary = args.out / "features_summary.csv"
    write_rows(summary, rows, ["slide", "status", "n_tiles", "features", "seconds", "error"])
    print(f"{len(slides) - failed} of {len(slides)} slides have features; summary in {summary}")
    return 1 if failed else 0
