"""Attention sampling's call over seeds: one sampling round against several, and what they cost.

The demo attention-sampling checkpoint classifies each test slide of
``benchmarks/small_lesions.py`` (run that first) with seeds 0-4, once with one
sampling round and once with ``--rounds`` rounds; reported per setting: the
median over slides of the range (max - min) of p(lesion) over the seeds, the
largest range, how many slides' calls flip between seeds, slide accuracy (of the
seed-0 call), and the median classify time in process (model loaded, slide
opened per call). Results go to ``RESULTS.md`` between
``<!-- sampling-rounds:start -->`` and ``<!-- sampling-rounds:end -->``.

    .venv/bin/python benchmarks/sampling_rounds.py [--rounds 4] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
TEST = ROOT / "benchmarks" / "_work" / "small-lesions" / "test"
CHECKPOINT = ROOT / "sample_data" / "demo_attention_sampling.safetensors"
START, END = "<!-- sampling-rounds:start -->", "<!-- sampling-rounds:end -->"


def measure(slides: list[Path], rounds: int, seeds: int) -> dict[str, object]:
    from napari_histattn.inference.engine import classify
    from napari_histattn.models.checkpoint import load
    from napari_histattn.progress import run_to_completion

    ckpt = load(CHECKPOINT, device="cpu")
    p = np.zeros((len(slides), seeds))
    seconds = []
    for i, slide in enumerate(slides):
        for seed in range(seeds):
            started = time.perf_counter()
            result = run_to_completion(
                classify(slide, ckpt, device="cpu", seed=seed, params={"rounds": rounds})
            )
            seconds.append(time.perf_counter() - started)
            p[i, seed] = result.probabilities_by_class["lesion"]
    width = p.max(axis=1) - p.min(axis=1)
    calls = p >= 0.5
    truth = np.array([s.name.startswith("pos") for s in slides])
    return {
        "rounds": rounds,
        "median_range": float(np.median(width)),
        "max_range": float(width.max()),
        "flipping_slides": int(np.sum(calls.any(axis=1) & ~calls.all(axis=1))),
        "accuracy_seed0": float(np.mean(calls[:, 0] == truth)),
        "median_seconds": float(np.median(seconds)),
    }


def main() -> int:
    from features import _machine, _write_section

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    slides = sorted(TEST.glob("*.tiff"))
    if not slides:
        raise SystemExit("run benchmarks/small_lesions.py first (it makes the test slides)")
    machine = _machine()
    rows = [measure(slides, r, args.seeds) for r in (1, args.rounds)]
    for row in rows:
        print(json.dumps(row), file=sys.stderr)
    lines = [
        START,
        "## Attention sampling over seeds: sampling rounds (`benchmarks/sampling_rounds.py`)",
        "",
        f"Machine: {machine}. `demo_attention_sampling` (64 patches per round) on the "
        f"{len(slides)} small-lesion test slides (3,072^2 px), seeds 0-{args.seeds - 1}; range "
        "= max - min of p(lesion) over the seeds; time = one classify call in process, model "
        "loaded.",
        "",
        "| rounds | median range | largest range | slides whose call flips | accuracy (seed 0) "
        "| median time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rounds']} | {r['median_range']:.3f} | {r['max_range']:.3f} | "
            f"{r['flipping_slides']} | {r['accuracy_seed0']:.2f} | {r['median_seconds']:.2f} s |"
        )
    lines.append(END)
    _write_section("\n".join(lines), START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
