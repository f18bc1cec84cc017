"""The channel/spatial attention CNN: C-Attn and S-Attn against an independent NumPy
implementation of equations 1-12, and the network's placement and heatmap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_histattn.models.dafl import (
    BACKBONES,
    AttentionVGG,
    ChannelAttention,
    SpatialAttention,
)
from napari_histattn.models.registry import create_model


def _softmax_columns(matrix: np.ndarray) -> np.ndarray:
    # Eqs. 4 and 10: normalise over i (the row index) for every column j.
    shifted = np.exp(matrix - matrix.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


def _strided_conv_no_bias(weight: np.ndarray, image: np.ndarray, k: int) -> np.ndarray:
    """Eq. 1 with an explicit window sum: ``M[o, a*W'+b] = sum_{c,u,v} W[o,c,u,v] F[c, k a+u, k b+v]``."""
    _, height, width = image.shape
    h_out, w_out = height // k, width // k
    out = np.zeros((weight.shape[0], h_out * w_out))
    for a in range(h_out):
        for b in range(w_out):
            window = image[:, k * a : k * a + k, k * b : k * b + k]
            for o in range(weight.shape[0]):
                out[o, a * w_out + b] = np.sum(weight[o] * window)
    return out


def _channel_attention_numpy(module: ChannelAttention, image: np.ndarray):
    c, h, w = image.shape
    wq = module.query.weight.detach().numpy()
    wk = module.key.weight.detach().numpy()
    wv = module.value.weight.detach().numpy()[:, :, 0, 0]
    m_q = _strided_conv_no_bias(wq, image, 4)  # C x N'
    m_k = _strided_conv_no_bias(wk, image, 4)
    m_v = wv @ image.reshape(c, h * w)  # C x N
    d = m_q @ m_k.T  # Eq. 2
    d_norm = _softmax_columns(d)  # Eqs. 3-4
    a_c = d_norm.T @ m_v  # Eq. 5
    return image + a_c.reshape(c, h, w), d_norm  # Eq. 6


def _spatial_attention_numpy(module: SpatialAttention, image: np.ndarray):
    c, h, w = image.shape
    flat = image.reshape(c, h * w)
    s_q = module.query.weight.detach().numpy()[:, :, 0, 0] @ flat  # Eq. 7, C' x N
    s_k = module.key.weight.detach().numpy()[:, :, 0, 0] @ flat
    s_v = module.value.weight.detach().numpy()[:, :, 0, 0] @ flat  # C x N
    e = s_q.T @ s_k  # Eq. 8, N x N
    e_norm = _softmax_columns(e)  # Eqs. 9-10
    a_s = s_v @ e_norm  # Eq. 11
    return image + a_s.reshape(c, h, w), e_norm  # Eq. 12


@pytest.mark.parametrize("size_hw", [(8, 12), (10, 9), (4, 4)])
def test_channel_attention_matches_numpy(size_hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    module = ChannelAttention(6).double()
    rng = np.random.default_rng(1)
    images = rng.normal(0.0, 0.5, size=(2, 6, *size_hw))
    out, d_norm = module(torch.from_numpy(images))
    assert out.shape == images.shape and d_norm.shape == (2, 6, 6)
    for b in range(2):
        expected_out, expected_d = _channel_attention_numpy(module, images[b])
        np.testing.assert_allclose(out[b].detach().numpy(), expected_out, rtol=0, atol=1e-10)
        np.testing.assert_allclose(d_norm[b].detach().numpy(), expected_d, rtol=0, atol=1e-10)
        # Neither uniform nor one-hot: the test exercises the softmax.
        assert expected_d.max() - expected_d.min() > 0.02 and expected_d.max() < 0.99
    np.testing.assert_allclose(d_norm.sum(dim=1).detach().numpy(), 1.0, atol=1e-12)


def test_channel_attention_ignores_rows_beyond_the_stride_for_d() -> None:
    # 10 = 2*4 + 2: the last two rows/columns do not enter D (floor), but are refined.
    torch.manual_seed(0)
    module = ChannelAttention(3).double()
    images = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    changed = images.clone()
    changed[..., 8:, :] += 5.0
    _, d_a = module(images)
    out_b, d_b = module(changed)
    assert torch.equal(d_a, d_b)
    assert out_b.shape == (1, 3, 10, 10)


@pytest.mark.parametrize("size_hw", [(5, 6), (3, 3)])
def test_spatial_attention_matches_numpy(size_hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    module = SpatialAttention(16, reduction=8).double()
    assert module.query.out_channels == 2 and module.value.out_channels == 16
    rng = np.random.default_rng(2)
    images = rng.normal(0.0, 1.0, size=(2, 16, *size_hw))
    out, e_norm = module(torch.from_numpy(images))
    n = size_hw[0] * size_hw[1]
    assert e_norm.shape == (2, n, n)
    for b in range(2):
        expected_out, expected_e = _spatial_attention_numpy(module, images[b])
        np.testing.assert_allclose(out[b].detach().numpy(), expected_out, rtol=0, atol=1e-10)
        np.testing.assert_allclose(e_norm[b].detach().numpy(), expected_e, rtol=0, atol=1e-10)
    np.testing.assert_allclose(e_norm.sum(dim=1).detach().numpy(), 1.0, atol=1e-12)


def test_attention_convolutions_are_bias_free_with_the_papers_shapes() -> None:
    c_attn, s_attn = ChannelAttention(32), SpatialAttention(32)
    assert c_attn.query.kernel_size == (4, 4) and c_attn.query.stride == (4, 4)
    assert c_attn.value.kernel_size == (1, 1)
    assert s_attn.query.out_channels == 4 and s_attn.key.out_channels == 4
    for conv in (c_attn.query, c_attn.key, c_attn.value, s_attn.query, s_attn.key, s_attn.value):
        assert conv.bias is None


def test_channel_attention_rejects_maps_smaller_than_the_kernel() -> None:
    with pytest.raises(ValueError, match="at least 4x4"):
        ChannelAttention(2)(torch.zeros(1, 2, 3, 8))


def test_vgg19_layout_and_default_placement() -> None:
    model = create_model("dafl_cnn")
    convs = [m for m in model.convs.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16 and len(model.convs) == 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.convs.modules()) == 16
    assert sorted(model.cattn) == ["0", "1"] and sorted(model.sattn) == ["3", "4"]
    assert model.cattn["0"].query.in_channels == 64
    assert model.sattn["4"].query.in_channels == 512
    assert model.head.out_features == 2
    assert BACKBONES["vgg_small"] == [16, "M", 32, "M", 64, "M"]


def test_attention_maps_follow_the_placement() -> None:
    model = create_model(
        "dafl_cnn", backbone="vgg_small", cattn_positions=[0], sattn_positions=[-1, 1]
    ).eval()
    with torch.no_grad():
        maps = model.attention_maps(torch.rand(2, 3, 32, 32))
    assert [(m.kind, m.block, m.grid_hw) for m in maps] == [
        ("channel", 0, (32, 32)),
        ("spatial", 1, (16, 16)),
        ("spatial", 2, (8, 8)),
    ]
    assert maps[0].matrix.shape == (2, 16, 16)
    assert maps[2].matrix.shape == (2, 64, 64)


def test_heatmap_is_the_attention_received_in_the_last_s_attn() -> None:
    # S-Attn on the first block works at input resolution, so no upsampling happens.
    model = create_model(
        "dafl_cnn", backbone=[4, "M", 8, "M"], cattn_positions=[1], sattn_positions=[0]
    ).eval()
    images = torch.rand(2, 3, 12, 10)
    with torch.no_grad():
        out = model(images)
        e_norm = model.attention_maps(images)[0].matrix
    received = e_norm.sum(dim=2).view(2, 12, 10)
    torch.testing.assert_close(out.attention_logits, received)
    torch.testing.assert_close(out.attention, received / received.sum(dim=(1, 2), keepdim=True))
    torch.testing.assert_close(out.attention_logits.sum(dim=(1, 2)), torch.full((2,), 120.0))


def test_heatmap_is_upsampled_to_the_input() -> None:
    model = create_model("dafl_cnn", backbone="vgg_small", cattn_positions=[0]).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 40, 24))
    assert out.attention.shape == (1, 40, 24) == out.attention_logits.shape
    torch.testing.assert_close(out.attention.sum(), torch.tensor(1.0))


def test_invalid_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one S-Attn"):
        AttentionVGG(backbone="vgg_small", sattn_positions=[])
    with pytest.raises(ValueError, match="out of range"):
        AttentionVGG(backbone="vgg_small", cattn_positions=[3])
    with pytest.raises(ValueError, match="unknown backbone"):
        AttentionVGG(backbone="vgg99")
    model = AttentionVGG(backbone="vgg_small", cattn_positions=[2], sattn_positions=[2])
    with pytest.raises(ValueError, match="C-Attn needs feature maps"):
        model(torch.rand(1, 3, 8, 8))  # block 2 sees 2x2 maps


def test_trains_on_a_toy_problem() -> None:
    # Bright vs dark squares: a few Adam steps must fit them.
    torch.manual_seed(0)
    model = create_model(
        "dafl_cnn", backbone="vgg_small", cattn_positions=[0], sattn_positions=[-1]
    )
    images = torch.rand(8, 3, 16, 16) * 0.5
    labels = torch.tensor([0, 1] * 4)
    images[labels == 1, :, 4:12, 4:12] += 0.5
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images).logits, labels)
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
