"""Posterior modes for the adaptive rule: search, Newton's method, distinct modes.

Everything here works on B points at once, each with S candidate points z
(B, S, m) and a mask of the entries still in play: an entry is evaluated only
while it is active, so that a point's result never depends on the other
points of its batch (a converged start stops; it does not wait for the
slowest one).
"""

import math
from typing import NamedTuple

import torch

from .._densities import LOG_2PI
from ._base import _log_std_normal

# The Laplace precision along each eigen-direction of the negated Hessian of the
# log-posterior is |eigenvalue| (negative ones mean a saddle or a trough, where
# |eigenvalue| still measures the scale and Newton steps then climb out of it),
# floored so that no direction is wider than twice the prior.
_MIN_PRECISION = 0.25
# Newton steps longer than this (in prior standard deviations) are shortened.
_MAX_STEP = 3.0
# Step fractions tried by the backtracking line search, longest first.
_STEP_FRACTIONS = (1.0, 0.5, 0.25, 0.125)
# A start has converged once its Newton decrement (the squared Mahalanobis
# length of its step) is below this, plus the rounding of the log-integrand in
# its own dtype: the mode is then within 0.1 posterior standard deviations,
# which changes the Laplace component too little to matter (the weights are
# exact for any centre, and a point whose ratios stray gets the whole budget),
# while a warm start from the previous epoch usually passes at once.
_NEWTON_TOL = 1e-2
# The same for a warm start (a mode kept from the rule of an earlier step):
# a decrement of 0.3 puts it within 0.55 posterior standard deviations, where
# the Laplace component is as good a proposal (the base rule still integrates
# the ratio to it almost exactly), so most warm starts need no step at all.
_WARM_TOL = 0.3
# A start that no step fraction improves has stalled; it counts as converged
# when its Newton decrement promises less than this (nats): a piecewise linear
# decoder (ReLU-type) makes log p piecewise quadratic, and its mode often sits
# on a kink where the gradient does not vanish and Newton's step overshoots;
# such a stall is within a fraction of a posterior standard deviation of the
# mode, which is all that the Laplace component (and the refinement check
# after it) needs.
_KINK_TOL = 0.1
# Two Newton end points closer than this squared Mahalanobis distance (one
# posterior standard deviation) are the same mode.
_SAME_MODE = 1.0
# Log-mass handicap (nats) of a Newton start that did not converge (unless it
# is the highest point its point's starts reached: see _laplace).
_STALLED_PENALTY = 1000.0


class Laplace(NamedTuple):
    """Laplace components of B points' posteriors, C slots per point.

    Slots without a mode (a point with fewer distinct modes than slots) have
    ``log_mass = -inf`` and copy the parameters of the point's first slot.
    """

    mode: torch.Tensor  # (B, C, m)
    eigenvalues: torch.Tensor  # (B, C, m), precisions along the eigenvectors
    eigenvectors: torch.Tensor  # (B, C, m, m)
    log_mass: torch.Tensor  # (B, C), Laplace estimates of the modes' masses

    @property
    def present(self):
        """(B, C): the slots that hold a mode."""
        return torch.isfinite(self.log_mass)

    def take(self, n_slots):
        """The first ``n_slots`` slots (the most massive modes)."""
        return Laplace(*(t[:, :n_slots] for t in self))


class SearchSet(NamedTuple):
    """Shared prior nodes (S, m) and each node's 2 m nearest neighbours (S, 2m)."""

    nodes: torch.Tensor
    neighbours: torch.Tensor


def search_set(nodes):
    """The search set of ``nodes`` with its neighbour graph (built once)."""
    n_search, n_dims = nodes.shape
    n_neighbours = min(2 * n_dims, n_search - 1)
    if n_neighbours < 1:
        return SearchSet(nodes, nodes.new_zeros((n_search, 0), dtype=torch.long))
    distance = torch.cdist(nodes, nodes)
    distance.fill_diagonal_(float("inf"))
    neighbours = distance.topk(n_neighbours, dim=1, largest=False).indices
    return SearchSet(nodes, neighbours)


