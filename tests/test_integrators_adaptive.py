"""Tests of the adaptive rule (sklearn_nlica.integrators._adaptive)."""

import numpy as np
import pytest
import torch
from integrator_helpers import seeded

from sklearn_nlica import _marginal
from sklearn_nlica.integrators import (
    DEFAULT_INTEGRATOR,
    DEFAULT_N_NODES,
    Adaptive,
    Grid,
    get_integrator,
)


def gaussian_integrand(x, scale, noise):
    """log N(x_b; scale * z, noise^2 I): a Gaussian posterior, exact marginal."""

    def log_integrand(z):
        return (
            torch.distributions.Normal(scale * z, noise).log_prob(x[:, None, :]).sum(-1)
        )

    exact = (
        torch.distributions.Normal(0.0, torch.sqrt(scale**2 + noise**2))
        .log_prob(x)
        .sum(-1)
    )
    return log_integrand, exact


@pytest.mark.parametrize("base", ["auto", "gauss_hermite", "sparse_grid", "qmc"])
def test_adaptive_is_exact_on_gaussian_posteriors(base):
    gen = seeded(3)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 2
    scale = torch.tensor([3.0, 0.5, 1.0, 10.0], dtype=torch.float64)
    log_integrand, exact = gaussian_integrand(x, scale, 0.05)
    rule = Adaptive(base=base).rule(
        4, 64, log_integrand=log_integrand, generator=seeded()
    )
    # At most the budget; near-Gaussian posteriors keep the small rule.
    assert rule.nodes.shape[::2] == (6, 4) and rule.n_nodes <= 64
    assert rule.log_weights.shape == rule.nodes.shape[:2]
    log_p = torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
    np.testing.assert_allclose(log_p, exact, atol=1e-8)


def test_adaptive_without_defensive_nodes_is_exact_to_rounding():
    x = torch.tensor([[3.0], [-1.0], [0.2]], dtype=torch.float64)
    log_integrand, exact = gaussian_integrand(
        x, torch.tensor(1.0, dtype=torch.float64), 0.1
    )
    rule = Adaptive(defensive=0.0).rule(
        1, 9, log_integrand=log_integrand, generator=seeded()
    )
    log_p = torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
    np.testing.assert_allclose(log_p, exact, atol=1e-13)


def test_adaptive_covers_separated_modes():
    # h(z) = N(x; z^2, 0.05^2): two modes at +-sqrt(x) for x > 0.
    x = torch.tensor([[1.0], [2.5], [0.6], [-0.5]], dtype=torch.float64)

    def log_integrand(z):
        return torch.distributions.Normal(z[..., 0] ** 2, 0.05).log_prob(x)

    reference_rule = Grid(half_width=6.0).rule(1, 200_000)
    reference = torch.logsumexp(
        reference_rule.log_weights + log_integrand(reference_rule.nodes[None]), dim=1
    )
    single = Adaptive(n_modes=1).rule(
        1, 32, log_integrand=log_integrand, generator=seeded()
    )
    double = Adaptive(n_modes=2).rule(
        1, 32, log_integrand=log_integrand, generator=seeded()
    )
    log_p = {
        name: torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
        for name, rule in (("single", single), ("double", double))
    }
    # One Laplace component misses a whole mode (log 2 nats); two cover both.
    assert float((log_p["single"][:3] - reference[:3]).abs().min()) > 0.6
    np.testing.assert_allclose(log_p["double"], reference, atol=1e-4)


def test_default_rule_on_bimodal_two_dimensional_posteriors():
    # The multimodal case of the acceptance: m = n = 2, sigma = 0.1 and
    # g(z) = (z1^2 - z2^2, 2 z1 z2), which maps z and -z to the same point, so
    # every posterior has two separated modes. Reference: a fine midpoint grid.
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(40, 2, generator=gen, dtype=torch.float64)

    def decoder(z):
        return torch.stack(
            [z[..., 0] ** 2 - z[..., 1] ** 2, 2 * z[..., 0] * z[..., 1]], -1
        )

    x = decoder(z) + 0.1 * torch.randn(40, 2, generator=gen, dtype=torch.float64)
    fine = Grid(half_width=6.0).rule(2, 1200**2)
    reference = _marginal.log_marginal(x, decoder, fine, 0.01)
    log_integrand = _marginal.gaussian_log_integrand(x, decoder, 0.01)
    errors = {}
    for n_modes in (1, 2):
        rule = Adaptive(n_modes=n_modes).rule(
            2, DEFAULT_N_NODES, log_integrand=log_integrand, generator=seeded()
        )
        estimate = _marginal.log_marginal(x, decoder, rule, 0.01)
        errors[n_modes] = (estimate - reference).abs()
    assert get_integrator(DEFAULT_INTEGRATOR).n_modes == 2
    assert float(errors[2].mean()) < 0.01
    # One Laplace component misses a mode: about log 2 on most points.
    assert float(errors[1].median()) > 0.5


