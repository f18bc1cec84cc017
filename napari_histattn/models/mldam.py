"""Multi-level dual attention CNN (MLDAM; after Mishra, Mandal & Puhan, IEEE SPL 2019, as
adapted to several backbones in the ``attention-mechanisms-medical-study`` seed).

The seeds name the idea, not equations: a *self-attention* that weighs each level's own
positions, and a *multi-level attention* that lets coarser levels guide finer ones and
fuses features from several depths. This adaptation, for a VGG layout (``"vgg16"``,
or ``"vgg_small"`` for tests; blocks as :mod:`napari_histattn.models.vgg` builds them):

- levels: the outputs ``F_l`` (``C_l x H_l x W_l``, before pooling) of the last
  ``levels`` blocks, finest first;
- self-attention per level: ``s_l = sigmoid(W2 ReLU(W1 F_l))`` with 1x1 convolutions
  ``C_l -> max(1, C_l / 8) -> 1``: one map in (0, 1) per level;
- multi-level attention, from the coarsest level down: ``m_L = s_L`` and
  ``m_l = s_l * up(m_{l+1})`` (bilinear to ``H_l x W_l``): a finer position counts
  where its coarser context also does;
- fusion: each level is pooled with its map, ``g_l = sum(m_l F_l) / sum(m_l)``, the
  ``g_l`` are concatenated and one linear layer gives the logits.

``attention=False`` is the study's baseline, the backbone alone: global average pooling
of the last block and the same kind of head; its attention is uniform. Output
:class:`~napari_histattn.models.outputs.CNNAttentionOutput`: ``attention_logits`` the
finest level's ``m_l`` divided by its mean (1 = uniform within the image), upsampled to
the input; ``attention`` the same normalised to sum to 1; ``levels`` the coarser levels'
``m_l`` likewise (``"level 2"``, ... at their own resolution), which the slide runner
lays beside the attention as layers. :meth:`level_maps` gives every level's raw ``m_l``.

Registered name ``"mldam"``; family ``"mldam"`` (image-level, run tile by tile over a
slide by :mod:`napari_histattn.models.image_tiles`, as the attention CNN is).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from napari_histattn.models.family import Family, register_family
from napari_histattn.models.image_tiles import image_params, run_on_slide
from napari_histattn.models.outputs import CNNAttentionOutput
from napari_histattn.models.registry import ModelExample, register_model
from napari_histattn.models.tasks import ImageTask, image_example_input
from napari_histattn.models.vgg import LAYOUTS, conv_block, init_vgg, layout_blocks, resolve_layout

__all__ = ["BACKBONES", "FAMILY", "LevelAttention", "MultiLevelDualAttention", "build_mldam"]

#: Backbone layouts (:mod:`napari_histattn.models.vgg`): VGG-16 and the small test layout.
BACKBONES: dict[str, list[int | str]] = {name: LAYOUTS[name] for name in ("vgg16", "vgg_small")}


class LevelAttention(nn.Module):
    """Self-attention of one level: ``(B, C, H, W) -> (B, 1, H, W)`` in (0, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // 8)
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1)
        )

    def forward(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.body(features))


