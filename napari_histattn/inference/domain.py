"""What a model was trained on, and whether a slide lies outside it.

A checkpoint trained on our generator's slides says "lesion 1.000" on real skin
just as readily as on the slides it knows: the call means nothing there, and the
reviewer must be told before the numbers. Training records its domain
(:func:`domain_of_slides`, in ``metadata["training"]["domain"]``); older
checkpoints have it inferred from their data summary (:func:`training_domain`).
:func:`domain_warnings` compares a slide with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from napari_histattn.io.synthetic.marker import is_synthetic_properties

__all__ = [
    "MPP_TOLERANCE",
    "OOD_LIMIT",
    "TrainingDomain",
    "domain_of_slides",
    "domain_warnings",
    "slide_kind",
    "training_domain",
]

#: A slide whose level-0 pixel size lies more than this factor outside the training
#: slides' range is out of domain (resampling to the model's resolution does not
#: undo a different scanner's optics and blur).
MPP_TOLERANCE = 1.5
#: An out-of-distribution score above this is a warning (1.0: as unusual as the most
#: unusual 5 % of held-out training slides).
OOD_LIMIT = 1.5

_SOURCES = ("synthetic", "real", "mixed", "unknown")
_GENERATOR_MARK = "napari_histattn.io.synthetic"


@dataclass(frozen=True)
class TrainingDomain:
    """The data a checkpoint was trained on, as far as it is known.

    Attributes
    ----------
    source
        ``"synthetic"`` (our generator's slides), ``"real"`` (scanned slides),
        ``"mixed"`` or ``"unknown"``.
    stain
        The stain, when known (``"H&E"``).
    slide_mpp_range
        ``(min, max)`` level-0 micrometres per pixel of the training slides, or None.
    model_mpp
        The resolution the model reads at (``preprocessing.target_mpp``), or None.
    classes
        The classes it was trained on.
    recorded
        True when training wrote this record; False when it was inferred from an
        older checkpoint's data summary.
    """

    source: str = "unknown"
    stain: str | None = None
    slide_mpp_range: tuple[float, float] | None = None
    model_mpp: float | None = None
    classes: tuple[str, ...] = ()
    recorded: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the checkpoint's ``training.domain`` and the result's provenance)."""
        return {
            "source": self.source,
            "stain": self.stain,
            "slide_mpp_range": None if self.slide_mpp_range is None else list(self.slide_mpp_range),
            "model_mpp": self.model_mpp,
            "classes": list(self.classes),
            "recorded": self.recorded,
        }

    def describe(self) -> str:
        """One line for a reviewer: ``synthetic H&E slides at 0.5 um/px; classes ...``."""
        what = {"synthetic": "synthetic (generated) slides", "real": "scanned slides"}.get(
            self.source, f"{self.source} slides"
        )
        if self.stain:
            what = f"{self.stain} {what}"
        if self.slide_mpp_range is not None:
            lo, hi = self.slide_mpp_range
            what += f" at {lo:g} um/px" if lo == hi else f" at {lo:g}-{hi:g} um/px"
        return what + ("" if self.recorded else " (inferred from the checkpoint's data summary)")


def _mpp_range(values: Iterable[float]) -> tuple[float, float] | None:
    seen = [float(v) for v in values]
    return (min(seen), max(seen)) if seen else None


def training_domain(metadata: Mapping[str, Any]) -> TrainingDomain:
    """The training domain of a checkpoint, from its metadata.

    ``metadata["training"]["domain"]`` when training recorded it; otherwise
    inferred: a data summary naming our generator (``napari_histattn.io.synthetic``)
    or the ``synthetic`` layout means synthetic H&E; anything else is unknown.
    """
    preprocessing = metadata.get("preprocessing") or {}
    model_mpp = preprocessing.get("target_mpp")
    model_mpp = None if model_mpp is None else float(model_mpp)
    classes = tuple(str(c) for c in metadata.get("class_names") or ())
    training = metadata.get("training") or {}
    record = training.get("domain") if isinstance(training, Mapping) else None
    if isinstance(record, Mapping):
        source = str(record.get("source", "unknown"))
        span = record.get("slide_mpp_range")
        return TrainingDomain(
            source=source if source in _SOURCES else "unknown",
            stain=None if record.get("stain") is None else str(record["stain"]),
            slide_mpp_range=None if not span else (float(span[0]), float(span[1])),
            model_mpp=model_mpp,
            classes=classes,
            recorded=True,
        )
    data = training.get("data") if isinstance(training, Mapping) else None
    data = data if isinstance(data, Mapping) else {}
    synthetic = _GENERATOR_MARK in str(data.get("generator", "")) or data.get("layout") == (
        "synthetic"
    )
    return TrainingDomain(
        source="synthetic" if synthetic else "unknown",
        stain="H&E" if synthetic else None,
        model_mpp=model_mpp,
        classes=classes,
        recorded=False,
    )


def slide_kind(slide: Any) -> str:
    """``"synthetic"`` for a slide our generator wrote; ``"real"`` for a scan (a slide that
    records its pixel size or comes from a scanner's format); ``"unknown"`` for a plain
    image that says neither."""
    if is_synthetic_properties(getattr(slide, "properties", {}) or {}):
        return "synthetic"
    vendor = getattr(slide, "vendor", None)
    scanner_format = vendor not in (None, "pillow", "tifffile", "generic-tiff")
    return "real" if scanner_format or getattr(slide, "mpp_xy", None) is not None else "unknown"


def domain_of_slides(slides: Iterable[Any], *, classes: Iterable[str] = ()) -> TrainingDomain:
    """The domain a set of open slides spans (training records it in the checkpoint).

    Slides without a pixel size add nothing to the mpp range; the stain is H&E
    when every slide is synthetic (the generator's), else unknown (a scanned
    slide does not say its stain).
    """
    kinds: set[str] = set()
    mpps: list[float] = []
    for slide in slides:
        kinds.add(slide_kind(slide))
        mpp = getattr(slide, "mpp_xy", None)
        if mpp is not None:
            mpps.append(float(mpp[0]))
    source = "unknown" if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"
    return TrainingDomain(
        source=source,
        stain="H&E" if source == "synthetic" else None,
        slide_mpp_range=_mpp_range(mpps),
        classes=tuple(classes),
        recorded=True,
    )


def domain_warnings(
    domain: TrainingDomain,
    slide: Any,
    *,
    slide_mpp: float | None = None,
    ood: Mapping[str, Any] | None = None,
) -> list[str]:
    """Why this slide lies outside what the model was trained on (empty when it does not).

    Parameters
    ----------
    domain
        The checkpoint's :class:`TrainingDomain`.
    slide
        The open slide (its properties say whether our generator wrote it).
    slide_mpp
        The level-0 pixel size the run used (the slide's, or the one the user gave).
    ood
        The run's out-of-distribution measurement
        (:mod:`napari_histattn.models.feature_reference`), when the checkpoint has a
        reference: a score above :data:`OOD_LIMIT` is a warning.
    """
    warnings: list[str] = []
    kind = slide_kind(slide)
    if domain.source == "synthetic" and kind != "synthetic":
        warnings.append(
            "this model was trained only on synthetic (generated) slides and this is a real "
            "slide: its call and attention are not meaningful here"
        )
    elif domain.source == "real" and kind == "synthetic":
        warnings.append(
            "this model was trained on scanned slides and this is a synthetic one: its output "
            "here says nothing about real tissue"
        )
    if slide_mpp is not None and domain.slide_mpp_range is not None:
        lo, hi = domain.slide_mpp_range
        if slide_mpp < lo / MPP_TOLERANCE or slide_mpp > hi * MPP_TOLERANCE:
            span = f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
            warnings.append(
                f"this slide's pixel size ({slide_mpp:.3g} um/px) is outside the training "
                f"slides' ({span} um/px): a different scanner or magnification, which the "
                "model has not seen"
            )
    score = None if not ood else ood.get("score")
    if score is not None and float(score) > OOD_LIMIT:
        warnings.append(
            f"its tiles look unlike the training tiles to the model: out-of-distribution "
            f"score {float(score):.1f} (1.0 = the most unusual 5 % of held-out training slides)"
        )
    return warnings
