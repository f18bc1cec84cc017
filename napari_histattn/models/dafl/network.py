"""Channel-wise and spatial attention CNN (Wu et al., "Deep attentive feature learning
for histopathology image classification", ISBI 2019), equations 1-12 implemented exactly.

Notation per image: feature map ``F`` is ``C x H x W``; ``N = H W``.

C-Attn (:class:`ChannelAttention`, Eqs. 1-6)
    ``M_Q = R(W_q F)``, ``M_K = R(W_k F)``: 2D convolutions C -> C, kernel 4,
    stride 4, no bias (Eq. 1), giving ``C x H' x W'`` maps reshaped to ``C x N'``
    with ``H' = floor(H / 4)``, ``W' = floor(W / 4)``, ``N' = H' W'``.
    ``M_V = R(W_v F)``: Eq. 1 with the convolution "fixed to 1x1", so also
    without bias, ``C x N``.
    ``D = M_Q M_K^T`` (``C x C``); ``D' = softmax(D)`` column-wise, i.e.
    ``D'_ij = exp(D_ij) / sum_i exp(D_ij)``: each column sums to 1.
    ``A_c = D'^T M_V`` (``C x C`` times ``C x N`` = ``C x N``);
    ``F_new = F + R'(A_c)`` with ``R'`` reshaping ``C x N`` to ``C x H x W``.

    How the sizes agree: ``M_Q`` and ``M_K`` only enter through the ``C x C``
    statistics ``D``, so their reduced spatial size ``N'`` is contracted away;
    ``A_c`` inherits the full ``N = H W`` columns of ``M_V`` (a 1x1 convolution
    keeps ``H x W``), which is why ``R'`` can reshape it back to ``C x H x W``.
    When H or W is not a multiple of 4 the strided convolution floors (the last
    ``H mod 4`` rows / ``W mod 4`` columns do not enter ``D``); H and W must be
    at least 4.

S-Attn (:class:`SpatialAttention`, Eqs. 7-12)
    ``S_Q = R(W_sq F)``, ``S_K = R(W_sk F)``: 1x1 convolutions C -> C/r
    (r = 8; at least one channel), ``C' x N``; ``S_V = R(W_sv F)``: 1x1, C -> C.
    ``E = S_Q^T S_K`` (``N x N``); ``E' = softmax(E)`` column-wise,
    ``E'_ij = exp(E_ij) / sum_i exp(E_ij)``; ``A_s = S_V E'`` (``C x N``);
    ``F_new = F + R'(A_s)``. Column j of ``A_s`` is the E'-weighted mix, over
    source positions i, of the value vectors: output position j draws
    ``E'_ij`` of its context from position i.

Bias: Eq. 1 says "2D Conv layer without bias", and M_V is Eq. 1 with a 1x1
kernel, so every C-Attn convolution is bias-free. Eq. 7 writes S-Attn's
projections as the same linear map ``W_s F`` with no bias term; we keep them
bias-free too, so that both modules are exactly the equations (a bias in
``W_sq``/``W_sk`` would add a term to ``E`` that the column softmax does not
cancel). There is no learned residual scale: Eqs. 6 and 12 add the attention
map unscaled.

The network (:class:`AttentionVGG`): a VGG backbone (``"vgg19"``: the
configuration E of Simonyan & Zisserman, 16 convolutions in 5 blocks;
``"vgg_small"``: ``[16, 'M', 32, 'M', 64, 'M']`` for tests; or an explicit list)
with optional batch norm. A block is the run of 3x3 convolutions (+ BN) + ReLU
ending in a 2x2 max-pool. Attention modules go after the last ReLU of a block,
before its max-pool (the block's full resolution): C-Attn at
``cattn_positions`` (default blocks 0 and 1, the bottom layers) and S-Attn at
``sattn_positions`` (default the last two blocks, -2 and -1, the top layers), as
the paper's Sec. 2.3 and Fig. 1 place them ("C-Attn and S-Attn on the bottom and
top layers respectively"); where a block has both, C-Attn runs first. For VGG19
at 224x224 input, C-Attn sees 224x224x64 and 112x112x128 maps, S-Attn
28x28x512 and 14x14x512 ones. Then global average pooling and one linear layer
to ``n_classes`` (the paper fine-tunes ImageNet VGG19 with its fully connected
layers; no weights can be downloaded here, so everything trains from scratch and
the head is kept small).

Output :class:`~napari_histattn.models.outputs.CNNAttentionOutput`:
``logits`` ``(B, n_classes)``; ``attention_logits`` ``(B, H_in, W_in)``: the
attention mass each position receives in the LAST S-Attn module,
``m_i = sum_j E'_ij`` (between 0 and N; the masses sum to N), reshaped to the
module's ``h x w`` grid and upsampled bilinearly (``align_corners=False``) to the
input size; ``attention`` ``(B, H_in, W_in)``: ``attention_logits`` divided by its
sum per image, so it sums to 1. All attention matrices are available from
:meth:`AttentionVGG.attention_maps`.

Registered name: ``"dafl_cnn"``; family ``"image"`` (declared in :mod:`napari_histattn.models.dafl`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from napari_histattn.models.outputs import CNNAttentionOutput
from napari_histattn.models.registry import ModelExample, register_model
from napari_histattn.models.tasks import image_example_input
from napari_histattn.models.vgg import LAYOUTS, conv_block, init_vgg, layout_blocks, resolve_layout

#: Named backbone layouts (:mod:`napari_histattn.models.vgg`): channel counts of 3x3
#: convolutions, ``"M"`` for a 2x2 max-pool.
BACKBONES: dict[str, list[int | str]] = {name: LAYOUTS[name] for name in ("vgg19", "vgg_small")}


class ChannelAttention(nn.Module):
    """C-Attn, Eqs. 1-6.

    Parameters
    ----------
    channels
        C, the input (and output) channels.
    kernel_size
        Kernel size and stride of the convolutions giving ``M_Q`` and ``M_K`` (4).
    """

    def __init__(self, channels: int, kernel_size: int = 4) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.query = nn.Conv2d(channels, channels, kernel_size, stride=kernel_size, bias=False)
        self.key = nn.Conv2d(channels, channels, kernel_size, stride=kernel_size, bias=False)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, H, W) -> (F_new (B, C, H, W), D' (B, C, C))``; columns of D' sum to 1."""
        batch, channels, height, width = features.shape
        if height < self.kernel_size or width < self.kernel_size:
            raise ValueError(
                f"C-Attn needs feature maps of at least {self.kernel_size}x{self.kernel_size}, "
                f"got {height}x{width}: use a larger input or move C-Attn to an earlier block"
            )
        m_q = self.query(features).flatten(2)  # (B, C, N')
        m_k = self.key(features).flatten(2)  # (B, C, N')
        m_v = self.value(features).flatten(2)  # (B, C, N)
        d = torch.bmm(m_q, m_k.transpose(1, 2))  # (B, C, C), Eq. 2
        d_norm = torch.softmax(d, dim=1)  # over i (rows): Eqs. 3-4
        a_c = torch.bmm(d_norm.transpose(1, 2), m_v)  # (B, C, N), Eq. 5
        return features + a_c.view(batch, channels, height, width), d_norm  # Eq. 6


