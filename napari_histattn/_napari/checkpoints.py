"""Checkpoints the classify widget offers, and the run parameters each one starts with.

GUI-free and torch-free at import time (torch is imported only by
:func:`device_choices` and :func:`checkpoint_defaults`, which the widget calls
once it is opened).

Bundled demo checkpoints are looked up, in order, in the folders (or files)
listed in ``$HISTATTN_CHECKPOINTS`` (separated by ``os.pathsep``) and in
``sample_data/`` of a source checkout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_histattn.errors import CheckpointError

ENV_VAR = "HISTATTN_CHECKPOINTS"

#: The demo checkpoint a fresh widget selects, when present. A-MIL's attention comes from
#: full-resolution tiles, so its overlay singles out the lesions; attention sampling's
#: attention network sees 8 um/px, where the generated look-alikes match the lesions, so
#: it attends to both kinds (the patches it reads decide), reading only 64 patches.
PREFERRED_DEMO = "demo_amil"


@dataclass(frozen=True)
class CheckpointChoice:
    """One entry of the model picker.

    Attributes
    ----------
    path
        The ``.safetensors`` file.
    model_name
        Registry name of the model (``attention_sampling``, ``amil``, ``dafl_cnn``).
    class_names
        The checkpoint's classes, in logit order.
    metadata
        Everything :func:`~napari_histattn.models.checkpoint.read_metadata` read.
    """

    path: Path
    model_name: str
    class_names: tuple[str, ...]
    metadata: dict[str, Any]

    @property
    def label(self) -> str:
        """Text shown in the picker: file stem, model and classes."""
        return f"{self.path.stem} ({self.model_name}: {' / '.join(self.class_names)})"


@dataclass(frozen=True)
class RunDefaults:
    """A checkpoint's run parameters, as the widget pre-fills them.

    Attributes
    ----------
    family
        The :class:`~napari_histattn.models.family.Family` that runs it; its
        ``params`` say which controls the widget shows, with labels and bounds.
    values
        Each declared parameter's default for this checkpoint, by name.
    batch_size
        Patches or tiles per model call.
    explains
        Whether this checkpoint gets post-hoc explanations (its family computes them and
        does not refuse it).
    """

    family: Any
    values: dict[str, Any]
    batch_size: int
    explains: bool = False


def checkpoint_dirs() -> list[Path]:
    """Where bundled checkpoints are looked for: ``$HISTATTN_CHECKPOINTS``, then ``sample_data/``."""
    places: list[Path] = []
    env = os.environ.get(ENV_VAR, "")
    places += [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    # Source checkout: <root>/napari_histattn/_napari/checkpoints.py -> <root>/sample_data
    places.append(Path(__file__).resolve().parents[2] / "sample_data")
    return places


def describe_checkpoint(path: str | os.PathLike[str]) -> CheckpointChoice:
    """Read a checkpoint's header (not its weights) into a picker entry.

    Raises
    ------
    CheckpointError
        The file is missing, a pickle, or not a napari-histattn checkpoint.
    """
    from napari_histattn.models.checkpoint import read_metadata, weights_path

    meta = read_metadata(path)
    names = meta.get("class_names") or []
    return CheckpointChoice(
        path=weights_path(path).resolve(),
        model_name=str(meta.get("model_name", "?")),
        class_names=tuple(str(n) for n in names),
        metadata=meta,
    )


def find_checkpoints(places: list[Path] | None = None) -> list[CheckpointChoice]:
    """The readable checkpoints in ``places`` (default :func:`checkpoint_dirs`), demo first.

    Files that are not napari-histattn checkpoints are skipped; a file found twice
    is listed once.
    """
    found: dict[Path, CheckpointChoice] = {}
    for place in checkpoint_dirs() if places is None else places:
        try:
            files = [place] if place.is_file() else sorted(place.glob("*.safetensors"))
        except OSError:  # an unreadable folder lists nothing, it does not break the picker
            continue
        for file in files:
            try:
                choice = describe_checkpoint(file)
            except (CheckpointError, OSError):
                continue
            found.setdefault(choice.path, choice)
    return sorted(found.values(), key=lambda c: (c.path.stem != PREFERRED_DEMO, c.path.stem))


def checkpoint_defaults(choice: CheckpointChoice) -> RunDefaults:
    """The run parameters the engine would use for ``choice`` when given none.

    Raises
    ------
    CheckpointError
        The checkpoint's model has no inference path.
    """
    from napari_histattn.models.family import family_for_model, runnable_models

    family = family_for_model(choice.model_name)
    if family is None:
        raise CheckpointError(
            choice.path,
            f"model {choice.model_name!r} cannot classify slides; "
            f"use one of {', '.join(runnable_models())}",
        )
    config = dict(choice.metadata.get("model_config") or {})
    pre = dict(choice.metadata.get("preprocessing") or {})
    try:
        values = family.defaults(config, pre)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(
            choice.path, f"unusable run parameters in its metadata: {exc}"
        ) from exc
    explains = family.cannot_explain(config, pre) is None
    return RunDefaults(family, values, int(family.default_batch_size), explains)


def device_choices() -> list[str]:
    """``"auto"`` followed by the devices this machine has (``cuda``, ``mps``, ``cpu``)."""
    from napari_histattn.models.device import available_devices

    devices = available_devices()
    names = ["auto"]
    if any(d.startswith("cuda") for d in devices):
        names.append("cuda")
    names += [d for d in devices if d.startswith("cuda:") and d != "cuda:0"]
    names += [d for d in devices if d in ("mps", "cpu")]
    return names
