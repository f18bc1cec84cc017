"""VGG backbones shared by the image-level families (the attention CNN, MLDAM).

A layout is a list of 3x3 convolution widths with ``"M"`` for a 2x2 max-pool; a
*block* is the run of convolutions (each + batch norm + ReLU) up to and including the
next ``"M"`` (a trailing run without one is a last block without pooling). Attention
modules sit at a block's end, before its pooling, at the block's full resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn as nn

__all__ = ["LAYOUTS", "conv_block", "init_vgg", "layout_blocks", "resolve_layout"]

_VGG16: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
_VGG16 += [512, 512, 512, "M", 512, 512, 512, "M"]
_VGG19: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
_VGG19 += [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]

#: Named layouts: VGG-16 and VGG-19 (configurations D and E of Simonyan & Zisserman)
#: and a small one for tests.
LAYOUTS: dict[str, list[int | str]] = {
    "vgg16": _VGG16,
    "vgg19": _VGG19,
    "vgg_small": [16, "M", 32, "M", 64, "M"],
}


def resolve_layout(
    backbone: str | Sequence[int | str], known: Mapping[str, Sequence[int | str]]
) -> list[int | str]:
    """``backbone`` as a layout list: a name in ``known`` or an explicit, checked list."""
    if isinstance(backbone, str):
        try:
            return list(known[backbone])
        except KeyError:
            raise ValueError(
                f"unknown backbone {backbone!r}; known: {', '.join(sorted(known))} "
                "or a list of channel counts and 'M'"
            ) from None
    layout = list(backbone)
    for item in layout:
        if item != "M" and not (isinstance(item, int) and item > 0):
            raise ValueError(f"backbone entries must be positive ints or 'M', got {item!r}")
    if not any(item != "M" for item in layout):
        raise ValueError("backbone needs at least one convolution")
    return layout


def layout_blocks(layout: Sequence[int | str]) -> list[list[int | str]]:
    """The layout split into blocks (each ends with its ``"M"``, if it has one)."""
    blocks: list[list[int | str]] = [[]]
    for item in layout:
        blocks[-1].append(item)
        if item == "M":
            blocks.append([])
    return [block for block in blocks if any(item != "M" for item in block)]


def conv_block(
    block: Sequence[int | str], in_channels: int, batch_norm: bool
) -> tuple[nn.Sequential, nn.Module, int]:
    """One block's convolutions (3x3, + batch norm, + ReLU), its pooling (2x2 max-pool, or
    identity when it ends without ``"M"``) and its output channels."""
    layers: list[nn.Module] = []
    channels = in_channels
    for item in block:
        if item == "M":
            continue
        width = int(item)
        layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        channels = width
    pool: nn.Module = nn.MaxPool2d(2, stride=2) if block[-1] == "M" else nn.Identity()
    return nn.Sequential(*layers), pool, channels


def init_vgg(convs: nn.Module) -> None:
    """torchvision's VGG initialisation of the backbone's convolutions and batch norms."""
    for module in convs.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
