"""The raw file guard under checkpoints: pickles refused by name and by first bytes, and the
safetensors header read and parsed without loading a tensor."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from napari_histattn.errors import CheckpointError

__all__ = [
    "PICKLE_SUFFIXES",
    "looks_like_pickle",
    "parse_header",
    "read_head",
    "refuse_pickle_bytes",
    "refuse_pickle_name",
]

#: Suffixes of pickle-based formats, refused before a single byte is read.
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".joblib"})

# safetensors headers are JSON; a longer header than this is corrupt, not a model.
_MAX_HEADER_BYTES = 100 * 1024 * 1024

_PICKLE_REFUSAL = (
    "pickle checkpoints are refused because loading them can run arbitrary code. "
    "If you trust where it came from, convert it in a separate Python session: "
    "state = torch.load(path, weights_only=True); model = "
    "napari_histattn.models.create_model(name, **config); model.load_state_dict(state); "
    "napari_histattn.models.checkpoint.save('model.safetensors', model, class_names=..., "
    "preprocessing=...)"
)


def _is_safetensors_head(head: bytes) -> bool:
    """A plausible header length followed by the JSON header's opening brace."""
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= _MAX_HEADER_BYTES and head[8:9] == b"{"


def looks_like_pickle(head: bytes) -> bool:
    # Pickle protocol 2+ opens with PROTO (0x80, version); torch.save writes a zip. A
    # safetensors header length such as 896 (0x0380) also starts 0x80 0x03, so a file that
    # parses as safetensors is not taken for a pickle.
    if _is_safetensors_head(head):
        return False
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


def refuse_pickle_name(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(path, _PICKLE_REFUSAL)


def refuse_pickle_bytes(path: Path, head: bytes) -> None:
    if looks_like_pickle(head):
        raise CheckpointError(
            path, "the file is a pickle or zip (torch.save) archive; " + _PICKLE_REFUSAL
        )


def parse_header(path: Path, head: bytes, size: int) -> dict[str, Any]:
    """Parse the safetensors JSON header from the start of the file."""
    if len(head) < 8:
        raise CheckpointError(path, f"file too short ({size} bytes) to be a safetensors file")
    (length,) = struct.unpack("<Q", head[:8])
    if length < 2 or length > _MAX_HEADER_BYTES or 8 + length > size:
        raise CheckpointError(
            path,
            f"not a safetensors file, or truncated (header length {length}, file size {size} bytes)",
        )
    if len(head) < 8 + length:
        raise CheckpointError(path, "truncated safetensors header")
    try:
        header = json.loads(head[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: a header nested thousands deep ([[[[...]]]])
        raise CheckpointError(path, f"corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(path, "corrupt safetensors header: not a JSON object")
    return header


def read_head(path: Path) -> tuple[bytes, int]:
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) == 8:
                (length,) = struct.unpack("<Q", head)
                if 2 <= length <= min(_MAX_HEADER_BYTES, size - 8):
                    head += fh.read(length)
    except FileNotFoundError:
        raise CheckpointError(path, "file not found") from None
    except OSError as exc:
        raise CheckpointError(path, f"cannot read: {exc}") from exc
    return head, size
