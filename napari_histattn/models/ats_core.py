r"""Attention-sampling core: sampling from an attention distribution and the
unbiased expectation estimator, as pure functions over tensors (no I/O).

Katharopoulos & Fleuret, "Processing Megapixel Images with Deep
Attention-Sampling Models", ICML 2019. The model
(:mod:`napari_histattn.models.attention_sampling`) computes an attention
distribution ``a`` over the K positions of a low-resolution grid, draws N
positions from it, computes features ``f_i`` of the high-resolution patches at
those positions only, and replaces the full expectation

.. math:: F = \mathbb{E}_{i \sim a}[f_i] = \sum_{i=1}^{K} a_i f_i

by a Monte Carlo estimate whose gradient reaches both the features and the
attention (:func:`expectation`). Shapes: B = batch, K = grid positions,
N = samples, D = feature size. Attention rows are probabilities (sum to 1).

Samples *without* replacement are returned in the order in which sequential
sampling would have drawn them (descending Gumbel keys, or draw by draw on the
cumulative distribution for large grids); the estimator relies on
that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.autograd.function import FunctionCtx


def _uniform(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Uniform(0, 1) draws made on the generator's device (so that a seed gives the
    same samples whatever device the model runs on), in float64."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float64)
    return u.to(device)


def _check_attention(attention: Tensor, n: int) -> None:
    if attention.dim() != 2:
        raise ValueError(
            f"attention must be (B, K) probabilities, got shape {tuple(attention.shape)}"
        )
    if n < 1:
        raise ValueError(f"number of samples must be >= 1, got {n}")


def _check_distinct(attention: Tensor, n: int) -> None:
    _check_attention(attention, n)
    if n > attention.shape[1]:
        raise ValueError(
            f"cannot draw {n} distinct positions from a grid of {attention.shape[1]} positions"
        )


def sample_with_replacement(
    attention: Tensor, n: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draw ``n`` i.i.d. positions per row from ``attention``.

    Parameters
    ----------
    attention
        ``(B, K)`` probabilities, each row summing to 1.
    n
        Samples per row.
    generator
        Dedicated random generator; the same seed gives the same samples. The
        draws are made on the generator's device (CPU by default) and moved to
        ``attention``'s device, so results do not depend on where the model runs.

    Returns
    -------
    Tensor
        ``(B, n)`` long indices into K. Positions with zero probability are never drawn.
    """
    _check_attention(attention, n)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    probs = attention.detach().to(gen_device, torch.float64)
    idx = torch.multinomial(probs, n, replacement=True, generator=generator)
    return idx.to(attention.device)


def sample_without_replacement(
    attention: Tensor, n: int, generator: torch.Generator | None = None
) -> Tensor:
    """Draw ``n`` distinct positions per row, sequentially without replacement,
    with the Gumbel top-k trick.

    Adding i.i.d. Gumbel(0, 1) noise to ``log a`` and taking the top n keys in
    descending order has the same law as drawing n times from ``a``, each time
    renormalising over the positions not drawn yet. The indices are returned in
    that draw order, which :func:`expectation` relies on.

    Parameters
    ----------
    attention
        ``(B, K)`` probabilities, each row summing to 1.
    n
        Samples per row, at most K.
    generator
        Dedicated random generator (see :func:`sample_with_replacement`).

    Returns
    -------
    Tensor
        ``(B, n)`` long indices into K.

    Notes
    -----
    If a row has fewer than ``n`` positions with nonzero probability (softmax
    underflow of a very peaked attention), every nonzero position is drawn first
    and the remaining slots are filled with zero-probability positions. Those
    come last and carry attention 0; :func:`expectation` gives their features no
    weight, and their per-draw estimates are the exact expectation (the mass is
    exhausted), so the estimate stays unbiased.
    """
    _check_distinct(attention, n)
    k = attention.shape[1]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if k > SEQUENTIAL_ABOVE:
        return _sequential_without_replacement(attention, n, generator).to(attention.device)
    u = _uniform(tuple(attention.shape), generator, gen_device)
    tiny = torch.finfo(torch.float64).tiny
    gumbel = -torch.log(-torch.log(u.clamp(min=tiny, max=1.0 - 1e-16)))
    keys = attention.detach().to(gen_device, torch.float64).log() + gumbel
    idx = torch.topk(keys, n, dim=1, largest=True, sorted=True).indices
    return idx.to(attention.device)


