"""How many slide-labelled slides the label-free small-lesion recipe needs: ``none112+im``
(random small_cnn features of 112-px tiles, instance MIL, then attention; slide labels
only) of ``benchmarks/small_lesions.py``, trained on growing cohorts and scored on the
same 16 unseen test slides.

The cohorts are the small-lesion benchmark's 36 training slides, then those plus more
generated slides of the small end of its curriculum (2,048^2 px at 0.5 um/px, one lesion
of 40-60 um radius and two look-alikes of its size, or three look-alikes; unseen seeds
from 605,000). Each size runs with each of ``--seeds`` (``histattn train --seed``: another
25 % validates, other initial weights). Beside the slide calls, each run reports how many
of the top 3 tiles of its positive training slides are at least a quarter lesion: the
precision of the labels that ``histattn pseudo-label`` writes from it. At
``--pseudo-sizes`` (first seed) a ``pseudo1`` row trains a pixel encoder on those labels
(the small-lesion benchmark's ``pseudo1+ssl`` without the SSL weights).

    .venv/bin/python benchmarks/learning_curve.py [--sizes 36 72 144] [--seeds 0 1]
        [--pseudo-sizes 36 144]

Results go to ``RESULTS.md`` between ``<!-- learning-curve:start -->`` and
``<!-- learning-curve:end -->``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import small_lesions as sl  # noqa: E402  (the same slides, features and recipe)

START, END = "<!-- learning-curve:start -->", "<!-- learning-curve:end -->"
RECIPE = "none112+im"
#: The rows of every run so far (a run replaces its own rows and keeps the others).
LAST = sl.WORK / "learning-curve.json"
#: The features column of rows whose pseudo-labels came from two runs voting.
VOTED = "random + SSL (voted)"


def _lesion_share(slide: Path, coords_l0_xy: np.ndarray, side_l0: float) -> np.ndarray:
    """Each tile's share of lesion (mask value 3), sampled at 4 x 4 points, on a
    2,048^2 generated slide."""
    from PIL import Image

    mask = np.asarray(Image.open(slide.with_suffix(".mask.png")))
    scale = mask.shape[0] / 2048
    offsets = (np.arange(4) + 0.5) / 4 * side_l0
    hits = np.zeros(len(coords_l0_xy))
    for dy in offsets:
        for dx in offsets:
            y = np.clip(((coords_l0_xy[:, 1] + dy) * scale).astype(int), 0, mask.shape[0] - 1)
            x = np.clip(((coords_l0_xy[:, 0] + dx) * scale).astype(int), 0, mask.shape[1] - 1)
            hits += mask[y, x] == 3
    return hits / offsets.size**2


def top_tile_precision(ckpt: Path, train: list, feats: Path, top: int) -> tuple[int, int]:
    """(tiles at least a quarter lesion, tiles) among the ``top`` highest-margin tiles of
    each positive training slide under the checkpoint."""
    from napari_histattn.inference.features import feature_path, read_features
    from napari_histattn.models.checkpoint import load
    from napari_histattn.training.pseudo_labels import tile_margins

    model = load(ckpt, device="cpu").model
    good = total = 0
    for slide, label in train:
        if label != "lesion":
            continue
        cached = read_features(feature_path(feats, slide))
        best = np.argsort(-tile_margins(model, cached.features), kind="stable")[:top]
        share = _lesion_share(slide, cached.coords_l0_xy[best], cached.tile_l0)
        good += int((share >= 0.25).sum())
        total += int(best.size)
    return good, total


def _mlp_margins(x: Any, y: Any, seed: int = 0) -> Any:
    """A small MLP (256 hidden units, ReLU, dropout 0.2; AdamW 1e-3, weight decay 1e-2,
    30 epochs of 512-tile batches, positives weighted to balance) on tiles ``x`` with
    labels ``y``: the scorer, a function from standardised features to margins."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 256),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(256, 1),
    )
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    balance = (y == 0).sum() / (y == 1).sum()
    for _ in range(30):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 512):
            batch = order[start : start + 512]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                net(x[batch])[:, 0], y[batch], pos_weight=balance
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    return lambda z: net(z.float())[:, 0].double()


