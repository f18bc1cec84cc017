"""Self-supervised pretraining of a registry encoder on a lab's own unlabelled tiles (SimCLR).

No label of any kind is used: tissue tiles are sampled across the given slides
at the encoder's input size and resolution (the tiles that ``histattn features``
will encode), two augmented views of each are drawn, and the encoder plus a
projection head learn to tell the two views of a tile apart from every other
tile of the batch (NT-Xent loss; Chen et al. 2020, "A Simple Framework for
Contrastive Learning of Visual Representations"). The augmentations are those
that suit H&E: random resized crops, flips and 90-degree rotations (tissue has
no up), brightness/contrast/saturation jitter, stain jitter in
haematoxylin-eosin-DAB optical density (Ruifrok & Johnston 2001; Tellez et al.
2018), and Gaussian blur.

The result is the encoder's state dict in the registry's key layout, saved as
safetensors with a JSON sidecar: ``create_encoder(name, path)``,
``histattn features --encoder NAME --encoder-weights PATH`` and attention
sampling's ``feature_encoder`` load it like any weights. Everything is
deterministic from the seed on a CPU; CUDA is used when present.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from napari_histattn.inference.patches import TissueSettings, read_tiles
from napari_histattn.models.device import resolve_device
from napari_histattn.models.encoders import Encoder, create_encoder
from napari_histattn.progress import Progress

__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "augment_views",
    "frozen_features",
    "linear_probe_accuracy",
    "nt_xent",
    "pretrain",
    "sample_tiles",
]

#: Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in RGB optical density.
_HED_FROM_RGB_INV = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)


@dataclass(frozen=True)
class PretrainConfig:
    """SimCLR settings.

    Attributes
    ----------
    epochs, batch_size, lr, weight_decay
        Optimisation (AdamW, cosine decay); a batch of B tiles gives 2B views.
    temperature
        NT-Xent temperature.
    projection_dim
        Output width of the projection head (discarded after pretraining).
    tiles_per_slide
        Tissue tiles sampled per slide (evenly over the slide's tissue tiles).
    seed
        Seeds weights, sampling and augmentation.
    tile_size
        Tile side for an encoder that reads any size (the small CNNs; None: its own).
    device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    projection_dim: int = 64
    tiles_per_slide: int = 256
    seed: int = 0
    device: str = "auto"
    tile_size: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.tiles_per_slide < 1:
            raise ValueError("epochs and tiles_per_slide must be >= 1 and batch_size >= 2")
        if not self.temperature > 0 or not self.lr > 0:
            raise ValueError("temperature and lr must be positive")


@dataclass
class PretrainResult:
    """The pretrained encoder and what happened."""

    encoder: Encoder
    losses: list[float]
    n_tiles: int
    seconds: float
    path: Path | None = None


def sample_tiles(
    slides: Sequence[Path],
    encoder: Encoder,
    tiles_per_slide: int,
    seed: int = 0,
    tissue: TissueSettings | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """``(n, s, s, 3)`` uint8 tissue tiles at the encoder's size and mpp, up to
    ``tiles_per_slide`` per slide (an evenly spread random subset of its tissue tiles)."""
    from napari_histattn.inference.features import plan_for_encoder
    from napari_histattn.io.slide import open_slide

    rng = np.random.default_rng(seed)
    tiles = []
    for index, path in enumerate(slides):
        with open_slide(path) as slide:
            plan = plan_for_encoder(slide, encoder, tissue or TissueSettings())
            n = len(plan)
            chosen = np.sort(rng.choice(n, size=min(n, tiles_per_slide), replace=False))
            tiles.append(read_tiles(slide, plan, chosen))
        yield Progress("tiles", index + 1, len(slides), Path(path).name)
    if not tiles:
        raise ValueError("no slides to sample tiles from")
    return np.concatenate(tiles)


def _stain_jitter(x: Tensor, gen: torch.Generator, sigma: float = 0.05) -> Tensor:
    """Scale and shift each stain's optical density per image (Tellez et al. 2018)."""
    b = x.shape[0]
    od = -torch.log(x.clamp(1e-3, 1.0))  # (B, 3, H, W) RGB optical density
    to_hed = torch.linalg.inv(_HED_FROM_RGB_INV)
    hed = torch.einsum("bchw,cd->bdhw", od, to_hed)
    alpha = 1 + (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1) * sigma
    beta = (torch.rand(b, 3, 1, 1, generator=gen) * 2 - 1) * sigma
    od = torch.einsum("bdhw,dc->bchw", hed * alpha + beta, _HED_FROM_RGB_INV)
    return torch.exp(-od).clamp(0, 1)


def _colour_jitter(x: Tensor, gen: torch.Generator, strength: float = 0.2) -> Tensor:
    b = x.shape[0]

    def factor() -> Tensor:
        return 1 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * strength

    x = x * factor()  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean  # contrast
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * factor() + grey  # saturation
    return x.clamp(0, 1)


def _blur(x: Tensor, gen: torch.Generator, p: float = 0.5) -> Tensor:
    sigma = 0.1 + torch.rand(1, generator=gen).item() * 0.9
    radius = 2
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    k_h = kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    k_v = kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    blurred = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k_h, groups=c)
    blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="reflect"), k_v, groups=c)
    chosen = (torch.rand(x.shape[0], 1, 1, 1, generator=gen) < p).to(x.dtype)
    return chosen * blurred + (1 - chosen) * x


