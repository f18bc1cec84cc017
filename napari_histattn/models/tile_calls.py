"""A slide call from a patch classifier's tile probabilities, and the evidence map behind it.

A patch-level model (the attention CNN) classifies every tissue tile of a slide. The
mean of the tile probabilities is no slide call: a lesion of 0.2 % of the tissue moves
it by 0.2 %. The field's rule for such slides (CAMELYON16: one metastasis makes a
positive slide; the standard multiple-instance assumption) is that a slide is as
abnormal as its most abnormal tiles. With the classes ordered from the most benign
(the first, for example ``normal``) to the most severe (the last, ``lesion``), as
the checkpoint lists them:

- per tile, ``P(class >= c)`` is the sum of its probabilities of class ``c`` and the
  classes after it;
- per slide, ``S_c`` is the mean of the ``k`` largest ``P(class >= c)`` over the
  tiles (``S_0 = 1``): how strongly the ``k`` most suspicious tiles show class ``c``
  or worse;
- the slide's probability of class ``c`` is ``S_c - S_{c+1}``. ``S_c`` never grows
  with ``c`` (the top-``k`` mean of a smaller function is smaller), so these are
  probabilities that sum to 1, and a slide whose ``k`` worst tiles are confidently
  ``lesion`` is called ``lesion`` whatever the rest of it shows.

``k = 0`` keeps the mean of the tile probabilities (for classes with no order, such
as tumour subtypes). :func:`tile_summary` records, per class, how many tiles were
called it, their share and the largest probability, so a reviewer reads "3 lesion
tiles (0.1 %), max 0.99" beside the call.

The heatmap weights each tile's attention by its evidence for the call
(:func:`evidence`): ``P(class >= c)`` for the called class ``c``, or for the class
after the first when the call is the first (what came closest to a positive call),
never by the probability of a benign call, which would light up normal tissue.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["DEFAULT_TOP_K", "evidence", "rule_name", "slide_call", "tile_summary"]

#: Tiles whose evidence decides the call by default: chosen on validation slides in
#: ``benchmarks/patch_calls.py`` for the demo's 32-um tiles (12 tiles: ~0.012 mm^2, a
#: focus of ~60 um radius). Fewer tiles are more sensitive and let a few look-alike
#: tiles that the classifier gets wrong call a benign slide; more dilute a small lesion.
DEFAULT_TOP_K = 12


def _check(tile_probs: NDArray[np.float64]) -> NDArray[np.float64]:
    probs = np.asarray(tile_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] < 1:
        raise ValueError(f"tile probabilities must be (n_tiles >= 1, n_classes), got {probs.shape}")
    return probs


def at_least(tile_probs: NDArray[np.float64]) -> NDArray[np.float64]:
    """``(n, C)``: each tile's ``P(class >= c)`` (a reversed cumulative sum; column 0 is 1)."""
    probs = _check(tile_probs)
    out: NDArray[np.float64] = np.cumsum(probs[:, ::-1], axis=1)[:, ::-1]
    return out


def slide_call(tile_probs: NDArray[np.float64], top_k: int) -> NDArray[np.float64]:
    """``(C,)`` slide probabilities from ``(n, C)`` tile probabilities (see the module docstring).

    ``top_k`` 0 is the mean of the tiles; ``top_k`` above the number of tiles uses them all.
    """
    probs = _check(tile_probs)
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if top_k == 0:
        mean: NDArray[np.float64] = probs.mean(axis=0)
        return mean / mean.sum()
    k = min(int(top_k), probs.shape[0])
    cumulative = at_least(probs)
    n = cumulative.shape[0]
    top = np.partition(cumulative, n - k, axis=0)[n - k :]  # the k largest of each column
    s = np.append(top.mean(axis=0), 0.0)
    s[0] = 1.0
    calls = np.clip(s[:-1] - s[1:], 0.0, None)  # >= 0 up to rounding
    return np.asarray(calls / calls.sum(), dtype=np.float64)


def evidence(tile_probs: NDArray[np.float64], called: int) -> NDArray[np.float64]:
    """``(n,)`` each tile's evidence for class ``called``: ``P(class >= max(called, 1))``."""
    cumulative = at_least(tile_probs)
    column = min(max(int(called), 1), cumulative.shape[1] - 1)
    out: NDArray[np.float64] = cumulative[:, column]
    return out


def tile_summary(tile_probs: NDArray[np.float64], class_names: list[str]) -> dict[str, Any]:
    """Per class: tiles called it (arg-max), their share of the tiles, the largest probability."""
    probs = _check(tile_probs)
    called = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
    n = probs.shape[0]
    return {
        name: {
            "tiles": int(called[i]),
            "fraction": float(called[i] / n),
            "max_probability": float(probs[:, i].max()),
        }
        for i, name in enumerate(class_names)
    }


def rule_name(top_k: int, class_names: list[str]) -> str:
    """How the call was made, in words (recorded in provenance and shown with the result)."""
    if top_k == 0:
        return "mean of the tile probabilities"
    order = " < ".join(class_names)
    which = "its most suspicious tile" if top_k == 1 else f"its {top_k} most suspicious tiles"
    return f"the most severe class among {which} (classes ordered {order})"
