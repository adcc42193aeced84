"""Network building blocks: MLPs, the Gaussian encoders and decoder.

Each block owns its parameters: it says which of them form its nonlinear
branch and how closed-form updates (noise variance, a linear decoder's
weights, an affine change of the latent variable) are written into it, so
that nothing outside this file needs a parameter's name.
"""

import numpy as np
import torch
from torch import nn

from ._densities import (
    inverse_positive,
    log_normal_isotropic,
    positive,
)

# The decoders' slope: it keeps leaky-ReLU networks well conditioned and
# invertible, the property nonlinear-ICA mixing functions rely on. It is a
# modelling choice, independent of the slope the data generators use.
LEAKY_RELU_SLOPE = 0.2

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_RELU_SLOPE),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}
# Activations whose second derivative vanishes almost everywhere.
PIECEWISE_LINEAR = frozenset({"relu", "leaky_relu", "identity"})


def initial_noise_variance(x, n_components=None):
    """A starting sigma^2 from the data (a float).

    Without ``n_components``: the mean variance per feature, all of which
    a decoder that starts near the data mean leaves unexplained. A smaller
    start is inconsistent with such a decoder: the first gradients with
    respect to sigma^2 are then of order n * (total variance / sigma^2), and
    Adam's second-moment estimate remembers them long after.

    With ``n_components``: probabilistic PCA's residual variance, the mean
    variance of ``x`` outside its top ``n_components`` principal directions
    (a low-rank SVD), i.e. the noise level of the best linear model of that
    latent dimension; it saves a VAE most of the way down to a small sigma^2.

    Both are floored (at 1e-3 of the total variance per feature for the
    residual, at 1e-3 for the total); one row or a non-finite variance gives 1.
    """
    n_samples, n_features = x.shape
    if n_samples < 2:
        return 1.0
    if n_components is None:
        variance = float(x.var(0).mean())
        return max(variance, 1e-3) if np.isfinite(variance) else 1.0
    centred = x - x.mean(0)
    total = float(centred.square().sum()) / (n_samples - 1)
    floor = max(1e-3 * total / n_features, 1e-6)
    if n_components >= min(n_samples - 1, n_features):
        return floor
    q = min(n_components + 10, min(x.shape))
    _, singular, _ = torch.svd_lowrank(centred, q=q, niter=4)
    explained = float(singular[:n_components].square().sum()) / (n_samples - 1)
    return max((total - explained) / (n_features - n_components), floor)


def feature_scales(x):
    """Each feature's mean and standard deviation over the rows of ``x``, the
    deviations floored at 1e-2 of their root mean square (a constant feature
    is not divided by 0); scales of 1 for data without spread."""
    loc = x.mean(0)
    scale = x.std(0, correction=0)
    rms = scale.square().mean().sqrt()
    if not bool(rms > 0):
        return loc, torch.ones_like(scale)
    return loc, scale.clamp(min=1e-2 * rms)


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


def _linear_skip(head, n_in, n_out, bias):
    """For a residual map ``skip(v) + head(MLP(v))``: zero the head (the map
    starts linear) and return the linear skip."""
    nn.init.zeros_(head.weight)
    if bias:
        nn.init.zeros_(head.bias)
    return nn.Linear(n_in, n_out, bias=bias)


def _start_broad(raw_variance):
    # A broad posterior at first (s^2 = 1): the KL is then small and the
    # decoder sees varied codes from the first step.
    nn.init.zeros_(raw_variance.weight)
    nn.init.constant_(raw_variance.bias, inverse_positive(1.0))


