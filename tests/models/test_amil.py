"""A-MIL: order invariance, masking, chunked encoding, pooling variants and encoders."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from napari_histattn.models.amil import AttentionMIL, AttentionPooling
from napari_histattn.models.encoders import build_encoder, list_encoders
from napari_histattn.models.registry import create_model


def _tiny_amil(**overrides) -> AttentionMIL:
    config = {"encoder": "tiny", "patch_size": 8, "embed_dim": 8, "attn_dim": 6, "n_classes": 3}
    return create_model("amil", **{**config, **overrides}).eval()


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("n_branches", [1, 2])
def test_pooling_is_invariant_to_bag_order(gated: bool, n_branches: int) -> None:
    torch.manual_seed(0)
    model = _tiny_amil(gated=gated, n_branches=n_branches)
    patches = torch.rand(2, 7, 3, 8, 8)
    order = torch.randperm(7)
    with torch.no_grad():
        out = model(patches)
        shuffled = model(patches[:, order])
    torch.testing.assert_close(shuffled.logits, out.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shuffled.attention, out.attention[:, order], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.attention.sum(1), torch.ones(2))
    # The attention is not trivially uniform, so the permutation check means something.
    assert out.attention.std() > 0


def test_gated_and_plain_attention_follow_ilse() -> None:
    torch.manual_seed(0)
    pooling = AttentionPooling(in_dim=5, attn_dim=4, gated=True)
    features = torch.randn(1, 6, 5)
    hidden = torch.tanh(pooling.attention_v(features)) * torch.sigmoid(
        pooling.attention_u(features)
    )
    expected_scores = pooling.attention_w(hidden)
    pooled, weights, scores = pooling(features)
    torch.testing.assert_close(scores, expected_scores)
    torch.testing.assert_close(weights, torch.softmax(expected_scores, dim=1))
    torch.testing.assert_close(pooled[:, 0], (weights[..., 0:1] * features).sum(1))
    plain = AttentionPooling(in_dim=5, attn_dim=4, gated=False)
    assert plain.attention_u is None
    expected_plain = plain.attention_w(torch.tanh(plain.attention_v(features)))
    torch.testing.assert_close(plain.scores(features), expected_plain)


def test_mask_zeroes_padding_and_ignores_its_content() -> None:
    torch.manual_seed(0)
    model = _tiny_amil()
    patches = torch.rand(1, 6, 3, 8, 8)
    mask = torch.tensor([[True, True, True, True, False, False]])
    with torch.no_grad():
        out = model(patches, mask=mask)
        altered = patches.clone()
        altered[:, 4:] = torch.rand(1, 2, 3, 8, 8) * 10
        out_altered = model(altered, mask=mask)
        unpadded = model(patches[:, :4])
    assert torch.equal(out.attention[:, 4:], torch.zeros(1, 2))
    torch.testing.assert_close(out.attention.sum(1), torch.ones(1))
    torch.testing.assert_close(out_altered.logits, out.logits)
    torch.testing.assert_close(unpadded.logits, out.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unpadded.attention, out.attention[:, :4], rtol=1e-5, atol=1e-7)


def test_fully_masked_or_empty_bags_are_refused() -> None:
    model = _tiny_amil()
    with pytest.raises(ValueError, match="at least one unmasked"):
        model(torch.rand(2, 3, 3, 8, 8), mask=torch.tensor([[True] * 3, [False] * 3]))
    with pytest.raises(ValueError, match="empty bag"):
        model.forward_features(torch.zeros(1, 0, 8))


def test_chunked_encoding_matches_and_bounds_the_chunk() -> None:
    torch.manual_seed(0)
    model = _tiny_amil()
    seen: list[int] = []
    model.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    patches = torch.rand(2, 2500, 3, 8, 8)
    with torch.inference_mode():
        whole = model.encode(patches, chunk_size=None)
        seen.clear()
        chunked = model.encode(patches, chunk_size=300)
        out = model(patches, chunk_size=300)
        from_features = model.forward_features(whole)
    assert max(seen) == 300 and sum(seen) == 2 * 5000  # encode() then forward()
    assert chunked.shape == (2, 2500, 8)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, from_features.logits)


def test_chunked_encoding_keeps_gradients() -> None:
    torch.manual_seed(0)
    model = _tiny_amil().train()
    out = model(torch.rand(1, 5, 3, 8, 8), chunk_size=2)
    out.logits.sum().backward()
    assert model.encoder[0][0].weight.grad.abs().sum() > 0


def test_features_only_model() -> None:
    model = create_model("amil", encoder="none", embed_dim=12, n_classes=4).eval()
    assert model.encoder is None
    out = model.forward_features(torch.randn(3, 9, 12))
    assert out.logits.shape == (3, 4) and out.attention.shape == (3, 9)
    with pytest.raises(ValueError, match="forward_features"):
        model(torch.rand(1, 2, 3, 8, 8))
    with pytest.raises(ValueError, match="needs embed_dim"):
        create_model("amil", encoder="none")


def test_default_is_the_seed_network_for_28px_patches() -> None:
    model = create_model("amil").eval()
    assert model.patch_size == 28 and model.embed_dim == 500
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(20, (5, 5)), (50, (5, 5))]
    linear = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linear] == [(800, 500)]
    assert model.pooling.attention_v.out_features == 128 and model.pooling.gated
    with torch.no_grad():
        assert model(torch.rand(1, 4, 3, 28, 28)).logits.shape == (1, 2)


@pytest.mark.parametrize(
    ("name", "size", "natural_dim"),
    [("small_cnn", 20, 500), ("resnet18", 32, 512), ("tiny", 5, 16)],
)
def test_encoders_build_offline_with_their_widths(
    name: str, size: int, natural_dim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.hub

    def no_download(*_args, **_kwargs):
        raise AssertionError("an encoder tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    assert name in list_encoders()
    encoder, dim = build_encoder(name)
    assert dim == natural_dim
    encoder.eval()
    with torch.no_grad():
        assert encoder(torch.rand(2, 3, size, size)).shape == (2, natural_dim)
    projected, dim = build_encoder(name, in_channels=1, out_dim=7)
    assert dim == 7
    with torch.no_grad():
        assert projected.eval()(torch.rand(2, 1, size, size)).shape == (2, 7)


def test_unknown_encoder_and_small_patches_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown patch encoder 'vit'"):
        build_encoder("vit")
    with pytest.raises(ValueError, match="at least 16 px"):
        create_model("amil", encoder="small_cnn", patch_size=12)


def test_clam_instance_loss_uses_the_most_and_least_attended_real_instances() -> None:
    torch.manual_seed(0)
    model = create_model(
        "amil", encoder="none", embed_dim=4, n_classes=2, instance_loss_weight=0.3, instance_k=2
    ).train()
    features = torch.randn(2, 9, 4)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False  # the second bag has six real instances
    features[1, 6:] = 1e6  # padding that must never be picked
    out = model(features, mask=mask)
    targets = torch.tensor([1, 0])
    loss = model.loss(out, targets)
    bag = torch.nn.functional.cross_entropy(out.logits, targets)
    manual = []
    for b, n in ((0, 9), (1, 6)):
        att, feats = out.attention[b, :n], features[b, :n]
        k = min(2, n // 3)
        chosen = feats[torch.cat([att.topk(k).indices, (-att).topk(k).indices])]
        pseudo = torch.tensor([1] * k + [0] * k)
        clf = model.instance_classifiers[int(targets[b])]
        manual.append(torch.nn.functional.cross_entropy(clf(chosen), pseudo))
    expected = 0.7 * bag + 0.3 * torch.stack(manual).mean()
    torch.testing.assert_close(loss, expected)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.instance_classifiers[1].weight.grad is not None
    # Off by default: the loss is the bag's cross-entropy.
    plain = create_model("amil", encoder="none", embed_dim=4, n_classes=2)
    out = plain(features[:1])
    torch.testing.assert_close(
        plain.loss(out, targets[:1]), torch.nn.functional.cross_entropy(out.logits, targets[:1])
    )


def test_negative_bag_loss_labels_every_real_instance_of_a_benign_bag_benign() -> None:
    torch.manual_seed(0)
    model = create_model(
        "amil", encoder="none", embed_dim=4, n_classes=2, negative_loss_weight=0.5
    ).train()
    features = torch.randn(3, 6, 4)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False  # padding of a benign bag: never a label
    features[1, 4:] = 1e3
    targets = torch.tensor([1, 0, 0])
    out = model(features, mask=mask)
    assert out.instance_logits is not None
    per_bag = [
        torch.nn.functional.cross_entropy(out.instance_logits[b, :n], torch.zeros(n).long())
        for b, n in ((1, 4), (2, 6))
    ]
    expected = (
        torch.nn.functional.cross_entropy(out.logits, targets) + 0.5 * torch.stack(per_bag).mean()
    )
    torch.testing.assert_close(model.loss(out, targets), expected)
    # Positive bags alone: nothing to label, the bag loss is all there is.
    positive = model(features[:1])
    torch.testing.assert_close(
        model.loss(positive, targets[:1]),
        torch.nn.functional.cross_entropy(positive.logits, targets[:1]),
    )
    with pytest.raises(ValueError, match="loss weights"):
        create_model("amil", encoder="none", embed_dim=4, negative_loss_weight=-1.0)
