"""The attention-sampling model, its patch source and a small training run.

Registry-driven checks (forward/backward, attention sums to 1, save/load) run
through ``tests/models/test_registry.py`` from the example the model registers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_histattn.models.attention_sampling import (
    AttentionSampling,
    downscale_image,
    grid_to_highres_xy,
)
from napari_histattn.models.patch_source import (
    PatchSource,
    TensorPatchSource,
    patch_origin_hr_xy,
)
from napari_histattn.models.registry import create_model

TINY = {
    "n_classes": 2,
    "n_patches": 5,
    "patch_size": 8,
    "downscale": 4,
    "attention_channels": 4,
    "feature_channels": 4,
    "feature_dim": 6,
}


def _tiny(**overrides: object) -> AttentionSampling:
    torch.manual_seed(0)
    model = create_model("attention_sampling", **{**TINY, **overrides})
    assert isinstance(model, AttentionSampling)
    return model


def _images(batch: int = 2, side: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    high_res = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))
    return downscale_image(high_res, 4), high_res


# --- coordinates and patch source ----------------------------------------------


def test_grid_to_highres_xy_gives_cell_centres() -> None:
    grid_rc = torch.tensor([[0, 0], [2, 5], [3, 0]])
    xy = grid_to_highres_xy(grid_rc, grid_hw=(4, 6), high_res_hw=(40, 120))
    # Cells are 10 px high and 20 px wide; (row 2, col 5) is centred at x=110, y=25.
    assert xy.tolist() == [[10.0, 5.0], [110.0, 25.0], [10.0, 35.0]]


def test_patch_origin_centres_even_and_odd_patches() -> None:
    centers = torch.tensor([[10.0, 5.0], [10.5, 5.5]])
    assert patch_origin_hr_xy(centers, 4).tolist() == [[8, 3], [9, 4]]
    assert patch_origin_hr_xy(centers, 3).tolist() == [[9, 4], [9, 4]]


def test_tensor_patch_source_reads_interior_and_pads_borders() -> None:
    image = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    source = TensorPatchSource(image, pad_value=-1.0)
    assert isinstance(source, PatchSource)
    assert source.high_res_size_wh(1) == (12, 10)
    centers = torch.tensor([[6.0, 5.0], [0.0, 0.0], [12.0, 10.0]])
    patches = source.patches(1, centers, 4)
    assert patches.shape == (3, 3, 4, 4) and patches.dtype == torch.float32
    # Interior: origin (4, 3), the exact slice of image 1.
    assert torch.equal(patches[0], image[1, :, 3:7, 4:8])
    # Top-left corner: origin (-2, -2); the first two rows/cols are padding.
    assert (patches[1, :, :2, :] == -1).all() and (patches[1, :, :, :2] == -1).all()
    assert torch.equal(patches[1, :, 2:, 2:], image[1, :, 0:2, 0:2])
    # Bottom-right corner: origin (10, 8); only the top-left 2x2 is inside.
    assert torch.equal(patches[2, :, :2, :2], image[1, :, 8:10, 10:12])
    assert (patches[2, :, 2:, :] == -1).all() and (patches[2, :, :, 2:] == -1).all()


def test_downscale_image_averages_blocks() -> None:
    image = torch.zeros(1, 3, 8, 12)
    image[..., :4, :4] = 1.0
    low = downscale_image(image, 4)
    assert low.shape == (1, 3, 2, 3)
    assert low[0, 0].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


# --- the model -------------------------------------------------------------------


class RecordingSource(TensorPatchSource):
    """A tensor source that records which centres were asked for."""

    def __init__(self, high_res: torch.Tensor) -> None:
        super().__init__(high_res)
        self.requests: list[tuple[int, torch.Tensor, int]] = []

    def patches(self, batch_index: int, centers_hr_xy: torch.Tensor, patch_size: int):
        self.requests.append((batch_index, centers_hr_xy.clone(), patch_size))
        return super().patches(batch_index, centers_hr_xy, patch_size)


@pytest.mark.parametrize("replace", [False, True])
@pytest.mark.parametrize("aggregation", ["expectation", "reinforce"])
def test_forward_shapes_and_consistency(replace: bool, aggregation: str) -> None:
    model = _tiny(replace=replace, aggregation=aggregation, feature_scale=3.0).eval()
    low_res, high_res = _images()
    source = RecordingSource(high_res)
    with torch.no_grad():
        out = model(low_res, source, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (2, 2)
    assert out.attention.shape == out.attention_logits.shape == (2, 6, 6)
    torch.testing.assert_close(out.attention.sum((1, 2)), torch.ones(2))
    torch.testing.assert_close(
        out.attention, torch.softmax(out.attention_logits.flatten(1), 1).view(2, 6, 6)
    )
    assert out.samples_rc is not None and out.sample_attention is not None
    assert out.features is not None
    assert out.samples_rc.shape == (2, 5, 2) and out.samples_rc.dtype == torch.long
    assert ((out.samples_rc >= 0) & (out.samples_rc < 6)).all()
    rows, cols = out.samples_rc[..., 0], out.samples_rc[..., 1]
    gathered = out.attention[torch.arange(2)[:, None], rows, cols]
    torch.testing.assert_close(out.sample_attention, gathered)
    if not replace:
        flat = rows * 6 + cols
        assert all(len(set(r.tolist())) == 5 for r in flat)
    # Features: L2-normalised then scaled.
    assert out.features.shape == (2, 5, 6)
    torch.testing.assert_close(out.features.norm(dim=-1), torch.full((2, 5), 3.0))
    # The source was asked for exactly the sampled cells' centres.
    assert [r[0] for r in source.requests] == [0, 1]
    for b, centers, size in source.requests:
        assert size == 8
        torch.testing.assert_close(centers, grid_to_highres_xy(out.samples_rc[b], (6, 6), (24, 24)))


def test_same_generator_seed_gives_identical_outputs() -> None:
    model = _tiny().eval()
    low_res, high_res = _images()
    source = TensorPatchSource(high_res)
    with torch.no_grad():
        runs = [
            model(low_res, source, generator=torch.Generator().manual_seed(s)) for s in (4, 4, 5)
        ]
    assert torch.equal(runs[0].samples_rc, runs[1].samples_rc)
    assert torch.equal(runs[0].logits, runs[1].logits)
    assert not torch.equal(runs[0].samples_rc, runs[2].samples_rc)


def test_attention_map_alone_matches_forward() -> None:
    model = _tiny().eval()
    low_res, high_res = _images()
    with torch.no_grad():
        logits, attention = model.attention_map(low_res)
        out = model(low_res, TensorPatchSource(high_res), generator=torch.Generator())
    assert torch.equal(attention, out.attention)
    assert torch.equal(logits, out.attention_logits)


def test_temperature_flattens_the_attention() -> None:
    low_res, _ = _images()
    sharp = _tiny(temperature=0.5).eval()
    flat = _tiny(temperature=4.0).eval()
    flat.load_state_dict(sharp.state_dict())
    with torch.no_grad():
        _, a_sharp = sharp.attention_map(low_res)
        _, a_flat = flat.attention_map(low_res)
    assert (a_flat.flatten(1).amax(1) < a_sharp.flatten(1).amax(1)).all()


def test_too_many_patches_without_replacement_raise() -> None:
    model = _tiny(n_patches=37)
    low_res, high_res = _images()
    with pytest.raises(ValueError, match="cannot draw 37 distinct positions from a grid of 36"):
        model(low_res, TensorPatchSource(high_res))
    out = model(low_res, TensorPatchSource(high_res), n_patches=36)
    assert out.samples_rc is not None and out.samples_rc.shape == (2, 36, 2)


@pytest.mark.parametrize("aggregation", ["expectation", "reinforce"])
def test_classification_loss_reaches_the_attention_network(aggregation: str) -> None:
    model = _tiny(aggregation=aggregation, entropy_weight=0.0).train()
    low_res, high_res = _images(batch=4)
    out = model(low_res, TensorPatchSource(high_res), generator=torch.Generator().manual_seed(1))
    loss = model.loss(out, torch.tensor([0, 1, 0, 1]))
    loss.backward()
    grad = model.attention_net.body[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_loss_value_is_cross_entropy_minus_weighted_entropy() -> None:
    # Both variants report the same quantity: the REINFORCE surrogate has value 0.
    low_res, high_res = _images(batch=4)
    targets = torch.tensor([0, 1, 1, 0])
    values = []
    for aggregation in ("expectation", "reinforce"):
        model = _tiny(aggregation=aggregation, entropy_weight=0.1).train()
        out = model(low_res, TensorPatchSource(high_res), generator=torch.Generator())
        ce = F.cross_entropy(out.logits, targets)
        a = out.attention.flatten(1)
        entropy = -(a * a.log()).sum(1).mean()
        loss = model.loss(out, targets)
        torch.testing.assert_close(loss, ce - 0.1 * entropy)
        values.append(loss)
    assert values[0].item() != values[1].item()  # different pooling, different logits


def test_entropy_term_pushes_attention_towards_uniform() -> None:
    # Descending the loss minus its cross-entropy (the regulariser alone) must
    # spread a peaked attention: the sign of the entropy bonus.
    model = _tiny(entropy_weight=1.0, temperature=0.2).train()
    low_res, high_res = _images(batch=4)
    targets = torch.zeros(4, dtype=torch.long)
    optimizer = torch.optim.SGD(model.attention_net.parameters(), lr=0.05)
    entropies = []
    for _ in range(10):
        out = model(low_res, TensorPatchSource(high_res), generator=torch.Generator())
        a = out.attention.detach().flatten(1)
        entropies.append(float(-(a * a.log()).sum(1).mean()))
        regulariser = model.loss(out, targets) - F.cross_entropy(out.logits, targets)
        optimizer.zero_grad()
        regulariser.backward()
        optimizer.step()
    assert entropies[-1] > entropies[0] + 0.1, entropies


def test_learned_feature_scale_is_trained() -> None:
    fixed = _tiny(feature_scale=2.0)
    learned = _tiny(feature_scale=2.0, learn_feature_scale=True)
    assert not fixed.feature_net.log_scale.requires_grad
    low_res, high_res = _images()
    out = learned(low_res, TensorPatchSource(high_res), generator=torch.Generator())
    learned.loss(out, torch.tensor([0, 1])).backward()
    assert learned.feature_net.log_scale.grad is not None
    assert learned.feature_net.log_scale.grad.abs() > 0


@pytest.mark.parametrize(
    ("key", "value"), [("aggregation", "mean"), ("temperature", 0.0), ("feature_scale", -1.0)]
)
def test_invalid_configuration_raises(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        _tiny(**{key: value})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_same_seed_same_samples_on_gpu_and_cpu() -> None:
    # Draws are made on the (CPU) generator, so the device the model runs on
    # does not change them.
    model = _tiny().eval()
    low_res, high_res = _images()
    with torch.no_grad():
        cpu = model(
            low_res, TensorPatchSource(high_res), generator=torch.Generator().manual_seed(3)
        )
        model.cuda()
        gpu = model(
            low_res.cuda(),
            TensorPatchSource(high_res.cuda()),
            generator=torch.Generator().manual_seed(3),
        )
    assert torch.equal(cpu.samples_rc, gpu.samples_rc.cpu())
    torch.testing.assert_close(cpu.logits, gpu.logits.cpu(), rtol=1e-4, atol=1e-5)


# --- training sanity ---------------------------------------------------------------


def _megapixel_like(
    n: int, gen: torch.Generator, side: int = 64, cell: int = 8, distractors: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a few blobs of equal mean brightness. The class is in one blob's
    one-pixel stripes (horizontal: 0, vertical: 1), invisible at 1/8 scale, where
    every blob is a uniform grey cell: only high-resolution patches tell."""
    grid = side // cell
    images = torch.zeros(n, 3, side, side)
    labels = torch.randint(0, 2, (n,), generator=gen)
    stripes = (torch.arange(cell) % 2).float()
    for i in range(n):
        cells = torch.randperm(grid * grid, generator=gen)[: distractors + 1].tolist()
        for j, c in enumerate(cells):
            r, col = divmod(c, grid)
            block = images[i, :, r * cell : (r + 1) * cell, col * cell : (col + 1) * cell]
            if j == 0:
                pattern = stripes[:, None] if labels[i] == 0 else stripes[None, :]
                block[:] = pattern.expand(cell, cell)
            else:
                block[:] = 0.5
    return images, labels


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["expectation", "reinforce"])
def test_training_lowers_the_loss_and_beats_chance(aggregation: str) -> None:
    gen = torch.Generator().manual_seed(0)
    train_x, train_y = _megapixel_like(256, gen)
    test_x, test_y = _megapixel_like(128, gen)
    # At 1/8 scale every blob, target or distractor, is a uniform 0.5 cell: the
    # low-resolution view alone carries no class information.
    assert set(downscale_image(train_x, 8).unique().tolist()) == {0.0, 0.5}
    torch.manual_seed(0)
    model = create_model(
        "attention_sampling",
        n_classes=2,
        n_patches=6,
        patch_size=12,
        downscale=8,
        feature_channels=8,
        feature_dim=16,
        aggregation=aggregation,
        entropy_weight=0.0,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    sampling = torch.Generator().manual_seed(1)
    losses = []
    model.train()
    for _ in range(300):
        idx = torch.randint(0, len(train_x), (16,), generator=sampling)
        high_res = train_x[idx]
        out = model(downscale_image(high_res, 8), TensorPatchSource(high_res), generator=sampling)
        loss = model.loss(out, train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < 0.75 * first, (first, last)
    model.eval()
    with torch.no_grad():
        out = model(
            downscale_image(test_x, 8),
            TensorPatchSource(test_x),
            generator=torch.Generator().manual_seed(5),
        )
    accuracy = (out.logits.argmax(1) == test_y).float().mean().item()
    assert accuracy >= 0.7, accuracy