#: Grids larger than this are sampled without replacement draw by draw on the
#: cumulative distribution (O(K + n^2 log K) per row) instead of with Gumbel keys for
#: every position (O(K) random numbers and logarithms per row): the same law, and
#: 10-20x faster for the millions of positions of a slide's view.
SEQUENTIAL_ABOVE = 1 << 16


def _sequential_without_replacement(
    attention: Tensor, n: int, generator: torch.Generator | None
) -> Tensor:
    """Sequential sampling without replacement on each row's cumulative distribution
    (see :class:`_Cumulative`)."""
    rows = _cumulative_rows(attention)
    return _draw_rows(rows, n, generator)


def _cumulative_rows(attention: Tensor) -> list[_Cumulative]:
    return [_Cumulative.of(p) for p in attention.detach().to("cpu", torch.float64).numpy()]


def _draw_rows(rows: list[_Cumulative], n: int, generator: torch.Generator | None) -> Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = _uniform((len(rows), n), generator, gen_device).cpu().numpy()
    return torch.as_tensor(np.asarray([row.draw(u[b]) for b, row in enumerate(rows)]))


@dataclass(frozen=True)
class _Cumulative:
    """One row's distribution, ready for draws without replacement.

    Draw ``j`` takes a uniform share of the mass not drawn yet and finds the position
    where the cumulative mass, less the drawn positions' before it, reaches it (a fixed
    point: each drawn position before the target moves it on by its own mass). When the
    nonzero mass is exhausted the remaining slots take zero-probability positions in
    index order, as the Gumbel path does (see :func:`sample_without_replacement`).
    """

    p: NDArray[np.float64]
    cdf: NDArray[np.float64]
    n_positive: int
    last: int  # the last position with mass

    @classmethod
    def of(cls, p: NDArray[np.float64]) -> _Cumulative:
        cdf = np.cumsum(p)
        last = int(np.searchsorted(cdf, cdf[-1], side="left"))
        return cls(p, cdf, int(np.count_nonzero(p > 0)), last)

    def draw(self, u: NDArray[np.float64]) -> list[int]:
        p, cdf = self.p, self.cdf
        n = int(u.shape[0])
        drawn: list[int] = []
        drawn_mass = 0.0
        for j in range(n):
            if len(drawn) >= self.n_positive:  # the mass is exhausted: zero-probability fillers
                return drawn + np.flatnonzero(p <= 0)[: n - j].tolist()
            target = u[j] * (cdf[-1] - drawn_mass)
            before = np.sort(np.asarray(drawn, dtype=np.int64))
            offset = 0.0
            while True:
                i = min(int(np.searchsorted(cdf, target + offset, side="left")), self.last)
                moved = float(p[before[before <= i]].sum())
                if moved == offset:
                    break
                offset = moved
            if p[i] <= 0 or i in drawn:  # rounding at a boundary: the next undrawn position
                free = np.setdiff1d(np.flatnonzero(p > 0), before)
                i = int(free[min(int(np.searchsorted(free, i)), free.size - 1)])
            drawn.append(i)
            drawn_mass += float(p[i])
        return drawn


