"""The objective modules (sklearn_nlica._models) against closed forms.

A linear decoder g(z) = W z + b is probabilistic PCA: p(x) = N(b, W W^T +
sigma^2 I), and with the encoder set to the exact posterior the importance
weights are constant, so every importance-weighted estimate is log p(x) to
rounding, and the ELBO is too.
"""

import numpy as np
import pytest
import torch

from sklearn_nlica._conditional_prior import ConditionalPrior
from sklearn_nlica._densities import inverse_positive
from sklearn_nlica._models import (
    VAE,
    IdentifiableVAEModule,
    MarginalLikelihood,
    training_rule,
)
from sklearn_nlica._nn import (
    FullCovarianceGaussianEncoder,
    GaussianDecoder,
    GaussianEncoder,
)
from sklearn_nlica.integrators import QMC, Adaptive, GaussHermite

F64 = torch.float64
SIGMA2 = 0.3


def linear_gaussian(orthogonal, seed=0, n=6, m=2, rows=25):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, m, generator=gen, dtype=F64)
    if orthogonal:
        W = torch.linalg.qr(W).Q * torch.tensor([2.0, 0.7], dtype=F64)
    b = torch.randn(n, generator=gen, dtype=F64)
    x = torch.randn(rows, n, generator=gen, dtype=F64) * 2 + b
    cov = W @ W.T + SIGMA2 * torch.eye(n, dtype=F64)
    log_p = torch.distributions.MultivariateNormal(b, cov).log_prob(x)
    precision = torch.eye(m, dtype=F64) + W.T @ W / SIGMA2
    post_cov = torch.linalg.inv(precision)
    A = post_cov @ W.T / SIGMA2  # E[z | x] = A (x - b)
    return W, b, x, log_p, A, post_cov


def linear_decoder(W, b):
    decoder = GaussianDecoder(W.shape[1], W.shape[0], (), "identity").double()
    decoder.set_linear(W, b)
    decoder.set_noise_variance(SIGMA2)
    return decoder


def set_mean_head(encoder, A, b):
    with torch.no_grad():
        encoder.mean.weight.copy_(A)
        encoder.mean.bias.copy_(-A @ b)


