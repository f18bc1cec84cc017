"""The encoder registry: every entry's shape and preprocessing, and weights loaded from local files.

Pretrained weights cannot be downloaded here, so each test writes random weights
in the layout the weights are published in (torchvision's full ResNet state dict
with ``fc``; timm's ViT keys; Hugging Face ``transformers`` ViT keys for Phikon)
and checks that they load strictly and give the same features as the reference
network. The billion-parameter ViTs are ``slow``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from napari_histattn.models.encoders import (
    EncoderWeightsError,
    convert_to_safetensors,
    create_encoder,
    encoder_spec,
    list_encoders,
)
from napari_histattn.models.encoders.specs import ENCODERS

PRETRAINED = [n for n in list_encoders() if ENCODERS[n].hf_repo or n.startswith("resnet")]
BIG = {"uni", "uni2-h", "virchow2", "h-optimus-0"}


@pytest.mark.parametrize("name", list_encoders())
def test_every_encoder_has_its_width_and_preprocessing(name: str) -> None:
    spec = encoder_spec(name)
    with torch.device("meta"):
        module = spec.build()
        out = module(torch.empty(2, 3, spec.input_size, spec.input_size))
    assert tuple(out.shape) == (2, spec.dim)
    pre = spec.preprocessing()
    assert pre["input_size"] == spec.input_size and len(pre["mean"]) == len(pre["std"]) == 3
    assert pre["interpolation"] in ("bilinear", "bicubic")
    assert all(0 < s < 1 for s in pre["std"])


def test_the_published_widths() -> None:
    widths = {n: encoder_spec(n).dim for n in PRETRAINED}
    assert widths == {
        "resnet18": 512,
        "resnet50": 2048,
        "resnet50_trunc": 1024,  # CLAM's trunk
        "uni": 1024,
        "uni2-h": 1536,
        "virchow2": 2560,
        "h-optimus-0": 1536,
        "phikon": 768,
    }


def _random_like(module: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randn(v.shape, generator=g) * 0.02).to(v.dtype)
        if v.is_floating_point()
        else v.clone()
        for k, v in module.state_dict().items()
    }


@pytest.mark.parametrize("arch,name", [("resnet18", "resnet18"), ("resnet50", "resnet50_trunc")])
def test_torchvision_weights_load_and_give_torchvision_features(
    tmp_path: Path, arch: str, name: str
) -> None:
    import torchvision.models as tvm

    reference = getattr(tvm, arch)(weights=None).eval()
    path = tmp_path / f"{arch}.safetensors"
    save_file(reference.state_dict(), str(path))  # the published layout, fc and all
    encoder = create_encoder(name, weights=path)
    assert encoder.weights_sha256 is not None and len(encoder.weights_sha256) == 64
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = encoder.module(x)
        trunk = torch.nn.Sequential(
            *list(reference.children())[: 7 if name.endswith("trunc") else 8]
        )
        want = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(trunk(x), 1), 1)
    torch.testing.assert_close(got, want)


def _hf_vit_layout(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ViT weights renamed as transformers' ViTModel publishes them (Phikon's layout)."""
    out = {
        "embeddings.cls_token": timm_state["cls_token"],
        "embeddings.position_embeddings": timm_state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": timm_state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": timm_state["patch_embed.proj.bias"],
        "layernorm.weight": timm_state["norm.weight"],
        "layernorm.bias": timm_state["norm.bias"],
        "pooler.dense.weight": torch.zeros(768, 768),
        "pooler.dense.bias": torch.zeros(768),
    }
    for i in range(12):
        t, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            q, k, v = timm_state[f"{t}attn.qkv.{part}"].chunk(3, dim=0)
            out[f"{h}attention.attention.query.{part}"] = q
            out[f"{h}attention.attention.key.{part}"] = k
            out[f"{h}attention.attention.value.{part}"] = v
            out[f"{h}attention.output.dense.{part}"] = timm_state[f"{t}attn.proj.{part}"]
            out[f"{h}layernorm_before.{part}"] = timm_state[f"{t}norm1.{part}"]
            out[f"{h}layernorm_after.{part}"] = timm_state[f"{t}norm2.{part}"]
            out[f"{h}intermediate.dense.{part}"] = timm_state[f"{t}mlp.fc1.{part}"]
            out[f"{h}output.dense.{part}"] = timm_state[f"{t}mlp.fc2.{part}"]
    return out


def test_phikon_weights_in_transformers_layout_load_into_timm(tmp_path: Path) -> None:
    reference = encoder_spec("phikon").build().eval()
    state = _random_like(reference)
    reference.load_state_dict(state)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in _hf_vit_layout(state).items()}, str(path))
    encoder = create_encoder("phikon", weights=tmp_path)  # a folder, as a snapshot is
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(encoder.module(x), reference(x))


def _timm_round_trip(tmp_path: Path, name: str) -> None:
    spec = encoder_spec(name)
    with torch.device("meta"):
        reference = spec.build()
    reference = reference.to_empty(device="cpu").eval()
    state = _random_like(reference)
    reference.load_state_dict(state)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        want = reference(x)
    del reference
    if name == "virchow2":  # published without our wrapper's "vit." prefix
        state = {k.removeprefix("vit."): v for k, v in state.items()}
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path))
    del state
    encoder = create_encoder(name, weights=path)
    with torch.no_grad():
        torch.testing.assert_close(encoder.module(x), want)


