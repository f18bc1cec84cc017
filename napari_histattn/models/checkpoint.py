"""Safe checkpoints: ``.safetensors`` weights with JSON metadata; the only code that reads weights.

Format (version 1)
------------------
``<stem>.safetensors``
    The model's ``state_dict`` (contiguous CPU tensors, dtypes kept). Its header's
    ``__metadata__`` (string to string) holds ``"format": "napari-histattn"`` and
    ``"napari_histattn"``: the metadata below as a JSON string, so the weights file
    alone is enough to rebuild the model.
``<stem>.json``
    A sidecar for humans with the same metadata plus ``"sha256"``, the SHA-256 of
    the whole ``.safetensors`` file (a file cannot contain its own digest, so the
    digest lives here), and ``"weights_file"``. When the sidecar is present,
    :func:`load` refuses a weights file whose digest differs (modified, truncated,
    or swapped). Without it the file still loads; the digest is computed and
    returned.

Metadata keys: ``format``, ``format_version``, ``model_name``, ``model_config``
(keyword configuration for :func:`~napari_histattn.models.registry.create_model`),
``class_names``, ``preprocessing`` (for example ``patch_size``, ``level`` or
``target_mpp``, ``mean``, ``std``, ``downscale``), ``training`` (data summary,
seed, epochs, metrics; or null), ``extra``, ``package_version``,
``torch_version``, ``created`` (UTC, ISO 8601).

Safety (the file guard is :mod:`.safetensors_file`): nothing here unpickles. ``.pt``/``.pth``/``.pkl``/``.ckpt`` and other
pickle or zip (``torch.save``) files are refused by name and by their first
bytes, whatever their name; weights are read with ``safetensors`` and loaded
with ``load_state_dict(strict=True)`` after the names, shapes and class count
were checked. Every failure is a :class:`~napari_histattn.errors.CheckpointError`
naming the file and the cause.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from napari_histattn.atomic import atomic_write
from napari_histattn.errors import CheckpointError, ExportError
from napari_histattn.models.safetensors_file import (
    PICKLE_SUFFIXES,
    parse_header,
    read_head,
    refuse_pickle_bytes,
    refuse_pickle_name,
)
from napari_histattn.models.validation import check_metadata, check_sidecar

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PICKLE_SUFFIXES",
    "LoadedCheckpoint",
    "load",
    "read_metadata",
    "save",
    "sidecar_path",
    "weights_path",
]

FORMAT_NAME = "napari-histattn"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
SIDECAR_SUFFIX = ".json"
_META_KEY = "napari_histattn"


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, in eval mode on the requested device.

    Attributes
    ----------
    model
        The model, ``eval()``-ed, on ``device``.
    model_name
        Registry name.
    config
        The model's keyword configuration.
    class_names
        Names of the output classes, in logit order.
    preprocessing
        What the inputs must look like (patch size, level or mpp, mean/std...).
    metadata
        All metadata from the file's header.
    sha256
        SHA-256 of the ``.safetensors`` file.
    path
        The ``.safetensors`` file.
    integrity_note
        Why the weights could not be checked against a recorded SHA-256 (no sidecar,
        or one without ``sha256``); None when they were. Runs report it.
    """

    model: nn.Module
    model_name: str
    config: dict[str, Any]
    class_names: list[str]
    preprocessing: dict[str, Any]
    metadata: dict[str, Any] = field(repr=False)
    sha256: str
    path: Path
    integrity_note: str | None = None

    @property
    def temperature(self) -> float:
        """The calibration temperature the checkpoint records (1.0: uncalibrated)."""
        return float((self.metadata.get("calibration") or {}).get("temperature", 1.0))


def weights_path(path: str | os.PathLike[str]) -> Path:
    """The ``.safetensors`` file for ``path`` (a ``.json`` sidecar maps to its weights)."""
    path = Path(path)
    if path.suffix == SIDECAR_SUFFIX:
        return path.with_suffix(WEIGHTS_SUFFIX)
    if path.suffix == WEIGHTS_SUFFIX:
        return path
    return path.with_name(path.name + WEIGHTS_SUFFIX)


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar next to a checkpoint's ``.safetensors`` file."""
    return weights_path(path).with_suffix(SIDECAR_SUFFIX)


