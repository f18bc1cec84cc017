"""Fine-tune on a reviewer's corrections: how long the worker runs, stage by stage,
beside classifying the same slide, and what it changes.

The sample slide (12000 x 9000 px at 0.5 um/px, two lesions and two look-alikes; it is
generated into the cache on first use), the demo A-MIL, and the reviewer's marks the
ground truth gives: the lesions outlined as *lesion*, the look-alikes as *benign*.
Timed, after one untimed warm-up run: Classify with the demo (the reference in the same
run), then
``fine_tune_on_corrections`` (the "Fine-tune on my corrections" worker and ``histattn
finetune``) by its progress stages (tissue, encode, fine-tune), then Classify with the
new checkpoint. Results go to ``RESULTS.md`` between ``<!-- finetune:start -->`` and
``<!-- finetune:end -->``.

    .venv/bin/python benchmarks/finetune.py [--epochs 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "sample_data" / "demo_amil.safetensors"
START, END = "<!-- finetune:start -->", "<!-- finetune:end -->"


def _timed_stages(gen: Any) -> tuple[Any, dict[str, float]]:
    """Drain a progress generator; seconds from each stage's first report to the next's."""
    stages: dict[str, float] = {}
    current, since = None, time.perf_counter()
    try:
        while True:
            report = next(gen)
            if report.stage != current:
                now = time.perf_counter()
                if current is not None:
                    stages[current] = stages.get(current, 0.0) + now - since
                current, since = report.stage, now
    except StopIteration as stop:
        if current is not None:
            stages[current] = stages.get(current, 0.0) + time.perf_counter() - since
        return stop.value, stages


def _classify(slide: Path, checkpoint: Path) -> tuple[Any, float]:
    from napari_histattn.inference.engine import classify
    from napari_histattn.progress import run_to_completion

    t0 = time.perf_counter()
    result = run_to_completion(classify(slide, checkpoint, device="cpu", seed=0))
    return result, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from features import _machine, _write_section
    from shapely.geometry import Polygon

    from napari_histattn.inference.review import expert_regions
    from napari_histattn.io.export import write_geojson
    from napari_histattn.io.regions import Region
    from napari_histattn.io.synthetic import synthetic_sample_slide
    from napari_histattn.training.corrections import fine_tune_on_corrections

    machine = _machine()
    sample = synthetic_sample_slide()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        marks = [Region(Polygon(x.polygon_xy()), class_name="lesion") for x in sample.scene.lesions]
        marks += [
            Region(Polygon(x.polygon_xy()), class_name="benign") for x in sample.scene.lookalikes
        ]
        corrections = write_geojson(folder / "marks.geojson", expert_regions(marks, author="gt"))
        _classify(sample.path, DEMO)  # warm-up: torch's first run in a process
        before, classify_s = _classify(sample.path, DEMO)
        t0 = time.perf_counter()
        tuned, stages = _timed_stages(
            fine_tune_on_corrections(
                DEMO,
                sample.path,
                corrections,
                folder / "tuned.safetensors",
                epochs=args.epochs,
                device="cpu",
            )
        )
        finetune_s = time.perf_counter() - t0
        after, classify_after_s = _classify(sample.path, tuned.checkpoint_path)
    rows = [
        ("Classify, demo A-MIL (the reference)", classify_s),
        *((f"fine-tune: {stage}", seconds) for stage, seconds in stages.items()),
        (f"fine-tune, in all ({args.epochs} epochs)", finetune_s),
        ("Classify, fine-tuned checkpoint", classify_after_s),
    ]
    table = "\n".join(
        f"| {name} | {seconds:.1f} | {seconds / classify_s:.1f} |" for name, seconds in rows
    )
    text = f"""{START}
## Fine-tune on the reviewer's corrections (`benchmarks/finetune.py`)

Machine: {machine}. The sample slide ({sample.scene.width} x {sample.scene.height} px at 0.5 um/px), the demo A-MIL on the CPU, marks from the ground truth ({len(sample.scene.lesions)} lesions as lesion, {len(sample.scene.lookalikes)} look-alikes as benign). What the "Fine-tune on my corrections" worker runs: its stages, each against Classify on the same slide in the same run.

| step | seconds | x Classify |
|---|---|---|
{table}

Changed by it: {tuned.summary()} The slide's call: {before.predicted_class} {max(before.probabilities):.3f} before, {after.predicted_class} {max(after.probabilities):.3f} after.
{END}"""
    _write_section(text, START, END)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
