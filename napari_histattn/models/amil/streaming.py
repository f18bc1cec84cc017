"""A-MIL's attention pooling over a bag that arrives in chunks, in bounded memory.

A slide's bag can hold millions of tiles (about 1.5 M tissue tiles of 32 px at
1 um/px on a 100,000^2 px slide); holding all their embeddings at once costs
``N * D`` floats (0.75 GB for D = 128, 6 GB for a 1,024-d foundation encoder).
The pooled embedding ``z_k = sum_n softmax_n(s_nk) h_n`` is a ratio of two sums,
so it can be accumulated chunk by chunk with a running maximum of the scores
(the "online softmax": when the maximum grows, the sums so far are rescaled by
``exp(old_max - new_max)``). Only the scores ``s`` ``(N, K)`` and the instance
logits ``(N, C)`` are kept, which the heatmap and the decision rules need anyway.

:class:`StreamedPooling` gives the same output as
:meth:`~.network.AttentionMIL.forward_features` on the whole bag (tested to float
rounding) except that ``features`` is None: nothing downstream of inference uses it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from napari_histattn.models.amil.network import AttentionMIL
from napari_histattn.models.outputs import MILOutput

__all__ = ["StreamedPooling"]


class StreamedPooling:
    """Pool one bag of an :class:`~.network.AttentionMIL` given in chunks (eval mode).

    Call :meth:`add` with each ``(n, D)`` chunk of embeddings in bag order, under
    ``torch.inference_mode`` or ``torch.no_grad``, then :meth:`finish`. The held
    memory is the accumulators ``(K, D)`` in float64, plus ``(N, K + C)`` floats.
    """

    def __init__(self, model: AttentionMIL) -> None:
        self.model = model
        self.n = 0
        self._max: Tensor | None = None  # (K,) running maximum of the scores
        self._denominator: Tensor | None = None  # (K,) sum_n exp(s_nk - max_k)
        self._numerator: Tensor | None = None  # (K, D) sum_n exp(s_nk - max_k) h_n
        self._scores: list[Tensor] = []
        self._instance_logits: list[Tensor] = []

    def add(self, features: Tensor) -> None:
        """Pool ``features`` ``(n, D)`` (the next ``n`` instances of the bag) in."""
        model = self.model
        embed_dim = model.embed_dim
        if features.dim() != 2 or features.shape[-1] != embed_dim:
            raise ValueError(f"features must be (n, {embed_dim}), got {tuple(features.shape)}")
        if features.shape[0] == 0:
            return
        if bool(getattr(model, "standardise", False)):
            mean, std = model.get_buffer("feature_mean"), model.get_buffer("feature_std")
            features = (features - mean) / std
        scores = model.pooling.scores(features.unsqueeze(0))[0]  # (n, K)
        self._scores.append(scores.float().cpu())
        self._instance_logits.append(model.instance_logits(features.unsqueeze(0))[0].float().cpu())
        scores64 = scores.double()
        chunk_max = scores64.max(dim=0).values
        if self._max is None or self._denominator is None or self._numerator is None:
            running_max = chunk_max
            denominator = torch.zeros_like(chunk_max)
            numerator = torch.zeros(
                chunk_max.shape[0], embed_dim, dtype=torch.float64, device=features.device
            )
        else:
            running_max = torch.maximum(self._max, chunk_max)
            rescale = torch.exp(self._max - running_max)
            denominator = self._denominator * rescale
            numerator = self._numerator * rescale[:, None]
        weights = torch.exp(scores64 - running_max)  # (n, K)
        self._max = running_max
        self._denominator = denominator + weights.sum(dim=0)
        self._numerator = numerator + weights.T @ features.double()
        self.n += int(features.shape[0])

    def finish(self) -> MILOutput:
        """The bag's output with a batch dimension of 1, as ``forward_features`` gives it
        (``features`` None)."""
        if self.n == 0 or self._numerator is None or self._denominator is None:
            raise ValueError("empty bag: A-MIL needs at least one instance per bag")
        model = self.model
        device = self._numerator.device
        pooled = (self._numerator / self._denominator[:, None]).float()  # (K, D)
        bag_logits = model.head(pooled.reshape(1, -1))
        scores = torch.cat(self._scores)  # (N, K)
        weights = torch.softmax(scores, dim=0)
        instance_logits = torch.cat(self._instance_logits).unsqueeze(0).to(device)
        return MILOutput(
            logits=model.decide(bag_logits, instance_logits, None, model.decision),
            attention=weights.mean(-1).unsqueeze(0),
            attention_logits=scores.mean(-1).unsqueeze(0),
            features=None,
            mask=None,
            bag_logits=bag_logits,
            instance_logits=instance_logits,
        )
