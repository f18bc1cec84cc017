"""Train the demo checkpoints in ``sample_data/`` from a fixed seed on generated data.

Run from the repository root::

    .venv/bin/python sample_data/make_demo_checkpoints.py            # ~5-7 min on 2 CPU cores
    .venv/bin/python sample_data/make_demo_checkpoints.py --no-check  # skip the sample-slide check

Writes ``demo_attention_sampling``, ``demo_amil``, ``demo_hatnet``, ``demo_dafl_cnn`` and
``demo_mldam`` (``.safetensors`` + ``.json`` sidecar each), trained two-stage as
``benchmarks/_models/recipes.py`` describes: a patch network trained on patch
labels that the generator provides (lesion / look-alike / normal tissue), then
the attention part trained on image labels only with that network frozen.
The DAFL and MLDAM checkpoints are patch classifiers (normal / look-alike / lesion).

All models work at 1.0 um/px (``target_mpp``): level-0 of the demo slide
(0.5 um/px) averaged over 2 x 2 pixels. With ``--check`` (the default) each
attention checkpoint is run through the inference engine on the demo slide
(:func:`napari_histattn.io.synthetic.synthetic_sample_slide`), and the script
fails unless the slide is called "lesion" and the most attended cell lies
inside a true lesion; the check's outcome is stored in the checkpoint's
training summary.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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
from napari_histattn.models import checkpoint  # noqa: E402
from napari_histattn.models.registry import create_model  # noqa: E402
from napari_histattn.training.calibration import (  # noqa: E402
    Calibration,
    choose_decision,
    shifted,
)
from sample_data.demo_checks import (  # noqa: E402
    check_on_sample_slide,
    check_passes,
    check_small_lesion,
)

OUT_DIR = ROOT / "sample_data"
DEMOS = ("attention_sampling", "amil", "hatnet", "dafl_cnn", "mldam")
SEED = 20241126
MODEL_MPP = 1.0
PATCH_SIZE = 32
DOWNSCALE = 8  # attention view: 8 um/px, 1/16 of the demo slide's level 0
N_PATCHES = 64
TISSUE = {"saturation_min": 0.07, "brightness_max": 0.92, "min_fraction": 0.5}

AS_CONFIG: dict[str, Any] = {
    "n_classes": 2,
    "n_patches": N_PATCHES,
    "patch_size": PATCH_SIZE,
    "downscale": DOWNSCALE,
    "feature_dim": 32,
    "feature_scale": 5.0,
    "entropy_weight": 0.01,
    "temperature": 1.0,
    "replace": False,
    "aggregation": "expectation",
}
AMIL_CONFIG: dict[str, Any] = {
    "encoder": "small_cnn",
    "patch_size": PATCH_SIZE,
    "n_classes": 2,
    "embed_dim": 128,
    "attn_dim": 64,
    "gated": True,
}
# HATNet shares A-MIL's stage-1 encoder (and starts from its head): regions of 4 x 4 tiles
# (128 um at 1 um/px), one transformer block at each level.
HATNET_CONFIG: dict[str, Any] = {
    **AMIL_CONFIG,
    "region_size": 4,
    "n_heads": 4,
    "word_layers": 1,
    "region_layers": 1,
}
DAFL_CONFIG: dict[str, Any] = {
    "backbone": "vgg_small",
    "n_classes": 3,
    "cattn_positions": [0, 1],
    "sattn_positions": [1, 2],
    "input_size": PATCH_SIZE,
}
MLDAM_CONFIG: dict[str, Any] = {
    "backbone": "vgg_small",
    "n_classes": 3,
    "levels": 2,
    "input_size": PATCH_SIZE,
}
# The image-level patch classifiers, trained alike.
PATCH_MODELS: dict[str, tuple[dict[str, Any], str]] = {
    "dafl_cnn": (DAFL_CONFIG, "DAFL channel/spatial attention CNN"),
    "mldam": (MLDAM_CONFIG, "multi-level dual attention CNN (MLDAM)"),
}
# Training images: 24 per lesion radius 150, 125 and 100 um (the demo slide's lesions
# are ~200 um); held out: the first 16 benchmark test images (100 um lesions).
N_PER_RADIUS = 24
N_HELD_OUT = 16
# Attention sampling's stage 2 also sees images with one more look-alike (lesion images:
# 1 lesion + 3 look-alikes), so that its classifier calls a slide "lesion" when a
# smaller share of the attended area is lesion, as on the demo slide, where the
# attention, which cannot tell the two kinds apart at 8 um/px, also covers normal tissue.
EXTRA_SEEDS_BY_RADIUS = {125.0: 130_000, 100.0: 140_000}
# A-MIL's decision rule and temperature are chosen on images with small lesions (a 40-um
# radius covers ~0.6 % of an image's tissue), seeds that neither training nor tests use.
SMALL_VAL_START = 150_000
N_SMALL_VAL = 16
SMALL_RADIUS_UM = 40.0
#: What a bag demo's sidecar records of its lesion sizes.
LESION_RADII_UM = {"train": sorted(D.TRAIN_SEEDS_BY_RADIUS), "validation": SMALL_RADIUS_UM}
# Attention sampling averages this many sampling rounds by default (the spread of one
# round's p(lesion) over seeds moved calls near the boundary).
SAMPLING_ROUNDS = 4


def _log(msg: str) -> None:
    print(msg, flush=True)


def _train_images(spec: D.DataSpec, cache: str, workers: int) -> D.ImageSet:
    sets = [
        D.build_images(
            spec, range(start, start + N_PER_RADIUS), radius, cache_dir=cache, workers=workers
        )
        for radius, start in D.TRAIN_SEEDS_BY_RADIUS.items()
    ]
    return D.ImageSet.concat(sets)


def _preprocessing(mean: list[float], std: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "target_mpp": MODEL_MPP,
        "patch_size": PATCH_SIZE,
        "mean": mean,
        "std": std,
        "tissue": TISSUE,
        **extra,
    }


def _save(
    name: str,
    model: nn.Module,
    class_names: list[str],
    pre: dict[str, Any],
    training: dict[str, Any],
    check: bool,
    calibration: dict[str, Any] | None = None,
) -> Path:
    target = OUT_DIR / f"{name}.safetensors"
    if check and training["family"] in ("attention_sampling", "amil", "hatnet"):
        with tempfile.TemporaryDirectory() as tmp:
            probe = checkpoint.save(
                Path(tmp) / f"{name}.safetensors",
                model,
                class_names=class_names,
                preprocessing=pre,
                training=training,
                calibration=calibration,
            )
            result = check_on_sample_slide(probe)
            small = check_small_lesion(probe)
        _log(f"  sample-slide check: {result}")
        _log(f"  small-lesion check: {small}")
        training["sample_slide_check"] = result
        training["small_lesion_check"] = small
        if not check_passes(training["family"], result):
            raise SystemExit(f"{name}: the sample-slide check failed: {result}")
        if training["family"] in ("amil", "hatnet") and not small["passes"]:
            raise SystemExit(f"{name}: the small-lesion check failed: {small}")
    checkpoint.save(
        target,
        model,
        class_names=class_names,
        preprocessing=pre,
        training=training,
        calibration=calibration,
    )
    if training["family"] in ("amil", "hatnet"):  # the out-of-distribution reference
        from sample_data.feature_reference import add_reference

        with tempfile.TemporaryDirectory() as tmp:
            add_reference(target, Path(tmp))
    _log(f"  wrote {target} ({target.stat().st_size / 1e6:.2f} MB)")
    return target


def _decide_and_calibrate(
    model: Any, held: D.ImageSet, mean: list[float], std: list[float], args: Any
) -> tuple[str, Any, Calibration, dict[str, Any]]:
    """A bag model's decision rule and temperature, chosen on small-lesion validation
    images, and its held-out image metrics."""
    _log("  decision rule and temperature on small-lesion validation images")
    val_small = D.build_images(
        D.DataSpec(model_mpp=MODEL_MPP),
        range(SMALL_VAL_START, SMALL_VAL_START + N_SMALL_VAL),
        SMALL_RADIUS_UM,
        cache_dir=args.cache,
        workers=args.workers,
    )
    log_probs = {}
    for rule in model.decision_rules:
        model.set_decision(rule)
        probs = R.evaluate_amil(model, val_small, mean=mean, std=std)["probs"]
        log_probs[rule] = np.log(np.clip(probs, 1e-12, None))
    chosen, candidates, threshold = choose_decision(model.decision_rules, log_probs, val_small.y)
    model.set_decision(chosen, threshold)
    calibration = Calibration.fit(shifted(log_probs[chosen], threshold), val_small.y)
    _log(f"  chose {chosen!r} ({candidates}); temperature {calibration.temperature:.3f}")
    ev = R.evaluate_amil(model, held, mean=mean, std=std)
    metrics = R.image_metrics(held, ev["probs"], ev["attention"])
    _log(f"  held-out images: {metrics}")
    return chosen, candidates, calibration, metrics


def _decision_record(chosen: str, candidates: Any) -> dict[str, Any]:
    return {
        "chosen": chosen,
        "how": "best balanced accuracy on small-lesion validation images, each rule "
        "at its best margin threshold; ties keep the earlier rule (attention)",
        "validation": f"{N_SMALL_VAL} images, lesion radius {SMALL_RADIUS_UM} um "
        f"(seeds {SMALL_VAL_START}-{SMALL_VAL_START + N_SMALL_VAL - 1})",
        "candidates": candidates,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-check", action="store_true", help="skip the sample-slide check")
    parser.add_argument("--cache", default=str(ROOT / "benchmarks" / "_work" / "images"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=DEMOS, nargs="*")
    args = parser.parse_args(argv)
    only = set(args.only or DEMOS)
    amil_model: Any = None
    check = not args.no_check
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    spec = D.DataSpec(model_mpp=MODEL_MPP)

    t0 = time.perf_counter()
    train = _train_images(spec, args.cache, args.workers)
    held = D.build_images(
        spec,
        range(D.TEST_SEED_START, D.TEST_SEED_START + N_HELD_OUT),
        100.0,
        cache_dir=args.cache,
        workers=args.workers,
    )
    spec4 = D.DataSpec(model_mpp=MODEL_MPP, n_regions=4)
    extra = D.ImageSet.concat(
        [
            D.build_images(
                spec4,
                range(start, start + N_PER_RADIUS),
                radius,
                cache_dir=args.cache,
                workers=args.workers,
            )
            for radius, start in EXTRA_SEEDS_BY_RADIUS.items()
        ]
    )
    render_s = time.perf_counter() - t0
    _log(f"rendered {len(train)} + {len(extra)} + {len(held)} images in {render_s:.0f} s")
    mean, std = D.mean_std(train)
    patches, classes = D.sample_patches(train, PATCH_SIZE, per_class=48, seed=SEED)
    test_patches, test_classes = D.sample_patches(held, PATCH_SIZE, per_class=24, seed=SEED + 1)
    _log(f"stage-1 patches: {np.bincount(classes).tolist()} (normal, look-alike, lesion)")
    data_summary = {
        "generator": "napari_histattn.io.synthetic (make_scene + render_region)",
        "image": f"{spec.size_l0} x {spec.size_l0} px scenes at {spec.scene_mpp} um/px, "
        f"seen at {MODEL_MPP} um/px ({spec.size} x {spec.size} px)",
        "classes": "lesion images: 1 lesion + 2 benign look-alikes; benign images: 3 look-alikes",
        "lesion_radius_um": sorted(D.TRAIN_SEEDS_BY_RADIUS),
        "train": train.summary(),
        "attention_sampling_stage2_extra": {
            "images": "lesion images: 1 lesion + 3 look-alikes; benign images: 4 look-alikes",
            **extra.summary(),
        },
        "held_out": held.summary(),
        "stage1_patches": {
            "n": int(classes.size),
            "per_class": np.bincount(classes).tolist(),
            "classes": list(D.PATCH_CLASSES),
        },
    }

    if "attention_sampling" in only:
        _log("attention sampling: stage 1 (feature network on patch labels)")
        torch.manual_seed(SEED)
        model = create_model("attention_sampling", **AS_CONFIG)
        head3 = nn.Linear(AS_CONFIG["feature_dim"], 3)
        net = nn.Sequential(R.FeatureTrunk(model.feature_net), head3)
        params = [p for p in net.parameters() if p.requires_grad]
        h1 = R.train_patch_classifier(
            net, params, patches, classes, mean=mean, std=std, epochs=6, seed=SEED, name="as-stage1"
        )
        stage1 = R.patch_metrics(test_classes, R.predict_patches(net, test_patches, mean, std))
        _log(f"  held-out patches: {stage1}")
        R.binary_head_from(head3, model.classifier)
        _log("attention sampling: stage 2 (attention network + classifier on image labels)")
        h2 = R.train_attention_sampling(
            model,
            [(D.ImageSet.concat([train, extra]), 20)],
            mean=mean,
            std=std,
            lr=3e-3,
            freeze_features=True,
            seed=SEED,
            name="as-stage2",
        )
        ev = R.evaluate_attention_sampling(model, held, mean=mean, std=std, seed=SEED)
        metrics = R.image_metrics(held, ev["probs"], ev["attention"])
        _log(f"  held-out images: {metrics}")
        training = {
            "family": "attention_sampling",
            "recipe": "two-stage: (1) the feature network (before its L2 normalisation) plus a "
            "3-class head trained on generated patch labels (normal / look-alike / lesion; "
            "supervision a real slide dataset would not have); (2) feature network frozen, the attention network and "
            "the classifier (started from the stage-1 head) trained on image labels only with "
            "the expectation estimator",
            "seed": SEED,
            "data": data_summary,
            "stage1": {**h1.to_dict(), "held_out_patches": stage1},
            "stage2": h2.to_dict(),
            "held_out_images": metrics,
        }
        _save(
            "demo_attention_sampling",
            model,
            list(D.SLIDE_CLASSES),
            _preprocessing(
                mean, std, downscale=DOWNSCALE, n_patches=N_PATCHES, sampling_rounds=SAMPLING_ROUNDS
            ),
            training,
            check,
        )

    if "amil" in only:
        _log("A-MIL: stage 1 (small_cnn encoder on patch labels)")
        torch.manual_seed(SEED)
        model = create_model("amil", **AMIL_CONFIG)
        head3 = nn.Linear(AMIL_CONFIG["embed_dim"], 3)
        net = nn.Sequential(model.encoder, head3)
        h1 = R.train_patch_classifier(
            net,
            list(net.parameters()),
            patches,
            classes,
            mean=mean,
            std=std,
            epochs=4,
            seed=SEED,
            name="amil-stage1",
        )
        stage1 = R.patch_metrics(test_classes, R.predict_patches(net, test_patches, mean, std))
        _log(f"  held-out patches: {stage1}")
        R.binary_head_from(head3, model.head[-1])
        _log("A-MIL: stage 2 (attention pooling + head on image labels, encoder frozen)")
        t_encode = time.perf_counter()
        feats, _ = R.bag_features(model, train, mean, std)
        encode_s = time.perf_counter() - t_encode
        h2 = R.train_amil_head(model, feats, train.y, epochs=40, seed=SEED, name="amil-stage2")
        chosen, candidates, calibration, metrics = _decide_and_calibrate(
            model, held, mean, std, args
        )
        training = {
            "family": "amil",
            "recipe": "two-stage: (1) the small_cnn encoder plus a 3-class head trained on "
            "generated patch labels (normal / look-alike / lesion; supervision a real slide "
            "dataset would not have); (2) encoder frozen, gated attention pooling and the head "
            "(started from the stage-1 head) trained on image labels only, bags = all tissue "
            "tiles of an image",
            "seed": SEED,
            "data": data_summary,
            "stage1": {**h1.to_dict(), "held_out_patches": stage1},
            "stage2": {**h2.to_dict(), "encode_training_bags_seconds": round(encode_s, 1)},
            "decision": _decision_record(chosen, candidates),
            "lesion_radius_um": LESION_RADII_UM,
            "held_out_images": metrics,
        }
        _save(
            "demo_amil",
            model,
            list(D.SLIDE_CLASSES),
            _preprocessing(mean, std),
            training,
            check,
            calibration=calibration.as_dict(),
        )
        amil_model = model

    if "hatnet" in only:
        _log("HATNet: the A-MIL demo's stage-1 encoder and head, frozen")
        torch.manual_seed(SEED)
        model = create_model("hatnet", **HATNET_CONFIG)
        if amil_model is None:
            amil_model = checkpoint.load(OUT_DIR / "demo_amil.safetensors", device="cpu").model
        model.encoder.load_state_dict(amil_model.encoder.state_dict())
        model.head.load_state_dict(amil_model.head.state_dict())
        _log("HATNet: stage 2 (both attention levels + head on image labels, encoder frozen)")
        t_encode = time.perf_counter()
        feats, keep = R.bag_features(model, train, mean, std)
        positions = R.tile_positions(keep, int(train.rgb.shape[1]) // PATCH_SIZE)
        encode_s = time.perf_counter() - t_encode
        # The head stays A-MIL's: it scores each tile's own embedding (the per-tile evidence
        # that classifies regions) and the pooled slide embedding alike. Trained here, it
        # followed the transformed slide embedding and scored look-alike tiles "lesion".
        h2 = R.train_amil_head(
            model, feats, train.y, epochs=40, seed=SEED, name="hatnet-stage2",
            positions=positions, frozen=("encoder.", "head."),
        )  # fmt: skip
        chosen, candidates, calibration, metrics = _decide_and_calibrate(
            model, held, mean, std, args
        )
        training = {
            "family": "hatnet",
            "recipe": "two-stage: (1) the A-MIL demo's stage 1 (the small_cnn encoder plus a "
            "3-class head on generated patch labels), reused; (2) encoder and the A-MIL "
            "demo's head frozen, word and region self-attention and both attention poolings "
            "trained on image labels only, bags = all tissue tiles of an image with their "
            "grid positions",
            "seed": SEED,
            "data": data_summary,
            "stage2": {**h2.to_dict(), "encode_training_bags_seconds": round(encode_s, 1)},
            "decision": _decision_record(chosen, candidates),
            "lesion_radius_um": LESION_RADII_UM,
            "held_out_images": metrics,
        }
        _save(
            "demo_hatnet",
            model,
            list(D.SLIDE_CLASSES),
            _preprocessing(mean, std),
            training,
            check,
            calibration=calibration.as_dict(),
        )

    for name, (config, title) in PATCH_MODELS.items():
        if name not in only:
            continue
        _log(f"{title}: patch classifier")
        torch.manual_seed(SEED)
        model = create_model(name, **config)
        h1 = R.train_patch_classifier(
            lambda x, m=model: m(x).logits,
            list(model.parameters()),
            patches,
            classes,
            mean=mean,
            std=std,
            epochs=4,
            seed=SEED,
            lr=1e-3,
            name=name,
            modules=[model],
        )
        model.eval()
        metrics = R.patch_metrics(
            test_classes,
            R.predict_patches(lambda x, m=model: m(x).logits, test_patches, mean, std),
        )
        _log(f"  held-out patches: {metrics}")
        training = {
            "family": name,
            "recipe": "supervised patch classification on generated patch labels "
            "(normal / look-alike / lesion), 32 x 32 px patches at 1.0 um/px",
            "seed": SEED,
            "data": data_summary,
            "training": h1.to_dict(),
            "held_out_patches": metrics,
        }
        _save(
            f"demo_{name}",
            model,
            list(D.PATCH_CLASSES),
            _preprocessing(mean, std, image_size=PATCH_SIZE),
            training,
            check,
        )
    _log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
