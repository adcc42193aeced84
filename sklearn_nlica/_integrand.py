"""The integrand of the marginal likelihood, log N(x_b; g(z), sigma^2 I), row by row.

For the rows x_b of a batch, :class:`GaussianIntegrand` evaluates
log h_b(z) = log N(x_b; g(z), sigma^2 I) at any set of (row, z) pairs, and its
gradient and Hessian with respect to z, which is what an adaptive integration
rule needs (:class:`~sklearn_nlica.integrators.Adaptive`). Pairs let a rule
evaluate only what it needs: the starts of Newton's method that have not
converged yet, the nodes of the components a point actually has.

Two ways to compute the squared distance ||x_b - g(z)||^2:

- directly, from the decoder's means g(z) (n values per pair), in the
  accumulation dtype (:func:`~sklearn_nlica._densities.accumulation_dtype`);
- through a linear last layer, for a :class:`HeadDecoder` g(z) = W f(z) + c
  whose features f(z) have fewer dimensions H than x has: with
  ``a_b = ||x_b - c||^2``, ``u_b = W^T (x_b - c)`` (H values per row) and the
  Gram matrix ``G = W^T W`` (H x H), computed once per batch,
  ``||x_b - g(z)||^2 = a_b - 2 u_b.f(z) + f(z)^T G f(z)``. A pair then costs
  H^2 instead of n H operations and its derivatives with respect to z never
  touch the n features. The expansion is accumulated in float64 (where the
  device has it), which keeps its cancellation (terms of size ||x - c||^2
  whose difference is about n sigma^2) at the level of rounding.

Derivatives with respect to z come from forward-mode differentiation
(:func:`torch.func.jvp` along the m axes at once, :func:`torch.func.vmap`):
the Jacobian J of g (or of f) gives the gradient J^T r / sigma^2 and the
Gauss-Newton part -J^T J / sigma^2 (-J^T G J / sigma^2) of the Hessian. The
remaining part, sum_k r_k Hess g_k / sigma^2, vanishes for piecewise linear
decoders (ReLU, leaky ReLU, identity: ``piecewise_linear=True``) and is
otherwise computed by forward-over-reverse differentiation
(:func:`torch.func.hessian`).
"""

import functools
import importlib
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.func import hessian, jvp, vmap
from torch.nn import functional as F

from ._densities import (
    CHUNK_ELEMENTS,
    LOG_2PI,
    accumulation_dtype,
    as_variance,
    gaussian_loglik_matrix,
)

__all__ = ["GaussianIntegrand", "HeadDecoder", "pairwise_loglik"]


class HeadDecoder(NamedTuple):
    """A decoder with a linear last layer, g(z) = weight @ features(z) + bias.

    Attributes
    ----------
    features : callable
        Maps z of shape (N, m) to features of shape (N, H); ``torch.func``
        must be able to differentiate it (plain tensor operations and
        modules).
    weight : Tensor of shape (n, H)
    bias : Tensor of shape (n,)
    piecewise_linear : bool, default=False
        Whether ``features`` is piecewise linear in z (ReLU-type activations),
        so that its second derivatives vanish almost everywhere.
    """

    features: Callable
    weight: torch.Tensor
    bias: torch.Tensor
    piecewise_linear: bool = False

    def __call__(self, z):
        return F.linear(self.features(z), self.weight, self.bias)

    @property
    def projects(self):
        """Whether the features have fewer dimensions than the output."""
        return self.weight.shape[1] < self.weight.shape[0]


def _decode(decoder, z):
    """g(z) for z of shape (..., m), shape (..., n)."""
    means = decoder(z.reshape(-1, z.shape[-1]))
    return means.reshape(z.shape[:-1] + means.shape[-1:])


def pair_width(decoder, n_features):
    """Elements that one (point, node) pair holds: a projecting decoder's
    features (the integrand goes through their Gram matrix), else the n
    outputs."""
    if isinstance(decoder, HeadDecoder) and decoder.projects:
        return decoder.weight.shape[1]
    return n_features


