"""Training recipes and evaluation for the model benchmark and the demo checkpoints.

Two-stage (what the field does when bag-level training struggles to start):

1. **Patch encoder on generated patch labels.** The generator knows which pixels
   are lesion, look-alike or normal tissue, so patches get labels for free
   (:func:`benchmarks._models.data.sample_patches`). The model's own patch
   network (attention sampling's feature network, A-MIL's encoder) plus a
   3-class linear head is trained on them. This is supervision that a real
   slide-level dataset would not have; the results say so.
2. **Attention on slide labels only.** The encoder is frozen and the attention
   part (attention sampling: the attention network on the low-resolution view
   and the classifier; A-MIL: attention pooling and the head) is trained from
   image labels alone. The 2-class head starts from the stage-1 head (lesion row;
   benign = mean of the normal and look-alike rows).

End-to-end: the same models from random initialisation, image labels only,
with a curriculum (images with larger lesions first), N = 100 samples for
attention sampling, a feature scale and a small entropy weight.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from benchmarks._models.data import ImageSet, tile_fractions, tile_grid
from napari_histattn.inference.patches import rgb_to_tensor, tissue_mask
from napari_histattn.models.attention_sampling import AttentionSampling, downscale_image
from napari_histattn.models.patch_source import TensorPatchSource
from napari_histattn.training.metrics import (
    attention_mass_in_lesion,
    balanced_accuracy,
    localisation_auc,
    roc_auc,
    roc_auc_binary,
)

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- helpers


def dihedral(x: Tensor, gen: torch.Generator) -> Tensor:
    """Apply one random flip/90-degree rotation per sample of ``(B, C, H, W)`` (H == W)."""
    codes = torch.randint(0, 8, (x.shape[0],), generator=gen)
    out = x.clone()
    for code in range(1, 8):
        sel = (codes == code).nonzero().flatten()
        if sel.numel() == 0:
            continue
        part = x[sel]
        if code & 4:
            part = part.flip(-1)
        out[sel] = torch.rot90(part, k=code & 3, dims=(-2, -1))
    return out


def binary_head_from(head3: nn.Linear, target: nn.Linear) -> None:
    """Start a 2-class (benign, lesion) head from a 3-class (normal, look-alike, lesion) one."""
    with torch.no_grad():
        w, b = head3.weight, head3.bias
        target.weight.copy_(torch.stack([(w[0] + w[1]) / 2, w[2]]))
        target.bias.copy_(torch.stack([(b[0] + b[1]) / 2, b[2]]))


def tissue_tiles(rgb: np.ndarray, patch_size: int, min_fraction: float = 0.5) -> np.ndarray:
    """``(n, g*g)`` bool: tiles whose pixels are at least ``min_fraction`` tissue
    (:func:`napari_histattn.inference.patches.tissue_mask`, as slide tiling uses)."""
    masks = np.stack([tissue_mask(im) for im in rgb])
    frac = tile_fractions(masks, patch_size)
    return (frac >= min_fraction).reshape(rgb.shape[0], -1)


class FeatureTrunk(nn.Module):
    """Attention sampling's feature network without its L2 normalisation (stage 1 only).

    Trained through the normalisation, the feature network stalls at telling
    lesions from look-alikes (measured: 0.66 balanced patch accuracy after 3
    epochs, against 0.90 without it), so stage 1 trains the same convolutions
    and linear layer with the class head on the unnormalised output; the model
    normalises as usual afterwards.
    """

    def __init__(self, feature_net: nn.Module) -> None:
        super().__init__()
        self.body = feature_net.body
        self.fc = feature_net.fc

    def forward(self, patches: Tensor) -> Tensor:
        return self.fc(self.body(patches).amax(dim=(2, 3)))  # type: ignore[no-any-return]


@dataclass
class History:
    """What a training run did."""

    seconds: float = 0.0
    steps: int = 0
    epochs: int = 0
    losses: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "steps": self.steps,
            "epochs": self.epochs,
            "loss_first_last": [round(self.losses[0], 4), round(self.losses[-1], 4)]
            if self.losses
            else [],
            "notes": self.notes,
        }


# ----------------------------------------------------------------------------- stage 1


def train_patch_classifier(
    net: Callable[[Tensor], Tensor],
    params: Sequence[nn.Parameter],
    patches: np.ndarray,
    classes: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    epochs: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    time_limit_s: float | None = None,
    log: Log = _print,
    name: str = "patches",
    modules: Sequence[nn.Module] = (),
) -> History:
    """Supervised patch classification (stage 1): Adam, cosine decay, dihedral augmentation.

    ``net`` maps ``(M, 3, p, p)`` normalised patches to ``(M, C)`` logits.
    """
    gen = torch.Generator().manual_seed(seed)
    x_all = rgb_to_tensor(patches, mean, std)
    y_all = torch.as_tensor(classes)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-5)
    n = x_all.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    hist = History()
    start = time.perf_counter()
    for m in modules:
        m.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total, correct, seen = 0.0, 0, 0
        for s in range(steps_per_epoch):
            idx = order[s * batch_size : (s + 1) * batch_size]
            x = dihedral(x_all[idx], gen)
            y = y_all[idx]
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hist.steps += 1
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        hist.epochs = epoch + 1
        hist.losses.append(total / seen)
        log(
            f"  [{name}] epoch {epoch + 1}/{epochs} loss {total / seen:.4f} acc {correct / seen:.3f}"
        )
        if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
            hist.notes.append(f"stopped by the time limit after {epoch + 1} epochs")
            break
    for m in modules:
        m.eval()
    hist.seconds = time.perf_counter() - start
    return hist


@torch.no_grad()
def predict_patches(
    net: Callable[[Tensor], Tensor],
    patches: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
) -> np.ndarray:
    """Class probabilities ``(M, C)`` of ``net`` over uint8 patches."""
    out = []
    for s in range(0, patches.shape[0], batch_size):
        x = rgb_to_tensor(patches[s : s + batch_size], mean, std)
        out.append(torch.softmax(net(x).double(), dim=1).numpy())
    return np.concatenate(out)


def patch_metrics(classes: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    pred = probs.argmax(1)
    return {
        "accuracy": float((pred == classes).mean()),
        "balanced_accuracy": float(balanced_accuracy(classes, pred)),
        "roc_auc_macro": float(roc_auc(classes, probs)),
        "lesion_vs_rest_auc": float(roc_auc_binary(classes == 2, probs[:, 2])),
    }


# ----------------------------------------------------------------------------- attention sampling


def _as_batch(
    images: ImageSet, idx: np.ndarray, mean: Sequence[float], std: Sequence[float], downscale: int
) -> tuple[Tensor, Tensor]:
    high = rgb_to_tensor(images.rgb[idx], mean, std)
    return downscale_image(high, downscale), high


def train_attention_sampling(
    model: AttentionSampling,
    phases: Sequence[tuple[ImageSet, int]],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 8,
    lr: float = 1e-3,
    feature_lr: float | None = None,
    freeze_features: bool = False,
    seed: int = 0,
    time_limit_s: float | None = None,
    log: Log = _print,
    name: str = "as",
) -> History:
    """Train attention sampling on image labels (``model.loss``: cross-entropy, entropy bonus).

    Parameters
    ----------
    phases
        ``(images, epochs)`` in order: a curriculum when the first phases have
        larger lesions.
    freeze_features
        Keep the feature network fixed (two-stage); otherwise it trains at
        ``feature_lr`` (default ``lr``).
    """
    gen = torch.Generator().manual_seed(seed)
    sample_gen = torch.Generator().manual_seed(seed + 1)
    for p in model.feature_net.parameters():
        p.requires_grad_(not freeze_features and p is not model.feature_net.log_scale)
    model.feature_net.log_scale.requires_grad_(False)
    groups: list[dict[str, Any]] = [
        {"params": list(model.attention_net.parameters()) + list(model.classifier.parameters())}
    ]
    if not freeze_features:
        feature_params = [p for p in model.feature_net.parameters() if p.requires_grad]
        groups.append({"params": feature_params, "lr": feature_lr or lr})
    opt = torch.optim.Adam(groups, lr=lr)
    total_steps = sum(math.ceil(len(s) / batch_size) * e for s, e in phases)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=[g.get("lr", lr) for g in groups],
        total_steps=max(1, total_steps),
        pct_start=0.1,
    )
    hist = History()
    start = time.perf_counter()
    model.train()
    stop = False
    for phase, (images, epochs) in enumerate(phases):
        for epoch in range(epochs):
            order = torch.randperm(len(images), generator=gen).numpy()
            total, correct, seen = 0.0, 0, 0
            for s in range(0, len(images), batch_size):
                idx = order[s : s + batch_size]
                high = dihedral(rgb_to_tensor(images.rgb[idx], mean, std), gen)
                low = downscale_image(high, model.downscale)
                y = torch.as_tensor(images.y[idx])
                out = model(low, TensorPatchSource(high), generator=sample_gen)
                loss = model.loss(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                if hist.steps < total_steps:
                    sched.step()
                hist.steps += 1
                total += loss.item() * len(idx)
                correct += int((out.logits.argmax(1) == y).sum())
                seen += len(idx)
            hist.epochs += 1
            hist.losses.append(total / seen)
            elapsed = time.perf_counter() - start
            log(
                f"  [{name}] phase {phase + 1} epoch {epoch + 1}/{epochs} loss {total / seen:.4f} "
                f"acc {correct / seen:.3f} ({elapsed:.0f} s)"
            )
            if time_limit_s is not None and elapsed > time_limit_s:
                hist.notes.append(f"stopped by the time limit in phase {phase + 1}")
                stop = True
                break
        if stop:
            break
    model.eval()
    for p in model.feature_net.parameters():
        p.requires_grad_(True)
    model.feature_net.log_scale.requires_grad_(False)
    hist.seconds = time.perf_counter() - start
    return hist


@torch.inference_mode()
def evaluate_attention_sampling(
    model: AttentionSampling,
    images: ImageSet,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
) -> dict[str, Any]:
    """Image probabilities and attention maps (one seeded draw per image, as the engine does)."""
    model.eval()
    probs, maps, seconds = [], [], []
    for i in range(len(images)):
        t0 = time.perf_counter()
        low, high = _as_batch(images, np.array([i]), mean, std, model.downscale)
        gen = torch.Generator().manual_seed(seed + i)
        out = model(low, TensorPatchSource(high), generator=gen)
        probs.append(torch.softmax(out.logits.double(), 1)[0].numpy())
        seconds.append(time.perf_counter() - t0)
        maps.append(out.attention[0].double().numpy())
    return {"probs": np.stack(probs), "attention": np.stack(maps), "seconds": seconds}


# ----------------------------------------------------------------------------- A-MIL


def bag_features(
    model: Any,
    images: ImageSet,
    mean: Sequence[float],
    std: Sequence[float],
    chunk: int = 1024,
) -> tuple[list[Tensor], np.ndarray]:
    """Frozen-encoder features of each image's tissue tiles: ``[(T_i, D)]`` and the tissue masks."""
    p = int(model.patch_size)
    keep = tissue_tiles(images.rgb, p)
    feats = []
    # no_grad, not inference_mode: the features are inputs of a training step later.
    with torch.no_grad():
        for i in range(len(images)):
            tiles = tile_grid(images.rgb[i : i + 1], p)[0][keep[i]]
            x = rgb_to_tensor(tiles, mean, std)
            feats.append(model.encode(x, chunk_size=chunk))
    return feats, keep


