"""Give a bag-model checkpoint its out-of-distribution reference (tile embeddings of slides
like its training slides, and held-out slides' distances to them).

    .venv/bin/python sample_data/feature_reference.py sample_data/demo_amil.safetensors \\
        sample_data/demo_hatnet.safetensors

For each checkpoint: generates slides of the demo's training kind (2048 x 2048 px at
0.5 um/px; half with one lesion and two look-alikes, half with three look-alikes, lesion
radius 100-150 um; seeds apart from training's), classifies them with the engine while
keeping every tile embedding, fits :func:`~napari_histattn.models.feature_reference.fit_reference`
on the first half and calibrates it on the second, and saves the checkpoint again with the
reference in ``extra["feature_reference"]`` (weights unchanged). ``make_demo_checkpoints.py``
calls it after training.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_FIT, N_HELD_OUT = 8, 8
SEED0 = 770_000


def _slides(folder: Path, n: int, seed0: int) -> list[Path]:
    from napari_histattn.io.synthetic import generate_synthetic_slide

    rng = np.random.default_rng(seed0)
    paths = []
    for i in range(n):
        lesion = i % 2 == 0
        radius_px = float(rng.uniform(100.0, 150.0)) / 0.5
        made = generate_synthetic_slide(
            folder / f"ref-{seed0 + i}.tiff",
            2048,
            2048,
            seed=seed0 + i,
            n_lesions=1 if lesion else 0,
            n_lookalikes=2 if lesion else 3,
            lesion_radius_px=radius_px,
            lookalike_radius_px=radius_px,
            mpp=0.5,
            workers=1,
        )
        paths.append(made.path)
    return paths


def tile_embeddings(checkpoint: Path, slides: list[Path]) -> list[np.ndarray]:
    """Every tile embedding of each slide, as the engine's bag models see them."""
    from napari_histattn.inference.engine import classify
    from napari_histattn.models import feature_reference as fr
    from napari_histattn.progress import run_to_completion

    kept: list[np.ndarray] = []
    original = fr.FeatureDistances.add

    def keep(self: Any, features: Any) -> None:
        kept.append(features.detach().float().cpu().numpy())
        original(self, features)

    out = []
    fr.FeatureDistances.add = keep  # type: ignore[method-assign]
    try:
        for slide in slides:
            kept.clear()
            run_to_completion(classify(slide, checkpoint, device="cpu"))
            out.append(np.concatenate(kept))
    finally:
        fr.FeatureDistances.add = original  # type: ignore[method-assign]
    return out


def add_reference(checkpoint: Path, folder: Path) -> dict[str, Any]:
    """Fit and store ``checkpoint``'s reference; returns it (JSON-ready)."""
    from napari_histattn.models.checkpoint import load, save
    from napari_histattn.models.feature_reference import REFERENCE_KEY, fit_reference

    fit = tile_embeddings(checkpoint, _slides(folder, N_FIT, SEED0))
    held = tile_embeddings(checkpoint, _slides(folder, N_HELD_OUT, SEED0 + 1000))
    reference = fit_reference(
        fit,
        held,
        note=(
            f"{N_FIT} generated slides (seeds {SEED0}-{SEED0 + N_FIT - 1}) for the statistics, "
            f"{N_HELD_OUT} more (seeds {SEED0 + 1000}-) for the calibration; 2048 x 2048 px at "
            "0.5 um/px, half with a lesion"
        ),
    )
    loaded = load(checkpoint, device="cpu")
    meta = loaded.metadata
    save(
        checkpoint,
        loaded.model,
        class_names=list(loaded.class_names),
        preprocessing=dict(meta["preprocessing"]),
        training=meta.get("training"),
        extra={**(meta.get("extra") or {}), REFERENCE_KEY: reference.as_dict()},
        calibration=meta.get("calibration"),
    )
    return reference.as_dict()


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for name in argv or [str(ROOT / "sample_data" / "demo_amil.safetensors")]:
            ref = add_reference(Path(name), Path(tmp))
            held = np.asarray(ref["held_out_distances"])
            print(f"{name}: held-out distances {np.round(held, 3).tolist()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
