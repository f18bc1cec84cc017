"""A bag or sampling model's per-tile evidence, and its post-hoc explanations.

A-MIL, HATNet and attention sampling classify a slide from many tiles; each tile's own
evidence is the model's head applied to that tile's embedding alone. :class:`TileClassifier`
makes that an image classifier (tiles in, ``logits`` out), which
:func:`napari_histattn.inference.explain.explain` can take gradients through, and
:class:`TileExplanations` gathers those explanations batch by batch onto the model's
grid (one cell per tile: each tile's map is averaged to its one value).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch.nn as nn
from torch import Tensor

__all__ = ["TileClassifier", "TileExplanations", "last_convolution"]


def last_convolution(module: nn.Module | None) -> nn.Module:
    """The last ``Conv2d`` of ``module`` in definition order: the layer Grad-CAM reads.

    Raises
    ------
    ValueError
        ``module`` has no convolution.
    """
    convs = [
        m for m in (module.modules() if module is not None else ()) if isinstance(m, nn.Conv2d)
    ]
    if not convs:
        raise ValueError("this model has no convolutional patch encoder to explain")
    return convs[-1]


class TileClassifier(nn.Module):
    """``logits_of(tiles (B, C, p, p)) -> (B, n_classes)`` as a module whose output has
    ``logits``; ``owner`` (the model) is held so that its parameters and ReLUs are this
    module's (guided backpropagation hooks them)."""

    def __init__(self, owner: nn.Module, logits_of: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.owner = owner
        self._logits_of = logits_of
        # In the owner's mode, so that whoever restores this module's mode (as
        # explain() does) leaves the model in the mode it was in.
        self.train(owner.training)

    def forward(self, tiles: Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self._logits_of(tiles))


class TileExplanations:
    """Post-hoc explanations of ``ctx.model``'s per-tile evidence (its ``tile_classifier()``
    at its ``gradcam_layer``), gathered batch by batch.

    Every class after the first is explained, since the slide call, which says whose
    evidence the map shows, comes only after the whole bag.
    """

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.classes = list(range(1, len(ctx.class_names)))
        self.classifier = ctx.model.tile_classifier()
        self.layer = ctx.model.gradcam_layer
        self.parts: dict[tuple[str, int], list[np.ndarray]] = {}

    def add(self, tiles: Tensor) -> None:
        """Explain one batch of tiles ``(b, 3, p, p)``."""
        maps = self.ctx.call(
            partial(self.ctx.explain_tiles, tiles, self.classes, self.layer, self.classifier),
            "the explanations",
        )
        for key, values in maps.items():
            self.parts.setdefault(key, []).append(values.flatten(1).mean(1).float().cpu().numpy())

    def shown(self, probs: np.ndarray) -> int:
        """The class whose evidence the maps show: the call, or the first non-benign class."""
        return min(max(int(np.argmax(probs)), 1), len(self.ctx.class_names) - 1)

    def on_grid(
        self, probs: np.ndarray, rc: np.ndarray, grid_shape: tuple[int, int]
    ) -> dict[str, np.ndarray]:
        """Each method's map of the called class's evidence: tile ``i`` at cell ``rc[i]``
        (in the order the tiles were added), NaN at every other cell."""
        shown = self.shown(probs)
        out = {}
        for (method, c), parts in self.parts.items():
            if c == shown:
                grid = np.full(grid_shape, np.nan, dtype=np.float32)
                grid[rc[:, 0], rc[:, 1]] = np.concatenate(parts)
                out[method] = grid
        return out

    def info(self, probs: np.ndarray) -> dict[str, Any]:
        """Provenance: whose evidence, and of what."""
        return {
            "explained_class": self.ctx.class_names[self.shown(probs)],
            "explained": "the head on each tile's own embedding (tile mean of each map)",
        }
