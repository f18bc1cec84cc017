"""Metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_histattn.training import metrics as M


def test_auc_with_ties_matches_pair_count():
    # Positives score 0.8, 0.5, 0.5; negatives 0.5, 0.2.
    # Pairs (pos, neg): (0.8,0.5)=1 (0.8,0.2)=1 (0.5,0.5)=.5 (0.5,0.2)=1 twice -> (1+1+.5+1+.5+1)/6
    y = [1, 1, 1, 0, 0]
    s = [0.8, 0.5, 0.5, 0.5, 0.2]
    assert M.roc_auc_binary(y, s) == pytest.approx(5.0 / 6.0)


def test_auc_brute_force_random_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 5, 200).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    expected = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / diff.size
    assert M.roc_auc_binary(y, s) == pytest.approx(expected)


def test_auc_perfect_inverse_and_undefined():
    assert M.roc_auc_binary([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.roc_auc_binary([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert math.isnan(M.roc_auc_binary([1, 1], [0.1, 0.2]))


def test_auc_multiclass_macro_one_vs_rest():
    y = np.array([0, 1, 2, 2])
    p = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.2, 0.5, 0.3],
            [0.1, 0.6, 0.3],
            [0.3, 0.3, 0.4],
        ]
    )
    per_class = [M.roc_auc_binary(y == c, p[:, c]) for c in range(3)]
    # class 0: pos .7 vs .2 .1 .3 -> 1; class 1: pos .5 vs .2 .6 .3 -> 2/3;
    # class 2: pos .3 .4 vs .1 .3 -> (1 + .5 + 1 + 1)/4 = .875
    assert per_class == pytest.approx([1.0, 2 / 3, 0.875])
    assert M.roc_auc(y, p) == pytest.approx(np.mean([1.0, 2 / 3, 0.875]))
    # Binary probabilities use column 1.
    assert M.roc_auc([0, 1], [[0.9, 0.1], [0.2, 0.8]]) == 1.0


def test_accuracy_balanced_accuracy_and_confusion_matrix():
    y_true = [0, 0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 0, 1, 1, 0, 1]
    assert M.accuracy(y_true, y_pred) == pytest.approx(4 / 7)
    # recalls: class0 3/4, class1 1/2, class2 0/1
    assert M.balanced_accuracy(y_true, y_pred) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    cm = M.confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(cm, [[3, 1, 0], [1, 1, 0], [0, 1, 0]])
    assert cm.sum() == 7


def test_patient_majority_vote_and_tie_break():
    y = [1, 1, 1, 0, 0, 1, 1]
    pred = [1, 0, 1, 0, 1, 0, 1]
    groups = ["a", "a", "a", "b", "b", "c", "c"]
    probs = np.array(
        [[0, 1], [1, 0], [0, 1], [0.9, 0.1], [0.4, 0.6], [0.8, 0.2], [0.45, 0.55]], float
    )
    votes = M.majority_vote(y, pred, groups, probs)
    # a: 2 of 3 say 1 -> correct; b: tie, class 0 has mass 1.3 > 0.7 -> 0, correct;
    # c: tie, class 0 mass 1.25 > 0.75 -> 0, wrong.
    assert votes == {"a": (1, 1), "b": (0, 0), "c": (1, 0)}
    assert M.patient_accuracy(y, pred, groups, probs) == pytest.approx(2 / 3)


def test_roc_curve_endpoints_and_steps():
    fpr, tpr, thr = M.roc_curve([1, 0, 1, 0], [0.9, 0.8, 0.8, 0.1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0, 0.5, 1.0, 1.0])
    assert thr[0] == np.inf


def test_localisation_auc_and_mass_on_upsampled_grid():
    att = np.array([[0.1, 0.6], [0.1, 0.2]])
    mask = np.zeros((4, 4), bool)
    mask[0:2, 2:4] = True  # exactly the top-right cell
    assert M.localisation_auc(att, mask) == 1.0
    assert M.attention_mass_in_lesion(att, mask) == pytest.approx(0.6)
    half = np.zeros((4, 4), bool)
    half[0, 2:4] = True  # half of the top-right cell
    assert M.attention_mass_in_lesion(att, half) == pytest.approx(0.3)


def test_classification_metrics_and_json_roundtrip(tmp_path):
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
    out = M.classification_metrics(y, probs, ["neg", "pos"], groups=["p1", "p1", "p2", "p3"])
    assert out["accuracy"] == 0.75
    assert out["confusion_matrix"] == [[2, 0], [1, 1]]
    assert out["n_patients"] == 3
    # one-class data: AUC undefined -> null in JSON
    out["undefined"] = M.roc_auc_binary([1, 1], [0.2, 0.3])
    out["arr"] = np.arange(3)
    path = M.write_metrics_json(out, tmp_path / "m" / "metrics.json")
    loaded = json.loads(path.read_text())
    assert loaded["undefined"] is None
    assert loaded["arr"] == [0, 1, 2]
    assert loaded["roc_auc"] == pytest.approx(M.roc_auc(y, probs))


def test_expected_calibration_error_and_reliability_bins() -> None:
    from napari_histattn.training.metrics import expected_calibration_error, reliability_bins

    labels = np.array([1] * 8 + [0] * 2)
    # Confidence 0.8 for class 1 everywhere, right 8 times in 10: calibrated.
    calibrated = np.tile([0.2, 0.8], (10, 1))
    assert expected_calibration_error(labels, calibrated) == pytest.approx(0.0)
    # Certain and right half the time: ECE 0.5.
    sure = np.tile([0.0, 1.0], (10, 1))
    assert expected_calibration_error(np.array([1, 0] * 5), sure) == pytest.approx(0.5)
    bins = reliability_bins(labels, calibrated, n_bins=10)
    assert bins["count"][7] == 10 and sum(bins["count"]) == 10  # 0.8 falls in (0.7, 0.8]
    assert bins["accuracy"][7] == pytest.approx(0.8) and np.isnan(bins["accuracy"][0])


def test_metrics_json_and_plots_carry_calibration(tmp_path) -> None:
    from napari_histattn.training.metrics import classification_metrics
    from napari_histattn.training.plots import plot_reliability

    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    metrics = classification_metrics(labels, probs, ["a", "b"])
    # One sample per bin: gaps 0.1, 0.4, 0.2 (right) and 0.7 (wrong at confidence 0.7).
    assert metrics["ece"] == pytest.approx((0.1 + 0.4 + 0.2 + 0.7) / 4)
    assert len(metrics["reliability"]["count"]) == 10
    path = plot_reliability(labels, probs, tmp_path / "rel.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
