"""The text of the widget's result panel: the call (or why there is none), then the numbers.

GUI-free, so that what a reviewer reads can be tested without a viewer.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from napari_histattn._napari.result_layers import region_lines

#: Characters per line of the result panel.
RESULT_WIDTH = 56


def panel_text(result: Any, regions: Sequence[Any]) -> str:
    """The result panel for ``result`` (a ``ClassificationResult``) and its shown ``regions``.

    The call comes first, or "NOT A DIAGNOSIS" with the reason when the result is
    unreliable, under a headline when the slide lies outside the model's training
    domain (:mod:`napari_histattn.inference.domain`, or glass that is not near white);
    warnings come right under it, before the class probabilities and the patch
    evidence; lines are wrapped at :data:`RESULT_WIDTH` (one long line once widened the
    dock until the canvas had no room left).
    """
    reason = result.unreliable_reason()
    if reason is None:
        lines = [f"predicted: {result.predicted_class}"]
    else:  # a warning instead of a diagnosis
        lines = [f"NOT A DIAGNOSIS: {reason}", "model output (not usable):"]
    prov = result.provenance
    if prov.get("domain_warnings") or prov.get("glass_warning"):  # before anything else
        lines[:0] = ["OUTSIDE THE MODEL'S TRAINING DOMAIN:", "do not rely on this call"]
    evidence = result.evidence_lines()
    lines += [line for line in evidence if line.startswith("warning:")]  # before the numbers
    lines += [f"  {name}: {p:.3f}" for name, p in result.probabilities_by_class.items()]
    lines += [line for line in evidence if not line.startswith("warning:")]
    lines.append(f"({result.provenance.get('device')}, seed {result.provenance.get('seed')})")
    if regions:
        lines.append("attended regions (green outlines):")
        lines += [f"  {line}" for line in region_lines(regions)]
    wrapped = [textwrap.fill(line, RESULT_WIDTH, subsequent_indent="    ") for line in lines]
    return "\n".join(wrapped)
