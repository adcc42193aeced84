"""Closed-form densities and KL divergences against torch.distributions and
Monte Carlo, over hypothesis-generated means and variances (float64)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from sklearn_nlica._densities import (
    kl_diag_diag,
    kl_diag_standard,
    log_normal_diag,
    log_normal_isotropic,
    log_standard_normal,
)

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
