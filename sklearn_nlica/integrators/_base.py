"""The rule container, the base class of the integrators and shared helpers."""

import math
from numbers import Integral
from typing import NamedTuple

import torch
from sklearn.base import BaseEstimator
from torch.quasirandom import SobolEngine

from .._densities import LOG_2PI

# Most entries an integrator's cache holds (rules and sparse-grid builds); the
# least recently used one goes first.
_CACHE_SIZE = 128


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
    values : Tensor of shape (B, K) or None
        The log-integrand at the nodes, when the rule had to evaluate it
        (adaptive rules do), as ``log_integrand`` returned it (with its graph
        when grad mode was on); 0 at nodes of zero weight. None otherwise.
    modes : Tensor of shape (B, C, m) or None
        The posterior modes an adaptive rule placed its nodes on (NaN in
        unused slots), in float64: a ``warm_start`` for the next rule of the
        same points. None for other rules.

    Examples
    --------
    >>> from sklearn_nlica.integrators import GaussHermite
    >>> rule = GaussHermite().rule(1, 3)
    >>> rule.shared, rule.n_nodes
    (True, 3)
    >>> [round(float(w), 6) for w in rule.signed_weights()]
    [0.166667, 0.666667, 0.166667]
    """

    nodes: torch.Tensor
    log_weights: torch.Tensor
    signs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    modes: torch.Tensor | None = None

    @property
    def shared(self):
        """Whether every point of a batch uses the same nodes."""
        return self.nodes.dim() == 2

    @property
    def n_nodes(self):
        """Number of nodes per point, K."""
        return self.nodes.shape[-2]

    def to(self, dtype=None, device=None):
        """The same rule with its tensors cast to ``dtype`` and moved to ``device``.

        Parameters
        ----------
        dtype : torch.dtype or None, default=None
            Floating point type of the returned tensors; None keeps it.
        device : str, torch.device or None, default=None
            Device of the returned tensors; None keeps it.

        Returns
        -------
        rule : Rule
            ``values`` and ``modes`` keep their dtype (only their device
            changes).
        """
        signs = (
            None if self.signs is None else self.signs.to(dtype=dtype, device=device)
        )
        values, modes = (
            None if t is None else t.to(device=device)
            for t in (self.values, self.modes)
        )
        return Rule(
            self.nodes.to(dtype=dtype, device=device),
            self.log_weights.to(dtype=dtype, device=device),
            signs,
            values,
            modes,
        )

    def signed_weights(self):
        """The weights as plain numbers, negative where the rule's sign is.

        Returns
        -------
        weights : Tensor of shape (K,) or (B, K)
            ``exp(log_weights) * signs``, or ``exp(log_weights)`` when
            ``signs`` is None. Sparse grids have negative weights.

        Examples
        --------
        >>> from sklearn_nlica.integrators import SparseGrid
        >>> weights = SparseGrid().rule(2, 20).signed_weights()
        >>> bool((weights < 0).any()), round(float(weights.sum()), 12)
        (True, 1.0)
        """
        weights = self.log_weights.exp()
        return weights if self.signs is None else weights * self.signs

    def shift_rows(self, n_rows):
        """Give each of ``n_rows`` rows its own copy of an equal-weight random rule.

        Each row's nodes are the shared ones moved by an independent uniform
        shift modulo 1 in the uniform scale (a Cranley-Patterson rotation):
        Monte Carlo nodes stay i.i.d. normal, QMC nodes stay a randomised
        low-discrepancy set, and the rows' errors become independent, so that
        the noise of a mini-batch's gradient averages out over its rows instead
        of being one draw shared by all of them.

        Parameters
        ----------
        n_rows : int
            Number of rows B (points of the batch).

        Returns
        -------
        rule : Rule
            Nodes (B, K, m) and log-weights (B, K), the shared log-weights
            broadcast to every row (a view, not a copy); no signs.

        Raises
        ------
        ValueError
            If the rule has per-point nodes or signed weights.

        Notes
        -----
        The shifts are drawn with :func:`torch.rand`, from torch's global
        generator, on the nodes' device. The rotation keeps each node's
        marginal distribution only for rules whose nodes are uniform draws or
        randomised nets with equal weights (``"monte_carlo"``, ``"qmc"``); on a
        deterministic rule it scatters the nodes and the rule loses its
        exactness.

        References
        ----------
        .. [1] R. Cranley and T. N. L. Patterson, "Randomization of number
           theoretic methods for multiple integration", SIAM Journal on
           Numerical Analysis, 13(6), 904-914, 1976.

        Examples
        --------
        >>> import torch
        >>> from sklearn_nlica.integrators import QMC
        >>> rule = QMC().rule(2, 8, generator=torch.Generator().manual_seed(0))
        >>> _ = torch.manual_seed(0)
        >>> rows = rule.shift_rows(3)
        >>> tuple(rows.nodes.shape), tuple(rows.log_weights.shape)
        ((3, 8, 2), (3, 8))
        """
        if not self.shared or self.signs is not None:
            raise ValueError(
                "shift_rows needs a rule with shared nodes and positive "
                "weights, e.g. from 'monte_carlo' or 'qmc'."
            )
        nodes = self.nodes
        eps = torch.finfo(nodes.dtype).eps
        uniform = torch.special.ndtr(nodes)
        shift = torch.rand(
            n_rows, 1, nodes.shape[-1], dtype=nodes.dtype, device=nodes.device
        )
        uniform = torch.remainder(uniform + shift, 1.0).clamp(eps, 1.0 - eps)
        return type(self)(
            torch.special.ndtri(uniform), self.log_weights.expand(n_rows, -1), None
        )


class Integrator(BaseEstimator):
    """Base class of integration rules over a standard normal.

    An integrator hands out the nodes and weights of a rule approximating
    ``E_{z ~ N(0, I_m)}[h(z)]`` through :meth:`rule`.

    Notes
    -----
    Subclasses store their constructor parameters unchanged (so that
    :func:`sklearn.base.clone`, ``get_params`` and grid searches work), declare
    their constraints in ``_parameter_constraints`` and implement
    ``_build(n_dims, n_nodes, generator)``, which returns a float64 CPU
    :class:`Rule`; rules that depend on the integrand override
    ``_rule(n_dims, n_nodes, *, dtype, device, generator, log_integrand,
    warm_start)`` instead. :meth:`rule` checks the sizes, validates the
    parameters (at its first call and after each :meth:`set_params`) and
    dispatches to ``_rule``.

    Deterministic rules set ``_deterministic = True``: their rules are then
    built once per (n_dims, n_nodes, dtype, device) and kept in the instance's
    cache, which holds at most a fixed number of entries, is emptied by
    :meth:`set_params` and is not pickled. Change parameters with
    :meth:`set_params`, not by assigning attributes, so that the cache and the
    validation follow.
    """

    _parameter_constraints: dict = {}
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
        warm_start=None,
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
            two for QMC; adaptive rules use the whole budget).
        dtype : torch.dtype, default=torch.float64
            Floating point type of the returned tensors (and of the z passed
            to ``log_integrand``).
        device : str or torch.device, default="cpu"
            Device of the returned tensors (and of the z passed to
            ``log_integrand``); prior rules are built on the CPU first.
        generator : torch.Generator or None, default=None
            CPU generator for random rules (Monte Carlo draws, QMC scrambling,
            the adaptive rule's search and prior nodes). None uses torch's
            global generator. Deterministic rules ignore it.
        log_integrand : callable or None, default=None
            Required by adaptive rules and ignored by the others, see
            :class:`Adaptive`.
        warm_start : Tensor of shape (B, C, m) or None, default=None
            Adaptive rules: the modes of an earlier rule for the same points
            (its ``Rule.modes``), from which the modes are refined instead of
            searched for; NaN rows have none. Ignored by the other rules.

        Returns
        -------
        rule : Rule
            Shared nodes (K, m) and log-weights (K,) for rules on the prior;
            per-point nodes (B, K, m) and log-weights (B, K) for adaptive
            rules.

        Raises
        ------
        ValueError
            If a size is not a positive integer or a parameter is invalid
            (:class:`~sklearn.utils._param_validation.InvalidParameterError`,
            a subclass of ValueError).
        """
        n_dims, n_nodes = _check_sizes(n_dims, n_nodes)
        if not self.__dict__.get("_params_validated", False):
            self._validate_params()
            self._params_validated = True
        return self._rule(
            n_dims,
            n_nodes,
            dtype=dtype,
            device=torch.device(device),
            generator=generator,
            log_integrand=log_integrand,
            warm_start=warm_start,
        )

    def _rule(
        self, n_dims, n_nodes, *, dtype, device, generator, log_integrand, warm_start
    ):
        """The rule for checked sizes and parameters (prior rules: no integrand)."""
        if not self._deterministic:
            return self._build(n_dims, n_nodes, generator).to(dtype, device)
        return self._cached(
            ("rule", n_dims, n_nodes, dtype, str(device)),
            lambda: self._build(n_dims, n_nodes, generator).to(dtype, device),
        )

    def _build(self, n_dims, n_nodes, generator):
        """Return the rule as float64 CPU tensors."""
        raise NotImplementedError

    def _cached(self, key, build):
        """``build()``, kept under ``key`` until the parameters change.

        The one cache of an integrator: rules by size, dtype and device, and
        the pieces they are built from (sparse-grid levels, base rules of the
        adaptive rule). The least recently used entry is dropped beyond
        ``_CACHE_SIZE`` entries.
        """
        cache = self.__dict__.setdefault("_cache", {})
        if key in cache:
            cache[key] = cache.pop(key)  # now the most recently used
            return cache[key]
        value = build()
        cache[key] = value
        while len(cache) > _CACHE_SIZE:
            del cache[next(iter(cache))]
        return value

    def set_params(self, **params):
        """Set the parameters of this integrator.

        Cached rules are dropped and the parameters are validated again at
        the next call of :meth:`rule`.

        Parameters
        ----------
        **params : dict
            Integrator parameters.

        Returns
        -------
        self : Integrator
        """
        super().set_params(**params)
        self.__dict__.pop("_cache", None)
        self.__dict__.pop("_params_validated", None)
        return self

    def __getstate__(self):
        # Cached rules may live on a GPU; a pickled integrator must load
        # anywhere, and checks its parameters again there. A copy, so that
        # pickling leaves this instance's cache alone.
        state = dict(super().__getstate__())
        state.pop("_cache", None)
        state.pop("_params_validated", None)
        return state


