"""Closed-form densities and KL divergences against torch.distributions and
Monte Carlo, over hypothesis-generated means and variances (float64), and the
log-likelihood matrix of many points under many means."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from sklearn_nlica._densities import (
    gaussian_loglik_matrix,
    kl_diag_diag,
    kl_diag_standard,
    log_normal_diag,
    log_normal_isotropic,
    log_standard_normal,
)

F64 = torch.float64
means = st.floats(-5, 5, allow_nan=False)
variances = st.floats(1e-3, 20, allow_nan=False)


def diagonal_gaussians(dim):
    return st.tuples(
        st.lists(means, min_size=dim, max_size=dim),
        st.lists(variances, min_size=dim, max_size=dim),
    )


def diagonal(mean, variance):
    return Independent(Normal(mean, variance.sqrt()), 1)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda d: st.tuples(diagonal_gaussians(d), diagonal_gaussians(d))
    )
)
def test_kl_diag_diag_matches_torch(pair):
    (mq, vq), (mp, vp) = [
        (torch.tensor(m, dtype=torch.float64), torch.tensor(v, dtype=torch.float64))
        for m, v in pair
    ]
    expected = kl_divergence(diagonal(mq, vq), diagonal(mp, vp))
    torch.testing.assert_close(
        kl_diag_diag(mq, vq, mp, vp), expected, rtol=1e-10, atol=1e-10
    )


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(diagonal_gaussians))
def test_kl_diag_standard_matches_torch_and_general_form(q):
    mq, vq = (torch.tensor(a, dtype=torch.float64) for a in q)
    zero, one = torch.zeros_like(mq), torch.ones_like(vq)
    expected = kl_divergence(diagonal(mq, vq), diagonal(zero, one))
    torch.testing.assert_close(
        kl_diag_standard(mq, vq), expected, rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(
        kl_diag_standard(mq, vq), kl_diag_diag(mq, vq, zero, one)
    )
    assert kl_diag_standard(mq, vq) >= 0


@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 3).flatmap(
        lambda d: st.tuples(
            st.lists(st.floats(-2, 2), min_size=d, max_size=d),
            st.lists(st.floats(0.1, 3), min_size=d, max_size=d),
            st.lists(st.floats(-2, 2), min_size=d, max_size=d),
            st.lists(st.floats(0.3, 3), min_size=d, max_size=d),
        )
    )
)
def test_kl_matches_large_monte_carlo(params):
    mq, vq, mp, vp = (torch.tensor(a, dtype=torch.float64) for a in params)
    generator = torch.Generator().manual_seed(0)
    n = 400_000
    z = mq + vq.sqrt() * torch.randn(
        n, len(mq), dtype=torch.float64, generator=generator
    )
    log_ratio = log_normal_diag(z, mq, vq) - log_normal_diag(z, mp, vp)
    estimate = log_ratio.mean()
    # Five standard errors of the Monte Carlo mean: fails by chance < 1e-6.
    tolerance = 5 * log_ratio.std() / n**0.5 + 1e-12
    assert abs(estimate - kl_diag_diag(mq, vq, mp, vp)) < tolerance


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda d: st.tuples(
            st.lists(means, min_size=d, max_size=d),
            st.lists(means, min_size=d, max_size=d),
            variances,
        )
    )
)
def test_log_normal_isotropic_matches_multivariate_normal(params):
    x, mean, variance = params
    x, mean = (
        torch.tensor(x, dtype=torch.float64),
        torch.tensor(mean, dtype=torch.float64),
    )
    cov = variance * torch.eye(len(x), dtype=torch.float64)
    expected = MultivariateNormal(mean, cov).log_prob(x)
    torch.testing.assert_close(
        log_normal_isotropic(x, mean, torch.tensor(variance, dtype=torch.float64)),
        expected,
    )


def test_log_densities_broadcast_and_match_normal():
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(7, 4, 3, dtype=torch.float64, generator=generator)
    mean = torch.randn(7, 1, 3, dtype=torch.float64, generator=generator)
    variance = torch.rand(7, 1, 3, dtype=torch.float64, generator=generator) + 0.1
    torch.testing.assert_close(
        log_normal_diag(z, mean, variance),
        Normal(mean, variance.sqrt()).log_prob(z).sum(-1),
    )
    torch.testing.assert_close(
        log_standard_normal(z), Normal(0.0, 1.0).log_prob(z).sum(-1)
    )
    # One variance per leading index broadcasts like the mean does.
    per_row = torch.rand(7, 4, dtype=torch.float64, generator=generator) + 0.5
    expected = Normal(mean, per_row.unsqueeze(-1).sqrt()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal_isotropic(z, mean, per_row), expected)


# ---------------------------------------------------------------------------
# Gaussian log-likelihood matrix
# ---------------------------------------------------------------------------


@settings(max_examples=20, deadline=None, derandomize=True)
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
    gen = torch.Generator().manual_seed(seed)
    x = offset + torch.randn(n_points, n_features, generator=gen, dtype=torch.float64)
    means = offset + torch.randn(
        n_nodes, n_features, generator=gen, dtype=torch.float64
    )
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
    gen = torch.Generator().manual_seed(1)
    x = 3.0 + torch.randn(8, 1000, generator=gen)
    means = x[:4] + 0.1 * torch.randn(4, 1000, generator=gen)
    result = gaussian_loglik_matrix(x, means, 0.01)
    exact = gaussian_loglik_matrix(x.double(), means.double(), 0.01)
    assert result.dtype == torch.float64
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
