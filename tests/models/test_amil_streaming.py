"""A-MIL's streamed pooling: chunk by chunk, the same output as the whole bag at once."""

from __future__ import annotations

import pytest
import torch

from napari_histattn.models.amil.streaming import StreamedPooling
from napari_histattn.models.registry import create_model


def _model(**overrides):
    config = {"encoder": "none", "embed_dim": 12, "attn_dim": 6, "n_classes": 2}
    return create_model("amil", **{**config, **overrides}).eval()


def _bag(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 12, generator=gen)
    # Later instances score far higher (growing maximum: the sums so far must be rescaled)
    # and span e^40 in weight (a float32 sum of unshifted exponentials would overflow).
    return features * torch.linspace(0.5, 40.0, n)[:, None]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize(("gated", "n_branches"), [(True, 1), (False, 3)])
def test_streamed_pooling_equals_the_whole_bag(chunk: int, gated: bool, n_branches: int) -> None:
    torch.manual_seed(1)
    model = _model(gated=gated, n_branches=n_branches)
    bag = _bag(300)
    with torch.inference_mode():
        whole = model.forward_features(bag.unsqueeze(0))
        pooling = StreamedPooling(model)
        for start in range(0, len(bag), chunk):
            pooling.add(bag[start : start + chunk])
        streamed = pooling.finish()
    # Not a uniform attention, so that equality means something.
    assert whole.attention.std() > 0.1 * whole.attention.mean()
    torch.testing.assert_close(streamed.logits, whole.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(streamed.bag_logits, whole.bag_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(streamed.attention, whole.attention, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(streamed.attention_logits, whole.attention_logits)
    torch.testing.assert_close(streamed.instance_logits, whole.instance_logits)
    assert pooling.n == 300 and streamed.features is None


@pytest.mark.parametrize("rule", ["attention", "top_k", "max"])
def test_streamed_pooling_keeps_the_decision_rule_and_the_standardisation(rule: str) -> None:
    torch.manual_seed(2)
    model = _model(standardise=True, decision_k=3)
    model.set_feature_scaling(torch.linspace(-1, 1, 12), torch.linspace(0.5, 2, 12))
    model.set_decision(rule, threshold=0.7)
    bag = _bag(50, seed=3)
    with torch.inference_mode():
        whole = model.forward_features(bag.unsqueeze(0))
        pooling = StreamedPooling(model)
        for part in bag.split(9):
            pooling.add(part)
        streamed = pooling.finish()
    torch.testing.assert_close(streamed.logits, whole.logits, rtol=1e-5, atol=1e-5)


def test_streamed_pooling_rejects_an_empty_bag_and_the_wrong_width() -> None:
    model = _model()
    pooling = StreamedPooling(model)
    pooling.add(torch.zeros(0, 12))
    with pytest.raises(ValueError, match="empty bag"):
        pooling.finish()
    with pytest.raises(ValueError, match=r"\(n, 12\)"):
        pooling.add(torch.zeros(4, 5))
