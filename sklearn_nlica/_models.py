"""The three objective modules: VAE, identifiable VAE, marginal likelihood.

Each module's ``forward`` returns the per-sample training objective (to be
maximised; the driver in ``_training.py`` minimises minus its mean), and the
same module evaluates the fitted model, so that the estimators only convert
arrays. The evaluation interface, shared by the three:

- ``rule(x, n_nodes, generator)``: the integration rule for the rows of x
  (the marginal likelihood's also takes a ``warm_start``);
- ``score_samples(x, rule, **condition)``: the per-sample score;
- ``posterior_mean(x, rule, **condition)``: E[z | x];
- ``log_likelihood(x, rule, **condition)``: an estimate of log p(x);
- ``sample_latent(n_samples, **condition)``: draws of z, on the CPU;
- ``elements_per_row(n_nodes, **condition)``: the size of one row's largest
  intermediate, which bounds how many rows are evaluated at once.

Parameter groups that the training policies need (alternating updates, the
closed-form M-steps, the linear warm start) are methods as well. The
marginal likelihood's module lives in ``_likelihood.py`` and is re-exported
here.
"""

from typing import NamedTuple

import torch
from torch import nn

from ._densities import (
    LOG_2PI,
    MIN_VARIANCE,
    kl_diag_standard,
    log_normal_diag,
    log_standard_normal,
    posterior_log_prob,
    posterior_marginal_variance,
    posterior_points,
    posterior_total_correlation,
)
from ._likelihood import MarginalLikelihood  # noqa: F401  (one of the three)
from ._marginal import signed_logsumexp
from .integrators import Rule


class TrainingStep(NamedTuple):
    """A training objective per sample, with values that a closed-form update
    writes into the module once the optimizer has stepped (see
    ``apply_closed_form``)."""

    objective: torch.Tensor
    closed_form: dict


def _parameter_dtype(module):
    return next(module.parameters()).dtype


def importance_weighted(x, mean, spread, rule, decoder, log_prior):
    """log p(x) ~ logsumexp_j [log w_j + log p(x | z_j) + log p(z_j) - log q(z_j)]
    with nodes z_j = mean + L e_j on the posterior q (the proposal)."""
    z = posterior_points(mean, spread, rule.nodes)  # (B, K, m)
    log_ratio = (
        decoder.log_prob(x.unsqueeze(1), z)
        + log_prior(z)
        - posterior_log_prob(z, mean, spread)
    )
    return signed_logsumexp(log_ratio + rule.log_weights, rule.signs, dim=1)


def _expect(values, weights):
    """sum_j w_j values_j for (B, K) values and weights (K,) or (B, K)."""
    return values @ weights if weights.dim() == 1 else (values * weights).sum(-1)


def training_rule(integrator, n_components, n_nodes, x, independent_rows):
    """A fresh rule for a training step: shared by the batch's rows, or with
    ``independent_rows`` one shifted copy per row (``Rule.shift_rows``)."""
    if independent_rows and n_nodes == 1:
        # One node per row: a plain normal draw, whatever the random rule.
        nodes = torch.randn(len(x), 1, n_components, dtype=x.dtype, device=x.device)
        return Rule(nodes, torch.zeros(len(x), 1, dtype=x.dtype, device=x.device))
    rule = integrator.rule(n_components, n_nodes, dtype=x.dtype, device=x.device)
    return rule.shift_rows(len(x)) if independent_rows else rule


def profile_reconstruction(decoder, x, z, weights):
    """E_q[log p(x | z)] at the batch's maximising sigma^2, and that sigma^2,
    for nodes ``z`` (B, K, m) with weights (K,) or (B, K).

    No gradient flows through sigma^2: the ELBO is stationary in it there.
    """
    g = decoder.mean(z)
    squared = _expect((x.unsqueeze(1) - g).square().sum(-1), weights)
    n = x.shape[-1]
    noise = (squared.detach().mean() / n).clamp(min=MIN_VARIANCE)
    value = -0.5 * (n * (LOG_2PI + torch.log(noise)) + squared / noise)
    return value, noise


