"""Tests of the maximum-likelihood objective module (sklearn_nlica._likelihood)."""

import pytest
import torch

from sklearn_nlica._likelihood import MarginalLikelihood
from sklearn_nlica._marginal import log_marginal_from_values
from sklearn_nlica._nn import GaussianDecoder
from sklearn_nlica.integrators import Adaptive

F64 = torch.float64


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def module_and_data(hidden=(), n_features=7, n_points=30):
    torch.manual_seed(0)
    decoder = GaussianDecoder(
        2, n_features, hidden, "leaky_relu", noise_variance=0.05
    ).to(F64)
    z = torch.randn(n_points, 2, generator=seeded(1), dtype=F64)
    with torch.no_grad():
        x = decoder.mean(z) + 0.2 * torch.randn(
            n_points, n_features, generator=seeded(2), dtype=F64
        )
    return MarginalLikelihood(decoder, 2, Adaptive(), 64), x


def closed_form(module, x):
    """log N(x; b, W W^T + sigma^2 I) of a linear decoder."""
    out = module.decoder.out
    cov = out.weight @ out.weight.T + module.noise_variance() * torch.eye(x.shape[1])
    return torch.distributions.MultivariateNormal(out.bias, cov).log_prob(x)


def test_linear_decoder_matches_the_ppca_closed_form():
    # Exact up to the defensive prior component's share (a_0 = 1e-6 nats).
    module, x = module_and_data()
    with torch.no_grad():
        rule = module.rule(x, generator=seeded())
        assert rule.values is not None  # adaptive: the integrand is known
        torch.testing.assert_close(
            module.log_likelihood(x, rule), closed_form(module, x), rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("hidden", [(), (8,)])
def test_rule_values_serve_only_the_parameters_they_were_computed_at(hidden):
    module, x = module_and_data(hidden)
    with torch.no_grad():
        rule = module.rule(x, generator=seeded())
        decoded = rule._replace(values=None)  # forces a decoder pass
        torch.testing.assert_close(
            module.log_likelihood(x, rule), module.log_likelihood(x, decoded)
        )
        for p in module.parameters():
            p.mul_(1.01)
        moved = module.log_likelihood(x, rule)
        torch.testing.assert_close(moved, module.log_likelihood(x, decoded))
        stale = log_marginal_from_values(rule, rule.values)
        assert (moved - stale).abs().max() > 1e-2


def test_first_m_step_from_the_rule_values_equals_a_decoder_pass():
    module, x = module_and_data((8,))
    rule = module.rule(x, generator=seeded())
    _, weights, _ = module.e_step(x, rule)
    reused = module.em_surrogate(x, rule, weights, reuse=True)
    decoded = module.em_surrogate(x, rule, weights)
    torch.testing.assert_close(reused, decoded)
    params = list(module.decoder.parameters())
    for a, b in zip(
        torch.autograd.grad(reused.sum(), params),
        torch.autograd.grad(decoded.sum(), params),
    ):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n_features", [7, 40])  # direct and Gram-form paths
def test_reduced_precision_m_step_matches_float64_to_float32_rounding(n_features):
    module, x = module_and_data((16, 16), n_features=n_features)
    with torch.no_grad():
        rule = module.rule(x, generator=seeded())
    _, weights, _ = module.e_step(x, rule)
    exact = module.em_surrogate(x, rule, weights)
    reduced = module.em_surrogate(x, rule, weights, reduced_precision=True)
    assert reduced.dtype == F64
    torch.testing.assert_close(reduced, exact, rtol=1e-5, atol=1e-4)
    params = list(module.decoder.parameters())
    for a, b in zip(
        torch.autograd.grad(reduced.sum(), params, allow_unused=True),
        torch.autograd.grad(exact.sum(), params, allow_unused=True),
    ):
        if a is None:
            assert b is None
            continue
        assert a.dtype == F64
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max())
