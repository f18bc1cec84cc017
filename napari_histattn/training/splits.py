"""Patient-wise (group) splits: k-fold cross-validation and train/validation.

Every sample of a group (a patient, or a slide) lands in the same part, so no
patient is in two folds. Groups are assigned to folds greedily so that each
fold's class proportions stay close to the whole set's (stratified when the
groups allow it). Everything is deterministic from the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from napari_histattn.errors import HistattnError


class SplitError(HistattnError):
    """The data cannot be split as asked (too few patients for the folds)."""


@dataclass(frozen=True)
class Fold:
    """Indices of one cross-validation fold.

    Attributes
    ----------
    index
        0-based fold number.
    train, val, test
        Sorted sample indices; disjoint, and no group spans two of them.
    """

    index: int
    train: NDArray[np.int64]
    val: NDArray[np.int64]
    test: NDArray[np.int64]


def _group_table(
    labels: ArrayLike, groups: Sequence[str]
) -> tuple[list[str], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Unique groups, per-group class counts ``(G, C)``, sample->group index, labels."""
    y = np.asarray(labels, dtype=np.int64)
    if y.ndim != 1 or len(groups) != y.size:
        raise ValueError(f"{y.size} labels but {len(groups)} groups")
    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    sample_group = np.array([index[g] for g in groups], dtype=np.int64)
    n_classes = int(y.max(initial=-1)) + 1
    counts = np.zeros((len(names), max(n_classes, 1)), dtype=np.int64)
    np.add.at(counts, (sample_group, y), 1)
    return names, counts, sample_group, y


def _assign_groups(counts: NDArray[np.int64], n_parts: int, seed: int) -> NDArray[np.int64]:
    """Greedy stratified assignment of groups to ``n_parts`` parts.

    Groups are visited largest and most class-skewed first (random order among
    equals, from ``seed``); each goes to the part where the spread of per-class
    proportions across parts grows least, ties to the part with fewest samples.
    This is the strategy of scikit-learn's StratifiedGroupKFold.
    """
    rng = np.random.default_rng(seed)
    n_groups = counts.shape[0]
    class_totals = np.maximum(counts.sum(axis=0), 1)
    perm = rng.permutation(n_groups)
    # Stable sort of the shuffled groups: big, skewed groups first.
    keys = np.lexsort((-counts[perm].std(axis=1), -counts[perm].sum(axis=1)))
    order = perm[keys]
    part_counts = np.zeros((n_parts, counts.shape[1]), dtype=np.float64)
    assignment = np.empty(n_groups, dtype=np.int64)
    for g in order:
        best_part, best_key = 0, (np.inf, np.inf)
        for part in range(n_parts):
            part_counts[part] += counts[g]
            spread = float(np.mean(np.std(part_counts / class_totals, axis=0)))
            part_counts[part] -= counts[g]
            key = (round(spread, 12), float(part_counts[part].sum()))
            if key < best_key:
                best_part, best_key = part, key
        assignment[g] = best_part
        part_counts[best_part] += counts[g]
    return assignment


def group_kfold(
    labels: ArrayLike, groups: Sequence[str], k: int, seed: int = 0
) -> list[NDArray[np.int64]]:
    """Split samples into ``k`` folds by group, stratified by class when possible.

    Parameters
    ----------
    labels
        Integer class label per sample.
    groups
        Group (patient) id per sample.
    k
        Number of folds, at least 2 and at most the number of groups.
    seed
        Seeds the order in which groups of equal size are placed.

    Returns
    -------
    list of arrays
        The sorted sample indices of each fold's test part.
    """
    names, counts, sample_group, _ = _group_table(labels, groups)
    if k < 2:
        raise SplitError(f"k-fold needs at least 2 folds, got {k}")
    if len(names) < k:
        raise SplitError(
            f"cannot make {k} patient-wise folds from {len(names)} patients/groups; "
            f"use at most {len(names)} folds"
        )
    assignment = _assign_groups(counts, k, seed)
    folds = [np.flatnonzero(assignment[sample_group] == f).astype(np.int64) for f in range(k)]
    empty = [i for i, f in enumerate(folds) if f.size == 0]
    if empty:
        raise SplitError(f"folds {empty} got no samples; use fewer folds")
    return folds


def group_split(
    labels: ArrayLike,
    groups: Sequence[str],
    fraction: float,
    seed: int = 0,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Split into (rest, held-out) by group; the held-out part has about ``fraction``
    of the samples and at least one group.

    Groups are placed in ``round(1 / fraction)`` stratified parts and one part
    is held out, so the class mix of both sides follows the whole set's.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    names, counts, sample_group, _ = _group_table(labels, groups)
    if len(names) < 2:
        raise SplitError(f"cannot hold out a patient-wise part from {len(names)} patient/group")
    n_parts = min(len(names), max(2, round(1.0 / fraction)))
    assignment = _assign_groups(counts, n_parts, seed)
    held = assignment[sample_group] == 0
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)


def cross_validation_folds(
    labels: ArrayLike,
    groups: Sequence[str],
    k: int,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> list[Fold]:
    """Train/validation/test indices for each of ``k`` patient-wise folds.

    With ``k >= 2`` fold i is the test part of a group k-fold; validation
    (for early stopping and checkpoint selection) is a patient-wise part of
    about ``val_fraction`` of the remaining samples. With ``k == 1`` there is
    one split: a held-out test part of about ``test_fraction``, then validation
    as above.
    """
    y = np.asarray(labels, dtype=np.int64)
    all_groups = list(groups)
    if k == 1:
        rest, test = group_split(y, all_groups, test_fraction, seed)
        tests = [test]
    else:
        tests = group_kfold(y, all_groups, k, seed)
    folds: list[Fold] = []
    for i, test in enumerate(tests):
        rest = np.setdiff1d(np.arange(y.size), test)
        rest_groups = [all_groups[j] for j in rest]
        train_pos, val_pos = group_split(y[rest], rest_groups, val_fraction, seed + 1 + i)
        folds.append(Fold(i, np.sort(rest[train_pos]), np.sort(rest[val_pos]), np.sort(test)))
    return folds