def _pad(feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    longest = max(int(f.shape[0]) for f in feats)
    out = feats[0].new_zeros((len(feats), longest, *feats[0].shape[1:]))
    mask = torch.zeros(len(feats), longest, dtype=torch.bool)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return out, mask


def tile_positions(keep: np.ndarray, side: int) -> list[Tensor]:
    """Grid (row, col) of each image's tissue tiles (``keep`` ``(n, side * side)``), in the
    order :func:`bag_features` encodes them: the bags' positions for HATNet."""
    return [
        torch.from_numpy(np.stack(np.divmod(np.flatnonzero(row), side), axis=1)) for row in keep
    ]


def _bag_call(model: Any, x: Tensor, mask: Tensor, positions: Tensor | None) -> Any:
    if positions is None:
        return model.forward_features(x, mask)
    return model.forward_features(x, positions, mask)


def train_amil_head(
    model: Any,
    feats: Sequence[Tensor],
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    log: Log = _print,
    name: str = "amil-head",
    positions: Sequence[Tensor] | None = None,
    frozen: tuple[str, ...] = ("encoder.",),
) -> History:
    """Stage 2 of A-MIL (or HATNet, with the bags' tile ``positions``): every parameter but
    those named with a ``frozen`` prefix (the encoder) trained on frozen features, image
    labels only."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for n, p in model.named_parameters() if not n.startswith(frozen)]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-4)
    y_t = torch.as_tensor(y)
    hist = History()
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(feats), generator=gen).tolist()
        total, correct = 0.0, 0
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            x, mask = _pad([feats[i] for i in idx])
            pos = None if positions is None else _pad([positions[i] for i in idx])[0]
            out = _bag_call(model, x, mask, pos)
            loss = F.cross_entropy(out.logits, y_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hist.steps += 1
            total += loss.item() * len(idx)
            correct += int((out.logits.argmax(1) == y_t[idx]).sum())
        hist.epochs += 1
        hist.losses.append(total / len(order))
        if epoch % 5 == 4 or epoch == epochs - 1:
            log(
                f"  [{name}] epoch {epoch + 1}/{epochs} loss {total / len(order):.4f} "
                f"acc {correct / len(order):.3f}"
            )
    model.eval()
    hist.seconds = time.perf_counter() - start
    return hist


def train_amil_end_to_end(
    model: Any,
    phases: Sequence[tuple[ImageSet, int]],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    bag_cap: int = 256,
    batch_size: int = 4,
    lr: float = 5e-4,
    seed: int = 0,
    time_limit_s: float | None = None,
    log: Log = _print,
    name: str = "amil-e2e",
) -> History:
    """A-MIL from scratch on image labels: random subsets of ``bag_cap`` tissue tiles per bag."""
    gen = torch.Generator().manual_seed(seed)
    p = int(model.patch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    hist = History()
    start = time.perf_counter()
    model.train()
    stop = False
    for phase, (images, epochs) in enumerate(phases):
        keep = tissue_tiles(images.rgb, p)
        for epoch in range(epochs):
            order = torch.randperm(len(images), generator=gen).tolist()
            total, correct = 0.0, 0
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                bags = []
                for i in idx:
                    tiles = tile_grid(images.rgb[i : i + 1], p)[0][keep[i]]
                    pick = torch.randperm(tiles.shape[0], generator=gen)[:bag_cap].numpy()
                    bags.append(dihedral(rgb_to_tensor(tiles[np.sort(pick)], mean, std), gen))
                flat, mask = _pad([b.flatten(1) for b in bags])
                x = flat.reshape(len(idx), flat.shape[1], 3, p, p)
                y = torch.as_tensor(images.y[idx])
                out = model(x, mask=mask, chunk_size=None)
                loss = F.cross_entropy(out.logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                hist.steps += 1
                total += loss.item() * len(idx)
                correct += int((out.logits.argmax(1) == y).sum())
            hist.epochs += 1
            hist.losses.append(total / len(order))
            elapsed = time.perf_counter() - start
            log(
                f"  [{name}] phase {phase + 1} epoch {epoch + 1}/{epochs} "
                f"loss {total / len(order):.4f} acc {correct / len(order):.3f} ({elapsed:.0f} s)"
            )
            if time_limit_s is not None and elapsed > time_limit_s:
                hist.notes.append(f"stopped by the time limit in phase {phase + 1}")
                stop = True
                break
        if stop:
            break
    model.eval()
    hist.seconds = time.perf_counter() - start
    return hist


@torch.inference_mode()
def evaluate_amil(
    model: Any, images: ImageSet, *, mean: Sequence[float], std: Sequence[float]
) -> dict[str, Any]:
    """Image probabilities and per-tile attention grids (0 on tiles that are not tissue)."""
    model.eval()
    p = int(model.patch_size)
    g = images.rgb.shape[1] // p
    probs, maps, seconds = [], [], []
    for i in range(len(images)):
        t0 = time.perf_counter()
        keep = tissue_tiles(images.rgb[i : i + 1], p)[0]
        tiles = tile_grid(images.rgb[i : i + 1], p)[0][keep]
        x = rgb_to_tensor(tiles, mean, std)[None]
        if hasattr(model, "region_size"):  # HATNet: the tiles' grid positions too
            out = model(x, tile_positions(keep[None], g)[0][None], chunk_size=1024)
        else:
            out = model(x, chunk_size=1024)
        probs.append(torch.softmax(out.logits.double(), 1)[0].numpy())
        seconds.append(time.perf_counter() - t0)
        grid = np.zeros(g * g)
        grid[keep] = out.attention[0].double().numpy()
        maps.append(grid.reshape(g, g))
    return {"probs": np.stack(probs), "attention": np.stack(maps), "seconds": seconds}


# ----------------------------------------------------------------------------- baselines


class LowResCNN(nn.Module):
    """A small CNN that only sees the low-resolution view (the baseline that must fail)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c_in, 2)

    def forward(self, x: Tensor) -> Tensor:
        f = self.body(x)
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))  # type: ignore[no-any-return]


