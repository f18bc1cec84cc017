"""Instance MIL from slide labels: the stage that fits A-MIL's head on single tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histattn.errors import HistattnError
from napari_histattn.models.registry import create_model
from napari_histattn.progress import run_to_completion
from napari_histattn.stats import roc_auc_binary
from napari_histattn.training.instance_mil import (
    InstanceMILConfig,
    fit_logistic,
    instance_mil_stage,
)

DIM = 8
LESION, LOOKALIKE = 0, 1  # the feature dimensions that mark a lesion tile and a look-alike


class Bags:
    """Bags of tile features: normal tissue N(0, 1); look-alikes (in every bag) high on
    dimension ``LOOKALIKE``; in a positive bag two lesion tiles that are look-alikes too
    and also high on dimension ``LESION``: only instance evidence tells them apart. A lesion
    of ``lesion_tiles`` tiles (3 %, the training slides' lesions)."""

    def __init__(self, n_bags: int, seed: int, n_tiles: int = 300, lesion_tiles: int = 9) -> None:
        rng = np.random.default_rng(seed)
        self.bags, self.labels, self.lesion_rows = [], [], []
        for i in range(n_bags):
            x = rng.normal(size=(n_tiles, DIM)).astype(np.float32)
            x[:12, LOOKALIKE] += 4.0  # look-alikes in every slide
            label = i % 2
            rows = np.array([], dtype=np.int64)
            if label:
                rows = rng.choice(np.arange(12, n_tiles), lesion_tiles, replace=False)
                x[rows, LOOKALIKE] += 4.0
                x[rows, LESION] += 4.0
            self.bags.append(x)
            self.labels.append(label)
            self.lesion_rows.append(rows)

    def __len__(self) -> int:
        return len(self.bags)

    def label(self, index: int) -> int:
        return self.labels[index]

    def all_features(self, index: int) -> np.ndarray:
        return self.bags[index]


def _model(train: Bags) -> torch.nn.Module:
    model = create_model(
        "amil", encoder="none", embed_dim=DIM, n_classes=2, standardise=True, n_branches=2
    )
    x = torch.from_numpy(np.concatenate(train.bags))
    model.set_feature_scaling(x.mean(0), x.std(0))  # type: ignore[operator]
    return model


def test_fit_logistic_separates_and_repeats_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=gen)
    y = (x[:, 0] > 0).float()
    w, b = fit_logistic(x, y, torch.ones(200), l2=1e-3)
    assert ((x @ w + b > 0).float() == y).float().mean() > 0.97
    assert w[0] > 5 * w[1:].abs().max()
    w2, b2 = fit_logistic(x, y, torch.ones(200), l2=1e-3)
    assert torch.equal(w, w2) and torch.equal(b, b2)  # from zero, full batch: no seed


def test_instance_mil_puts_the_top_tile_on_the_lesion_and_freezes_the_head() -> None:
    train, val, test = Bags(16, 0), Bags(8, 1), Bags(8, 2)
    model = _model(train)
    record = run_to_completion(
        instance_mil_stage(model, train, val, InstanceMILConfig(rounds=4, top_k=2))
    )
    history = record["history"]
    assert history[0]["positive_tiles"] == 8 * 300  # round 0: every tile of a positive slide
    assert history[1]["positive_tiles"] == 8 * 2  # then the top 2 tiles of each positive slide
    assert record["chosen_round"] in [h["round"] for h in history]
    assert all(not p.requires_grad for p in model.head.parameters())

    model.eval()
    top = {0: [], 1: []}
    with torch.no_grad():
        for x, label, lesion in zip(test.bags, test.labels, test.lesion_rows, strict=True):
            out = model.forward_features(torch.from_numpy(x)[None])
            margin = (out.instance_logits[0, :, 1] - out.instance_logits[0, :, 0]).numpy()
            if label:  # the most suspicious tile is a lesion tile, not a look-alike
                assert int(np.argmax(margin)) in set(lesion.tolist())
                rows = np.concatenate([lesion, np.arange(12)])  # lesion, then look-alike tiles
                is_lesion = np.arange(rows.size) < lesion.size
                assert roc_auc_binary(is_lesion, margin[rows]) > 0.9
            top[label].append(margin.max())
    assert min(top[1]) > max(top[0])  # the top tile alone separates the slides
    # A tile alone scores the fitted margin; class 0's logit is 0.
    assert torch.all(out.instance_logits[..., 0] == 0)


def test_instance_mil_refuses_what_it_cannot_train() -> None:
    train = Bags(4, 0)
    three = create_model("amil", encoder="none", embed_dim=DIM, n_classes=3, standardise=True)
    with pytest.raises(HistattnError, match="two-class"):
        run_to_completion(instance_mil_stage(three, train, None, InstanceMILConfig()))
    only_benign = Bags(4, 0)
    only_benign.labels = [0, 0, 0, 0]
    with pytest.raises(HistattnError, match="benign and positive"):
        run_to_completion(instance_mil_stage(_model(train), only_benign, None, InstanceMILConfig()))
    with pytest.raises(HistattnError, match="top_k >= 1"):
        InstanceMILConfig(top_k=0)


def test_without_validation_the_last_round_is_kept_and_recorded_as_such() -> None:
    train = Bags(8, 3)
    record = run_to_completion(
        instance_mil_stage(_model(train), train, None, InstanceMILConfig(rounds=2, top_k=2))
    )
    assert record["chosen_round"] == record["history"][-1]["round"]
    assert all(h["val_roc_auc"] is None for h in record["history"])  # JSON null, not NaN


def test_voting_models_rank_a_tile_by_the_sum_of_their_ranks() -> None:
    """``consensus_order``: one model orders by its margin; two order by the sum of their
    ranks, ties broken by the first model's margin, so a tile one model alone puts first
    does not lead."""
    from napari_histattn.training.pseudo_labels import consensus_order

    a = np.array([3.0, 2.0, 1.0, 0.0])
    b = np.array([0.0, 3.0, 2.0, 1.0])  # ranks 3, 0, 1, 2 against a's 0, 1, 2, 3
    assert consensus_order([a]).tolist() == [0, 1, 2, 3]
    assert consensus_order([a, b]).tolist() == [1, 0, 2, 3]  # sums 3, 1, 3, 5
    assert consensus_order([a, a]).tolist() == consensus_order([a]).tolist()
