"""Attention-sampling core: seeded sampling, the unbiased expectation estimator
and its attention gradient (Monte Carlo, exact enumeration, finite differences)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from napari_histattn.models import ats_core

DRAWS = 20_000
K, D = 7, 3


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention logits z (K,), features f (K, D) and an upstream gradient G (D,), float64."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(K, generator=gen, dtype=torch.float64)
    f = torch.randn(K, D, generator=gen, dtype=torch.float64)
    g = torch.randn(D, generator=gen, dtype=torch.float64)
    return z, f, g


def _draw_estimates(
    z: torch.Tensor, f: torch.Tensor, g: torch.Tensor, n: int, replace: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAWS independent estimates, in one batch: F-hat (DRAWS, D) and the
    gradient of <G, F-hat> with respect to the logits (DRAWS, K)."""
    logits = z.expand(DRAWS, K).clone().requires_grad_(True)
    attention = torch.softmax(logits, dim=1)
    idx, sample_attention = ats_core.sample(
        attention, n, replace, torch.Generator().manual_seed(seed)
    )
    estimate = ats_core.expectation(sample_attention, f[idx], replace)
    (estimate @ g).sum().backward()
    assert logits.grad is not None
    return estimate.detach(), logits.grad


def _assert_within_standard_error(samples: torch.Tensor, truth: torch.Tensor) -> None:
    """The mean of i.i.d. ``samples`` (rows) is within 4.5 standard errors of ``truth``
    per component (a false alarm has probability ~1e-5 per component)."""
    mean = samples.mean(0)
    stderr = samples.std(0) / math.sqrt(samples.shape[0])
    assert (stderr > 0).all()
    assert ((mean - truth).abs() <= 4.5 * stderr).all(), (mean, truth, stderr)


# --- sampling ----------------------------------------------------------------


@pytest.mark.parametrize("replace", [True, False])
def test_same_seed_same_samples_and_other_seed_other_samples(replace: bool) -> None:
    attention = torch.softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(0)), 1)
    draw = ats_core.sample_with_replacement if replace else ats_core.sample_without_replacement
    first = draw(attention, 10, torch.Generator().manual_seed(7))
    again = draw(attention, 10, torch.Generator().manual_seed(7))
    other = draw(attention, 10, torch.Generator().manual_seed(8))
    assert first.shape == (4, 10) and first.dtype == torch.long
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_with_replacement_frequencies_follow_attention() -> None:
    attention = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]])
    idx = ats_core.sample_with_replacement(attention, DRAWS, torch.Generator().manual_seed(1))
    freq = torch.bincount(idx[0], minlength=5).double() / DRAWS
    p = attention[0].double()
    stderr = (p * (1 - p) / DRAWS).sqrt()
    assert freq[4] == 0  # zero probability is never drawn
    assert ((freq - p).abs()[:4] <= 4.5 * stderr[:4]).all(), freq


@pytest.fixture(params=["gumbel", "cumulative"])
def large_grid_path(request, monkeypatch) -> str:
    """Both ways of sampling without replacement: Gumbel keys (small grids) and draw by
    draw on the cumulative distribution (grids above SEQUENTIAL_ABOVE positions)."""
    if request.param == "cumulative":
        monkeypatch.setattr(ats_core, "SEQUENTIAL_ABOVE", 0)
    return str(request.param)


def test_without_replacement_is_sequential_sampling(large_grid_path) -> None:
    # The first draw follows a; the second follows a renormalised without the first;
    # every row's draws are distinct.
    p = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    idx = ats_core.sample_without_replacement(
        p.expand(DRAWS, 4), 2, torch.Generator().manual_seed(2)
    )
    assert (idx[:, 0] != idx[:, 1]).all()
    first = torch.bincount(idx[:, 0], minlength=4).double() / DRAWS
    second = torch.bincount(idx[:, 1], minlength=4).double() / DRAWS
    expected_second = torch.stack(
        [sum(p[i] * p[j] / (1 - p[i]) for i in range(4) if i != j) for j in range(4)]
    )
    for freq, prob in ((first, p), (second, expected_second)):
        stderr = (prob * (1 - prob) / DRAWS).sqrt()
        assert ((freq - prob).abs() <= 4.5 * stderr).all(), (freq, prob)


def test_the_cumulative_path_draws_third_and_later_draws_by_the_law(monkeypatch) -> None:
    # Three draws of five positions (two of zero mass among them): the third draw's
    # frequencies against the exact law of sequential sampling.
    monkeypatch.setattr(ats_core, "SEQUENTIAL_ABOVE", 0)
    p = torch.tensor([0.0, 0.35, 0.25, 0.0, 0.2, 0.15, 0.05], dtype=torch.float64)
    idx = ats_core.sample_without_replacement(
        p.expand(DRAWS, 7), 3, torch.Generator().manual_seed(7)
    )
    assert all(len(set(row)) == 3 for row in idx.tolist())
    assert not np.isin(idx.numpy(), [0, 3]).any()
    exact = torch.zeros(7, dtype=torch.float64)
    for i in range(7):
        for j in range(7):
            for m in range(7):
                if len({i, j, m}) == 3:
                    exact[m] += p[i] * p[j] / (1 - p[i]) * p[m] / (1 - p[i] - p[j])
    third = torch.bincount(idx[:, 2], minlength=7).double() / DRAWS
    stderr = (exact * (1 - exact) / DRAWS).sqrt()
    assert ((third - exact).abs() <= 4.5 * stderr + 1e-12).all(), (third, exact)


