"""The adaptive rule: nodes placed on each point's posterior."""

import functools
import math
from numbers import Integral, Real
from typing import NamedTuple

import torch
from sklearn.utils._param_validation import StrOptions

from .._densities import LOG_2PI
from .._validation import NotBoolInterval
from ._base import (
    Integrator,
    Rule,
    _integer_root,
    _log_std_normal,
    _sobol_normal,
    _sobol_rule,
)
from ._prior import _tensor_gauss_hermite
from ._sparse import _sparse_grid_rule

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


class _Laplace(NamedTuple):
    """Laplace components of B points' posteriors, C per point."""

    mode: torch.Tensor  # (B, C, m)
    eigenvalues: torch.Tensor  # (B, C, m), precisions along the eigenvectors
    eigenvectors: torch.Tensor  # (B, C, m, m)
    log_mass: torch.Tensor  # (B, C), Laplace estimates of the modes' masses


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


def _log_gaussian(z, laplace):
    """log q_c(z) = log N(z; mode_c, V diag(1/lam) V^T): (B, K, C) for z (B, K, m)."""
    diff = z[:, :, None, :] - laplace.mode[:, None, :, :]
    rotated = torch.einsum("bcji,bkcj->bkci", laplace.eigenvectors, diff)
    return (
        -0.5 * (rotated**2 * laplace.eigenvalues[:, None]).sum(-1)
        + 0.5 * laplace.eigenvalues.log().sum(-1)[:, None]
        - 0.5 * z.shape[-1] * LOG_2PI
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

    Modes and scales are detached: gradients flow only through the integrand
    at the nodes. The rule is exact on Gaussian posteriors (a linear decoder)
    and accurate on smooth narrow or separated near-Gaussian modes; its limit
    is rings and long curved ridges (few features, small noise, a decoder that
    folds or is nearly flat along a curve), where the error falls slowly with
    the budget. The defensive prior nodes give a floor: where no Laplace
    component reaches, Q is about a_0 N(0, I) and those nodes weigh
    1 / n_prior_nodes each whatever a_0 is, so a missed mode is integrated as
    by prior QMC instead of being lost; where the components do reach, the
    prior's share of order a_0 of the integral costs about a_0 nats.

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
        near every mode (narrow modes need a dense one).
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
    :meth:`rule` needs ``log_integrand``, a callable with this contract:

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
    (B, K), and signs (B, K) when the base rule has negative weights. One
    component without the prior is adaptive Gauss-Hermite quadrature [1]_
    [2]_; the mixture follows the balance heuristic [3]_ with a defensive
    prior component [4]_.

    References
    ----------
    .. [1] J. C. Naylor and A. F. M. Smith, "Applications of a method for the
       efficient computation of posterior distributions", Journal of the Royal
       Statistical Society, Series C (Applied Statistics), 31(3), 214-225,
       1982.
    .. [2] Q. Liu and D. A. Pierce, "A note on Gauss-Hermite quadrature",
       Biometrika, 81(3), 624-629, 1994.
    .. [3] E. Veach and L. J. Guibas, "Optimally combining sampling techniques
       for Monte Carlo rendering", Proceedings of SIGGRAPH 95, 419-428, 1995.
    .. [4] T. Hesterberg, "Weighted average importance sampling and defensive
       mixture distributions", Technometrics, 37(2), 185-194, 1995.

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

    _parameter_constraints = {
        "n_modes": [NotBoolInterval(Integral, 1, None, closed="left")],
        "defensive": [NotBoolInterval(Real, 0, 1, closed="left")],
        "n_search": [NotBoolInterval(Integral, 1, None, closed="left")],
        "n_starts": [None, NotBoolInterval(Integral, 1, None, closed="left")],
        "max_iter": [NotBoolInterval(Integral, 1, None, closed="left")],
        "base": [StrOptions({"auto", "gauss_hermite", "sparse_grid", "qmc"})],
    }

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
        """True: the nodes depend on the integrand, one set per point."""
        return True

    def _rule(self, n_dims, n_nodes, *, dtype, device, generator, log_integrand):
        """Per-point nodes and log-weights on the posteriors of ``log_integrand``."""
        if log_integrand is None:
            raise ValueError(
                "The adaptive integrator places its nodes on each point's "
                "posterior and needs log_integrand; use a prior rule "
                "(e.g. 'qmc' or 'gauss_hermite') for integrands that are "
                "not given point by point."
            )
        # Small dense linear algebra in float64, which MPS lacks.
        work = torch.device("cpu") if device.type == "mps" else device
        posterior = _LogPosterior(log_integrand, dtype, device, work)

        n_modes, per_mode, prior_share = self._split_budget(n_nodes)
        base = self._base_rule(n_dims, per_mode, generator, work)
        n_prior = n_nodes - n_modes * base.n_nodes if prior_share > 0 else 0
        if not n_prior:
            prior_share = 0.0

        laplace = self._find_modes(posterior, n_dims, n_modes, generator)
        log_mix = torch.log_softmax(laplace.log_mass, dim=1)
        if n_prior:
            log_mix = log_mix + math.log1p(-prior_share)
        z, log_w = _adapted_nodes(base, laplace, log_mix)
        if n_prior:
            z, log_w = _add_prior_nodes(z, log_w, n_prior, prior_share, generator)
        # Weight the nodes the integrand will actually see (after rounding).
        z = z.to(dtype).to(torch.float64)
        log_q = _log_proposal(z, laplace, log_mix, prior_share)
        log_w = log_w + _log_std_normal(z) - log_q

        signs = None
        if base.signs is not None:
            signs = base.signs.repeat(n_modes)
            signs = torch.cat([signs, signs.new_ones(n_prior)])
            signs = signs.expand(z.shape[0], -1)
        return Rule(z, log_w, signs).to(dtype, device)

    def _split_budget(self, n_nodes):
        """Components, base-rule budget per component and prior mixture weight."""
        reserve = -(-n_nodes // 8) if self.defensive > 0 else 0
        if n_nodes - reserve < 1:
            reserve = 0
        n_modes = min(self.n_modes, n_nodes - reserve)
        prior_share = self.defensive if reserve else 0.0
        return n_modes, (n_nodes - reserve) // n_modes, prior_share

    def _base_rule(self, n_dims, n_points, generator, work):
        """The rule mapped through each component (float64, on ``work``)."""
        base = self.base
        if base == "auto":
            base = "gauss_hermite" if n_dims <= 3 else "sparse_grid"
        if base == "qmc":
            return _sobol_rule(n_dims, n_points, generator).to(device=work)
        if base == "sparse_grid":
            key = ("base", base, n_dims, n_points, str(work))
            build = functools.partial(
                _sparse_grid_rule, "genz_keister", n_dims, n_points, self._cached
            )
        else:
            # An odd number of points per axis puts a node on the mode itself,
            # which keeps the mode's own mass when the posterior curves away
            # from the Laplace axes (where an even rule can miss it entirely).
            k = _integer_root(n_points, n_dims)
            k = max(1, k - 1 + k % 2)
            key = ("base", base, n_dims, k, str(work))
            build = functools.partial(_tensor_gauss_hermite, n_dims, k)
        return self._cached(key, lambda: build().to(device=work))

    def _find_modes(self, posterior, n_dims, n_modes, generator):
        """The ``n_modes`` Laplace components of every point's posterior."""
        search = _sobol_normal(n_dims, self.n_search, generator).to(posterior.work)
        values = posterior.values(search[None])
        starts = search[_local_maxima(search, values, self.n_starts or 2 * n_modes)]
        z, value, eigenvalues, eigenvectors, converged = self._newton(posterior, starts)

        log_mass = value + 0.5 * n_dims * LOG_2PI - 0.5 * eigenvalues.log().sum(-1)
        # A stalled start is no mode, and its Laplace "mass" can be far too large
        # (a wide, wrong scale): it would swallow a true mode within its width.
        # It only counts when none of the point's starts converged.
        log_mass = torch.where(converged, log_mass, log_mass - _STALLED_PENALTY)
        return _distinct_modes(z, eigenvalues, eigenvectors, log_mass, n_modes)

    def _newton(self, posterior, z):
        """Batched Newton ascent from starts z (B, S, m).

        Returns the end points, their log-posterior values, the eigen-pairs of
        the negated Hessian there (eigenvalues made positive), and whether each
        start converged rather than stalled or ran out of iterations.
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


def _adapted_nodes(base, laplace, log_mix):
    """Base nodes mapped through every component, z = mode + V diag(lam^-1/2) e.

    Returns the nodes (B, C * K, m) and their log-weights before the balance
    heuristic, ``log w + log a_c`` (B, C * K).
    """
    scaled = base.nodes[None, None] * laplace.eigenvalues.rsqrt()[:, :, None, :]
    z = laplace.mode[:, :, None, :] + torch.einsum(
        "bcij,bckj->bcki", laplace.eigenvectors, scaled
    )
    batch, n_dims = z.shape[0], z.shape[-1]
    log_w = (base.log_weights[None, None] + log_mix[:, :, None]).reshape(batch, -1)
    return z.reshape(batch, -1, n_dims), log_w


def _add_prior_nodes(z, log_w, n_prior, prior_share, generator):
    """Append ``n_prior`` scrambled Sobol prior nodes shared by every point."""
    batch, _, n_dims = z.shape
    prior_nodes = _sobol_normal(n_dims, n_prior, generator).to(z.device)
    z = torch.cat([z, prior_nodes.expand(batch, -1, -1)], dim=1)
    prior_log_w = math.log(prior_share) - math.log(n_prior)
    log_w = torch.cat([log_w, log_w.new_full((batch, n_prior), prior_log_w)], 1)
    return z, log_w


def _log_proposal(z, laplace, log_mix, prior_share):
    """log Q(z) of the mixture of the Laplace components and the prior (B, K)."""
    components = [_log_gaussian(z, laplace) + log_mix[:, None]]
    if prior_share:
        components.append((_log_std_normal(z) + math.log(prior_share))[..., None])
    return torch.logsumexp(torch.cat(components, dim=-1), dim=-1)


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
    """The Laplace components of the ``n_modes`` most massive distinct modes.

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
    return _Laplace(
        _gather_slots(mode, slot),
        _gather_slots(eigenvalues, slot),
        _gather_slots(eigenvectors, slot),
        _gather_slots(log_mass, slot) - multiplicity.log(),
    )
