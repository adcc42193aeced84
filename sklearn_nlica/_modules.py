"""torch modules: MLPs, Gaussian encoders and decoders, the VAE objective.

Each model module's ``forward`` returns the per-sample training objective
(to be maximised); the skorch driver in ``_net.py`` minimises minus its mean.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ._densities import (
    LOG_2PI,
    kl_diag_diag,
    kl_diag_laplace,
    kl_diag_standard,
    log_laplace_diag,
    log_normal_diag,
    log_normal_isotropic,
)
from ._marginal import em_surrogate, gaussian_log_integrand, log_marginal
from .integrators import Rule

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


def initial_noise_variance(x, n_components):
    """A starting sigma^2 from the data: probabilistic PCA's residual variance.

    The mean variance of ``x`` outside its top ``n_components`` principal
    directions (a low-rank SVD), i.e. the noise level of the best linear
    model with that latent dimension; floored at 1e-3 of the total variance
    (when n_components >= n_features, say). Starting there rather than at the
    total variance saves the optimiser most of the way down to a small sigma^2.
    """
    n_samples, n_features = x.shape
    if n_samples < 2:
        return 1.0
    centred = x - x.mean(0)
    total = float(centred.square().sum()) / (n_samples - 1)
    floor = max(1e-3 * total / n_features, 1e-6)
    if n_components >= min(n_samples - 1, n_features):
        return floor
    _, singular, _ = torch.svd_lowrank(
        centred, q=min(n_components + 10, min(x.shape)), niter=4
    )
    explained = float(singular[:n_components].square().sum()) / (n_samples - 1)
    return max((total - explained) / (n_features - n_components), floor)


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

    def __init__(
        self,
        n_components,
        n_features,
        hidden_layer_sizes,
        activation,
        variance="shared",
        noise_variance=1.0,
        mean_init=None,
    ):
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

    def __init__(
        self, encoder, decoder, integrator, n_nodes, gradient="reparameterization"
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.integrator = integrator
        self.n_nodes = n_nodes
        self.gradient = gradient

    def forward(self, x):
        n_components = self.encoder.mean.out_features
        rule = self.integrator.rule(
            n_components, self.n_nodes, dtype=x.dtype, device=x.device
        )
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
                log_lik, z, mean, variance, weights
            )
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


# ---- the identifiable VAE --------------------------------------------------

# Log-variances of the conditional prior are squashed into [-B, B] (a variance
# between 3e-4 and 3e3): a segment with few points, or one bad batch, can then
# never drive a prior variance to 0 or infinity and the ELBO to +-inf.
PRIOR_LOG_VARIANCE_BOUND = 8.0

PRIOR_FAMILIES = ("gaussian", "variance", "laplace")


def bounded_log_variance(raw, bound=PRIOR_LOG_VARIANCE_BOUND):
    """``bound * tanh(raw / bound)``: the identity near 0, smooth, bounded."""
    return bound * torch.tanh(raw / bound)


class ConditionalPrior(nn.Module):
    """A conditionally factorial prior p(z | u) = prod_i p(z_i | lambda_i(u)).

    Every family is described by a location and a variance per component:

    - ``"gaussian"``: N(mu_i(u), s_i^2(u)), the exponential family with
      sufficient statistics (z, z^2) and natural parameters
      (mu / s^2, -1 / (2 s^2));
    - ``"variance"``: N(0, s_i^2(u)), only the variance moves with u;
    - ``"laplace"``: Laplace(mu_i(u), b_i(u)) with variance 2 b^2.

    The parameters are a table indexed by the class code of a discrete u
    (``n_classes`` rows, initialised to the standard normal, with the classes'
    frequencies ``class_weights``, uniform by default) or an MLP of a
    continuous u of width ``n_aux``. Either way they are stored as
    (location, log-variance), a smooth one-to-one reparameterisation of the
    natural parameters whose log-variance is bounded (see
    ``PRIOR_LOG_VARIANCE_BOUND``).
    """

    def __init__(
        self,
        n_components,
        *,
        family="gaussian",
        n_classes=None,
        n_aux=None,
        hidden_layer_sizes=(),
        activation="leaky_relu",
        class_weights=None,
    ):
        super().__init__()
        if family not in PRIOR_FAMILIES:
            raise ValueError(f"family must be one of {PRIOR_FAMILIES}, got {family!r}.")
        if (n_classes is None) == (n_aux is None):
            raise ValueError(
                "Give exactly one of n_classes (discrete u) and n_aux (continuous u)."
            )
        self.n_components = n_components
        self.family = family
        self.discrete = n_classes is not None
        self.n_classes = n_classes
        self.n_aux = n_aux
        n_params = n_components * (1 if family == "variance" else 2)
        if self.discrete:
            self.table = nn.Embedding(n_classes, n_params)
            nn.init.zeros_(self.table.weight)
            weights = (
                torch.full((n_classes,), 1.0 / n_classes)
                if class_weights is None
                else torch.as_tensor(class_weights, dtype=torch.get_default_dtype())
            )
            self.register_buffer("log_class_weights", torch.log(weights))
        else:
            self.net = make_mlp(n_aux, hidden_layer_sizes, n_params, activation)
            # Start from the standard normal for every u, like the table.
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def features(self, u, dtype):
        """u as network input: one-hot codes, or the covariates themselves."""
        if self.discrete:
            return F.one_hot(u, self.n_classes).to(dtype)
        return u

    def forward(self, u):
        """Location and variance of p(z | u), each of shape (len(u), m)."""
        return self._split(self.table(u) if self.discrete else self.net(u))

    def table_parameters(self):
        """Location and variance of p(z | u) for every class of a discrete u."""
        return self._split(self.table.weight)

    def _split(self, params):
        m = self.n_components
        if self.family == "variance":
            loc, raw = torch.zeros_like(params), params
        else:
            loc, raw = params[..., :m], params[..., m:]
        return loc, torch.exp(bounded_log_variance(raw))

    def kl(self, mean_q, variance_q, loc, variance):
        """KL(N(mean_q, variance_q) || p) for the prior with these parameters."""
        if self.family == "laplace":
            return kl_diag_laplace(mean_q, variance_q, loc, (0.5 * variance).sqrt())
        return kl_diag_diag(mean_q, variance_q, loc, variance)

    def log_prob(self, z, loc, variance):
        """log p(z | u) for the prior with these parameters, summed over z's axis."""
        if self.family == "laplace":
            return log_laplace_diag(z, loc, (0.5 * variance).sqrt())
        return log_normal_diag(z, loc, variance)

    def log_prob_table(self, z, loc, variance):
        """log p(z_i | u_j) for every row i of ``z`` (B, m) and every row j of
        the parameters (C, m), shape (B, C)."""
        if self.family == "laplace":
            return self.log_prob(z.unsqueeze(1), loc, variance)
        # The Gaussian is linear in its sufficient statistics (z, z^2): two
        # matrix products instead of a (B, C, m) broadcast.
        precision = 1.0 / variance
        constant = -0.5 * (
            LOG_2PI + torch.log(variance) + loc.square() * precision
        ).sum(-1)
        return z @ (loc * precision).T - 0.5 * z.square() @ precision.T + constant

    def log_posterior(self, z, u, loc, variance):
        """log p(u_i | z_i): the prior as a classifier of u, by Bayes' rule.

        A discrete u is scored against every class, weighted by its
        frequency. A continuous u has no such sum: the rows' own u, whose
        prior parameters are ``loc`` and ``variance``, stand in for p(u),
        log p(z_i | u_i) - log mean_j p(z_i | u_j), the contrastive (InfoNCE)
        estimate, which needs batches of more than one row.
        """
        if self.discrete:
            table = (
                self.log_prob_table(z, *self.table_parameters())
                + self.log_class_weights
            )
            return table.log_softmax(dim=1).gather(1, u.unsqueeze(1)).squeeze(1)
        table = self.log_prob_table(z, loc, variance)
        return table.diagonal() - torch.logsumexp(table, dim=1) + math.log(len(z))

    def sample(self, u):
        """One draw of z ~ p(z | u) per row of u, from torch's global generator."""
        return self.draw(*self(u))

    def draw(self, loc, variance):
        """One draw from the prior with these parameters (on their device)."""
        if self.family == "laplace":
            scale = (0.5 * variance).sqrt()
            e = torch.rand_like(loc) - 0.5
            # Inverse CDF; the clamp keeps log1p away from log(0).
            return loc - scale * e.sign() * torch.log1p(
                -2.0 * e.abs().clamp(max=0.5 - 1e-12)
            )
        return loc + variance.sqrt() * torch.randn_like(loc)


