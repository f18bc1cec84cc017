"""A checkpoint knows its training domain, and a slide outside it gets a warning first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from inference_helpers import LesionSlide

from napari_histattn.inference.domain import (
    TrainingDomain,
    domain_of_slides,
    domain_warnings,
    slide_kind,
    training_domain,
)
from napari_histattn.io.slide import open_slide

REPO = Path(__file__).resolve().parents[2]
DEMO_AMIL = REPO / "sample_data" / "demo_amil.safetensors"


def test_older_checkpoint_has_its_synthetic_domain_inferred() -> None:
    metadata = json.loads(DEMO_AMIL.with_suffix(".json").read_text())
    domain = training_domain(metadata)
    assert domain.source == "synthetic"
    assert domain.stain == "H&E"
    assert domain.model_mpp == 1.0
    assert domain.classes == ("benign", "lesion")
    assert not domain.recorded
    assert "inferred" in domain.describe()


def test_recorded_domain_round_trips_through_metadata() -> None:
    recorded = TrainingDomain(
        source="real", stain=None, slide_mpp_range=(0.25, 0.5), classes=("a", "b"), recorded=True
    )
    back = training_domain({"class_names": ["a", "b"], "training": {"domain": recorded.as_dict()}})
    assert back == recorded
    # Unknown source words never pass through as a source.
    odd = training_domain({"training": {"domain": {"source": "martian"}}})
    assert odd.source == "unknown"


def test_generated_slides_are_synthetic_and_a_scan_is_real(
    lesion_slide: LesionSlide, cmu_svs: Path
) -> None:
    with open_slide(lesion_slide.path) as synthetic, open_slide(cmu_svs) as scan:
        assert slide_kind(synthetic) == "synthetic"
        assert slide_kind(scan) == "real"
        mixed = domain_of_slides([synthetic, scan], classes=["benign", "lesion"])
        only = domain_of_slides([synthetic])
    assert mixed.source == "mixed"
    assert mixed.slide_mpp_range == pytest.approx((0.499, 0.5), abs=1e-3)
    assert only.source == "synthetic" and only.stain == "H&E"


def test_warnings_name_what_lies_outside(lesion_slide: LesionSlide, cmu_svs: Path) -> None:
    synthetic_trained = TrainingDomain(source="synthetic", slide_mpp_range=(0.5, 0.5))
    with open_slide(lesion_slide.path) as synthetic, open_slide(cmu_svs) as scan:
        assert domain_warnings(synthetic_trained, synthetic, slide_mpp=0.5) == []
        (real,) = domain_warnings(synthetic_trained, scan, slide_mpp=0.499)
        assert "trained only on synthetic" in real and "real slide" in real
        (coarse,) = domain_warnings(synthetic_trained, synthetic, slide_mpp=2.0)
        assert "2 um/px" in coarse and "0.5 um/px" in coarse
        scanned_trained = TrainingDomain(source="real")
        (other,) = domain_warnings(scanned_trained, synthetic)
        assert "synthetic" in other
        assert domain_warnings(TrainingDomain(), scan, slide_mpp=0.499) == []


def test_demo_on_a_real_slide_warns_before_the_call(cmu_svs: Path) -> None:
    """The synthetic-trained demo A-MIL on CMU-1 (skin): the panel's first line says so."""
    from napari_histattn._napari.result_panel import panel_text
    from napari_histattn.inference.engine import classify
    from napari_histattn.progress import run_to_completion

    result = run_to_completion(classify(cmu_svs, DEMO_AMIL, device="cpu"))
    warnings = result.provenance["domain_warnings"]
    assert any("trained only on synthetic" in w for w in warnings)
    assert result.provenance["training_domain"]["source"] == "synthetic"
    text = panel_text(result, result.regions)
    assert text.splitlines()[0].startswith("OUTSIDE THE MODEL'S TRAINING DOMAIN")
    assert "trained only on synthetic" in text.split("predicted:")[1].split("  benign")[0]


def test_ood_score_is_higher_on_real_tissue_than_on_unseen_synthetic_slides(
    lesion_slide: LesionSlide, cmu_svs: Path
) -> None:
    """The demo A-MIL's reference (sample_data/feature_reference.py) scores CMU-1 (skin)
    well above an unseen generated slide, and says so in the warnings and the export."""
    from napari_histattn.inference.engine import classify
    from napari_histattn.progress import run_to_completion

    synthetic = run_to_completion(classify(lesion_slide.path, DEMO_AMIL, device="cpu"))
    real = run_to_completion(classify(cmu_svs, DEMO_AMIL, device="cpu"))
    assert synthetic.provenance["ood"]["score"] < 1.5
    assert real.provenance["ood"]["score"] > 2 * synthetic.provenance["ood"]["score"]
    assert any("out-of-distribution score" in w for w in real.provenance["domain_warnings"])
    assert not any("out-of-distribution" in w for w in synthetic.provenance["domain_warnings"])
    assert any(line.startswith("out-of-distribution score") for line in real.evidence_lines())


def test_feature_distances_are_calibrated_on_held_out_slides() -> None:
    import numpy as np
    import torch

    from napari_histattn.models.feature_reference import (
        FeatureDistances,
        FeatureReference,
        fit_reference,
    )

    rng = np.random.default_rng(0)
    train = [rng.normal(2.0, 3.0, size=(500, 8)) for _ in range(4)]
    held = [rng.normal(2.0, 3.0, size=(300, 8)) for _ in range(6)]
    ref = fit_reference(train, held)
    np.testing.assert_allclose(ref.mean, 2.0, atol=0.2)
    np.testing.assert_allclose(ref.std, 3.0, atol=0.2)
    back = FeatureReference.from_metadata({"extra": {"feature_reference": ref.as_dict()}})
    assert back is not None and back.held_out == pytest.approx(ref.held_out)

    like = FeatureDistances(ref)
    for batch in np.array_split(rng.normal(2.0, 3.0, size=(400, 8)), 3):
        like.add(torch.from_numpy(batch).float())
    unlike = FeatureDistances(ref)
    unlike.tee(lambda _features: None)(torch.from_numpy(rng.normal(8.0, 3.0, (400, 8))).float())
    assert 0.8 < like.info()["ood"]["score"] < 1.2
    assert unlike.info()["ood"]["score"] > 2.0
    assert FeatureDistances(None).info() == {}  # a checkpoint without a reference
    assert FeatureReference.from_metadata({"extra": {"feature_reference": {"mean": [1]}}}) is None
