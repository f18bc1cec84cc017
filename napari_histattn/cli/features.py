"""``histattn features``: encode every tissue tile of each slide once and cache the features.

``SLIDES`` is a slide, a folder of slides or a CSV listing them (as for
``histattn batch``). Each slide's features go to ``DIR/<slide stem>.h5`` (HDF5:
``features``, level-0 ``coords``, the encoder and its weights' SHA-256; see
``napari_histattn.inference.features``). The run is resumable: a slide whose
file is complete and was made from the same slide file, encoder, weights and
tissue settings is skipped; a torn file is redone. A slide that fails is
reported and skipped; ``DIR/features_summary.csv`` lists every slide, and the
exit code is 1 if any failed.

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
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import add_command


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
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:<i> or mps")
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="tiles per batch")
    parser.add_argument(
        "--workers", type=int, default=2, metavar="N", help="reader threads (default 2)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _slides(source: Path) -> list[Path]:
    """One slide file, or the slides of a folder or CSV (as ``histattn batch`` lists them)."""
    from napari_histattn.cli.batch import list_slides

    if source.is_file() and source.suffix.lower() != ".csv":
        return [source]
    return list_slides(source)


def run(args: argparse.Namespace) -> int:
    from napari_histattn.cli.batch import _write_rows
    from napari_histattn.errors import HistattnError
    from napari_histattn.inference.features import extract_features, feature_path, is_done
    from napari_histattn.io.slide import open_slide
    from napari_histattn.models.encoders import create_encoder
    from napari_histattn.progress import run_with_tqdm

    if args.batch_size < 1 or args.workers < 1:
        raise HistattnError("--batch-size and --workers must be at least 1")
    if args.random_weights and args.encoder_weights is not None:
        raise HistattnError("give --encoder-weights or --random-weights, not both")
    slides = _slides(args.slides)
    encoder = create_encoder(
        args.encoder, args.encoder_weights, pretrained=False if args.random_weights else None
    )
    if encoder.weights_path is None:
        print(f"note: encoder {args.encoder!r} has random weights", file=sys.stderr)
    described = encoder.describe()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    failed = 0
    for index, slide_path in enumerate(slides, 1):
        target = feature_path(args.out, slide_path)
        started = time.perf_counter()
        row: dict[str, Any] = {"slide": str(slide_path), "features": str(target)}
        try:
            with open_slide(slide_path) as slide:
                if is_done(target, slide, described):
                    row.update(status="skipped (done)", n_tiles="", error="")
                    print(
                        f"[{index}/{len(slides)}] {slide_path.name}: already done", file=sys.stderr
                    )
                else:
                    print(f"[{index}/{len(slides)}] {slide_path}", file=sys.stderr)
                    made = run_with_tqdm(
                        extract_features(
                            slide,
                            encoder,
                            target,
                            batch_size=args.batch_size,
                            device=args.device,
                            workers=args.workers,
                        ),
                        disable=args.quiet,
                    )
                    row.update(status="ok", n_tiles=len(made), error="")
        except Exception as exc:  # one bad slide must not stop the others
            failed += 1
            message = str(exc) or type(exc).__name__
            print(f"FAILED {slide_path}: {message}", file=sys.stderr)
            row.update(status="failed", n_tiles="", error=f"{type(exc).__name__}: {message}")
        row["seconds"] = f"{time.perf_counter() - started:.2f}"
        rows.append(row)
    summary = args.out / "features_summary.csv"
    _write_rows(summary, rows, ["slide", "status", "n_tiles", "features", "seconds", "error"])
    print(f"{len(slides) - failed} of {len(slides)} slides have features; summary in {summary}")
    return 1 if failed else 0