class FullCovarianceGaussianEncoder(nn.Module):
    """q(z | x) = N(mu(x), L(x) L(x)^T) with L lower triangular.

    One MLP trunk with three linear heads: the mean, the diagonal of L
    (through ``positive`` on its square, as the diagonal encoder's
    variance) and the entries below it. Those are relative to the column's
    scale, ``L[i, j] = d_j * o_ij``, so that correlations do not depend on
    the posterior's scale; they start at 0, a diagonal posterior of variance
    1. ``forward`` returns the mean (B, m) and L (B, m, m).
    """

    def __init__(
        self, n_in, n_components, hidden_layer_sizes, activation, residual=False
    ):
        super().__init__()
        self.trunk, width = make_trunk(n_in, hidden_layer_sizes, activation)
        self.mean = nn.Linear(width, n_components)
        self.skip = _zero_nonlinear_branch(
            self.mean, n_in, n_components, residual, bias=True
        )
        self.raw_variance = nn.Linear(width, n_components)
        nn.init.zeros_(self.raw_variance.weight)
        nn.init.constant_(self.raw_variance.bias, inverse_positive(1.0))
        # One latent dimension has no entries below the diagonal.
        self.off_diagonal = None
        if n_components > 1:
            self.off_diagonal = nn.Linear(width, n_components * (n_components - 1) // 2)
            nn.init.zeros_(self.off_diagonal.weight)
            nn.init.zeros_(self.off_diagonal.bias)
        rows, cols = torch.tril_indices(n_components, n_components, -1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, x):
        h = self.trunk(x)
        scale = positive(self.raw_variance(h)).sqrt()  # (B, m)
        m = scale.shape[-1]
        tril = torch.zeros(*scale.shape, m, dtype=scale.dtype, device=scale.device)
        if self.off_diagonal is not None:
            tril[..., self.rows, self.cols] = (
                self.off_diagonal(h) * scale[..., self.cols]
            )
        mean = self.mean(h) if self.skip is None else self.mean(h) + self.skip(x)
        return mean, tril + torch.diag_embed(scale)


def _zero_nonlinear_branch(head, n_in, n_out, residual, bias):
    """For a residual map ``skip(v) + head(MLP(v))``: zero the head (the map
    starts linear) and return the linear skip (None when not residual)."""
    if not residual:
        return None
    nn.init.zeros_(head.weight)
    if bias:
        nn.init.zeros_(head.bias)
    return nn.Linear(n_in, n_out, bias=bias)


class ResidualGaussianEncoder(GaussianEncoder):
    """:class:`GaussianEncoder` whose mean is ``skip(x) + head(MLP(x))``, with
    the head starting at zero: a linear encoder that can grow nonlinear."""

    def __init__(self, n_in, n_components, hidden_layer_sizes, activation):
        super().__init__(n_in, n_components, hidden_layer_sizes, activation)
        self.skip = _zero_nonlinear_branch(self.mean, n_in, n_components, True, True)

    def forward(self, x):
        mean, variance = super().forward(x)
        return mean + self.skip(x), variance


class ResidualGaussianDecoder(GaussianDecoder):
    """:class:`GaussianDecoder` whose mean is ``b + W z + out(MLP(z))``, with
    ``out``'s weights starting at zero: a linear decoder that can grow
    nonlinear."""

    def __init__(
        self, n_components, n_features, hidden_layer_sizes, activation, **kwargs
    ):
        super().__init__(
            n_components, n_features, hidden_layer_sizes, activation, **kwargs
        )
        self.skip = _zero_nonlinear_branch(
            self.out, n_components, n_features, True, False
        )

    def forward(self, z):
        mean, variance = super().forward(z)
        return mean + self.skip(z), variance


# Parameters of the nonlinear branches of the residual encoders and decoders:
# frozen, they leave a linear model (see IdentifiableVAE's linear warm start).
NONLINEAR_BRANCHES = (
    "encoder.trunk.",
    "encoder.mean.",
    "decoder.hidden.",
    "decoder.out.weight",
)


def _is_full(spread):
    """Whether an encoder's second output is a Cholesky factor (vs variances)."""
    return spread.dim() == 3


def posterior_marginal_variance(spread):
    """The variances of q's coordinates, from variances or a Cholesky factor."""
    return spread.square().sum(-1) if _is_full(spread) else spread


def posterior_points(mean, spread, nodes):
    """z = mean + L e for rule nodes e of shape (K, m) or (B, K, m): (B, K, m)."""
    if not _is_full(spread):
        return mean.unsqueeze(1) + spread.sqrt().unsqueeze(1) * nodes
    pattern = "bij,kj->bki" if nodes.dim() == 2 else "bij,bkj->bki"
    return mean.unsqueeze(1) + torch.einsum(pattern, spread, nodes)


def posterior_log_prob(z, mean, spread):
    """log q(z) for points z (B, K, m) of a diagonal or full-covariance q."""
    if not _is_full(spread):
        return log_normal_diag(z, mean.unsqueeze(1), spread.unsqueeze(1))
    diff = (z - mean.unsqueeze(1)).transpose(1, 2)  # (B, m, K)
    white = torch.linalg.solve_triangular(spread, diff, upper=False)
    log_det = torch.log(torch.diagonal(spread, dim1=-2, dim2=-1)).sum(-1, keepdim=True)
    m = z.shape[-1]
    return -0.5 * (m * LOG_2PI + white.square().sum(1)) - log_det


def posterior_total_correlation(spread):
    """H(diagonal of q) - H(q) = 1/2 (sum log Sigma_ii - log det Sigma) >= 0.

    The KL from a full-covariance q to a factorial prior is the KL from q's
    marginals plus this term; it is 0 for a diagonal q.
    """
    if not _is_full(spread):
        return torch.zeros(spread.shape[:-1], dtype=spread.dtype, device=spread.device)
    log_diag = torch.log(torch.diagonal(spread, dim1=-2, dim2=-1))
    return 0.5 * torch.log(spread.square().sum(-1)).sum(-1) - log_diag.sum(-1)


class IdentifiableVAEModule(nn.Module):
    """The iVAE: p(x, z | u) = p(x | z) p(z | u), ``forward(x, u)`` returns the
    per-sample (weighted) ELBO.

    The encoder is q(z | x), or q(z | x, u) with ``conditional_encoder`` (its
    input is then x concatenated with the prior's features of u); it returns
    a mean and either variances (a diagonal q) or a Cholesky factor (a
    full-covariance q, :class:`FullCovarianceGaussianEncoder`). The
    reconstruction term is an integration rule over the reparameterisation,
    as in :class:`VAE`; the KL to p(z | u) is in closed form. During
    training, ``kl_weight`` (1 unless a warm-up callback sets it) multiplies
    the KL; :meth:`elbo` is always the plain ELBO.

    ``independent_rows`` gives every row of a batch its own shifted copy of
    an equal-weight random rule during training (see :func:`shift_rows`);
    ``optimal_noise`` sets the decoder's noise variance to the batch's
    maximiser of the ELBO at each training step instead of learning it by
    gradient (the decoder must then have ``variance="fixed"``).
    ``contrastive_weight`` adds that multiple of log p(u | E_q[z]) (the
    prior as a classifier, :meth:`ConditionalPrior.log_posterior`) to the
    training objective.
    """

    def __init__(
        self,
        encoder,
        decoder,
        prior,
        integrator,
        n_nodes,
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

    def encode(self, x, u=None):
        """Mean and spread (variances or Cholesky factor) of q(z | x[, u])."""
        if self.conditional_encoder:
            x = torch.cat([x, self.prior.features(u, x.dtype)], dim=-1)
        return self.encoder(x)

    def forward(self, x, u):
        m = self.prior.n_components
        if self.independent_rows and self.n_nodes == 1:
            # One node per row: a plain normal draw, whatever the random rule.
            nodes = torch.randn(len(x), 1, m, dtype=x.dtype, device=x.device)
            rule = Rule(nodes, torch.zeros(len(x), 1, dtype=x.dtype, device=x.device))
        else:
            rule = self.integrator.rule(m, self.n_nodes, dtype=x.dtype, device=x.device)
            if self.independent_rows:
                rule = shift_rows(rule, len(x))
        return self.objective(x, u, rule, self.kl_weight, self.contrastive_weight)

    def reconstruction(self, x, mean, spread, rule):
        """E_q[log p(x | z)] by the rule over z = mean + L e."""
        z = posterior_points(mean, spread, rule.nodes)
        weights = signed_weights(rule)

        def expect(values):  # (B, K) -> (B,)
            return (
                values @ weights if weights.dim() == 1 else (values * weights).sum(-1)
            )

        if not (self.optimal_noise and self.training):
            return expect(self.decoder.log_prob(x.unsqueeze(1), z))
        g, _ = self.decoder(z)
        squared = expect((x.unsqueeze(1) - g).square().sum(-1))
        # The batch's maximiser of the ELBO in sigma^2 (no gradient needed: the
        # ELBO is stationary in sigma^2 there), kept in the decoder's buffer.
        noise = (squared.detach().mean() / x.shape[-1]).clamp(min=MIN_VARIANCE)
        with torch.no_grad():
            self.decoder.raw_noise_variance.copy_(
                noise + torch.log(-torch.expm1(-noise))
            )
        n = x.shape[-1]
        return -0.5 * (n * (LOG_2PI + torch.log(noise)) + squared / noise)

    def kl(self, mean, spread, loc, prior_variance):
        """KL(q || p(z | u)) in closed form, for a diagonal or full q."""
        return self.prior.kl(
            mean, posterior_marginal_variance(spread), loc, prior_variance
        ) + posterior_total_correlation(spread)

    def objective(self, x, u, rule, kl_weight=1.0, contrastive_weight=0.0):
        """Per sample: E_q[log p(x | z)] - kl_weight * KL(q || p(z | u))
        + contrastive_weight * log p(u | E_q[z])."""
        mean, spread = self.encode(x, u)
        loc, prior_variance = self.prior(u)
        objective = self.reconstruction(x, mean, spread, rule) - kl_weight * self.kl(
            mean, spread, loc, prior_variance
        )
        if contrastive_weight:
            objective = objective + contrastive_weight * self.prior.log_posterior(
                mean, u, loc, prior_variance
            )
        return objective

    def elbo(self, x, u, rule):
        """Per-sample ELBO of ``x`` (B, n) given ``u`` (B,) or (B, k)."""
        return self.objective(x, u, rule)


class MarginalLikelihood(nn.Module):
    """log p(x) = log E_{z ~ N(0, I)}[N(x; g(z), sigma^2 I)] by an integration rule.

    ``forward`` returns the per-sample log-likelihood. With
    ``gradient="analytic"`` its gradient is Fisher's identity (posterior
    weights held fixed, the E-step of EM) instead of autograd through the
    log-sum-exp; the two agree, the value is the same.
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
        return self.decoder(z)[0]

    def noise_variance(self):
        return positive(self.decoder.raw_noise_variance)

    def rule(self, x, generator=None, n_nodes=None):
        """Nodes for the rows of ``x``: shared, or on each row's posterior."""
        log_integrand = None
        if self.integrator.is_adaptive:
            log_integrand = gaussian_log_integrand(
                x, self.mean, self.noise_variance().detach()
            )
        return self.integrator.rule(
            self.n_components,
            n_nodes or self.n_nodes,
            dtype=x.dtype,
            device=x.device,
            generator=generator,
            log_integrand=log_integrand,
        )

    def log_likelihood(self, x, rule):
        return log_marginal(x, self.mean, rule, self.noise_variance())

    def forward(self, x):
        rule = self.rule(x)
        if self.gradient == "autograd":
            return self.log_likelihood(x, rule)
        surrogate = em_surrogate(x, self.mean, rule, self.noise_variance())
        with torch.no_grad():
            log_p = self.log_likelihood(x, rule)
        # The value of log p(x), the gradient of the EM surrogate.
        return log_p + (surrogate - surrogate.detach())


def shift_rows(rule, n_rows):
    """Give each of ``n_rows`` rows its own copy of an equal-weight random rule.

    Each row's nodes are the shared ones moved by an independent uniform
    shift modulo 1 in the uniform scale (a Cranley-Patterson rotation):
    Monte Carlo nodes stay i.i.d. normal, QMC nodes stay a randomised
    low-discrepancy set, and the rows' errors become independent, so that
    the noise of a mini-batch's gradient averages out over its rows instead
    of being one draw shared by all of them.
    """
    nodes = rule.nodes
    eps = torch.finfo(nodes.dtype).eps
    uniform = torch.special.ndtr(nodes)
    shift = torch.rand(
        n_rows, 1, nodes.shape[-1], dtype=nodes.dtype, device=nodes.device
    )
    uniform = torch.remainder(uniform + shift, 1.0).clamp(eps, 1.0 - eps)
    return type(rule)(
        torch.special.ndtri(uniform), rule.log_weights.expand(n_rows, -1), None
    )
