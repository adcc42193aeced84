"""Tests of the rules on the prior (sklearn_nlica.integrators._prior)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from integrator_helpers import (
    gaussian_moment,
    integrate_monomial,
    seeded,
    total_weight,
)

from sklearn_nlica.integrators import (
    QMC,
    GaussHermite,
    Grid,
    MonteCarlo,
    get_integrator,
)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@SETTINGS
@given(n_dims=st.integers(1, 3), k=st.integers(2, 6), data=st.data())
def test_gauss_hermite_exact_to_degree_2k_minus_1_per_axis(n_dims, k, data):
    rule = GaussHermite().rule(n_dims, k**n_dims)
    assert rule.n_nodes == k**n_dims
    powers = data.draw(
        st.lists(st.integers(0, 2 * k - 1), min_size=n_dims, max_size=n_dims)
    )
    expected = gaussian_moment(powers)
    assert integrate_monomial(rule, powers) == pytest.approx(
        expected, rel=1e-10, abs=1e-10
    )


@pytest.mark.parametrize("k", [2, 3, 5])
def test_gauss_hermite_is_not_exact_at_degree_2k(k):
    rule = GaussHermite().rule(1, k)
    assert abs(integrate_monomial(rule, [2 * k]) - gaussian_moment([2 * k])) > 1e-3


def test_grid_weights_and_convergence():
    grid = Grid(half_width=5.0).rule(1, 60)
    # Midpoint rule on a smooth integrand: only the mass beyond +-5 is missing.
    assert float(total_weight(grid)) == pytest.approx(1 - 2 * 2.866516e-7, abs=5e-8)
    assert integrate_monomial(grid, [2]) == pytest.approx(
        1.0, abs=2e-5
    )  # tails: 1.5e-5
    normalized = Grid(half_width=2.5, normalize=True).rule(2, 100)
    assert float(total_weight(normalized)) == pytest.approx(1.0, abs=1e-14)
    assert normalized.nodes.shape == (100, 2)


@pytest.mark.parametrize("cls", [MonteCarlo, QMC])
def test_random_rules_are_unbiased_and_seeded(cls):
    rule = cls().rule(2, 1024, generator=seeded(1))
    assert torch.equal(rule.nodes, cls().rule(2, 1024, generator=seeded(1)).nodes)
    generator = seeded(1)
    first, second = (cls().rule(2, 1024, generator=generator) for _ in range(2))
    assert not torch.equal(first.nodes, second.nodes)  # fresh nodes each call
    assert torch.isfinite(rule.nodes).all()
    estimates = np.array(
        [
            integrate_monomial(cls().rule(2, 1024, generator=seeded(s)), [2, 0])
            for s in range(20)
        ]
    )
    assert abs(estimates.mean() - 1.0) < 4 * estimates.std() / math.sqrt(20) + 1e-3
    assert float(total_weight(rule)) == pytest.approx(1.0)


def test_qmc_beats_monte_carlo():
    def spread(cls):
        return np.std(
            [
                integrate_monomial(cls().rule(2, 1024, generator=seeded(s)), [2, 1])
                for s in range(20)
            ]
        )

    assert spread(QMC) < 0.3 * spread(MonteCarlo)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "name", ["monte_carlo", "qmc", "grid", "gauss_hermite", "sparse_grid"]
)
def test_prior_rules_dtype_and_unit_mass(name, dtype):
    # The grid needs about one node per unit length to integrate N(0, 1) well.
    n_nodes = 1000 if name == "grid" else 50
    rule = get_integrator(name).rule(3, n_nodes, dtype=dtype, generator=seeded())
    assert rule.nodes.dtype == rule.log_weights.dtype == dtype
    tolerance = 1e-5
    assert float(total_weight(rule.to(dtype=torch.float64))) == pytest.approx(
        1.0, abs=tolerance
    )


@pytest.mark.parametrize(
    "rule, n_dims, n_nodes, match",
    [
        (GaussHermite(), 1, 1, "n_nodes >= 2"),
        (GaussHermite(), 7, 64, "n_nodes >= 128"),
        (Grid(normalize=True), 6, 63, "n_nodes >= 64"),
        (Grid(), 6, 64, "262144"),  # prior mass 3e-5: -10.4 nat on every row
        (Grid(), 2, 9, "at least 64 nodes"),  # mass 1.8: +0.59 nat
        (Grid(half_width=3.0), 1, 1000, "widen half_width"),
    ],
)
def test_tensor_rules_refuse_budgets_they_cannot_integrate_with(
    rule, n_dims, n_nodes, match
):
    with pytest.raises(ValueError, match=match):
        rule.rule(n_dims, n_nodes)


@pytest.mark.parametrize("n_dims, n_nodes", [(1, 8), (2, 64), (3, 512), (4, 8**4)])
def test_unnormalised_grids_it_builds_hold_the_prior_mass(n_dims, n_nodes):
    assert float(total_weight(Grid().rule(n_dims, n_nodes))) == pytest.approx(
        1.0, abs=1e-4
    )
