"""HATNet: regions from grid positions, the two attention levels, order and padding invariance."""

from __future__ import annotations

import pytest
import torch

from napari_histattn.models.hatnet import HATNet, HATNetTask, group_regions
from napari_histattn.models.registry import create_model


def _grid(n_rows: int, n_cols: int) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(n_rows), torch.arange(n_cols), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], dim=1)


def _model(**overrides: object) -> HATNet:
    torch.manual_seed(0)
    config = {"encoder": "none", "embed_dim": 8, "attn_dim": 6, "n_heads": 2, "region_size": 2}
    model = create_model("hatnet", **{**config, **overrides})
    return model.eval()


def test_tiles_group_into_k_by_k_regions_at_their_slots() -> None:
    positions = torch.tensor([[[0, 0], [0, 1], [1, 1], [0, 2], [3, 3], [0, 0]]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    regions = group_regions(positions, mask, 2)
    # Regions (0, 0), (0, 1) and (1, 1) in grid order; padding belongs to none.
    assert regions.of_tile.tolist() == [[0, 0, 0, 1, 2, -1]]
    assert regions.slot[0, :5].tolist() == [0, 1, 3, 0, 3]
    assert regions.rc[0].tolist() == [[0, 0], [0, 1], [1, 1]]
    assert regions.mask.tolist() == [[True, True, True]]


def test_two_tiles_at_one_position_or_a_negative_position_are_refused() -> None:
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="share a grid position"):
        group_regions(torch.tensor([[[1, 1], [1, 1]]]), mask, 2)
    with pytest.raises(ValueError, match="non-negative"):
        group_regions(torch.tensor([[[0, -1], [1, 1]]]), mask, 2)


def test_both_attention_levels_have_the_documented_shapes_and_sum_to_one() -> None:
    model = _model()
    # Bag 0: a 4 x 5 grid of tiles (regions of 2 x 2: 2 x 3 = 6); bag 1 its first 7, padded.
    positions = _grid(4, 5)[None].repeat(2, 1, 1)
    features = torch.randn(2, 20, 8)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        out = model(features, positions, mask=mask)
    assert out.attention.shape == out.word_attention.shape == (2, 20)
    assert out.region_attention.shape == (2, 6) and out.region_mask.sum(1).tolist() == [6, 3]
    torch.testing.assert_close(out.attention.sum(1), torch.ones(2))
    torch.testing.assert_close(out.region_attention.sum(1), torch.ones(2))
    assert (out.region_attention[~out.region_mask] == 0).all()
    assert (out.attention[~mask] == 0).all() and (out.word_attention[~mask] == 0).all()
    for b in range(2):  # word attention sums to 1 inside every region
        regions = out.region_of_tile[b][mask[b]]
        words = out.word_attention[b][mask[b]]
        sums = torch.zeros(6).index_add(0, regions, words)
        real = out.region_mask[b]
        torch.testing.assert_close(sums[real], torch.ones(int(real.sum())))
        # A tile's attention is its word attention times its region's attention.
        expected = words * out.region_attention[b][regions]
        torch.testing.assert_close(out.attention[b][mask[b]], expected)


def test_the_output_does_not_depend_on_tile_order_or_padding() -> None:
    model = _model()
    positions = _grid(3, 4)[None]
    features = torch.randn(1, 12, 8)
    with torch.no_grad():
        base = model(features, positions)
        order = torch.randperm(12, generator=torch.Generator().manual_seed(1))
        shuffled = model(features[:, order], positions[:, order])
        padded = model(
            torch.cat([features, torch.randn(1, 5, 8)], dim=1),
            torch.cat([positions, torch.zeros(1, 5, 2, dtype=torch.long)], dim=1),
            mask=torch.tensor([[True] * 12 + [False] * 5]),
        )
    torch.testing.assert_close(shuffled.logits, base.logits)
    torch.testing.assert_close(shuffled.attention[0], base.attention[0, order])
    torch.testing.assert_close(padded.logits, base.logits)
    torch.testing.assert_close(padded.attention[:, :12], base.attention)


def test_positions_decide_the_regions_and_so_the_output() -> None:
    model = _model()
    features = torch.randn(1, 8, 8)
    together = _grid(2, 4)[None]  # two full 2 x 2 regions
    apart = torch.stack([together[0, :, 0] * 3, together[0, :, 1] * 3], dim=1)[None]
    with torch.no_grad():
        one, other = model(features, together), model(features, apart)
    assert int(one.region_mask.sum()) == 2 and int(other.region_mask.sum()) == 8
    assert not torch.allclose(one.logits, other.logits)
    # With one tile per region, the word attention is 1 everywhere.
    torch.testing.assert_close(other.word_attention, torch.ones(1, 8))


def test_the_task_collates_bags_with_positions_and_trains() -> None:
    model = _model()
    model.train()
    task = HATNetTask(chunk_size=None)
    items = [
        (torch.randn(6, 8), _grid(2, 3), 0),
        (torch.randn(4, 8), _grid(2, 2), 1),
    ]
    batch = task.collate(items)
    assert batch.inputs[1].shape == (2, 6, 2) and batch.kwargs["mask"].sum().item() == 10
    output = task.call(model, batch, torch.device("cpu"))
    loss = task.loss(model, output, batch.targets)
    loss.backward()
    assert model.word_slot.weight.grad is not None and model.region_position.weight.grad is not None
    with pytest.raises(ValueError, match="tile positions"):
        task.collate([(torch.randn(6, 8), 0)])


def test_the_negative_bag_loss_reaches_hatnet_as_it_does_a_mil() -> None:
    from napari_histattn.models.amil.instances import negative_instance_loss

    positions = _grid(2, 3)[None].repeat(2, 1, 1)
    features = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([1, 0])
    plain, weighted = _model(), _model(negative_loss_weight=0.5)
    assert weighted.negative_loss_weight == 0.5
    out_plain, out = plain(features, positions), weighted(features, positions)
    extra = negative_instance_loss(out, targets)
    assert extra is not None and float(extra) > 0
    torch.testing.assert_close(
        weighted.loss(out, targets), plain.loss(out_plain, targets) + 0.5 * extra
    )
