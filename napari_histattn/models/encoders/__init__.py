"""Patch encoders: one ``create_encoder(name, weights=None)`` for every encoder, with its preprocessing.

:func:`create_encoder` returns an :class:`Encoder`: the module (normalised
``(N, 3, s, s)`` tiles to ``(N, dim)`` features), its :class:`EncoderSpec` (width,
input side, mpp, mean/std, interpolation: what timm calls ``pretrained_cfg``) and,
when weights were loaded, their file and SHA-256. Weights are local files only
(:mod:`.weights`); the entries are in :mod:`.specs`.

:func:`build_encoder` is the older interface A-MIL builds its in-model encoder
with (``(module, dim)``, an optional projection).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from napari_histattn.models.encoders.small import MIN_PATCH_SIZE, build_encoder
from napari_histattn.models.encoders.specs import ENCODERS, EncoderSpec
from napari_histattn.models.encoders.weights import (
    ENV_VAR,
    EncoderWeightsError,
    convert_to_safetensors,
    file_sha256,
    find_weights,
    load_weights,
)

__all__ = [
    "ENV_VAR",
    "MIN_PATCH_SIZE",
    "Encoder",
    "EncoderSpec",
    "EncoderWeightsError",
    "build_encoder",
    "convert_to_safetensors",
    "create_encoder",
    "encoder_spec",
    "list_encoders",
    "sized_spec",
]


@dataclass
class Encoder:
    """A built encoder.

    Attributes
    ----------
    module
        ``(N, 3, s, s)`` normalised tiles -> ``(N, spec.dim)``; in eval mode.
    spec
        Its registry entry.
    weights_path, weights_sha256
        The weights file loaded, or ``None`` for random weights.
    random_seed
        The seed random weights were drawn with (they are reproducible from it on the
        same torch version); ``None`` with loaded weights.
    """

    module: nn.Module
    spec: EncoderSpec
    weights_path: Path | None = None
    weights_sha256: str | None = None
    random_seed: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict[str, Any]:
        """What a checkpoint or feature file records about this encoder."""
        return {
            "name": self.spec.name,
            "dim": self.spec.dim,
            "weights_sha256": self.weights_sha256,
            "weights_file": None if self.weights_path is None else self.weights_path.name,
            "random_seed": self.random_seed,
            "preprocessing": self.spec.preprocessing(),
        }


def list_encoders() -> list[str]:
    """Every registered encoder name, sorted."""
    return sorted(ENCODERS)


def encoder_spec(name: str) -> EncoderSpec:
    """The registry entry of ``name``; ``ValueError`` naming the known encoders otherwise."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(
            f"unknown patch encoder {name!r}; known encoders: {', '.join(list_encoders())}"
        ) from None


def create_encoder(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    pretrained: bool | None = None,
    seed: int = 0,
    input_size: int | None = None,
) -> Encoder:
    """Build encoder ``name``, with local weights when asked for.

    Parameters
    ----------
    name
        A name from :func:`list_encoders`.
    weights
        A ``.safetensors`` file or a folder holding one. ``None``: look in
        ``$HISTATTN_ENCODER_WEIGHTS`` and a local Hugging Face cache when
        ``pretrained`` is true, else random weights.
    pretrained
        Require weights (``True``), or use random weights (``False``); default:
        ``True`` exactly when ``weights`` is given.
    seed
        Seed of random weights (an honest no-pretraining baseline is reproducible).
    input_size
        Another tile side, in pixels, for an encoder that reads tiles of any size at any
        mpp (this project's small CNNs, which end in global pooling): a larger field of
        view for the same weights. ``ValueError`` for an encoder trained at a fixed size.

    Raises
    ------
    ValueError
        Unknown name.
    EncoderWeightsError
        Weights asked for but not found, pickled, truncated, or of another architecture.
    """
    spec = sized_spec(encoder_spec(name), input_size)
    want = weights is not None if pretrained is None else pretrained
    if not want:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = spec.build()
        return Encoder(module.eval(), spec, random_seed=seed)
    if spec.source is None:
        raise EncoderWeightsError(f"encoder {name!r} has no pretrained weights; train it instead")
    path = find_weights(name, weights, spec.hf_repo)
    module = _uninitialised(spec)
    load_weights(
        module,
        path,
        name=name,
        source=spec.source,
        ignore_prefixes=spec.ignore_prefixes,
        convert=spec.convert_keys,
    )
    return Encoder(module.eval(), spec, path, file_sha256(path))


def sized_spec(spec: EncoderSpec, input_size: int | None) -> EncoderSpec:
    """``spec`` reading tiles of ``input_size`` px (None: its own size)."""
    if input_size is None or input_size == spec.input_size:
        return spec
    if spec.target_mpp is not None:
        raise ValueError(
            f"encoder {spec.name!r} reads {spec.input_size}-px tiles at {spec.target_mpp} um/px "
            "and takes no other tile size"
        )
    minimum = MIN_PATCH_SIZE.get(spec.name, 1)
    if input_size < minimum:
        raise ValueError(f"encoder {spec.name!r} needs tiles of at least {minimum} px")
    return dataclasses.replace(spec, input_size=int(input_size))


def _uninitialised(spec: EncoderSpec) -> nn.Module:
    """The architecture with storage but no initialisation (the weights replace it all).

    Random initialisation of a billion-parameter ViT takes longer than loading
    its weights; built on the meta device and given empty storage, every tensor
    the state dict holds is then filled by the strict load. A module with
    non-persistent buffers (which no state dict fills) is built normally.
    """
    import torch

    with torch.device("meta"):
        module = spec.build()
    persistent = set(module.state_dict())
    if any(name not in persistent for name, _ in module.named_buffers()):
        return spec.build()
    return module.to_empty(device="cpu")
