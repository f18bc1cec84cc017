"""CLAM's whole pipeline on a slide (patching, features, heatmap) beside ``histattn classify``.

CLAM (Lu et al. 2021; a checkout fetched for the benchmark and run from outside this
repository, never committed: ``--clam DIR``) as its README runs it:

1. ``create_patches_fp.py --seg --patch --stitch``: tissue segmentation and 256-px patches
   at level 0 (its defaults);
2. ``extract_features_fp.py``: the ResNet-50 trunk (``resnet50_trunc``) at 224 px, random
   weights (only speed is compared; ``benchmarks/features.py``'s wrapper);
3. the heatmap: a CLAM-SB attention network (random weights, 1,024-d input) on those
   features, then ``drawHeatmap`` of ``vis_utils/heatmap_utils.py`` with percentile scores
   on a segmented ``WholeSlideImage`` at the level nearest downsample 32, as
   ``create_heatmaps.py`` draws its first heatmap.

Ours in the same run: ``classify()`` with the demo A-MIL and attention sampling in a fresh
process (model loaded, warm-up classify first), which also writes nothing; and
``histattn classify`` end to end (process start, heatmap PNG, regions, summary).
CLAM needs OpenCV, which this project does not: ``pip install --target
benchmarks/_work/features/clam-site opencv-python-headless`` once.

    .venv/bin/python benchmarks/clam_pipeline.py --clam benchmarks/_work/CLAM [--size 20000]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from classify import CHECKPOINTS, _measure, _slide  # noqa: E402
from features import CLAM_WRAPPER  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "clam-pipeline"
SITE = ROOT / "benchmarks" / "_work" / "features" / "clam-site"
START, END = "<!-- clam-pipeline:start -->", "<!-- clam-pipeline:end -->"

HEATMAP = textwrap.dedent(
    """
    import sys, time, json
    clam, slide, feats, out = sys.argv[1:5]
    sys.path.insert(0, clam)
    import h5py, numpy as np, torch
    from models.model_clam import CLAM_SB
    from vis_utils.heatmap_utils import drawHeatmap, initialize_wsi
    started = time.perf_counter()
    with h5py.File(feats, "r") as f:
        features, coords = torch.from_numpy(f["features"][:]), f["coords"][:]
    torch.manual_seed(0)
    model = CLAM_SB(embed_dim=features.shape[1]).eval()
    with torch.inference_mode():
        scores = model(features, attention_only=True)[0].numpy()
    # create_patches_fp.py's defaults (which found the tissue it patched)
    seg = {"seg_level": -1, "sthresh": 8, "mthresh": 7, "close": 4, "use_otsu": False,
           "keep_ids": [], "exclude_ids": []}
    filt = {"a_t": 100, "a_h": 16, "max_n_holes": 8}
    wsi = initialize_wsi(slide, seg_mask_path=out + ".pkl", seg_params=seg, filter_params=filt)
    heatmap = drawHeatmap(scores, coords, slide, wsi_object=wsi, cmap="jet", alpha=0.4,
                          use_holes=True, binarize=False, vis_level=-1, blank_canvas=False,
                          thresh=-1, patch_size=(256, 256), convert_to_percentiles=True)
    heatmap.save(out + ".png")
    print("HEATMAP " + json.dumps({"wall": time.perf_counter() - started, "n": len(scores)}))
    """
)


def _timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=str(cwd), env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def _clam(clam: Path, slide: Path) -> dict[str, float]:
    run = WORK / slide.stem
    source = run / "source"
    source.mkdir(parents=True, exist_ok=True)
    link = source / slide.name
    if not link.exists():
        link.symlink_to(slide.resolve())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), *sys.path])}
    py = sys.executable
    patch_s, _ = _timed(
        [py, "create_patches_fp.py", "--source", str(source), "--save_dir", str(run),
         "--patch_size", "256", "--seg", "--patch", "--stitch"], clam, env,
    )  # fmt: skip
    (run / "list.csv").write_text(f"slide_id\n{slide.stem}\n")
    feats = run / "feats"
    argv = [py, "-c", CLAM_WRAPPER, str(clam), "--data_h5_dir", str(run), "--data_slide_dir",
            str(source), "--csv_path", str(run / "list.csv"), "--feat_dir", str(feats),
            "--slide_ext", ".tiff", "--batch_size", "64", "--no_auto_skip",
            "--target_patch_size", "224"]  # fmt: skip
    feature_s, _ = _timed(argv, clam, env)
    h5 = feats / "h5_files" / f"{slide.stem}.h5"
    argv = [py, "-c", HEATMAP, str(clam), str(link), str(h5), str(run / "heatmap")]
    heat_s, out = _timed(argv, clam, env)
    n = json.loads(out.split("HEATMAP ", 1)[1].splitlines()[0])["n"]
    return {"patching": patch_s, "features": feature_s, "heatmap": heat_s, "patches": n}


def _ours_cli(slide: Path, model: str) -> float:
    out = Path(tempfile.mkdtemp(prefix="histattn-clam-"))
    argv = [str(ROOT / ".venv/bin/histattn"), "classify", str(slide), "--checkpoint",
            str(CHECKPOINTS[model]), "--out", str(out), "--device", "cpu", "--quiet"]  # fmt: skip
    seconds, _ = _timed(argv, Path(tempfile.gettempdir()), dict(os.environ))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clam", type=Path, required=True, help="a CLAM checkout")
    parser.add_argument("--size", type=int, default=20000)
    args = parser.parse_args()
    from features import _machine, _write_section

    machine = _machine()
    slide = _slide(args.size)
    clam = _clam(args.clam.resolve(), slide)
    total = clam["patching"] + clam["features"] + clam["heatmap"]
    lines = [
        START,
        f"## CLAM's pipeline against ours on one {args.size:,}^2 slide "
        "(`benchmarks/clam_pipeline.py`)",
        "",
        f"Machine: {machine}. Command: `python benchmarks/clam_pipeline.py --clam CLAM "
        f"--size {args.size}`. CLAM: patching {clam['patching']:.1f} s, features "
        f"{clam['features']:.1f} s ({clam['patches']:,} patches of 256 px at level 0, "
        f"ResNet-50 trunk, random weights), heatmap {clam['heatmap']:.1f} s; each a fresh "
        "process as its README runs them.",
        "",
        "| pipeline | wall s | vs CLAM |",
        "|---|---|---|",
        f"| CLAM: patching + features + heatmap | {total:.1f} | 1.0x |",
    ]
    for model in ("A-MIL", "attention sampling"):
        inproc = _measure("classify", CHECKPOINTS[model], slide)
        cli = _ours_cli(slide, model)
        lines += [
            f"| ours, {model}: `classify()` in process, model loaded | {inproc['wall']:.1f} "
            f"| {total / inproc['wall']:.0f}x faster |",
            f"| ours, {model}: `histattn classify` end to end (process start, outputs) "
            f"| {cli:.1f} | {total / cli:.0f}x faster |",
        ]
        print(*lines[-2:], sep="\n", flush=True)
    lines.append(END)
    _write_section("\n".join(lines), START, END)
    print("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
