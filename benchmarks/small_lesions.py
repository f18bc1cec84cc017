"""Small lesions from slide labels: A-MIL (or HATNet, ``--model hatnet``) under several
supervision recipes.

Training slides: the 24 slides of ``benchmarks/slide_labels.py`` (2,048^2 px at
0.5 um/px, lesions of 100-150 um radius, two look-alikes each) plus 12 with
small lesions (40-60 um radius) as the small end of the curriculum; 25 % of them
validate (early stopping, the decision rule and the temperature). Test slides
(unseen seeds): 3,072^2 px; a positive has **one** lesion of 30-50 um radius
(a 60-100 um focus, 0.15-0.4 % of the tissue) and two look-alikes of the same
size, a negative three look-alikes. Recipes (the supervision each row uses):

- ``none``: small_cnn with seeded random weights, slide labels only (the lower bound);
- ``ssl``: small_cnn pretrained with ``histattn pretrain`` (SimCLR) on the training
  slides' unlabelled tiles, slide labels only;
- ``none+neg`` / ``ssl+neg``: as ``none`` / ``ssl`` with the negative-bag instance loss
  (``negative_loss_weight``: every tile of a benign slide is benign), still slide labels only;
- ``none112`` / ``none112+neg``: as ``none`` / ``none+neg`` on 112-px tiles (56 um: a
  group of nuclei, where a 28-px tile holds about one), ``--tile-size 112``;
- ``none+im`` / ``ssl+im`` / ``none112+im``: instance MIL (``--instance-mil 5
  --instance-top-k 3``): the patch head fitted on single tiles from slide labels
  (:mod:`napari_histattn.training.instance_mil`), then the attention trained with it frozen;
- ``ssl+ann10``: as ``ssl``, plus the generator's ground-truth GeoJSON as annotations
  on 10 % of the training slides (``--annotations``, two-stage);
- ``ssl+ann100``: annotations on every training slide (the generator's patch labels:
  the upper bound);
- ``px+...``: the same on pixels, the encoder learning from the SSL weights;
- ``pseudo1+ssl``: still slide labels only. ``histattn pseudo-label`` turns the
  ``none112+im`` model's surest tiles into annotations (a positive slide's 3 top tiles,
  a benign slide's 8 most suspicious and 8 random tiles), and the patch1 recipe below
  trains on them;
- ``patch+ssl+ann10`` / ``patch+ssl+ann100``: the demo recipe through ``histattn train``:
  stage 1 a patch classifier over lesion, look-alike and tissue outlines on balanced
  tiles (``--stage1-tiles 128 --instance-class lookalike --instance-class tissue``),
  stage 2 on slide labels with the encoder frozen (``--freeze-encoder``).

Every recipe trains with the max-instance loss (``topk_loss_weight=0.5``) and lets
validation choose the decision rule and the temperature. Results go to
``RESULTS.md`` between ``<!-- small-lesions:start -->`` and ``<!-- small-lesions:end -->``.

    .venv/bin/python benchmarks/small_lesions.py --ssl-weights PATH [--recipes none ssl ...]
        [--model hatnet]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
WORK = ROOT / "benchmarks" / "_work" / "small-lesions"
BASE = ROOT / "benchmarks" / "_work" / "slide-labels"
START, END = "<!-- small-lesions:start -->", "<!-- small-lesions:end -->"

from slide_labels import _labels, _localisation  # noqa: E402  (the same slide files and masks)

# Recipe name -> the supervision it uses. ``px`` rows train the encoder on pixels.
RECIPES = {
    "none": "cached random features, slide labels only",
    "ssl": "cached SSL features, slide labels only",
    "none+neg": "cached random features, slide labels only, every tile of a benign slide benign",
    "ssl+neg": "cached SSL features, slide labels only, every tile of a benign slide benign",
    "none112": "cached random features of 112-px tiles (56 um), slide labels only",
    "none112+neg": "cached random features of 112-px tiles, slide labels only, every tile of "
    "a benign slide benign",
    "none+im": "cached random features, slide labels only, instance MIL head then attention",
    "ssl+im": "cached SSL features, slide labels only, instance MIL head then attention",
    "none112+im": "cached random features of 112-px tiles, slide labels only, instance MIL "
    "head then attention",
    "ssl+ann10": "cached SSL features, slide labels + annotations on 10 % of slides",
    "ssl+ann100": "cached SSL features, annotations on every slide (upper bound)",
    "px+ssl": "encoder trained from SSL weights, slide labels only",
    "px+ssl+ann10": "encoder trained from SSL weights, slide labels + annotations on 10 % of slides",
    "px+ssl+ann100": "encoder trained from SSL weights, annotations on every slide (upper bound)",
    "px1+ssl": "encoder trained from SSL weights, slide labels only, 32-px tiles at 1.0 um/px",
    "patch+ssl+ann10": "stage 1 a patch classifier on balanced tiles of lesion, look-alike and "
    "tissue outlines on 10 % of slides, stage 2 slide labels with the encoder frozen",
    "patch+ssl+ann100": "as above with outlines on every slide (upper bound)",
    "patch1+ssl+ann10": "as patch+ssl+ann10 with 32-px tiles at 1.0 um/px (the demo's tile scale)",
    "patch1+ssl+ann100": "as patch+ssl+ann100 with 32-px tiles at 1.0 um/px",
    "pseudo1+ssl": "slide labels only: `histattn pseudo-label` from the `none112+im` model, "
    "then as patch1+ssl+ann10 on those tiles (nobody outlined anything)",
    "demo": "`sample_data/demo_<model>`: encoder trained on generator patch labels in 3 classes",
}


#: Weight of the negative-bag instance loss in the ``+neg`` recipes.
NEGATIVE_LOSS_WEIGHT = 1.0
#: ``--instance-mil ROUNDS`` and ``--instance-top-k K`` of the ``+im`` recipes.
INSTANCE_MIL_ROUNDS, INSTANCE_TOP_K = 5, 3
#: ``histattn pseudo-label --top-k`` and ``--hard-negatives`` / ``--random-negatives``.
PSEUDO_TOP_K, PSEUDO_NEGATIVES = 3, 8
#: Tile side of the ``none112`` recipes (``histattn features --tile-size``), 56 um.
WIDE_TILE_PX = 112


def _make(folder: Path, n: int, first_seed: int, size: int, radii: tuple[float, ...]) -> list:
    from napari_histattn.io.synthetic import generate_synthetic_slide

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(n):
        positive = i % 2 == 0
        seed = first_seed + i
        radius_px = radii[(i // 2) % len(radii)] / 0.5
        path = folder / f"{'pos' if positive else 'neg'}-{seed}.tiff"
        if not path.exists():
            generate_synthetic_slide(
                path,
                size,
                size,
                seed=seed,
                n_lesions=1 if positive else 0,
                lesion_radius_px=radius_px,
                n_lookalikes=2 if positive else 3,
                lookalike_radius_px=radius_px,
                mpp=0.5,
            )
        made.append((path, "lesion" if positive else "benign"))
    return made


def _base_train() -> list:
    rows = []
    for path in sorted((BASE / "train").glob("*.tiff")):
        rows.append((path, "lesion" if path.name.startswith("pos") else "benign"))
    if len(rows) < 24:
        raise SystemExit("run benchmarks/slide_labels.py first (it makes the training slides)")
    return rows


def _lesion_fraction(slide: Path) -> float:
    from PIL import Image

    mask = np.asarray(Image.open(slide.with_suffix(".mask.png")))
    return float((mask == 3).sum() / max(1, (mask > 0).sum()))


def _features(
    rows: list, encoder: str, weights: Path | None, out: Path, tile_size: int | None = None
) -> float:
    from napari_histattn.cli import main as cli

    started = time.perf_counter()
    argv = ["features", str(_labels(rows, WORK / "all.csv")), "--encoder", encoder]
    argv += ["--out", str(out), "--quiet"]
    if tile_size is not None:
        argv += ["--tile-size", str(tile_size)]
    if weights is not None:
        argv += ["--encoder-weights", str(weights)]
    assert cli(argv) == 0
    return time.perf_counter() - started


def run_recipe(
    name: str,
    train: list,
    test: list,
    feats: Path | None,
    annotated: list,
    ssl: Path | None,
    model: str = "amil",
    notes: Path | None = None,
    tag: str = "",
    seed: int = 0,
) -> dict:
    """Train one recipe with ``model`` (``amil`` or ``hatnet``) and score it on the test slides.

    ``feats`` None trains on pixels: the small_cnn encoder is trained with the
    attention head (warm-started from ``ssl`` when given) on at most 512 tiles per bag.
    HATNet on cached features takes every tile of a bag (its regions need their
    neighbours); A-MIL at most 512. ``notes``: a folder of pseudo-annotations for the
    patch recipe's stage 1 (their classes are the slide classes). ``tag`` names the run's
    folder and label CSV apart from the recipe's own (another cohort, as in
    ``learning_curve.py``); ``seed`` is ``histattn train --seed`` (the validation split
    and the initialisation).
    """
    from napari_histattn.cli import main as cli

    out = WORK / (f"run-{name}{tag}" if model == "amil" else f"run-{model}-{name}{tag}")
    shutil.rmtree(out, ignore_errors=True)
    argv = ["train", "--labels", str(_labels(train, WORK / f"train{tag}.csv"))]
    if feats is not None:
        argv += ["--features", str(feats), "--epochs", "40", "--lr", "2e-3"]
        if model == "hatnet":
            argv += ["--max-patches", "0"]
    else:
        coarse = name.startswith(("patch1", "px1", "pseudo1"))  # 32 px at 1 um/px: 5.2x the area
        mpp = "1.0" if coarse else "0.5"
        argv += ["--target-mpp", mpp, "--max-patches", "512", "--epochs", "30", "--lr", "1e-3"]
        if coarse:
            argv += ["--config", "patch_size=32"]
        if ssl is not None:
            argv += ["--encoder-weights", str(ssl)]
    argv += ["--model", model, "--folds", "1", "--val-fraction", "0.25"]
    argv += ["--patience", "10", "--batch-size", "4", "--seed", str(seed)]
    argv += ["--config", "topk_loss_weight=0.5", "--out", str(out), "--quiet"]
    if name.endswith("+neg"):  # the negative-bag instance loss (slide labels only)
        argv += ["--config", f"negative_loss_weight={NEGATIVE_LOSS_WEIGHT}"]
    if name.endswith("+im"):  # instance MIL, then attention (slide labels only)
        argv += ["--instance-mil", str(INSTANCE_MIL_ROUNDS)]
        argv += ["--instance-top-k", str(INSTANCE_TOP_K)]
    if annotated:
        notes = WORK / f"annotations-{name}"
        shutil.rmtree(notes, ignore_errors=True)
        notes.mkdir(parents=True)
        for slide in annotated:
            shutil.copy(slide.with_suffix(".geojson"), notes / f"{slide.stem}.geojson")
        argv += ["--annotations", str(notes), "--stage1-epochs", "5" if feats else "10"]
        argv += ["--annotation-class", "tissue=benign", "--annotation-class", "lookalike=benign"]
        if name.startswith("patch"):  # the demo recipe's stage 1 and frozen stage 2
            argv += ["--stage1-tiles", "128", "--freeze-encoder"]
            argv += ["--instance-class", "lookalike", "--instance-class", "tissue"]
    if notes is not None:  # pseudo-annotations: stage 1 a patch classifier on their tiles
        argv += ["--annotations", str(notes), "--stage1-epochs", "10", "--stage1-tiles", "128"]
        argv += ["--freeze-encoder"]
    started = time.perf_counter()
    assert cli(argv) == 0
    train_s = time.perf_counter() - started
    row = {"recipe": name, "model": model, "annotated_slides": len(annotated), "train_s": train_s}
    return row | score(out / "fold-1" / "model.safetensors", test, feats)


def _pseudo_notes(
    rows: list, train: list, test: list, feats: dict, model: str
) -> tuple[Path, float, list]:
    """Pseudo-annotations from the ``none112+im`` model (trained again now, so they come from
    this code; its row is replaced): the folder, the seconds that training and labelling
    took (not its scoring) and the rows."""
    from napari_histattn.cli import main as cli

    ckpt = WORK / "run-none112+im" / "fold-1" / "model.safetensors"
    fresh = run_recipe("none112+im", train, test, feats["none112"], [], None, model)
    rows = [r for r in rows if r["recipe"] != "none112+im"] + [fresh]
    started = time.perf_counter()
    notes = WORK / "annotations-pseudo"
    shutil.rmtree(notes, ignore_errors=True)
    argv = ["pseudo-label", "--labels", str(_labels(train, WORK / "train.csv")), "--features"]
    argv += [str(feats["none112"]), "--checkpoint", str(ckpt), "--out", str(notes), "--quiet"]
    argv += ["--top-k", str(PSEUDO_TOP_K), "--hard-negatives", str(PSEUDO_NEGATIVES)]
    assert cli([*argv, "--random-negatives", str(PSEUDO_NEGATIVES)]) == 0
    return notes, fresh["train_s"] + time.perf_counter() - started, rows


def score(ckpt: Path, test: list, feats: Path | None) -> dict:
    """Slide calls, localisation and calibration of one checkpoint on the test slides."""
    from napari_histattn.inference.engine import classify
    from napari_histattn.models.checkpoint import read_metadata
    from napari_histattn.progress import run_to_completion
    from napari_histattn.stats import roc_auc_binary
    from napari_histattn.training.metrics import expected_calibration_error

    meta = read_metadata(ckpt)
    probs, labels, loc = [], [], []
    for slide, label in test:
        result = run_to_completion(classify(slide, ckpt, device="cpu", features_dir=feats))
        probs.append(result.probabilities_by_class["lesion"])
        labels.append(label == "lesion")
        if label == "lesion":
            loc.append(_localisation(result, slide, 3072))
    p, y = np.asarray(probs), np.asarray(labels)
    negatives = np.sort(p[~y])
    # Specificity >= 0.95: at most 5 % of the negatives above the threshold.
    allowed = int(np.floor(0.05 * negatives.size))
    threshold = negatives[negatives.size - 1 - allowed] if negatives.size else 1.0
    return {
        "accuracy": float(np.mean((p >= 0.5) == y)),
        "sensitivity_at_95_spec": float(np.mean(p[y] > threshold)),
        "roc_auc": roc_auc_binary(y, p),
        "loc_auc_tissue": float(np.nanmean([m["auc_tissue"] for m in loc])),
        "loc_auc_lookalike": float(np.nanmean([m["auc_lookalike"] for m in loc])),
        "mass_in_lesion": float(np.mean([m["mass"] for m in loc])),
        "ece": expected_calibration_error(y.astype(int), np.stack([1 - p, p], axis=1)),
        "decision": meta["model_config"].get("decision", "attention"),
        "temperature": (meta.get("calibration") or {}).get("temperature", 1.0),
        "p_lesion": [round(float(v), 3) for v in p],
    }


def _rows_in_results() -> list[dict]:
    """The rows of the table now in ``RESULTS.md`` (when ``last.json`` went with a cleaned
    ``_work`` folder), so that a run of some recipes keeps the others' last figures."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    if START not in text:
        return []
    section = text.split(START, 1)[1].split(END, 1)[0]
    rows = []
    keys = ("accuracy", "sensitivity_at_95_spec", "roc_auc", "loc_auc_tissue")
    keys += ("loc_auc_lookalike", "mass_in_lesion", "ece")
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 10 or "`" not in cells[0]:
            continue
        recipe = cells[0].split("`")[1]
        decision, temperature = cells[8].rstrip(")").split(" (")
        row = {"recipe": recipe, "model": "hatnet" if cells[0].startswith("HATNet") else "amil"}
        row |= {k: float(v) for k, v in zip(keys, cells[1:8], strict=True)}
        row |= {"decision": decision, "temperature": float(temperature)}
        row["train_s"] = float("nan") if cells[9] == "-" else float(cells[9].split()[0])
        rows.append(row)
    return rows


