"""Post-hoc explanations of a CNN's evidence, per tile: Grad-CAM, guided Grad-CAM, saliency.

The model's own attention says where it looked; these say which pixels its evidence
depends on, computed after the fact (the seeds disagree on whether the two agree;
``benchmarks/explanations.py`` measures both against ground truth). Each explains
one score per image: the **log-odds that the tile is class ``c`` or worse**,
``logsumexp(logits[c:]) - logsumexp(logits[:c])`` with the classes in the checkpoint's
order (most benign first): for two classes the logit margin ``l1 - l0``, and the
evidence that :mod:`napari_histattn.models.tile_calls` calls a slide with. A log-odds
does not saturate where the tile is already certain, as a probability would.

- **Grad-CAM** (Selvaraju et al., 2017): at a convolutional layer with maps ``A_k``,
  ``ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial mean of ``d score / d A_k``;
  at the layer's resolution.
- **Saliency** (Simonyan et al., 2014): ``max over channels |d score / d pixel|``, at the
  input's resolution.
- **Guided Grad-CAM**: guided backpropagation (every ReLU passes only positive
  gradients back) times Grad-CAM upsampled to the input (bilinear), as a heatmap the
  maximum over channels of its absolute value.

Nothing here changes the model: gradients are taken with :func:`torch.autograd.grad`
(no ``.grad`` is accumulated on the parameters), and the ReLUs' in-place flag and the
hooks are restored and removed on the way out. Deterministic for a deterministic model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from napari_histattn.errors import HistattnError

__all__ = ["METHODS", "evidence_score", "explain", "parse_methods"]

#: The methods, by the names the CLI and the widget use.
METHODS = ("gradcam", "guided_gradcam", "saliency")


def parse_methods(methods: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"gradcam,saliency"`` (or a sequence) as known method names, in order, without repeats."""
    if not methods:
        return ()
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names = [str(m).strip().lower().replace("-", "_") for m in items if str(m).strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise HistattnError(f"unknown explanation {unknown[0]!r}; known: {', '.join(METHODS)}")
    return tuple(dict.fromkeys(names))


def evidence_score(logits: Tensor, c: int) -> Tensor:
    """``(B,)`` log-odds that each image is class ``c`` or a later one (``1 <= c < C``)."""
    n = int(logits.shape[-1])
    if not 1 <= c < n:
        raise ValueError(f"class index must be within 1-{n - 1}, got {c}")
    return torch.logsumexp(logits[:, c:], dim=1) - torch.logsumexp(logits[:, :c], dim=1)


@contextmanager
def _guided_relus(model: nn.Module) -> Iterator[None]:
    """Every ``nn.ReLU`` of ``model`` passes back only positive gradients meanwhile."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    inplace = [m.inplace for m in relus]

    def clamp(_m: nn.Module, grad_in: Any, _grad_out: Any) -> tuple[Tensor | None, ...]:
        return tuple(None if g is None else g.clamp_min(0.0) for g in grad_in)

    handles = []
    for module in relus:
        module.inplace = False  # backward hooks need out-of-place outputs
        handles.append(module.register_full_backward_hook(clamp))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in zip(relus, inplace, strict=True):
            module.inplace = flag


def _forward(
    model: nn.Module, layer: nn.Module | None, images: Tensor, logits_of: Callable[[Any], Tensor]
) -> tuple[Tensor, Tensor | None]:
    """Logits, and the output of ``layer`` (for Grad-CAM) from one forward pass with gradients."""
    captured: list[Tensor] = []
    handle = None
    if layer is not None:
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = logits_of(model(images))
    finally:
        if handle is not None:
            handle.remove()
    return logits, (captured[-1] if captured else None)


def _cam(activation: Tensor, grads: Tensor) -> Tensor:
    weights = grads.mean(dim=(2, 3), keepdim=True)  # alpha_k
    return F.relu((weights * activation).sum(dim=1))


def explain(
    model: nn.Module,
    images: Tensor,
    classes: Sequence[int],
    methods: Sequence[str],
    *,
    layer: nn.Module | None,
    logits_of: Callable[[Any], Tensor] = lambda out: out.logits,
) -> dict[tuple[str, int], Tensor]:
    """``{(method, c): (B, h, w) map}`` for each method and each evidence class ``c``.

    ``layer`` is the convolutional layer Grad-CAM reads (its output ``(B, K, h, w)``);
    Grad-CAM's maps are at its resolution, saliency's and guided Grad-CAM's at the
    input's. ``classes`` are evidence classes (``1 <= c < C``). Gradients flow even if
    the caller is in ``torch.no_grad``; not under ``torch.inference_mode``.
    """
    methods = parse_methods(methods)
    needs_layer = {"gradcam", "guided_gradcam"} & set(methods)
    if needs_layer and layer is None:
        raise ValueError("Grad-CAM needs the convolutional layer to read")
    out: dict[tuple[str, int], Tensor] = {}
    if not methods or not classes:
        return out
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            # Plain gradients first: Grad-CAM (guided Grad-CAM's too) and saliency.
            logits, activation = _forward(model, layer if needs_layer else None, x, logits_of)
            for i, c in enumerate(classes):
                score = evidence_score(logits, int(c)).sum()
                wrt = [x] if "saliency" in methods else []
                if activation is not None:
                    wrt.append(activation)
                grads = torch.autograd.grad(score, wrt, retain_graph=i + 1 < len(classes))
                if "saliency" in methods:
                    out[("saliency", int(c))] = grads[0].abs().amax(dim=1).detach()
                if activation is not None:
                    cam = _cam(activation.detach(), grads[-1].detach())
                    out[("gradcam", int(c))] = cam
            if "guided_gradcam" in methods:
                with _guided_relus(model):
                    logits, _ = _forward(model, None, x, logits_of)
                    for i, c in enumerate(classes):
                        score = evidence_score(logits, int(c)).sum()
                        (g_x,) = torch.autograd.grad(score, [x], retain_graph=i + 1 < len(classes))
                        cam = out[("gradcam", int(c))]  # from the plain gradients
                        up = F.interpolate(
                            cam.unsqueeze(1), size=x.shape[-2:], mode="bilinear",
                            align_corners=False,
                        )[:, 0]  # fmt: skip
                        out[("guided_gradcam", int(c))] = (g_x.abs().amax(dim=1) * up).detach()
    finally:
        model.train(was_training)
    return {key: value for key, value in out.items() if key[0] in methods}
