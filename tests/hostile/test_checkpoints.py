"""Hostile checkpoints: every damaged header or config is a CheckpointError naming the field."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from isolated import run_isolated
from safetensors.torch import load_file, save_file

from napari_histattn.errors import CheckpointError
from napari_histattn.models import checkpoint
from napari_histattn.models.registry import create_model

TINY_AMIL = {"encoder": "tiny", "patch_size": 8, "embed_dim": 8, "attn_dim": 6, "n_classes": 2}
GOOD_PRE = {"patch_size": 8, "target_mpp": 1.0, "mean": [0.5] * 3, "std": [0.2] * 3}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("amil", **TINY_AMIL)
    return checkpoint.save(tmp_path / "amil", model, class_names=["a", "b"], preprocessing=GOOD_PRE)


def _raw_safetensors(path: Path, header: Any) -> Path:
    """A safetensors file with any JSON header (save_file only writes str -> str metadata)."""
    text = header if isinstance(header, str) else json.dumps(header)
    body = text.encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 4)
    return path


def _with_metadata(saved: Path, **changes: Any) -> Path:
    metadata = checkpoint.read_metadata(saved)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(metadata.get(key), dict):
            metadata[key] = {**metadata[key], **value}
        else:
            metadata[key] = value
    save_file(
        load_file(saved),
        saved,
        metadata={"format": "napari-histattn", "napari_histattn": json.dumps(metadata)},
    )
    checkpoint.sidecar_path(saved).unlink(missing_ok=True)
    return saved


TENSOR = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}


@pytest.mark.parametrize(
    "header",
    [
        {"__metadata__": ["format", "napari-histattn"], **TENSOR},
        {"__metadata__": "napari-histattn", **TENSOR},
        {"__metadata__": {"format": "napari-histattn", "napari_histattn": "[1, 2]"}, **TENSOR},
        {"__metadata__": {"format": "napari-histattn", "napari_histattn": '"text"'}, **TENSOR},
        {"__metadata__": {"format": "napari-histattn", "napari_histattn": 7}, **TENSOR},
        {
            "__metadata__": {"format": "napari-histattn", "napari_histattn": "[" * 100_000},
            **TENSOR,
        },
        '{"__metadata__": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
    ids=["list", "string", "json-list", "json-string", "not-text", "deep-json", "deep-header"],
)
def test_a_malformed_header_is_a_checkpoint_error(tmp_path: Path, header: Any) -> None:
    path = _raw_safetensors(tmp_path / "bad.safetensors", header)
    for read in (checkpoint.read_metadata, checkpoint.load):
        with pytest.raises(CheckpointError):
            read(path)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("patch_size", "32", "'patch_size'"),
        ("patch_size", 4000, "'patch_size'"),
        ("patch_size", True, "'patch_size'"),
        ("n_patches", 10**9, "'n_patches'"),
        ("sampling_rounds", 2**70, "'sampling_rounds'"),
        ("target_mpp", float("nan"), "'target_mpp'"),
        ("target_mpp", 1e30, "'target_mpp'"),
        ("downscale", -8, "'downscale'"),
        ("mean", [0.5, 0.5], "'mean'"),
        ("std", [0.0, 0.2, 0.2], "'std'"),
        ("std", "0.2", "'std'"),
        ("tissue", {"brightness_max": "high"}, "'tissue.brightness_max'"),
        ("tissue", {"colour": 0.3}, "'tissue.colour'"),
        ("tissue", [0.1], "'tissue'"),
    ],
)
def test_a_bad_preprocessing_field_is_named(
    saved: Path, field: str, value: Any, named: str
) -> None:
    path = _with_metadata(saved, preprocessing={field: value})
    for read in (checkpoint.read_metadata, checkpoint.load):
        with pytest.raises(CheckpointError, match=named):
            read(path)


@pytest.mark.parametrize(
    "change",
    [
        {"class_names": []},
        {"class_names": ["a", "a"]},
        {"class_names": ["a", 3]},
        {"model_name": ["amil"]},
        {"model_config": {"embed_dim": "8"}},
        {"model_config": {"n_classes": 2**70}},
    ],
    ids=["no-classes", "duplicate", "not-text", "name-list", "string-dim", "overflow"],
)
def test_a_bad_model_description_is_a_checkpoint_error(saved: Path, change: dict) -> None:
    with pytest.raises(CheckpointError):
        checkpoint.load(_with_metadata(saved, **change))


def test_a_huge_config_is_refused_without_allocating(saved: Path) -> None:
    """embed_dim=10^9 would allocate gigabytes before the weights are even compared."""
    path = _with_metadata(saved, model_config={"embed_dim": 10**9})
    ended = run_isolated(
        f"""
from napari_histattn.errors import CheckpointError
from napari_histattn.models import checkpoint
try:
    checkpoint.load({str(path)!r}, device="cpu")
except CheckpointError as exc:
    print("REFUSED", exc)
""",
        memory_gib=6.0,
    )
    assert not ended.crashed, ended.stderr[-2000:]
    assert "REFUSED" in ended.stdout and "shape" in ended.stdout


def test_a_good_checkpoint_still_loads(saved: Path) -> None:
    loaded = checkpoint.load(saved, device="cpu")
    assert loaded.preprocessing == GOOD_PRE


def test_a_sidecar_that_disagrees_with_the_weights_is_refused(saved: Path) -> None:
    sidecar = checkpoint.sidecar_path(saved)
    data = json.loads(sidecar.read_text())
    data["class_names"] = ["b", "a"]  # same SHA-256, another model's description
    sidecar.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="disagrees .* class_names"):
        checkpoint.load(saved)


def test_weights_without_a_sha256_to_check_are_reported(saved: Path) -> None:
    assert checkpoint.load(saved).integrity_note is None
    sidecar = checkpoint.sidecar_path(saved)
    data = json.loads(sidecar.read_text())
    del data["sha256"]
    sidecar.write_text(json.dumps(data))
    assert "no SHA-256" in (checkpoint.load(saved).integrity_note or "")
    sidecar.unlink()
    assert "cannot be checked" in (checkpoint.load(saved).integrity_note or "")


def test_bad_files_in_the_checkpoint_folder_never_break_the_picker(saved: Path) -> None:
    from napari_histattn._napari.checkpoints import find_checkpoints

    folder = saved.parent
    _raw_safetensors(folder / "list.safetensors", {"__metadata__": [1, 2], **TENSOR})
    _raw_safetensors(folder / "deep.safetensors", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (folder / "folder.safetensors").mkdir()
    (folder / "pickle.safetensors").write_bytes(b"\x80\x04K\x01.")
    (folder / "empty.safetensors").write_bytes(b"")
    bad_pre = folder / "badpre.safetensors"
    bad_pre.write_bytes(saved.read_bytes())
    _with_metadata(bad_pre, preprocessing={"n_patches": 10**9})
    found = find_checkpoints([folder])
    assert [c.path.name for c in found] == [saved.name]