class VAE(nn.Module):
    """The Gaussian VAE; ``forward`` returns the per-sample ELBO.

    E_q[log p(x|z)] is an integration rule over z = mu + s * e, e ~ N(0, I),
    drawn afresh at each training step (shared by the batch's rows, or
    shifted for each row with ``independent_rows``); the KL is analytic.

    ``gradient="score_function"``: REINFORCE for the reconstruction term.
    ``optimal_noise``: as in :class:`IdentifiableVAEModule`.
    """

    def __init__(
        self,
        encoder,
        decoder,
        integrator,
        n_nodes,
        gradient="reparameterization",
        *,
        independent_rows=False,
        optimal_noise=False,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.integrator = integrator
        self.n_nodes = n_nodes
        self.gradient = gradient
        self.independent_rows = independent_rows
        self.optimal_noise = optimal_noise
        self.n_components = encoder.mean.out_features

    def forward(self, x):
        rows = self.independent_rows and self.gradient == "reparameterization"
        rule = training_rule(self.integrator, self.n_components, self.n_nodes, x, rows)
        if not (self.optimal_noise and self.training):
            return self.elbo(x, rule)
        mean, variance = self.encoder(x)
        z = posterior_points(mean, variance, rule.nodes)
        reconstruction, noise = profile_reconstruction(
            self.decoder, x, z, rule.signed_weights()
        )
        objective = reconstruction - kl_diag_standard(mean, variance)
        return TrainingStep(objective, {"noise_variance": noise})

    def elbo(self, x, rule):
        """Per-sample ELBO of ``x`` (B, n) with the given rule over e ~ N(0, I)."""
        mean, variance = self.encoder(x)
        weights = rule.signed_weights()
        z = posterior_points(mean, variance, rule.nodes)  # (B, K, m)
        if self.gradient == "score_function":
            z = z.detach()
        log_lik = self.decoder.log_prob(x.unsqueeze(1), z)  # (B, K)
        reconstruction = _expect(log_lik, weights)
        if self.gradient == "score_function":
            reconstruction = reconstruction + _score_function_term(
                log_lik, z, mean, variance, weights
            )
        return reconstruction - kl_diag_standard(mean, variance)

    def apply_closed_form(self, values):
        """Write the closed-form values returned by a training step."""
        self.decoder.set_noise_variance(values["noise_variance"])

    # ---- evaluation ----------------------------------------------------------

    def rule(self, x, n_nodes, generator=None):
        """Nodes shared by every row, fixed by ``generator``."""
        return self.integrator.rule(
            self.n_components,
            n_nodes,
            dtype=x.dtype,
            device=x.device,
            generator=generator,
        )

    def score_samples(self, x, rule):
        return self.elbo(x, rule)

    def posterior_mean(self, x, rule=None):
        return self.encoder(x)[0]

    def log_likelihood(self, x, rule):
        mean, variance = self.encoder(x)
        return importance_weighted(
            x, mean, variance, rule, self.decoder, log_standard_normal
        )

    def sample_latent(self, n_samples):
        return torch.randn(n_samples, self.n_components, dtype=_parameter_dtype(self))

    def elements_per_row(self, n_nodes):
        return n_nodes * self.decoder.out.out_features

    # ---- parameter groups ----------------------------------------------------

    def alternating_groups(self):
        """Encoder, then decoder: the coordinate ascent of ``update="alternating"``."""
        return [list(self.encoder.parameters()), list(self.decoder.parameters())]


def _score_function_term(log_lik, z, mean, variance, weights):
    # Zero in value, grad_phi E_q[log p(x|z)] in gradient:
    # sum_j w_j (f_j - b) grad log q(z_j), with a leave-one-out baseline b when
    # there are several nodes (it keeps the estimator unbiased).
    f = log_lik.detach()
    k = f.shape[1]
    baseline = (f.sum(1, keepdim=True) - f) / (k - 1) if k > 1 else 0.0
    log_q = log_normal_diag(z, mean.unsqueeze(1), variance.unsqueeze(1))
    return ((f - baseline) * (log_q - log_q.detach())) @ weights


class IdentifiableVAEModule(nn.Module):
    """The iVAE: p(x, z | u) = p(x | z) p(z | u); ``forward(x, u)`` returns the
    per-sample training objective.

    The encoder is q(z | x), or q(z | x, u) with ``conditional_encoder`` (its
    input is then x concatenated with the prior's features of u); it returns
    a mean and either variances (a diagonal q) or a Cholesky factor (a
    full-covariance q). The reconstruction term is an integration rule over
    the reparameterisation, as in :class:`VAE`; the KL to p(z | u) is in
    closed form. The training objective is

        E_q[log p(x | z)] - kl_weight * KL(q || p(z | u))
        + contrastive_weight * log p(u | E_q[z]),

    with ``kl_weight`` 1 unless a warm-up callback lowers it, and the
    contrastive term the prior used as a classifier of u
    (:meth:`ConditionalPrior.log_posterior`); every score is the plain ELBO.

    ``independent_rows``: one shifted copy of the rule per row in training.
    ``optimal_noise``: train on the ELBO maximised over sigma^2 in closed form
    (the batch's mean squared error per feature), returned with the objective
    for the driver to write into the decoder (of ``variance="fixed"``).
    ``reference_u`` and ``reference_log_p`` are candidate values of u with
    their log-probabilities under the training distribution of u: scores and
    draws without u mix over them.
    """

    def __init__(
        self,
        encoder,
        decoder,
        prior,
        integrator,
        n_nodes,
        *,
        reference_u,
        reference_log_p,
        conditional_encoder=False,
        independent_rows=False,
        optimal_noise=False,
        contrastive_weight=0.0,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.integrator = integrator
        self.n_nodes = n_nodes
        self.conditional_encoder = conditional_encoder
        self.independent_rows = independent_rows
        self.optimal_noise = optimal_noise
        self.contrastive_weight = contrastive_weight
        self.kl_weight = 1.0
        self.register_buffer("reference_u", reference_u)
        self.register_buffer("reference_log_p", reference_log_p)

    def encode(self, x, u=None):
        """Mean and spread (variances or Cholesky factor) of q(z | x[, u])."""
        if self.conditional_encoder:
            if u is None:
                raise ValueError(
                    "This model's encoder is q(z | x, u) (conditional_encoder=True): "
                    "it needs the auxiliary variable, e.g. transform(X, u=...)."
                )
            x = torch.cat([x, self.prior.features(u, x.dtype)], dim=-1)
        return self.encoder(x)

    def forward(self, x, u):
        mean, spread = self.encode(x, u)
        loc, prior_variance = self.prior(u)
        m = self.prior.n_components
        rule = training_rule(self.integrator, m, self.n_nodes, x, self.independent_rows)
        noise = None
        if self.optimal_noise and self.training:
            z = posterior_points(mean, spread, rule.nodes)
            reconstruction, noise = profile_reconstruction(
                self.decoder, x, z, rule.signed_weights()
            )
        else:
            reconstruction = self.reconstruction(x, mean, spread, rule)
        objective = reconstruction - self.kl_weight * self.kl(
            mean, spread, loc, prior_variance
        )
        if self.contrastive_weight:
            objective = objective + self.contrastive_weight * self.prior.log_posterior(
                mean, u, loc, prior_variance
            )
        if noise is None:
            return objective
        return TrainingStep(objective, {"noise_variance": noise})

    def reconstruction(self, x, mean, spread, rule):
        """E_q[log p(x | z)] by the rule over z = mean + L e."""
        z = posterior_points(mean, spread, rule.nodes)
        return _expect(self.decoder.log_prob(x.unsqueeze(1), z), rule.signed_weights())

    apply_closed_form = VAE.apply_closed_form

    def kl(self, mean, spread, loc, prior_variance):
        """KL(q || p(z | u)) in closed form, for a diagonal or full q."""
        variance = posterior_marginal_variance(spread)
        return self.prior.kl(mean, variance, loc, prior_variance) + (
            posterior_total_correlation(spread)
        )

    def elbo(self, x, u, rule):
        """Per-sample ELBO of ``x`` (B, n) given ``u`` (B,) or (B, k)."""
        mean, spread = self.encode(x, u)
        loc, prior_variance = self.prior(u)
        return self.reconstruction(x, mean, spread, rule) - self.kl(
            mean, spread, loc, prior_variance
        )

    # ---- evaluation ----------------------------------------------------------

    @property
    def n_components(self):
        return self.prior.n_components

    def rule(self, x, n_nodes, generator=None):
        """Nodes shared by every row, fixed by ``generator``."""
        return self.integrator.rule(
            self.prior.n_components,
            n_nodes,
            dtype=x.dtype,
            device=x.device,
            generator=generator,
        )

    def score_samples(self, x, rule, u=None):
        """The ELBO given u; without u, log sum_u p(u) exp(ELBO(x, u)) over the
        reference values, a lower bound on log p(x)."""
        if u is not None:
            return self.elbo(x, u, rule)
        return self._mix_over_reference(self._elbo_per_reference(x, rule))

    def log_likelihood(self, x, rule, u=None):
        """Importance-weighted log p(x | u), or log p(x) mixed over the
        reference values of u."""
        if u is not None:
            return self._importance_weighted(x, u, rule)
        columns = [
            self._importance_weighted(x, self._repeat(k, len(x)), rule)
            for k in range(len(self.reference_u))
        ]
        return self._mix_over_reference(torch.stack(columns, dim=1))

    def posterior_mean(self, x, rule=None, u=None):
        return self.encode(x, u)[0]

    def sample_latent(self, n_samples, u=None):
        if u is None:
            probabilities = self.reference_log_p.exp().cpu()
            index = torch.multinomial(probabilities, n_samples, replacement=True)
            u = self.reference_u[index.to(self.reference_u.device)]
        loc, variance = self.prior(u.to(self.reference_log_p.device))
        return self.prior.draw(loc.cpu(), variance.cpu())

    def elements_per_row(self, n_nodes, u=None):
        per_u = n_nodes * self.decoder.out.out_features
        return per_u if u is not None else per_u * len(self.reference_u)

    def _repeat(self, k, n_rows):
        u = self.reference_u
        return u[k].expand(n_rows, *u.shape[1:])

    def _mix_over_reference(self, values):
        # log sum_u p(u) exp(bound(x | u)) <= log sum_u p(u) p(x | u) = log p(x).
        return torch.logsumexp(values + self.reference_log_p, dim=1)

    def _elbo_per_reference(self, x, rule):
        """ELBO(x, u_k) for every reference value u_k: (B, K)."""
        u = self.reference_u
        if self.conditional_encoder:
            columns = [
                self.elbo(x, self._repeat(k, len(x)), rule) for k in range(len(u))
            ]
            return torch.stack(columns, dim=1)
        # q(z | x) does not depend on u: one reconstruction serves every u.
        loc, variance = self.prior(u)  # (K, m)
        mean, spread = self.encode(x)
        reconstruction = self.reconstruction(x, mean, spread, rule)
        kl = self.prior.kl(
            mean.unsqueeze(1),
            posterior_marginal_variance(spread).unsqueeze(1),
            loc,
            variance,
        )
        return (reconstruction - posterior_total_correlation(spread)).unsqueeze(1) - kl

    def _importance_weighted(self, x, u, rule):
        mean, spread = self.encode(x, u)
        loc, variance = self.prior(u)

        def log_prior(z):
            return self.prior.log_prob(z, loc.unsqueeze(1), variance.unsqueeze(1))

        return importance_weighted(x, mean, spread, rule, self.decoder, log_prior)

    # ---- parameter groups ----------------------------------------------------

    def nonlinear_parameters(self):
        """The nonlinear branches of a residual encoder and decoder: frozen,
        they leave a linear model (the linear warm start)."""
        return self.encoder.nonlinear_parameters() + self.decoder.nonlinear_parameters()