class Posterior:
    """log p_b(z) = log h_b(z) + log N(z; 0, I) in float64 on ``work``.

    ``log_integrand`` follows the contract of :class:`Adaptive`. When it also
    offers ``pairs(rows, z)`` and ``derivatives(rows, z)`` (as
    :class:`sklearn_nlica._integrand.GaussianIntegrand` does), only the active
    entries are evaluated; otherwise every entry is, and derivatives come from
    double backward passes.
    """

    def __init__(self, log_integrand, dtype, device, work):
        self.log_integrand = log_integrand
        self.dtype = dtype
        self.device = device
        self.work = work
        self.by_pairs = hasattr(log_integrand, "pairs") and hasattr(
            log_integrand, "derivatives"
        )

    def _input(self, z):
        return z.to(dtype=self.dtype, device=self.device)

    def _work(self, t):
        return t.to(dtype=torch.float64, device=self.work)

    def _call(self, z):
        value = self.log_integrand(z)
        if value.dim() != 2 or value.shape[1] != z.shape[1]:
            raise ValueError(
                "log_integrand must map z of shape (B, K, m) or (1, K, m) "
                f"to values of shape (B, K); got {tuple(value.shape)} for "
                f"z of shape {tuple(z.shape)}."
            )
        return value

    def shared_values(self, nodes):
        """log p_b at nodes (S, m) shared by every point: (B, S), no graph."""
        with torch.no_grad():
            value = self._work(self._call(self._input(nodes)[None]))
        return value + _log_std_normal(nodes)

    def values(self, z, active):
        """log p_b at z (B, S, m) where ``active``; -inf elsewhere; no graph."""
        with torch.no_grad():
            value = self._work(self.integrand_values(z, active))
        value = value + _log_std_normal(z)
        return torch.where(active, value, torch.full_like(value, -math.inf))

    def integrand_values(self, z, active):
        """log h_b at z where ``active`` (0 elsewhere), in the integrand's own
        dtype and on its device, with a graph when grad mode is on."""
        if self.by_pairs:
            rows, cols = active.to(self.device).nonzero(as_tuple=True)
            value = self.log_integrand.pairs(rows, self._input(z)[rows, cols])
            return value.new_zeros(active.shape).index_put((rows, cols), value)
        value = self._call(self._input(z))
        return torch.where(active.to(value.device), value, torch.zeros_like(value))

    def derivatives(self, z, active):
        """Values (B, S), gradients (B, S, m) and Hessians (B, S, m, m) of
        log p_b at the active entries (-inf, 0 and -I elsewhere), no graph."""
        if self.by_pairs:
            rows, cols = active.nonzero(as_tuple=True)
            parts = self.log_integrand.derivatives(
                rows.to(self.device), self._input(z[rows, cols])
            )
            value, grad, hess = (
                self._work(part).new_zeros(active.shape + part.shape[1:])
                for part in parts
            )
            for full, part in zip((value, grad, hess), parts):
                full[rows, cols] = self._work(part)
        else:
            value, grad, hess = self._double_backward(z)
        eye = torch.eye(z.shape[-1], dtype=torch.float64, device=self.work)
        value = torch.where(active, value, torch.full_like(value, -math.inf))
        # A non-finite derivative (an integrand that underflows far from the
        # data) must not poison the eigen-decomposition: such points stay put.
        return (
            value + _log_std_normal(z),
            torch.nan_to_num(grad, 0.0, 0.0, 0.0) - z,
            torch.nan_to_num(hess, 0.0, 0.0, 0.0) - eye,
        )

    def _double_backward(self, z):
        with torch.enable_grad():
            leaf = self._input(z).detach().requires_grad_(True)
            value = self._call(leaf)
            (grad,) = torch.autograd.grad(
                value.sum(), leaf, create_graph=True, allow_unused=True
            )
            if grad is None:  # an integrand that does not depend on z
                grad = torch.zeros_like(leaf)
            rows = []
            for i in range(z.shape[-1]):
                row = None
                if grad.requires_grad:
                    # Points are independent, so the gradient of the sum over
                    # points is each point's own Hessian row.
                    (row,) = torch.autograd.grad(
                        grad[..., i].sum(), leaf, retain_graph=True, allow_unused=True
                    )
                rows.append(torch.zeros_like(grad) if row is None else row)
            hess = torch.stack(rows, dim=-2)
        return self._work(value.detach()), self._work(grad), self._work(hess)


def safe_precision(hess):
    """Eigen-decomposition of the negated Hessian, made positive definite."""
    precision = -0.5 * (hess + hess.transpose(-1, -2))
    eigenvalues, eigenvectors = torch.linalg.eigh(precision)
    return eigenvalues.abs().clamp_min(_MIN_PRECISION), eigenvectors