def sample(
    attention: Tensor, n: int, replace: bool, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sample positions and gather their attention (with its autograd graph).

    Returns
    -------
    tuple of Tensor
        ``indices`` ``(B, n)`` long and ``sample_attention`` ``(B, n)``, the
        attention at each sample, differentiable with respect to ``attention``.
    """
    draw = sample_with_replacement if replace else sample_without_replacement
    idx = draw(attention, n, generator)
    return idx, attention.gather(1, idx)


def sample_rounds(
    attention: Tensor,
    n: int,
    replace: bool,
    generators: list[torch.Generator],
) -> list[tuple[Tensor, Tensor]]:
    """:func:`sample` once per generator (independent rounds of draws), preparing each
    row's cumulative distribution once for all rounds on a large grid."""
    if replace or attention.shape[1] <= SEQUENTIAL_ABOVE:
        return [sample(attention, n, replace, g) for g in generators]
    _check_distinct(attention, n)
    rows = _cumulative_rows(attention)
    out = []
    for generator in generators:
        idx = _draw_rows(rows, n, generator).to(attention.device)
        out.append((idx, attention.gather(1, idx)))
    return out


def _safe_divisor(x: Tensor, valid: Tensor) -> Tensor:
    """``x`` where valid, else 1, and at least sqrt(tiny) of its dtype.

    The floor (about 1e-19 in float32) keeps ``1 / x`` and the products that
    follow finite for denormal probabilities; it changes the gradient only for
    draws of probability below it.
    """
    floor = torch.finfo(x.dtype).tiny ** 0.5
    return torch.where(valid, x.clamp_min(floor), torch.ones_like(x))


def _remaining_mass(sample_attention: Tensor) -> tuple[Tensor, Tensor]:
    """Probability mass still available before each draw without replacement,
    ``pm_k = 1 - sum_{j<k} a_j``, and the mask of draws with nonzero probability.

    Rounding can make ``1 - S_k`` slightly smaller than ``a_k`` (or negative)
    when little mass is left; the remaining mass is at least the drawn
    probability, so it is clamped to ``a_k``. Zero-probability draws (after the
    mass is exhausted) get ``pm = 0``.
    """
    a = sample_attention
    exclusive = torch.cumsum(a, dim=1) - a
    valid = a > 0
    pm = torch.where(valid, torch.maximum(1.0 - exclusive, a), torch.zeros_like(a))
    return pm, valid


class _ExpectationWithReplacement(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, sample_attention: Tensor, features: Tensor) -> Tensor:
        ctx.save_for_backward(sample_attention, features)
        return features.mean(dim=1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        a, f = ctx.saved_tensors
        n = f.shape[1]
        grad_a = grad_f = None
        if ctx.needs_input_grad[0]:
            h = torch.einsum("bd,bnd->bn", grad, f)
            valid = a > 0
            grad_a = torch.where(valid, h / (n * _safe_divisor(a, valid)), torch.zeros_like(h))
        if ctx.needs_input_grad[1]:
            grad_f = (grad / n).unsqueeze(1).expand_as(f)
        return grad_a, grad_f


def _without_replacement_terms(a: Tensor, f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-draw estimates ``est_k`` ``(B, N, D)``, remaining mass and valid mask."""
    pm, valid = _remaining_mass(a)
    af = a.unsqueeze(-1) * f
    known = torch.cumsum(af, dim=1) - af  # sum_{j<k} a_j f_j
    est = known + pm.unsqueeze(-1) * f
    return est, pm, valid


class _ExpectationWithoutReplacement(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, sample_attention: Tensor, features: Tensor) -> Tensor:
        est, _, _ = _without_replacement_terms(sample_attention, features)
        ctx.save_for_backward(sample_attention, features)
        return est.mean(dim=1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        a, f = ctx.saved_tensors
        n = f.shape[1]
        w = 1.0 / n
        est, pm, valid = _without_replacement_terms(a, f)
        # Number of later draws k > m, for every draw m.
        later = torch.arange(n - 1, -1, -1, device=a.device, dtype=a.dtype)
        grad_a = grad_f = None
        if ctx.needs_input_grad[0]:
            h = torch.einsum("bd,bnd->bn", grad, f)  # <G, f_k>
            e = torch.einsum("bd,bnd->bn", grad, est)  # <G, est_k>
            # T1: the estimate's explicit dependence on a_m (m < k): f_m - f_k.
            h_after = torch.flip(torch.cumsum(torch.flip(h, [1]), 1), [1]) - h
            t1 = w * (later * h - h_after)
            # R_m = sum_{k>=m} w <G, est_k>: every estimate that the draw m influenced.
            r = w * torch.flip(torch.cumsum(torch.flip(e, [1]), 1), [1])
            # T2: d/da_m of log a_m in the sequence's log-probability.
            t2 = torch.where(valid, r / _safe_divisor(a, valid), torch.zeros_like(r))
            # T3: d/da_m of -log(1 - S_l) for every later draw l > m.
            q = torch.where(valid, r / _safe_divisor(pm, valid), torch.zeros_like(r))
            t3 = torch.flip(torch.cumsum(torch.flip(q, [1]), 1), [1]) - q
            grad_a = t1 + t2 + t3
        if ctx.needs_input_grad[1]:
            coef = w * pm + a * (w * later)
            grad_f = coef.unsqueeze(-1) * grad.unsqueeze(1)
        return grad_a, grad_f


def expectation(sample_attention: Tensor, features: Tensor, replace: bool) -> Tensor:
    r"""Unbiased Monte Carlo estimate of :math:`F = \sum_i a_i f_i` from sampled
    features, with gradients for the features and the attention.

    Parameters
    ----------
    sample_attention
        ``(B, N)`` attention ``a_{i_k}`` of the sampled positions, in draw order
        (as returned by :func:`sample`), differentiable.
    features
        ``(B, N, D)`` features ``f_{i_k}`` of the sampled patches.
    replace
        Whether the samples were drawn with replacement.

    Returns
    -------
    Tensor
        ``(B, D)`` the estimate of F.

    Notes
    -----
    Write ``a_k, f_k`` for the attention and features of the k-th draw
    (k = 0..N-1) and ``G = dL/dF`` for the incoming gradient.

    **With replacement.** The draws are i.i.d. from ``a``, so
    :math:`\hat F = \frac1N \sum_k f_k` is unbiased. For the attention, the
    score-function identity :math:`\nabla_\theta \mathbb{E}[f_i] =
    \mathbb{E}[f_i \nabla_\theta \log a_i]` gives, per draw, the gradient
    :math:`\langle G, f_k\rangle / (N a_k)` on :math:`a_k` (accumulated when a
    position is drawn twice). Its expectation over the draws is exactly
    :math:`\langle G, f_i\rangle = \partial \langle G, F\rangle / \partial a_i`.
    (The cross terms between different draws are dropped: draws are independent,
    so they only add a multiple of the all-ones vector in expectation, which the
    softmax Jacobian annihilates.) Features get ``G / N`` each.

    **Without replacement** (sequential draws, remaining mass
    :math:`p_k = 1 - S_k`, :math:`S_k = \sum_{j<k} a_j`). Given the first k
    draws, draw k is distributed as :math:`a_i / p_k` over the positions left,
    so

    .. math:: \hat F_k = \sum_{j<k} a_j f_j + p_k f_k

    is unbiased for F for every k (the known part is exact, the rest is an
    importance-weighted single draw), and so is :math:`\hat F = \frac1N \sum_k
    \hat F_k`. Features get
    :math:`\partial \hat F / \partial f_m = \frac1N (p_m + (N-1-m) a_m)`.

    Its attention gradient is the score-function estimator of
    :math:`\nabla \mathbb{E}[\hat F]` with ``a`` as the free variable, keeping
    for each :math:`\hat F_k` only the log-probability of the draws it depends
    on (draws after k have a zero-mean score given the first k):

    .. math::

        g_m = \sum_{k>m} \tfrac1N \langle G, f_m - f_k\rangle
              + \frac{R_m}{a_m} + \sum_{l>m} \frac{R_l}{p_l},
        \qquad R_m = \sum_{k \ge m} \tfrac1N \langle G, \hat F_k\rangle,

    the three terms being the explicit dependence of :math:`\hat F_k` on
    :math:`a_m`, the derivative of :math:`\log a_m` and that of
    :math:`-\log p_l` in :math:`\log P(i_0..i_k) = \sum_{l \le k} \log a_l -
    \log p_l`. Through the softmax (``a = softmax(z)``), its expectation is the
    exact gradient :math:`\partial \langle G, F\rangle / \partial z`; the tests
    check this by enumerating every draw sequence of a small grid. This is our
    own derivation; it differs from the reference implementation
    (idiap/attention-sampling), whose attention gradient for this case is not
    documented. Draws with zero probability (only possible after the mass is
    exhausted) get no weight in either direction. Divisions by a probability
    are floored at sqrt of the dtype's smallest normal number (about 1e-19 in
    float32) so that denormal probabilities give finite gradients.
    """
    if features.dim() != 3 or sample_attention.shape != features.shape[:2]:
        raise ValueError(
            f"expected sample_attention (B, N) and features (B, N, D), got "
            f"{tuple(sample_attention.shape)} and {tuple(features.shape)}"
        )
    fn = _ExpectationWithReplacement if replace else _ExpectationWithoutReplacement
    out: Tensor = fn.apply(sample_attention, features)
    return out


def sample_log_prob(sample_attention: Tensor, replace: bool) -> Tensor:
    """Log-probability of each row's draw sequence, differentiable.

    With replacement, ``sum_k log a_k``; without replacement (draw order),
    ``sum_k log a_k - log(1 - S_k)``. Zero-probability draws (after the mass is
    exhausted) contribute nothing; probabilities are floored as in
    :func:`expectation`. Used by the REINFORCE variant.

    Returns
    -------
    Tensor
        ``(B,)``.
    """
    a = sample_attention
    valid = a > 0
    log_a = torch.where(valid, _safe_divisor(a, valid).log(), torch.zeros_like(a))
    if replace:
        return log_a.sum(dim=1)
    pm, _ = _remaining_mass(a)
    return (log_a - _safe_divisor(pm, valid).log()).sum(dim=1)


def attention_entropy(attention: Tensor) -> Tensor:
    """Entropy ``-sum a log a`` of each row of ``(B, K)`` probabilities, ``(B,)``."""
    return -torch.special.xlogy(attention, attention).sum(dim=1)
