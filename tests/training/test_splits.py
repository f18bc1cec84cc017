"""Patient-wise splits never leak a patient across parts."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histattn.training.splits import (
    SplitError,
    cross_validation_folds,
    group_kfold,
    group_split,
)


def _toy(n_patients=20, seed=0):
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for p in range(n_patients):
        label = p % 2
        for _ in range(int(rng.integers(1, 6))):
            labels.append(label)
            groups.append(f"patient-{p}")
    return np.array(labels), groups


def test_group_kfold_no_patient_in_two_folds_and_covers_all():
    labels, groups = _toy()
    folds = group_kfold(labels, groups, k=5, seed=1)
    assert len(folds) == 5
    all_idx = np.concatenate(folds)
    assert sorted(all_idx.tolist()) == list(range(len(labels)))
    seen: dict[str, int] = {}
    for f, idx in enumerate(folds):
        for i in idx:
            assert seen.setdefault(groups[i], f) == f, (
                f"{groups[i]} in folds {seen[groups[i]]} and {f}"
            )


def test_group_kfold_is_stratified_and_deterministic():
    labels = np.repeat([0, 1], 50)
    groups = [f"g{i}" for i in range(100)]  # singleton groups: stratification is exact
    folds = group_kfold(labels, groups, k=5, seed=7)
    for idx in folds:
        assert np.bincount(labels[idx], minlength=2).tolist() == [10, 10]
    again = group_kfold(labels, groups, k=5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again, strict=True))
    other = group_kfold(labels, groups, k=5, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(folds, other, strict=True))


def test_cross_validation_folds_disjoint_patients():
    labels, groups = _toy(n_patients=15, seed=2)
    for k in (1, 3):
        folds = cross_validation_folds(labels, groups, k=k, seed=0)
        assert len(folds) == k
        for fold in folds:
            parts = [set(groups[i] for i in part) for part in (fold.train, fold.val, fold.test)]
            assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
            assert len(fold.train) + len(fold.val) + len(fold.test) == len(labels)
            assert len(fold.val) > 0 and len(fold.test) > 0


def test_group_split_fraction_and_errors():
    labels = np.repeat([0, 1], 50)
    groups = [f"g{i}" for i in range(100)]
    rest, held = group_split(labels, groups, 0.2, seed=0)
    assert len(held) == 20 and len(rest) == 80
    with pytest.raises(SplitError, match="3 patients"):
        group_kfold([0, 1, 0], ["a", "b", "c"], k=5)
    with pytest.raises(SplitError):
        group_split([0, 1], ["a", "a"], 0.5)