class _Ascent(NamedTuple):
    """Newton end points and what the Laplace components need there."""

    z: torch.Tensor  # (B, S, m)
    value: torch.Tensor  # (B, S) log-posterior
    eigenvalues: torch.Tensor  # (B, S, m)
    eigenvectors: torch.Tensor  # (B, S, m, m)
    converged: torch.Tensor  # (B, S) bool

    def where(self, mask, other):
        """Entries of self where ``mask`` (B, S), of ``other`` elsewhere."""
        return _Ascent(
            *(
                torch.where(mask.reshape(mask.shape + (1,) * (a.dim() - 2)), a, b)
                for a, b in zip(self, other)
            )
        )


def newton(posterior, z, active, max_iter, tol=_NEWTON_TOL):
    """Batched Newton ascent on log p_b from starts z (B, S, m) where ``active``.

    Each entry stops on its own once it converges, stalls (no step fraction
    improves it) or runs out of iterations. Returns an :class:`_Ascent`:
    the end points, their log-posterior values, the eigen-pairs of the
    negated Hessian there (eigenvalues made positive) and whether each start
    converged; inactive entries keep their start, value -inf and the prior's
    precision.
    """
    n_dims = z.shape[-1]
    rounding = 8 * torch.finfo(posterior.dtype).eps
    converged = torch.zeros_like(active)
    eye = torch.eye(n_dims, dtype=z.dtype, device=z.device)
    value = torch.full(active.shape, -math.inf, dtype=z.dtype, device=z.device)
    eigenvalues = torch.ones_like(z)
    eigenvectors = eye.expand((*z.shape, n_dims)).clone()
    active = active.clone()
    for iteration in range(max_iter + 1):
        if not bool(active.any()):
            break
        new_value, grad, hess = posterior.derivatives(z, active)
        new_eigenvalues, new_eigenvectors = safe_precision(hess[active])
        value = torch.where(active, new_value, value)
        eigenvalues[active] = new_eigenvalues
        eigenvectors[active] = new_eigenvectors
        step = torch.einsum(
            "bsij,bsj->bsi",
            eigenvectors,
            torch.einsum("bsji,bsj->bsi", eigenvectors, grad) / eigenvalues,
        )
        tolerance = tol + rounding * (value.abs() + 1.0)
        decrement = (grad * step).sum(-1)
        done = active & (decrement <= tolerance)
        converged |= done
        active &= ~done
        if iteration == max_iter or not bool(active.any()):
            break
        z, improved = _line_search(posterior, z, value, step, active)
        stalled = active & ~improved
        converged |= stalled & (decrement <= _KINK_TOL)
        active &= improved
    return _Ascent(z, value, eigenvalues, eigenvectors, converged)


def _line_search(posterior, z, value, step, active):
    """Backtracking: the longest step fraction that improves each active entry."""
    length = step.norm(dim=-1, keepdim=True)
    step = step * (_MAX_STEP / length).clamp(max=1.0)
    new_z = z
    pending = active.clone()
    for fraction in _STEP_FRACTIONS:
        trial = z + fraction * step
        trial_value = posterior.values(trial, pending)
        better = pending & (trial_value > value) & torch.isfinite(trial_value)
        new_z = torch.where(better[..., None], trial, new_z)
        pending &= ~better
        if not bool(pending.any()):
            break
    return new_z, active & ~pending


def local_maxima(search, values, n_starts):
    """Indices (B, n_starts) of starting nodes: the best discrete local maxima.

    A search node is a local maximum of point b's values if it beats its 2 m
    nearest neighbours in the search set; local maxima come first (by value),
    then the remaining nodes by value.
    """
    n_starts = min(n_starts, search.nodes.shape[0])
    if search.neighbours.shape[1] < 1:
        return values.topk(n_starts, dim=1).indices
    values = torch.nan_to_num(values, nan=-math.inf)
    is_max = values >= values[:, search.neighbours].amax(-1)
    finite = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    span = finite.amax(1, keepdim=True) - finite.amin(1, keepdim=True) + 1.0
    return (values + is_max * span).topk(n_starts, dim=1).indices