def _seconds(value: float) -> str:
    return "-" if value != value else f"{value:.0f} s"  # NaN: not trained here


def report(rows: list, extra: dict, machine: str) -> str:
    lines = [
        START,
        "## Small lesions from slide labels (`benchmarks/small_lesions.py`)",
        "",
        f"Machine: {machine}. {extra['n_train']} training slides (24 with 100-150 um lesions, "
        f"12 with 40-60 um ones; 25 % validate), {extra['n_test']} test slides from unseen "
        "seeds at 3,072^2 px, 0.5 um/px: a positive has one lesion of 30-50 um radius "
        f"(lesion share of the tissue {extra['fraction_min']:.2%}-{extra['fraction_max']:.2%}) "
        "and two look-alikes of its size, a negative three look-alikes. A-MIL (HATNet rows: "
        "HATNet, regions of 4 x 4 tiles, every tile of a bag) with a "
        "small_cnn encoder (28-px tiles at 0.5 um/px): on cached features (40 epochs), or "
        "`px` rows trained on pixels with the encoder learning (at most 512 tiles per bag, "
        "30 epochs, stage 1 10 epochs); max-instance loss 0.5, decision rule "
        f"and temperature chosen on validation. SSL encoder: `histattn pretrain` "
        f"({extra['ssl']}). Localisation AUC over tissue cells of the positive test slides.",
        "",
        "| recipe (supervision) | slide acc. | sens. @ 95 % spec. | ROC AUC | loc. AUC (tissue) "
        "| loc. AUC (lesion vs look-alike) | attention mass in lesion | ECE | decision (T) "
        "| train |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        model = r.get("model", "amil")
        lines.append(
            f"| {'HATNet ' if model == 'hatnet' else ''}`{r['recipe']}` ({RECIPES[r['recipe']]}) "
            f"| {r['accuracy']:.2f} | "
            f"{r['sensitivity_at_95_spec']:.2f} | {r['roc_auc']:.2f} | {r['loc_auc_tissue']:.2f} "
            f"| {r['loc_auc_lookalike']:.2f} | {r['mass_in_lesion']:.3f} | {r['ece']:.2f} | "
            f"{r['decision']} ({r['temperature']:.2f}) | {_seconds(r['train_s'])} |"
        )
    lines += [END]
    return "\n".join(lines)


def main() -> int:
    from features import _machine, _write_section

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ssl-weights", type=Path, required=True)
    parser.add_argument("--ssl-note", default="small_cnn, 40 epochs on the training slides")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument(
        "--model", choices=("amil", "hatnet"), default="amil", help="the bag model the rows train"
    )
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    started = time.perf_counter()
    train = _base_train() + _make(WORK / "train-small", 12, 505_000, 2048, (40.0, 50.0, 60.0))
    test = _make(WORK / "test", args.test, 905_000, 3072, (30.0, 40.0, 50.0))
    fractions = [_lesion_fraction(s) for s, label in test if label == "lesion"]
    print(f"slides ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    feats = {
        "none": WORK / "features-random",
        "ssl": WORK / "features-ssl",
    }
    _features(train + test, "small_cnn", None, feats["none"])
    _features(train + test, "small_cnn", args.ssl_weights, feats["ssl"])
    if any(r.startswith(("none112", "pseudo")) for r in args.recipes):
        feats["none112"] = WORK / "features-random-112"
        _features(train + test, "small_cnn", None, feats["none112"], tile_size=WIDE_TILE_PX)
    # 10 %: the first annotated slides of the training list (two positives, two negatives).
    pos = [s for s, label in train if label == "lesion"]
    neg = [s for s, label in train if label == "benign"]
    ten = pos[:2] + neg[:2]
    # Rows of recipes not run now are kept from the last run.
    last = WORK / "last.json"
    kept = json.loads(last.read_text())["rows"] if last.exists() else _rows_in_results()
    rows = [
        r
        for r in kept
        if r["recipe"] in RECIPES
        and (r["recipe"] not in args.recipes or r.get("model", "amil") != args.model)
    ]
    for recipe in args.recipes:
        if recipe == "demo":  # trained by sample_data/make_demo_checkpoints.py, not here
            ckpt = ROOT / "sample_data" / f"demo_{args.model}.safetensors"
            rows.append(
                {"recipe": recipe, "model": args.model, "annotated_slides": 0}
                | {"train_s": float("nan")}
            )
            rows[-1] |= score(ckpt, test, None)
            continue
        notes, before_s = None, 0.0
        if recipe.startswith("pseudo"):
            notes, before_s, rows = _pseudo_notes(rows, train, test, feats, args.model)
        pixels = recipe.startswith(("px", "patch", "pseudo"))
        ssl = args.ssl_weights if "ssl" in recipe else None
        wide = recipe.startswith("none112")
        source = None if pixels else feats["none112" if wide else "ssl" if ssl else "none"]
        every = [s for s, _ in train]
        annotated = every if recipe.endswith("ann100") else ten if recipe.endswith("ann10") else []
        rows.append(run_recipe(recipe, train, test, source, annotated, ssl, args.model, notes))
        rows[-1]["train_s"] += before_s
        print(json.dumps(rows[-1]), file=sys.stderr)
    rows.sort(key=lambda r: (r.get("model", "amil") != "amil", list(RECIPES).index(r["recipe"])))
    extra = {
        "n_train": len(train),
        "n_test": len(test),
        "fraction_min": min(fractions),
        "fraction_max": max(fractions),
        "ssl": args.ssl_note,
    }
    text = report(rows, extra, machine)
    (WORK / "last.json").write_text(json.dumps({"rows": rows, **extra}, indent=1))
    _write_section(text, START, END)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