def _uncached(key, build):
    """A stand-in for :meth:`Integrator._cached` that builds every time."""
    return build()


# Rules past this size outgrow memory before they help: QMC error at 2**24
# nodes is already far below any model's noise.
MAX_NODES = 2**24


def _check_sizes(n_dims, n_nodes):
    for name, value in (("n_dims", n_dims), ("n_nodes", n_nodes)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if n_nodes > MAX_NODES:
        raise ValueError(
            f"n_nodes={n_nodes} is more than the {MAX_NODES} nodes a rule may "
            "have; integrator='qmc' or 'adaptive' reach full accuracy with far "
            "fewer."
        )
    return int(n_dims), int(n_nodes)


def _integer_root(n, m):
    """Largest k with k ** m <= n (at least 1)."""
    k = max(1, round(n ** (1.0 / m)))
    while k > 1 and k**m > n:
        k -= 1
    while (k + 1) ** m <= n:
        k += 1
    return k


def _seed_from(generator):
    """A seed for a new random engine, drawn from a torch generator."""
    return int(torch.randint(0, 2**62, (), generator=generator))


def _sobol_normal(n_dims, n_points, generator=None, *, seed=None):
    """Scrambled Sobol points mapped to N(0, I) (float64, CPU); the scrambling
    is drawn from ``generator`` unless a ``seed`` is given."""
    seed = _seed_from(generator) if seed is None else seed
    engine = SobolEngine(n_dims, scramble=True, seed=seed)
    u = engine.draw(n_points, dtype=torch.float64)
    # torch's Sobol points are multiples of 2**-MAXBIT and may be exactly 0;
    # shifting by half a unit keeps them inside (0, 1) for the normal quantile.
    u = u + 2.0 ** -(SobolEngine.MAXBIT + 1)
    return torch.special.ndtri(u)


def _uniform_log_weights(n_points):
    return torch.full((n_points,), -math.log(n_points), dtype=torch.float64)


def _sobol_rule(n_dims, n_points, generator):
    """``n_points`` scrambled Sobol points on N(0, I), equal weights (float64, CPU)."""
    return Rule(
        _sobol_normal(n_dims, n_points, generator), _uniform_log_weights(n_points)
    )


def _log_std_normal(z):
    # Not _densities.log_standard_normal: the order of operations differs, and
    # the rules' weights are kept bitwise as they were.
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


def degree_three_rule(n_dims):
    """Centre and +-a e_i, a^2 = max(3, m + 1), positive weights (float64, CPU).

    Exact for polynomials of degree 3 (and for x_i^4 when a^2 = 3); in one
    dimension it is the 3-point Gauss-Hermite rule.
    """
    scale_sq = max(3.0, n_dims + 1.0)
    axes = math.sqrt(scale_sq) * torch.eye(n_dims, dtype=torch.float64)
    nodes = torch.cat([axes.new_zeros(1, n_dims), axes, -axes])
    weights = torch.full((2 * n_dims + 1,), 0.5 / scale_sq, dtype=torch.float64)
    weights[0] = 1.0 - n_dims / scale_sq
    return Rule(nodes, weights.log())
