"""Smolyak sparse grids of one-dimensional Gauss-Hermite or Genz-Keister rules."""

import functools
import math

import numpy as np
import torch
from scipy.special import comb
from sklearn.utils._param_validation import StrOptions

from ._base import Integrator, Rule, _uncached
from ._prior import _gauss_hermite_1d

# Genz-Keister rules for N(0, 1) (the "1+2+6+10+16" family: 1, 3, 9, 19 and 35
# points, exact to degree 1, 5, 15, 29 and 51), each a Patterson extension of
# the previous one: the added points are the roots of the polynomial that is
# orthogonal to all lower degrees under the previous rule's node polynomial times
# the Gaussian density. Computed in exact rational arithmetic (nodes and
# interpolatory weights to 250 digits, degrees verified) and checked against the
# published values (scaled from the weight exp(-x^2)); the non-negative half of
# each symmetric rule. The 19-point rule has one negative weight pair.
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


def _level_rule(family, level, cached=_uncached):
    """The 1-D rule used at Smolyak ``level`` (exact to degree 2 * level - 1)."""
    return cached(
        ("level", family, level), functools.partial(_build_level_rule, family, level)
    )


def _build_level_rule(family, level):
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


def _smolyak(family, n_dims, level, cached=_uncached):
    """Smolyak sparse grid by the combination technique (float64 numpy arrays).

    A(q, m) = sum_{q-m+1 <= |i| <= q} (-1)^(q-|i|) binom(m-1, q-|i|) U_i1 x ... x U_im
    with q = level + m - 1 is exact for all polynomials of total degree
    2 * level - 1 when the 1-D rule U_l is exact to degree 2 l - 1.
    Returns the merged nodes (K, m) and signed weights (K,), shared with
    ``cached`` (an integrator's cache; by default nothing is kept).
    """
    return cached(
        ("smolyak", family, n_dims, level),
        functools.partial(_build_smolyak, family, n_dims, level, cached),
    )


def _build_smolyak(family, n_dims, level, cached):
    if n_dims == 1:  # the combination reduces to the level's own rule
        x, w = _level_rule(family, level, cached)
        return x[:, None], w
    rules = [_level_rule(family, level_, cached) for level_ in range(1, level + 1)]
    pool, ids = _node_ids(rules)
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
    return pool[keys[keep]], merged[keep]


def _node_ids(rules):
    """Identify equal 1-D nodes across levels, so that products of them merge.

    Returns the distinct node values and, for each rule, its nodes' indices
    into them.
    """
    values = np.concatenate([x for x, _ in rules])
    order = np.argsort(values, kind="stable")
    new_group = np.diff(values[order]) > 1e-12 * (1.0 + np.abs(values[order][1:]))
    group = np.empty(len(values), dtype=np.int64)
    group[order] = np.concatenate([[0], np.cumsum(new_group)])
    pool = np.zeros(group.max() + 1)
    pool[group] = values
    offsets = np.cumsum([0] + [len(x) for x, _ in rules])
    return pool, [group[offsets[i] : offsets[i + 1]] for i in range(len(rules))]


# The largest sparse grid built; past it QMC is the better rule anyway.
MAX_SPARSE_NODES = 2**16
# Gauss-Hermite rules of more points lose their outer weights to underflow.
_MAX_GAUSS_HERMITE_LEVEL = 100
# A level whose products hold more than this many times the budget (before
# equal nodes merge) is not built.
_OVERSHOOT = 8


def _largest_sparse_level(family, n_dims, n_nodes, cached=_uncached):
    """Largest Smolyak level whose grid has at most ``n_nodes`` nodes (>= 1).

    Levels are tried in turn, each first counted without being built, so the
    work stays within a few times the budget's.
    """
    max_level = 26 if family == "genz_keister" else _MAX_GAUSS_HERMITE_LEVEL
    level = 1
    while level < max_level:
        candidate = level + 1
        limit = _OVERSHOOT * n_nodes
        if _product_nodes(family, n_dims, candidate, limit, cached) > limit:
            break
        if len(_smolyak(family, n_dims, candidate, cached)[1]) > n_nodes:
            break
        level = candidate
    return level


def _product_nodes(family, n_dims, level, limit, cached):
    """Nodes of the combination technique's products before they merge,
    counted up to just past ``limit``."""
    sizes = [len(_level_rule(family, i, cached)[0]) for i in range(1, level + 1)]
    q = level + n_dims - 1
    total = 0
    for index in _multi_indices(n_dims, q):
        if q - sum(index) > n_dims - 1:
            continue
        total += math.prod(sizes[i - 1] for i in index)
        if total > limit:
            break
    return total


def _sparse_grid_rule(family, n_dims, n_nodes, cached=_uncached):
    """The largest Smolyak grid of ``family`` within ``n_nodes`` (float64, CPU)."""
    level = _largest_sparse_level(family, n_dims, n_nodes, cached)
    nodes, weights = _smolyak(family, n_dims, level, cached)
    signs = np.sign(weights)
    return Rule(
        torch.from_numpy(nodes.copy()),
        torch.from_numpy(np.log(np.abs(weights))),
        None if (signs > 0).all() else torch.from_numpy(signs),
    )


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

    Notes
    -----
    The grid is built by the combination technique,
    ``A(q, m) = sum (-1)^(q - |i|) binom(m - 1, q - |i|) U_i1 x ... x U_im``
    over the multi-indices with ``q - m + 1 <= |i| <= q``, ``q = k + m - 1``,
    and equal nodes of the products merged into one.

    References
    ----------
    .. [1] S. A. Smolyak, "Quadrature and interpolation formulas for tensor
       products of certain classes of functions", Soviet Mathematics Doklady,
       4, 240-243, 1963.
    .. [2] T. Gerstner and M. Griebel, "Numerical integration using sparse
       grids", Numerical Algorithms, 18(3-4), 209-232, 1998.
    .. [3] A. Genz and B. D. Keister, "Fully symmetric interpolatory rules for
       multiple integrals over infinite regions with Gaussian weight", Journal
       of Computational and Applied Mathematics, 71(2), 299-309, 1996.

    Examples
    --------
    >>> from sklearn_nlica.integrators import SparseGrid
    >>> rule = SparseGrid(univariate="genz_keister").rule(5, 64)
    >>> rule.nodes.shape  # level 3: exact to total degree 5
    torch.Size([51, 5])
    >>> round(float(rule.signed_weights().sum()), 12)
    1.0
    """

    _parameter_constraints = {
        "univariate": [StrOptions({"gauss_hermite", "genz_keister"})],
    }
    _deterministic = True

    def __init__(self, univariate="gauss_hermite"):
        self.univariate = univariate

    def _build(self, n_dims, n_nodes, generator):
        if n_nodes > MAX_SPARSE_NODES:
            raise ValueError(
                f"SparseGrid builds at most {MAX_SPARSE_NODES} nodes, got "
                f"n_nodes={n_nodes}; for more, use integrator='qmc'."
            )
        rule = _sparse_grid_rule(self.univariate, n_dims, n_nodes, self._cached)
        level2 = len(_smolyak(self.univariate, n_dims, 2, self._cached)[1])
        if rule.n_nodes < level2:
            raise ValueError(
                f"A sparse grid in {n_dims} dimensions needs at least {level2} "
                f"nodes (Smolyak level 2), got n_nodes={n_nodes}."
            )
        return rule
