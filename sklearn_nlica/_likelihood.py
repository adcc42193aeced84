"""The maximum-likelihood estimator's objective module: log p(x) by integration."""

import torch
from torch import nn
from torch.func import functional_call

from ._integrand import GaussianIntegrand, HeadDecoder
from ._marginal import (
    e_step,
    em_surrogate,
    log_marginal,
    log_marginal_from_values,
    posterior_mean,
)


class MarginalLikelihood(nn.Module):
    """log p(x) = log E_{z ~ N(0, I)}[N(x; g(z), sigma^2 I)] by an integration rule.

    ``forward`` returns the per-sample log-likelihood. With
    ``gradient="analytic"`` its gradient is Fisher's identity (posterior
    weights held fixed, the E-step of EM) instead of autograd through the
    log-sum-exp; the two agree, the value is the same.

    The integrand log N(x; g(z), sigma^2 I) goes through the decoder's last
    linear layer when it is narrower than x (its Gram matrix, see
    :mod:`sklearn_nlica._integrand`); an adaptive rule evaluates it at its
    nodes already, and those values (``Rule.values``) serve the E-step and
    the score (and an M-step, with ``reuse=True``) instead of a second
    decoder pass, as long as
    the parameters have not changed since the rule was built (a rule used at
    other parameters decodes its nodes again).
    """

    def __init__(self, decoder, n_components, integrator, n_nodes, gradient="autograd"):
        super().__init__()
        self.decoder = decoder
        self.n_components = n_components
        self.integrator = integrator
        self.n_nodes = n_nodes
        self.gradient = gradient

    def mean(self, z):
        """The decoder mean g(z), the callable the integration functions take."""
        return self.decoder.mean(z)

    def noise_variance(self):
        return self.decoder.noise_variance()

    def _integrand_decoder(self, reduced_precision=False):
        """g as the integration functions take it: with its linear last layer
        exposed when nothing comes after it.

        ``reduced_precision=True`` runs the hidden layers of a float64
        decoder in float32 (on float32 copies of their parameters, which
        autograd maps back) and returns their features in float64: the last
        layer, the residuals and their sums stay in float64.
        """
        decoder = self.decoder
        if decoder.skip is not None or decoder.output_scale is not None:
            return self.mean
        features = decoder.hidden
        if (
            reduced_precision
            and len(features)
            and decoder.out.weight.dtype == torch.float64
        ):
            features = _float32_features(features)
        return HeadDecoder(
            features,
            decoder.out.weight,
            decoder.out.bias,
            decoder.piecewise_linear,
        )

    def rule(self, x, n_nodes=None, generator=None, warm_start=None):
        """Nodes for the rows of ``x``: shared, or on each row's posterior
        (from the modes ``warm_start`` of an earlier rule, when given)."""
        log_integrand = None
        if self.integrator.is_adaptive:
            log_integrand = GaussianIntegrand(
                x, self._integrand_decoder(), self.noise_variance()
            )
        rule = self.integrator.rule(
            self.n_components,
            n_nodes or self.n_nodes,
            dtype=x.dtype,
            device=x.device,
            generator=generator,
            log_integrand=log_integrand,
            warm_start=warm_start,
        )
        if rule.values is not None:
            self._values_stamp = (id(rule.values), self._parameter_stamp())
        return rule

    def _parameter_stamp(self):
        """Which parameter tensors there are and how often each was written
        in place (an optimizer step, a closed-form update)."""
        return tuple((id(p), p._version) for p in self.parameters())

    def _values(self, rule):
        """The rule's integrand values if they hold at the current parameters."""
        stamp = getattr(self, "_values_stamp", None)
        if rule.values is None or stamp is None or stamp[0] != id(rule.values):
            return None
        return rule.values if stamp[1] == self._parameter_stamp() else None

    def forward(self, x):
        rule = self.rule(x)
        if self.gradient == "autograd":
            return self.log_likelihood(x, rule)
        surrogate = self.em_surrogate(x, rule)
        with torch.no_grad():
            log_p = self.log_likelihood(x, rule)
        # The value of log p(x), the gradient of the EM surrogate.
        return log_p + (surrogate - surrogate.detach())

    def e_step(self, x, rule):
        """log p(x), the posterior weights and the expected squared residuals."""
        return e_step(
            x,
            self._integrand_decoder(),
            rule,
            self.noise_variance(),
            values=self._values(rule),
        )

    def em_surrogate(
        self,
        x,
        rule,
        weights=None,
        *,
        min_weight=0.0,
        reuse=False,
        reduced_precision=False,
    ):
        """The EM surrogate, with the given posterior weights held fixed.

        ``reuse=True`` takes the integrand from the rule's own values while
        the parameters are those the rule was built at; otherwise the nodes
        whose weight is above ``min_weight`` are decoded, with the decoder's
        hidden layers in float32 when ``reduced_precision`` is True (an
        optimizer step's direction, never a reported value).
        """
        values = self._values(rule) if reuse else None
        if values is not None and weights is not None:
            return (weights.detach() * values).sum(1).to(x.dtype)
        return em_surrogate(
            x,
            self._integrand_decoder(reduced_precision),
            rule,
            self.noise_variance(),
            weights=weights,
            min_weight=min_weight,
        )

    # ---- evaluation ----------------------------------------------------------

    def log_likelihood(self, x, rule):
        values = self._values(rule)
        if values is not None:
            return log_marginal_from_values(rule, values).to(x.dtype)
        return log_marginal(x, self._integrand_decoder(), rule, self.noise_variance())

    def score_samples(self, x, rule):
        return self.log_likelihood(x, rule)

    def posterior_mean(self, x, rule):
        return posterior_mean(
            x,
            self._integrand_decoder(),
            rule,
            self.noise_variance(),
            values=self._values(rule),
        )

    def sample_latent(self, n_samples):
        return torch.randn(
            n_samples, self.n_components, dtype=next(self.parameters()).dtype
        )

    def elements_per_row(self, n_nodes):
        return n_nodes * self.decoder.out.out_features

    # ---- parameter groups ----------------------------------------------------

    def alternating_groups(self):
        """The mean g, then sigma^2 (None when sigma^2 is fixed)."""
        noise = self.decoder.noise_parameters()
        return [self.decoder.mean_parameters(), noise] if noise else None

    def closed_form_parameters(self):
        """The parameters that EM moves in closed form, at the end of an epoch."""
        return self.decoder.closed_form_parameters()


def _float32_features(hidden):
    """``hidden`` evaluated in float32, its output in float64, differentiable
    with respect to its (float64) parameters."""
    params = {name: p.to(torch.float32) for name, p in hidden.named_parameters()}

    def features(z):
        out = functional_call(hidden, params, (z.to(torch.float32),))
        return out.to(torch.float64)

    return features
