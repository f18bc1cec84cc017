"""Encoder weights from local files: find them, check them against the architecture, load them.

Nothing is downloaded. Weights come from, in order:

1. the path the user names (``--encoder-weights PATH``): a ``.safetensors`` file, or a
   folder holding one (``model.safetensors``, or a Hugging Face snapshot);
2. ``$HISTATTN_ENCODER_WEIGHTS``: folders (``os.pathsep``-separated) holding
   ``<name>.safetensors`` or ``<name>/model.safetensors``;
3. an existing Hugging Face cache on disk (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
   ``~/.cache/huggingface/hub``): ``models--<org>--<repo>/snapshots/<revision>/``.

Only safetensors are read here. A pickled ``.bin``/``.pth`` is refused with the
command that converts it once (:func:`convert_to_safetensors`, which uses
``torch.load(weights_only=True)``: tensors only, no code). Before any tensor is
read, the file's header is compared with the architecture: every missing,
unexpected or mis-shaped tensor is named in :class:`EncoderWeightsError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from napari_histattn.errors import HistattnError

__all__ = [
    "ENV_VAR",
    "EncoderWeightsError",
    "convert_to_safetensors",
    "file_sha256",
    "find_weights",
    "load_weights",
]

ENV_VAR = "HISTATTN_ENCODER_WEIGHTS"
_PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")
_MAX_HEADER_BYTES = 100 * 2**20


class EncoderWeightsError(HistattnError):
    """Encoder weights are missing, pickled, truncated or of another architecture."""


def file_sha256(path: Path, chunk: int = 2**24) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _in_folder(folder: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors"))
    return found[0] if len(found) == 1 else None


def _hf_snapshot(cache: Path, repo: str) -> Path | None:
    base = cache / f"models--{repo.replace('/', '--')}"
    ref = base / "refs" / "main"
    if ref.is_file():
        snapshot = base / "snapshots" / ref.read_text(encoding="utf-8").strip()
        if snapshot.is_dir():
            return _in_folder(snapshot)
    snapshots = sorted((base / "snapshots").glob("*")) if (base / "snapshots").is_dir() else []
    for snapshot in reversed(snapshots):
        if (found := _in_folder(snapshot)) is not None:
            return found
    return None


def _hf_caches() -> list[Path]:
    places = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HUGGINGFACE_HUB_CACHE")]
    if os.environ.get("HF_HOME"):
        places.append(str(Path(os.environ["HF_HOME"]) / "hub"))
    places.append(str(Path.home() / ".cache" / "huggingface" / "hub"))
    return [Path(p).expanduser() for p in places if p]


def _refuse_pickle(path: Path) -> None:
    raise EncoderWeightsError(
        f"{path} is a pickled checkpoint, which napari-histattn never loads when classifying "
        f"or training. Convert it once: histattn convert-weights {path} "
        f"{path.with_suffix('.safetensors')}"
    )


def find_weights(name: str, weights: str | os.PathLike[str] | None, hf_repo: str | None) -> Path:
    """The safetensors file of encoder ``name`` (see the module docstring for the search order).

    Raises
    ------
    EncoderWeightsError
        Nothing found (the message lists where it looked), or only a pickle.
    """
    looked: list[str] = []
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_file():
            if path.suffix.lower() in _PICKLE_SUFFIXES:
                _refuse_pickle(path)
            return path
        if path.is_dir():
            found = _in_folder(path) or (_hf_snapshot(path, hf_repo) if hf_repo else None)
            if found is not None:
                return found
            pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
            if pickles:
                _refuse_pickle(pickles[0])
        raise EncoderWeightsError(f"no safetensors weights for encoder {name!r} at {path}")
    for folder in [
        Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p
    ]:
        for candidate in (folder / f"{name}.safetensors", folder / name):
            looked.append(str(candidate))
            if candidate.is_file():
                return candidate
            if candidate.is_dir() and (found := _in_folder(candidate)) is not None:
                return found
    for cache in _hf_caches() if hf_repo else []:
        looked.append(str(cache / f"models--{hf_repo.replace('/', '--')}"))  # type: ignore[union-attr]
        if (found := _hf_snapshot(cache, hf_repo)) is not None:  # type: ignore[arg-type]
            return found
    raise EncoderWeightsError(
        f"no weights found for encoder {name!r}; give --encoder-weights PATH or set "
        f"${ENV_VAR}. Looked in: {', '.join(looked) or '(nowhere)'}"
    )


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name -> (dtype, shape)`` from a safetensors header, without reading any tensor."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if not 0 < n <= min(_MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        out = {}
        end = 0
        for key, info in header.items():
            if key == "__metadata__":
                continue
            out[key] = (str(info["dtype"]), tuple(int(d) for d in info["shape"]))
            end = max(end, int(info["data_offsets"][1]))
        if 8 + n + end > size:
            raise ValueError(f"the tensors need {8 + n + end} bytes but the file has {size}")
        return out
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise EncoderWeightsError(f"{path} is not a readable safetensors file: {exc}") from exc


def _compare(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]
) -> list[str]:
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    if missing:
        problems.append(f"{len(missing)} missing (for example {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (for example {unexpected[:3]})")
    for key in shapes[:3]:
        problems.append(f"{key}: expected shape {list(expected[key])}, file has {list(found[key])}")
    if len(shapes) > 3:
        problems.append(f"... {len(shapes) - 3} more tensors of another shape")
    return problems


def load_weights(
    module: nn.Module,
    path: Path,
    *,
    name: str,
    source: str | None,
    ignore_prefixes: tuple[str, ...] = (),
    convert: object | None = None,
) -> None:
    """Load ``path`` into ``module`` strictly: every tensor present, none extra, shapes equal.

    ``convert`` maps the file's state dict onto the module's keys (another
    library's layout); ``ignore_prefixes`` drops published tensors the module
    does not use.
    """
    from safetensors.torch import load_file

    header = read_header(path)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if convert is None:
        found = {k: shape for k, (_, shape) in header.items() if not k.startswith(ignore_prefixes)}
        problems = _compare(expected, found)
        if problems:
            _mismatch(path, name, source, problems)
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise EncoderWeightsError(f"{path} could not be read: {exc}") from exc
    if callable(convert):
        try:
            state = convert(state)
        except KeyError as exc:
            _mismatch(path, name, source, [f"tensor {exc} of the expected layout is missing"])
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    problems = _compare(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        _mismatch(path, name, source, problems)
    module.load_state_dict(state, strict=True)


def _mismatch(path: Path, name: str, source: str | None, problems: list[str]) -> None:
    where = f" Encoder {name!r} weights come from {source}." if source else ""
    raise EncoderWeightsError(
        f"{path} does not hold the weights of encoder {name!r}: " + "; ".join(problems) + where
    )


def convert_to_safetensors(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Convert a pickled PyTorch state dict to safetensors, once, with ``weights_only=True``.

    ``weights_only`` restricts unpickling to tensors and plain containers, so the
    file cannot run code; a file that needs more is refused. A ``{"state_dict":
    ...}`` or ``{"model": ...}`` wrapper is unwrapped. Returns ``dst``.
    """
    from safetensors.torch import save

    from napari_histattn.atomic import atomic_write

    source, target = Path(src), Path(dst)
    if target.suffix != ".safetensors":
        raise EncoderWeightsError(f"the converted file must end in .safetensors, got {target}")
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # an UnpicklingError for anything but tensors
        raise EncoderWeightsError(f"{source} cannot be read as a plain state dict: {exc}") from exc
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderWeightsError(f"{source} does not hold a flat state dict of tensors")
    tensors = {str(k): v.contiguous() for k, v in obj.items()}
    with atomic_write(target, "wb") as fh:
        fh.write(save(tensors, metadata={"converted_from": source.name}))
    return target
