"""Integration rules for expectations over a standard normal latent variable.

Every estimator in this package needs integrals of the form

    E_{e ~ N(0, I_m)}[h(e)]  ~=  sum_j w_j h(e_j),

the marginal likelihood of :class:`NonlinearICAMLE` (h = p(x | z)), the
reconstruction term of the VAEs (h = log p(x | mu + s e)) and importance
weighted likelihoods. An :class:`Integrator` hands out the nodes e_j and the
weights w_j as a :class:`Rule`; how they were chosen (random draws, a lattice,
a Gaussian quadrature, a sparse grid, or nodes adapted to each point's
posterior) is the only thing that differs between the built-in rules.

Weights are always carried as logarithms (plus a sign where a rule has negative
weights) so that callers can combine them with log-densities in a
log-sum-exp without ever forming a probability.

Choosing a rule
---------------
Rules that place their nodes on the prior (``"monte_carlo"``, ``"qmc"``,
``"grid"``, ``"gauss_hermite"``, ``"sparse_grid"``) are fine when the
integrand is spread over the prior, e.g. the VAE's reparameterised
expectations, or a marginal likelihood with few features and a large noise
variance. For the marginal likelihood with many features or a small noise
variance the posterior p(z | x) is far narrower than the prior and every prior
rule misses it (at m = 2, n = 1000, sigma = 0.1: by 10^2 to 10^3 nats per
point with 4096 nodes); :class:`Adaptive` places each point's nodes on its own
posterior and is exact there. It is the default of the maximum likelihood
estimator, with 64 nodes per point: see ``DEFAULT_INTEGRATOR``.
"""

import functools
import math
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from scipy.special import comb, roots_hermitenorm
from sklearn.base import BaseEstimator
from torch.quasirandom import SobolEngine

__all__ = [
    "DEFAULT_INTEGRATOR",
    "DEFAULT_N_NODES",
    "INTEGRATORS",
    "QMC",
    "Adaptive",
    "GaussHermite",
    "Grid",
    "Integrator",
    "MonteCarlo",
    "Rule",
    "SparseGrid",
    "get_integrator",
]

# The default of the maximum likelihood estimator, measured with
# benchmarks/bench_integrators.py (mean error per point, 64 nodes per point):
# - linear decoder (closed-form truth): 5e-11 nat at m = 2, n = 1000,
#   sigma = 0.1, where every prior rule is off by 10^3-10^4 nats (still by
#   10^2 with 4096 nodes), and below 1e-6 nat in every case of m <= 5,
#   n <= 1000, sigma in {1, 0.1};
# - bimodal posteriors (g(z) = z^2 in complex form, m = n = 2, sigma = 0.1):
#   2.4e-3 to 4.4e-3 nat over two draws (1.7e-3 at n = 20), most of it from
#   the points near the fold, whose posteriors are rings; one Laplace
#   component alone is off by log 2 on every point, prior rules by 60 to
#   100 nats with 64 nodes and still by 0.9 to 9 with 4096;
# - random tanh decoders: 4e-8 to 5e-4 nat for m <= 2 once n / sigma^2 >=
#   1000 (1e-4 and 1e-3 nat for m = 3 and 5 at n = 1000, sigma = 0.1), but
#   1e-2 to 1e-1 nat when few features and small noise make the posteriors
#   curved ridges (n = 2, sigma = 0.1), or when sigma = 1 leaves them as wide
#   as the prior (where tensor Gauss-Hermite on the prior does better, m <= 2).
# 64 nodes keep the linear case exact; 256 and 1024 nodes roughly halve and
# quarter the errors of the hard cases.
DEFAULT_INTEGRATOR = "adaptive"
DEFAULT_N_NODES = 64

_LOG_2PI = math.log(2.0 * math.pi)


class Rule(NamedTuple):
    """Nodes and log-weights of an integration rule over N(0, I_m).

    ``sum_j exp(log_weights[j]) * signs[j] * h(nodes[j])`` approximates
    ``E_{z ~ N(0, I_m)}[h(z)]``.

    The tensors are shared with the integrator's cache: treat them as
    read-only.

    Attributes
    ----------
    nodes : Tensor of shape (K, m) or (B, K, m)
        Points at which to evaluate the integrand: shared by every point of a
        batch (2-D) or one set per point (3-D, adaptive rules).
    log_weights : Tensor of shape (K,) or (B, K)
        Logarithms of the absolute weights.
    signs : Tensor of shape (K,) or (B, K), or None
        Signs (+1 or -1) of the weights; None when every weight is positive.
    """

    nodes: torch.Tensor
    log_weights: torch.Tensor
    signs: torch.Tensor | None = None

    @property
    def shared(self):
        """Whether every point of a batch uses the same nodes."""
        return self.nodes.dim() == 2

    @property
    def n_nodes(self):
        """Number of nodes per point, K."""
        return self.nodes.shape[-2]

    def to(self, dtype=None, device=None):
        """The same rule with its tensors cast to ``dtype`` and moved to ``device``."""
        signs = (
            None if self.signs is None else self.signs.to(dtype=dtype, device=device)
        )
        return Rule(
            self.nodes.to(dtype=dtype, device=device),
            self.log_weights.to(dtype=dtype, device=device),
            signs,
        )


# ---------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------


