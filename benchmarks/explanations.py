"""Attention against post-hoc explanations, scored against the lesions' ground truth.

The seeds disagree: one reports that attention localises better than Grad-CAM, another
that saliency maps of attention and plain models are "similar or completely disparate,
without apparent meaning". Generated slides have exact lesion masks, so here the demo
attention CNN (``sample_data/demo_dafl_cnn``) classifies the positive test slides of
``benchmarks/patch_calls.py`` (one lesion of 30-50 um radius among look-alikes of its
size; and lesions of 100-150 um) with ``explain="gradcam,guided_gradcam,saliency"``,
and every map on the same grid is scored:

- ``attention``: the model's S-Attn attention times each tile's evidence for the call
  (the heatmap the viewer shows);
- ``tile probability``: each tile's evidence alone (``P(class >= lesion)``, no attention
  and no gradient: the patch classifier's own map);
- ``gradcam``, ``guided_gradcam``, ``saliency``: :mod:`napari_histattn.inference.explain`,
  of each tile's log-odds of that evidence.

Scores (mean over slides): localisation ROC AUC over tissue cells and against look-alike
cells alone, the pointing game (the map's maximum lies in the lesion), and the map's mass
in the lesion. Results go to ``RESULTS.md`` between ``<!-- explanations:start -->`` and
``<!-- explanations:end -->``, with a figure of the maps in ``docs/explanations.png``.

    .venv/bin/python benchmarks/explanations.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
START, END = "<!-- explanations:start -->", "<!-- explanations:end -->"
FIGURE = ROOT / "docs" / "explanations.png"
MAPS = ("attention", "tile probability", "gradcam", "guided_gradcam", "saliency")


def _maps(result: Any) -> dict[str, np.ndarray]:
    lesion = result.class_names.index("lesion")
    return {
        "attention": np.asarray(result.attention, dtype=np.float64),
        "tile probability": np.asarray(result.cell_probs[..., lesion:].sum(axis=-1)),
        **{k: np.asarray(v, dtype=np.float64) for k, v in result.explanations.items()},
    }


def _pointing(values: np.ndarray, labels: np.ndarray) -> float:
    score = np.where(np.isfinite(values), values, -np.inf)
    return float(labels.flat[int(np.argmax(score))] == 3)


def _figure(panels: list[tuple[str, np.ndarray, Any, np.ndarray]]) -> None:
    """One row per slide: the slide's thumbnail, then each map over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), len(MAPS) + 1, figsize=(2.2 * (len(MAPS) + 1),
                             2.3 * len(panels)), squeeze=False)  # fmt: skip
    for row, (name, thumb, maps, labels) in zip(axes, panels, strict=True):
        row[0].imshow(thumb)
        row[0].contour(labels == 3, levels=[0.5], colors="lime", linewidths=0.8,
                       extent=(0, thumb.shape[1], 0, thumb.shape[0]))  # fmt: skip
        row[0].set_title(name, fontsize=7)
        for ax, key in zip(row[1:], MAPS, strict=True):
            values = maps[key]
            top = float(np.nanpercentile(values, 99.5)) if np.isfinite(values).any() else 1.0
            ax.imshow(values, cmap="inferno", vmin=0.0, vmax=max(top, 1e-12))
            ax.contour(labels == 3, levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_title(key, fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("demo attention CNN: lesion outlined in green; each map from 0 to its "
                 "99.5th percentile", fontsize=9)  # fmt: skip
    fig.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=110)


def main() -> int:
    from features import _machine, _write_section
    from patch_calls import CHECKPOINT, _slides
    from slide_labels import _localisation, grid_labels

    from napari_histattn.inference.engine import classify
    from napari_histattn.io.slide import open_slide
    from napari_histattn.models.checkpoint import load
    from napari_histattn.progress import run_to_completion

    machine = _machine()
    items = [i for i in _slides() if i["split"] == "test" and i["positive"]]
    ck = load(CHECKPOINT, device="cpu")
    scores: dict[str, dict[str, list[float]]] = {}
    panels: dict[str, tuple[str, np.ndarray, Any, np.ndarray]] = {}
    seconds = []
    for item in items:
        slide = Path(item["slide"])
        t0 = time.perf_counter()
        result = run_to_completion(classify(slide, ck, device="cpu",
                                            explain="gradcam,guided_gradcam,saliency"))  # fmt: skip
        seconds.append(time.perf_counter() - t0)
        labels = grid_labels(result, slide, item["size"])
        maps = _maps(result)
        for key, values in maps.items():
            found = _localisation(result, slide, item["size"], values)
            found["pointing"] = _pointing(values, labels)
            for metric, value in found.items():
                scores.setdefault(item["set"], {}).setdefault(f"{key}|{metric}", []).append(value)
        if item["set"] not in panels:  # the first slide of each set
            with open_slide(slide) as opened:
                thumb = np.asarray(opened.thumbnail(400))
            panels[item["set"]] = (item["set"], thumb, maps, labels)
    _figure(list(panels.values()))
    lines = [
        START,
        "## Attention against post-hoc explanations (`benchmarks/explanations.py`)",
        "",
        f"Machine: {machine}. Model: `sample_data/demo_dafl_cnn`, every tissue tile, the "
        f"positive test slides of `benchmarks/patch_calls.py`; {np.mean(seconds):.1f} s per "
        "slide with the three explanations (about 5x a plain classify). Each map is on the "
        "attention's grid (8 x 8 cells per 32-um tile); mean over slides. Pointing game: "
        "the map's maximum lies in the lesion. Figure: `docs/explanations.png`.",
        "",
        "| slides | map | loc. AUC (tissue) | loc. AUC (lesion vs look-alike) | pointing game "
        "| mass in lesion |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_key in scores.items():
        n = len(by_key[f"{MAPS[0]}|mass"])
        for key in MAPS:
            m = {metric: float(np.nanmean(by_key[f"{key}|{metric}"]))
                 for metric in ("auc_tissue", "auc_lookalike", "pointing", "mass")}  # fmt: skip
            lines.append(f"| {name} ({n}) | {key} | {m['auc_tissue']:.2f} | "
                         f"{m['auc_lookalike']:.2f} | {m['pointing']:.2f} | {m['mass']:.2f} |")  # fmt: skip
    lines.append(END)
    text = "\n".join(lines)
    _write_section(text, START, END)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
