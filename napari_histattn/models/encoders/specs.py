"""The encoder registry's entries: architecture, output width and preprocessing of each encoder.

Every entry says how to build the network (random weights; nothing is ever
downloaded), the width of its features, the input it expects (side, mpp,
mean/std, interpolation, as timm's ``pretrained_cfg`` does) and, for
pretrained encoders, where users obtain the weights and under which terms.
The architectures and preprocessing follow each model's own model card:

- ``resnet18``, ``resnet50``: torchvision trunks, global average pooled (512-d, 2048-d).
- ``resnet50_trunc``: CLAM's truncated ResNet-50 (through ``layer3``, average pooled, 1024-d),
  loading torchvision's ImageNet weights (``layer4`` and ``fc`` are not used).
- ``uni`` (MahmoodLab/UNI): ViT-L/16, 224 px at 0.5 um/px, ImageNet mean/std, 1024-d.
- ``uni2-h`` (MahmoodLab/UNI2-h): ViT-H/14 with SwiGLU MLPs and 8 register tokens, 1536-d.
- ``virchow2`` (paige-ai/Virchow2): ViT-H/14, SwiGLU, 4 register tokens; the embedding is the
  class token concatenated with the mean of the patch tokens (2560-d).
- ``h-optimus-0`` (bioptimus/H-optimus-0): ViT-g/14 with 4 registers (DINOv2 layout), its own
  mean/std, 1536-d.
- ``phikon`` (owkin/phikon): ViT-B/16 (iBOT), distributed in Hugging Face ``transformers``
  layout and converted to timm's on load; the class token, 768-d.
- ``tiny``, ``small_cnn``: this project's small CNNs (no published weights; weights a user
  trained load like any other).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn as nn

__all__ = ["ENCODERS", "EncoderSpec"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry.

    Attributes
    ----------
    name
        Registry name (``--encoder NAME``).
    dim
        Width of the features the module returns.
    build
        Makes the module with random weights; it maps normalised ``(N, 3, s, s)``
        to ``(N, dim)``.
    input_size
        Side, in pixels, of the tiles the encoder was trained on.
    target_mpp
        Micrometres per pixel of those tiles (None: any).
    mean, std
        Normalisation of RGB in [0, 1].
    interpolation
        How tiles are resized to ``input_size`` (``"bilinear"`` or ``"bicubic"``).
    source
        Where users obtain the weights, and their licence (None: no pretrained weights).
    hf_repo
        The Hugging Face repository id, used to find an existing local Hugging Face cache.
    ignore_prefixes
        Keys of the published weights that the module does not use (for example the
        classifier of an ImageNet ResNet).
    convert_keys
        Maps a published state dict onto the module's keys (for weights in another
        library's layout).
    """

    name: str
    dim: int
    build: Callable[[], nn.Module]
    input_size: int = 224
    target_mpp: float | None = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    source: str | None = None
    hf_repo: str | None = None
    ignore_prefixes: tuple[str, ...] = ()
    convert_keys: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing a checkpoint or feature file records for this encoder."""
        return {
            "input_size": self.input_size,
            "target_mpp": self.target_mpp,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


# --------------------------------------------------------------------------- CNN trunks


class _Trunk(nn.Module):
    """torchvision ResNet layers up to ``last_layer``, global average pooled, flattened."""

    def __init__(self, resnet: Any, last_layer: int) -> None:
        super().__init__()
        self.conv1: nn.Module = resnet.conv1
        self.bn1: nn.Module = resnet.bn1
        self.relu: nn.Module = resnet.relu
        self.maxpool: nn.Module = resnet.maxpool
        for i in range(1, last_layer + 1):
            setattr(self, f"layer{i}", getattr(resnet, f"layer{i}"))
        self.last_layer = last_layer
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.last_layer + 1):
            x = getattr(self, f"layer{i}")(x)
        return torch.flatten(self.pool(x), 1)


def _resnet(arch: str, last_layer: int) -> nn.Module:
    import torchvision.models as tvm

    return _Trunk(getattr(tvm, arch)(weights=None), last_layer)


def _small(name: str) -> nn.Module:
    from napari_histattn.models.encoders.small import build_encoder

    return build_encoder(name)[0]


# --------------------------------------------------------------------------- ViTs (timm)


class _TokenConcat(nn.Module):
    """Virchow's embedding: class token and the mean of the patch tokens, concatenated."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit(x)  # (N, prefix + patches, D): timm with global_pool=""
        prefix = int(getattr(self.vit, "num_prefix_tokens", 1))
        return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(dim=1)], dim=-1)


def _timm(arch: str, **kwargs: Any) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


def _swiglu() -> dict[str, Any]:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}


def _uni2h() -> nn.Module:
    return _timm(
        "vit_giant_patch14_224",
        img_size=224,
        patch_size=14,
        depth=24,
        num_heads=24,
        init_values=1e-5,
        embed_dim=1536,
        mlp_ratio=2.66667 * 2,
        no_embed_class=True,
        reg_tokens=8,
        dynamic_img_size=True,
        **_swiglu(),
    )