class MultiLevelDualAttention(nn.Module):
    """A VGG backbone with self- and multi-level attention; see the module docstring.

    Parameters
    ----------
    backbone
        ``"vgg16"``, ``"vgg_small"`` or a layout list (ints: 3x3 conv widths, ``"M"``: max-pool).
    n_classes, in_channels
        Classes of the head; input channels.
    levels
        How many of the last blocks are attention levels (at least 1).
    attention
        False: the backbone alone (global average pooling of the last block).
    batch_norm
        Batch norm after every backbone convolution.
    """

    def __init__(
        self,
        backbone: str | Sequence[int | str] = "vgg16",
        n_classes: int = 2,
        in_channels: int = 3,
        levels: int = 3,
        attention: bool = True,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        blocks = layout_blocks(resolve_layout(backbone, BACKBONES))
        if not 1 <= levels <= len(blocks):
            raise ValueError(f"levels must be within 1-{len(blocks)}, got {levels}")
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}")
        self.n_classes, self.use_attention = int(n_classes), bool(attention)
        self.convs, self.pools = nn.ModuleList(), nn.ModuleList()
        widths: list[int] = []
        channels = in_channels
        for block in blocks:
            convs, pool, channels = conv_block(block, channels, batch_norm)
            self.convs.append(convs)
            self.pools.append(pool)
            widths.append(channels)
        self.level_blocks = list(range(len(blocks) - levels, len(blocks)))  # finest first
        self.attend = nn.ModuleList(
            [LevelAttention(widths[b]) for b in self.level_blocks] if attention else []
        )
        fused = sum(widths[b] for b in self.level_blocks) if attention else widths[-1]
        self.head = nn.Linear(fused, n_classes)
        init_vgg(self.convs)

    def _run(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        features: list[Tensor] = []
        x = images
        for index, (convs, pool) in enumerate(zip(self.convs, self.pools, strict=True)):
            x = convs(x)
            if index in self.level_blocks:
                features.append(x)
            x = pool(x)
        if not self.use_attention:
            last = features[-1]
            ones = last.new_ones(last.shape[0], 1, *last.shape[-2:])
            return self.head(last.mean(dim=(2, 3))), [ones]
        maps: list[Tensor] = [self.attend[-1](features[-1])]
        for level in range(len(features) - 2, -1, -1):  # coarse guides fine
            coarse = F.interpolate(
                maps[0], size=features[level].shape[-2:], mode="bilinear", align_corners=False
            )
            maps.insert(0, self.attend[level](features[level]) * coarse)
        pooled = [
            (m * f).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp_min(1e-6)
            for m, f in zip(maps, features, strict=True)
        ]
        return self.head(torch.cat(pooled, dim=1)), maps

    def level_maps(self, images: Tensor) -> dict[str, Tensor]:
        """Every level's multi-level attention ``m_l`` ``(B, H_l, W_l)``, by block index."""
        return {
            f"block {b}": m[:, 0]
            for b, m in zip(self.level_blocks, self._run(images)[1], strict=False)
        }

    def forward(self, images: Tensor) -> CNNAttentionOutput:
        logits, maps = self._run(images)
        finest = maps[0]
        relative = finest / finest.mean(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        received = F.interpolate(
            relative, size=images.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]
        attention = received / received.sum(dim=(1, 2), keepdim=True)
        coarser = {  # the finest level is the attention itself
            f"level {i + 1}": (m / m.mean(dim=(2, 3), keepdim=True).clamp_min(1e-12))[:, 0]
            for i, m in enumerate(maps[1:], start=1)
        }
        return CNNAttentionOutput(
            logits=logits, attention=attention, attention_logits=received, levels=coarser or None
        )

    def cells_per_tile(self, patch_size: int) -> int:
        """Side of the finest attention level's grid for a ``patch_size`` input (>= 1)."""
        first = self.level_blocks[0] if self.use_attention else len(self.convs) - 1
        n_pools = sum(isinstance(p, nn.MaxPool2d) for p in list(self.pools)[:first])
        return max(1, patch_size // (2**n_pools))

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last convolution block (before pooling): Grad-CAM's layer."""
        return self.convs[-1]


@register_model(
    "mldam",
    example=ModelExample(
        config={"backbone": "vgg_small", "n_classes": 3, "levels": 2, "input_size": 32},
        make_input=image_example_input,
    ),
)
def build_mldam(
    backbone: str | Sequence[int | str] = "vgg16",
    n_classes: int = 2,
    in_channels: int = 3,
    levels: int = 3,
    attention: bool = True,
    batch_norm: bool = True,
    input_size: int = 224,
) -> MultiLevelDualAttention:
    """The multi-level dual attention CNN; ``input_size`` is the side images are resized to."""
    if input_size < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    return MultiLevelDualAttention(backbone, n_classes, in_channels, levels, attention, batch_norm)


FAMILY = register_family(
    Family(
        name="mldam",
        models=("mldam",),
        run=run_on_slide,
        task=lambda options: ImageTask(),
        input="image",
        default_batch_size=32,
        params=image_params(),
        description="multi-level dual attention CNN (after Mishra et al. 2019) run tile by tile",
        explains=True,
    )
)