def find_modes(posterior, search, n_starts, n_modes, max_iter, warm_start=None):
    """The ``n_modes`` Laplace components of every point's posterior.

    Points with a warm start (B, C, m) (earlier modes; NaN rows or slots for
    none) run Newton from it; points without one, and points none of whose
    warm starts converges, search: Newton from the ``n_starts`` best local
    maxima of their values on the shared search set (and from their warm
    starts). Returns a :class:`Laplace` with ``n_modes`` slots.
    """
    n_dims = search.nodes.shape[1]
    kwargs = {"dtype": torch.float64, "device": posterior.work}
    values = None
    if warm_start is None:
        values = posterior.shared_values(search.nodes)
        warm_start = torch.full((values.shape[0], 0, n_dims), math.nan, **kwargs)
    warm_start = warm_start.to(**kwargs)
    n_points = warm_start.shape[0]
    has_warm = torch.isfinite(warm_start).all(-1)
    warm = newton(
        posterior, torch.nan_to_num(warm_start), has_warm, max_iter, _WARM_TOL
    )
    cold = ~warm.converged.any(1)

    n_starts = min(n_starts, search.nodes.shape[0])
    z = torch.zeros(n_points, n_starts, n_dims, **kwargs)
    if bool(cold.any()):
        if values is None:
            values = posterior.shared_values(search.nodes)
        z[cold] = search.nodes[local_maxima(search, values[cold], n_starts)]
    z = torch.cat([z, warm.z], dim=1)
    active = torch.cat(
        [cold[:, None].expand(-1, n_starts), has_warm & cold[:, None]], 1
    )
    ascent = newton(posterior, z, active, max_iter)
    skipped = _Ascent(*(_pad_slots(t, n_starts) for t in warm))
    ascent = ascent.where(cold[:, None].expand_as(active), skipped)
    valid = torch.where(
        cold[:, None], active, torch.cat([active[:, :n_starts], has_warm], 1)
    )
    return _laplace(ascent, valid, n_modes)


def _pad_slots(tensor, n_slots):
    """Prepend ``n_slots`` empty slots (zeros) to a (B, S, ...) tensor."""
    pad = tensor.new_zeros((tensor.shape[0], n_slots, *tensor.shape[2:]))
    if tensor.dtype == torch.bool:
        pad = pad.bool()
    return torch.cat([pad, tensor], dim=1)


def _laplace(ascent, valid, n_modes):
    """Laplace components of the most massive distinct end points."""
    n_dims = ascent.z.shape[-1]
    log_mass = (
        ascent.value + 0.5 * n_dims * LOG_2PI - 0.5 * ascent.eigenvalues.log().sum(-1)
    )
    # A stalled start is no mode, and its Laplace "mass" can be far too large
    # (a wide, wrong scale): it would swallow a true mode within its width.
    # It only counts when none of the point's starts converged, or when it is
    # the highest point found: then it stalled at the mode itself, on a kink
    # (where piecewise linear decoders put most modes), and the penalty would
    # leave that mode a mixture weight far below the defensive prior's.
    best = torch.where(ascent.converged & valid, ascent.value, -math.inf)
    trusted = ascent.converged | (ascent.value >= best.amax(1, keepdim=True))
    log_mass = torch.where(trusted, log_mass, log_mass - _STALLED_PENALTY)
    log_mass = torch.where(valid, log_mass, torch.full_like(log_mass, -math.inf))
    return distinct_modes(
        ascent.z, ascent.eigenvalues, ascent.eigenvectors, log_mass, n_modes
    )


def _gather_slots(tensor, index):
    """tensor[b, index[b, c], ...] for a (B, S, ...) tensor and (B, C) indices."""
    index = index.reshape(index.shape + (1,) * (tensor.dim() - 2))
    return tensor.gather(1, index.expand(index.shape[:2] + tensor.shape[2:]))


def distinct_modes(mode, eigenvalues, eigenvectors, log_mass, n_modes):
    """The Laplace components of the ``n_modes`` most massive distinct modes.

    When a point has fewer distinct modes, its remaining slots are empty
    (``log_mass = -inf``). A point without any finite mass keeps its first
    end point, with mass 0 (log-mass 0), so that every point has a component.
    """
    log_mass = torch.where(torch.isnan(log_mass), -math.inf, log_mass)
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
    present = torch.isfinite(top_value)
    present[:, 0] = True
    slot = torch.where(present, slot, torch.zeros_like(slot))
    top_value[:, 0] = torch.nan_to_num(top_value[:, 0], neginf=0.0)
    return Laplace(
        _gather_slots(mode, slot),
        _gather_slots(eigenvalues, slot),
        _gather_slots(eigenvectors, slot),
        torch.where(present, top_value, torch.full_like(top_value, -math.inf)),
    )
