"""The two networks of attention sampling: the attention network over the low-resolution
view (:class:`AttentionNetwork`) and the feature network over the sampled patches
(:class:`FeatureNetwork`, the paper's small CNN, or :class:`EncoderFeatureNetwork`, a
registry encoder). :class:`~napari_histattn.models.attention_sampling.network.AttentionSampling`
puts them together."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class AttentionNetwork(nn.Module):
    """Blocks of (3x3 conv, batch norm, ReLU), then a 3x3 conv to one score per position.

    ``(B, C, h, w) -> (B, h, w)`` scores (before the softmax).
    """

    def __init__(self, in_channels: int = 3, channels: int = 8, blocks: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(blocks):
            layers += [
                nn.Conv2d(width, channels, 3, padding=1),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            width = channels
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, low_res: Tensor) -> Tensor:
        x = low_res
        if self.training:
            x = self.body(x)
        else:  # each batch norm folded into the convolution before it: 20 % faster
            modules = list(self.body)
            i = 0
            while i < len(modules):
                conv = modules[i]
                bn = modules[i + 1] if i + 1 < len(modules) else None
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    weight, bias = _folded(conv, bn)
                    x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation)
                    i += 2
                else:
                    x = conv(x)
                    i += 1
        scores: Tensor = x.squeeze(1)
        return scores

    @property
    def halo(self) -> int:
        """Receptive half-width in pixels: a tile of the view with this much context on
        every side gets, on its inner square, the scores of one pass over the whole view."""
        convs = [m for m in self.body if isinstance(m, nn.Conv2d)]
        return sum(int(m.dilation[0]) * (int(m.kernel_size[0]) - 1) // 2 for m in convs)


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of one convolution computing ``bn(conv(x))`` with ``bn``'s running
    statistics (differentiable in both modules' parameters)."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("batch norm without running statistics cannot be folded")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight * scale.view(-1, 1, 1, 1), (bias - bn.running_mean) * scale + shift


class FeatureNetwork(nn.Module):
    """4 x (3x3 conv, ReLU) with 2x2 max pooling after the first three, global max
    pooling, linear, L2 normalisation, times a (fixed or learned) scale.

    ``(M, C, p, p) -> (M, feature_dim)``; every row has norm ``feature_scale``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 16,
        feature_dim: int = 32,
        feature_scale: float = 1.0,
        learn_feature_scale: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for i in range(4):
            layers += [nn.Conv2d(width, channels, 3, padding=1), nn.ReLU(inplace=True)]
            if i < 3:
                # ceil_mode keeps small patches at >= 1 pixel.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            width = channels
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, feature_dim)
        if feature_scale <= 0:
            raise ValueError(f"feature_scale must be > 0, got {feature_scale}")
        # Stored as a log so that a learned scale stays positive.
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(feature_scale)), requires_grad=learn_feature_scale
        )

    def forward(self, patches: Tensor) -> Tensor:
        x = self.body(patches).amax(dim=(2, 3))
        x = F.normalize(self.fc(x), dim=1)
        return x * self.log_scale.exp()


class EncoderFeatureNetwork(nn.Module):
    """A registry encoder (:func:`~napari_histattn.models.encoders.create_encoder`) as the
    feature network: encoder, linear to ``feature_dim``, L2 normalisation, times a scale.

    ``freeze`` keeps the encoder's weights (and its batch-norm statistics) fixed, so
    that a pretrained encoder is used as it is and only the head learns.
    """

    def __init__(
        self,
        encoder: str,
        feature_dim: int = 32,
        feature_scale: float = 1.0,
        learn_feature_scale: bool = False,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        from napari_histattn.models.encoders import create_encoder

        built = create_encoder(encoder, pretrained=False)
        self.encoder_name = encoder
        self.encoder = built.module
        self.freeze = freeze
        for p in self.encoder.parameters():
            p.requires_grad_(not freeze)
        self.fc = nn.Linear(built.spec.dim, feature_dim)
        if feature_scale <= 0:
            raise ValueError(f"feature_scale must be > 0, got {feature_scale}")
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(feature_scale)), requires_grad=learn_feature_scale
        )

    def train(self, mode: bool = True) -> EncoderFeatureNetwork:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def forward(self, patches: Tensor) -> Tensor:
        x = F.normalize(self.fc(self.encoder(patches)), dim=1)
        return x * self.log_scale.exp()
