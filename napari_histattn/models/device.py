"""Choosing the torch device: an explicit name or ``"auto"`` (cuda, then mps, then cpu)."""

from __future__ import annotations

import torch

from napari_histattn.errors import HistattnError


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Device names usable here, best first (always ends with ``"cpu"``)."""
    names = (
        [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a device name into a ``torch.device`` that exists on this machine.

    Parameters
    ----------
    name
        ``"auto"`` (the first of cuda, mps, cpu that is available), or a torch
        device name such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.

    Returns
    -------
    torch.device

    Raises
    ------
    HistattnError
        If the name is not a device, or names a device this machine lacks.
    """
    if isinstance(name, torch.device):
        device = name
    else:
        text = str(name).strip().lower()
        if text == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            if _mps_available():
                return torch.device("mps")
            return torch.device("cpu")
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError) as exc:
            raise HistattnError(
                f"unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"
            ) from exc
    available = ", ".join(["auto", *available_devices()])
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HistattnError(
                f"device {str(device)!r} requested but CUDA is not available "
                f"(torch {torch.__version__}); available: {available}"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HistattnError(
                f"device {str(device)!r} requested but only {torch.cuda.device_count()} "
                f"CUDA device(s) exist; available: {available}"
            )
    elif device.type == "mps":
        if not _mps_available():
            raise HistattnError(
                f"device 'mps' requested but Apple MPS is not available; available: {available}"
            )
    elif device.type != "cpu":
        raise HistattnError(f"unsupported device {str(device)!r}; available: {available}")
    return device
