"""A-MIL's instance-level evidence: the top-k instance margin its decision rules use, and the
instance terms of its loss (annotated tiles; CLAM-SB's attention pseudo-labels).

Plain functions of an output's tensors, so that :class:`~.network.AttentionMIL`
stays the architecture and these read in one place.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from napari_histattn.models.outputs import MILOutput

__all__ = ["annotation_loss", "clam_instance_loss", "top_k_margin"]


def top_k_margin(instance_logits: Tensor, mask: Tensor | None, k: int) -> Tensor:
    """``(B,)`` mean of the ``k`` largest instance margins ``l1 - l0`` (real instances only)."""
    margins = instance_logits[..., 1] - instance_logits[..., 0]
    if mask is not None:
        margins = margins.masked_fill(~mask, float("-inf"))
    top = torch.topk(margins, min(k, int(margins.shape[1])), dim=1).values
    real = torch.isfinite(top)
    return torch.where(real, top, torch.zeros_like(top)).sum(1) / real.sum(1).clamp_min(1)


def annotation_loss(output: MILOutput) -> Tensor | None:
    """Cross-entropy of the instance logits against the annotated instances' labels, or None
    when the batch has no annotated (real) instance."""
    labelled = output.instance_targets
    if labelled is None or output.instance_logits is None:
        return None
    keep = labelled >= 0
    if output.mask is not None:
        keep = keep & output.mask
    if not bool(keep.any()):
        return None
    return nn.functional.cross_entropy(output.instance_logits[keep], labelled[keep])


def clam_instance_loss(
    output: MILOutput, targets: Tensor, classifiers: nn.ModuleList, instance_k: int
) -> Tensor | None:
    """CLAM-SB's instance loss: per bag, the ``instance_k`` most attended instances are "in
    class" and the ``instance_k`` least attended "not" for that class's binary classifier
    (at most a third of a bag per side); None when no bag is large enough."""
    assert output.features is not None
    losses = []
    for b in range(output.logits.shape[0]):
        real = slice(None) if output.mask is None else output.mask[b]
        attention, features = output.attention[b][real], output.features[b][real]
        k = min(instance_k, int(attention.shape[0]) // 3)
        if k < 1:
            continue
        top = torch.topk(attention, k).indices
        bottom = torch.topk(-attention, k).indices
        chosen = features[torch.cat([top, bottom])]
        pseudo = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(chosen.device)
        classifier = classifiers[int(targets[b])]
        losses.append(nn.functional.cross_entropy(classifier(chosen), pseudo))
    return torch.stack(losses).mean() if losses else None
