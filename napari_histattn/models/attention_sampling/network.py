r"""Attention sampling (Katharopoulos & Fleuret, ICML 2019), registered as
``"attention_sampling"``.

An attention network looks at a downscaled view of the image (or slide) and
gives a distribution over the positions of its grid; N positions are sampled
from it; a feature network sees only the high-resolution patches at those
positions; the features are aggregated and classified.

- Attention network: 3 x (3x3 conv, 8 filters, batch norm, ReLU), a 3x3 conv
  to 1 channel, softmax over all positions (of ``scores / temperature``). Convs
  are padded, so the attention grid has the size of the low-resolution view.
- Feature network: 4 x (3x3 conv, 16 filters, ReLU), 2x2 max pooling after the
  first three, global max pooling, linear to ``feature_dim``, L2 normalisation,
  times ``feature_scale`` (fixed, or learned when ``learn_feature_scale``).
- Aggregation ``"expectation"`` (the paper): the unbiased estimator of
  :math:`\sum_i a_i f_i` with its custom autograd Function
  (:func:`napari_histattn.models.ats_core.expectation`), then a linear classifier.
  The attention network learns through the estimator's attention gradient.
  (As in the paper, the estimate is unbiased for the pooled features; the loss
  of the classifier applied to it is the usual plug-in approximation.)
- Aggregation ``"reinforce"`` (the lymphoma seed's variant): the
  attention-weighted mean of the sampled features,
  :math:`\sum_k a_k f_k / \sum_k a_k`, a linear classifier, and REINFORCE
  for the attention network with the batch-mean loss as baseline. The loss
  also reaches the attention through those weights (the pathwise part of the
  gradient of the expected loss); REINFORCE adds the score-function part. With
  a batch of one image the baseline equals the loss and REINFORCE adds nothing.

Both variants add an entropy regulariser on the attention distribution
(``- entropy_weight * H(a)``: a positive weight favours spreading the attention,
i.e. exploration).

Training contract
-----------------
``output = model(low_res, patch_source, generator=g)`` then
``loss = model.loss(output, targets)`` and ``loss.backward()``. ``loss`` is a
scalar: mean cross-entropy, minus ``entropy_weight`` times the mean attention
entropy, plus (``"reinforce"`` only) a REINFORCE surrogate whose *value is 0*
and whose gradient is that of ``mean_b (L_b - mean L) * log P(samples_b) / N``
(so the loss value reads the same in both variants and for validation).
The training loop should call ``model.loss`` whenever the model has one.

Coordinate frames
-----------------
``low_res`` is ``(B, C, h, w)``; the attention grid is ``(h, w)`` and samples
are ``samples_rc`` (row, col) on it. :func:`grid_to_highres_xy` maps a grid
cell to the high-resolution pixel at its centre (``hr_xy``, x first), where the
:class:`~napari_histattn.models.patch_source.PatchSource` reads a
``patch_size`` square. :func:`downscale_image` makes the low-resolution view of
an in-memory image with the model's ``downscale`` factor; for slides the
inference engine reads the view from a pyramid level instead (``downscale`` is
then the preprocessing metadata that says which).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from napari_histattn.models import ats_core
from napari_histattn.models.attention_sampling.parts import (
    AttentionNetwork,
    EncoderFeatureNetwork,
    FeatureNetwork,
)
from napari_histattn.models.outputs import SamplingOutput
from napari_histattn.models.patch_source import PatchSource, TensorPatchSource, read_patches
from napari_histattn.models.registry import ModelExample, register_model
from napari_histattn.models.tile_evidence import TileClassifier, last_convolution

AGGREGATIONS = ("expectation", "reinforce")


def grid_to_highres_xy(
    grid_rc: Tensor, grid_hw: tuple[int, int], high_res_hw: tuple[int, int]
) -> Tensor:
    """Centres, in high-resolution pixels, of attention-grid cells.

    The grid (the low-resolution view) and the high-resolution image cover the
    same area; cell ``(r, c)`` of an ``h x w`` grid covers
    ``[c, c+1) * W/w`` by ``[r, r+1) * H/h`` in high-resolution pixels.

    Parameters
    ----------
    grid_rc
        ``(..., 2)`` integer (row, col) positions on the grid.
    grid_hw
        Grid size ``(h, w)`` (the low-resolution view's size for this model).
    high_res_hw
        High-resolution image size ``(H, W)``.

    Returns
    -------
    Tensor
        ``(..., 2)`` float64 centres ``(x, y)``.
    """
    h, w = grid_hw
    big_h, big_w = high_res_hw
    rc = grid_rc.to(torch.float64)
    x = (rc[..., 1] + 0.5) * (big_w / w)
    y = (rc[..., 0] + 0.5) * (big_h / h)
    return torch.stack([x, y], dim=-1)


def downscale_image(high_res: Tensor, factor: int) -> Tensor:
    """The low-resolution view: area average over ``factor x factor`` blocks.

    ``(B, C, H, W) -> (B, C, max(1, H // factor), max(1, W // factor))``.
    """
    if factor < 1:
        raise ValueError(f"downscale factor must be >= 1, got {factor}")
    h, w = high_res.shape[-2:]
    size = (max(1, h // factor), max(1, w // factor))
    return F.interpolate(high_res, size=size, mode="area")


class AttentionSampling(nn.Module):
    """The attention-sampling model; see the module docstring.

    Parameters
    ----------
    n_classes
        Number of classes.
    n_patches
        Patches N sampled per image.
    patch_size
        Side of the square high-resolution patches, in high-resolution pixels.
    downscale
        High-resolution pixels per low-resolution pixel (the view the attention
        network sees); used by :func:`downscale_image` and as preprocessing
        metadata.
    in_channels
        Image channels.
    attention_channels, attention_blocks
        Width and number of (conv, BN, ReLU) blocks of the attention network.
    feature_channels
        Width of the feature network.
    feature_dim
        Size D of the patch features.
    feature_scale, learn_feature_scale
        Norm of the features after L2 normalisation, fixed or learned.
    replace
        Sample with replacement (True) or without (False; Gumbel top-k).
    aggregation
        ``"expectation"`` or ``"reinforce"``.
    entropy_weight
        Weight of the attention-entropy bonus in :meth:`loss`.
    temperature
        Softmax temperature of the attention (> 1 flattens it).
    feature_encoder
        ``"default"`` (the paper's small CNN), or a registry encoder name
        (``resnet18``, ``uni``...) as the feature network; its weights can be
        warm-started from a local file with :meth:`warm_start_feature_encoder`.
    freeze_feature_encoder
        Keep that encoder fixed (only its linear head and the attention learn).
    """

    def __init__(
        self,
        n_classes: int = 2,
        n_patches: int = 50,
        patch_size: int = 50,
        downscale: int = 8,
        in_channels: int = 3,
        attention_channels: int = 8,
        attention_blocks: int = 3,
        feature_channels: int = 16,
        feature_dim: int = 32,
        feature_scale: float = 1.0,
        learn_feature_scale: bool = False,
        replace: bool = False,
        aggregation: str = "expectation",
        entropy_weight: float = 0.01,
        temperature: float = 1.0,
        feature_encoder: str = "default",
        freeze_feature_encoder: bool = False,
    ) -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if n_patches < 1 or patch_size < 1 or downscale < 1:
            raise ValueError("n_patches, patch_size and downscale must be >= 1")
        self.n_classes = n_classes
        self.n_patches = n_patches
        self.patch_size = patch_size
        self.downscale = downscale
        self.replace = replace
        self.aggregation = aggregation
        self.entropy_weight = entropy_weight
        self.temperature = temperature
        self.attention_net = AttentionNetwork(in_channels, attention_channels, attention_blocks)
        self.feature_net: nn.Module
        if feature_encoder == "default":
            self.feature_net = FeatureNetwork(
                in_channels, feature_channels, feature_dim, feature_scale, learn_feature_scale
            )
        else:
            self.feature_net = EncoderFeatureNetwork(
                feature_encoder,
                feature_dim,
                feature_scale,
                learn_feature_scale,
                freeze_feature_encoder,
            )
        self.classifier = nn.Linear(feature_dim, n_classes)

    def warm_start_feature_encoder(self, weights: str | Path) -> str:
        """Load a registry encoder's local weights into the feature network; returns their
        SHA-256 (record it in the training summary)."""
        from napari_histattn.models.encoders import create_encoder

        if not isinstance(self.feature_net, EncoderFeatureNetwork):
            raise ValueError(
                'warm start needs feature_encoder set to an encoder name, not "default"'
            )
        loaded = create_encoder(self.feature_net.encoder_name, weights)
        self.feature_net.encoder.load_state_dict(loaded.module.state_dict(), strict=True)
        return str(loaded.weights_sha256)

    def attention_map(self, low_res: Tensor) -> tuple[Tensor, Tensor]:
        """The attention network alone (for heatmaps and inference).

        Parameters
        ----------
        low_res
            ``(B, C, h, w)`` low-resolution view.

        Returns
        -------
        tuple of Tensor
            ``attention_logits`` ``(B, h, w)`` (scores divided by the temperature)
            and ``attention`` ``(B, h, w)``, their softmax over all positions
            (each image sums to 1).
        """
        scores = self.attention_scores(low_res)
        b, h, w = scores.shape
        attention = torch.softmax(scores.reshape(b, h * w), dim=1).reshape(b, h, w)
        return scores, attention

    def attention_scores(self, low_res: Tensor) -> Tensor:
        """``(B, h, w)`` attention logits of a view (or of a tile of one): the attention
        network's scores divided by the temperature, before the softmax over positions."""
        scores: Tensor = self.attention_net(low_res) / self.temperature
        return scores

    @property
    def gradcam_layer(self) -> nn.Module:
        """The feature network's last convolution: the layer Grad-CAM reads."""
        return last_convolution(self.feature_net)

    def tile_classifier(self) -> nn.Module:
        """The classifier on each patch's own feature, as an image classifier (``(B, C, p,
        p)`` patches to an output whose ``logits`` are ``(B, n_classes)``): the per-patch
        evidence that post-hoc explanations explain."""
        return TileClassifier(self, lambda patches: self.classifier(self.feature_net(patches)))

    def sample_features(self, patches: Tensor) -> Tensor:
        """Feature network over ``(B, N, C, p, p)`` patches: ``(B, N, D)``."""
        b, n = patches.shape[:2]
        features: Tensor = self.feature_net(patches.flatten(0, 1))
        return features.reshape(b, n, -1)

    def forward(
        self,
        low_res: Tensor,
        patch_source: PatchSource,
        generator: torch.Generator | None = None,
        n_patches: int | None = None,
    ) -> SamplingOutput:
        """Attention, sampling, patch features and classification.

        Parameters
        ----------
        low_res
            ``(B, C, h, w)`` low-resolution view, on the model's device.
        patch_source
            Serves high-resolution patches of the same B images.
        generator
            Generator for the sampling; the same seed gives the same samples.
        n_patches
            Override of the configured number of patches (for example at inference).

        Returns
        -------
        SamplingOutput
            ``logits`` ``(B, n_classes)``; ``attention``/``attention_logits``
            ``(B, h, w)``; ``samples_rc`` ``(B, N, 2)`` long; ``sample_attention``
            ``(B, N)``; ``features`` ``(B, N, D)``.
        """
        n = self.n_patches if n_patches is None else n_patches
        attention_logits, attention = self.attention_map(low_res)
        b, h, w = attention.shape
        idx, sample_attention = ats_core.sample(
            attention.reshape(b, h * w), n, self.replace, generator
        )
        samples_rc = torch.stack([idx // w, idx % w], dim=-1)
        centers_hr_xy = torch.stack(
            [
                grid_to_highres_xy(samples_rc[i], (h, w), _hw(patch_source.high_res_size_wh(i)))
                for i in range(b)
            ]
        )
        patches = read_patches(patch_source, centers_hr_xy, self.patch_size)
        patches = patches.to(device=low_res.device, dtype=low_res.dtype)
        features = self.sample_features(patches)
        if self.aggregation == "expectation":
            pooled = ats_core.expectation(sample_attention, features, self.replace)
        else:
            weights = sample_attention / sample_attention.sum(dim=1, keepdim=True)
            pooled = torch.einsum("bn,bnd->bd", weights, features)
        return SamplingOutput(
            logits=self.classifier(pooled),
            attention=attention,
            attention_logits=attention_logits,
            samples_rc=samples_rc,
            sample_attention=sample_attention,
            features=features,
        )

    def loss(self, output: SamplingOutput, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        """Training loss (see "Training contract" in the module docstring).

        Parameters
        ----------
        output
            The output of :meth:`forward`.
        targets
            ``(B,)`` long class indices.
        weight
            Optional ``(n_classes,)`` class weights for the cross-entropy.

        Returns
        -------
        Tensor
            Scalar: mean cross-entropy - ``entropy_weight`` * mean attention
            entropy (+ the zero-valued REINFORCE surrogate for ``"reinforce"``).
        """
        per_image = F.cross_entropy(output.logits, targets, weight=weight, reduction="none")
        loss = per_image.mean()
        if self.entropy_weight:
            entropy = ats_core.attention_entropy(output.attention.flatten(1))
            loss = loss - self.entropy_weight * entropy.mean()
        if self.aggregation == "reinforce":
            if output.sample_attention is None:
                raise ValueError("the REINFORCE loss needs output.sample_attention")
            n = output.sample_attention.shape[1]
            log_prob = ats_core.sample_log_prob(output.sample_attention, self.replace) / n
            advantage = (per_image - per_image.mean()).detach()
            # Value 0, gradient of the REINFORCE objective.
            loss = loss + (advantage * (log_prob - log_prob.detach())).mean()
        return loss


def _hw(size_wh: tuple[int, int]) -> tuple[int, int]:
    return size_wh[1], size_wh[0]


def _example_input(
    config: dict[str, Any], batch_size: int, seed: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed)
    side = 6 * config["downscale"]
    high_res = torch.rand(batch_size, config["in_channels"], side, side, generator=gen)
    low_res = downscale_image(high_res, config["downscale"])
    sampling_gen = torch.Generator().manual_seed(seed + 1)
    return (low_res, TensorPatchSource(high_res)), {"generator": sampling_gen}


# The class is its own builder: create_model reads the defaults from __init__.
register_model(
    "attention_sampling",
    example=ModelExample(
        config={
            "n_classes": 3,
            "n_patches": 5,
            "patch_size": 8,
            "downscale": 4,
            "attention_channels": 4,
            "feature_channels": 4,
            "feature_dim": 6,
        },
        make_input=_example_input,
    ),
)(AttentionSampling)