class SpatialAttention(nn.Module):
    """S-Attn, Eqs. 7-12.

    Parameters
    ----------
    channels
        C, the input (and output) channels.
    reduction
        r: ``S_Q`` and ``S_K`` have ``max(1, C // r)`` channels (8 in the paper).
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        if reduction < 1:
            raise ValueError(f"reduction must be at least 1, got {reduction}")
        reduced = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, reduced, 1, bias=False)
        self.key = nn.Conv2d(channels, reduced, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, H, W) -> (F_new (B, C, H, W), E' (B, N, N))``; columns of E' sum to 1."""
        batch, channels, height, width = features.shape
        s_q = self.query(features).flatten(2)  # (B, C', N), Eq. 7
        s_k = self.key(features).flatten(2)  # (B, C', N)
        s_v = self.value(features).flatten(2)  # (B, C, N)
        e = torch.bmm(s_q.transpose(1, 2), s_k)  # (B, N, N), Eq. 8
        e_norm = torch.softmax(e, dim=1)  # over i (rows): Eqs. 9-10
        a_s = torch.bmm(s_v, e_norm)  # (B, C, N), Eq. 11
        return features + a_s.view(batch, channels, height, width), e_norm  # Eq. 12


@dataclass
class AttentionMap:
    """One attention module's matrix: ``kind`` is ``"channel"`` (D', ``(B, C, C)``)
    or ``"spatial"`` (E', ``(B, N, N)`` with ``grid_hw`` the module's ``h, w``)."""

    kind: str
    block: int
    matrix: Tensor
    grid_hw: tuple[int, int]


def _resolve_positions(positions: Sequence[int], n_blocks: int, what: str) -> set[int]:
    resolved = set()
    for position in positions:
        index = int(position)
        if not -n_blocks <= index < n_blocks:
            raise ValueError(
                f"{what} position {position} is out of range for a backbone of {n_blocks} blocks"
            )
        resolved.add(index % n_blocks)
    return resolved


