"""How far a slide's tile embeddings lie from the ones the model was trained on.

A bag model (A-MIL, HATNet) embeds every tile; a checkpoint can carry a reference of
its training tiles' embeddings (``metadata["extra"]["feature_reference"]``: per-dimension
mean and standard deviation, and the scores of held-out training slides). A tile's
distance is the root mean square of its standardised embedding; a slide's distance is the
median over its tiles; its **out-of-distribution score** is that distance divided by the
95th percentile of the held-out training slides' distances, so that 1.0 is as unusual as
the most unusual 5 % of slides like the training ones, and real tissue under a
synthetic-trained model scores several times that. ``sample_data/feature_reference.py``
fits the reference of a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

__all__ = ["REFERENCE_KEY", "FeatureDistances", "FeatureReference", "fit_reference"]

#: Where a checkpoint's reference lives: ``metadata["extra"][REFERENCE_KEY]``.
REFERENCE_KEY = "feature_reference"
_HELD_OUT_QUANTILE = 95.0


@dataclass(frozen=True)
class FeatureReference:
    """Training tiles' embedding statistics and the held-out slides' distances."""

    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    held_out: tuple[float, ...]
    note: str = ""

    @property
    def scale(self) -> float:
        """The held-out slides' 95th-percentile distance (the score's unit)."""
        return float(np.percentile(self.held_out, _HELD_OUT_QUANTILE))

    def as_dict(self) -> dict[str, Any]:
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "held_out_distances": [float(v) for v in self.held_out],
            "note": self.note,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> FeatureReference | None:
        """The checkpoint's reference, or None when it has none (or a malformed one)."""
        record = (metadata.get("extra") or {}).get(REFERENCE_KEY)
        if not isinstance(record, Mapping):
            return None
        try:
            mean = np.asarray(record["mean"], dtype=np.float64)
            std = np.asarray(record["std"], dtype=np.float64)
            held = tuple(float(v) for v in record["held_out_distances"])
        except (KeyError, TypeError, ValueError):
            return None
        if mean.ndim != 1 or mean.shape != std.shape or not held or not np.all(std > 0):
            return None
        return cls(mean, std, held, str(record.get("note", "")))


def tile_distances(features: NDArray[Any], reference: FeatureReference) -> NDArray[np.float64]:
    """Root mean square of each tile's standardised embedding, ``(n,)``."""
    z = (np.asarray(features, dtype=np.float64) - reference.mean) / reference.std
    return np.sqrt(np.mean(z * z, axis=1))


class FeatureDistances:
    """Distances of one slide's tiles, gathered batch by batch as they are embedded."""

    def __init__(self, reference: FeatureReference | None) -> None:
        self.reference = reference
        self._distances: list[NDArray[np.float64]] = []

    @classmethod
    def of(cls, checkpoint: Any) -> FeatureDistances:
        """For a loaded checkpoint (nothing is measured when it has no reference)."""
        return cls(FeatureReference.from_metadata(getattr(checkpoint, "metadata", {}) or {}))

    def add(self, features: Tensor) -> None:
        """One batch of tile embeddings ``(n, dim)``."""
        ref = self.reference
        if ref is None or features.shape[-1] != ref.mean.shape[0]:
            return
        with torch.inference_mode():
            batch = features.detach().float().cpu().numpy().reshape(-1, ref.mean.shape[0])
        self._distances.append(tile_distances(batch, ref))

    def tee(self, sink: Callable[[Tensor], None]) -> Callable[[Tensor], None]:
        """``sink`` that also measures each batch."""

        def both(features: Tensor) -> None:
            self.add(features)
            sink(features)

        return both

    def slide_distance(self) -> float | None:
        """The median tile distance, or None when nothing was measured."""
        if not self._distances:
            return None
        return float(np.median(np.concatenate(self._distances)))

    def info(self) -> dict[str, Any]:
        """``{"ood": {...}}`` for the result's provenance, or ``{}`` without a reference."""
        distance = self.slide_distance()
        if distance is None or self.reference is None:
            return {}
        scale = self.reference.scale
        return {
            "ood": {
                "score": distance / scale,
                "distance": distance,
                "held_out_p95": scale,
                "n_held_out": len(self.reference.held_out),
            }
        }


def fit_reference(
    training: Sequence[NDArray[Any]], held_out: Sequence[NDArray[Any]], note: str = ""
) -> FeatureReference:
    """A reference from the tile embeddings of training slides (their statistics) and of
    held-out slides of the same kind (the distances the score is calibrated on)."""
    pooled = np.concatenate([np.asarray(t, dtype=np.float64) for t in training])
    mean, std = pooled.mean(axis=0), pooled.std(axis=0) + 1e-6
    shell = FeatureReference(mean, std, (1.0,))
    distances = tuple(float(np.median(tile_distances(h, shell))) for h in held_out)
    return FeatureReference(mean, std, distances, note)