class Integrator(BaseEstimator):
    """Base class of integration rules over a standard normal.

    Subclasses store their constructor parameters unchanged (so that
    :func:`sklearn.base.clone`, ``get_params`` and grid searches work) and
    implement ``_build``. Deterministic rules set ``_deterministic = True``: their
    rules are then built once per (n_dims, n_nodes, dtype, device) and cached.
    """

    _deterministic = False

    @property
    def is_adaptive(self):
        """Whether the rule depends on the integrand (per-point nodes)."""
        return False

    def rule(
        self,
        n_dims,
        n_nodes,
        *,
        dtype=torch.float64,
        device="cpu",
        generator=None,
        log_integrand=None,
    ):
        """Nodes and log-weights approximating an expectation over N(0, I_m).

        Parameters
        ----------
        n_dims : int
            Dimension m of the latent variable.
        n_nodes : int
            Node budget per point: the rule has at most this many nodes (the
            largest rule of its kind that fits, e.g. ``k = floor(n_nodes **
            (1 / m))`` points per axis for tensor rules, the largest power of
            two for QMC).
        dtype : torch.dtype, default=torch.float64
            Floating point type of the returned tensors.
        device : str or torch.device, default="cpu"
            Device of the returned tensors; rules are built on the CPU first.
        generator : torch.Generator or None, default=None
            CPU generator for random rules (Monte Carlo draws, QMC scrambling).
            None uses torch's global generator. Deterministic rules ignore it.
        log_integrand : callable or None, default=None
            Only used by adaptive rules, see :class:`Adaptive`.

        Returns
        -------
        rule : Rule
        """
        n_dims, n_nodes = _check_sizes(n_dims, n_nodes)
        if not self._deterministic:
            return self._build(n_dims, n_nodes, generator).to(dtype, device)
        key = (
            n_dims,
            n_nodes,
            dtype,
            str(torch.device(device)),
            tuple(sorted(self.get_params(deep=False).items())),
        )
        cache = self.__dict__.setdefault("_rule_cache", {})
        if key not in cache:
            cache[key] = self._build(n_dims, n_nodes, generator).to(dtype, device)
        return cache[key]

    def _build(self, n_dims, n_nodes, generator):
        """Return the rule as float64 CPU tensors."""
        raise NotImplementedError

    def __getstate__(self):
        # Cached rules may live on a GPU; a pickled estimator must load anywhere.
        state = super().__getstate__()
        state.pop("_rule_cache", None)
        return state