def _resized_crop(x: Tensor, gen: torch.Generator, scale: tuple[float, float]) -> Tensor:
    """A random square crop per image (area share in ``scale``) resized back to the side."""
    b, _, h, w = x.shape
    area = scale[0] + torch.rand(b, generator=gen) * (scale[1] - scale[0])
    side = area.sqrt()  # crop side as a fraction of the tile side
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - side)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - side)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side, side
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _dihedral(x: Tensor, gen: torch.Generator) -> Tensor:
    codes = torch.randint(0, 8, (x.shape[0],), generator=gen)
    out = x.clone()
    for code in range(1, 8):
        sel = (codes == code).nonzero().flatten()
        if sel.numel():
            part = x[sel].flip(-1) if code & 4 else x[sel]
            out[sel] = torch.rot90(part, k=code & 3, dims=(-2, -1))
    return out


def augment_views(x: Tensor, gen: torch.Generator) -> Tensor:
    """One H&E-suited random view of each tile of ``(B, 3, s, s)`` floats in [0, 1]."""
    x = _resized_crop(x, gen, (0.4, 1.0))
    x = _dihedral(x, gen)
    x = _colour_jitter(x, gen)
    x = _stain_jitter(x, gen)
    return _blur(x, gen)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy over a batch of view pairs."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def _projection(dim: int, out: int) -> nn.Module:
    hidden = max(out, min(512, dim))
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def pretrain(
    encoder_name: str,
    tiles: np.ndarray,
    config: PretrainConfig,
    *,
    out_path: str | Path | None = None,
    init_weights: str | Path | None = None,
    provenance: dict[str, Any] | None = None,
) -> Generator[Progress, None, PretrainResult]:
    """SimCLR on ``tiles`` (``(n, s, s, 3)`` uint8); see the module docstring.

    Yields stage ``"pretrain"`` once per batch with the running loss and the
    time left. With ``out_path`` the encoder's weights are written there
    (safetensors; a ``.json`` sidecar with the settings and the loss curve).
    """
    if tiles.ndim != 4 or tiles.shape[0] < 2:
        raise ValueError(f"need at least two (n, s, s, 3) tiles, got shape {tiles.shape}")
    torch.manual_seed(config.seed)
    encoder = create_encoder(
        encoder_name, init_weights, seed=config.seed, input_size=config.tile_size
    )
    device = resolve_device(config.device)
    spec = encoder.spec
    module = encoder.module.to(device).train()
    head = _projection(spec.dim, config.projection_dim).to(device)
    params = [*module.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    batch = min(config.batch_size, tiles.shape[0])
    steps_per_epoch = tiles.shape[0] // batch
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total))
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    side = spec.input_size
    pixels = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2)
    gen = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    started = time.perf_counter()
    done = 0
    for epoch in range(config.epochs):
        order = torch.randperm(tiles.shape[0], generator=gen)
        epoch_loss = 0.0
        for step in range(steps_per_epoch):
            chosen = pixels[order[step * batch : (step + 1) * batch]].float() / 255.0
            if chosen.shape[-1] != side:
                chosen = F.interpolate(chosen, size=(side, side), mode="bilinear", antialias=True)
            views = [(augment_views(chosen, gen) - mean) / std for _ in range(2)]
            z1, z2 = (head(module(v.to(device))) for v in views)
            loss = nt_xent(z1, z2, config.temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {float(loss)}: lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += float(loss.detach())
            done += 1
            elapsed = time.perf_counter() - started
            eta = elapsed / done * (total - done)
            yield Progress(
                "pretrain",
                done,
                total,
                f"epoch {epoch + 1}/{config.epochs} loss {epoch_loss / (step + 1):.3f} "
                f"ETA {_clock(eta)}",
            )
        losses.append(epoch_loss / max(1, steps_per_epoch))
    module.eval().to("cpu")
    result = PretrainResult(
        Encoder(module, spec, random_seed=config.seed),
        losses,
        int(tiles.shape[0]),
        time.perf_counter() - started,
    )
    if out_path is not None:
        result.path = save_encoder(result, config, Path(out_path), provenance or {})
    return result


def _clock(seconds: float) -> str:
    seconds = max(0, int(math.ceil(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def save_encoder(
    result: PretrainResult, config: PretrainConfig, path: Path, provenance: dict[str, Any]
) -> Path:
    """The encoder's state dict as safetensors, and a JSON sidecar saying how it was made."""
    from safetensors.torch import save_file

    from napari_histattn.atomic import atomic_write

    target = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
    target.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().contiguous().clone() for k, v in result.encoder.module.state_dict().items()
    }
    partial = target.with_name(f".{target.name}.partial")
    save_file(state, str(partial), metadata={"format": "napari-histattn-encoder"})
    partial.replace(target)
    sidecar = {
        "encoder": result.encoder.spec.name,
        "method": "SimCLR (NT-Xent) on unlabelled tissue tiles",
        "config": asdict(config),
        "n_tiles": result.n_tiles,
        "epoch_losses": [round(v, 5) for v in result.losses],
        "seconds": round(result.seconds, 1),
        **provenance,
    }
    with atomic_write(target.with_suffix(".json"), "w") as handle:
        handle.write(json.dumps(sidecar, indent=2) + "\n")
    return target


def frozen_features(encoder: Encoder, tiles: np.ndarray, batch_size: int = 64) -> Tensor:
    """``(n, dim)`` features of ``(n, s, s, 3)`` uint8 tiles from ``encoder`` (no gradients)."""
    from napari_histattn.inference.patches import rgb_to_tensor

    mean, std = list(encoder.spec.mean), list(encoder.spec.std)
    with torch.no_grad():
        return torch.cat(
            [
                encoder.module(rgb_to_tensor(tiles[i : i + batch_size], mean, std))
                for i in range(0, len(tiles), batch_size)
            ]
        )


def linear_probe_accuracy(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, l2: float = 1e-3
) -> float:
    """Test accuracy of a logistic regression (L-BFGS, L2 ``l2``) fitted to frozen features
    standardised by the training set's statistics; labels 0/1. How far an encoder's features
    separate two kinds of tile without any training of the encoder."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    xa, xb = (train_x - mu) / sd, (test_x - mu) / sd
    ya = train_y.float()
    w = torch.zeros(xa.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=200)

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xa @ w + b, ya) + l2 * (w**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return float((((xb @ w + b) > 0).float() == test_y.float()).float().mean())