class GaussianEncoder(nn.Module):
    """q(z | x) = N(mu(x), diag s^2(x)), one MLP trunk with two linear heads.

    With ``residual=True`` the mean is ``skip(x) + head(MLP(x))`` with the
    head starting at zero: a linear encoder that can grow nonlinear.
    ``input_scaling`` = (loc, scale) standardises x before the first layer.
    ``forward`` returns the mean (B, m) and the variances (B, m).
    """

    def __init__(
        self,
        n_in,
        n_components,
        hidden_layer_sizes,
        activation,
        *,
        residual=False,
        input_scaling=None,
    ):
        super().__init__()
        loc, scale = (None, None) if input_scaling is None else input_scaling
        self.register_buffer("input_loc", loc)
        self.register_buffer("input_scale", scale)
        self.trunk, width = make_trunk(n_in, hidden_layer_sizes, activation)
        self.mean = nn.Linear(width, n_components)
        self.raw_variance = nn.Linear(width, n_components)
        _start_broad(self.raw_variance)
        self.skip = (
            _linear_skip(self.mean, n_in, n_components, True) if residual else None
        )

    def forward(self, x):
        if self.input_scale is not None:
            x = (x - self.input_loc) / self.input_scale
        h = self.trunk(x)
        mean = self.mean(h)
        if self.skip is not None:
            mean = mean + self.skip(x)
        return mean, positive(self.raw_variance(h))

    def nonlinear_parameters(self):
        """The parameters of the nonlinear branch (none unless residual)."""
        if self.skip is None:
            return []
        return [*self.trunk.parameters(), *self.mean.parameters()]


class FullCovarianceGaussianEncoder(nn.Module):
    """q(z | x) = N(mu(x), L(x) L(x)^T) with L lower triangular.

    One MLP trunk with three linear heads: the mean, the diagonal of L
    (through ``positive`` on its square, as the diagonal encoder's
    variance) and the entries below it. Those are relative to the column's
    scale, ``L[i, j] = d_j * o_ij``, so that correlations do not depend on
    the posterior's scale; they start at 0, a diagonal posterior of variance
    1. ``forward`` returns the mean (B, m) and L (B, m, m). ``residual`` as
    in :class:`GaussianEncoder`.
    """

    def __init__(
        self, n_in, n_components, hidden_layer_sizes, activation, *, residual=False
    ):
        super().__init__()
        self.trunk, width = make_trunk(n_in, hidden_layer_sizes, activation)
        self.mean = nn.Linear(width, n_components)
        self.skip = (
            _linear_skip(self.mean, n_in, n_components, True) if residual else None
        )
        self.raw_variance = nn.Linear(width, n_components)
        _start_broad(self.raw_variance)
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

    nonlinear_parameters = GaussianEncoder.nonlinear_parameters


