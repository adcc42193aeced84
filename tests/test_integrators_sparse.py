"""Tests of the Smolyak sparse grids (sklearn_nlica.integrators._sparse)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from integrator_helpers import gaussian_moment, integrate_monomial, total_weight

from sklearn_nlica.integrators import GaussHermite, Rule, SparseGrid
from sklearn_nlica.integrators._sparse import (
    _GENZ_KEISTER,
    _GENZ_KEISTER_DEGREE,
    _genz_keister_1d,
    _smolyak,
)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@SETTINGS
@given(
    univariate=st.sampled_from(["gauss_hermite", "genz_keister"]),
    n_dims=st.integers(1, 4),
    level=st.integers(1, 4),
    data=st.data(),
)
def test_smolyak_exact_to_total_degree_2k_minus_1(univariate, n_dims, level, data):
    nodes, weights = _smolyak(univariate, n_dims, level)
    rule = Rule(
        torch.from_numpy(nodes),
        torch.from_numpy(np.log(np.abs(weights))),
        torch.from_numpy(np.sign(weights)),
    )
    assert float(total_weight(rule)) == pytest.approx(1.0, abs=1e-12)
    degree = data.draw(st.integers(0, 2 * level - 1))
    cuts = sorted(
        data.draw(
            st.lists(st.integers(0, degree), min_size=n_dims - 1, max_size=n_dims - 1)
        )
    )
    powers = np.diff([0, *cuts, degree]).tolist()  # total degree = degree
    expected = gaussian_moment(powers)
    assert integrate_monomial(rule, powers) == pytest.approx(
        expected, rel=1e-9, abs=1e-9
    )


def test_gauss_hermite_smolyak_is_not_exact_at_total_degree_2k():
    nodes, weights = _smolyak("gauss_hermite", 2, 3)
    rule = Rule(
        torch.from_numpy(nodes),
        torch.from_numpy(np.log(np.abs(weights))),
        torch.from_numpy(np.sign(weights)),
    )
    assert abs(integrate_monomial(rule, [6, 0]) - 15.0) > 1e-3


@pytest.mark.parametrize("univariate", ["gauss_hermite", "genz_keister"])
def test_sparse_grid_rule_picks_the_largest_fitting_level(univariate):
    sizes = [len(_smolyak(univariate, 3, level)[1]) for level in (1, 2, 3, 4)]
    assert sizes == sorted(sizes)
    rule = SparseGrid(univariate=univariate).rule(3, sizes[2])
    assert rule.n_nodes == sizes[2]
    rule = SparseGrid(univariate=univariate).rule(3, sizes[3] - 1)
    assert rule.n_nodes == sizes[2]
    assert float(total_weight(rule)) == pytest.approx(1.0)
    # Merged duplicates: all nodes distinct.
    assert len(torch.unique(rule.nodes, dim=0)) == rule.n_nodes


def _hermite_orthonormal(x, degree):
    """He_0..He_degree(x) / sqrt(k!) by the three-term recurrence."""
    values = [np.ones_like(x), x]
    for k in range(1, degree):
        values.append(x * values[k] - k * values[k - 1])
    return [
        v / math.sqrt(math.factorial(k)) for k, v in enumerate(values[: degree + 1])
    ]


@pytest.mark.parametrize("n_points", sorted(_GENZ_KEISTER))
def test_genz_keister_tables(n_points):
    x, w = _genz_keister_1d(n_points)
    degree = _GENZ_KEISTER_DEGREE[n_points]
    assert len(x) == n_points and np.all(np.diff(x) > 0)
    # E[He_k(z)] = 0 for k >= 1, checked on orthonormal polynomials, which keeps
    # the check well conditioned up to degree 51.
    moments = [float(np.dot(w, h)) for h in _hermite_orthonormal(x, degree + 1)]
    assert moments[0] == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(moments[1 : degree + 1], 0.0, atol=1e-12)
    assert abs(moments[degree + 1]) > 1e-10  # no more exact than tabulated
    # Nested: each rule contains the previous one's nodes.
    smaller = [n for n in _GENZ_KEISTER if n < n_points]
    if smaller:
        previous, _ = _genz_keister_1d(max(smaller))
        assert np.isin(previous, x).all()


def test_genz_keister_matches_gauss_hermite_on_three_points():
    x, w = _genz_keister_1d(3)
    rule = GaussHermite().rule(1, 3)
    np.testing.assert_allclose(x, rule.nodes[:, 0].numpy(), atol=1e-15)
    np.testing.assert_allclose(w, rule.log_weights.exp().numpy(), rtol=1e-14)


@pytest.mark.parametrize("univariate", ["gauss_hermite", "genz_keister"])
def test_cached_smolyak_builds_are_the_uncached_ones(univariate):
    grid = SparseGrid(univariate=univariate)
    for n_dims, level in [(1, 3), (2, 4), (3, 3)]:
        nodes, weights = _smolyak(univariate, n_dims, level, grid._cached)
        expected_nodes, expected_weights = _smolyak(univariate, n_dims, level)
        np.testing.assert_array_equal(nodes, expected_nodes)
        np.testing.assert_array_equal(weights, expected_weights)
        again = _smolyak(univariate, n_dims, level, grid._cached)
        assert again[0] is nodes and again[1] is weights


def test_sparse_grid_builds_each_level_once_per_instance(monkeypatch):
    from sklearn_nlica.integrators import _sparse

    built = []
    original = _sparse._build_smolyak

    def counting(family, n_dims, level, cached):
        built.append((family, n_dims, level))
        return original(family, n_dims, level, cached)

    monkeypatch.setattr(_sparse, "_build_smolyak", counting)
    grid = SparseGrid()
    grid.rule(3, 100)
    n_built = len(built)
    assert n_built == len(set(built)) > 0  # each level built once
    grid.rule(3, 100, dtype=torch.float32)
    grid.rule(3, 90)
    assert len(built) == n_built  # served from the instance's cache
    SparseGrid().rule(3, 100)  # another instance builds its own
    assert len(built) == 2 * n_built
    grid.set_params(univariate="gauss_hermite")  # emptied by set_params
    grid.rule(3, 100)
    assert len(built) == 3 * n_built


def test_sparse_grid_builds_large_budgets_and_refuses_past_the_cap():
    # (6, 2**16) took minutes and gigabytes before levels were counted first.
    from sklearn_nlica.integrators._sparse import MAX_SPARSE_NODES

    for n_dims, n_nodes in [(6, MAX_SPARSE_NODES), (1, MAX_SPARSE_NODES), (12, 5000)]:
        rule = SparseGrid().rule(n_dims, n_nodes)
        assert 0 < rule.n_nodes <= n_nodes
        assert float(total_weight(rule)) == pytest.approx(1.0, abs=1e-8)
    with pytest.raises(ValueError, match="integrator='qmc'"):
        SparseGrid().rule(2, MAX_SPARSE_NODES + 1)
    with pytest.raises(ValueError, match="at least 15 nodes"):
        SparseGrid().rule(7, 14)
