"""Tests of the marginal likelihood numerics (sklearn_nlica._marginal)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_nlica._marginal import (
    NonPositiveIntegralError,
    analytic_decoder_grad,
    analytic_noise_variance_grad,
    em_surrogate,
    expected_squared_distance,
    gaussian_log_integrand,
    gaussian_loglik_matrix,
    log_marginal,
    optimal_noise_variance,
    posterior_mean,
    posterior_weights,
    signed_logsumexp,
)
from sklearn_nlica.integrators import (
    Adaptive,
    GaussHermite,
    Rule,
    SparseGrid,
    get_integrator,
)

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)
F64 = torch.float64


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def ppca(n_dims, n_features, sigma, n_points=20, scale=1.0, seed=0, dtype=F64):
    """A linear decoder, data from it, and the closed forms of log p(x) and E[z|x]."""
    gen = seeded(seed)
    weight = scale * torch.randn(n_features, n_dims, generator=gen, dtype=F64)
    bias = torch.randn(n_features, generator=gen, dtype=F64)
    decoder = torch.nn.Linear(n_dims, n_features).to(dtype)
    with torch.no_grad():
        decoder.weight.copy_(weight)
        decoder.bias.copy_(bias)
    z = torch.randn(n_points, n_dims, generator=gen, dtype=F64)
    x = (
        z @ weight.T
        + bias
        + sigma * torch.randn(n_points, n_features, generator=gen, dtype=F64)
    )
    weight, bias = decoder.weight.detach().double(), decoder.bias.detach().double()
    x = x.to(dtype)
    cov = weight @ weight.T + sigma**2 * torch.eye(n_features, dtype=F64)
    log_p = torch.distributions.MultivariateNormal(bias, cov).log_prob(x.double())
    precision = torch.eye(n_dims, dtype=F64) + weight.T @ weight / sigma**2
    mean = torch.linalg.solve(precision, weight.T @ (x.double() - bias).T / sigma**2).T
    return decoder, x, log_p, mean


def adaptive_rule(x, decoder, variance, n_nodes=64, dtype=F64):
    return Adaptive().rule(
        decoder.in_features,
        n_nodes,
        dtype=dtype,
        generator=seeded(),
        log_integrand=gaussian_log_integrand(x, decoder, variance),
    )


# ---------------------------------------------------------------------------
# Signed log-sum-exp
# ---------------------------------------------------------------------------


def test_signed_logsumexp_without_signs_is_logsumexp():
    values = torch.randn(4, 7, dtype=F64) * 50
    assert torch.equal(
        signed_logsumexp(values, None, dim=1), torch.logsumexp(values, 1)
    )


@SETTINGS
@given(st.lists(st.floats(-30, 30), min_size=2, max_size=8), st.integers(0, 2**16))
def test_signed_logsumexp_value_and_gradient(values, seed):
    values = torch.tensor(values, dtype=F64, requires_grad=True)
    signs = torch.where(
        torch.rand(len(values), generator=seeded(seed)) < 0.3, -1.0, 1.0
    )
    signs = signs.to(F64)
    total = float((signs * values.detach().exp()).sum())
    if total <= 1e-9 * float(values.detach().exp().sum()):
        with pytest.raises(NonPositiveIntegralError):
            signed_logsumexp(values, signs)
        return
    out = signed_logsumexp(values, signs)
    assert float(out.detach()) == pytest.approx(math.log(total), rel=1e-9, abs=1e-9)
    (grad,) = torch.autograd.grad(out, values)
    torch.testing.assert_close(grad, signs * (values.detach() - out.detach()).exp())


def test_signed_logsumexp_error_names_the_fix():
    with pytest.raises(NonPositiveIntegralError, match="another rule") as info:
        signed_logsumexp(torch.tensor([[0.0, 1.0]]), torch.tensor([1.0, -1.0]), dim=1)
    assert isinstance(info.value, ValueError) and isinstance(
        info.value, FloatingPointError
    )


# ---------------------------------------------------------------------------
# Gaussian log-likelihood matrix
# ---------------------------------------------------------------------------


@SETTINGS
@given(
    n_points=st.integers(1, 5),
    n_nodes=st.integers(1, 6),
    n_features=st.integers(1, 40),
    offset=st.sampled_from([0.0, 100.0]),
    variance=st.floats(0.01, 4.0),
    seed=st.integers(0, 2**16),
)
def test_matrix_product_equals_differences(
    n_points, n_nodes, n_features, offset, variance, seed
):
    gen = seeded(seed)
    x = offset + torch.randn(n_points, n_features, generator=gen, dtype=F64)
    means = offset + torch.randn(n_nodes, n_features, generator=gen, dtype=F64)
    product = gaussian_loglik_matrix(x, means, variance)
    direct = gaussian_loglik_matrix(
        x, means.expand(n_points, -1, -1), variance, chunk_size=2
    )
    naive = (
        torch.distributions.Normal(means, math.sqrt(variance))
        .log_prob(x[:, None, :])
        .sum(-1)
    )
    assert product.shape == (n_points, n_nodes)
    torch.testing.assert_close(product, direct, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(direct, naive, rtol=1e-12, atol=1e-10)


def test_float32_distances_are_accumulated_in_float64():
    # n = 1000, sigma = 0.1: ||x||^2 - 2 x.g + ||g||^2 cancels badly in float32.
    gen = seeded(1)
    x = 3.0 + torch.randn(8, 1000, generator=gen)
    means = x[:4] + 0.1 * torch.randn(4, 1000, generator=gen)
    result = gaussian_loglik_matrix(x, means, 0.01)
    exact = gaussian_loglik_matrix(x.double(), means.double(), 0.01)
    assert result.dtype == F64
    torch.testing.assert_close(result, exact, rtol=0, atol=1e-6)
    # What a float32 expansion would lose, for the record:
    x32, g32 = x - x.mean(0), means - x.mean(0)
    expanded = (x32**2).sum(1, keepdim=True) - 2 * x32 @ g32.T + (g32**2).sum(1)
    assert (
        float(
            (
                expanded.double()
                - (-2 * 0.01) * (exact + 500 * math.log(2 * math.pi * 0.01))
            )
            .abs()
            .max()
        )
        / 0.02
        > 1e-3
    )


def test_gaussian_log_integrand_shared_and_per_point_agree():
    decoder = torch.nn.Sequential(
        torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 7)
    ).double()
    x = torch.randn(3, 7, generator=seeded(), dtype=F64)
    z = torch.randn(1, 9, 2, generator=seeded(1), dtype=F64)
    log_integrand = gaussian_log_integrand(x, decoder, 0.3)
    shared = log_integrand(z)
    per_point = gaussian_log_integrand(x, decoder, 0.3, chunk_size=2)(
        z.expand(3, -1, -1)
    )
    torch.testing.assert_close(shared, per_point)


# ---------------------------------------------------------------------------
# Log-likelihood against the closed form (probabilistic PCA)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,n_nodes,tolerance",
    [
        ("monte_carlo", 4096, 0.25),
        ("qmc", 4096, 0.02),
        ("grid", 3600, 5e-5),
        ("gauss_hermite", 400, 2e-5),
        ("sparse_grid", 300, 0.03),
        ("adaptive", 64, 2e-6),
    ],
)
def test_log_marginal_matches_ppca_in_the_wide_regime(name, n_nodes, tolerance):
    decoder, x, exact, _ = ppca(2, 3, 1.0, scale=0.5)
    rule = get_integrator(name).rule(
        2,
        n_nodes,
        generator=seeded(),
        log_integrand=gaussian_log_integrand(x, decoder, 1.0),
    )
    log_p = log_marginal(x, decoder, rule, 1.0)
    assert log_p.shape == (20,)
    torch.testing.assert_close(log_p, exact, rtol=0, atol=tolerance)


@pytest.mark.parametrize("n_dims,n_features", [(2, 1000), (3, 200)])
def test_adaptive_is_exact_in_the_narrow_regime(n_dims, n_features):
    decoder, x, exact, mean = ppca(n_dims, n_features, 0.1)
    rule = adaptive_rule(x, decoder, 0.01)
    torch.testing.assert_close(
        log_marginal(x, decoder, rule, 0.01), exact, rtol=0, atol=1e-8
    )
    torch.testing.assert_close(
        posterior_mean(x, decoder, rule, 0.01), mean, rtol=0, atol=1e-8
    )


def test_prior_rules_fail_in_the_narrow_regime():
    decoder, x, exact, _ = ppca(2, 1000, 0.1)
    decoder.requires_grad_(False)
    rule = GaussHermite().rule(2, 4096)
    assert float((log_marginal(x, decoder, rule, 0.01) - exact).abs().min()) > 1.0
    with pytest.raises(NonPositiveIntegralError, match="adaptive"):
        log_marginal(x, decoder, SparseGrid().rule(2, 1000), 0.01)


def test_float32_log_marginal_is_accurate():
    decoder, x, exact, _ = ppca(2, 1000, 0.1, dtype=torch.float32)
    rule = adaptive_rule(x, decoder, 0.01, dtype=torch.float32)
    log_p = log_marginal(x, decoder, rule, 0.01)
    assert log_p.dtype == torch.float32
    # The float32 result itself is rounded to about 6e-8 relative (|log p| ~ 900).
    torch.testing.assert_close(log_p.double(), exact, rtol=0, atol=2e-4)


def test_posterior_weights_and_mean():
    decoder, x, _, mean = ppca(2, 3, 1.0, scale=0.5)
    rule = GaussHermite().rule(2, 400)
    weights = posterior_weights(x, decoder, rule, 1.0)
    assert weights.shape == (20, 400)
    torch.testing.assert_close(weights.sum(1), torch.ones(20, dtype=F64))
    torch.testing.assert_close(
        posterior_mean(x, decoder, rule, 1.0), mean, rtol=0, atol=1e-5
    )
    signed = SparseGrid().rule(2, 300)
    torch.testing.assert_close(
        posterior_weights(x, decoder, signed, 1.0).sum(1), torch.ones(20, dtype=F64)
    )


@pytest.mark.parametrize("shared", [True, False])
def test_chunks_give_the_same_values_and_gradients(shared):
    decoder = torch.nn.Sequential(
        torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5)
    ).double()
    x = torch.randn(7, 5, generator=seeded(), dtype=F64)
    variance = torch.tensor(0.5, dtype=F64, requires_grad=True)
    if shared:
        rule = GaussHermite().rule(2, 49)
    else:
        rule = Adaptive().rule(
            2,
            20,
            generator=seeded(),
            log_integrand=gaussian_log_integrand(x, decoder, 0.5),
        )
    params = [*decoder.parameters(), variance]
    outputs = {}
    for chunk_size in (None, 3):
        log_p = log_marginal(x, decoder, rule, variance, chunk_size=chunk_size)
        outputs[chunk_size] = (log_p, torch.autograd.grad(log_p.sum(), params))
    torch.testing.assert_close(outputs[None][0], outputs[3][0])
    for a, b in zip(outputs[None][1], outputs[3][1]):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(
        posterior_mean(x, decoder, rule, 0.5),
        posterior_mean(x, decoder, rule, 0.5, chunk_size=3),
    )
    torch.testing.assert_close(
        em_surrogate(x, decoder, rule, 0.5),
        em_surrogate(x, decoder, rule, 0.5, chunk_size=3),
    )


def test_bad_inputs_raise():
    decoder = torch.nn.Linear(2, 3).double()
    x = torch.randn(4, 3, dtype=F64)
    rule = Rule(torch.zeros(5, 8, 2, dtype=F64), torch.zeros(5, 8, dtype=F64))
    with pytest.raises(ValueError, match="per-point nodes for 5 points"):
        log_marginal(x, decoder, rule, 1.0)
    with pytest.raises(ValueError, match="noise_variance"):
        log_marginal(x, decoder, GaussHermite().rule(2, 4), 0.0)


# ---------------------------------------------------------------------------
# Gradients: Fisher's identity, closed forms, finite differences
# ---------------------------------------------------------------------------


def make_decoder(n_dims, n_features, hidden, seed):
    torch.manual_seed(seed)
    if hidden:
        return torch.nn.Sequential(
            torch.nn.Linear(n_dims, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, n_features),
        ).double()
    return torch.nn.Linear(n_dims, n_features).double()


def make_rule(kind, n_points, n_dims, n_nodes, gen):
    nodes = torch.randn(n_nodes, n_dims, generator=gen, dtype=F64)
    log_weights = torch.randn(n_nodes, generator=gen, dtype=F64)
    if kind == "shared":
        return Rule(nodes, log_weights)
    if kind == "per_point":
        return Rule(
            torch.randn(n_points, n_nodes, n_dims, generator=gen, dtype=F64),
            torch.randn(n_points, n_nodes, generator=gen, dtype=F64),
        )
    # Signed: every node repeated with a smaller negative weight, so that sums
    # stay positive whatever the integrand.
    return Rule(
        torch.cat([nodes, nodes]),
        torch.cat([log_weights, log_weights + math.log(0.4)]),
        torch.cat([torch.ones(n_nodes, dtype=F64), -torch.ones(n_nodes, dtype=F64)]),
    )


@SETTINGS
@given(
    n_points=st.integers(1, 4),
    n_dims=st.integers(1, 2),
    n_features=st.integers(1, 5),
    hidden=st.sampled_from([0, 3]),
    n_nodes=st.integers(1, 6),
    kind=st.sampled_from(["shared", "per_point", "signed"]),
    variance=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**16),
)
def test_analytic_gradients_equal_autograd_and_finite_differences(
    n_points, n_dims, n_features, hidden, n_nodes, kind, variance, seed
):
    gen = seeded(seed)
    decoder = make_decoder(n_dims, n_features, hidden, seed)
    params = list(decoder.parameters())
    x = 2 * torch.randn(n_points, n_features, generator=gen, dtype=F64)
    rule = make_rule(kind, n_points, n_dims, n_nodes, gen)
    noise = torch.tensor(variance, dtype=F64, requires_grad=True)

    total = log_marginal(x, decoder, rule, noise).sum()
    auto = torch.autograd.grad(total, [*params, noise])
    analytic = analytic_decoder_grad(x, decoder, rule, variance)
    analytic_noise = analytic_noise_variance_grad(x, decoder, rule, variance)
    surrogate = torch.autograd.grad(
        em_surrogate(x, decoder, rule, noise).sum(), [*params, noise]
    )
    for a, b, c in zip(auto[:-1], analytic, surrogate[:-1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(a, c, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(auto[-1], analytic_noise, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(auto[-1], surrogate[-1], rtol=1e-8, atol=1e-10)

    # Central differences: sigma^2, and the parameters along a random direction.
    def objective(shift, noise_shift=0.0):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(shift * d)
            value = float(log_marginal(x, decoder, rule, variance + noise_shift).sum())
            for p, d in zip(params, direction):
                p.sub_(shift * d)
        return value

    direction = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
    step = 1e-5
    numeric = (objective(step) - objective(-step)) / (2 * step)
    expected = sum(float((g * d).sum()) for g, d in zip(analytic, direction))
    assert numeric == pytest.approx(expected, rel=1e-5, abs=1e-6)
    step = 1e-6 * variance
    numeric = (objective(0.0, step) - objective(0.0, -step)) / (2 * step)
    assert numeric == pytest.approx(float(analytic_noise), rel=1e-5, abs=1e-6)


def test_em_step_for_the_noise_variance():
    decoder, x, _, _ = ppca(2, 6, 0.7, scale=0.8)
    rule = GaussHermite().rule(2, 400)
    weights = posterior_weights(x, decoder, rule, 1.0)
    updated = optimal_noise_variance(x, decoder, rule, 1.0)
    torch.testing.assert_close(
        updated, optimal_noise_variance(x, decoder, rule, 1.0, weights=weights)
    )
    sq = expected_squared_distance(x, decoder, rule, 1.0)
    torch.testing.assert_close(updated, sq.sum() / (6 * 20))
    # The M-step is the stationary point of the surrogate with the weights held.
    grad = analytic_noise_variance_grad(x, decoder, rule, updated, weights=weights)
    assert abs(float(grad)) < 1e-8 * float(sq.sum())
    # ... and, as every EM step, it does not decrease the likelihood.
    with torch.no_grad():
        before = log_marginal(x, decoder, rule, 1.0).sum()
        after = log_marginal(x, decoder, rule, updated).sum()
    assert float(after) >= float(before)


def test_em_surrogate_with_held_weights_is_the_m_step_objective():
    decoder, x, _, _ = ppca(2, 4, 0.5)
    rule = GaussHermite().rule(2, 100)
    weights = posterior_weights(x, decoder, rule, 0.25)
    q = em_surrogate(x, decoder, rule, 0.5, weights=weights)
    loglik = gaussian_loglik_matrix(x, decoder(rule.nodes), 0.5)
    torch.testing.assert_close(q, (weights * loglik).sum(1))