def test_without_replacement_rejects_more_samples_than_positions() -> None:
    with pytest.raises(ValueError, match="cannot draw 6 distinct positions from a grid of 5"):
        ats_core.sample_without_replacement(torch.full((1, 5), 0.2), 6)


def test_draws_after_the_mass_is_exhausted_estimate_exactly(large_grid_path) -> None:
    # Three positions carry all the mass; drawing 5 without replacement takes
    # them first, then zero-probability fillers. Each filler's own estimate is
    # the exact expectation (its own features get no weight), so the estimate
    # is 3/5 of the first three draws' estimate plus 2/5 of the truth.
    attention = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]], dtype=torch.float64)
    f = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    idx = ats_core.sample_without_replacement(attention, 5, torch.Generator().manual_seed(4))
    assert set(idx[0, :3].tolist()) == {1, 3, 4}
    a = attention.clone().requires_grad_(True)
    sample_attention = a.gather(1, idx)
    estimate = ats_core.expectation(sample_attention, f[idx], replace=False)
    first_three = ats_core.expectation(sample_attention[:, :3], f[idx[:, :3]], replace=False)
    truth = attention[0] @ f
    torch.testing.assert_close(estimate[0], 0.6 * first_three[0] + 0.4 * truth)
    estimate.sum().backward()
    assert torch.isfinite(a.grad).all()


# --- the estimator -------------------------------------------------------------


@pytest.mark.parametrize(("replace", "n"), [(True, 3), (False, 3), (False, 6)])
def test_estimator_is_unbiased_monte_carlo(replace: bool, n: int) -> None:
    z, f, g = _problem(0)
    truth = torch.softmax(z, 0) @ f
    estimates, _ = _draw_estimates(z, f, g, n, replace, seed=10)
    _assert_within_standard_error(estimates, truth)


@pytest.mark.parametrize(("replace", "n"), [(True, 3), (False, 3), (False, 6)])
def test_attention_gradient_matches_finite_differences_in_expectation(
    replace: bool, n: int
) -> None:
    # The full expectation Phi(z) = sum_i softmax(z)_i <G, f_i>: its gradient by
    # central finite differences must match the mean of the estimator's
    # gradients through the sampling.
    z, f, g = _problem(1)
    scores = f @ g

    def phi(logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, 0) @ scores

    eps = 1e-6
    finite_diff = torch.stack(
        [(phi(z + eps * e) - phi(z - eps * e)) / (2 * eps) for e in torch.eye(K).double()]
    )
    a = torch.softmax(z, 0)
    analytic = a * (scores - a @ scores)  # softmax Jacobian applied to f_i . G
    torch.testing.assert_close(finite_diff, analytic, rtol=1e-6, atol=1e-8)
    _, grads = _draw_estimates(z, f, g, n, replace, seed=20)
    _assert_within_standard_error(grads, finite_diff)


def _sequences(n: int, replace: bool):
    return itertools.product(range(4), repeat=n) if replace else itertools.permutations(range(4), n)


@pytest.mark.parametrize(
    ("replace", "n"), [(True, 1), (True, 2), (False, 1), (False, 2), (False, 3), (False, 4)]
)
def test_exact_expectation_and_gradient_by_enumeration(replace: bool, n: int) -> None:
    # Sum over every draw sequence of a 4-position grid, weighted by its
    # probability: E[F-hat] = sum_i a_i f_i and E[grad] = d<G, F>/dz, exactly.
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(4, generator=gen, dtype=torch.float64)
    f = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    g = torch.randn(2, generator=gen, dtype=torch.float64)
    a = torch.softmax(z, 0)
    mean_estimate = torch.zeros(2, dtype=torch.float64)
    mean_grad = torch.zeros(4, dtype=torch.float64)
    total = 0.0
    for seq in _sequences(n, replace):
        s = torch.tensor(seq)
        logits = z.clone().requires_grad_(True)
        sample_attention = torch.softmax(logits, 0)[s].unsqueeze(0)
        prob = ats_core.sample_log_prob(sample_attention.detach(), replace).exp().item()
        estimate = ats_core.expectation(sample_attention, f[s].unsqueeze(0), replace)[0]
        (estimate @ g).backward()
        mean_estimate += prob * estimate.detach()
        mean_grad += prob * logits.grad
        total += prob
    assert total == pytest.approx(1.0, abs=1e-12)  # sample_log_prob is a distribution
    torch.testing.assert_close(mean_estimate, a @ f, rtol=0, atol=1e-12)
    scores = f @ g
    torch.testing.assert_close(mean_grad, a * (scores - a @ scores), rtol=0, atol=1e-12)


