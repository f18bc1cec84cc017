"""Which device a run uses, and how many patches go to it per call.

``"auto"`` takes CUDA, then Apple MPS, then the CPU; an unavailable CUDA device falls back
to the CPU with a message instead of failing.
"""

from __future__ import annotations

import torch

from napari_histattn.errors import HistattnError
from napari_histattn.models.device import resolve_device

__all__ = ["device_batch_size", "free_memory", "select_device"]


def select_device(name: str | torch.device = "auto") -> tuple[torch.device, list[str]]:
    """The device to run on, and messages saying why it is not CUDA.

    ``"auto"`` gives CUDA when present, else MPS or the CPU (with a message). A
    CUDA device that does not exist falls back to the CPU (with a message);
    other unknown names raise :class:`~napari_histattn.errors.HistattnError`.
    """
    text = str(name).strip().lower()
    if text == "auto":
        device = resolve_device("auto")
        if device.type == "cuda":
            return device, []
        where = "Apple MPS" if device.type == "mps" else "the CPU"
        return device, [f"CUDA is not available: running on {where}"]
    try:
        return resolve_device(name), []
    except HistattnError as exc:
        if text.startswith("cuda"):
            return torch.device("cpu"), [f"{exc}; falling back to the CPU"]
        raise


def free_memory(device: torch.device) -> None:
    """Return cached CUDA memory (after an out-of-memory error)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_batch_size(default: int, device: torch.device, free_bytes: int | None = None) -> int:
    """Patches per model call on ``device`` when none is given: the family's default on
    the CPU and MPS (sized for the CPU's caches), and on CUDA 4x it with 2 GiB free, 8x
    with 8 GiB (``free_bytes``, default: what the device reports), so that a GPU is
    not fed in small calls. An out-of-memory error halves it and retries."""
    if device.type != "cuda":
        return int(default)
    if free_bytes is None:
        try:
            free_bytes = int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return int(default)
    gib = 1 << 30
    return int(default) * (8 if free_bytes >= 8 * gib else 4 if free_bytes >= 2 * gib else 1)