class GaussianDecoder(nn.Module):
    """p(x | z) = N(g(z), sigma^2 I) with three ways to get sigma^2.

    ``variance="shared"`` learns one sigma^2 for all samples, ``"fixed"``
    keeps it at ``noise_variance`` (a buffer, which closed-form updates may
    still set), and ``"per_sample"`` is a scalar head ``log s^2 = W2 h + b2``
    on the last hidden layer (on z itself for a linear decoder). With
    ``residual=True`` the mean is ``b + W z + out(MLP(z))`` with ``out``'s
    weights starting at zero: a linear decoder that can grow nonlinear.
    ``output_scale`` (n,) multiplies the mean feature by feature: the layers
    then work in standardised units, while g(z), sigma^2, ``mean_init`` and
    the weights ``set_linear`` writes are in the data's units.
    """

    def __init__(
        self,
        n_components,
        n_features,
        hidden_layer_sizes,
        activation,
        *,
        variance="shared",
        noise_variance=1.0,
        mean_init=None,
        output_scale=None,
        residual=False,
    ):
        super().__init__()
        self.variance = variance
        scale = None if output_scale is None else torch.as_tensor(output_scale)
        self.register_buffer("output_scale", scale)
        self.activation = activation
        self.hidden, width = make_trunk(n_components, hidden_layer_sizes, activation)
        self.out = nn.Linear(width, n_features)
        if mean_init is not None:
            with torch.no_grad():
                self.out.bias.copy_(self._unscaled(torch.as_tensor(mean_init)))
        raw = torch.tensor(inverse_positive(noise_variance))
        if variance == "shared":
            self.raw_noise_variance = nn.Parameter(raw)
        elif variance == "fixed":
            self.register_buffer("raw_noise_variance", raw)
        else:
            self.variance_head = nn.Linear(width, 1)
            nn.init.zeros_(self.variance_head.weight)
            nn.init.constant_(self.variance_head.bias, float(raw))
        self.skip = (
            _linear_skip(self.out, n_components, n_features, False)
            if residual
            else None
        )

    @property
    def is_linear(self):
        """Whether g is affine with no hidden layer (g(z) = A z + b)."""
        return len(self.hidden) == 0 and self.skip is None

    @property
    def piecewise_linear(self):
        """Whether g is piecewise linear in z (zero second derivatives a.e.)."""
        return len(self.hidden) == 0 or self.activation in PIECEWISE_LINEAR

    def forward(self, z):
        """Return the mean g(z) and the variance (scalar, or one per z)."""
        if self._branch_is_constant():
            mean = self._scaled(self.out.bias + self.skip(z))
            return mean, positive(self.raw_noise_variance)
        h = self.hidden(z)
        mean = self.out(h)
        if self.skip is not None:
            mean = mean + self.skip(z)
        mean = self._scaled(mean)
        if self.variance == "per_sample":
            return mean, positive(self.variance_head(h)).squeeze(-1)
        return mean, positive(self.raw_noise_variance)

    def _scaled(self, output):
        return output if self.output_scale is None else output * self.output_scale

    def _unscaled(self, value):
        return value if self.output_scale is None else value / self.output_scale

    def _branch_is_constant(self):
        # A residual branch frozen with its output weight at zero (a linear
        # warm start) adds exactly its output bias, whatever z: computing the
        # MLP, and back-propagating zeros through it, would change nothing.
        if self.skip is None or self.variance == "per_sample":
            return False
        if any(p.requires_grad for p in self.nonlinear_parameters()):
            return False
        return not bool(self.out.weight.any())

    def mean(self, z):
        """The decoder mean g(z) alone."""
        return self(z)[0]

    def log_prob(self, x, z):
        """log p(x | z); ``z`` has shape (..., m) and ``x`` broadcasts to (..., n)."""
        mean, variance = self(z)
        return log_normal_isotropic(x, mean, variance)

    def noise_variance(self):
        """sigma^2 as a tensor (None when the variance depends on z)."""
        if self.variance == "per_sample":
            return None
        return positive(self.raw_noise_variance)

    # ---- parameter groups and closed-form updates ----------------------------

    def nonlinear_parameters(self):
        """The parameters of the nonlinear branch (none unless residual)."""
        if self.skip is None:
            return []
        return [*self.hidden.parameters(), self.out.weight]

    def mean_parameters(self):
        """The parameters of g."""
        layers = [self.hidden, self.out] + (
            [self.skip] if self.skip is not None else []
        )
        return [p for layer in layers for p in layer.parameters()]

    def noise_parameters(self):
        """The learned sigma^2 (empty unless ``variance="shared"``)."""
        return [self.raw_noise_variance] if self.variance == "shared" else []

    def closed_form_parameters(self):
        """What EM moves in closed form: sigma^2, and all of a linear g."""
        linear = [self.out.weight, self.out.bias] if self.is_linear else []
        return self.noise_parameters() + linear

    @torch.no_grad()
    def set_noise_variance(self, value):
        """Write sigma^2 (a float or a 0-d tensor) into the shared or fixed
        variance."""
        raw = inverse_positive(value)
        if isinstance(raw, torch.Tensor):
            self.raw_noise_variance.copy_(raw)
        else:
            self.raw_noise_variance.fill_(raw)

    @torch.no_grad()
    def set_linear(self, weight, bias):
        """Write a linear decoder's weight (n, m) and bias (n,)."""
        if self.output_scale is not None:
            weight = weight / self.output_scale.unsqueeze(1)
        self.out.weight.copy_(weight)
        self.out.bias.copy_(self._unscaled(bias))

    @torch.no_grad()
    def absorb_affine(self, shift, root):
        """Re-express g in z' where z = shift + root z': g changes its
        parametrisation, not its function of z."""
        first = self.hidden[0] if len(self.hidden) else self.out
        weight = first.weight.to(torch.float64)
        first.bias.add_((weight @ shift).to(first.bias.dtype))
        first.weight.copy_((weight @ root).to(first.weight.dtype))
        if self.skip is not None:
            weight = self.skip.weight.to(torch.float64)
            self.out.bias.add_((weight @ shift).to(self.out.bias.dtype))
            self.skip.weight.copy_((weight @ root).to(self.skip.weight.dtype))
