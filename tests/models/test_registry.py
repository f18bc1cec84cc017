"""Every registered model: forward, backward, attention normalisation, save/load round trip."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from napari_histattn.models import checkpoint
from napari_histattn.models.outputs import AttentionOutput
from napari_histattn.models.registry import (
    ModelExample,
    create_model,
    default_config,
    list_models,
    model_example,
    register_model,
)


def test_the_three_families_are_registered() -> None:
    assert {"amil", "dafl_cnn", "attention_sampling"} <= set(list_models())


def test_every_model_has_an_example_and_json_config(model_name: str) -> None:
    example = model_example(model_name)
    assert example.make_input is not None
    json.dumps(default_config(model_name))
    json.dumps(example.config)
    assert set(example.config) <= set(default_config(model_name))


def test_create_model_records_name_and_full_config(model_name: str) -> None:
    example = model_example(model_name)
    model = create_model(model_name, **example.config)
    assert model.model_name == model_name
    assert model.model_config == {**default_config(model_name), **example.config}


def test_unknown_model_name_raises() -> None:
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        create_model("nope")


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("amil", example=ModelExample())(lambda: None)


def test_forward_backward_finite(model_name: str, build_tiny) -> None:
    torch.manual_seed(0)
    model, make_inputs = build_tiny(model_name)
    model.train()
    args, kwargs = make_inputs(batch_size=2, seed=0)
    out = model(*args, **kwargs)
    assert isinstance(out, AttentionOutput)
    n_classes = model.model_config["n_classes"]
    assert out.logits.shape == (2, n_classes)
    assert out.attention.shape == out.attention_logits.shape
    assert out.attention.shape[0] == 2
    for value in (out.logits, out.attention, out.attention_logits):
        assert torch.isfinite(value).all()
    loss = F.cross_entropy(out.logits, torch.tensor([0, n_classes - 1]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for name, param in trainable:
        assert torch.isfinite(param.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for _, p in trainable)


def test_attention_is_a_distribution(model_name: str, build_tiny) -> None:
    model, make_inputs = build_tiny(model_name)
    model.eval()
    args, kwargs = make_inputs(batch_size=3, seed=1)
    with torch.no_grad():
        out = model(*args, **kwargs)
    weights = out.attention.flatten(1)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(3), rtol=0, atol=1e-5)


def test_save_load_round_trip(model_name: str, build_tiny, tmp_path) -> None:
    torch.manual_seed(0)
    model, make_inputs = build_tiny(model_name)
    model.eval()
    args, kwargs = make_inputs(batch_size=2, seed=3)
    with torch.no_grad():
        before = model(*args, **kwargs)
    n_classes = model.model_config["n_classes"]
    class_names = [f"class{i}" for i in range(n_classes)]
    path = checkpoint.save(
        tmp_path / model_name,
        model,
        class_names=class_names,
        preprocessing={"patch_size": 8, "mean": [0.5] * 3, "std": [0.25] * 3},
        training={"seed": 0, "epochs": 1},
    )
    loaded = checkpoint.load(path, device="cpu")
    assert not loaded.model.training
    assert loaded.model_name == model_name
    assert loaded.class_names == class_names
    assert loaded.config == json.loads(json.dumps(model.model_config))
    assert loaded.preprocessing["patch_size"] == 8
    sidecar = json.loads(checkpoint.sidecar_path(path).read_text())
    assert loaded.sha256 == sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert checkpoint.read_metadata(path) == loaded.metadata
    args, kwargs = make_inputs(batch_size=2, seed=3)
    with torch.no_grad():
        after = loaded.model(*args, **kwargs)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.attention, after.attention)
    assert torch.equal(before.attention_logits, after.attention_logits)