class AttentionVGG(nn.Module):
    """VGG with C-Attn on the bottom blocks and S-Attn on the top blocks.

    Parameters
    ----------
    backbone
        ``"vgg19"``, ``"vgg_small"`` or a layout list (ints: 3x3 conv widths, ``"M"``: max-pool).
    n_classes
        Classes of the linear head.
    in_channels
        Input channels.
    cattn_positions, sattn_positions
        Block indices (negative counts from the top) that get C-Attn / S-Attn
        after their last convolution, before their max-pool. At least one S-Attn
        is needed: its attention is the model's heatmap.
    reduction
        S-Attn reduction ratio r.
    batch_norm
        Batch norm after every backbone convolution.
    cattn_kernel
        Kernel size and stride of C-Attn's ``M_Q``/``M_K`` convolutions.
    """

    def __init__(
        self,
        backbone: str | Sequence[int | str] = "vgg19",
        n_classes: int = 2,
        in_channels: int = 3,
        cattn_positions: Sequence[int] = (0, 1),
        sattn_positions: Sequence[int] = (-2, -1),
        reduction: int = 8,
        batch_norm: bool = True,
        cattn_kernel: int = 4,
    ) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}")
        blocks = layout_blocks(resolve_layout(backbone, BACKBONES))
        n_blocks = len(blocks)
        c_blocks = _resolve_positions(cattn_positions, n_blocks, "cattn")
        s_blocks = _resolve_positions(sattn_positions, n_blocks, "sattn")
        if not s_blocks:
            raise ValueError(
                "dafl_cnn needs at least one S-Attn module: its attention is the heatmap"
            )
        self.n_classes = n_classes
        self.convs = nn.ModuleList()
        self.cattn = nn.ModuleDict()
        self.sattn = nn.ModuleDict()
        self.pools = nn.ModuleList()
        channels = in_channels
        for index, block in enumerate(blocks):
            convs, pool, channels = conv_block(block, channels, batch_norm)
            self.convs.append(convs)
            if index in c_blocks:
                self.cattn[str(index)] = ChannelAttention(channels, cattn_kernel)
            if index in s_blocks:
                self.sattn[str(index)] = SpatialAttention(channels, reduction)
            self.pools.append(pool)
        self.last_sattn_block = max(s_blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, n_classes)
        self._init_backbone()

    def _init_backbone(self) -> None:
        # torchvision's VGG initialisation; the attention convolutions keep PyTorch's default.
        init_vgg(self.convs)
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)

    def _run(self, images: Tensor) -> tuple[Tensor, list[AttentionMap]]:
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        maps: list[AttentionMap] = []
        x = images
        for index, (convs, pool) in enumerate(zip(self.convs, self.pools, strict=True)):
            x = convs(x)
            key = str(index)
            grid_hw = (int(x.shape[-2]), int(x.shape[-1]))
            if key in self.cattn:
                x, d_norm = self.cattn[key](x)
                maps.append(AttentionMap("channel", index, d_norm, grid_hw))
            if key in self.sattn:
                x, e_norm = self.sattn[key](x)
                maps.append(AttentionMap("spatial", index, e_norm, grid_hw))
            x = pool(x)
        logits = self.head(self.pool(x).flatten(1))
        return logits, maps

    def cells_per_tile(self, patch_size: int) -> int:
        """Side of the last S-Attn module's grid for a ``patch_size`` input (>= 1)."""
        n_pools = sum(
            isinstance(p, nn.MaxPool2d) for p in list(self.pools)[: self.last_sattn_block]
        )
        return max(1, patch_size // (2**n_pools))

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last convolution block (before its attention and pooling): Grad-CAM's layer."""
        return self.convs[-1]

    def attention_maps(self, images: Tensor) -> list[AttentionMap]:
        """Every attention module's matrix (D' or E') for ``images``, in network order."""
        return self._run(images)[1]

    def forward(self, images: Tensor) -> CNNAttentionOutput:
        """Classify ``(B, in_channels, H, W)`` images; see the module docstring for the output."""
        logits, maps = self._run(images)
        last = [m for m in maps if m.kind == "spatial" and m.block == self.last_sattn_block][-1]
        height, width = last.grid_hw
        received = last.matrix.sum(dim=2).view(-1, 1, height, width)  # m_i = sum_j E'_ij
        received = F.interpolate(
            received, size=images.shape[-2:], mode="bilinear", align_corners=False
        ).squeeze(1)
        attention = received / received.sum(dim=(1, 2), keepdim=True)
        return CNNAttentionOutput(logits=logits, attention=attention, attention_logits=received)


@register_model(
    "dafl_cnn",
    example=ModelExample(
        config={
            "backbone": "vgg_small",
            "n_classes": 3,
            "cattn_positions": [0, 1],
            "sattn_positions": [1, 2],
            "input_size": 32,
        },
        make_input=image_example_input,
    ),
)
def build_dafl_cnn(
    backbone: str | Sequence[int | str] = "vgg19",
    n_classes: int = 2,
    in_channels: int = 3,
    cattn_positions: Sequence[int] = (0, 1),
    sattn_positions: Sequence[int] = (-2, -1),
    reduction: int = 8,
    batch_norm: bool = True,
    cattn_kernel: int = 4,
    input_size: int = 224,
) -> AttentionVGG:
    """The channel/spatial attention VGG; see :class:`AttentionVGG`.

    ``input_size`` is the side the images are resized to (preprocessing, and the
    size of example inputs); the network itself accepts any size at which every
    C-Attn map is at least ``cattn_kernel`` pixels wide.
    """
    if input_size < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    return AttentionVGG(
        backbone=backbone,
        n_classes=n_classes,
        in_channels=in_channels,
        cattn_positions=cattn_positions,
        sattn_positions=sattn_positions,
        reduction=reduction,
        batch_norm=batch_norm,
        cattn_kernel=cattn_kernel,
    )