def _pair_chunks(n_pairs, width, size=None):
    """Slices of ``size`` pairs, or of about CHUNK_ELEMENTS / width."""
    size = size or max(1, CHUNK_ELEMENTS // max(1, width))
    return [slice(start, start + size) for start in range(0, n_pairs, size)]


class _Quadratic(NamedTuple):
    """a_b = ||x_b - c||^2, u_b = W^T (x_b - c) and G = W^T W, in float64."""

    offset: torch.Tensor  # (B,)
    linear: torch.Tensor  # (B, H)
    gram: torch.Tensor  # (H, H)


class GaussianIntegrand:
    """log N(x_b; g(z), sigma^2 I) for the rows x_b of a batch, as a function of z.

    Parameters
    ----------
    x : Tensor of shape (B, n)
    decoder : callable or HeadDecoder
        Maps (N, m) to (N, n). A :class:`HeadDecoder` whose features are
        narrower than n is evaluated through its Gram matrix.
    noise_variance : float or Tensor
        sigma^2 (a tensor may require grad).
    piecewise_linear : bool or None, default=None
        Whether the decoder's second derivatives vanish almost everywhere;
        None takes ``decoder.piecewise_linear`` (False for plain callables).
    chunk_size : int or None, default=None
        Pairs per chunk; None keeps every chunk's largest intermediate near
        2**24 elements.

    Notes
    -----
    Values are in the accumulation dtype and keep their graph when grad mode
    is on (gradients reach the decoder's parameters and sigma^2); z
    derivatives are computed without a graph. Called as a function, the
    integrand follows the contract of
    :class:`~sklearn_nlica.integrators.Adaptive`: z of shape (B, K, m) or
    (1, K, m) (shared by every row) to values of shape (B, K).
    """

    def __init__(
        self, x, decoder, noise_variance, *, piecewise_linear=None, chunk_size=None
    ):
        self.x = x
        self.chunk_size = chunk_size
        self.decoder = decoder
        self.noise_variance = noise_variance
        self.dtype = accumulation_dtype(x)
        self.projected = isinstance(decoder, HeadDecoder) and decoder.projects
        if piecewise_linear is None:
            piecewise_linear = getattr(decoder, "piecewise_linear", False)
        self.piecewise_linear = bool(piecewise_linear)
        self._cache = {}

    @property
    def n_points(self):
        return self.x.shape[0]

    # ---- pieces computed once per batch -------------------------------------

    def _variance(self):
        return as_variance(self.noise_variance, self.dtype, self.x.device)

    def _quadratic(self):
        """The Gram form of a projecting head (with a graph in grad mode)."""
        key = ("quadratic", torch.is_grad_enabled())
        if key not in self._cache:
            weight = self.decoder.weight.to(self.dtype)
            centred = self.x.to(self.dtype) - self.decoder.bias.to(self.dtype)
            self._cache[key] = _Quadratic(
                (centred * centred).sum(1), centred @ weight, weight.T @ weight
            )
        return self._cache[key]

    def _log_density(self, sq_dist):
        variance = self._variance()
        n_features = self.x.shape[1]
        return -0.5 * (sq_dist / variance + n_features * (LOG_2PI + variance.log()))

    # ---- values ---------------------------------------------------------------

    def __call__(self, z):
        if z.shape[0] == 1 and self.n_points != 1:
            return self.shared(z[0])
        return self.values(z)

    def shared(self, z):
        """Values at nodes z (K, m) shared by every row: shape (B, K)."""
        if not self.projected:
            return gaussian_loglik_matrix(
                self.x, _decode(self.decoder, z), self.noise_variance
            )
        quad = self._quadratic()
        features = self.decoder.features(z).to(self.dtype)
        sq_dist = (
            quad.offset[:, None]
            - 2.0 * quad.linear @ features.T
            + ((features @ quad.gram) * features).sum(1)
        )
        return self._log_density(sq_dist.clamp_min(0.0))

    def values(self, z, active=None):
        """Values at per-row points z (B, K, m) where ``active`` (B, K) is True.

        Inactive entries are not evaluated and hold 0.
        """
        if active is None:
            active = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
        rows, cols = active.nonzero(as_tuple=True)
        values = self.pairs(rows, z[rows, cols])
        out = values.new_zeros(active.shape)
        return out.index_put((rows, cols), values)

    def pairs(self, rows, z):
        """log h_{rows[p]}(z[p]) for pairs of rows (P,) and points z (P, m)."""
        width = pair_width(self.decoder, self.x.shape[1])
        parts = [
            self._log_density(self._pair_sq_dist(rows[part], z[part]))
            for part in _pair_chunks(len(rows), width, self.chunk_size)
        ]
        if not parts:
            return torch.zeros(0, dtype=self.dtype, device=self.x.device)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _pair_sq_dist(self, rows, z):
        if self.projected:
            quad = self._quadratic()
            features = self.decoder.features(z).to(self.dtype)
            return (
                quad.offset[rows]
                - 2.0 * (quad.linear[rows] * features).sum(1)
                + ((features @ quad.gram) * features).sum(1)
            ).clamp_min(0.0)
        diff = self.x[rows].to(self.dtype) - self.decoder(z).to(self.dtype)
        return (diff * diff).sum(1)

    # ---- derivatives with respect to z -----------------------------------------

    def derivatives(self, rows, z):
        """Values (P,), gradients (P, m) and Hessians (P, m, m) of log h at pairs.

        In the accumulation dtype, without a graph.
        """
        width = pair_width(self.decoder, self.x.shape[1])
        parts = [
            self._pair_derivatives(rows[part], z[part])
            for part in _pair_chunks(
                len(rows), width * (z.shape[-1] + 1), self.chunk_size
            )
        ]
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(items) for items in zip(*parts))

    def _pair_derivatives(self, rows, z):
        with torch.no_grad():
            function = self.decoder.features if self.projected else self.decoder
            out, jac = _value_and_jacobian(function, z)
            out, jac = out.to(self.dtype), jac.to(self.dtype)
            if self.projected:
                quad = self._quadratic()
                metric_jac = torch.einsum("hk,pkm->phm", quad.gram, jac)
                residual = quad.linear[rows] - out @ quad.gram
                sq_dist = quad.offset[rows] - (
                    (quad.linear[rows] + residual) * out
                ).sum(1)
                sq_dist = sq_dist.clamp_min(0.0)
            else:
                metric_jac = jac
                residual = self.x[rows].to(self.dtype) - out
                sq_dist = (residual * residual).sum(1)
            variance = self._variance()
            grad = torch.einsum("phm,ph->pm", jac, residual) / variance
            hess = -torch.einsum("phm,phk->pmk", jac, metric_jac) / variance
            if not self.piecewise_linear:
                hess = hess + _curvature(function, z, residual) / variance
            return self._log_density(sq_dist), grad, hess


