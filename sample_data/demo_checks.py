"""The checks a demo checkpoint must pass before ``make_demo_checkpoints.py`` writes it:
the demo slide (called lesion, regions on the lesions) and two generated small-lesion
slides (one 80 um lesion called lesion, look-alikes only benign)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import Polygon


def _lesion_at(scene: Any, x: float, y: float) -> bool:
    return any(float(r.rho(np.array(x), np.array(y))) < 1.0 for r in scene.lesions)


def check_on_sample_slide(path: Path, seed: int = 0) -> dict[str, Any]:
    """Classify the demo slide with the engine: the call, the most attended cell, and
    where the regions classified "lesion" (by their own evidence) lie."""
    from napari_histattn.inference.engine import classify
    from napari_histattn.io.synthetic import synthetic_sample_slide
    from napari_histattn.progress import run_to_completion

    slide = synthetic_sample_slide()
    t0 = time.perf_counter()
    result = run_to_completion(classify(slide.path, path, device="cpu", seed=seed))
    seconds = time.perf_counter() - t0
    att = np.where(np.isfinite(result.attention), result.attention, -np.inf)
    r, c = np.unravel_index(int(np.argmax(att)), att.shape)
    g = result.geometry
    x = g.origin_l0_xy[0] + c * g.stride_l0_xy[0] + g.patch_l0_wh[0] / 2
    y = g.origin_l0_xy[1] + r * g.stride_l0_xy[1] + g.patch_l0_wh[1] / 2
    probs = dict(
        zip(result.class_names, [round(float(p), 4) for p in result.probabilities], strict=True)
    )
    lesions = [Polygon(r.polygon_xy()) for r in slide.scene.lesions]
    lookalikes = [Polygon(r.polygon_xy()) for r in slide.scene.lookalikes]
    lesion_regions = [r.polygon for r in result.regions if r.class_name == "lesion"]
    return {
        "slide": "synthetic_sample_slide() (12000 x 9000 px at 0.5 um/px, 2 lesions, 2 look-alikes)",
        "probabilities": probs,
        "predicted": result.class_names[int(np.argmax(result.probabilities))],
        "max_attention_cell_l0_xy": [round(float(x), 1), round(float(y), 1)],
        "max_attention_in_lesion": bool(_lesion_at(slide.scene, x, y)),
        "regions": [r.class_name for r in result.regions],
        "lesion_regions_on_lesions": sum(
            any(g.intersects(t) for t in lesions) for g in lesion_regions
        ),
        "lesion_regions_on_lookalikes": sum(
            any(g.intersects(t) for t in lookalikes) for g in lesion_regions
        ),
        "seconds_cpu": round(seconds, 1),
    }


def check_small_lesion(path: Path, seed: int = 0) -> dict[str, Any]:
    """Classify two generated slides (3,072^2 px at 0.5 um/px, unseen seeds): one with a
    single 80-um lesion (about 0.2 % of the tissue) and two look-alikes of its size, one
    with three look-alikes only. Passing: the first is called "lesion", the second benign."""
    from napari_histattn.inference.engine import classify
    from napari_histattn.io.synthetic import generate_synthetic_slide
    from napari_histattn.progress import run_to_completion

    out: dict[str, Any] = {"slides": "3072^2 px at 0.5 um/px; lesion radius 40 um"}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, seed_slide, n_lesions in (
            ("small_lesion", 990_001, 1),
            ("lookalikes_only", 990_002, 0),
        ):
            made = generate_synthetic_slide(
                Path(tmp) / f"{kind}.tiff",
                3072,
                3072,
                seed=seed_slide,
                n_lesions=n_lesions,
                lesion_radius_px=80,
                n_lookalikes=3 - n_lesions,
                lookalike_radius_px=80,
                mpp=0.5,
            )
            result = run_to_completion(classify(made.path, path, device="cpu", seed=seed))
            out[kind] = {
                "p_lesion": round(float(result.probabilities_by_class["lesion"]), 4),
                "predicted": result.predicted_class,
                "evidence": result.evidence_lines(),
            }
    out["passes"] = (
        out["small_lesion"]["predicted"] == "lesion"
        and out["lookalikes_only"]["predicted"] == "benign"
    )
    return out


def check_passes(family: str, result: dict[str, Any]) -> bool:
    """Did the demo slide come out right?

    Both: the slide is called "lesion", at least one region classified "lesion" lies on
    a true lesion and none on a look-alike. A-MIL also puts its most attended cell
    inside a lesion (and so does HATNet); attention sampling's attention network sees only the 8 um/px
    view, where lesions and look-alikes look alike by design, so its attention covers
    both kinds and only the patches it reads tell them apart.
    """
    ok = (
        result["predicted"] == "lesion"
        and result["lesion_regions_on_lesions"] >= 1
        and result["lesion_regions_on_lookalikes"] == 0
    )
    if family in ("amil", "hatnet"):
        ok = ok and result["max_attention_in_lesion"]
    return ok
