"""The conditional prior p(z | u) of the identifiable VAE.

A table of parameters for a discrete u or an MLP of a continuous u, three
families (Gaussian, variance-only Gaussian, Laplace), and the prior used as a
classifier of u for the contrastive term.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ._densities import (
    LOG_2PI,
    kl_diag_diag,
    kl_diag_laplace,
    log_laplace_diag,
    log_normal_diag,
)
from ._nn import make_mlp

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

    def draw(self, loc, variance):
        """One draw from the prior with these parameters, from torch's global
        generator (on their device)."""
        if self.family == "laplace":
            scale = (0.5 * variance).sqrt()
            e = torch.rand_like(loc) - 0.5
            # Inverse CDF; the clamp keeps log1p away from log(0).
            return loc - scale * e.sign() * torch.log1p(
                -2.0 * e.abs().clamp(max=0.5 - 1e-12)
            )
        return loc + variance.sqrt() * torch.randn_like(loc)