def _model_n_classes(model: nn.Module | None, config: dict[str, Any]) -> int | None:
    value = getattr(model, "n_classes", None) if model is not None else None
    if value is None:
        value = config.get("n_classes")
    return int(value) if value is not None else None


def _json_dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{what} must be JSON-serialisable (str, numbers, lists, dicts): {exc}"
        ) from exc


def _atomic_write(path: Path, data: bytes) -> None:
    # Complete or absent, never partial; usual permission bits (0o666 & ~umask).
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def save(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    class_names: list[str],
    preprocessing: dict[str, Any],
    training: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint: ``<stem>.safetensors`` and its ``<stem>.json`` sidecar.

    Parameters
    ----------
    path
        Target; ``.safetensors`` is appended unless already there (a ``.json``
        path names the sidecar, and the weights go next to it).
    model
        A model built by :func:`~napari_histattn.models.registry.create_model`
        (it carries ``model_name`` and ``model_config``).
    class_names
        One name per output class, in logit order.
    preprocessing
        How inputs were prepared: ``patch_size``, ``level`` or ``target_mpp``,
        ``mean``, ``std``, ``downscale``... (JSON values).
    training
        Training summary: data summary, seed, epochs, metrics (JSON values).
    extra
        Anything else worth keeping (JSON values).
    calibration
        How the probabilities were calibrated: ``{"temperature": T, ...}``
        (:class:`napari_histattn.training.calibration.Calibration`); inference
        divides the logits by ``T``. None: uncalibrated.

    Returns
    -------
    Path
        The ``.safetensors`` file written.

    Raises
    ------
    ValueError
        If the model was not built by the registry, the class names do not match
        the model's class count, or a dictionary is not JSON-serialisable.
    ExportError
        If the files cannot be written.
    """
    from safetensors.torch import save as safetensors_save

    import napari_histattn
    from napari_histattn.models.registry import list_models

    target = weights_path(path)
    model_name = getattr(model, "model_name", None)
    model_config = getattr(model, "model_config", None)
    if model_name is None or model_config is None:
        raise ValueError(
            "the model has no model_name/model_config: build it with "
            "napari_histattn.models.create_model so that it can be rebuilt from the checkpoint"
        )
    if model_name not in list_models():
        raise ValueError(f"model name {model_name!r} is not registered")
    class_names = [str(name) for name in class_names]
    if not class_names:
        raise ValueError("class_names must not be empty")
    n_classes = _model_n_classes(model, model_config)
    if n_classes is not None and n_classes != len(class_names):
        raise ValueError(
            f"{len(class_names)} class names {class_names} for a model with {n_classes} classes"
        )
    if not isinstance(preprocessing, dict):
        raise ValueError("preprocessing must be a dict")

    metadata: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_config": model_config,
        "class_names": class_names,
        "preprocessing": preprocessing,
        "training": training,
        "extra": extra or {},
        **({"calibration": calibration} if calibration else {}),
        "package_version": napari_histattn.__version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metadata_json = _json_dumps(metadata, "checkpoint metadata")
    # Round-trip so that tuples become lists exactly as load() will see them.
    metadata = json.loads(metadata_json)

    # clone() gives every tensor its own storage (safetensors refuses shared storage).
    tensors = {
        name: value.detach().to("cpu").contiguous().clone()
        for name, value in model.state_dict().items()
    }
    data = safetensors_save(tensors, metadata={"format": FORMAT_NAME, _META_KEY: metadata_json})
    digest = hashlib.sha256(data).hexdigest()
    sidecar = {**metadata, "sha256": digest, "weights_file": target.name}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, data)
        _atomic_write(
            sidecar_path(target), (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode()
        )
    except OSError as exc:
        raise ExportError(target, f"{type(exc).__name__}: {exc}") from exc
    return target


def _metadata_from_header(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    raw = header.get("__metadata__") or {}
    text = raw.get(_META_KEY) if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME or not isinstance(text, str):
        raise CheckpointError(
            path, "no napari-histattn metadata in the safetensors header (saved by another tool?)"
        )
    try:
        metadata = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(path, f"corrupt napari-histattn metadata: {exc}") from exc
    if not isinstance(metadata, dict):
        raise CheckpointError(
            path, f"napari-histattn metadata must be a JSON object, not {type(metadata).__name__}"
        )
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"checkpoint format version {version!r} is newer than this napari-histattn "
            f"understands ({FORMAT_VERSION}); update napari-histattn",
        )
    check_metadata(path, metadata)
    return metadata


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a checkpoint, read from its header without building the model.

    Reads only the header (cheap, for pickers and listings) and does not verify
    the SHA-256; :func:`load` does.

    Parameters
    ----------
    path
        The ``.safetensors`` file or its ``.json`` sidecar.

    Returns
    -------
    dict
        The metadata (see the module docstring for the keys).

    Raises
    ------
    CheckpointError
        If the file is missing, a pickle, or not a napari-histattn checkpoint.
    """
    raw_path = Path(path)
    refuse_pickle_name(raw_path)
    target = weights_path(raw_path)
    head, size = read_head(target)
    refuse_pickle_bytes(target, head)
    return _metadata_from_header(target, parse_header(target, head, size))


def _check_state_dict(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [
        f"{key}: file {tuple(tensors[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(tensors))
        if tensors[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:8]}" + (" ..." if len(unexpected) > 8 else "")
        )
    if shapes:
        problems.append(
            "shape mismatches " + "; ".join(shapes[:8]) + (" ..." if len(shapes) > 8 else "")
        )
    if problems:
        raise CheckpointError(path, "weights do not match the model: " + ", ".join(problems))


def load(path: str | os.PathLike[str], device: str | torch.device = "auto") -> LoadedCheckpoint:
    """Rebuild a model from a checkpoint, safely.

    Parameters
    ----------
    path
        The ``.safetensors`` file or its ``.json`` sidecar.
    device
        ``"auto"`` (cuda, then mps, then cpu) or a torch device name.

    Returns
    -------
    LoadedCheckpoint
        The model in eval mode on ``device``, its configuration, class names,
        preprocessing, metadata and the file's SHA-256.

    Raises
    ------
    CheckpointError
        For a pickle file (never unpickled), a missing, truncated or corrupt file,
        a SHA-256 that differs from the sidecar's, an unknown model name, an
        invalid configuration, missing/unexpected keys, shape mismatches or a
        class count that differs from the model's head.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    from napari_histattn.models.device import resolve_device
    from napari_histattn.models.registry import create_model, list_models

    raw_path = Path(path)
    refuse_pickle_name(raw_path)
    torch_device = resolve_device(device)
    target = weights_path(raw_path)
    head, size = read_head(target)
    refuse_pickle_bytes(target, head)
    metadata = _metadata_from_header(target, parse_header(target, head, size))
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise CheckpointError(target, f"cannot read: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    integrity = check_sidecar(target, sidecar_path(target), digest, metadata)
    try:
        tensors = safetensors_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(target, f"corrupt or truncated safetensors data: {exc}") from exc

    model_name = metadata["model_name"]
    known = list_models()
    if model_name not in known:
        raise CheckpointError(
            target, f"unknown model {model_name!r}; this napari-histattn knows {', '.join(known)}"
        )
    config = metadata["model_config"]
    # Built first on the meta device (no memory): a configuration that asks for
    # embed_dim=10**9 is caught by the shape check below, never allocated.
    try:
        with torch.device("meta"):
            shell = create_model(model_name, **config)
    except Exception as exc:  # any error of a hostile config: OverflowError, RecursionError ...
        raise CheckpointError(
            target, f"cannot build {model_name!r} from its configuration: {exc}"
        ) from exc
    class_names = [str(name) for name in metadata["class_names"]]
    n_classes = _model_n_classes(shell, config)
    if n_classes is not None and n_classes != len(class_names):
        raise CheckpointError(
            target,
            f"{len(class_names)} class names {class_names} but the model head has {n_classes} classes",
        )
    _check_state_dict(target, shell, tensors)
    del shell
    try:
        model = create_model(model_name, **config)
    except Exception as exc:
        raise CheckpointError(
            target, f"cannot build {model_name!r} from its configuration: {exc}"
        ) from exc
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(target, f"weights do not match the model: {exc}") from exc
    non_finite = [
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if non_finite:
        raise CheckpointError(target, f"weights contain NaN or infinite values: {non_finite[:8]}")
    model.to(torch_device).eval()
    return LoadedCheckpoint(
        model=model,
        model_name=model_name,
        config=config,
        class_names=class_names,
        preprocessing=dict(metadata["preprocessing"]),
        metadata=metadata,
        sha256=digest,
        path=target,
        integrity_note=integrity,
    )