@pytest.mark.parametrize("replace", [True, False])
def test_feature_gradient_passes_gradcheck(replace: bool) -> None:
    # For fixed samples the estimate is a differentiable function of the
    # features, so their gradient is checked numerically. (The attention
    # gradient is a score-function estimate, not the derivative of this
    # forward; the enumeration test checks it.)
    gen = torch.Generator().manual_seed(6)
    attention = torch.softmax(torch.randn(2, 9, generator=gen, dtype=torch.float64), 1)
    idx = (
        ats_core.sample_with_replacement(attention, 4, gen)
        if replace
        else ats_core.sample_without_replacement(attention, 4, gen)
    )
    sample_attention = attention.gather(1, idx)
    features = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: ats_core.expectation(sample_attention, x, replace), (features,)
    )


def test_without_replacement_attention_gradient_has_the_pathwise_part() -> None:
    # The gradient's first term is the forward's own derivative with respect to
    # the attention (f_m - f_k for later draws k); subtracting the score terms
    # R_m / a_m + sum_{l>m} R_l / p_l must leave exactly that derivative.
    gen = torch.Generator().manual_seed(7)
    a = torch.softmax(torch.randn(1, 6, generator=gen, dtype=torch.float64), 1)
    idx = ats_core.sample_without_replacement(a, 4, gen)
    sa = a.gather(1, idx).requires_grad_(True)
    f = torch.randn(1, 4, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(1, 3, generator=gen, dtype=torch.float64)
    (ats_core.expectation(sa, f, replace=False) * g).sum().backward()

    def forward_only(x: torch.Tensor) -> torch.Tensor:
        pm = 1 - (torch.cumsum(x, 1) - x)
        af = x.unsqueeze(-1) * f
        est = torch.cumsum(af, 1) - af + pm.unsqueeze(-1) * f
        return (est.mean(1) * g).sum()

    pathwise = torch.autograd.functional.jacobian(forward_only, sa.detach())
    with torch.no_grad():
        pm = 1 - (torch.cumsum(sa, 1) - sa)
        af = sa.unsqueeze(-1) * f
        est = torch.cumsum(af, 1) - af + pm.unsqueeze(-1) * f
        e = (est * g.unsqueeze(1)).sum(-1) / 4
        r = torch.flip(torch.cumsum(torch.flip(e, [1]), 1), [1])
        q = r / pm
        score = r / sa + (torch.flip(torch.cumsum(torch.flip(q, [1]), 1), [1]) - q)
    torch.testing.assert_close(sa.grad - score, pathwise)


def test_sample_log_prob_without_replacement_is_sequential() -> None:
    sample_attention = torch.tensor([[0.5, 0.25, 0.125]], dtype=torch.float64)
    expected = math.log(0.5) + math.log(0.25 / 0.5) + math.log(0.125 / 0.25)
    got = ats_core.sample_log_prob(sample_attention, replace=False)
    assert got.item() == pytest.approx(expected)
    with_replacement = ats_core.sample_log_prob(sample_attention, replace=True)
    assert with_replacement.item() == pytest.approx(math.log(0.5 * 0.25 * 0.125))


def test_attention_entropy() -> None:
    uniform = torch.full((1, 16), 1 / 16)
    peaked = torch.tensor([[1.0, 0.0, 0.0]])
    assert ats_core.attention_entropy(uniform).item() == pytest.approx(math.log(16))
    assert ats_core.attention_entropy(peaked).item() == 0.0


def test_expectation_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="expected sample_attention"):
        ats_core.expectation(torch.ones(2, 3), torch.ones(2, 4, 5), replace=True)


@pytest.mark.parametrize("replace", [True, False])
def test_tiny_float32_probabilities_give_finite_gradients(replace: bool) -> None:
    # exp(-100) is a float32 denormal: dividing by it overflows unless guarded.
    logits = torch.tensor([[0.0, -1.0, -87.5, -100.0, -2.0]], requires_grad=True)
    attention = torch.softmax(logits, 1)
    assert 0 < attention[0, 3] < torch.finfo(torch.float32).tiny
    idx = torch.tensor([[0, 3, 2, 1, 4]] if not replace else [[3, 2, 0, 3, 1]])
    features = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(8)) * 10
    estimate = ats_core.expectation(attention.gather(1, idx), features, replace)
    estimate.sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all(), logits.grad


def test_sample_log_prob_gradient_is_finite_for_denormal_probabilities() -> None:
    logits = torch.tensor([[0.0, -100.0, -1.0]], requires_grad=True)
    attention = torch.softmax(logits, 1)
    for replace in (True, False):
        logits.grad = None
        ats_core.sample_log_prob(
            attention.gather(1, torch.tensor([[1, 0, 2]])), replace
        ).sum().backward(retain_graph=True)
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
