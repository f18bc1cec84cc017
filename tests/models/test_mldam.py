"""MLDAM: self-attention per level, coarse levels guiding fine ones, features fused across depths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_histattn.models.mldam import MultiLevelDualAttention
from napari_histattn.models.registry import create_model


def _model(**kwargs: object) -> MultiLevelDualAttention:
    torch.manual_seed(0)
    model = MultiLevelDualAttention("vgg_small", n_classes=3, **kwargs)  # type: ignore[arg-type]
    return model.eval()


def test_levels_are_self_attention_times_the_coarser_level() -> None:
    model = _model(levels=3)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        maps = model.level_maps(x)
        assert [tuple(m.shape[-2:]) for m in maps.values()] == [(32, 32), (16, 16), (8, 8)]
        # Recompute from the blocks: m_L = s_L, m_l = s_l * up(m_{l+1}).
        feats, h = [], x
        for convs, pool in zip(model.convs, model.pools, strict=True):
            h = convs(h)
            feats.append(h)
            h = pool(h)
        m = model.attend[2](feats[2])
        for level in (1, 0):
            up = F.interpolate(
                m, size=feats[level].shape[-2:], mode="bilinear", align_corners=False
            )
            m = model.attend[level](feats[level]) * up
            assert torch.allclose(list(maps.values())[level], m[:, 0], atol=1e-6)
    values = torch.cat([v.flatten() for v in maps.values()])
    assert torch.all((values > 0) & (values < 1))


def test_output_attention_and_fused_features() -> None:
    model = _model(levels=2)
    out = model(torch.rand(3, 3, 32, 32))
    assert out.logits.shape == (3, 3)
    assert out.attention.shape == (3, 32, 32)
    assert torch.allclose(out.attention.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)
    assert torch.allclose(out.attention_logits.mean(dim=(1, 2)), torch.ones(3), atol=0.05)
    assert model.head.in_features == 32 + 64  # the two levels' widths, concatenated
    assert model.cells_per_tile(32) == 16 and model.gradcam_layer is model.convs[-1]
    # The coarser level rides along for the viewer, relative to its mean like the attention.
    with torch.no_grad():
        x = torch.rand(3, 3, 32, 32)
        out, maps = model(x), model.level_maps(x)
    assert out.levels is not None and set(out.levels) == {"level 2"}
    coarse = maps["block 2"]
    torch.testing.assert_close(
        out.levels["level 2"], coarse / coarse.mean(dim=(1, 2), keepdim=True)
    )


def test_the_baseline_is_the_backbone_alone() -> None:
    model = _model(attention=False)
    assert len(model.attend) == 0 and model.head.in_features == 64
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    with torch.no_grad():
        h = x
        for convs, pool in zip(model.convs, model.pools, strict=True):
            last = convs(h)
            h = pool(last)
        assert torch.allclose(out.logits, model.head(last.mean(dim=(2, 3))), atol=1e-6)
    assert torch.allclose(out.attention, torch.full_like(out.attention, 1 / 1024))
    assert model.cells_per_tile(32) == 8 and out.levels is None


@pytest.mark.parametrize(
    "bad", [{"levels": 0}, {"levels": 4}, {"backbone": "vgg99"}, {"n_classes": 0}]
)
def test_bad_configuration_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        create_model("mldam", **{"backbone": "vgg_small", **bad})