def test_a_mode_on_a_kink_keeps_its_mass():
    # h(z) = N(x; -|z|, 0.1^2) for x = 0.5 (a folding piecewise linear decoder)
    # has its mode on the kink at z = 0, where Newton's steps overshoot and
    # stall with a large decrement; a small smooth bump near z = 2 is a second
    # mode where Newton converges. Warm starts at both (as in training): were
    # the kink handicapped as a stalled start, the defensive prior would swamp
    # its component and the estimate would lose its mass (4 nats low here).
    x = torch.tensor([0.5], dtype=torch.float64)

    def log_integrand(z):
        kink = torch.distributions.Normal(-z[..., 0].abs(), 0.1).log_prob(x)
        bump = torch.distributions.Normal(2.0, 0.3).log_prob(z[..., 0]) - 25.0
        return torch.logaddexp(kink, bump)

    fine = Grid(half_width=6.0).rule(1, 200_000)
    reference = torch.logsumexp(fine.log_weights + log_integrand(fine.nodes[None]), 1)
    warm_start = torch.tensor([[[0.3], [2.0]]], dtype=torch.float64)
    rule = Adaptive().rule(
        1,
        DEFAULT_N_NODES,
        log_integrand=log_integrand,
        generator=seeded(),
        warm_start=warm_start,
    )
    log_p = torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
    assert abs(float(rule.modes[0, 0, 0])) < 0.05  # the kink is the main mode
    # Within the rule's error on a kink (Gauss-Hermite nodes on a cusp).
    np.testing.assert_allclose(log_p, reference, atol=0.3)


def test_adaptive_defensive_nodes_bound_a_missed_mode():
    # A narrow second mode that the search cannot see with 4 nodes: the defensive
    # prior nodes keep the estimate finite and the weights bounded.
    x = torch.tensor([[1.0]], dtype=torch.float64)

    def log_integrand(z):
        return torch.distributions.Normal(z[..., 0] ** 2, 0.05).log_prob(x)

    rule = Adaptive(n_modes=1, n_search=4, n_starts=1).rule(
        1, 16, log_integrand=log_integrand, generator=seeded()
    )
    assert torch.isfinite(rule.log_weights).all()
    assert float(rule.log_weights.exp().sum()) < 2.0


def test_adaptive_float32_and_detached():
    x = torch.randn(5, 3, generator=seeded(), dtype=torch.float32)
    scale = torch.tensor(2.0, requires_grad=True)

    def log_integrand(z):
        return (
            torch.distributions.Normal(scale * z, 0.1).log_prob(x[:, None, :2]).sum(-1)
        )

    rule = Adaptive().rule(
        2, 20, dtype=torch.float32, log_integrand=log_integrand, generator=seeded()
    )
    assert rule.nodes.dtype == rule.log_weights.dtype == torch.float32
    assert not rule.nodes.requires_grad and not rule.log_weights.requires_grad
    assert rule.nodes.shape[::2] == (5, 2) and rule.n_nodes <= 20
    assert scale.grad is None


def test_adaptive_is_reproducible_with_a_seeded_generator():
    x = torch.randn(4, 2, generator=seeded(), dtype=torch.float64)
    log_integrand, _ = gaussian_integrand(
        x, torch.tensor(1.5, dtype=torch.float64), 0.3
    )
    first, second = (
        Adaptive().rule(2, 30, log_integrand=log_integrand, generator=seeded(7))
        for _ in range(2)
    )
    assert torch.equal(first.nodes, second.nodes)
    assert torch.equal(first.log_weights, second.log_weights)


@pytest.mark.parametrize("n_nodes", [1, 2, 3, 7])
def test_adaptive_tiny_budgets(n_nodes):
    x = torch.randn(3, 2, generator=seeded(), dtype=torch.float64)
    log_integrand, exact = gaussian_integrand(
        x, torch.tensor(1.0, dtype=torch.float64), 0.5
    )
    rule = Adaptive().rule(2, n_nodes, log_integrand=log_integrand, generator=seeded())
    assert rule.n_nodes <= n_nodes
    log_p = torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
    np.testing.assert_allclose(log_p, exact, atol=1e-3)


