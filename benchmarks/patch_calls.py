"""A patch classifier on slides: the slide call and the heatmap against ground truth.

The demo attention CNN (``sample_data/demo_dafl_cnn``, a patch classifier of normal /
look-alike / lesion tiles) classifies unseen generated slides tile by tile:

- 16 slides of ``benchmarks/small_lesions.py`` (3,072^2 px at 0.5 um/px; a positive has
  one lesion of 30-50 um radius, 0.2-0.6 % of the tissue, and two look-alikes of its
  size; a negative three look-alikes), and
- 24 slides of ``benchmarks/slide_labels.py`` (2,048^2 px; lesions of 100-150 um).

For this checkout and for ``--against REV`` (a ``git archive`` on ``PYTHONPATH``, same
venv), each in one fresh process: slide accuracy (lesion called on positives, not on
negatives), ROC AUC of p(lesion), the localisation AUC of the heatmap over tissue cells
and against look-alike cells alone, its mass in the lesion, seconds per slide. The
rule's ``slide_top_k`` is swept offline on this checkout's tile probabilities with
:func:`napari_histattn.models.tile_calls.slide_call` (the code the engine runs).
Results go to ``RESULTS.md`` between ``<!-- patch-calls:start -->`` and
``<!-- patch-calls:end -->``.

    .venv/bin/python benchmarks/patch_calls.py [--against 0fa83af]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
START, END = "<!-- patch-calls:start -->", "<!-- patch-calls:end -->"
WORK = ROOT / "benchmarks" / "_work" / "patch-calls"
VAL = WORK / "validation"
CHECKPOINT = ROOT / "sample_data" / "demo_dafl_cnn.safetensors"
SETS = {
    "small lesions (30-50 um)": (ROOT / "benchmarks/_work/small-lesions/test", 3072),
    "large lesions (100-150 um)": (ROOT / "benchmarks/_work/slide-labels/test", 2048),
}
SWEEP = (0, 1, 2, 4, 6, 8, 12, 16, 24)

RUNNER = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from napari_histattn.inference.engine import classify
    from napari_histattn.models.checkpoint import load
    from napari_histattn.progress import run_to_completion
    from slide_labels import _localisation
    ck = load(sys.argv[2], device="cpu")
    rows = []
    for item in json.loads(sys.argv[3]):
        t0 = time.perf_counter()
        r = run_to_completion(classify(item["slide"], ck, device="cpu"))
        seconds = time.perf_counter() - t0
        names = list(r.class_names)
        row = {"slide": item["slide"], "seconds": seconds, "called": r.predicted_class,
               "p_lesion": r.probabilities_by_class["lesion"],
               "tiles": [[p.probs[c] for c in names] for p in r.patches]}
        if item["positive"]:
            row.update(_localisation(r, Path(item["slide"]), item["size"]))
        rows.append(row)
    print(json.dumps(rows))
    """
)


SPEED = textwrap.dedent(
    """
    import json, math, time, torch
    from napari_histattn.inference.engine import classify
    from napari_histattn.io.synthetic.sample import synthetic_sample_slide
    from napari_histattn.models.checkpoint import load
    from napari_histattn.progress import run_to_completion
    import sys
    ck = load(sys.argv[1], device="cpu")
    slide = synthetic_sample_slide().path
    run_to_completion(classify(slide, ck, device="cpu", n_patches=64))  # warm-up
    out = {}
    for key, explain in (("plain", None), ("explained", "gradcam,guided_gradcam,saliency")):
        t0 = time.perf_counter()
        r = run_to_completion(classify(slide, ck, device="cpu", explain=explain))
        out[key] = time.perf_counter() - t0
    out["tiles"] = n = int(r.provenance["n_patches"])
    out["threads"] = int(r.provenance["torch_threads"])
    torch.set_num_threads(out["threads"])
    model, x = ck.model.eval(), torch.rand(32, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(math.ceil(n / 32)):
            model(x)
    out["model"] = time.perf_counter() - t0
    print(json.dumps(out))
    """
)


