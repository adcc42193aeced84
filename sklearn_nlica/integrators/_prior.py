"""Rules that place their nodes on the prior: Monte Carlo, QMC, grids."""

import math
from numbers import Real

import numpy as np
import torch
from scipy.special import roots_hermitenorm

from .._validation import NotBoolInterval
from ._base import (
    Integrator,
    Rule,
    _integer_root,
    _log_std_normal,
    _sobol_rule,
    _uniform_log_weights,
)


class MonteCarlo(Integrator):
    """Independent standard normal draws with equal weights, fresh at every call.

    Unbiased for any integrand, with an error that decreases like
    ``n_nodes ** -1/2``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_nlica.integrators import MonteCarlo
    >>> rule = MonteCarlo().rule(2, 1000, generator=torch.Generator().manual_seed(0))
    >>> rule.nodes.shape, rule.log_weights.shape
    (torch.Size([1000, 2]), torch.Size([1000]))
    """

    def _build(self, n_dims, n_nodes, generator):
        nodes = torch.randn(n_nodes, n_dims, generator=generator, dtype=torch.float64)
        return Rule(nodes, _uniform_log_weights(n_nodes))


class QMC(Integrator):
    """Scrambled Sobol points mapped through the normal quantile.

    Uses the largest power of two not above ``n_nodes`` (Sobol nets are
    balanced only at powers of two). The scrambling is drawn afresh from the
    generator at every call, so the estimate is unbiased, with an error that
    decreases nearly like ``1 / n_nodes`` for smooth integrands.

    References
    ----------
    .. [1] I. M. Sobol', "On the distribution of points in a cube and the
       approximate evaluation of integrals", USSR Computational Mathematics
       and Mathematical Physics, 7(4), 86-112, 1967.
    .. [2] A. B. Owen, "Monte Carlo variance of scrambled net quadrature",
       SIAM Journal on Numerical Analysis, 34(5), 1884-1910, 1997.

    Examples
    --------
    >>> import torch
    >>> from sklearn_nlica.integrators import QMC
    >>> rule = QMC().rule(2, 100, generator=torch.Generator().manual_seed(0))
    >>> rule.nodes.shape
    torch.Size([64, 2])
    """

    def _build(self, n_dims, n_nodes, generator):
        return _sobol_rule(n_dims, 2 ** (n_nodes.bit_length() - 1), generator)


class Grid(Integrator):
    """Uniform tensor grid on [-l, l]^m weighted by prior density x cell volume.

    The midpoints of ``k = floor(n_nodes ** (1 / m))`` equal cells per axis,
    node z weighted by ``(2 l / k) ** m * N(z; 0, I)``: a midpoint rule for the
    integral against the prior density. The mass of the prior outside the box
    is lost, so that a narrow box (small ``l``) biases log-likelihoods
    downwards unless ``normalize`` is set.

    Parameters
    ----------
    half_width : float, default=5.0
        Half-width l of the box.
    normalize : bool, default=False
        Rescale the weights to sum to one, which removes the truncation and
        discretisation error of the constant function (useful with few nodes
        per axis).

    Examples
    --------
    >>> from sklearn_nlica.integrators import Grid
    >>> rule = Grid(half_width=5.0).rule(2, 400)
    >>> rule.nodes.shape
    torch.Size([400, 2])
    >>> round(float(rule.log_weights.exp().sum()), 5)  # mass outside the box: 1e-6
    1.0
    """

    _parameter_constraints = {
        "half_width": [NotBoolInterval(Real, 0, None, closed="neither")],
        "normalize": ["boolean"],
    }
    _deterministic = True

    def __init__(self, half_width=5.0, normalize=False):
        self.half_width = half_width
        self.normalize = normalize

    def _build(self, n_dims, n_nodes, generator):
        k = _points_per_axis(n_dims, n_nodes, "Grid")
        width = 2.0 * self.half_width / k
        axis = -self.half_width + width * (torch.arange(k, dtype=torch.float64) + 0.5)
        nodes = torch.cartesian_prod(*[axis] * n_dims).reshape(-1, n_dims)
        log_weights = n_dims * math.log(width) + _log_std_normal(nodes)
        total = torch.logsumexp(log_weights, 0)
        if self.normalize:
            log_weights = log_weights - total
        elif abs(math.expm1(float(total))) > _GRID_MASS_TOLERANCE:
            # An unnormalised coarse grid shifts every log-likelihood by
            # log(total): not an integration error a user would look for.
            adequate = _adequate_grid_nodes(self.half_width, n_dims)
            remedy = (
                f"give at least {adequate} nodes or use Grid(normalize=True)"
                if adequate
                else "widen half_width (5 holds the mass) or use Grid(normalize=True)"
            )
            raise ValueError(
                f"A Grid of {k} points per axis in {n_dims} dimensions holds "
                f"prior mass {math.exp(float(total)):.4g} instead of 1, which "
                f"biases log-likelihoods by {float(total):.3g} nat; {remedy}."
            )
        return Rule(nodes, log_weights)


