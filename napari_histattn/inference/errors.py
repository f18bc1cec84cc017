"""Errors of the inference engine; each names its cause and the file concerned.

All are :class:`~napari_histattn.errors.HistattnError` subclasses, so the CLI and
the napari widget report them like every other user-facing error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_histattn.errors import CheckpointError, HistattnError, SlideError


class Cancelled(HistattnError):
    """A classification was cancelled; no result was produced.

    Attributes
    ----------
    stage
        The stage that had just reported progress when the cancel was seen.
    done, total
        Its progress counts at that moment.
    """

    def __init__(self, stage: str, done: int = 0, total: int | None = None) -> None:
        self.stage = stage
        self.done = done
        self.total = total
        where = f"{done}/{total}" if total is not None else str(done)
        super().__init__(f"classification cancelled during {stage!r} ({where})")


class UnsupportedModelError(CheckpointError):
    """The checkpoint's model family has no inference path in this engine."""

    def __init__(self, path: str | Path, model_name: str, known: list[str]) -> None:
        self.model_name = model_name
        super().__init__(
            path,
            f"the inference engine cannot run model {model_name!r}; "
            f"it runs {', '.join(sorted(known))}",
        )


class NoTissueError(SlideError):
    """Tissue detection found no tissue to classify."""


class SlideTooSmallError(SlideError):
    """The slide is smaller than one patch at the model's resolution."""


class ModelRunError(HistattnError):
    """The model failed while classifying (an error inside it, not a bad file).

    Attributes
    ----------
    stage
        The stage that had reported progress last (``"encode"``, ``"low-res"`` ...).
    """

    def __init__(self, checkpoint: Any, stage: str, exc: BaseException) -> None:
        self.stage = stage
        super().__init__(
            f"model {checkpoint.model_name!r} ({checkpoint.path}) failed during stage "
            f"{stage!r}: {type(exc).__name__}: {exc}"
        )
