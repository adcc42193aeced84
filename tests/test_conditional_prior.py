"""The conditional prior p(z | u): densities and draws against torch's
distributions, the prior as a classifier of u, bounded variances."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Laplace, Normal

from sklearn_nlica._conditional_prior import PRIOR_LOG_VARIANCE_BOUND, ConditionalPrior


@pytest.mark.parametrize("family", ["gaussian", "variance", "laplace"])
@pytest.mark.parametrize("discrete", [True, False])
def test_conditional_prior_log_density_matches_torch(family, discrete):
    torch.manual_seed(0)
    if discrete:
        prior = ConditionalPrior(3, family=family, n_classes=4).double()
        u = torch.tensor([0, 1, 3, 3, 2])
        with torch.no_grad():
            prior.table.weight.normal_()
    else:
        prior = ConditionalPrior(
            3, family=family, n_aux=2, hidden_layer_sizes=(8,)
        ).double()
        u = torch.randn(5, 2, dtype=torch.float64)
        with torch.no_grad():
            prior.net[-1].weight.normal_()
    loc, variance = prior(u)
    if family == "variance":
        assert torch.all(loc == 0)
    z = torch.randn(5, 3, dtype=torch.float64)
    if family == "laplace":
        expected = Laplace(loc, (variance / 2).sqrt()).log_prob(z).sum(-1)
    else:
        expected = Normal(loc, variance.sqrt()).log_prob(z).sum(-1)
    torch.testing.assert_close(prior.log_prob(z, loc, variance), expected)
    # The sampler draws from that same distribution.
    draws = prior.draw(loc[:1].expand(200_000, -1), variance[:1].expand(200_000, -1))
    torch.testing.assert_close(draws.mean(0), loc[0], atol=0.03, rtol=0)
    torch.testing.assert_close(draws.var(0), variance[0], rtol=0.03, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["gaussian", "variance", "laplace"]),
    st.integers(1, 4),
    st.integers(2, 6),
    st.integers(0, 10_000),
)
def test_prior_classifier_is_bayes_rule(family, m, n_classes, seed):
    # log p(u | z) of the contrastive term against Bayes' rule written with
    # torch.distributions: log p(z | u) + log p(u) - log sum_c p(z | c) p(c).
    torch.manual_seed(seed)
    weights = torch.rand(n_classes, dtype=torch.float64) + 0.1
    weights /= weights.sum()
    prior = ConditionalPrior(
        m, family=family, n_classes=n_classes, class_weights=weights.numpy()
    ).double()
    with torch.no_grad():
        prior.table.weight.normal_()
    z = 2 * torch.randn(7, m, dtype=torch.float64)
    u = torch.randint(n_classes, (7,))
    loc, variance = prior(torch.arange(n_classes))
    if family == "laplace":
        dist = Laplace(loc, (variance / 2).sqrt())
    else:
        dist = Normal(loc, variance.sqrt())
    joint = dist.log_prob(z.unsqueeze(1)).sum(-1) + weights.log()  # (7, C)
    expected = joint.log_softmax(dim=1).gather(1, u[:, None]).squeeze(1)
    got = prior.log_posterior(z, u, *prior(u))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(
        prior.log_prob_table(z, loc, variance), dist.log_prob(z.unsqueeze(1)).sum(-1)
    )


def test_prior_classifier_continuous_u_is_the_contrastive_estimate():
    # Without classes to sum over, the rows' own u stand in for p(u).
    torch.manual_seed(0)
    prior = ConditionalPrior(3, n_aux=2, hidden_layer_sizes=(8,)).double()
    with torch.no_grad():
        prior.net[-1].weight.normal_()
    z, u = (
        torch.randn(6, 3, dtype=torch.float64),
        torch.randn(6, 2, dtype=torch.float64),
    )
    loc, variance = prior(u)
    table = torch.stack(
        [Normal(loc[j], variance[j].sqrt()).log_prob(z).sum(-1) for j in range(6)],
        dim=1,
    )
    expected = table.diagonal() - torch.logsumexp(table, 1) + np.log(6)
    torch.testing.assert_close(prior.log_posterior(z, u, loc, variance), expected)


def test_prior_log_variance_is_bounded():
    prior = ConditionalPrior(2, n_classes=2).double()
    with torch.no_grad():
        prior.table.weight.fill_(1e6)
    _, variance = prior(torch.tensor([0, 1]))
    assert torch.all(torch.log(variance) <= PRIOR_LOG_VARIANCE_BOUND)
    assert torch.isfinite(variance).all()