def _ranking_row(name: str, head: Any, tests: list, true_tiles: int) -> dict:
    """The row of a tile scorer ``head``: each test slide (standardised features, label)
    scored by the mean of its ``top`` margins, as instance MIL scores a slide."""
    import torch

    from napari_histattn.stats import roc_auc_binary

    y = np.asarray([label == "lesion" for _, label, _ in tests])
    with torch.no_grad():
        m = np.asarray([float(torch.topk(head(z), top).values.mean()) for z, _, top in tests])
    negatives = np.sort(m[~y])
    threshold = negatives[negatives.size - 1 - int(np.floor(0.05 * negatives.size))]
    return {
        "recipe": name,
        "accuracy": float("nan"),  # a ranking: no threshold was chosen for it
        "sensitivity_at_95_spec": float(np.mean(m[y] > threshold)),
        "roc_auc": roc_auc_binary(y, m),
        "loc_auc_tissue": float("nan"),
        "loc_auc_lookalike": float("nan"),
        "precision": None,
        "true_tiles": true_tiles,
        "train_s": float("nan"),
    }


def tile_heads(train: list, test: list, feats: Path, top: int, seed: int) -> list[dict]:
    """Tile scorers fitted directly (no attention), each test slide scored by the mean of
    its ``top`` tile margins as instance MIL scores it; standardised features.

    - ``tile labels`` / ``tile labels, MLP``: what perfect instance labels give, the tiles'
      *true* labels (positive: a tile of a positive training slide at least a quarter
      lesion; negative: every tile of a benign one), to instance MIL's own linear fit
      (:func:`~napari_histattn.training.instance_mil.fit_logistic`, class-balanced, L2
      1e-2) and to a small MLP (:func:`_mlp_margins`);
    - ``naive MLP``: slide labels only, the same MLP on every tile of a positive slide as
      positive (instance MIL's round 0, with a nonlinear head), seeded by ``seed``.
    """
    import torch

    from napari_histattn.inference.features import feature_path, read_features
    from napari_histattn.training.instance_mil import InstanceMILConfig, fit_logistic

    cached = [(read_features(feature_path(feats, s)), label) for s, label in train]
    every = np.concatenate([c.features for c, _ in cached])
    mean, std = every.mean(0), every.std(0) + 1e-6
    true_x, true_y, all_x, all_y = [], [], [], []
    for (slide, _), (c, label) in zip(train, cached, strict=True):
        x = (c.features - mean) / std
        positive = float(label == "lesion")
        all_x.append(x)
        all_y.append(np.full(len(x), positive))
        if positive:
            x = x[_lesion_share(slide, c.coords_l0_xy, c.tile_l0) >= 0.25]
        true_x.append(x)
        true_y.append(np.full(len(x), positive))
    x_t = torch.from_numpy(np.concatenate(true_x)).double()
    y_t = torch.from_numpy(np.concatenate(true_y)).double()
    weight = torch.where(y_t == 1, (y_t == 0).sum() / (y_t == 1).sum(), 1.0)
    w, b = fit_logistic(x_t, y_t, weight, InstanceMILConfig().l2)
    tests = [
        (
            torch.from_numpy((read_features(feature_path(feats, s)).features - mean) / std),
            label,
            top,
        )
        for s, label in test
    ]
    n_true = int(y_t.sum())
    naive = _mlp_margins(
        torch.from_numpy(np.concatenate(all_x)).float(),
        torch.from_numpy(np.concatenate(all_y)).float(),
        seed,
    )
    rows = []
    if seed == 0:  # the true-label heads once per cohort
        rows.append(_ranking_row("tile labels", lambda z: z.double() @ w + b, tests, n_true))
        mlp = _mlp_margins(x_t.float(), y_t.float())
        rows.append(_ranking_row("tile labels, MLP", mlp, tests, n_true))
    return [*rows, _ranking_row("naive MLP", naive, tests, 0) | {"seed": seed}]


def label_precision(notes: Path, train: list) -> tuple[int, int]:
    """(tiles at least a quarter lesion, tiles) among the pseudo-positive tiles that
    ``histattn pseudo-label`` wrote into ``notes`` for the positive training slides."""
    from napari_histattn.io.export import read_geojson_regions

    good = total = 0
    for slide, label in train:
        if label != "lesion":
            continue
        bounds = np.asarray(
            [r.polygon.bounds for r in read_geojson_regions(notes / f"{slide.stem}.geojson")]
        )
        share = _lesion_share(slide, bounds[:, :2], float(bounds[0, 2] - bounds[0, 0]))
        good += int((share >= 0.25).sum())
        total += len(share)
    return good, total