@pytest.mark.parametrize("name", ["tiny", "small_cnn"])
def test_our_small_encoders_load_weights_saved_by_this_project(tmp_path: Path, name: str) -> None:
    trained = create_encoder(name, seed=5).module
    path = tmp_path / f"{name}.safetensors"
    save_file(trained.state_dict(), str(path))
    loaded = create_encoder(name, weights=path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), trained(x))
    assert loaded.describe()["weights_sha256"] == loaded.weights_sha256


def test_uni_weights_in_timm_layout_load_strictly(tmp_path: Path) -> None:
    _timm_round_trip(tmp_path, "uni")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BIG - {"uni"}))
def test_large_vit_weights_load_strictly(tmp_path: Path, name: str) -> None:
    _timm_round_trip(tmp_path, name)


def test_weights_of_another_architecture_are_refused_naming_the_tensors(tmp_path: Path) -> None:
    import torchvision.models as tvm

    path = tmp_path / "r18.safetensors"
    save_file(tvm.resnet18(weights=None).state_dict(), str(path))
    with pytest.raises(EncoderWeightsError) as err:
        create_encoder("resnet50", weights=path)
    message = str(err.value)
    assert "does not hold the weights of encoder 'resnet50'" in message
    assert "missing" in message and "torchvision" in message  # where such weights come from


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    import torchvision.models as tvm

    path = tmp_path / "r18.safetensors"
    save_file(tvm.resnet18(weights=None).state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EncoderWeightsError, match="not a readable safetensors file"):
        create_encoder("resnet18", weights=path)
    path.write_bytes(b"\x00" * 4)
    with pytest.raises(EncoderWeightsError, match="not a readable safetensors file"):
        create_encoder("resnet18", weights=path)


def test_pickles_are_never_loaded_but_convert_once(tmp_path: Path) -> None:
    import torchvision.models as tvm

    pickled = tmp_path / "resnet18.pth"
    torch.save({"state_dict": tvm.resnet18(weights=None).state_dict()}, pickled)
    with pytest.raises(EncoderWeightsError, match="histattn convert-weights"):
        create_encoder("resnet18", weights=pickled)
    with pytest.raises(EncoderWeightsError, match="histattn convert-weights"):
        create_encoder("resnet18", weights=tmp_path)  # a folder holding only the pickle
    converted = convert_to_safetensors(pickled, tmp_path / "resnet18.safetensors")
    assert create_encoder("resnet18", weights=converted).weights_path == converted


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


def test_conversion_refuses_pickles_that_hold_code(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.bin"
    torch.save({"x": _Payload()}, bad)
    with pytest.raises(EncoderWeightsError, match="cannot be read as a plain state dict"):
        convert_to_safetensors(bad, tmp_path / "bad.safetensors")
    assert "must never run" not in capsys.readouterr().out
    assert not (tmp_path / "bad.safetensors").exists()


def test_weights_are_found_in_the_env_folder_and_a_hf_cache(tmp_path: Path, monkeypatch) -> None:
    import torchvision.models as tvm

    folder = tmp_path / "weights"
    folder.mkdir()
    save_file(tvm.resnet18(weights=None).state_dict(), str(folder / "resnet18.safetensors"))
    monkeypatch.setenv("HISTATTN_ENCODER_WEIGHTS", str(folder))
    assert (
        create_encoder("resnet18", pretrained=True).weights_path == folder / "resnet18.safetensors"
    )

    snapshot = tmp_path / "hub" / "models--owkin--phikon" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    state = _hf_vit_layout(_random_like(encoder_spec("phikon").build()))
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert create_encoder("phikon", pretrained=True).weights_path == snapshot / "model.safetensors"

    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    with pytest.raises(EncoderWeightsError, match="no weights found for encoder 'uni'"):
        create_encoder("uni", pretrained=True)
    with pytest.raises(EncoderWeightsError, match="no weights found for encoder 'tiny'"):
        create_encoder("tiny", pretrained=True)


def test_cli_lists_encoders_and_converts_weights(tmp_path: Path, capsys) -> None:
    import torchvision.models as tvm

    from napari_histattn.cli import main

    assert main(["encoders"]) == 0
    listed = capsys.readouterr().out
    assert "uni: 1024-d, 224 px at 0.5 um/px" in listed and "MahmoodLab/UNI" in listed
    pickled = tmp_path / "r18.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), pickled)
    assert main(["convert-weights", str(pickled), str(tmp_path / "r18.safetensors")]) == 0
    assert "weights_only=True" in capsys.readouterr().err
    assert create_encoder("resnet18", weights=tmp_path / "r18.safetensors").weights_sha256
    assert main(["convert-weights", str(pickled), str(tmp_path / "r18.pt")]) == 1


def test_the_small_cnns_read_any_tile_size_and_the_others_refuse_one() -> None:
    wide = create_encoder("small_cnn", input_size=112)
    assert wide.spec.input_size == 112 and wide.describe()["preprocessing"]["input_size"] == 112
    assert create_encoder("small_cnn").spec.input_size == 28  # the registry is unchanged
    with torch.no_grad():
        assert wide.module(torch.rand(2, 3, 112, 112)).shape == (2, 500)
    # The same seed gives the same weights whatever the tile size.
    plain = create_encoder("small_cnn").module.parameters()
    for a, b in zip(wide.module.parameters(), plain, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="takes no other tile size"):
        create_encoder("resnet18", input_size=112)
