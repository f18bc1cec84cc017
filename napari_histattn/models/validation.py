"""Checks on a checkpoint's metadata, ``preprocessing`` and sidecar before anything trusts them.

A checkpoint is a file from somewhere else. Its ``preprocessing`` says how big a
patch is, how many patches to sample, what to normalise by; a hostile or damaged
one says ``n_patches = 10**9``, ``patch_size = "32"`` or ``std = [0, NaN]``.
:func:`check_preprocessing` refuses those with the field named, so that the
failure is a :class:`~napari_histattn.errors.CheckpointError` at load time, never
an allocation of gigabytes, a ``TypeError`` deep in the engine or a division by
zero. Fields it does not know are left alone (a family may add its own).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from napari_histattn.errors import CheckpointError
from napari_histattn.units import MPP_RANGE

__all__ = ["INT_FIELDS", "check_metadata", "check_preprocessing", "check_sidecar"]

#: Integer fields and their inclusive bounds. A patch of 4000 px or 10^9 patches
#: would allocate gigabytes per slide; no model here needs more than these.
INT_FIELDS: dict[str, tuple[int, int]] = {
    "patch_size": (1, 2048),
    "image_size": (1, 4096),
    "input_size": (1, 4096),
    "n_patches": (1, 4096),
    "max_patches": (0, 2**20),
    "sampling_rounds": (1, 64),
    "level": (0, 64),
}
#: Real-valued fields and their inclusive bounds.
FLOAT_FIELDS: dict[str, tuple[float, float]] = {
    "target_mpp": MPP_RANGE,
    "downscale": (1.0, 1024.0),
    "downsample": (1.0, 65536.0),
}

#: Tissue-detection settings (:class:`~napari_histattn.inference.patches.TissueSettings`).
TISSUE_FIELDS: dict[str, tuple[float, float]] = {
    "saturation_min": (0.0, 1.0),
    "brightness_max": (0.0, 1.0),
    "min_fraction": (0.0, 1.0),
    "thumbnail_size": (16, 8192),
}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_preprocessing(path: Path, pre: Mapping[str, Any]) -> None:
    """Refuse a ``preprocessing`` whose known fields have the wrong type or an absurd value.

    Raises
    ------
    CheckpointError
        Naming the field, its value and what it must be.
    """

    def refuse(key: str, must: str) -> CheckpointError:
        shown = repr(pre[key])
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return CheckpointError(path, f"preprocessing field {key!r} is {shown}; it must be {must}")

    for key, (low, high) in INT_FIELDS.items():
        value = pre.get(key)
        if value is None:
            continue
        if not (_number(value) and float(value).is_integer()):
            raise refuse(key, "an integer")
        if not low <= value <= high:
            raise refuse(key, f"within {low}-{high}")
    for key, (lo, hi) in FLOAT_FIELDS.items():
        value = pre.get(key)
        if value is None:
            continue
        if not (_number(value) and math.isfinite(value) and lo <= value <= hi):
            raise refuse(key, f"a number within {lo:g}-{hi:g}")
    for key in ("mean", "std"):
        value = pre.get(key)
        if value is None:
            continue
        if not (
            isinstance(value, list)
            and len(value) in (1, 3)
            and all(_number(v) and math.isfinite(v) for v in value)
        ):
            raise refuse(key, "a list of 1 or 3 finite numbers (one per channel)")
        if key == "std" and any(v <= 0 for v in value):
            raise refuse(key, "positive (it divides the pixels)")
    tissue = pre.get("tissue")
    if tissue is not None:
        if not isinstance(tissue, dict):
            raise refuse("tissue", "an object of tissue-detection settings")
        for name, value in tissue.items():
            low_t, high_t = TISSUE_FIELDS.get(name, (None, None))
            if low_t is None:
                raise CheckpointError(
                    path,
                    f"preprocessing field 'tissue.{name}' is not a tissue setting "
                    f"(known: {', '.join(TISSUE_FIELDS)})",
                )
            if not (_number(value) and math.isfinite(value) and low_t <= value <= high_t):
                raise CheckpointError(
                    path,
                    f"preprocessing field 'tissue.{name}' is {value!r}; "
                    f"it must be a number within {low_t:g}-{high_t:g}",
                )
    for key in ("input",):
        if pre.get(key) is not None and not isinstance(pre[key], str):
            raise refuse(key, "a string")


def check_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Refuse checkpoint metadata whose fields are missing or of the wrong type, whose
    class names are not distinct strings, whose preprocessing or temperature is bad.

    Raises
    ------
    CheckpointError
        Naming the field.
    """
    for key in ("model_name", "model_config", "class_names", "preprocessing"):
        if key not in metadata:
            raise CheckpointError(path, f"metadata lacks {key!r}")
    if not (
        isinstance(metadata["model_name"], str)
        and isinstance(metadata["model_config"], dict)
        and isinstance(metadata["class_names"], list)
        and isinstance(metadata["preprocessing"], dict)
    ):
        raise CheckpointError(
            path,
            "metadata model_name must be a string, model_config and preprocessing objects "
            "and class_names a list",
        )
    names = metadata["class_names"]
    if (
        not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) < len(names)
    ):
        raise CheckpointError(
            path, f"class_names must be distinct non-empty strings, got {str(names)[:80]}"
        )
    check_preprocessing(path, metadata["preprocessing"])
    calibration = metadata.get("calibration") or {}
    t = calibration.get("temperature", 1.0) if isinstance(calibration, dict) else None
    if not (isinstance(t, int | float) and not isinstance(t, bool) and 0 < t < float("inf")):
        raise CheckpointError(
            path, f"calibration must hold a positive temperature, got {calibration!r}"
        )


#: Fields of the sidecar that must say what the weights' own header says.
_SIDECAR_FIELDS = ("model_name", "model_config", "class_names", "preprocessing", "calibration")


def check_sidecar(path: Path, sidecar: Path, digest: str, metadata: dict[str, Any]) -> str | None:
    """Refuse a sidecar whose SHA-256 or description disagrees with the weights (``path``,
    whose SHA-256 is ``digest``); return a note when there is no SHA-256 to check the
    weights against (None when verified)."""
    if not sidecar.exists():
        return f"no {sidecar.name} beside the weights: their SHA-256 cannot be checked"
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(path, f"unreadable sidecar {sidecar.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(path, f"sidecar {sidecar.name} is not a JSON object")
    recorded = data.get("sha256")
    if recorded is not None and recorded != digest:
        raise CheckpointError(
            path,
            f"SHA-256 {digest} differs from {recorded} recorded in {sidecar.name}: the weights "
            "file was modified, truncated or replaced",
        )
    differ = [k for k in _SIDECAR_FIELDS if k in data and data[k] != metadata.get(k)]
    if differ:
        raise CheckpointError(
            path,
            f"{sidecar.name} disagrees with the weights' own metadata on {', '.join(differ)}: "
            "one of the two files was edited or belongs to another model",
        )
    if recorded is None:
        return f"{sidecar.name} records no SHA-256: the weights cannot be checked"
    return None
