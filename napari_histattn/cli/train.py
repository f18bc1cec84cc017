"""``histattn train``: patient-wise k-fold training of an attention model on a data folder or CSV."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_histattn.cli._parsers import seed_arg
from napari_histattn.errors import HistattnError

if TYPE_CHECKING:
    from napari_histattn.training.instance_mil import InstanceMILConfig

#: The built-in models (the parser names them without importing torch).
MODELS = ("dafl_cnn", "mldam", "amil", "attention_sampling")


def parse_config(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (numbers, booleans, lists),
    otherwise strings."""
    config: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HistattnError(f"--config expects key=value, got {item!r}")
        try:
            config[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            config[key.strip()] = value
    return config


def load_data(args: argparse.Namespace, min_classes: int = 2) -> Any:
    """The labelled data ``--data``/``--layout`` name (a CSV defaults to the slides layout)."""
    from napari_histattn.training.datasets import load_layout

    layout = args.layout
    if layout is None:
        if not (args.data.is_file() and args.data.suffix.lower() == ".csv"):
            raise HistattnError(f"give --layout for {args.data} (imagefolder, breakhis or slides)")
        layout = "slides"
    return load_layout(
        args.data,
        layout,
        magnification=args.magnification,
        breakhis_labels=args.breakhis_labels,
        group_regex=args.group_regex,
        min_classes=min_classes,
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``train`` and ``evaluate`` that say where the data is."""
    from napari_histattn.training.layouts import LAYOUTS

    parser.add_argument(
        "--data",
        "--labels",
        required=True,
        type=Path,
        help="class-per-folder directory (imagefolder), BreakHis directory, or CSV of "
        "slide,label[,patient] (--labels is the same option)",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="how --data is organised (default: slides for a CSV file)",
    )
    parser.add_argument(
        "--features",
        type=Path,
        metavar="DIR",
        help="amil: train (or evaluate) on the cached features in DIR (`histattn features`) "
        "instead of reading pixels",
    )
    parser.add_argument(
        "--magnification",
        type=int,
        choices=(40, 100, 200, 400),
        help="BreakHis: keep one magnification only",
    )
    parser.add_argument(
        "--breakhis-labels",
        choices=("binary", "subtype"),
        default="binary",
        help="BreakHis: benign/malignant or the eight tumour types",
    )
    parser.add_argument(
        "--group-regex",
        help="imagefolder: regex whose first group in a file name is the patient id",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an attention model with patient-wise k-fold cross-validation",
        description=(
            "Train one model per patient-wise fold, select each on validation loss, test it on "
            "the fold's held-out patients, and write checkpoints, metrics JSON and plots."
        ),
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--model",
        required=True,
        metavar="NAME",
        help=f"a registered model: {', '.join(MODELS)}, or any a family plug-in adds "
        "(`histattn families` lists them)",
    )
    parser.add_argument(
        "--config",
        action="append",
        metavar="KEY=VALUE",
        help="model configuration, repeatable (e.g. backbone=vgg_small, patch_size=64)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--scheduler", choices=("step", "cosine", "none"), default="step")
    parser.add_argument("--lr-step", type=int, default=30, help="StepLR: epochs between decays")
    parser.add_argument("--lr-gamma", type=float, default=0.5, help="StepLR: decay factor")
    parser.add_argument(
        "--patience", type=int, default=10, help="early stopping patience in epochs (0: off)"
    )
    parser.add_argument("--folds", type=int, default=5, help="patient-wise folds (1: one split)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument(
        "--image-size",
        type=int,
        help="dafl_cnn, mldam: resize images to this side (config input_size)",
    )
    parser.add_argument("--target-mpp", type=float, help="slides: patch resolution in um/px")
    parser.add_argument("--level", type=int, help="slides: read patches from this pyramid level")
    parser.add_argument(
        "--max-patches", type=int, default=512, help="amil: most patches per bag (0: all)"
    )
    parser.add_argument("--no-augment", action="store_true", help="no flips/rotations/jitter")
    parser.add_argument(
        "--annotations",
        type=Path,
        metavar="DIR",
        help="amil: a pathologist's annotations, one GeoJSON per slide (<slide stem>.geojson, "
        "QuPath's export or ours): tiles inside a classified polygon become labelled "
        "instances; unannotated tissue stays unlabelled, not negative",
    )
    parser.add_argument(
        "--annotation-class",
        action="append",
        metavar="NAME=CLASS",
        help="map an annotation class to a slide class (Tumor=lesion), or NAME= to ignore it; "
        "names equal to a slide class need no entry (repeatable)",
    )
    parser.add_argument(
        "--annotation-rule",
        choices=("centre", "overlap"),
        default="centre",
        help="a tile is labelled when its centre is inside the polygon (default) or when "
        "--annotation-overlap of it is covered",
    )
    parser.add_argument("--annotation-overlap", type=float, default=0.5, metavar="FRACTION")
    parser.add_argument(
        "--stage1-epochs",
        type=int,
        default=0,
        metavar="N",
        help="with --annotations: first train N epochs on the annotated tiles alone (stage 1), "
        "then on slide labels plus annotations (stage 2); 0 trains both at once",
    )
    parser.add_argument(
        "--stage1-tiles",
        type=int,
        default=None,
        metavar="N",
        help="with --stage1-epochs: stage 1 trains the encoder as a patch classifier on at "
        "most N annotated tiles per class per slide each epoch (balanced: a small lesion "
        "counts as much as the tissue around it); default: stage 1 trains the bag model on "
        "every annotated tile",
    )
    parser.add_argument(
        "--instance-class",
        action="append",
        metavar="NAME",
        help="with --stage1-tiles: an annotation class that is its own class in stage 1 "
        "(lookalike, tissue) beside the slide classes; --annotation-class NAME=CLASS still "
        "says what it counts as in stage 2 (repeatable)",
    )
    parser.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="pixel training: stage 2 learns attention and head only, the encoder stays as "
        "stage 1 (or --encoder-weights) left it",
    )
    parser.add_argument(
        "--instance-mil",
        type=int,
        default=None,
        metavar="ROUNDS",
        help="amil on --features, two classes, slide labels only: first fit the patch head by "
        "instance MIL (every tile of a benign slide benign, the --instance-top-k most "
        "suspicious tiles of a positive slide positive, refit for up to ROUNDS rounds; "
        "validation picks the round), then train the attention with that head frozen",
    )
    parser.add_argument(
        "--instance-top-k",
        type=int,
        default=None,
        metavar="K",
        help="with --instance-mil: tiles per positive slide labelled positive (default 3, "
        "the benchmark's setting)",
    )
    parser.add_argument(
        "--decision",
        choices=("auto", "attention", "top_k", "max"),
        default="auto",
        help="amil, two classes: how the slide call is made - attention pooling, the top-k "
        "patch evidence (one small confident focus makes a positive slide), or the larger of "
        "both; auto picks on the validation data (default)",
    )
    parser.add_argument(
        "--no-calibrate",
        action="store_true",
        help="do not fit a temperature to the validation data (default: fit one and record it)",
    )
    parser.add_argument(
        "--encoder-weights",
        type=Path,
        metavar="PATH",
        help="warm-start the model's registry encoder from these local weights (amil with "
        "--config encoder=resnet18; attention_sampling with --config feature_encoder=NAME)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_histattn.progress import run_with_tqdm
    from napari_histattn.training.datasets import SlideOptions
    from napari_histattn.training.experiment import ExperimentSpec, cross_validate, family_of
    from napari_histattn.training.loop import TrainConfig
    from napari_histattn.training.transforms import Augment

    family_of(args.model)  # an unknown model is a usage error naming the trainable ones
    config = parse_config(args.config)
    if args.image_size is not None:
        config["input_size"] = args.image_size
    data = load_data(args)
    spec = ExperimentSpec(
        model_name=args.model,
        model_config=config,
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            scheduler=args.scheduler,
            step_size=args.lr_step,
            gamma=args.lr_gamma,
            patience=args.patience or None,
            seed=args.seed,
            device=args.device,
            decision=args.decision,
            calibrate=not args.no_calibrate,
        ),
        folds=args.folds,
        val_fraction=args.val_fraction,
        slide_options=SlideOptions(
            target_mpp=args.target_mpp,
            level=args.level,
            max_patches=args.max_patches or None,
        ),
        augment=None if args.no_augment else Augment(),
        features_dir=args.features,
        encoder_weights=args.encoder_weights,
        annotations=_annotations(args),
        stage1_epochs=args.stage1_epochs,
        stage1_per_class=_stage1_tiles(args),
        instance_classes=tuple(args.instance_class or ()),
        freeze_encoder=args.freeze_encoder,
        instance_mil=_instance_mil(args),
    )
    summary = data.summary()
    print(
        f"{summary['n_samples']} samples, {summary['n_groups']} patients/groups, "
        f"classes {summary['class_counts']}"
    )
    try:
        result = run_with_tqdm(cross_validate(data, spec, args.out), disable=args.quiet)
    except (ValueError, FloatingPointError) as exc:
        raise HistattnError(f"training failed: {exc}") from exc
    m = result.metrics
    print(
        f"{m['folds']} fold(s), pooled test accuracy {m['accuracy']:.3f}, "
        f"balanced accuracy {m['balanced_accuracy']:.3f}, ROC AUC {_fmt(m['roc_auc'])}"
        + (f", patient accuracy {m['patient_accuracy']:.3f}" if "patient_accuracy" in m else "")
    )
    for fold in result.folds:
        print(
            f"  fold {fold.index}: accuracy {fold.metrics['accuracy']:.3f}  {fold.checkpoint_path}"
        )
    if spec.annotations is not None:
        _print_annotations(result)
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


def _print_annotations(result: Any) -> None:
    from napari_histattn.models.checkpoint import read_metadata

    path = result.folds[0].checkpoint_path
    used = (read_metadata(path).get("training") or {}).get("annotations") if path else None
    if used:
        print(
            f"annotations: {used['annotated_slides']} annotated slide(s), labelled tiles "
            f"{used['labelled_tiles']}"
            + (
                f"; ignored annotation classes {used['ignored_annotation_classes']}"
                if used["ignored_annotation_classes"]
                else ""
            )
        )


def _annotations(args: argparse.Namespace) -> Any:
    """The ``--annotations`` options, or None."""
    from napari_histattn.training.datasets.annotated import Annotations

    if args.annotations is None:
        if args.annotation_class or args.stage1_epochs:
            raise HistattnError("--annotation-class and --stage1-epochs need --annotations DIR")
        return None
    if not args.annotations.is_dir():
        raise HistattnError(f"--annotations {args.annotations} is not a folder")
    if not 0.0 < args.annotation_overlap <= 1.0:
        raise HistattnError("--annotation-overlap must be within (0, 1]")
    class_map: dict[str, str | None] = {}
    for item in args.annotation_class or []:
        name, sep, target = item.partition("=")
        if not sep or not name.strip():
            raise HistattnError(f"--annotation-class expects NAME=CLASS, got {item!r}")
        class_map[name.strip()] = target.strip() or None
    return Annotations(args.annotations, class_map, args.annotation_rule, args.annotation_overlap)


def _stage1_tiles(args: argparse.Namespace) -> int | None:
    """``--stage1-tiles`` checked against the options it needs."""
    if args.freeze_encoder and args.features is not None:
        raise HistattnError("--freeze-encoder trains on pixels; cached --features have no encoder")
    if args.stage1_tiles is None:
        if args.instance_class:
            raise HistattnError("--instance-class needs --stage1-tiles N")
        return None
    if args.stage1_tiles < 1:
        raise HistattnError(f"--stage1-tiles must be >= 1, got {args.stage1_tiles}")
    if not args.stage1_epochs:
        raise HistattnError("--stage1-tiles needs --stage1-epochs N (N > 0)")
    if args.features is not None:
        raise HistattnError("--stage1-tiles trains the encoder, so it reads pixels, not --features")
    return int(args.stage1_tiles)


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def _instance_mil(args: argparse.Namespace) -> InstanceMILConfig | None:
    """``--instance-mil`` checked against the options it needs."""
    from napari_histattn.training.instance_mil import InstanceMILConfig

    if args.instance_mil is None:
        if args.instance_top_k is not None:
            raise HistattnError("--instance-top-k needs --instance-mil ROUNDS")
        return None
    if args.features is None or args.model != "amil":
        raise HistattnError("--instance-mil trains amil on cached --features DIR")
    if args.annotations is not None:
        raise HistattnError(
            "--instance-mil learns the patch head from slide labels alone, and --annotations "
            "would train the same head: use one (annotations: --stage1-epochs)"
        )
    top_k = 3 if args.instance_top_k is None else args.instance_top_k
    return InstanceMILConfig(rounds=args.instance_mil, top_k=top_k)