def pseudo_run(
    size: int, seed: int, train: list, test: list, voters: list[tuple[Path, str]], tag: str
) -> dict:
    """``pseudo1`` on this cohort: ``histattn pseudo-label`` from the ``none112+im`` runs
    ``voters`` ((features, run tag) pairs: several vote), then the small-lesion
    benchmark's patch1 stage on those tiles from random weights (32-px tiles at 1.0 um/px;
    still slide labels only). The row's precision is the pseudo-positives'."""
    from napari_histattn.cli import main as cli

    notes = sl.WORK / f"annotations-pseudo{tag}"
    shutil.rmtree(notes, ignore_errors=True)
    started = time.perf_counter()
    argv = ["pseudo-label", "--labels", str(sl._labels(train, sl.WORK / f"train{tag}.csv"))]
    for feats, run in voters:
        ckpt = sl.WORK / f"run-{RECIPE}{run}" / "fold-1" / "model.safetensors"
        argv += ["--features", str(feats), "--checkpoint", str(ckpt)]
    argv += ["--out", str(notes), "--top-k", str(sl.PSEUDO_TOP_K)]
    argv += ["--hard-negatives", str(sl.PSEUDO_NEGATIVES)]
    assert cli([*argv, "--random-negatives", str(sl.PSEUDO_NEGATIVES), "--quiet"]) == 0
    labelled_s = time.perf_counter() - started
    row = sl.run_recipe("pseudo1", train, test, None, [], None, notes=notes, tag=tag, seed=seed)
    row["train_s"] += labelled_s
    row["precision"] = label_precision(notes, train)
    return row


def _num(value: float, form: str = "{:.2f}") -> str:
    return "-" if value != value else form.format(value)  # NaN: not measured for the row


