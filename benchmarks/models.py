"""Synthetic localisation benchmark of the attention models (issue 3, item 7).

Run from the repository root::

    .venv/bin/python benchmarks/models.py            # full run, ~60 min on 2 busy CPU cores
    .venv/bin/python benchmarks/models.py --quick    # smoke run, a few minutes, not recorded

Data: square generated images (``benchmarks/_models/data.py``), 2048 x 2048 px
scenes at 0.5 um/px seen at 1.0 um/px (1024 x 1024 px). Lesion images carry one
lesion and two benign look-alikes, benign images three look-alikes, so every
image has three dark regions of the same size at low resolution. Training:
images with lesion radius 150, 125 and 100 um (a curriculum, largest first);
test: unseen seeds with 100 um lesions.

Compared on the same test images: a low-resolution-only CNN (it sees the 8 um/px
view the attention network sees; it must stay near chance, or the data does not
force high resolution), uniform and "darkest regions" attention, attention
sampling and A-MIL each two-stage and end-to-end (see
``benchmarks/_models/recipes.py``), and the channel/spatial attention CNN on
patch classification (normal / look-alike / lesion).

Writes ``benchmarks/_work/models/results-<time>.json`` and (not with
``--quick``) the "Models" section of ``benchmarks/RESULTS.md`` between the
``<!-- models:start -->`` and ``<!-- models:end -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from benchmarks._models import data as D  # noqa: E402
from benchmarks._models import recipes as R  # noqa: E402
from napari_histattn.models.registry import create_model  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "models"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- models:start -->", "<!-- models:end -->"
SEED = 7
PATCH = 32
DOWNSCALE = 8


def log(msg: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"{stamp} {msg}", flush=True)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        import psutil

        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gb,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(v, 1) for v in os.getloadavg()],
    }


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "n_train": {150.0: 6, 125.0: 6, 100.0: 8},
            "n_test": 12,
            "per_class": 16,
            "stage1_epochs": 1,
            "as_stage2_epochs": (1, 1, 1),
            "as_e2e_epochs": (1, 1, 1),
            "amil_head_epochs": 5,
            "amil_e2e_epochs": (1, 0, 1),
            "dafl_epochs": 1,
            "lowres_epochs": 3,
            "e2e_limit_s": 120.0,
        }
    return {
        "n_train": {150.0: 48, 125.0: 48, 100.0: 96},
        "n_test": 80,
        "per_class": 16,
        "stage1_epochs": 5,
        "as_stage2_epochs": (6, 6, 24),
        "as_e2e_epochs": (10, 10, 30),
        "amil_head_epochs": 40,
        "amil_e2e_epochs": (4, 4, 8),
        "dafl_epochs": 3,
        "lowres_epochs": 15,
        "e2e_limit_s": 20 * 60.0,
    }


AS_BASE = {
    "n_classes": 2,
    "patch_size": PATCH,
    "downscale": DOWNSCALE,
    "feature_dim": 32,
    "feature_scale": 5.0,
    "entropy_weight": 0.01,
    "replace": False,
    "aggregation": "expectation",
}
AMIL_BASE = {
    "encoder": "small_cnn",
    "patch_size": PATCH,
    "n_classes": 2,
    "embed_dim": 128,
    "attn_dim": 64,
    "gated": True,
}


def run(quick: bool, workers: int, cache: Path) -> dict[str, Any]:
    cfg = settings(quick)
    torch.manual_seed(SEED)
    spec = D.DataSpec()
    res: dict[str, Any] = {
        "machine": machine(),
        "quick": quick,
        "settings": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k != "n_train"
        },
    }
    res["settings"]["n_train"] = {str(k): v for k, v in cfg["n_train"].items()}
    t0 = time.perf_counter()

    # ---------------------------------------------------------------- data
    phases_data = [
        D.build_images(
            spec,
            range(start, start + cfg["n_train"][radius]),
            radius,
            cache_dir=cache,
            workers=workers,
        )
        for radius, start in D.TRAIN_SEEDS_BY_RADIUS.items()
    ]
    train = D.ImageSet.concat(phases_data)
    test = D.build_images(
        spec,
        range(D.TEST_SEED_START, D.TEST_SEED_START + cfg["n_test"]),
        100.0,
        cache_dir=cache,
        workers=workers,
    )
    log(f"data: {len(train)} train, {len(test)} test images ({time.perf_counter() - t0:.0f} s)")
    mean, std = D.mean_std(train)
    patches, classes = D.sample_patches(train, PATCH, cfg["per_class"], seed=SEED)
    test_patches, test_classes = D.sample_patches(test, PATCH, 12, seed=SEED + 1)
    res["data"] = {
        "spec": {
            "size_l0": spec.size_l0,
            "scene_mpp": spec.scene_mpp,
            "model_mpp": spec.model_mpp,
            "n_regions": spec.n_regions,
            "tissue_fraction": spec.tissue_fraction,
        },
        "train": train.summary(),
        "test": test.summary(),
        "mean": mean,
        "std": std,
        "stage1_patches": np.bincount(classes).tolist(),
        "test_patches": np.bincount(test_classes).tolist(),
        "render_seconds": round(time.perf_counter() - t0, 1),
    }
    rows: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- baselines
    for ds in (DOWNSCALE, 2 * DOWNSCALE):
        log(f"baseline: low-resolution-only CNN at {ds} um/px")
        v_train = R.low_res_views(train, mean, std, ds)
        v_test = R.low_res_views(test, mean, std, ds)
        net, hist = R.train_low_res_cnn(
            v_train, train.y, epochs=cfg["lowres_epochs"], seed=SEED, log=log
        )
        with torch.no_grad():
            p_test = torch.softmax(net(v_test).double(), 1).numpy()
            p_train = torch.softmax(net(v_train).double(), 1).numpy()
        rows[f"low-res CNN ({ds} um/px view only)"] = {
            **R.image_metrics(test, p_test, None),
            "train_accuracy": float((p_train.argmax(1) == train.y).mean()),
            "train_seconds": hist.seconds,
        }
    dark = R.darkness_attention(test, DOWNSCALE)
    rows["uniform attention (on tissue)"] = R.image_metrics(
        test, None, R.uniform_attention(test, DOWNSCALE)
    )
    rows["darkest regions (top 5 % darkest tissue cells)"] = R.image_metrics(
        test, None, dark, R.top_fraction(dark)
    )
    log(f"baselines: {json.dumps(rows, default=float)}")

    # ---------------------------------------------------------------- DAFL patch classifier
    log("DAFL channel/spatial attention CNN on patches")
    torch.manual_seed(SEED)
    dafl = create_model(
        "dafl_cnn",
        backbone="vgg_small",
        n_classes=3,
        cattn_positions=[0, 1],
        sattn_positions=[1, 2],
        input_size=PATCH,
    )
    hist = R.train_patch_classifier(
        lambda x: dafl(x).logits,
        list(dafl.parameters()),
        patches,
        classes,
        mean=mean,
        std=std,
        epochs=cfg["dafl_epochs"],
        lr=1e-3,
        seed=SEED,
        log=log,
        name="dafl",
        modules=[dafl],
    )
    t = time.perf_counter()
    probs = R.predict_patches(lambda x: dafl(x).logits, test_patches, mean, std)
    res["dafl_patches"] = {
        **R.patch_metrics(test_classes, probs),
        "train_seconds": hist.seconds,
        "ms_per_patch": 1000 * (time.perf_counter() - t) / len(test_classes),
        "epochs": hist.epochs,
    }
    log(f"dafl: {res['dafl_patches']}")

    curriculum = list(zip(phases_data, cfg["as_stage2_epochs"], strict=True))

    # ---------------------------------------------------------------- attention sampling
    log("attention sampling, two-stage")
    torch.manual_seed(SEED)
    model = create_model("attention_sampling", n_patches=64, **AS_BASE)
    head3 = nn.Linear(AS_BASE["feature_dim"], 3)
    net = nn.Sequential(R.FeatureTrunk(model.feature_net), head3)
    h1 = R.train_patch_classifier(
        net,
        [p for p in net.parameters() if p.requires_grad],
        patches,
        classes,
        mean=mean,
        std=std,
        epochs=cfg["stage1_epochs"],
        seed=SEED,
        log=log,
        name="as-stage1",
    )
    stage1 = R.patch_metrics(test_classes, R.predict_patches(net, test_patches, mean, std))
    R.binary_head_from(head3, model.classifier)
    h2 = R.train_attention_sampling(
        model,
        curriculum,
        mean=mean,
        std=std,
        lr=3e-3,
        freeze_features=True,
        seed=SEED,
        log=log,
        name="as-stage2",
    )
    ev = R.evaluate_attention_sampling(model, test, mean=mean, std=std, seed=SEED)
    rows["attention sampling, two-stage (N=64)"] = {
        **R.image_metrics(test, ev["probs"], ev["attention"]),
        "train_seconds": h1.seconds + h2.seconds,
        "stage1_seconds": h1.seconds,
        "stage1_test_patches": stage1,
        "infer_seconds": float(np.median(ev["seconds"])),
    }
    log(f"as two-stage: {rows['attention sampling, two-stage (N=64)']}")

    log("attention sampling, end-to-end")
    torch.manual_seed(SEED)
    model = create_model("attention_sampling", n_patches=100, **AS_BASE)
    e2e_curriculum = list(zip(phases_data, cfg["as_e2e_epochs"], strict=True))
    h = R.train_attention_sampling(
        model,
        e2e_curriculum,
        mean=mean,
        std=std,
        lr=2e-3,
        seed=SEED,
        log=log,
        name="as-e2e",
        time_limit_s=cfg["e2e_limit_s"],
    )
    ev = R.evaluate_attention_sampling(model, test, mean=mean, std=std, seed=SEED)
    rows["attention sampling, end-to-end (N=100)"] = {
        **R.image_metrics(test, ev["probs"], ev["attention"]),
        "train_seconds": h.seconds,
        "infer_seconds": float(np.median(ev["seconds"])),
        "notes": h.notes,
        "epochs": h.epochs,
    }
    log(f"as e2e: {rows['attention sampling, end-to-end (N=100)']}")

    # ---------------------------------------------------------------- A-MIL
    log("A-MIL, two-stage")
    torch.manual_seed(SEED)
    amil = create_model("amil", **AMIL_BASE)
    head3 = nn.Linear(AMIL_BASE["embed_dim"], 3)
    net = nn.Sequential(amil.encoder, head3)
    h1 = R.train_patch_classifier(
        net,
        list(net.parameters()),
        patches,
        classes,
        mean=mean,
        std=std,
        epochs=max(1, cfg["stage1_epochs"] - 1),
        seed=SEED,
        log=log,
        name="amil-stage1",
    )
    stage1 = R.patch_metrics(test_classes, R.predict_patches(net, test_patches, mean, std))
    R.binary_head_from(head3, amil.head[-1])
    t = time.perf_counter()
    feats, _ = R.bag_features(amil, train, mean, std)
    feat_s = time.perf_counter() - t
    h2 = R.train_amil_head(
        amil, feats, train.y, epochs=cfg["amil_head_epochs"], seed=SEED, log=log, name="amil-stage2"
    )
    ev = R.evaluate_amil(amil, test, mean=mean, std=std)
    rows["A-MIL, two-stage (small_cnn, gated)"] = {
        **R.image_metrics(test, ev["probs"], ev["attention"]),
        "train_seconds": h1.seconds + feat_s + h2.seconds,
        "stage1_seconds": h1.seconds,
        "stage1_test_patches": stage1,
        "infer_seconds": float(np.median(ev["seconds"])),
    }
    log(f"amil two-stage: {rows['A-MIL, two-stage (small_cnn, gated)']}")

    log("A-MIL, end-to-end")
    torch.manual_seed(SEED)
    amil = create_model("amil", **AMIL_BASE)
    e2e_curriculum = [
        (d, e) for d, e in zip(phases_data, cfg["amil_e2e_epochs"], strict=True) if e > 0
    ]
    h = R.train_amil_end_to_end(
        amil,
        e2e_curriculum,
        mean=mean,
        std=std,
        seed=SEED,
        log=log,
        time_limit_s=cfg["e2e_limit_s"],
    )
    ev = R.evaluate_amil(amil, test, mean=mean, std=std)
    rows["A-MIL, end-to-end (small_cnn, gated)"] = {
        **R.image_metrics(test, ev["probs"], ev["attention"]),
        "train_seconds": h.seconds,
        "infer_seconds": float(np.median(ev["seconds"])),
        "notes": h.notes,
        "epochs": h.epochs,
    }
    log(f"amil e2e: {rows['A-MIL, end-to-end (small_cnn, gated)']}")

    res["rows"] = rows
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    res["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return res


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def _t(seconds: Any) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{1000 * seconds:.0f} ms"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def render_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "## Models: synthetic localisation benchmark",
        "",
        f"`benchmarks/models.py`, finished {res['finished']} in {_t(res['total_seconds'])}. "
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"GPU: {m['gpu'] or 'none'}; Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} threads); load average at start {m['load_average_at_start']} "
        "(the machine is shared with other jobs, so times are pessimistic).",
        "",
        f"Data: {res['data']['train']['n_images']} training images "
        f"(lesion radius {', '.join(str(int(r)) for r in sorted(res['data']['train']['radius_um'], reverse=True))} um, "
        f"a curriculum in that order) and {res['data']['test']['n_images']} test images from "
        "unseen seeds (100 um lesions, "
        f"{100 * res['data']['test']['lesion_fraction_of_positive_images']:.1f} % of a lesion image). "
        "Images are 2048 x 2048 px scenes at 0.5 um/px seen at 1.0 um/px; lesion images hold "
        "1 lesion + 2 benign look-alikes, benign images 3 look-alikes (same size, darkness and "
        "density at low resolution). The attention network and the low-resolution baseline see "
        "the 8 um/px view (128 x 128 px); patches are 32 x 32 px at 1.0 um/px.",
        "",
        "| Model | Slide accuracy | ROC AUC | Localisation AUC (min) | Attention mass in lesion "
        "| Training | Inference / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in res["rows"].items():
        loc = r.get("localisation_auc")
        loc_s = f"{_f(loc)} ({_f(r.get('localisation_auc_min'))})" if loc is not None else "–"
        lines.append(
            f"| {name} | {_f(r.get('accuracy'))} | {_f(r.get('roc_auc'))} | {loc_s} | "
            f"{_f(r.get('attention_mass_in_lesion'))} | {_t(r.get('train_seconds'))} | "
            f"{_t(r.get('infer_seconds'))} |"
        )
    frac = next(
        (r["lesion_area_fraction"] for r in res["rows"].values() if "lesion_area_fraction" in r),
        None,
    )
    d = res["dafl_patches"]
    lines += [
        "",
        f"Localisation AUC: attention vs the lesion mask, per pixel, mean (and minimum) over the "
        f"{res['data']['test']['n_lesion']} lesion test images; attention mass: fraction of the "
        f"attention inside the lesion (the lesion covers {_f(100 * frac if frac else None, 1)} % "
        "of those images). Accuracy and ROC AUC over all test images. Two-stage: the patch "
        "network is first trained on patch labels that the generator provides (normal / "
        "look-alike / lesion) — supervision that a real slide dataset would not have — then "
        "frozen while the attention part learns from image labels only. End-to-end: random "
        "initialisation, image labels only. Training time includes both stages (and, for "
        "A-MIL two-stage, encoding the training bags once).",
        "",
        f"Channel/spatial attention CNN (`dafl_cnn`, `vgg_small`) on patch classification of "
        f"generated 32 x 32 px patches (normal / look-alike / lesion, "
        f"{sum(res['data']['test_patches'])} test patches from the test images): accuracy "
        f"{_f(d['accuracy'])}, balanced accuracy {_f(d['balanced_accuracy'])}, macro ROC AUC "
        f"{_f(d['roc_auc_macro'])}, lesion-vs-rest AUC {_f(d['lesion_vs_rest_auc'])}; trained "
        f"{d['epochs']} epochs in {_t(d['train_seconds'])}, {d['ms_per_patch']:.2f} ms per patch.",
        "",
    ]
    lines += [
        "The demo checkpoints in `sample_data/` are trained with the same two-stage recipes on "
        "72 of these training images (attention sampling's stage 2 also on 48 images with a "
        "fourth region; `sample_data/make_demo_checkpoints.py`, see `sample_data/README.md`); "
        "their held-out metrics and their check on the demo slide are in their `.json` "
        "sidecars.",
        "",
    ]
    lines += discussion(res)
    return "\n".join(lines).rstrip() + "\n"


TARGET_ACC, TARGET_LOC, TARGET_MINUTES, LOW_RES_MAX = 0.90, 0.85, 60.0, 0.65


def discussion(res: dict[str, Any]) -> list[str]:
    """Targets met or missed (from the numbers), and what was tried."""
    rows = res["rows"]
    out = [
        "Against the targets (slide accuracy >= 0.90, localisation AUC >= 0.85, training "
        "< 60 min on this machine; low-resolution CNN <= 0.65):",
        "",
    ]
    for name, r in rows.items():
        if "accuracy" not in r:
            continue
        if name.startswith("low-res"):
            if r["accuracy"] > LOW_RES_MAX:
                verdict = "above 0.65: the low-resolution view alone solves too much"
            elif r["roc_auc"] > 0.85:
                verdict = (
                    f"accuracy within the limit, but ROC AUC {_f(r['roc_auc'])}: the view ranks "
                    "lesion images above benign ones, and only the decision threshold fails to "
                    "transfer from the training lesion sizes to the test size, so the data does "
                    "**not** force high resolution"
                )
            elif r["roc_auc"] > 0.6:
                verdict = (
                    f"**met** (<= 0.65); its ROC AUC of {_f(r['roc_auc'])} says a weak "
                    "signal is left at low resolution, far below what the patches give"
                )
            else:
                verdict = "**met**, near chance: the data forces high resolution"
            out.append(
                f"- {name}: test accuracy {_f(r['accuracy'])} (training accuracy "
                f"{_f(r.get('train_accuracy'))}); {verdict}."
            )
            continue
        misses = []
        if r["accuracy"] < TARGET_ACC:
            misses.append(f"accuracy {_f(r['accuracy'])} < {TARGET_ACC}")
        if r.get("localisation_auc", 0.0) < TARGET_LOC:
            misses.append(f"localisation AUC {_f(r.get('localisation_auc'))} < {TARGET_LOC}")
        if r.get("train_seconds", 0.0) > 60 * TARGET_MINUTES:
            misses.append(f"training {_t(r['train_seconds'])} > {TARGET_MINUTES:.0f} min")
        out.append(
            f"- {name}: " + ("**met**." if not misses else "**missed**: " + "; ".join(misses) + ".")
        )
    out += ["", *NOTES]
    return out


NOTES = [
    "What we tried and learnt:",
    "",
    "- *Making the data force high resolution.* Every image has three dark regions of the "
    "same size, so counting or finding dark regions does not tell the classes apart. With the "
    "first generator a CNN on the 8 um/px view alone still scored 1.00 (0.97 at 16 um/px): "
    "look-alikes were many small nuclei on a finer grid, lesions few large ones, and that "
    "texture survived the averaging. Matching the mean colour and then the 3 x 3 variance "
    "was not enough (0.99). What worked (`napari_histattn/io/synthetic/render.py`, "
    "renderer version 2): look-alike nuclei sit on the lesion's own site grid, with the "
    "lesion's site density, site area and stain draws, and each site becomes a ring of 1-5 "
    "small round lymphocytes whose ink spreads about as far as the lesion nucleus would and "
    "removes as much light; both kinds vary in cellularity and stain from region to region "
    "with the same spread. On the 272 images of this benchmark, single features of lesion "
    "and look-alike regions at 8 um/px (mean R, G, B, grey-level std, lag-1 "
    "autocorrelation, 10th/90th percentiles) separate them with AUCs of 0.40-0.58, and the "
    "power spectra of region interiors agree within 14 % in bands from 12 to 128 um. At "
    "full resolution they stay far apart: nuclear area 2.7x, eccentricity 0.73 vs 0.43, "
    "chromatin CV 0.53 vs 0.15 (`tests/io/test_synthetic.py`). Over three seeds the "
    "low-resolution CNN of the table scored 0.50 test accuracy with ROC AUC 0.56-0.77 at "
    "8 um/px and 0.49-0.59 with 0.59-0.67 at 16 um/px; its training accuracy of 0.6-0.8 is "
    "memorisation of 192 images.",
    "- *What this means for attention sampling.* Its attention network sees only the "
    "8 um/px view, so it can learn where the dark regions are but not which of them is the "
    "lesion: it attends to lesion and look-alikes alike (compare its attention mass in "
    "lesions with a third of the darkest-regions baseline's region mass), and the patches it "
    "reads decide the class, as in the paper's design. Its localisation AUC therefore counts "
    "look-alike pixels as false positives it cannot avoid, and the region labels in the "
    "viewer come from the patches' evidence (the classifier on each region's pooled "
    "features), not from the attention. A-MIL's attention comes from full-resolution tiles "
    "and can single out the lesion.",
    "- *End-to-end attention sampling* (N = 100, feature scale 5, entropy weight 0.01, "
    "curriculum 150 -> 125 -> 100 um, learning rate 2e-3 one-cycle) learns where to look "
    "but not what it sees: its attention finds the dark regions (localisation AUC and "
    "attention mass as the darkest-regions baseline's) and its scores rank the test images "
    "(ROC AUC 0.86), but its training loss stays near 0.62 and every test image falls on "
    "one side of the threshold (accuracy 0.50). On the first generator, where the "
    "low-resolution view gave the lesion away, it reached 0.88-0.93. The L2-normalised "
    "features times a fixed scale of 5 bound its logits, the same normalisation that stalls "
    "stage 1; a learnt scale (`learn_feature_scale=True`, same schedule) gave the same "
    "(accuracy 0.50, ROC AUC 0.86, localisation AUC 0.96). A warm-started feature network "
    "(two-stage) is what works here.",
    "- *Two-stage attention sampling needed a longer stage 2 on this data*: with 3/3/6 epochs "
    "per curriculum phase (40 s) it ranked the test images perfectly (ROC AUC 1.00) but "
    "called 0.62 of them right, its threshold not yet settled; 6/6/24 epochs (the table) "
    "give 0.99.",
    "- *End-to-end A-MIL stays at chance* on the first generator (training loss 0.693 "
    "throughout). Tried: Adam learning rates 1e-4 and 5e-4, bags of 256 random tissue tiles "
    "in batches of 1, 2 and 4, the curriculum, and training the attention head first on a "
    "frozen random encoder before fine-tuning everything. With a lesion covering 3-7 % of "
    "the tiles, a from-scratch encoder gets almost no signal from image labels in the "
    "minutes available; warm-starting the encoder on patch labels (two-stage) is what works "
    "here.",
    "- *Stage 1 through the L2 normalisation stalls.* Trained on patch labels with the class "
    "head on its L2-normalised output, attention sampling's feature network (4 x conv 16, "
    "global max pooling, linear, L2 norm) separated normal tissue but not lesions from "
    "look-alikes (0.66 balanced patch accuracy after 3 epochs, unchanged by feature scale "
    "1 or 5, 32 channels, mean pooling or learning rates 2e-3 to 5e-3); the same layers "
    "with the head on the unnormalised output reached 0.90 in the same 3 epochs and > 0.99 "
    "in 6. Stage 1 therefore trains without the normalisation; the model normalises as usual "
    "afterwards. The same normalisation sits in the end-to-end model, which is one reason "
    "why end-to-end attention sampling learns slowly here.",
    "- *Class balance in stage 1* (twice as many lesion patches per lesion image) and small "
    "batches (32) mattered for the small encoders: with 1:2:2 lesion:look-alike:normal "
    "patches and batches of 128, small_cnn stayed at 0.71 balanced accuracy after 3 epochs, "
    "balanced, with batches of 32 and a learning rate of 2e-3 instead of 1e-3, it reached 0.97.",
    "- *Heads from stage 1.* The 2-class heads start from the 3-class stage-1 head (lesion "
    "row; benign = mean of normal and look-alike rows), so the attention gets a useful "
    "gradient from the first step.",
    "- *Rendering* dominates data preparation (about 1 s per 2048 x 2048 image on this "
    "machine, 2 processes); images are cached under `benchmarks/_work/images/`, keyed by the "
    "scene and the renderer version.",
]


def write_results_md(
    section: str, path: Path = RESULTS_MD, start: str = START, end: str = END
) -> None:
    """Replace the text between the ``start`` and ``end`` markers (appending them if needed)."""
    block = f"{start}\n{section}{end}"
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = (
            (text.rstrip() + "\n\n" if text.strip() else "# Benchmark results\n\n") + block + "\n"
        )
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; RESULTS.md untouched")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--cache", default=str(ROOT / "benchmarks" / "_work" / "images"))
    parser.add_argument(
        "--report-only", metavar="JSON", help="re-render RESULTS.md from a results JSON"
    )
    args = parser.parse_args(argv)
    if args.report_only:
        res = json.loads(Path(args.report_only).read_text())
        write_results_md(render_markdown(res))
        return 0
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    WORK.mkdir(parents=True, exist_ok=True)
    res = run(args.quick, args.workers, Path(args.cache))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = WORK / f"results-{'quick-' if args.quick else ''}{stamp}.json"
    out.write_text(json.dumps(res, indent=2, default=float))
    log(f"wrote {out}")
    md = render_markdown(res)
    print(md)
    if not args.quick:
        write_results_md(md)
        log(f"updated {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
