"""Classify at gigapixel scale: attention sampling and A-MIL against a baseline and the limits.

For each slide size (generated once with ``histattn synth`` and cached outside git in
``benchmarks/_work/``), each measurement in a fresh process:

- **attention sampling** and **A-MIL** (the demo checkpoints) with this checkout and with
  ``--against REV`` (a ``git archive`` of that commit on ``PYTHONPATH``, same venv): a
  warm-up classify of a small slide (model loaded, libraries imported), then one timed
  ``classify()``: wall and CPU time, peak RSS, the stage split.
- **limits** for the same work, same run: for A-MIL the raw ``OpenSlide.read_region``
  of every tissue tile of the plan at its level, one call per tile in one thread (the
  read+decode limit), and the encoder alone on random tiles of the same count (the model
  limit); for attention sampling the attention network alone over the view's tissue
  tiles, read beforehand (its compute floor on this CPU).
- **cohort**: ``histattn batch`` of four generated 8,000^2 slides with A-MIL, in this
  process (``--dask-workers 0``) and on a local Dask cluster of 1 and 2 workers.

Results go to ``RESULTS.md`` between ``<!-- classify:start -->`` and
``<!-- classify:end -->``.

    .venv/bin/python benchmarks/classify.py [--sizes 20000 50000 100000] [--amil-sizes 20000 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # features.py: the machine line, RESULTS sections
WORK = ROOT / "benchmarks" / "_work" / "classify"
START, END = "<!-- classify:start -->", "<!-- classify:end -->"
CHECKPOINTS = {
    "attention sampling": ROOT / "sample_data" / "demo_attention_sampling.safetensors",
    "A-MIL": ROOT / "sample_data" / "demo_amil.safetensors",
}
#: Slides made earlier by benchmarks/features.py are reused when present.
KNOWN = {20000: ROOT / "benchmarks/_work/features/slides/features-20000.tiff",
         50000: ROOT / "benchmarks/_work/features/slides/features-50000.tiff"}  # fmt: skip

RUNNER = textwrap.dedent(
    """
    import json, resource, sys, time
    mode, checkpoint, slide, warm = sys.argv[1:5]
    import numpy as np, torch
    from napari_histattn.models.checkpoint import load
    ck = load(checkpoint, device="cpu")
    out = {}
    if mode == "classify":
        from napari_histattn.inference.engine import classify
        from napari_histattn.progress import run_to_completion
        run_to_completion(classify(warm, ck, device="cpu"))
        t0, c0 = time.perf_counter(), time.process_time()
        r = run_to_completion(classify(slide, ck, device="cpu"))
        out = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
               "stages": r.provenance["timings_s"], "call": r.predicted_class,
               "p": float(max(r.probabilities)), "n": int(r.provenance.get("n_patches", 0))}
    elif mode == "amil_limits":
        import openslide
        from napari_histattn.inference.patches import plan_tiles
        from napari_histattn.io.slide import open_slide
        pre = ck.preprocessing
        with open_slide(slide) as s:
            ds = pre["target_mpp"] / float(np.mean(s.mpp_xy))
            plan = plan_tiles(s, int(pre["patch_size"]), ds)
            level = s.best_level_for_downsample(ds)
            side = round(plan.patch_size * ds / s.level_downsamples[level])
        raw = openslide.OpenSlide(slide)
        t0 = time.perf_counter()
        for x, y in plan.l0_xy.tolist():
            raw.read_region((x, y), level, (side, side))
        out["read"] = time.perf_counter() - t0
        model = ck.model.eval()
        x = torch.rand(128, 3, plan.patch_size, plan.patch_size)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(plan), 128):
                model.encode(x[: min(128, len(plan) - start)], chunk_size=None)
        out.update(model=time.perf_counter() - t0, tiles=len(plan))
    elif mode == "ats_network":
        from napari_histattn.inference.lowres import LowResView
        from napari_histattn.inference.patches import TissueSettings
        from napari_histattn.io.slide import open_slide
        pre = ck.preprocessing
        net = ck.model.eval()
        with open_slide(slide) as s:
            ds = pre["target_mpp"] / float(np.mean(s.mpp_xy)) * pre["downscale"]
            view = LowResView(s, ds, tile=512, halo=net.attention_net.halo,
                              tissue=TissueSettings(), mean=pre["mean"], std=pre["std"])
            crops = [t.crop for t in view]
        t0 = time.perf_counter()
        with torch.inference_mode():
            for crop in crops:
                net.attention_scores(crop)
        out.update(network=time.perf_counter() - t0,
                   mpx=sum(c.shape[-1] * c.shape[-2] for c in crops) / 1e6)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
    """
)


def _slide(size: int) -> Path:
    if size in KNOWN and KNOWN[size].exists():
        return KNOWN[size]
    path = WORK / f"classify-{size}.tiff"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        argv = [str(ROOT / ".venv/bin/histattn"), "synth", str(path), "--size", f"{size}x{size}"]
        subprocess.run([*argv, "--seed", "7", "--workers", "2", "--quiet"], check=True)
    return path


def _measure(mode: str, checkpoint: Path, slide: Path, code: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    warm = _slide_small()
    argv = [sys.executable, "-c", RUNNER, mode, str(checkpoint), str(slide), str(warm)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} on {slide.name} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _slide_small() -> Path:
    path = WORK / "warm-2048.tiff"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        argv = [str(ROOT / ".venv/bin/histattn"), "synth", str(path), "--size", "2048x2048"]
        subprocess.run([*argv, "--lesions", "1", "--lookalikes", "0", "--quiet"], check=True)
    return path


def _baseline(rev: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="histattn-base-"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def _cohort() -> list[tuple[str, float, int]]:
    slides = WORK / "cohort"
    slides.mkdir(parents=True, exist_ok=True)
    for seed in range(4):
        path = slides / f"c{seed}.tiff"
        if not path.exists():
            argv = [str(ROOT / ".venv/bin/histattn"), "synth", str(path), "--size", "8000x8000"]
            subprocess.run([*argv, "--seed", str(seed), "--quiet"], check=True)
    rows = []
    for label, extra in (("in process", ["--dask-workers", "0"]),
                         ("Dask, 1 worker", ["--dask-workers", "1"]),
                         ("Dask, 2 workers", ["--dask-workers", "2"])):  # fmt: skip
        out = Path(tempfile.mkdtemp(prefix="histattn-cohort-"))
        argv = [str(ROOT / ".venv/bin/histattn"), "batch", str(slides), "--checkpoint",
                str(CHECKPOINTS["A-MIL"]), "--out", str(out), "--device", "cpu", "--quiet", *extra]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        rows.append((label, seconds, proc.returncode))
    return rows


def _table(args: argparse.Namespace) -> str:
    from features import _machine

    base = _baseline(args.against)
    machine = _machine()
    lines = [
        "## Classify at gigapixel scale (`benchmarks/classify.py`)",
        "",
        f"Machine: {machine}. Command: `python benchmarks/classify.py --sizes "
        f"{' '.join(map(str, args.sizes))} --amil-sizes {' '.join(map(str, args.amil_sizes))}`. "
        f"Generated slides (0.5 um/px, JPEG pyramid, factor-4 levels for 20k^2 and 50k^2, "
        f"2x-4x for 100k^2), demo checkpoints, CPU, one run each in a fresh process after a "
        f"warm-up classify of a small slide (model loaded). `before` is {args.against}.",
        "",
        "| model | slide | before: wall s (CPU s, peak RSS MB) | **this checkout** | stages now (s) "
        "| limit in the same run | call |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in args.sizes:
        slide = _slide(size)
        for model in ("attention sampling", "A-MIL"):
            if model == "A-MIL" and size not in args.amil_sizes:
                continue
            ck = CHECKPOINTS[model]
            before = _measure("classify", ck, slide, base)
            now = _measure("classify", ck, slide)
            if model == "A-MIL":
                lim = _measure("amil_limits", ck, slide)
                limit = (
                    f"read+decode {lim['read']:.1f} s, encoder {lim['model']:.1f} s "
                    f"({lim['tiles']:,} tiles); now / max = "
                    f"{now['wall'] / max(lim['read'], lim['model']):.2f}x"
                )
            else:
                lim = _measure("ats_network", ck, slide)
                limit = (
                    f"attention network alone {lim['network']:.2f} s over "
                    f"{lim['mpx']:.1f} Mpx of tissue tiles"
                )
            stages = ", ".join(
                f"{k} {v:.2f}" for k, v in now["stages"].items() if k != "wall" and v >= 0.01
            )
            lines.append(
                f"| {model} | {size:,}^2 | {before['wall']:.2f} ({before['cpu']:.1f}, "
                f"{before['peak_rss_mb']:.0f}) | **{now['wall']:.2f}** ({now['cpu']:.1f}, "
                f"{now['peak_rss_mb']:.0f}) | {stages} | {limit} | {now['call']} "
                f"{now['p']:.2f} |"
            )
            print(lines[-1], flush=True)
    lines += ["", "Cohort: four generated 8,000^2 slides, `histattn batch` with the demo A-MIL "
              "(process start, cluster start and the four slides):", "",
              "| where | wall s | slides per hour | exit |", "|---|---|---|---|"]  # fmt: skip
    for label, seconds, code in _cohort():
        lines.append(f"| {label} | {seconds:.1f} | {4 * 3600 / seconds:.0f} | {code} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 50000, 100000])
    parser.add_argument("--amil-sizes", type=int, nargs="+", default=[20000, 50000])
    parser.add_argument("--against", default="c19e6c7", help="baseline commit")
    args = parser.parse_args()
    from features import _write_section

    _write_section(f"{START}\n{_table(args)}\n{END}", START, END)
    print("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
