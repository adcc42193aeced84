"""The adaptive rule: nodes placed on each point's posterior."""

import math
from numbers import Integral, Real
from typing import NamedTuple

import torch
from sklearn.utils._param_validation import StrOptions

from .._validation import NotBoolInterval
from ._base import (
    Integrator,
    Rule,
    _integer_root,
    _log_std_normal,
    _seed_from,
    _sobol_normal,
    _uniform_log_weights,
    degree_three_rule,
)
from ._newton import Posterior, find_modes, search_set
from ._prior import _tensor_gauss_hermite
from ._sparse import _sparse_grid_rule

# Latent dimensions up to which base="auto" maps tensor Gauss-Hermite rules
# through the Laplace components (scrambled Sobol points above: positive
# weights, whatever the dimension).
_TENSOR_MAX_DIMS = 3


class Adaptive(Integrator):
    """Nodes placed on each point's posterior, robust to several modes.

    For each point b with integrand h_b, the rule approximates
    E_{z ~ N(0, I)}[h_b(z)] with nodes where the posterior
    p_b(z) ∝ h_b(z) N(z; 0, I) has its mass:

    1. find the modes: from a ``warm_start`` (the modes of an earlier rule for
       the same point) when there is one, else by evaluating log h_b on a
       shared scrambled Sobol set of ``n_search`` prior nodes and starting
       from the ``n_starts`` best of its local maxima (nodes that beat their
       2 m nearest neighbours), so that separate modes get separate starts; a
       point none of whose warm starts converges searches too;
    2. run Newton's method on log h_b(z) + log N(z; 0, I) (exact Hessians;
       each eigenvalue of the negated Hessian replaced by its absolute value,
       floored at 0.25, so that steps climb out of saddles; a backtracking
       line search), each start until it converges on its own;
    3. keep the ``n_modes`` most massive distinct end points; each gives a
       Laplace component q_c = N(mode_c, H_c^{-1}) (H_c the corrected negated
       Hessian) with a mixture weight a_c proportional to its Laplace estimate
       of the mode's mass; the prior is a defensive component of weight
       a_0 = ``defensive``;
    4. map a small rule through each component first: 2 m + 1 nodes (the mode
       and two nodes on each principal axis; degree 3, positive weights),
       plus scrambled Sobol prior nodes. A node z of component c (the prior
       included) with base weight w gets the weight
       ``w * a_c * N(z; 0, I) / Q(z)``, Q = a_0 N(0, I) + sum_c a_c q_c: the
       balance heuristic of multiple importance sampling, which keeps the
       rule consistent for any modes and scales. Where the posterior is the
       mixture, the ratios h_b N / Q are equal at every node;
    5. points whose log-ratios at these nodes stray more than ``refine_tol``
       from the point's estimate (a posterior that is not close to Gaussian,
       or mass that a prior node found away from the modes) get the whole
       budget instead: ``base`` mapped through each of their components,
       with the prior nodes.

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

    ``n_nodes`` bounds the nodes of the returned rule per point; points whose
    posterior is close to Gaussian use fewer (``values`` and ``log_weights``
    mark the unused ones with weight zero). The search and the Newton steps
    evaluate the integrand at up to ``n_search + n_starts * 5 * iterations``
    further points per point, and differentiate it with respect to z only.

    Parameters
    ----------
    n_modes : int, default=2
        Laplace components per point.
    defensive : float in [0, 1), default=1e-6
        Mixture weight a_0 of the prior component. An eighth of the nodes
        (at least one) go to it; 0 gives every node to the modes and removes
        the floor.
    n_search : int, default=1024
        Size of the shared QMC search set, which must put a local maximum
        near every mode (narrow modes need a dense one).
    n_starts : int or None, default=None
        Newton starts per point in a search; None means ``2 * n_modes``.
    max_iter : int, default=20
        Newton iterations at most (they stop earlier at convergence).
    base : {"auto", "gauss_hermite", "sparse_grid", "qmc"}, default="auto"
        Rule mapped through each Laplace component of the points that get
        the whole budget: tensor Gauss-Hermite (an odd number of points per
        axis), a Genz-Keister sparse grid (which has negative weights: its
        sums can fail to be positive), or scrambled Sobol points; ``"auto"``
        takes Gauss-Hermite for m <= 3 and Sobol points above.
    refine_tol : float or None, default=0.05
        Largest spread (nats) of a point's log importance ratios at the
        nodes of the small rule that lets it keep that rule; None gives every
        point the whole budget.

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

    An integrand that also has ``pairs(rows, z)`` (values at P pairs of a
    row index and a point, shape (P,)) and ``derivatives(rows, z)`` (values,
    gradients and Hessians there) is only evaluated where needed, as
    :class:`~sklearn_nlica.NonlinearICAMLE`'s own integrand is.

    The rule's nodes (B, K, m) are the points z at which to evaluate h_b (they
    are already on the posterior: do not map them further), with log-weights
    (B, K), the integrand's values there (``Rule.values``, with their graph
    when grad mode is on), the modes (``Rule.modes``, a warm start for the
    next rule of the same points), and signs (B, K) when the base rule has
    negative weights. One component without the prior is adaptive
    Gauss-Hermite quadrature [1]_ [2]_; the mixture follows the balance
    heuristic [3]_ with a defensive prior component [4]_.

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
    >>> rule.nodes.shape[0], rule.n_nodes <= 16
    (2, True)
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
        "refine_tol": [None, NotBoolInterval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        n_modes=2,
        defensive=1e-6,
        n_search=1024,
        n_starts=None,
        max_iter=20,
        base="auto",
        refine_tol=0.05,
    ):
        self.n_modes = n_modes
        self.defensive = defensive
        self.n_search = n_search
        self.n_starts = n_starts
        self.max_iter = max_iter
        self.base = base
        self.refine_tol = refine_tol

    @property
    def is_adaptive(self):
        """True: the nodes depend on the integrand, one set per point."""
        return True

    def _rule(
        self, n_dims, n_nodes, *, dtype, device, generator, log_integrand, warm_start
    ):
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
        posterior = Posterior(log_integrand, dtype, device, work)
        seed = _seed_from(generator)
        budget = self._budget(n_nodes)
        search = self._cached(
            ("search", n_dims, self.n_search, seed, str(work)),
            lambda: search_set(
                _sobol_normal(n_dims, self.n_search, seed=seed).to(work)
            ),
        )
        with torch.no_grad():
            laplace = find_modes(
                posterior,
                search,
                self.n_starts or 2 * self.n_modes,
                budget.n_modes,
                self.max_iter,
                warm_start,
            )
        mixture = _Mixture.of(laplace, budget.prior_share)
        prior = self._prior_nodes(n_dims, budget.n_prior, seed, dtype, work)
        rule = self._staged_rule(posterior, mixture, prior, budget, seed)
        modes = torch.where(laplace.present[..., None], laplace.mode, math.nan)
        return rule._replace(
            nodes=rule.nodes.to(dtype=dtype, device=device),
            log_weights=rule.log_weights.to(dtype=dtype, device=device),
            signs=None if rule.signs is None else rule.signs.to(dtype, device),
            modes=modes,
        )

    def _budget(self, n_nodes):
        """Prior nodes, components, mode nodes and the prior's mixture weight."""
        reserve = -(-n_nodes // 8) if self.defensive > 0 else 0
        if n_nodes - reserve < 1:
            reserve = 0
        n_modes = min(self.n_modes, n_nodes - reserve)
        share = self.defensive if reserve else 0.0
        return _Budget(reserve, n_modes, n_nodes - reserve, share)

    def _prior_nodes(self, n_dims, n_prior, seed, dtype, work):
        """The defensive prior nodes, as the integrand will see them (rounded)."""
        if not n_prior:
            return torch.zeros(0, n_dims, dtype=torch.float64, device=work)
        nodes = self._cached(
            ("prior", n_dims, n_prior, seed, str(work)),
            lambda: _sobol_normal(n_dims, n_prior, seed=seed + 1).to(work),
        )
        return nodes.to(dtype).to(torch.float64)

    def _base_rule(self, n_dims, n_points, seed, work):
        """The rule mapped through each component (float64, on ``work``)."""
        base = self.base
        if base == "auto":
            base = "gauss_hermite" if n_dims <= _TENSOR_MAX_DIMS else "qmc"
        if base == "qmc":
            key = ("base", base, n_dims, n_points, seed, str(work))

            def build():
                nodes = _sobol_normal(n_dims, n_points, seed=seed + 2)
                return Rule(nodes, _uniform_log_weights(n_points))

        elif base == "sparse_grid":
            key = ("base", base, n_dims, n_points, str(work))

            def build():
                return _sparse_grid_rule("genz_keister", n_dims, n_points, self._cached)

        else:
            # An odd number of points per axis puts a node on the mode itself,
            # which keeps the mode's own mass when the posterior curves away
            # from the Laplace axes (where an even rule can miss it entirely).
            k = _integer_root(n_points, n_dims)
            k = max(1, k - 1 + k % 2)
            key = ("base", base, n_dims, k, str(work))

            def build():
                return _tensor_gauss_hermite(n_dims, k)

        return self._cached(key, lambda: build().to(device=work))

    def _probe_rule(self, n_dims, work):
        """The small first rule (2 m + 1 nodes, degree 3, positive weights)."""
        return self._cached(
            ("probe", n_dims, str(work)),
            lambda: degree_three_rule(n_dims).to(device=work),
        )

    def _staged_rule(self, posterior, mixture, prior, budget, seed):
        """The small rule where it is accurate, the whole budget elsewhere."""
        n_dims, work = prior.shape[1], prior.device
        prior_values = None
        if len(prior):
            prior_values = posterior.log_integrand(
                prior.to(posterior.dtype).to(posterior.device)[None]
            )
        n_present = mixture.laplace.present.sum(1)
        probe = self._probe_rule(n_dims, work)
        full_size = self._base_rule(n_dims, budget.mode_nodes, seed, work).n_nodes
        refine = torch.ones_like(n_present, dtype=torch.bool)
        staged = None
        fits = budget.n_modes * probe.n_nodes <= budget.mode_nodes
        if self.refine_tol is not None and fits and probe.n_nodes < full_size:
            staged = _evaluate(posterior, mixture, probe, prior, prior_values, refine)
            refine = _needs_refinement(staged, self.refine_tol)
        for n_components in range(1, budget.n_modes + 1):
            rows = refine & (n_present == n_components)
            if not bool(rows.any()):
                continue
            base = self._base_rule(
                n_dims, budget.mode_nodes // n_components, seed, work
            )
            full = _evaluate(
                posterior, mixture.take(n_components), base, prior, prior_values, rows
            )
            staged = full if staged is None else _merge(staged, full, rows)
        return Rule(staged.nodes, staged.log_weights, staged.signs, staged.values)


class _Budget(NamedTuple):
    n_prior: int  # defensive prior nodes
    n_modes: int  # Laplace components at most
    mode_nodes: int  # nodes shared by the components of a point
    prior_share: float  # a_0

    @property
    def n_nodes(self):
        return self.n_prior + self.mode_nodes


class _Mixture(NamedTuple):
    """The proposal Q = a_0 N(0, I) + sum_c a_c q_c of every point."""

    laplace: object  # Laplace components (B, C)
    log_mix: torch.Tensor  # (B, C) log a_c, -inf for empty slots
    prior_share: float  # a_0

    @classmethod
    def of(cls, laplace, prior_share):
        log_mix = torch.log_softmax(laplace.log_mass, dim=1)
        if prior_share:
            log_mix = log_mix + math.log1p(-prior_share)
        return cls(laplace, log_mix, prior_share)

    def take(self, n_components):
        return _Mixture(
            self.laplace.take(n_components),
            self.log_mix[:, :n_components],
            self.prior_share,
        )

    def log_density(self, z):
        """log Q(z) for z (B, K, m): (B, K)."""
        laplace = self.laplace
        diff = z[:, :, None, :] - laplace.mode[:, None, :, :]
        rotated = torch.einsum("bcji,bkcj->bkci", laplace.eigenvectors, diff)
        log_q = (
            -0.5 * (rotated**2 * laplace.eigenvalues[:, None]).sum(-1)
            + 0.5 * laplace.eigenvalues.log().sum(-1)[:, None]
            - 0.5 * z.shape[-1] * math.log(2.0 * math.pi)
        )
        components = [log_q + self.log_mix[:, None]]
        if self.prior_share:
            prior = _log_std_normal(z) + math.log(self.prior_share)
            components.append(prior[..., None])
        return torch.logsumexp(torch.cat(components, dim=-1), dim=-1)


class _Staged(NamedTuple):
    """A rule with the integrand's values, and what tells its nodes apart."""

    nodes: torch.Tensor  # (B, K, m), float64
    log_weights: torch.Tensor  # (B, K), -inf at unused nodes
    signs: torch.Tensor | None  # (B, K)
    values: torch.Tensor  # (B, K) log h at the nodes, 0 at unused ones
    log_share: torch.Tensor  # (B, K) log(w a_c): the weight before the heuristic
    is_prior: torch.Tensor  # (B, K) bool


def _evaluate(posterior, mixture, base, prior, prior_values, rows):
    """``base`` mapped through every component, the prior nodes, the balance
    heuristic's weights and the integrand's values, for the points ``rows``."""
    laplace = mixture.laplace
    scaled = base.nodes[None, None] * laplace.eigenvalues.rsqrt()[:, :, None, :]
    z = laplace.mode[:, :, None, :] + torch.einsum(
        "bcij,bckj->bcki", laplace.eigenvectors, scaled
    )
    batch, n_dims = z.shape[0], z.shape[-1]
    z = z.reshape(batch, -1, n_dims).to(posterior.dtype).to(torch.float64)
    log_share = (base.log_weights[None, None] + mixture.log_mix[:, :, None]).reshape(
        batch, -1
    )
    used = torch.isfinite(log_share) & rows[:, None]
    values = posterior.integrand_values(z, used)
    n_prior = len(prior)
    if n_prior:
        z = torch.cat([z, prior.expand(batch, -1, -1)], dim=1)
        prior_share = math.log(mixture.prior_share) - math.log(n_prior)
        log_share = torch.cat(
            [log_share, log_share.new_full((batch, n_prior), prior_share)], 1
        )
        values = torch.cat([values, prior_values.to(values.dtype)], dim=1)
    log_weights = log_share + _log_std_normal(z) - mixture.log_density(z)
    log_weights = torch.where(torch.isfinite(log_share), log_weights, -math.inf)
    signs = None
    if base.signs is not None:
        signs = torch.cat(
            [base.signs.repeat(laplace.mode.shape[1]), base.signs.new_ones(n_prior)]
        )
        signs = signs.expand(batch, -1)
    is_prior = torch.arange(z.shape[1], device=z.device) >= z.shape[1] - n_prior
    return _Staged(z, log_weights, signs, values, log_share, is_prior.expand(batch, -1))


def _needs_refinement(staged, tol):
    """(B,) points whose log-ratios h N / Q at the nodes stray from their estimate.

    At a component's node the ratio should equal the estimate of the
    integral (more than ``tol`` nats off either way: not Gaussian enough);
    at a prior node it should not exceed it (mass the components miss).
    """
    with torch.no_grad():
        terms = staged.log_weights.to(torch.float64) + staged.values.to(torch.float64)
        log_p = torch.logsumexp(terms, dim=1, keepdim=True)
        used = torch.isfinite(staged.log_share)
        ratio = torch.where(used, terms - staged.log_share - log_p, 0.0)
        ratio = torch.nan_to_num(ratio, nan=math.inf, posinf=math.inf, neginf=-math.inf)
        too_far = torch.where(staged.is_prior, ratio, ratio.abs()) > tol
        return (too_far & used).any(1) | ~torch.isfinite(log_p[:, 0])


def _merge(staged, other, rows):
    """``other`` for the points ``rows``, ``staged`` for the rest (padded)."""
    width = max(staged.nodes.shape[1], other.nodes.shape[1])
    first, second = (_pad(s, width) for s in (staged, other))
    merged = _Staged(
        *(
            torch.where(rows.reshape((-1,) + (1,) * (a.dim() - 1)), b.to(a.dtype), a)
            for a, b in zip(first, second)
        )
    )
    if staged.signs is None and other.signs is None:
        merged = merged._replace(signs=None)
    return merged


def _pad(staged, width):
    """Append unused nodes (weight 0) up to ``width``; signs made explicit."""
    batch, n_nodes = staged.log_weights.shape
    signs = staged.signs
    if signs is None:
        signs = staged.log_weights.new_ones(batch, n_nodes)
    extra = width - n_nodes
    if not extra:
        return staged._replace(signs=signs)

    def grow(t, fill):
        pad = t.new_full((batch, extra, *t.shape[2:]), fill)
        return torch.cat([t, pad], dim=1)

    return _Staged(
        grow(staged.nodes, 0.0),
        grow(staged.log_weights, -math.inf),
        grow(signs, 1.0),
        grow(staged.values, 0.0),
        grow(staged.log_share, -math.inf),
        grow(staged.is_prior, False),
    )