@functools.cache
def _load_forward_mode():
    # torch's forward mode imports its jvp decompositions on first use, built
    # with the deprecated torch.jit.script: load them once without the warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        importlib.import_module("torch._decomp.decompositions_for_jvp")


def _value_and_jacobian(function, z):
    """function(z) (P, H) and its Jacobian (P, H, m), by forward mode along all
    m axes at once (the primal pass is shared by the m tangents)."""
    chained = _chain_jacobian(function, z)
    if chained is not None:
        return chained
    _load_forward_mode()
    n_dims = z.shape[-1]
    eye = torch.eye(n_dims, dtype=z.dtype, device=z.device)
    tangents = eye[:, None, :].expand(n_dims, *z.shape)

    def along(tangent):
        return jvp(function, (z,), (tangent,))

    out, jac = vmap(along, out_dims=(None, -1))(tangents)
    return out, jac


def _layer_slope(layer, h):
    """The derivative of an elementwise ``layer`` at its inputs h (None: unknown)."""
    if isinstance(layer, nn.LeakyReLU):
        return torch.where(h > 0, 1.0, layer.negative_slope).to(h.dtype)
    if isinstance(layer, nn.ReLU):
        return (h > 0).to(h.dtype)
    if isinstance(layer, nn.Tanh):
        return 1.0 - torch.tanh(h) ** 2
    if isinstance(layer, nn.Sigmoid):
        s = torch.sigmoid(h)
        return s * (1.0 - s)
    return None


def _chain_jacobian(function, z):
    """function(z) and its Jacobian by the chain rule, layer by layer, for a
    :class:`HeadDecoder` or an ``nn.Sequential`` of linear layers and
    elementwise activations; None for anything else.

    The same forward mode as :func:`_value_and_jacobian`'s, without
    ``torch.func``'s per-call overhead (which dominates at small widths): the
    tangents travel as one (P, m, H) tensor through each layer's own matrix.
    """
    if isinstance(function, HeadDecoder):
        inner = _chain_jacobian(function.features, z)
        if inner is None:
            return None
        h, jac = inner
        out = F.linear(h, function.weight, function.bias)
        return out, F.linear(jac.transpose(-1, -2), function.weight).transpose(-1, -2)
    if not isinstance(function, nn.Sequential):
        return None
    h = z
    jac = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device).expand(len(z), -1, -1)
    for layer in function:
        if isinstance(layer, nn.Linear):
            h, jac = layer(h), F.linear(jac, layer.weight)
        elif isinstance(layer, nn.Identity):
            continue
        else:
            slope = _layer_slope(layer, h)
            if slope is None:
                return None
            h, jac = layer(h), jac * slope[:, None, :]
    return h, jac.transpose(-1, -2)


def _curvature(function, z, residual):
    """sum_k residual_k Hess_z function_k(z), point by point: (P, m, m)."""
    _load_forward_mode()  # hessian is forward over reverse mode

    def contracted(point, weights):
        return (function(point[None])[0] * weights).sum()

    return vmap(hessian(contracted))(z, residual.to(z.dtype)).to(residual.dtype)


def pairwise_loglik(x, decoder, nodes, active, noise_variance):
    """log N(x_b; g(nodes[b, k]), sigma^2 I) where ``active`` (B, K) is True.

    Parameters
    ----------
    x : Tensor of shape (B, n)
    decoder : callable or HeadDecoder
    nodes : Tensor of shape (B, K, m)
    active : Tensor of shape (B, K), bool
    noise_variance : float or Tensor

    Returns
    -------
    loglik : Tensor of shape (B, K)
        In the accumulation dtype, 0 where ``active`` is False (those nodes
        are not decoded); differentiable.
    """
    return GaussianIntegrand(x, decoder, noise_variance).values(nodes, active)
