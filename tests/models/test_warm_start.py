"""Registry encoders inside the models, warm-started from local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from napari_histattn.models.patch_source import TensorPatchSource
from napari_histattn.models.registry import create_model


@pytest.fixture
def resnet18_weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    import torchvision.models as tvm

    torch.manual_seed(3)
    state = tvm.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    return path, state


def test_attention_sampling_feature_network_from_a_registry_encoder(resnet18_weights) -> None:
    path, state = resnet18_weights
    model = create_model(
        "attention_sampling",
        n_patches=3,
        patch_size=32,
        downscale=4,
        feature_encoder="resnet18",
        freeze_feature_encoder=True,
    )
    sha = model.warm_start_feature_encoder(path)
    assert len(sha) == 64
    encoder = model.feature_net.encoder
    torch.testing.assert_close(
        encoder.state_dict()["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"]
    )
    model.train()
    assert not encoder.training  # frozen: batch-norm statistics stay the published ones
    assert all(not p.requires_grad for p in encoder.parameters())
    high = torch.rand(2, 3, 64, 64)
    low = torch.nn.functional.avg_pool2d(high, 4)
    out = model(low, TensorPatchSource(high), generator=torch.Generator().manual_seed(0))
    loss = model.loss(out, torch.tensor([0, 1]))
    loss.backward()
    assert model.feature_net.fc.weight.grad is not None and model.classifier.weight.grad is not None


def test_amil_encoder_from_local_weights_and_refusals(resnet18_weights) -> None:
    path, state = resnet18_weights
    model = create_model("amil", encoder="resnet18", patch_size=32, embed_dim=64)
    model.warm_start_feature_encoder(path)
    trunk = model.encoder[0]
    torch.testing.assert_close(trunk.state_dict()["conv1.weight"], state["conv1.weight"])
    with pytest.raises(ValueError, match="no encoder to warm-start"):
        create_model("amil", encoder="none", embed_dim=8).warm_start_feature_encoder(path)
    with pytest.raises(ValueError, match='not "default"'):
        create_model("attention_sampling").warm_start_feature_encoder(path)