# Mass lost by an unnormalised Grid, relative, beyond which it refuses.
_GRID_MASS_TOLERANCE = 1e-4


def _grid_mass_1d(half_width, k):
    width = 2.0 * half_width / k
    axis = -half_width + width * (np.arange(k) + 0.5)
    return width * np.exp(-0.5 * axis**2).sum() / math.sqrt(2.0 * math.pi)


def _adequate_grid_nodes(half_width, n_dims):
    """Fewest nodes whose unnormalised grid holds the prior's mass to tolerance
    (None when the box itself loses too much)."""
    for k in range(2, 1_000):
        if abs(_grid_mass_1d(half_width, k) ** n_dims - 1) <= _GRID_MASS_TOLERANCE:
            return k**n_dims
    return None


def _points_per_axis(n_dims, n_nodes, name):
    """Points per axis of a tensor rule, refusing budgets of one point per axis."""
    k = _integer_root(n_nodes, n_dims)
    if k < 2:
        raise ValueError(
            f"{name} in {n_dims} dimensions needs at least 2 points per axis, "
            f"that is n_nodes >= {2**n_dims}, got n_nodes={n_nodes}; with fewer "
            "nodes use integrator='qmc' or 'adaptive'."
        )
    return k


def _gauss_hermite_1d(n_points):
    """Probabilists' Gauss-Hermite rule for N(0, 1): nodes and log-weights."""
    x, w = roots_hermitenorm(n_points)
    with np.errstate(divide="ignore"):
        log_w = np.log(w) - 0.5 * math.log(2.0 * math.pi)
    # Weights of very large rules underflow; such nodes carry no mass.
    keep = np.isfinite(log_w)
    return x[keep], log_w[keep]


def _tensor_gauss_hermite(n_dims, k):
    """The tensor product of ``k``-point Gauss-Hermite rules (float64, CPU)."""
    x, log_w = _gauss_hermite_1d(k)
    x = torch.from_numpy(x)
    log_w = torch.from_numpy(log_w)
    nodes = torch.cartesian_prod(*[x] * n_dims).reshape(-1, n_dims)
    log_weights = torch.cartesian_prod(*[log_w] * n_dims).reshape(-1, n_dims).sum(1)
    return Rule(nodes, log_weights)


class GaussHermite(Integrator):
    """Tensor product of probabilists' Gauss-Hermite rules.

    ``k = floor(n_nodes ** (1 / m))`` points per axis integrate every
    polynomial of degree up to ``2 k - 1`` in each coordinate exactly.

    Notes
    -----
    The one-dimensional rules are computed by
    :func:`scipy.special.roots_hermitenorm`; nodes whose weights underflow to
    zero (rules of several hundred points) are dropped.

    Examples
    --------
    >>> from sklearn_nlica.integrators import GaussHermite
    >>> rule = GaussHermite().rule(2, 30)
    >>> rule.nodes.shape
    torch.Size([25, 2])
    >>> round(float((rule.log_weights.exp() * rule.nodes[:, 0] ** 4).sum()), 12)
    3.0
    """

    _deterministic = True

    def _build(self, n_dims, n_nodes, generator):
        return _tensor_gauss_hermite(
            n_dims, _points_per_axis(n_dims, n_nodes, "GaussHermite")
        )
