"""torch modules: MLPs, Gaussian encoders and decoders, the VAE objective.

Each model module's ``forward`` returns the per-sample training objective
(to be maximised); the skorch driver in ``_net.py`` minimises minus its mean.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ._densities import kl_diag_standard, log_normal_diag, log_normal_isotropic

# The slope keeps leaky-ReLU networks well conditioned and invertible, the
# property the nonlinear-ICA mixing functions rely on.
LEAKY_RELU_SLOPE = 0.2

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_RELU_SLOPE),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}

# Variances are softplus of an unconstrained value plus this floor: the floor
# keeps log-variances finite in float32 without biasing any realistic fit.
MIN_VARIANCE = 1e-6


def positive(raw):
    """Map an unconstrained tensor to a variance, smoothly and without overflow."""
    return F.softplus(raw) + MIN_VARIANCE


def inverse_positive(variance):
    """The unconstrained value whose ``positive`` is ``variance``."""
    v = max(float(variance) - MIN_VARIANCE, 1e-12)
    # softplus^{-1}(v) = log(expm1(v)), written to stay finite for large v.
    return v + math.log(-math.expm1(-v))


def make_trunk(n_in, hidden_layer_sizes, activation):
    """Hidden layers (Linear + activation each) and the width they end with."""
    layers = []
    width = n_in
    for h in hidden_layer_sizes:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    return nn.Sequential(*layers), width


def make_mlp(n_in, hidden_layer_sizes, n_out, activation):
    """A plain MLP: Linear, activation, ..., Linear (no activation at the end)."""
    trunk, width = make_trunk(n_in, hidden_layer_sizes, activation)
    return nn.Sequential(*trunk, nn.Linear(width, n_out))


class GaussianEncoder(nn.Module):
    """q(z | x) = N(mu(x), diag s^2(x)), one MLP trunk with two linear heads."""

    def __init__(self, n_in, n_components, hidden_layer_sizes, activation):
        super().__init__()
        self.trunk, width = make_trunk(n_in, hidden_layer_sizes, activation)
        self.mean = nn.Linear(width, n_components)
        self.raw_variance = nn.Linear(width, n_components)
        # Start with a broad posterior (s^2 = 1): the KL is then small and the
        # decoder sees varied codes from the first step.
        nn.init.zeros_(self.raw_variance.weight)
        nn.init.constant_(self.raw_variance.bias, inverse_positive(1.0))

    def forward(self, x):
        h = self.trunk(x)
        return self.mean(h), positive(self.raw_variance(h))


class GaussianDecoder(nn.Module):
    """p(x | z) = N(g(z), sigma^2 I) with three ways to get sigma^2.

    ``variance="shared"`` learns one sigma^2 for all samples, ``"fixed"``
    keeps it at ``noise_variance`` (a buffer), and ``"per_sample"`` is the
    seeds' scalar head ``log s^2 = W2 h + b2`` on the last hidden layer (on
    z itself for a linear decoder).
    """

    def __init__(self, n_components, n_features, hidden_layer_sizes, activation,
                 variance="shared", noise_variance=1.0, mean_init=None):
        super().__init__()
        self.variance = variance
        self.hidden, width = make_trunk(n_components, hidden_layer_sizes, activation)
        self.out = nn.Linear(width, n_features)
        if mean_init is not None:
            with torch.no_grad():
                self.out.bias.copy_(torch.as_tensor(mean_init))
        raw = torch.tensor(inverse_positive(noise_variance))
        if variance == "shared":
            self.raw_noise_variance = nn.Parameter(raw)
        elif variance == "fixed":
            self.register_buffer("raw_noise_variance", raw)
        else:
            self.variance_head = nn.Linear(width, 1)
            nn.init.zeros_(self.variance_head.weight)
            nn.init.constant_(self.variance_head.bias, float(raw))

    def forward(self, z):
        """Return the mean g(z) and the variance (scalar, or one per z)."""
        h = self.hidden(z)
        mean = self.out(h)
        if self.variance == "per_sample":
            return mean, positive(self.variance_head(h)).squeeze(-1)
        return mean, positive(self.raw_noise_variance)

    def log_prob(self, x, z):
        """log p(x | z); ``z`` has shape (..., m) and ``x`` broadcasts to (..., n)."""
        mean, variance = self(z)
        return log_normal_isotropic(x, mean, variance)


class VAE(nn.Module):
    """The Gaussian VAE; ``forward`` returns the per-sample ELBO.

    The reconstruction term E_q[log p(x|z)] is an integration rule over the
    reparameterisation z = mu + s * e, e ~ N(0, I), with nodes shared by every
    row of the batch; during training a fresh rule is drawn each step from
    torch's (forked, seeded) global generator. The KL term is analytic.

    ``gradient="score_function"`` replaces the reparameterisation gradient of
    the reconstruction term with the REINFORCE estimator (same value).
    """

    def __init__(self, encoder, decoder, integrator, n_nodes,
                 gradient="reparameterization"):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.integrator = integrator
        self.n_nodes = n_nodes
        self.gradient = gradient

    def forward(self, x):
        n_components = self.encoder.mean.out_features
        rule = self.integrator.rule(n_components, self.n_nodes, dtype=x.dtype,
                                    device=x.device)
        return self.elbo(x, rule)

    def elbo(self, x, rule):
        """Per-sample ELBO of ``x`` (B, n) with the given rule over e ~ N(0, I)."""
        mean, variance = self.encoder(x)
        weights = signed_weights(rule)
        z = mean.unsqueeze(1) + variance.sqrt().unsqueeze(1) * rule.nodes  # (B, K, m)
        if self.gradient == "score_function":
            z = z.detach()
        log_lik = self.decoder.log_prob(x.unsqueeze(1), z)  # (B, K)
        reconstruction = log_lik @ weights
        if self.gradient == "score_function":
            reconstruction = reconstruction + _score_function_term(
                log_lik, z, mean, variance, weights)
        return reconstruction - kl_diag_standard(mean, variance)


def signed_weights(rule):
    """The rule's weights as plain numbers (they can be negative on sparse grids)."""
    weights = rule.log_weights.exp()
    return weights if rule.signs is None else weights * rule.signs


def _score_function_term(log_lik, z, mean, variance, weights):
    # Zero in value, grad_phi E_q[log p(x|z)] in gradient:
    # sum_j w_j (f_j - b) grad log q(z_j), with a leave-one-out baseline b when
    # there are several nodes (it keeps the estimator unbiased).
    f = log_lik.detach()
    k = f.shape[1]
    baseline = (f.sum(1, keepdim=True) - f) / (k - 1) if k > 1 else 0.0
    log_q = log_normal_diag(z, mean.unsqueeze(1), variance.unsqueeze(1))
    return ((f - baseline) * (log_q - log_q.detach())) @ weights
