"""Tests of the marginal likelihood numerics (sklearn_nlica._marginal)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_nlica._densities import gaussian_loglik_matrix
from sklearn_nlica._marginal import (
    NonPositiveIntegralError,
    e_step,
    em_surrogate,
    gaussian_log_integrand,
    log_marginal,
    posterior_mean,
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


# ---------------------------------------------------------------------------
# Test-only oracles: the E-step quantities and Fisher's identity written out
# directly, without chunking or the matrix-product expansion.
# ---------------------------------------------------------------------------


def node_means(decoder, rule):
    """g at the rule's nodes: (K, n) for shared nodes, (B, K, n) per point."""
    z = rule.nodes
    g = decoder(z.reshape(-1, z.shape[-1]))
    return g.reshape(z.shape[:-1] + g.shape[-1:])


def posterior_weights(x, decoder, rule, noise_variance):
    return e_step(x, decoder, rule, noise_variance)[1]


def expected_squared_distance(x, decoder, rule, noise_variance, weights=None):
    """sum_j r_ij ||x_i - g(z_j)||^2."""
    if weights is None:
        weights = posterior_weights(x, decoder, rule, noise_variance)
    with torch.no_grad():
        sq = (x[:, None, :] - node_means(decoder, rule)).square().sum(-1)
    return (weights * sq).sum(1)


def optimal_noise_variance(x, decoder, rule, noise_variance, weights=None):
    """The M-step sum_ij r_ij ||x_i - g(z_j)||^2 / (n sum_ij r_ij)."""
    sq = expected_squared_distance(x, decoder, rule, noise_variance, weights)
    total = x.shape[0] if weights is None else weights.sum()
    return sq.sum() / (x.shape[1] * total)


def analytic_noise_variance_grad(x, decoder, rule, noise_variance, weights=None):
    """sum_ij r_ij (||x_i - g(z_j)||^2 / sigma^2 - n) / (2 sigma^2)."""
    sq = expected_squared_distance(x, decoder, rule, noise_variance, weights)
    variance = torch.as_tensor(noise_variance, dtype=F64).detach()
    total = 1.0 if weights is None else weights.sum(1)
    return ((sq / variance - x.shape[1] * total) / (2.0 * variance)).sum()


def analytic_decoder_grad(x, decoder, rule, noise_variance):
    """sum_ij r_ij (x_i - g(z_j))^T dg(z_j)/d theta / sigma^2."""
    r = posterior_weights(x, decoder, rule, noise_variance)
    params = [p for p in decoder.parameters() if p.requires_grad]
    means = node_means(decoder, rule)
    residual = (x[:, None, :] - means).detach()
    objective = (r[..., None] * residual * means).sum() / noise_variance
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


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
# The log-integrand
# ---------------------------------------------------------------------------


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


@pytest.mark.parametrize("kind", ["shared", "per_point", "signed"])
def test_e_step_gives_log_p_weights_and_residuals_in_one_pass(kind):
    decoder, x, _, _ = ppca(2, 5, 0.6, scale=0.8)
    gen = seeded(3)
    rule = make_rule(kind, len(x), 2, 30, gen)
    log_p, weights, residual = e_step(x, decoder, rule, 0.36)
    torch.testing.assert_close(log_p, log_marginal(x, decoder, rule, 0.36))
    torch.testing.assert_close(weights.sum(1), torch.ones(len(x), dtype=F64))
    signed = torch.exp(_direct_terms(x, decoder, rule, 0.36))
    if rule.signs is not None:
        signed = signed * rule.signs
    torch.testing.assert_close(weights, signed / signed.sum(1, keepdim=True))
    torch.testing.assert_close(
        residual, expected_squared_distance(x, decoder, rule, 0.36, weights)
    )
    # Chunked over nodes or rows: the same three results.
    chunked = e_step(x, decoder, rule, 0.36, chunk_size=7)
    for a, b in zip((log_p, weights, residual), chunked):
        torch.testing.assert_close(a, b)


def _direct_terms(x, decoder, rule, variance):
    """log w_j + log N(x_i; g(z_j), sigma^2 I) by direct differences."""
    sq = (x[:, None, :] - node_means(decoder, rule)).square().sum(-1)
    n = x.shape[1]
    loglik = -0.5 * (sq / variance + n * math.log(2 * math.pi * variance))
    return rule.log_weights + loglik
