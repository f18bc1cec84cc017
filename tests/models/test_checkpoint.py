"""Checkpoints: safe refusal of pickles, integrity and mismatch errors, metadata, devices."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from napari_histattn.errors import CheckpointError, HistattnError
from napari_histattn.models import checkpoint
from napari_histattn.models.device import available_devices, resolve_device
from napari_histattn.models.registry import create_model

TINY_AMIL = {"encoder": "tiny", "patch_size": 8, "embed_dim": 8, "attn_dim": 6, "n_classes": 2}


class _TouchOnUnpickle:
    """Unpickling this object opens (creates) ``path``: a stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("amil", **TINY_AMIL)
    return checkpoint.save(
        tmp_path / "amil",
        model,
        class_names=["benign", "tumour"],
        preprocessing={"patch_size": 8, "level": 0, "mean": [0.5] * 3, "std": [0.2] * 3},
        training={"seed": 1, "epochs": 2, "metrics": {"accuracy": 0.9}},
        extra={"note": "test"},
    )


def _rewrite(path: Path, *, metadata_update=None, tensors_update=None, drop=()) -> None:
    """Rewrite a checkpoint with altered metadata or tensors, and drop its sidecar."""
    from safetensors.torch import load_file

    metadata = checkpoint.read_metadata(path)
    metadata.update(metadata_update or {})
    tensors = load_file(path)
    tensors.update(tensors_update or {})
    for key in drop:
        del tensors[key]
    save_file(
        tensors,
        path,
        metadata={"format": "napari-histattn", "napari_histattn": json.dumps(metadata)},
    )
    checkpoint.sidecar_path(path).unlink()