def test_vae_module_is_exact_with_the_true_posterior():
    W, b, x, log_p, A, post_cov = linear_gaussian(orthogonal=True)
    encoder = GaussianEncoder(6, 2, (), "identity").double()
    set_mean_head(encoder, A, b)
    with torch.no_grad():
        encoder.raw_variance.weight.zero_()
        encoder.raw_variance.bias.copy_(inverse_positive(post_cov.diagonal()))
    vae = VAE(encoder, linear_decoder(W, b), QMC(), 1)
    rule = vae.rule(x, 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(vae.log_likelihood(x, rule), log_p)
        # The ELBO is exact for a linear decoder with 2 GH nodes per axis.
        exact_rule = GaussHermite().rule(2, 4, dtype=F64)
        torch.testing.assert_close(vae.score_samples(x, exact_rule), log_p)
        torch.testing.assert_close(vae.posterior_mean(x, rule), (x - b) @ A.T)


def ivae_module(W, b, A, post_cov, n_classes=1):
    encoder = FullCovarianceGaussianEncoder(6, 2, (), "identity").double()
    set_mean_head(encoder, A, b)
    chol = torch.linalg.cholesky(post_cov)
    scale = chol.diagonal()
    with torch.no_grad():
        encoder.raw_variance.weight.zero_()
        encoder.raw_variance.bias.copy_(inverse_positive(scale.square()))
        encoder.off_diagonal.weight.zero_()
        encoder.off_diagonal.bias.copy_(chol[1, 0] / scale[0])
    prior = ConditionalPrior(2, n_classes=n_classes).double()
    return IdentifiableVAEModule(
        encoder,
        linear_decoder(W, b),
        prior,
        QMC(),
        1,
        reference_u=torch.arange(n_classes),
        reference_log_p=torch.full((n_classes,), -np.log(n_classes), dtype=F64),
    )


def test_ivae_module_is_exact_with_the_true_posterior():
    # A full posterior covariance (W's columns are not orthogonal), and one
    # class whose prior is the standard normal: the model is pPCA.
    W, b, x, log_p, A, post_cov = linear_gaussian(orthogonal=False)
    module = ivae_module(W, b, A, post_cov)
    u = torch.zeros(len(x), dtype=torch.long)
    rule = module.rule(x, 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(module.log_likelihood(x, rule, u=u), log_p)
        torch.testing.assert_close(module.log_likelihood(x, rule), log_p)
        exact_rule = GaussHermite().rule(2, 4, dtype=F64)
        torch.testing.assert_close(module.score_samples(x, exact_rule, u=u), log_p)
        torch.testing.assert_close(module.score_samples(x, exact_rule), log_p)


def test_ivae_scores_without_u_mix_over_the_reference():
    W, b, x, _, A, post_cov = linear_gaussian(orthogonal=False)
    module = ivae_module(W, b, A, post_cov, n_classes=3)
    with torch.no_grad():
        module.prior.table.weight.normal_(0.0, 0.5)
        rule = GaussHermite().rule(2, 9, dtype=F64)
        per_u = torch.stack(
            [
                module.score_samples(x, rule, u=torch.full((len(x),), k))
                for k in range(3)
            ],
            dim=1,
        )
        expected = torch.logsumexp(per_u - np.log(3), dim=1)
        torch.testing.assert_close(module.score_samples(x, rule), expected)


def test_training_step_returns_the_optimal_noise_variance():
    W, b, x, _, A, post_cov = linear_gaussian(orthogonal=False)
    module = ivae_module(W, b, A, post_cov)
    module.optimal_noise = module.independent_rows = True
    u = torch.zeros(len(x), dtype=torch.long)
    module.train()
    torch.manual_seed(0)
    with torch.no_grad():
        step = module(x, u)
    noise = float(step.closed_form["noise_variance"])
    module.eval()

    def reconstruction(variance):
        module.decoder.set_noise_variance(variance)
        torch.manual_seed(0)
        # The nodes the training step drew.
        rule = training_rule(module.integrator, 2, module.n_nodes, x, True)
        with torch.no_grad():
            mean, spread = module.encode(x, u)
            return module.reconstruction(x, mean, spread, rule)

    # The profile objective is the ELBO at the returned sigma^2, its maximiser.
    at_optimum = reconstruction(noise)
    kl = module.kl(*module.encode(x, u), *module.prior(u)).detach()
    torch.testing.assert_close(step.objective, at_optimum - kl)
    for factor in (0.9, 1.1):
        assert float(reconstruction(noise * factor).mean()) < float(at_optimum.mean())
    module.apply_closed_form(step.closed_form)
    assert float(module.decoder.noise_variance().detach()) == pytest.approx(noise)


def test_vae_optimal_noise_step_is_the_elbo_at_its_maximiser():
    # Exact rule (2 Gauss-Hermite nodes per axis) for a linear decoder: the
    # training step's objective is the ELBO at the returned sigma^2, whose
    # derivative in sigma^2 vanishes there (central finite differences).
    W, b, x, _, A, post_cov = linear_gaussian(orthogonal=True)
    encoder = GaussianEncoder(6, 2, (), "identity").double()
    set_mean_head(encoder, A, b)
    with torch.no_grad():
        encoder.raw_variance.weight.zero_()
        encoder.raw_variance.bias.copy_(inverse_positive(post_cov.diagonal()))
    vae = VAE(encoder, linear_decoder(W, b), GaussHermite(), 4, optimal_noise=True)
    vae.train()
    with torch.no_grad():
        step = vae(x)
    noise = float(step.closed_form["noise_variance"])
    rule = GaussHermite().rule(2, 4, dtype=F64)

    def elbo(variance):
        vae.decoder.set_noise_variance(variance)
        with torch.no_grad():
            return vae.elbo(x, rule)

    torch.testing.assert_close(step.objective, elbo(noise))
    h = 1e-5 * noise
    slope = (elbo(noise + h).mean() - elbo(noise - h).mean()) / (2 * h)
    assert abs(float(slope)) < 1e-6 * float(elbo(noise).abs().mean())
    assert float(elbo(noise * 1.1).mean()) < float(elbo(noise).mean())


def test_marginal_likelihood_module_is_exact_for_ppca():
    W, b, x, log_p, A, _ = linear_gaussian(orthogonal=False)
    model = MarginalLikelihood(linear_decoder(W, b), 2, Adaptive(), 64)
    rule = model.rule(x, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.score_samples(x, rule), log_p)
        torch.testing.assert_close(
            model.posterior_mean(x, rule), (x - b) @ A.T, rtol=0, atol=1e-6
        )
    assert model.alternating_groups()[1] == model.decoder.noise_parameters()
