"""Attended regions are classified by their own evidence, never by the slide's prediction."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histattn.inference.result import ClassificationResult, SampledLocations, make_regions
from napari_histattn.io.regions import DEFAULT_CLASS_NAME, GridGeometry, Patch

NAMES = ["benign", "lesion"]


def _sampling_result(sample_rc, sample_probs, counts) -> ClassificationResult:
    """A 10 x 10 map with two attended blobs: left (cols 1-2) and right (cols 6-7)."""
    attention = np.full((10, 10), 1e-4, dtype=np.float32)
    attention[2:5, 1:3] = 0.05
    attention[2:5, 6:8] = 0.04
    geometry = GridGeometry((0.0, 0.0), (16.0, 16.0), (16.0, 16.0))
    rc = np.asarray(sample_rc, dtype=np.int64).reshape(-1, 2)
    centres = (rc[:, ::-1] + 0.5) * 16.0
    samples = SampledLocations(
        centers_l0_xy=centres,
        origins_l0_xy=(centres - 8).astype(np.int64),
        grid_rc=rc,
        attention=attention[rc[:, 0], rc[:, 1]].astype(np.float64),
        counts=np.asarray(counts, dtype=np.int64),
        patch_l0_wh=(16.0, 16.0),
    )
    patches = [
        Patch(tuple(o), (16.0, 16.0), float(a), dict(zip(NAMES, p, strict=True)))
        for o, a, p in zip(samples.origins_l0_xy, samples.attention, sample_probs, strict=True)
    ]
    return ClassificationResult(
        class_names=NAMES,
        probabilities=np.array([0.1, 0.9]),  # the slide is called "lesion"
        attention=attention,
        geometry=geometry,
        patches=patches,
        regions=[],
        provenance={},
        family="sampling",
        samples=samples,
    )


def test_sampling_regions_classify_the_mean_feature_of_their_samples() -> None:
    # Left blob: two draws of a benign-looking patch and one lesion-looking one;
    # right blob: no sample at all; one sample outside both blobs.
    result = _sampling_result(
        sample_rc=[(2, 1), (4, 2), (8, 8)],
        sample_probs=[(0.9, 0.1), (0.3, 0.7), (0.0, 1.0)],
        counts=[2, 1, 1],
    )
    regions = make_regions(result, 0.5, None)
    assert len(regions) == 2
    left = next(r for r in regions if r.polygon.bounds[0] == 16.0)
    right = next(r for r in regions if r.polygon.bounds[0] == 96.0)
    # The classifier is linear, so classifying the draw-weighted mean feature is the
    # softmax of the draw-weighted mean log-probability: ((2 ln .9 + ln .3) / 3, ...).
    mean_log = np.array([(2 * np.log(0.9) + np.log(0.3)) / 3, (2 * np.log(0.1) + np.log(0.7)) / 3])
    expected = np.exp(mean_log) / np.exp(mean_log).sum()
    assert left.measurements["prob_benign"] == pytest.approx(expected[0])
    assert left.measurements["prob_lesion"] == pytest.approx(expected[1])
    assert left.measurements["n_samples"] == 3
    assert left.class_name == "benign"  # although the slide is "lesion"
    # No evidence inside: a neutral class, no probabilities, and still a colour.
    assert right.class_name == DEFAULT_CLASS_NAME
    assert not any(k.startswith("prob_") for k in right.measurements)
    assert right.colour is not None and len(right.colour) == 3
    # The slider path gives the same labels.
    assert [r.class_name for r in result.regions_at(0.5)] == [r.class_name for r in regions]


def test_regions_with_per_cell_probabilities_use_them() -> None:
    result = _sampling_result([(2, 1)], [(0.5, 0.5)], [1])
    cell_probs = np.zeros((10, 10, 2))
    cell_probs[..., 0] = 1.0  # everything benign...
    cell_probs[2:5, 6:8] = (0.2, 0.8)  # ...but the right blob
    result.samples = None
    result.cell_probs = cell_probs
    classes = {r.polygon.bounds[0]: r.class_name for r in make_regions(result, 0.5, None)}
    assert classes == {16.0: "benign", 96.0: "lesion"}


def test_sampling_region_class_equals_the_classifier_on_the_pooled_feature() -> None:
    # A linear classifier on random features: the region's label must be what the
    # classifier says about the region's mean feature, the pooling the model trained on.
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(2, 6)), rng.normal(size=2)
    features = rng.normal(size=(5, 6))
    logits = features @ weight.T + bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    counts = [1, 3, 2, 1, 1]
    result = _sampling_result(
        sample_rc=[(2, 1), (3, 1), (4, 2), (2, 2), (8, 8)],
        sample_probs=[tuple(p) for p in probs],
        counts=counts,
    )
    (left,) = [r for r in make_regions(result, 0.5, None) if r.polygon.bounds[0] == 16.0]
    w = np.asarray(counts[:4], dtype=float)
    pooled = (w[:, None] * features[:4]).sum(0) / w.sum()
    z = pooled @ weight.T + bias
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert left.measurements["prob_benign"] == pytest.approx(expected[0])
    assert left.measurements["prob_lesion"] == pytest.approx(expected[1])
    assert left.class_name == NAMES[int(np.argmax(expected))]