def test_save_writes_weights_and_sidecar_with_metadata(saved: Path) -> None:
    assert saved.name == "amil.safetensors"
    sidecar = json.loads((saved.parent / "amil.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert sidecar["weights_file"] == "amil.safetensors"
    header = checkpoint.read_metadata(saved)
    assert {k: v for k, v in sidecar.items() if k not in ("sha256", "weights_file")} == header
    assert header["model_name"] == "amil" and header["class_names"] == ["benign", "tumour"]
    assert header["preprocessing"]["mean"] == [0.5] * 3
    assert header["training"]["seed"] == 1 and header["extra"] == {"note": "test"}
    assert header["format_version"] == 1
    assert header["package_version"] and header["torch_version"] == torch.__version__
    assert header["created"].endswith("+00:00")
    # The sidecar path reads the same metadata.
    assert checkpoint.read_metadata(saved.parent / "amil.json") == header


def test_load_from_sidecar_path_and_without_sidecar(saved: Path) -> None:
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    assert checkpoint.load(saved.with_suffix(".json"), device="cpu").sha256 == digest
    checkpoint.sidecar_path(saved).unlink()
    loaded = checkpoint.load(saved, device="cpu")
    assert loaded.sha256 == digest and loaded.path == saved


def _malicious_pickle(marker: Path) -> bytes:
    # Prove the payload really runs code when unpickled (on a separate marker).
    control = marker.with_name("control-marker")
    pickle.loads(pickle.dumps(_TouchOnUnpickle(control), protocol=2))
    assert control.exists()
    return pickle.dumps({"state_dict": _TouchOnUnpickle(marker)}, protocol=2)


@pytest.mark.parametrize(
    "name", ["model.pt", "model.pth", "model.pkl", "model.ckpt", "x.safetensors"]
)
def test_pickle_checkpoints_are_refused_without_unpickling(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / name
    path.write_bytes(_malicious_pickle(marker))
    for call in (
        lambda: checkpoint.load(path, device="cpu"),
        lambda: checkpoint.read_metadata(path),
    ):
        with pytest.raises(CheckpointError, match="pickle checkpoints are refused") as info:
            call()
        assert name in str(info.value)
        assert "arbitrary code" in str(info.value)
    assert not marker.exists()


def test_torch_save_zip_is_refused_whatever_its_name(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "weights.safetensors"
    torch.save({"w": torch.zeros(2), "payload": _TouchOnUnpickle(marker)}, path)
    with pytest.raises(CheckpointError, match="zip .torch.save. archive"):
        checkpoint.load(path, device="cpu")
    assert not marker.exists()


def test_a_valid_file_with_a_pickle_suffix_is_refused(saved: Path) -> None:
    renamed = saved.with_suffix(".pt")
    renamed.write_bytes(saved.read_bytes())
    with pytest.raises(CheckpointError, match="pickle checkpoints are refused"):
        checkpoint.load(renamed, device="cpu")


@pytest.mark.parametrize("keep", [10, 100, -50])
@pytest.mark.parametrize("with_sidecar", [True, False])
def test_truncated_files_are_refused(saved: Path, keep: int, with_sidecar: bool) -> None:
    saved.write_bytes(saved.read_bytes()[:keep])
    if not with_sidecar:
        checkpoint.sidecar_path(saved).unlink()
    with pytest.raises(CheckpointError, match="truncated") as info:
        checkpoint.load(saved, device="cpu")
    assert "amil.safetensors" in str(info.value)


def test_corrupt_tensor_data_is_wrapped(saved: Path) -> None:
    checkpoint.sidecar_path(saved).unlink()
    saved.write_bytes(saved.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors data") as info:
        checkpoint.load(saved, device="cpu")
    assert info.value.__cause__ is not None


def test_modified_weights_fail_the_sidecar_digest(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[-1] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="modified, truncated or replaced"):
        checkpoint.load(saved, device="cpu")


def test_class_count_mismatch_is_refused(saved: Path) -> None:
    _rewrite(saved, metadata_update={"class_names": ["a", "b", "c"]})
    with pytest.raises(CheckpointError, match="3 class names .* model head has 2 classes"):
        checkpoint.load(saved, device="cpu")


def test_unknown_model_name_is_refused(saved: Path) -> None:
    _rewrite(saved, metadata_update={"model_name": "mystery_net"})
    with pytest.raises(CheckpointError, match="unknown model 'mystery_net'"):
        checkpoint.load(saved, device="cpu")


def test_invalid_config_is_refused(saved: Path) -> None:
    _rewrite(saved, metadata_update={"model_config": {**TINY_AMIL, "wings": 2}})
    with pytest.raises(CheckpointError, match="cannot build 'amil'"):
        checkpoint.load(saved, device="cpu")


def test_missing_and_unexpected_keys_are_refused(saved: Path) -> None:
    _rewrite(saved, tensors_update={"extra.weight": torch.zeros(1)}, drop=["head.1.bias"])
    with pytest.raises(CheckpointError, match="missing keys \\['head.1.bias'\\]") as info:
        checkpoint.load(saved, device="cpu")
    assert "unexpected keys ['extra.weight']" in str(info.value)


def test_shape_mismatch_is_refused(saved: Path) -> None:
    # Weights of a wider attention network under the original configuration.
    _rewrite(saved, tensors_update={"pooling.attention_w.weight": torch.zeros(1, 9)})
    with pytest.raises(CheckpointError, match="shape mismatches pooling.attention_w.weight"):
        checkpoint.load(saved, device="cpu")


def test_non_finite_weights_are_refused(saved: Path) -> None:
    _rewrite(saved, tensors_update={"head.1.bias": torch.tensor([0.0, float("nan")])})
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        checkpoint.load(saved, device="cpu")


def test_foreign_safetensors_and_missing_files(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="no napari-histattn metadata"):
        checkpoint.read_metadata(foreign)
    with pytest.raises(CheckpointError, match="file not found"):
        checkpoint.load(tmp_path / "absent.safetensors", device="cpu")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        checkpoint.load(garbage, device="cpu")


def test_newer_format_versions_are_refused(saved: Path) -> None:
    _rewrite(saved, metadata_update={"format_version": 99})
    with pytest.raises(CheckpointError, match="newer than this napari-histattn"):
        checkpoint.read_metadata(saved)


def test_save_validates_its_inputs(tmp_path: Path) -> None:
    model = create_model("amil", **TINY_AMIL)
    with pytest.raises(ValueError, match="3 class names"):
        checkpoint.save(tmp_path / "m", model, class_names=["a", "b", "c"], preprocessing={})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        checkpoint.save(
            tmp_path / "m", model, class_names=["a", "b"], preprocessing={"x": object()}
        )
    with pytest.raises(ValueError, match="create_model"):
        checkpoint.save(tmp_path / "m", torch.nn.Linear(2, 2), class_names=["a"], preprocessing={})
    assert not list(tmp_path.iterdir())


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    assert available_devices()[-1] == "cpu"
    with pytest.raises(HistattnError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(HistattnError, match="CUDA is not available|CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count() + 7}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_explicit_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(HistattnError, match="'cuda' requested but CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize("bad", [0.0, -2.0, "hot", True, [1.0]])
def test_a_checkpoint_with_an_invalid_temperature_is_refused(tmp_path: Path, bad) -> None:
    model = create_model("amil", encoder="none", embed_dim=4, n_classes=2)
    good = checkpoint.save(
        tmp_path / "good.safetensors",
        model,
        class_names=["a", "b"],
        preprocessing={},
        calibration={"temperature": 2.0},
    )
    assert checkpoint.load(good, device="cpu").temperature == 2.0
    path = checkpoint.save(
        tmp_path / "bad.safetensors",
        model,
        class_names=["a", "b"],
        preprocessing={},
        calibration={"temperature": bad},
    )
    with pytest.raises(CheckpointError, match="positive temperature"):
        checkpoint.load(path, device="cpu")


def test_a_safetensors_header_length_that_starts_like_a_pickle_is_not_one() -> None:
    import struct

    from napari_histattn.models.safetensors_file import looks_like_pickle

    # Header lengths 640, 896, 1152, 1408 (0x0280...0x0580) begin with the bytes of PROTO 2-5.
    for length in (640, 896, 1152, 1408):
        head = struct.pack("<Q", length) + b'{"__metadata__": {}}'
        assert head[0] == 0x80 and not looks_like_pickle(head)
    for protocol in (2, 3, 4, 5):
        assert looks_like_pickle(pickle.dumps({"w": [1.0]}, protocol=protocol)[:64])