def _check_sizes(n_dims, n_nodes):
    for name, value in (("n_dims", n_dims), ("n_nodes", n_nodes)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(n_dims), int(n_nodes)


def _integer_root(n, m):
    """Largest k with k ** m <= n (at least 1)."""
    k = max(1, round(n ** (1.0 / m)))
    while k > 1 and k**m > n:
        k -= 1
    while (k + 1) ** m <= n:
        k += 1
    return k


def _draw_seed(generator):
    return int(torch.randint(0, 2**62, (), generator=generator))


def _sobol_normal(n_dims, n_points, generator):
    """Scrambled Sobol points mapped to N(0, I) (float64, CPU)."""
    engine = SobolEngine(n_dims, scramble=True, seed=_draw_seed(generator))
    u = engine.draw(n_points, dtype=torch.float64)
    # torch's Sobol points are multiples of 2**-MAXBIT and may be exactly 0;
    # shifting by half a unit keeps them inside (0, 1) for the normal quantile.
    u = u + 2.0 ** -(SobolEngine.MAXBIT + 1)
    return torch.special.ndtri(u)


def _uniform_log_weights(n_points):
    return torch.full((n_points,), -math.log(n_points), dtype=torch.float64)


def _log_std_normal(z):
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI


# ---------------------------------------------------------------------------
# Rules on the prior
# ---------------------------------------------------------------------------


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

    Examples
    --------
    >>> import torch
    >>> from sklearn_nlica.integrators import QMC
    >>> rule = QMC().rule(2, 100, generator=torch.Generator().manual_seed(0))
    >>> rule.nodes.shape
    torch.Size([64, 2])
    """

    def _build(self, n_dims, n_nodes, generator):
        n_points = 2 ** (n_nodes.bit_length() - 1)
        return Rule(
            _sobol_normal(n_dims, n_points, generator), _uniform_log_weights(n_points)
        )


class Grid(Integrator):
    """Uniform tensor grid on [-l, l]^m weighted by prior density x cell volume.

    The midpoints of ``k = floor(n_nodes ** (1 / m))`` equal cells per axis,
    node z weighted by ``(2 l / k) ** m * N(z; 0, I)``: the grid rule of the
    source notes with the prior density and the cell volume that their version
    omits. With ``half_width=2.5`` as in the notes the mass outside the box
    leaves a 0.02-0.07 nat floor on log-likelihoods; the default 5 does not.

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

    _deterministic = True

    def __init__(self, half_width=5.0, normalize=False):
        self.half_width = half_width
        self.normalize = normalize

    def _build(self, n_dims, n_nodes, generator):
        if not isinstance(self.half_width, Real) or not self.half_width > 0:
            raise ValueError(
                f"half_width must be a positive number, got {self.half_width!r}."
            )
        k = _integer_root(n_nodes, n_dims)
        width = 2.0 * self.half_width / k
        axis = -self.half_width + width * (torch.arange(k, dtype=torch.float64) + 0.5)
        nodes = torch.cartesian_prod(*[axis] * n_dims).reshape(-1, n_dims)
        log_weights = n_dims * math.log(width) + _log_std_normal(nodes)
        if self.normalize:
            log_weights = log_weights - torch.logsumexp(log_weights, 0)
        return Rule(nodes, log_weights)


def _gauss_hermite_1d(n_points):
    """Probabilists' Gauss-Hermite rule for N(0, 1): nodes and log-weights."""
    x, w = roots_hermitenorm(n_points)
    with np.errstate(divide="ignore"):
        log_w = np.log(w) - 0.5 * math.log(2.0 * math.pi)
    # Weights of very large rules underflow; such nodes carry no mass.
    keep = np.isfinite(log_w)
    return x[keep], log_w[keep]


class GaussHermite(Integrator):
    """Tensor product of probabilists' Gauss-Hermite rules.

    ``k = floor(n_nodes ** (1 / m))`` points per axis integrate every
    polynomial of degree up to ``2 k - 1`` in each coordinate exactly.

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
        x, log_w = _gauss_hermite_1d(_integer_root(n_nodes, n_dims))
        x = torch.from_numpy(x)
        log_w = torch.from_numpy(log_w)
        nodes = torch.cartesian_prod(*[x] * n_dims).reshape(-1, n_dims)
        log_weights = torch.cartesian_prod(*[log_w] * n_dims).reshape(-1, n_dims).sum(1)
        return Rule(nodes, log_weights)


# ---------------------------------------------------------------------------
# Smolyak sparse grids
# ---------------------------------------------------------------------------

# Genz-Keister rules for N(0, 1) (the "1+2+6+10+16" family: 1, 3, 9, 19 and 35
# points, exact to degree 1, 5, 15, 29 and 51), each a Patterson extension of
# the previous one: the added points are the roots of the polynomial that is
# orthogonal to all lower degrees under the previous rule's node polynomial times
# the Gaussian density. We computed them in exact rational arithmetic (nodes and
# interpolatory weights to 250 digits, degrees verified), checked them against
# Genz's published values (scaled from the weight exp(-x^2)), and list the
# non-negative half of each symmetric rule. The 19-point rule has one negative
# weight pair.
# fmt: off
_GENZ_KEISTER = {
    1: ((0.0,), (1.0,)),
    3: ((0.0, 1.7320508075688773),
        (0.66666666666666667, 0.16666666666666667)),
    9: ((0.0, 0.74109534999454084, 1.7320508075688773, 2.8612795760570581,
         4.1849560176727319),
        (0.25396825396825397, 0.27007432957793787, 0.094850948509485095,
         0.0079963254708935328, 9.4269457556517489e-5)),
    19: ((0.0, 0.74109534999454084, 1.230423634027306, 1.7320508075688773,
          2.5960831150492022, 2.8612795760570581, 3.2053337944991945,
          4.1849560176727319, 5.1870160399136561, 6.36339449433637),
         (0.30346719985420587, 0.20832499164960888, 0.061151730125247677,
          0.064096054686807589, 0.018085234254798453, -0.0063372247933737359,
          0.0028848804365067513, 6.0123369459847818e-5, 6.0948087314689835e-7,
          8.6296846022298858e-10)),
    35: ((0.0, 0.24899229757996061, 0.74109534999454084, 1.230423634027306,
          1.7320508075688773, 2.2336260616769417, 2.5960831150492022,
          2.8612795760570581, 3.2053337944991945, 3.6353185190372782,
          4.1849560176727319, 4.7364330859522971, 5.1870160399136561,
          5.6981777684881096, 6.36339449433637, 7.1221067008046167,
          7.9807717985905609, 9.0169397898903025),
         (0.00051489450806878429, 0.19176011588804443, 0.14807083115521601,
          0.092364726716986306, 0.045273685465150516, 0.015673473751851152,
          0.0031554462691875638, 0.0023113452403522101, 0.00081895392750226491,
          0.00027524214116785157, 3.57293481989751e-5, 2.734220680118783e-6,
          2.4676421345798079e-7, 2.1394194479561106e-8, 4.6011760348656187e-10,
          3.0972223576063162e-12, 5.4500412650636899e-15, 1.0541326582333341e-18)),
}
# fmt: on
_GENZ_KEISTER_DEGREE = {1: 1, 3: 5, 9: 15, 19: 29, 35: 51}


def _genz_keister_1d(n_points):
    """The full symmetric Genz-Keister rule with ``n_points`` nodes."""
    half_x, half_w = (np.array(v) for v in _GENZ_KEISTER[n_points])
    return (
        np.concatenate([-half_x[:0:-1], half_x]),
        np.concatenate([half_w[:0:-1], half_w]),
    )


@functools.cache
def _sparse_level_rule(family, level):
    """The 1-D rule used at Smolyak ``level`` (exact to degree 2 * level - 1)."""
    if family == "gauss_hermite":
        x, log_w = _gauss_hermite_1d(level)
        return x, np.exp(log_w)
    # Slow growth: the smallest nested rule that is exact to the required degree,
    # so that consecutive levels often share a rule and add no nodes.
    for n_points, degree in _GENZ_KEISTER_DEGREE.items():
        if degree >= 2 * level - 1:
            return _genz_keister_1d(n_points)
    raise ValueError(f"Genz-Keister sparse grids stop at level 26, got level {level}.")


def _multi_indices(n_dims, max_sum):
    """All tuples of positive integers of length n_dims with sum <= max_sum."""
    if n_dims == 1:
        for i in range(1, max_sum + 1):
            yield (i,)
        return
    for i in range(1, max_sum - n_dims + 2):
        for rest in _multi_indices(n_dims - 1, max_sum - i):
            yield (i, *rest)


_SPARSE_CACHE = {}


def _smolyak(family, n_dims, level):
    """Smolyak sparse grid by the combination technique (float64 numpy arrays).

    A(q, m) = sum_{q-m+1 <= |i| <= q} (-1)^(q-|i|) binom(m-1, q-|i|) U_i1 x ... x U_im
    with q = level + m - 1 is exact for all polynomials of total degree
    2 * level - 1 when the 1-D rule U_l is exact to degree 2 l - 1.
    Returns the merged nodes (K, m) and signed weights (K,).
    """
    key = (family, n_dims, level)
    if key in _SPARSE_CACHE:
        return _SPARSE_CACHE[key]
    if n_dims == 1:  # the combination reduces to the level's own rule
        x, w = _sparse_level_rule(family, level)
        _SPARSE_CACHE[key] = (x[:, None], w)
        return _SPARSE_CACHE[key]
    rules = [_sparse_level_rule(family, level_) for level_ in range(1, level + 1)]
    # Identify equal 1-D nodes across levels so that products of them merge.
    values = np.concatenate([x for x, _ in rules])
    order = np.argsort(values, kind="stable")
    new_group = np.diff(values[order]) > 1e-12 * (1.0 + np.abs(values[order][1:]))
    group = np.empty(len(values), dtype=np.int64)
    group[order] = np.concatenate([[0], np.cumsum(new_group)])
    pool = np.zeros(group.max() + 1)
    pool[group] = values
    offsets = np.cumsum([0] + [len(x) for x, _ in rules])
    ids = [group[offsets[i] : offsets[i + 1]] for i in range(level)]

    q = level + n_dims - 1
    keys, weights = [], []
    for index in _multi_indices(n_dims, q):
        gap = q - sum(index)
        if gap > n_dims - 1:
            continue
        coefficient = (-1) ** gap * comb(n_dims - 1, gap, exact=True)
        grids = np.meshgrid(*[ids[i - 1] for i in index], indexing="ij")
        w = np.multiply.reduce(
            np.meshgrid(*[rules[i - 1][1] for i in index], indexing="ij")
        )
        keys.append(np.stack([g.ravel() for g in grids], axis=1))
        weights.append(coefficient * w.ravel())
    keys, inverse = np.unique(np.concatenate(keys), axis=0, return_inverse=True)
    weights = np.concatenate(weights)
    merged = np.bincount(inverse.ravel(), weights=weights)
    # Some nodes' contributions cancel exactly (to rounding): drop them.
    scale = np.bincount(inverse.ravel(), weights=np.abs(weights))
    keep = np.abs(merged) > 1e-12 * scale
    result = (pool[keys[keep]], merged[keep])
    _SPARSE_CACHE[key] = result
    return result


def _largest_sparse_level(family, n_dims, n_nodes):
    """Largest Smolyak level whose grid has at most ``n_nodes`` nodes (>= 1)."""

    def fits(level):
        return len(_smolyak(family, n_dims, level)[1]) <= n_nodes

    # Node counts never decrease with the level: double, then bisect.
    max_level = 26 if family == "genz_keister" else n_nodes
    low, high = 1, 2
    while high <= max_level and fits(high):
        low, high = high, 2 * high
    high = min(high, max_level + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


class SparseGrid(Integrator):
    """Smolyak sparse grid of one-dimensional Gauss-type rules.

    Level k (the largest whose grid fits in ``n_nodes``) integrates every
    polynomial of total degree up to ``2 k - 1`` exactly, with far fewer nodes
    than a tensor rule of the same degree when m is large. Some weights are
    negative (the rule's ``signs``): on an integrand concentrated in a small
    part of the prior the weighted sum can even be negative, which
    :func:`~sklearn_nlica._marginal.log_marginal` reports as an error.

    Parameters
    ----------
    univariate : {"gauss_hermite", "genz_keister"}, default="gauss_hermite"
        The one-dimensional rules combined: Gauss-Hermite with l points at
        level l, or the nested Genz-Keister rules (1, 3, 9, 19, 35 points;
        levels up to 26), which share their nodes between levels and so need
        fewer nodes.

    Examples
    --------
    >>> from sklearn_nlica.integrators import SparseGrid
    >>> rule = SparseGrid(univariate="genz_keister").rule(5, 64)
    >>> rule.nodes.shape  # level 3: exact to total degree 5
    torch.Size([51, 5])
    >>> round(float((rule.signs * rule.log_weights.exp()).sum()), 12)
    1.0
    """

    _deterministic = True

    def __init__(self, univariate="gauss_hermite"):
        self.univariate = univariate

    def _build(self, n_dims, n_nodes, generator):
        family = self.univariate
        if family not in ("gauss_hermite", "genz_keister"):
            raise ValueError(
                "SparseGrid univariate must be 'gauss_hermite' or "
                f"'genz_keister', got {family!r}."
            )
        level = _largest_sparse_level(family, n_dims, n_nodes)
        nodes, weights = _smolyak(family, n_dims, level)
        signs = np.sign(weights)
        return Rule(
            torch.from_numpy(nodes.copy()),
            torch.from_numpy(np.log(np.abs(weights))),
            None if (signs > 0).all() else torch.from_numpy(signs),
        )


# ---------------------------------------------------------------------------
# Adaptive rule
# ---------------------------------------------------------------------------

# The Laplace precision along each eigen-direction of the negated Hessian of the
# log-posterior is |eigenvalue| (negative ones mean a saddle or a trough, where
# |eigenvalue| still measures the scale and Newton steps then climb out of it),
# floored so that no direction is wider than twice the prior.
_MIN_PRECISION = 0.25
# Newton steps longer than this (in prior standard deviations) are shortened.
_MAX_STEP = 3.0
# Step fractions tried by the line search, all in one batched evaluation.
_STEP_FRACTIONS = (1.0, 0.5, 0.25, 0.125)
# Stop once every point's Newton decrement promises less than this gain (nats),
# plus the rounding of the log-integrand in its own dtype: a float32 integrand
# cannot resolve smaller gains, and the weights are exact for any mode anyway.
_NEWTON_TOL = 1e-12
# Two Newton end points closer than this squared Mahalanobis distance (one
# posterior standard deviation) are the same mode.
_SAME_MODE = 1.0
# Log-mass handicap (nats) of a Newton start that did not converge.
_STALLED_PENALTY = 1000.0

_TENSOR_GAUSS_HERMITE = GaussHermite()
_SPARSE_GENZ_KEISTER = SparseGrid(univariate="genz_keister")


class _LogPosterior:
    """log h_b(z) + log N(z; 0, I) and its derivatives, in float64 on ``work``."""

    def __init__(self, log_integrand, dtype, device, work):
        self.log_integrand = log_integrand
        self.dtype = dtype
        self.device = device
        self.work = work

    def _call(self, z):
        value = self.log_integrand(z)
        if value.dim() != 2 or value.shape[1] != z.shape[1]:
            raise ValueError(
                "log_integrand must map z of shape (B, K, m) or (1, K, m) "
                f"to values of shape (B, K); got {tuple(value.shape)} for "
                f"z of shape {tuple(z.shape)}."
            )
        return value

    def values(self, z):
        with torch.no_grad():
            value = self._call(z.to(dtype=self.dtype, device=self.device))
        return value.to(dtype=torch.float64, device=self.work) + _log_std_normal(z)

    def derivatives(self, z):
        """Values (B, S), gradients (B, S, m) and Hessians (B, S, m, m) at z."""
        n_dims = z.shape[-1]
        with torch.enable_grad():
            leaf = (
                z.to(dtype=self.dtype, device=self.device).detach().requires_grad_(True)
            )
            value = self._call(leaf)
            (grad,) = torch.autograd.grad(
                value.sum(), leaf, create_graph=True, allow_unused=True
            )
            if grad is None:  # an integrand that does not depend on z
                grad = torch.zeros_like(leaf)
            rows = []
            for i in range(n_dims):
                row = None
                if grad.requires_grad:
                    # Points are independent, so the gradient of the sum over
                    # points is each point's own Hessian row.
                    (row,) = torch.autograd.grad(
                        grad[..., i].sum(), leaf, retain_graph=True, allow_unused=True
                    )
                rows.append(torch.zeros_like(grad) if row is None else row)
            hess = torch.stack(rows, dim=-2)
        as_work = {"dtype": torch.float64, "device": self.work}
        eye = torch.eye(n_dims, **as_work)
        # A non-finite derivative (an integrand that underflows far from the
        # data) must not poison the eigen-decomposition: such points stay put.
        return (
            value.detach().to(**as_work) + _log_std_normal(z),
            torch.nan_to_num(grad.detach().to(**as_work), 0.0, 0.0, 0.0) - z,
            torch.nan_to_num(hess.detach().to(**as_work), 0.0, 0.0, 0.0) - eye,
        )


def _safe_precision(hess):
    """Eigen-decomposition of the negated Hessian, made positive definite."""
    precision = -0.5 * (hess + hess.transpose(-1, -2))
    eigenvalues, eigenvectors = torch.linalg.eigh(precision)
    return eigenvalues.abs().clamp_min(_MIN_PRECISION), eigenvectors


def _log_gaussian(z, mean, eigenvalues, eigenvectors):
    """log N(z; mean, V diag(1/lam) V^T) for z (B, K, m) and C components.

    mean, eigenvalues (B, C, m); eigenvectors (B, C, m, m). Returns (B, K, C).
    """
    diff = z[:, :, None, :] - mean[:, None, :, :]
    rotated = torch.einsum("bcji,bkcj->bkci", eigenvectors, diff)
    return (
        -0.5 * (rotated**2 * eigenvalues[:, None]).sum(-1)
        + 0.5 * eigenvalues.log().sum(-1)[:, None]
        - 0.5 * z.shape[-1] * _LOG_2PI
    )


class Adaptive(Integrator):
    """Nodes placed on each point's posterior, robust to several modes.

    For each point b with integrand h_b, the rule approximates
    E_{z ~ N(0, I)}[h_b(z)] with nodes where the posterior
    p_b(z) ∝ h_b(z) N(z; 0, I) has its mass:

    1. evaluate log h_b on a shared scrambled Sobol set of ``n_search`` prior
       nodes and start Newton's method from the ``n_starts`` best of its local
       maxima (nodes that beat their 2 m nearest neighbours), so that separate
       modes get separate starts;
    2. run batched Newton steps on log h_b(z) + log N(z; 0, I) (exact Hessians by
       autograd; each eigenvalue of the negated Hessian replaced by its
       absolute value, floored at 0.25, so that steps climb out of saddles; a
       batched line search);
    3. keep the ``n_modes`` most massive distinct end points; each gives a
       Laplace component q_c = N(mode_c, H_c^{-1}) (H_c the corrected negated
       Hessian) with a mixture weight a_c proportional to its Laplace estimate
       of the mode's mass; the prior is a defensive component of weight
       a_0 = ``defensive``;
    4. map a base rule through each component (z = mode_c + L_c e with
       L_c L_c^T = H_c^{-1}; an odd number of Gauss-Hermite points per axis, so
       that the mode itself is a node) and add scrambled Sobol prior nodes. A
       node z of component c (the prior included) with base weight w gets the
       weight ``w * a_c * N(z; 0, I) / Q(z)``, Q = a_0 N(0, I) + sum_c a_c q_c:
       the balance heuristic of multiple importance sampling, which keeps the
       rule consistent for any modes and scales.

    Modes and scales are computed without gradients (detached): gradients flow
    only through the integrand at the nodes. The rule is exact when the
    posterior is Gaussian (a linear decoder), accurate to rounding for smooth
    narrow posteriors, and to about 1e-3 nat on posteriors with separated
    near-Gaussian modes. Its limit is posteriors that are neither: rings and
    long curved ridges (few features, small noise, a decoder that folds or is
    nearly flat along a curve), where 64 nodes leave errors of 0.01 to 0.1 nat
    (see ``benchmarks/bench_integrators.py``); more nodes help slowly.

    The defensive prior nodes give a floor: where no Laplace component
    reaches, Q is about a_0 N(0, I) and those nodes weigh 1 / n_prior_nodes
    each whatever a_0 is, so a missed mode is integrated as well as by prior
    QMC instead of being lost (this is what turns errors of 100 nats on
    curved ridges into errors below 1 nat). Where the Laplace components do
    reach, the prior takes a share of order a_0 of the integral, integrated by
    few nodes: a small a_0 keeps that cost near a_0 nats.

    ``n_nodes`` counts the nodes of the returned rule (per point); the search
    and the Newton steps evaluate the integrand at another
    ``n_search + n_starts * (1 + 4) * iterations`` points per point, and
    differentiate it with respect to z only.

    Parameters
    ----------
    n_modes : int, default=2
        Laplace components per point.
    defensive : float in [0, 1), default=1e-6
        Mixture weight a_0 of the prior component. About an eighth of the
        nodes (at least one) go to it, plus what the base rules leave over;
        0 gives every node to the modes and removes the floor.
    n_search : int, default=1024
        Size of the shared QMC search set, which must put a local maximum
        near every mode. On the bimodal benchmark at n = 20, sigma = 0.1
        (narrower modes), 1024 nodes gave a mean error of 1.7e-3 nat against
        4.6e-3 with 256, for up to 50% more time per rule at small n (the
        search is one shared matrix product; the Newton steps cost the rest).
    n_starts : int or None, default=None
        Newton starts per point; None means ``2 * n_modes``.
    max_iter : int, default=20
        Newton iterations at most (they stop earlier at convergence).
    base : {"auto", "gauss_hermite", "sparse_grid", "qmc"}, default="auto"
        Rule mapped through each Laplace component: tensor Gauss-Hermite,
        a Genz-Keister sparse grid, or scrambled Sobol points; ``"auto"`` takes
        Gauss-Hermite for m <= 3 and the sparse grid above.

    Notes
    -----
    ``rule`` needs ``log_integrand``, a callable with this contract:

    - it takes z of shape (B, K, m) (a node set per point) or (1, K, m) (one
      node set shared by all B points), of the ``dtype`` and on the ``device``
      passed to ``rule``;
    - it returns log h_b(z[b, k]) of shape (B, K), e.g. log N(x_b; g(z), sigma^2 I)
      for the marginal likelihood
      (:func:`sklearn_nlica._marginal.gaussian_log_integrand` builds it);
    - each output depends on its own z[b, k] only (no batch statistics), is
      deterministic and twice differentiable by autograd (piecewise linear
      activations are fine: their second derivative is zero).

    The rule's nodes (B, K, m) are the points z at which to evaluate h_b (they
    are already on the posterior: do not map them further), with log-weights
    (B, K).

    Examples
    --------
    >>> import torch
    >>> from sklearn_nlica.integrators import Adaptive
    >>> # h_b(z) = N(x_b; z, 0.1^2): the marginal is N(x_b; 0, 1.01)
    >>> x = torch.tensor([[3.0], [-1.0]], dtype=torch.float64)
    >>> def log_integrand(z):
    ...     return torch.distributions.Normal(z[..., 0], 0.1).log_prob(x)
    >>> rule = Adaptive().rule(1, 16, log_integrand=log_integrand,
    ...                        generator=torch.Generator().manual_seed(0))
    >>> rule.nodes.shape
    torch.Size([2, 16, 1])
    >>> log_p = torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), 1)
    >>> scale = torch.tensor(1.01, dtype=torch.float64).sqrt()
    >>> exact = torch.distributions.Normal(0.0, scale).log_prob(x[:, 0])
    >>> float((log_p - exact).abs().max()) < 1e-6
    True
    """

    def __init__(
        self,
        n_modes=2,
        defensive=1e-6,
        n_search=1024,
        n_starts=None,
        max_iter=20,
        base="auto",
    ):
        self.n_modes = n_modes
        self.defensive = defensive
        self.n_search = n_search
        self.n_starts = n_starts
        self.max_iter = max_iter
        self.base = base

    @property
    def is_adaptive(self):
        return True

    def _check_params(self):
        def positive_int(name, value):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")

        positive_int("n_modes", self.n_modes)
        positive_int("n_search", self.n_search)
        positive_int("max_iter", self.max_iter)
        if self.n_starts is not None:
            positive_int("n_starts", self.n_starts)
        if not isinstance(self.defensive, Real) or not 0 <= self.defensive < 1:
            raise ValueError(f"defensive must be in [0, 1), got {self.defensive!r}.")
        if self.base not in ("auto", "gauss_hermite", "sparse_grid", "qmc"):
            raise ValueError(
                "base must be 'auto', 'gauss_hermite', 'sparse_grid' or "
                f"'qmc', got {self.base!r}."
            )

    def rule(
        self,
        n_dims,
        n_nodes,
        *,
        dtype=torch.float64,
        device="cpu",
        generator=None,
        log_integrand=None,
    ):
        """Per-point nodes and log-weights on the posteriors of ``log_integrand``.

        Parameters
        ----------
        n_dims : int
            Dimension m of the latent variable.
        n_nodes : int
            Nodes per point in the returned rule.
        dtype : torch.dtype, default=torch.float64
            Type of the returned tensors and of the z passed to ``log_integrand``.
        device : str or torch.device, default="cpu"
            Device of the returned tensors and of the z passed to ``log_integrand``.
        generator : torch.Generator or None, default=None
            CPU generator for the QMC scramblings (search set, prior nodes).
        log_integrand : callable
            See the class notes.

        Returns
        -------
        rule : Rule
            Nodes (B, K, m), log-weights (B, K), signs (B, K) or None.
        """
        n_dims, n_nodes = _check_sizes(n_dims, n_nodes)
        self._check_params()
        if log_integrand is None:
            raise ValueError(
                "The adaptive integrator places its nodes on each point's "
                "posterior and needs log_integrand; use a prior rule "
                "(e.g. 'qmc' or 'gauss_hermite') for integrands that are "
                "not given point by point."
            )
        device = torch.device(device)
        # Small dense linear algebra in float64, which MPS lacks.
        work = torch.device("cpu") if device.type == "mps" else device
        posterior = _LogPosterior(log_integrand, dtype, device, work)

        n_modes, per_mode, prior_share = self._split_budget(n_nodes)
        base_nodes, base_log_w, base_signs = self._base_rule(
            n_dims, per_mode, generator
        )
        n_prior = n_nodes - n_modes * len(base_log_w) if prior_share > 0 else 0

        mode, eigenvalues, eigenvectors, log_mass = self._find_modes(
            posterior, n_dims, n_modes, generator
        )
        log_mix = torch.log_softmax(log_mass, dim=1)
        if n_prior:
            log_mix = log_mix + math.log1p(-prior_share)

        # Adapted nodes z = mode + V diag(lam^-1/2) e, for every component.
        base_nodes = base_nodes.to(work)
        scaled = base_nodes[None, None] * eigenvalues.rsqrt()[:, :, None, :]
        z = mode[:, :, None, :] + torch.einsum("bcij,bckj->bcki", eigenvectors, scaled)
        batch = z.shape[0]
        z = z.reshape(batch, -1, n_dims)
        log_w = (base_log_w.to(work)[None, None] + log_mix[:, :, None]).reshape(
            batch, -1
        )
        if n_prior:
            prior_nodes = _sobol_normal(n_dims, n_prior, generator).to(work)
            z = torch.cat([z, prior_nodes.expand(batch, -1, -1)], dim=1)
            prior_log_w = math.log(prior_share) - math.log(n_prior)
            log_w = torch.cat([log_w, log_w.new_full((batch, n_prior), prior_log_w)], 1)
        # Weight the nodes the integrand will actually see (after rounding).
        z = z.to(dtype).to(torch.float64)

        components = [
            _log_gaussian(z, mode, eigenvalues, eigenvectors) + log_mix[:, None]
        ]
        if n_prior:
            components.append((_log_std_normal(z) + math.log(prior_share))[..., None])
        log_q = torch.logsumexp(torch.cat(components, dim=-1), dim=-1)
        log_w = log_w + _log_std_normal(z) - log_q

        signs = None
        if base_signs is not None:
            signs = base_signs.to(work).repeat(n_modes)
            signs = torch.cat([signs, signs.new_ones(n_prior)])
            signs = signs.expand(batch, -1)
        return Rule(z, log_w, signs).to(dtype, device)

    def _split_budget(self, n_nodes):
        """Components, base-rule budget per component and prior mixture weight."""
        reserve = -(-n_nodes // 8) if self.defensive > 0 else 0
        if n_nodes - reserve < 1:
            reserve = 0
        n_modes = min(self.n_modes, n_nodes - reserve)
        prior_share = self.defensive if reserve else 0.0
        return n_modes, (n_nodes - reserve) // n_modes, prior_share

    def _base_rule(self, n_dims, n_points, generator):
        base = self.base
        if base == "auto":
            base = "gauss_hermite" if n_dims <= 3 else "sparse_grid"
        if base == "qmc":
            return (
                _sobol_normal(n_dims, n_points, generator),
                _uniform_log_weights(n_points),
                None,
            )
        if base == "sparse_grid":
            return _SPARSE_GENZ_KEISTER.rule(n_dims, n_points)
        # An odd number of points per axis puts a node on the mode itself, which
        # keeps the mode's own mass when the posterior curves away from the
        # Laplace axes (where an even rule can miss it entirely).
        k = _integer_root(n_points, n_dims)
        k = max(1, k - 1 + k % 2)
        return _TENSOR_GAUSS_HERMITE.rule(n_dims, k**n_dims)

    def _find_modes(self, posterior, n_dims, n_modes, generator):
        """Modes, Laplace precisions (eigen-decomposed) and log-masses (B, C)."""
        search = _sobol_normal(n_dims, self.n_search, generator).to(posterior.work)
        values = posterior.values(search[None])
        starts = search[_local_maxima(search, values, self.n_starts or 2 * n_modes)]
        z, value, eigenvalues, eigenvectors, converged = self._newton(posterior, starts)

        log_mass = value + 0.5 * n_dims * _LOG_2PI - 0.5 * eigenvalues.log().sum(-1)
        # A start where the line search stalled is no mode, and its Laplace
        # "mass" can be far too large (a wide, wrong scale): it would take a
        # slot and swallow a true mode that lies within its width. It only
        # counts when none of the point's starts converged.
        log_mass = torch.where(converged, log_mass, log_mass - _STALLED_PENALTY)
        return _distinct_modes(z, eigenvalues, eigenvectors, log_mass, n_modes)

    def _newton(self, posterior, z):
        """Batched Newton ascent from starts z (B, S, m).

        Returns the end points, their log-posterior values, the eigenvalues
        (made positive) and eigenvectors of the negated Hessian there, and
        whether each start converged (its Newton decrement is below the
        tolerance) rather than stalling or running out of iterations.
        """
        n_dims = z.shape[-1]
        rounding = 8 * torch.finfo(posterior.dtype).eps
        converged = torch.zeros(z.shape[:2], dtype=torch.bool, device=z.device)
        for iteration in range(self.max_iter + 1):
            value, grad, hess = posterior.derivatives(z)
            eigenvalues, eigenvectors = _safe_precision(hess)
            step = torch.einsum(
                "bsij,bsj->bsi",
                eigenvectors,
                torch.einsum("bsji,bsj->bsi", eigenvectors, grad) / eigenvalues,
            )
            tolerance = _NEWTON_TOL + rounding * (value.abs() + 1.0)
            converged = (grad * step).sum(-1) <= tolerance
            if iteration == self.max_iter or bool(converged.all()):
                break
            length = step.norm(dim=-1, keepdim=True)
            step = step * (_MAX_STEP / length).clamp(max=1.0)
            fractions = step.new_tensor(_STEP_FRACTIONS)
            trials = z[:, :, None] + fractions[:, None] * step[:, :, None]
            batch, n_starts = z.shape[:2]
            trial_values = posterior.values(trials.reshape(batch, -1, n_dims))
            trial_values = trial_values.reshape(batch, n_starts, -1)
            best_value, best = trial_values.max(-1)
            # Keep the current point unless a trial improves on it (monotone ascent).
            improved = (best_value > value) & torch.isfinite(best_value)
            if not bool(improved.any()):
                break
            index = best[..., None, None].expand(-1, -1, 1, n_dims)
            z = torch.where(improved[..., None], trials.gather(2, index)[:, :, 0], z)
        return z, value, eigenvalues, eigenvectors, converged


def _local_maxima(search, values, n_starts):
    """Indices (B, n_starts) of starting nodes: the best discrete local maxima.

    A search node is a local maximum of point b's values if it beats its 2 m
    nearest neighbours in the search set; local maxima come first (by value),
    then the remaining nodes by value.
    """
    n_search, n_dims = search.shape
    n_neighbours = min(2 * n_dims, n_search - 1)
    n_starts = min(n_starts, n_search)
    if n_neighbours < 1:
        return values.topk(n_starts, dim=1).indices
    distance = torch.cdist(search, search)
    distance.fill_diagonal_(float("inf"))
    neighbours = distance.topk(n_neighbours, dim=1, largest=False).indices
    values = torch.nan_to_num(values, nan=-math.inf)
    is_max = values >= values[:, neighbours].amax(-1)
    finite = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    span = finite.amax(1, keepdim=True) - finite.amin(1, keepdim=True) + 1.0
    return (values + is_max * span).topk(n_starts, dim=1).indices


def _gather_slots(tensor, index):
    """tensor[b, index[b, c], ...] for a (B, S, ...) tensor and (B, C) indices."""
    index = index.reshape(index.shape + (1,) * (tensor.dim() - 2))
    return tensor.gather(1, index.expand(index.shape[:2] + tensor.shape[2:]))


def _distinct_modes(mode, eigenvalues, eigenvectors, log_mass, n_modes):
    """The ``n_modes`` most massive distinct modes per point.

    When a point has fewer distinct modes, the most massive one fills the
    remaining slots and the slots share its mass, which leaves the mixture
    unchanged.
    """
    log_mass = torch.nan_to_num(log_mass, nan=-math.inf)
    order = log_mass.argsort(dim=1, descending=True)
    mode, eigenvalues, eigenvectors, log_mass = (
        _gather_slots(t, order) for t in (mode, eigenvalues, eigenvectors, log_mass)
    )

    # Squared distance between end points s and t in the metric of t (the
    # more massive one when t < s).
    diff = mode[:, :, None, :] - mode[:, None, :, :]
    rotated = torch.einsum("btji,bstj->bsti", eigenvectors, diff)
    close = (rotated**2 * eigenvalues[:, None]).sum(-1) < _SAME_MODE
    n_found = mode.shape[1]
    keep = torch.ones_like(log_mass, dtype=torch.bool)
    for s in range(1, n_found):
        keep[:, s] = ~(close[:, s, :s] & keep[:, :s]).any(-1)

    key = torch.where(keep, log_mass, torch.full_like(log_mass, -math.inf))
    if n_found < n_modes:
        key = torch.cat(
            [key, key.new_full((key.shape[0], n_modes - n_found), -math.inf)], 1
        )
    top_value, slot = key.topk(n_modes, dim=1)
    slot = torch.where(torch.isfinite(top_value), slot, torch.zeros_like(slot))
    multiplicity = (slot[:, :, None] == slot[:, None, :]).sum(-1)
    return (
        _gather_slots(mode, slot),
        _gather_slots(eigenvalues, slot),
        _gather_slots(eigenvectors, slot),
        _gather_slots(log_mass, slot) - multiplicity.log(),
    )


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------

INTEGRATORS = {
    "monte_carlo": MonteCarlo,
    "qmc": QMC,
    "grid": Grid,
    "gauss_hermite": GaussHermite,
    "sparse_grid": SparseGrid,
    "adaptive": Adaptive,
}


def get_integrator(integrator):
    """Resolve an integrator name or pass an :class:`Integrator` through.

    Parameters
    ----------
    integrator : str or Integrator
        One of ``"monte_carlo"``, ``"qmc"``, ``"grid"``, ``"gauss_hermite"``,
        ``"sparse_grid"``, ``"adaptive"`` (built with default parameters), or an
        Integrator instance, returned unchanged.

    Returns
    -------
    integrator : Integrator

    Examples
    --------
    >>> from sklearn_nlica.integrators import get_integrator
    >>> get_integrator("gauss_hermite")
    GaussHermite()
    """
    if isinstance(integrator, Integrator):
        return integrator
    names = ", ".join(repr(name) for name in INTEGRATORS)
    if isinstance(integrator, str):
        if integrator not in INTEGRATORS:
            raise ValueError(
                f"Unknown integrator {integrator!r}; valid names are {names}."
            )
        return INTEGRATORS[integrator]()
    raise TypeError(
        f"integrator must be one of {names} or an Integrator instance, "
        f"got {type(integrator).__name__}."
    )
