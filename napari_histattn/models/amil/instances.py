"""A-MIL's instance-level evidence: its slide decision rules (:class:`DecisionRules`, mixed
into the model) and the top-k instance margin they use, and the instance terms of its loss
(annotated tiles; CLAM-SB's attention pseudo-labels).

Plain functions of an output's tensors and one mixin, so that :class:`~.network.AttentionMIL`
stays the architecture and these read in one place.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from napari_histattn.models.outputs import MILOutput

__all__ = [
    "DECISIONS",
    "DecisionRules",
    "annotation_loss",
    "clam_instance_loss",
    "negative_instance_loss",
    "top_k_margin",
]

#: Slide decision rules (see :class:`DecisionRules`); the instance rules need two classes.
DECISIONS = ("attention", "top_k", "max")


def top_k_margin(instance_logits: Tensor, mask: Tensor | None, k: int) -> Tensor:
    """``(B,)`` mean of the ``k`` largest instance margins ``l1 - l0`` (real instances only)."""
    margins = instance_logits[..., 1] - instance_logits[..., 0]
    if mask is not None:
        margins = margins.masked_fill(~mask, float("-inf"))
    top = torch.topk(margins, min(k, int(margins.shape[1])), dim=1).values
    real = torch.isfinite(top)
    return torch.where(real, top, torch.zeros_like(top)).sum(1) / real.sum(1).clamp_min(1)


def negative_instance_loss(output: MILOutput, targets: Tensor) -> Tensor | None:
    """Every instance of a negative bag is negative (the multiple-instance assumption): the
    cross-entropy of each real instance's logits against class 0 in the bags of class 0 (two
    classes), averaged per bag and then over those bags; None when the batch has none.

    Slide labels alone then give instance labels for every tile of a benign slide: a
    look-alike that also occurs in benign slides is taught to score benign, so the top-k
    instances of a positive bag (the max-instance loss) can only be what benign slides lack.
    """
    logits = output.instance_logits
    if logits is None:
        return None
    losses = []
    for b in (targets == 0).nonzero().flatten().tolist():
        real = logits[b] if output.mask is None else logits[b][output.mask[b]]
        if real.shape[0]:
            zeros = torch.zeros(real.shape[0], dtype=torch.long, device=real.device)
            losses.append(nn.functional.cross_entropy(real, zeros))
    return torch.stack(losses).mean() if losses else None


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


class DecisionRules:
    """How a bag model makes its slide call from its attention-pooled and instance logits
    (the rules of :class:`~.network.AttentionMIL`, whose docstring describes them); mixed
    into the model, which sets ``n_classes``, ``decision``, ``decision_k`` and
    ``decision_threshold``."""

    n_classes: int
    decision: str
    decision_k: int
    decision_threshold: float

    @property
    def decision_rules(self) -> tuple[str, ...]:
        """The decision rules this model can use (all of them with two classes)."""
        return DECISIONS if self.n_classes == 2 else ("attention",)

    def set_decision(self, rule: str, threshold: float = 0.0) -> None:
        """Use ``rule`` with margin ``threshold`` for the slide call from now on (recorded in
        ``model_config``)."""
        if rule not in self.decision_rules:
            raise ValueError(f"decision must be one of {self.decision_rules}, got {rule!r}")
        if threshold != 0.0 and self.n_classes != 2:
            raise ValueError("a decision threshold needs two classes")
        self.decision, self.decision_threshold = rule, float(threshold)
        config = getattr(self, "model_config", None)
        if isinstance(config, dict):
            config.update(
                decision=rule, decision_k=self.decision_k, decision_threshold=float(threshold)
            )

    def rule_logits(self, output: MILOutput) -> dict[str, Tensor]:
        """The slide logits of ``output`` under every decision rule at threshold 0 (one
        forward for all)."""
        if output.bag_logits is None or output.instance_logits is None:
            raise ValueError("the output carries no bag and instance logits")
        return {
            rule: self.decide(output.bag_logits, output.instance_logits, output.mask, rule, 0.0)
            for rule in self.decision_rules
        }

    def decide(
        self,
        bag_logits: Tensor,
        instance_logits: Tensor,
        mask: Tensor | None,
        rule: str,
        threshold: float | None = None,
    ) -> Tensor:
        """Slide logits under ``rule`` (see the class docstring), the positive logit lowered
        by the margin ``threshold`` (default: the model's); the instance rules return
        ``[0, margin]`` so that the softmax gives ``sigmoid(margin)``."""
        t = self.decision_threshold if threshold is None else float(threshold)
        if rule == "attention":
            if t == 0.0:
                return bag_logits
            return bag_logits - torch.tensor([0.0, t], device=bag_logits.device)
        top = top_k_margin(instance_logits, mask, self.decision_k)
        if rule == "max":
            top = torch.maximum(top, bag_logits[:, 1] - bag_logits[:, 0])
        return torch.stack([torch.zeros_like(top), top - t], dim=1)
