"""``histattn classify``: classify one slide with a checkpoint and write the heatmap and regions.

Writes into ``--out``: ``heatmap.png`` (the attention over a thumbnail),
``attention.npy`` (the raw map; its geometry is in ``summary.json``),
``regions.geojson`` (the top-k attended regions, QuPath's conventions),
``patches.csv`` and ``summary.json`` (class, probabilities, provenance), plus
``crops/`` with ``--crops``, ``explanation-<method>.npy/.png`` with
``--explain``. The same engine runs the napari widget, so the same seed gives the
same class and attention.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import add_command, seed_arg

#: Exit status of ``classify`` (and ``batch``) when a result is not a diagnosis: too many
#: of the patches the model read were undecodable tiles. The outputs are still written.
EXIT_UNRELIABLE = 3
#: ``--contrast`` to the viewer's contrast names (:mod:`napari_histattn.inference.heatmap_scale`).
CONTRAST_CHOICES = {"full": "full range", "percentile": "1-99 percentile"}


def add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``classify`` and ``batch``."""
    parser.add_argument(
        "--checkpoint", required=True, type=Path, metavar="CK", help=".safetensors checkpoint"
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:<i> or mps (default auto)",
    )
    parser.add_argument("--seed", type=seed_arg, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--n-patches",
        type=int,
        metavar="N",
        help="attention sampling: patches drawn; A-MIL/CNN: at most N tiles (default: checkpoint)",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        metavar="P",
        help="patch side in model pixels (default: checkpoint)",
    )
    parser.add_argument(
        "--batch-size", type=int, metavar="B", help="patches per model call (default by family)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a run parameter the checkpoint's model family declares (repeatable); "
        "`histattn families` lists them",
    )
    parser.add_argument(
        "--features",
        type=Path,
        metavar="DIR",
        help="checkpoints trained on cached features: read this slide's features from DIR "
        "when they match (default: $HISTATTN_FEATURES), else run the encoder",
    )
    parser.add_argument(
        "--encoder-weights",
        type=Path,
        metavar="PATH",
        help="the weights of the encoder such a checkpoint was trained with",
    )
    parser.add_argument("--top-k", type=int, default=5, help="regions to export (default 5)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="regions: threshold on the percentile-normalised attention, 0-1 (default 0.5)",
    )
    parser.add_argument(
        "--crops", action="store_true", help="also write full-resolution PNG crops of the regions"
    )
    parser.add_argument(
        "--contrast",
        choices=sorted(CONTRAST_CHOICES),
        default="full",
        help="what the PNGs' colour ramp spans: the attention's full raw range (default, as "
        "the viewer's heatmap) or its 1-99 percentiles (faint structure, the top 1 %% clipped)",
    )
    parser.add_argument(
        "--allow-upsample",
        action="store_true",
        help="classify a slide whose pixels are more than 4x coarser than the model's "
        "(refused by default: the model would see blurred pixels)",
    )
    parser.add_argument(
        "--explain",
        metavar="METHODS",
        help="post-hoc explanations beside the attention, comma-separated: gradcam, "
        "guided_gradcam, saliency (the attention CNN); written as explanation-<method>.npy/.png",
    )
    parser.add_argument(
        "--mpp",
        type=float,
        metavar="UM",
        help="the slide's level-0 micrometres per pixel, for files that record none (or a "
        "wrong one); without it an image-level model reads such an image at the model's "
        "training resolution and says so, and other models refuse it",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: the usable cores less those other work keeps busy)",
    )
    parser.add_argument(
        "--amp",
        action="store_true",
        help="run patch encoders in bfloat16 autocast (for CUDA; probabilities within ~1e-2)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: Any) -> None:
    """Add the ``classify`` subcommand."""
    parser = add_command(
        subparsers,
        "classify",
        "classify a slide and write its attention heatmap, regions and summary",
        __doc__,
    )
    parser.add_argument("slide", type=Path, metavar="SLIDE", help="whole-slide image")
    add_classify_arguments(parser)
    parser.set_defaults(func=run)


def classify_to_folder(
    slide_path: Path, checkpoint: Any, out_dir: Path, args: argparse.Namespace
) -> tuple[Any, dict[str, Path]]:
    """Classify ``slide_path`` and write the outputs into ``out_dir``.

    ``checkpoint`` is a path or a loaded checkpoint. Returns the
    :class:`~napari_histattn.inference.result.ClassificationResult` and the
    files written. Engine messages (device fall-backs) go to stderr.
    """
    from napari_histattn.inference.engine import classify
    from napari_histattn.inference.outputs import write_outputs
    from napari_histattn.io.slide import open_slide
    from napari_histattn.progress import run_with_tqdm

    with open_slide(slide_path) as slide:
        result = run_with_tqdm(
            classify(
                slide,
                checkpoint,
                device=args.device,
                seed=args.seed,
                batch_size=args.batch_size,
                n_patches=args.n_patches,
                patch_size=args.patch_size,
                top_k=args.top_k,
                threshold=args.threshold,
                params=parse_params(getattr(args, "param", [])),
                features_dir=getattr(args, "features", None),
                encoder_weights=getattr(args, "encoder_weights", None),
                allow_upsample=getattr(args, "allow_upsample", False),
                threads=getattr(args, "threads", None),
                amp=getattr(args, "amp", False),
                slide_mpp=getattr(args, "mpp", None),
                explain=getattr(args, "explain", None),
            ),
            disable=args.quiet,
        )
        for message in result.provenance.get("messages", []):
            print(f"note: {message}", file=sys.stderr)
        files = write_outputs(
            result, slide, out_dir, crops=args.crops, contrast=CONTRAST_CHOICES[args.contrast]
        )
    return result, files


def parse_params(items: list[str]) -> dict[str, str]:
    """``["name=value", ...]`` as a dict; the engine checks each against the family's declaration."""
    from napari_histattn.errors import HistattnError

    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise HistattnError(f"--param takes NAME=VALUE, got {item!r}")
        params[name.strip()] = value.strip()
    return params


def _check_args(args: argparse.Namespace) -> None:
    from napari_histattn.errors import HistattnError

    for name in ("n_patches", "patch_size", "batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise HistattnError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.top_k < 0:
        raise HistattnError(f"--top-k must be at least 0, got {args.top_k}")
    if not 0.0 <= args.threshold <= 1.0:
        raise HistattnError(f"--threshold must be within 0-1, got {args.threshold}")
    parse_params(getattr(args, "param", []))


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    result, files = classify_to_folder(args.slide, args.checkpoint, args.out, args)
    probs = ", ".join(f"{n} {p:.3f}" for n, p in result.probabilities_by_class.items())
    print(f"{args.slide.name}: {result.predicted_class} ({probs})")
    for line in result.evidence_lines():
        print(f"  {line}")
    print(f"wrote {len(files)} files to {args.out}: " + ", ".join(p.name for p in files.values()))
    reason = result.unreliable_reason()
    if reason is not None:  # the outputs say so too; a script must not take this as a call
        print(f"error: {args.slide.name}: {reason}", file=sys.stderr)
        return EXIT_UNRELIABLE
    return 0