def report(rows: list[dict], machine: str, n_extra: int) -> str:
    lines = [
        START,
        "## How many slide-labelled slides the label-free recipe needs "
        "(`benchmarks/learning_curve.py`)",
        "",
        f"Machine: {machine}. Recipe `{RECIPE}` of the small-lesion benchmark "
        "(small_cnn features of 112-px tiles, `--instance-mil 5 --instance-top-k K`, then "
        "attention; **slide labels only**), on its 36 training slides and on those plus up "
        f"to {n_extra} more generated slides with 40-60 um lesions (half positive); 25 % of "
        "each cohort validates. Features: random weights, or SSL (`histattn pretrain "
        "--tile-size 112` on the 36 training slides; settings below). `pseudo1`: `histattn "
        "pseudo-label` from that run, then the patch1 stage on those tiles (32-px tiles at "
        "1.0 um/px, random initial weights, still slide labels only). `tile labels`: what "
        "perfect instance labels give, the same linear fit on the tiles' true labels; "
        "`tile labels, MLP`: a small MLP on them; `naive MLP`: slide labels only, that "
        "MLP on every tile of a positive slide as positive and every tile of a benign one "
        "as negative (instance MIL's first round with a nonlinear head; every training "
        "slide, no validation; the seed is its initialisation). These three are rankings "
        "(no threshold, so no accuracy). "
        "Scored on the small-lesion "
        "benchmark's 16 test slides. The seed (`histattn train --seed`) picks the "
        "validation split and the initial weights. `random + SSL (voted)`: `pseudo1` on "
        "the pseudo-labels of the random and the SSL runs voting (`histattn pseudo-label` "
        "with both checkpoints: tiles ranked by the sum of their two ranks). Top-tile "
        "precision: the top-K tiles of each positive training slide that are at least a "
        "quarter lesion; for `pseudo1`, the pseudo-positive tiles it trained on.",
        "",
        "| recipe | features | training slides | K | seed | slide acc. | sens. @ 95 % spec. "
        "| ROC AUC | loc. AUC (tissue) | loc. AUC (lesion vs look-alike) | top-tile precision "
        "| train |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        good, total = r.get("precision") or ("-", "-")
        shown = f"{r['true_tiles']} true tiles" if r.get("true_tiles") else f"{good}/{total}"
        lines.append(
            f"| `{r['recipe']}` | {r.get('features', 'random')} | {r['n_train']} | {r['top_k']} | {r['seed']} | "
            f"{_num(r['accuracy'])} | "
            f"{r['sensitivity_at_95_spec']:.2f} | {r['roc_auc']:.2f} | "
            f"{_num(r['loc_auc_tissue'])} | {_num(r['loc_auc_lookalike'])} | "
            f"{shown} | {_num(r['train_s'], '{:.0f} s')} |"
        )
    return "\n".join([*lines, END])


def _rerun(row: dict, args: argparse.Namespace) -> bool:
    """Whether this run (``args``) makes ``row`` again."""
    features = "SSL" if args.encoder_weights else "random"
    if row["top_k"] != args.top_k or row["n_train"] not in args.sizes:
        return False
    if row.get("features", "random") == VOTED:
        return args.vote and row["n_train"] in args.pseudo_sizes and row["seed"] == args.seeds[0]
    if row.get("features", "random") != features:
        return False
    if row["recipe"].startswith("tile labels"):
        return 0 in args.seeds
    if row["recipe"] == "pseudo1":
        return row["n_train"] in args.pseudo_sizes and row["seed"] == args.seeds[0]
    return row["seed"] in args.seeds


def main() -> int:
    from features import _machine, _write_section

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[36, 72, 144])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--pseudo-sizes", type=int, nargs="*", default=[36, 144], help="pseudo1 rows (seed 0)"
    )
    parser.add_argument("--top-k", type=int, default=sl.INSTANCE_TOP_K, help="instance top-k")
    parser.add_argument(
        "--vote",
        action="store_true",
        help="with --encoder-weights: also a pseudo1 row from the random and SSL runs voting "
        "(the random run of the same size and seed must exist)",
    )
    parser.add_argument(
        "--encoder-weights",
        type=Path,
        help="small_cnn weights for the 112-px features (histattn pretrain --tile-size 112; "
        "default: random)",
    )
    args = parser.parse_args()
    # The recipe's own constants, so that run_recipe and _pseudo_notes's flags follow.
    sl.INSTANCE_TOP_K = sl.PSEUDO_TOP_K = args.top_k
    if min(args.sizes) < 36 or not set(args.pseudo_sizes) <= set(args.sizes):
        raise SystemExit("sizes start at the benchmark's 36 slides; pseudo sizes are sizes")
    if args.vote and not args.encoder_weights:
        raise SystemExit("--vote needs --encoder-weights (the SSL runs vote with the random)")
    sl.WORK.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    base = sl._base_train() + sl._make(
        sl.WORK / "train-small", 12, 505_000, 2048, (40.0, 50.0, 60.0)
    )
    n_extra = max(args.sizes) - len(base)
    extra = sl._make(sl.WORK / "train-more", n_extra, 605_000, 2048, (40.0, 50.0, 60.0))
    test = sl._make(sl.WORK / "test", 16, 905_000, 3072, (30.0, 40.0, 50.0))
    features = "SSL" if args.encoder_weights else "random"
    feats = sl.WORK / f"features-{features.lower()}-112"
    cohort = base + extra + test
    sl._features(cohort, "small_cnn", args.encoder_weights, feats, tile_size=sl.WIDE_TILE_PX)
    rows = []
    if LAST.exists():  # other runs' rows stay; this run's replace their last figures
        rows = [r for r in json.loads(LAST.read_text()) if not _rerun(r, args)]
    for size in sorted(args.sizes):
        train = base + extra[: size - len(base)]
        for seed in args.seeds:
            tag = f"-n{size}-s{seed}" + ("-ssl" if args.encoder_weights else "")
            row = sl.run_recipe(RECIPE, train, test, feats, [], None, tag=tag, seed=seed)
            ckpt = sl.WORK / f"run-{RECIPE}{tag}" / "fold-1" / "model.safetensors"
            row |= {"n_train": size, "seed": seed, "top_k": args.top_k, "features": features}
            row["precision"] = top_tile_precision(ckpt, train, feats, args.top_k)
            rows.append(row)
            print(f"{RECIPE} {size} seed {seed}: {row['roc_auc']:.2f}", file=sys.stderr)
            for fitted in tile_heads(train, test, feats, args.top_k, seed):
                fitted = {"seed": "-"} | fitted | {"n_train": size, "top_k": args.top_k}
                rows.append(fitted | {"features": features})
            if seed == args.seeds[0] and size in args.pseudo_sizes:
                rows.append(pseudo_run(size, seed, train, test, [(feats, tag)], tag))
                rows[-1] |= {"n_train": size, "seed": seed, "top_k": args.top_k}
                rows[-1]["features"] = features
            if seed == args.seeds[0] and size in args.pseudo_sizes and args.vote:
                random_run = (sl.WORK / "features-random-112", f"-n{size}-s{seed}")
                voters = [random_run, (feats, tag)]
                rows.append(pseudo_run(size, seed, train, test, voters, f"{tag}-vote"))
                rows[-1] |= {"n_train": size, "seed": seed, "top_k": args.top_k}
                rows[-1]["features"] = VOTED
                print(f"pseudo1 {size} seed {seed}: {rows[-1]['roc_auc']:.2f}", file=sys.stderr)
    order = {RECIPE: 0, "pseudo1": 1, "naive MLP": 2, "tile labels": 3, "tile labels, MLP": 4}
    rows.sort(
        key=lambda r: (
            ["random", "SSL", VOTED].index(r.get("features", "random")),
            r["top_k"],
            r["n_train"],
            order[r["recipe"]],
            str(r["seed"]),
        )
    )
    LAST.write_text(json.dumps(rows, indent=1))
    text = report(rows, machine, max(r["n_train"] for r in rows) - len(base))
    _write_section(text, START, END)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