def low_res_views(
    images: ImageSet, mean: Sequence[float], std: Sequence[float], downscale: int
) -> Tensor:
    views = []
    for s in range(0, len(images), 16):
        high = rgb_to_tensor(images.rgb[s : s + 16], mean, std)
        views.append(downscale_image(high, downscale))
    return torch.cat(views)


def train_low_res_cnn(
    train_views: Tensor, y: np.ndarray, *, epochs: int, seed: int = 0, log: Log = _print
) -> tuple[LowResCNN, History]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = LowResCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    y_t = torch.as_tensor(y)
    hist = History()
    start = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y_t), generator=gen)
        total, correct = 0.0, 0
        for s in range(0, len(order), 16):
            idx = order[s : s + 16]
            logits = net(dihedral(train_views[idx], gen))
            loss = F.cross_entropy(logits, y_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y_t[idx]).sum())
        hist.epochs += 1
        hist.losses.append(total / len(order))
        if epoch % 10 == 9 or epoch == epochs - 1:
            log(
                f"  [low-res cnn] epoch {epoch + 1}/{epochs} loss {hist.losses[-1]:.4f} "
                f"acc {correct / len(order):.3f}"
            )
    net.eval()
    hist.seconds = time.perf_counter() - start
    return net, hist


def darkness_attention(images: ImageSet, downscale: int) -> np.ndarray:
    """ "Darkest regions": 1 - brightness of the low-resolution view, 0 off tissue ``(n, h, w)``."""
    out = []
    for i in range(len(images)):
        high = rgb_to_tensor(images.rgb[i : i + 1])
        view = downscale_image(high, downscale)[0]
        dark = 1.0 - view.mean(0).double().numpy()
        rgb = (view.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        dark[~tissue_mask(rgb)] = 0.0
        out.append(dark)
    return np.stack(out)


def top_fraction(scores: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """A distribution uniform over the ``fraction`` highest-scoring positive cells."""
    out = np.zeros_like(scores)
    for i, s in enumerate(scores):
        pos = s[s > 0]
        if pos.size == 0:
            continue
        thr = np.quantile(pos, 1.0 - fraction)
        sel = s >= thr
        out[i][sel] = 1.0 / sel.sum()
    return out


def uniform_attention(images: ImageSet, downscale: int) -> np.ndarray:
    """Uniform over tissue (the low-resolution view's tissue mask) ``(n, h, w)``."""
    dark = darkness_attention(images, downscale)
    tissue = (dark > 0).astype(np.float64)
    return tissue / np.maximum(tissue.sum(axis=(1, 2), keepdims=True), 1.0)


# ----------------------------------------------------------------------------- metrics


def image_metrics(
    images: ImageSet,
    probs: np.ndarray | None,
    attention: np.ndarray | None,
    mass_attention: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, ROC AUC, localisation AUC and attention mass in lesions (positives only)."""
    out: dict[str, Any] = {}
    if probs is not None:
        pred = probs.argmax(1)
        out["accuracy"] = float((pred == images.y).mean())
        out["roc_auc"] = float(roc_auc_binary(images.y, probs[:, 1]))
    if attention is not None:
        masses = mass_attention if mass_attention is not None else attention
        pos = np.nonzero(images.y == 1)[0]
        masks = images.lesion_masks()
        aucs = [localisation_auc(attention[i], masks[i]) for i in pos]
        mass = [attention_mass_in_lesion(masses[i], masks[i]) for i in pos]
        out["localisation_auc"] = float(np.nanmean(aucs))
        out["localisation_auc_min"] = float(np.nanmin(aucs))
        out["attention_mass_in_lesion"] = float(np.nanmean(mass))
        out["lesion_area_fraction"] = float(masks[pos].mean())
    return out
