"""Patch encoders for A-MIL, selectable by name.

``build_encoder(name, in_channels, out_dim)`` returns ``(module, feature_dim)``;
the module maps ``(N, in_channels, h, w)`` patches to ``(N, feature_dim)``.

- ``"small_cnn"``: the LeNet-like extractor of Ilse et al. (2018) used by the
  A-MIL seed for 28x28 patches: conv 5x5 (20) - ReLU - max-pool 2 - conv 5x5
  (50) - ReLU - max-pool 2 - flatten 50x4x4 - linear (500) - ReLU. An adaptive
  average pool to 4x4 before the flatten generalises it to any patch of at
  least 16x16 px; for 28x28 patches the pool is the identity, so the network is
  exactly the seed's.
- ``"resnet18"``: torchvision's ResNet-18 trunk with the ``fc`` layer removed
  (512-d after global average pooling). Built with ``weights=None``: nothing is
  ever downloaded, it trains from scratch.
- ``"tiny"``: two small convolutions and global average pooling (16-d), for
  tests and quick experiments.

When ``out_dim`` differs from the encoder's natural width, a linear projection
and ReLU are appended (``small_cnn`` always ends in its own linear layer of width
``out_dim``, 500 by default).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

EncoderFactory = Callable[[int, int | None], tuple[nn.Module, int]]

#: The smallest patch side each encoder accepts.
MIN_PATCH_SIZE = {"small_cnn": 16, "resnet18": 32, "tiny": 4}


def _project(trunk: nn.Module, width: int, out_dim: int | None) -> tuple[nn.Module, int]:
    if out_dim is None or out_dim == width:
        return trunk, width
    return nn.Sequential(trunk, nn.Linear(width, out_dim), nn.ReLU(inplace=True)), out_dim


def _small_cnn(in_channels: int, out_dim: int | None) -> tuple[nn.Module, int]:
    width = 500 if out_dim is None else out_dim
    module = nn.Sequential(
        nn.Conv2d(in_channels, 20, kernel_size=5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, stride=2),
        nn.Conv2d(20, 50, kernel_size=5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, stride=2),
        nn.AdaptiveAvgPool2d((4, 4)),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, width),
        nn.ReLU(inplace=True),
    )
    return module, width


def _resnet18(in_channels: int, out_dim: int | None) -> tuple[nn.Module, int]:
    from torchvision.models import resnet18

    trunk = resnet18(weights=None)
    if in_channels != 3:
        trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    trunk.fc = nn.Identity()
    return _project(trunk, 512, out_dim)


def _tiny(in_channels: int, out_dim: int | None) -> tuple[nn.Module, int]:
    trunk = nn.Sequential(
        nn.Conv2d(in_channels, 8, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, stride=2, ceil_mode=True),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return _project(trunk, 16, out_dim)


_ENCODERS: dict[str, EncoderFactory] = {
    "small_cnn": _small_cnn,
    "resnet18": _resnet18,
    "tiny": _tiny,
}


def list_encoders() -> list[str]:
    """Names accepted by :func:`build_encoder`, sorted."""
    return sorted(_ENCODERS)


def build_encoder(
    name: str, in_channels: int = 3, out_dim: int | None = None
) -> tuple[nn.Module, int]:
    """Build a patch encoder.

    Parameters
    ----------
    name
        One of :func:`list_encoders`.
    in_channels
        Channels of the input patches (3 for RGB).
    out_dim
        Width of the output features; ``None`` keeps the encoder's natural width
        (500 for ``small_cnn``, 512 for ``resnet18``, 16 for ``tiny``).

    Returns
    -------
    tuple[nn.Module, int]
        The encoder, mapping ``(N, in_channels, h, w)`` to ``(N, feature_dim)``,
        and ``feature_dim``.
    """
    try:
        factory = _ENCODERS[name]
    except KeyError:
        raise ValueError(
            f"unknown patch encoder {name!r}; known encoders: {', '.join(list_encoders())}"
        ) from None
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive, got {in_channels}")
    if out_dim is not None and out_dim < 1:
        raise ValueError(f"out_dim must be positive, got {out_dim}")
    return factory(in_channels, out_dim)
