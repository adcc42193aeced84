"""The rule container and the base class of the integrators."""

import math
from numbers import Integral
from typing import NamedTuple

import torch
from sklearn.base import BaseEstimator
from torch.quasirandom import SobolEngine

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