def test_adaptive_with_shared_search_on_the_marginal_integrand():
    # gaussian_log_integrand evaluates the shared search set by one matrix product.
    decoder = torch.nn.Linear(2, 30).double()
    x = decoder(torch.randn(8, 2, generator=seeded(), dtype=torch.float64)).detach()
    log_integrand = _marginal.gaussian_log_integrand(x, decoder, 0.01)
    rule = Adaptive().rule(2, 32, log_integrand=log_integrand, generator=seeded())
    assert rule.nodes.shape[::2] == (8, 2) and rule.n_nodes <= 32


def test_adaptive_with_fewer_starts_than_modes():
    x = torch.randn(3, 2, generator=seeded(), dtype=torch.float64)
    scale = torch.tensor(1.0, dtype=torch.float64)
    log_integrand, exact = gaussian_integrand(x, scale, 0.5)
    rule = Adaptive(n_modes=3, n_search=1, n_starts=1).rule(
        2, 40, log_integrand=log_integrand, generator=seeded()
    )
    assert rule.nodes.shape[::2] == (3, 2) and rule.n_nodes <= 40
    log_p = torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
    np.testing.assert_allclose(log_p, exact, atol=1e-5)


def test_adaptive_uses_the_base_rule_method():
    # The base class checks sizes and parameters and dispatches to _rule.
    assert "rule" not in vars(Adaptive)
    assert "_rule" in vars(Adaptive)
    with pytest.raises(ValueError, match="n_nodes"):
        Adaptive().rule(2, 0, log_integrand=lambda z: z[..., 0])


@pytest.mark.parametrize("base", ["gauss_hermite", "sparse_grid"])
def test_adaptive_base_rules_are_cached_in_the_instance(base, monkeypatch):
    from sklearn_nlica.integrators import _adaptive

    built = []
    name = "_tensor_gauss_hermite" if base == "gauss_hermite" else "_sparse_grid_rule"
    original = getattr(_adaptive, name)

    def counting(*args):
        built.append(args[:3])
        return original(*args)

    monkeypatch.setattr(_adaptive, name, counting)
    n_dims = 2 if base == "gauss_hermite" else 4
    x = torch.randn(3, n_dims, generator=seeded(), dtype=torch.float64)
    log_integrand, _ = gaussian_integrand(
        x, torch.tensor(1.0, dtype=torch.float64), 0.3
    )
    adaptive = Adaptive(base=base, refine_tol=None)
    rules = [
        adaptive.rule(n_dims, 40, log_integrand=log_integrand, generator=seeded(4))
        for _ in range(3)
    ]
    assert len(built) == 1
    fresh = Adaptive(base=base, refine_tol=None).rule(
        n_dims, 40, log_integrand=log_integrand, generator=seeded(4)
    )
    assert len(built) == 2  # per instance, no shared module-level integrator
    for rule in rules:
        assert torch.equal(rule.nodes, fresh.nodes)
        assert torch.equal(rule.log_weights, fresh.log_weights)


def test_warm_starts_near_the_mode_are_kept_without_newton_steps(monkeypatch):
    from sklearn_nlica.integrators import _newton

    gen = seeded(4)
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    log_integrand, exact = gaussian_integrand(x, torch.tensor(1.0).double(), 0.1)
    precision = 1.0 + 1.0 / 0.1**2
    mode = x / 0.1**2 / precision
    # A fifth of a posterior standard deviation off the mode along each axis:
    # a Newton decrement of 0.08, within the warm tolerance, not the cold one.
    warm = (mode + 0.2 / precision**0.5)[:, None, :]
    calls = []
    derivatives = _newton.Posterior.derivatives
    monkeypatch.setattr(
        _newton.Posterior,
        "derivatives",
        lambda self, z, active: (
            calls.append(int(active.sum())) or derivatives(self, z, active)
        ),
    )
    rule = Adaptive().rule(
        2, 64, log_integrand=log_integrand, generator=seeded(), warm_start=warm
    )
    assert calls == [5]  # one evaluation per point, no step, no search
    np.testing.assert_allclose(rule.modes[:, 0], warm[:, 0])
    # The nodes sit on the kept centre; the weights keep the rule exact.
    log_p = torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
    np.testing.assert_allclose(log_p, exact, atol=1e-8)