def _speed() -> dict[str, float]:
    """The sample slide: classify, classify with the three explanations, and the model alone
    on as many random 32-px tiles (its compute floor), one fresh process."""
    argv = [sys.executable, "-c", SPEED, str(CHECKPOINT)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    out: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _validation() -> dict[str, list[Path]]:
    """8 + 8 validation slides from unseen seeds (not the test seeds), made once."""
    from _models.data import TEST_SEED_START
    from slide_labels import _slides as large_slides
    from small_lesions import _make as small_slides

    small = small_slides(VAL / "small", 8, 915_000, 3072, (30.0, 40.0, 50.0))
    large = large_slides(8, TEST_SEED_START + 7000, VAL / "large")
    return {"small": [p for p, _ in small], "large": [p for p, _ in large]}


def _slides() -> list[dict[str, Any]]:
    val = _validation()
    items = []
    for name, (folder, size) in SETS.items():
        found = sorted(folder.glob("*.tiff"))
        if not found:
            raise SystemExit(f"no slides in {folder}: run benchmarks/small_lesions.py and "
                             "benchmarks/slide_labels.py first")  # fmt: skip
        for split, paths in (("val", val[name.split()[0]]), ("test", found)):
            for path in paths:
                positive = path.name.startswith("pos")
                items.append({"slide": str(path), "size": size, "set": name,
                              "positive": positive, "split": split})  # fmt: skip
    return items


def _run(items: list[dict[str, Any]], code: Path | None) -> list[dict[str, Any]]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    argv = [sys.executable, "-c", RUNNER, str(ROOT / "benchmarks"), str(CHECKPOINT)]
    proc = subprocess.run([*argv, json.dumps(items)], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    rows: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return rows


def _scores(items: list[dict[str, Any]], rows: list[dict[str, Any]], p: np.ndarray,
            called_lesion: np.ndarray) -> dict[str, float]:  # fmt: skip
    from napari_histattn.stats import roc_auc_binary

    y = np.array([i["positive"] for i in items])
    loc = [r for r, i in zip(rows, items, strict=True) if i["positive"]]
    out = {
        "accuracy": float(np.mean(called_lesion == y)),
        "roc_auc": roc_auc_binary(y, p),
        "seconds": float(np.mean([r["seconds"] for r in rows])),
    }
    if loc and "auc_tissue" in loc[0]:
        out["loc_tissue"] = float(np.nanmean([r["auc_tissue"] for r in loc]))
        out["loc_lookalike"] = float(np.nanmean([r["auc_lookalike"] for r in loc]))
        out["mass"] = float(np.mean([r["mass"] for r in loc]))
    return out


def _engine_scores(items: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, float]:
    p = np.array([r["p_lesion"] for r in rows])
    return _scores(items, rows, p, np.array([r["called"] == "lesion" for r in rows]))


def _sweep(items: list[dict[str, Any]], rows: list[dict[str, Any]], k: int) -> dict[str, float]:
    from napari_histattn.models.tile_calls import slide_call

    calls = np.array([slide_call(np.asarray(r["tiles"]), k) for r in rows])
    out = _scores(items, rows, calls[:, 2], calls.argmax(axis=1) == 2)
    return {key: out[key] for key in ("accuracy", "roc_auc")}


def _fmt(d: dict[str, float], key: str) -> str:
    return f"{d[key]:.2f}" if key in d else "-"


def main() -> int:
    from classify import _baseline
    from features import _machine, _write_section

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="0fa83af")
    args = parser.parse_args()
    machine = _machine()
    from napari_histattn.models.tile_calls import DEFAULT_TOP_K

    items = _slides()
    now = _run(items, None)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "now.json").write_text(json.dumps({"items": items, "rows": now}))
    test = [j for j, i in enumerate(items) if i["split"] == "test"]
    before = dict(zip(test, _run([items[j] for j in test], _baseline(args.against)), strict=True))
    n_val = sum(i["split"] == "val" for i in items)
    lines = [
        START,
        "## A patch classifier on slides (`benchmarks/patch_calls.py`)",
        "",
        f"Machine: {machine}. Model: `sample_data/demo_dafl_cnn` (the attention CNN trained "
        "on 32-px patches of normal tissue, look-alikes and lesions at 1 um/px), every tissue "
        f"tile, CPU. `before` is {args.against} (slide call: the mean of the tile "
        "probabilities; heatmap: attention times each tile's probability of the called "
        f"class); this checkout calls with `slide_top_k` = {DEFAULT_TOP_K}, chosen on "
        f"{n_val} validation slides from other unseen seeds (second table). Test slides "
        "below; localisation over the positive slides' tissue cells.",
        "",
        "| test slides | code | slide acc. | ROC AUC | loc. AUC (tissue) | loc. AUC (lesion vs "
        "look-alike) | heat mass in lesion | s per slide |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SETS:
        idx = [j for j in test if items[j]["set"] == name]
        sub = [items[j] for j in idx]
        for label, rows in (("before", before), ("**this checkout**", now)):
            s = _engine_scores(sub, [rows[j] for j in idx])
            lines.append(
                f"| {name} ({len(sub)}) | {label} | {_fmt(s, 'accuracy')} | {_fmt(s, 'roc_auc')} "
                f"| {_fmt(s, 'loc_tissue')} | {_fmt(s, 'loc_lookalike')} | {_fmt(s, 'mass')} "
                f"| {s['seconds']:.1f} |"
            )
    lines += ["", "The rule's `slide_top_k` (0: the mean of the tiles) on this checkout's tile "
              "probabilities: slide accuracy / ROC AUC.", "",
              "| slides | " + " | ".join(f"k = {k}" for k in SWEEP) + " |",
              "|---|" + "---|" * len(SWEEP)]  # fmt: skip
    pooled = []
    for split in ("val", "test"):
        for name in SETS:
            idx = [j for j, i in enumerate(items) if i["set"] == name and i["split"] == split]
            sub, rows = [items[j] for j in idx], [now[j] for j in idx]
            cells = [_sweep(sub, rows, k) for k in SWEEP]
            lines.append(f"| {split}: {name} ({len(sub)}) | " + " | ".join(
                f"{c['accuracy']:.2f} / {c['roc_auc']:.2f}" for c in cells) + " |")  # fmt: skip
        idx = [j for j, i in enumerate(items) if i["split"] == split]
        pooled.append([_sweep([items[j] for j in idx], [now[j] for j in idx], k)["accuracy"]
                       for k in SWEEP])  # fmt: skip
    best = SWEEP[int(np.argmax(pooled[0]))]  # the smallest k of the best validation accuracy
    lines += ["", f"Validation chooses k = {best} (pooled accuracy {max(pooled[0]):.2f}); "
              f"the engine's default is {DEFAULT_TOP_K}."]  # fmt: skip
    speed = _speed()
    lines += ["", f"The sample slide (12,000 x 9,000 px at 0.5 um/px, {speed['tiles']:,} tissue "
              f"tiles, {speed['threads']} threads), in process with the model loaded: classify "
              f"{speed['plain']:.1f} s; with Grad-CAM, guided Grad-CAM and saliency "
              f"{speed['explained']:.1f} s; the model alone on as many random tiles "
              f"{speed['model']:.1f} s (its compute floor on this CPU)."]  # fmt: skip
    lines.append(END)
    text = "\n".join(lines)
    _write_section(text, START, END)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