def _virchow2() -> nn.Module:
    vit = _timm(
        "vit_huge_patch14_224",
        img_size=224,
        init_values=1e-5,
        reg_tokens=4,
        mlp_ratio=5.3375,
        global_pool="",
        dynamic_img_size=True,
        **_swiglu(),
    )
    return _TokenConcat(vit)


def _phikon() -> nn.Module:
    # transformers' ViT uses LayerNorm eps 1e-12.
    return _timm("vit_base_patch16_224", norm_layer=partial(nn.LayerNorm, eps=1e-12))


def hf_vit_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face ``transformers`` ViT state dict (``ViTModel``) in timm's layout.

    Query, key and value projections are concatenated into timm's ``qkv``; the
    pooler (not used by the class-token embedding) is dropped. A ``vit.`` prefix
    (``ViTForImageClassification``) is removed.
    """
    src = {k.removeprefix("vit."): v for k, v in state.items()}
    if "cls_token" in src or "pos_embed" in src:
        return src  # already timm's layout
    out: dict[str, torch.Tensor] = {
        "cls_token": src.pop("embeddings.cls_token"),
        "pos_embed": src.pop("embeddings.position_embeddings"),
        "patch_embed.proj.weight": src.pop("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": src.pop("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": src.pop("layernorm.weight"),
        "norm.bias": src.pop("layernorm.bias"),
    }
    layers = sorted({int(k.split(".")[2]) for k in src if k.startswith("encoder.layer.")})
    names = {
        "layernorm_before": "norm1",
        "attention.output.dense": "attn.proj",
        "layernorm_after": "norm2",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    }
    for i in layers:
        hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            qkv = [
                src.pop(f"{hf}attention.attention.{n}.{part}") for n in ("query", "key", "value")
            ]
            out[f"{tm}attn.qkv.{part}"] = torch.cat(qkv, dim=0)
            for hf_name, tm_name in names.items():
                out[f"{tm}{tm_name}.{part}"] = src.pop(f"{hf}{hf_name}.{part}")
    out.update({k: v for k, v in src.items() if not k.startswith("pooler.")})
    return out


_MAHMOOD = (
    "Hugging Face {repo} (gated: accept the model's terms with an institutional account; "
    "CC-BY-NC-ND 4.0, non-commercial research use only)"
)

_OWN = "weights you trained yourself with this project (none are published)"


def _resnet_spec(name: str, arch: str, last_layer: int, dim: int) -> EncoderSpec:
    """A torchvision ResNet trunk through ``layer<last_layer>``, loading the ImageNet file."""
    unused = tuple(f"layer{i}." for i in range(last_layer + 1, 5)) + ("fc.",)
    weights = {"resnet18": "ResNet18", "resnet50": "ResNet50"}[arch]
    return EncoderSpec(
        name,
        dim,
        partial(_resnet, arch, last_layer),
        source=f"torchvision's {weights}_Weights.IMAGENET1K_V1 file (BSD-3-Clause)",
        ignore_prefixes=unused,
    )


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            "tiny", 16, partial(_small, "tiny"), input_size=32, target_mpp=None, source=_OWN
        ),
        EncoderSpec(
            "small_cnn",
            500,
            partial(_small, "small_cnn"),
            input_size=28,
            target_mpp=None,
            source=_OWN,
        ),
        _resnet_spec("resnet18", "resnet18", 4, 512),
        _resnet_spec("resnet50", "resnet50", 4, 2048),
        _resnet_spec("resnet50_trunc", "resnet50", 3, 1024),  # CLAM's trunk
        EncoderSpec(
            "uni",
            1024,
            partial(
                _timm,
                "vit_large_patch16_224",
                img_size=224,
                patch_size=16,
                init_values=1e-5,
                dynamic_img_size=True,
            ),
            source=_MAHMOOD.format(repo="MahmoodLab/UNI"),
            hf_repo="MahmoodLab/UNI",
        ),
        EncoderSpec(
            "uni2-h",
            1536,
            _uni2h,
            source=_MAHMOOD.format(repo="MahmoodLab/UNI2-h"),
            hf_repo="MahmoodLab/UNI2-h",
        ),
        EncoderSpec(
            "virchow2",
            2560,
            _virchow2,
            interpolation="bicubic",
            source="Hugging Face paige-ai/Virchow2 (gated; CC-BY-NC-ND 4.0, research use only)",
            hf_repo="paige-ai/Virchow2",
            convert_keys=lambda state: {
                k if k.startswith("vit.") else f"vit.{k}": v for k, v in state.items()
            },
        ),
        EncoderSpec(
            "h-optimus-0",
            1536,
            partial(
                _timm,
                "vit_giant_patch14_reg4_dinov2",
                img_size=224,
                init_values=1e-5,
                global_pool="token",
                dynamic_img_size=False,
            ),
            mean=(0.707223, 0.578729, 0.703617),
            std=(0.211883, 0.230117, 0.177517),
            source="Hugging Face bioptimus/H-optimus-0 (Apache-2.0)",
            hf_repo="bioptimus/H-optimus-0",
        ),
        EncoderSpec(
            "phikon",
            768,
            _phikon,
            source="Hugging Face owkin/phikon (Owkin non-commercial licence)",
            hf_repo="owkin/phikon",
            convert_keys=hf_vit_to_timm,
        ),
    )
}
