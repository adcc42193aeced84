"""Tests of the integration rules (sklearn_nlica.integrators)."""

import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from sklearn_nlica import _marginal
from sklearn_nlica.integrators import (
    DEFAULT_INTEGRATOR,
    DEFAULT_N_NODES,
    INTEGRATORS,
    QMC,
    Adaptive,
    GaussHermite,
    Grid,
    Integrator,
    MonteCarlo,
    Rule,
    SparseGrid,
    get_integrator,
)
from sklearn_nlica.integrators._sparse import (
    _GENZ_KEISTER,
    _GENZ_KEISTER_DEGREE,
    _genz_keister_1d,
    _smolyak,
)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def gaussian_moment(powers):
    """E[prod_i z_i^p_i] for z ~ N(0, I): the product of (p - 1)!! over even p."""
    out = 1.0
    for p in powers:
        if p % 2:
            return 0.0
        out *= float(np.prod(np.arange(p - 1, 0, -2))) if p else 1.0
    return out


def integrate_monomial(rule, powers):
    weights = rule.log_weights.exp()
    if rule.signs is not None:
        weights = weights * rule.signs
    values = torch.ones(rule.nodes.shape[:-1], dtype=torch.float64)
    for i, p in enumerate(powers):
        values = values * rule.nodes[..., i] ** p
    return float((weights * values).sum())


def total_weight(rule):
    weights = rule.log_weights.exp()
    if rule.signs is not None:
        weights = weights * rule.signs
    return weights.sum(-1)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# Names, parameters, the Rule container
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(INTEGRATORS))
def test_get_integrator_resolves_names(name):
    integrator = get_integrator(name)
    assert isinstance(integrator, INTEGRATORS[name])
    assert get_integrator(integrator) is integrator


def test_get_integrator_rejects_unknown_names_and_types():
    with pytest.raises(ValueError, match="'gauss_hermite'"):
        get_integrator("gauss-hermite")
    with pytest.raises(TypeError, match="'adaptive'"):
        get_integrator(3)
    with pytest.raises(TypeError):
        get_integrator(GaussHermite)  # a class, not an instance


def test_default_integrator_is_a_valid_choice():
    assert DEFAULT_INTEGRATOR in INTEGRATORS
    assert isinstance(DEFAULT_N_NODES, int) and DEFAULT_N_NODES >= 1


@pytest.mark.parametrize(
    "integrator",
    [
        Grid(half_width=3.0, normalize=True),
        SparseGrid(univariate="genz_keister"),
        Adaptive(
            n_modes=3, defensive=0.01, n_search=64, n_starts=5, max_iter=4, base="qmc"
        ),
        MonteCarlo(),
        QMC(),
        GaussHermite(),
    ],
)
def test_integrators_clone_and_expose_their_parameters(integrator):
    copy = clone(integrator)
    assert type(copy) is type(integrator)
    assert copy.get_params() == integrator.get_params()
    assert isinstance(copy, Integrator)


def test_set_params_changes_a_cached_rule():
    grid = Grid()
    before = grid.rule(1, 10)
    assert grid.rule(1, 10) is before  # cached
    grid.set_params(half_width=2.0)
    after = grid.rule(1, 10)
    assert float(after.nodes.abs().max()) < 2.0 < float(before.nodes.abs().max())


def test_cache_is_per_dtype_and_dropped_when_pickled():
    rule = GaussHermite()
    assert rule.rule(2, 9, dtype=torch.float32).nodes.dtype == torch.float32
    assert rule.rule(2, 9).nodes.dtype == torch.float64
    restored = pickle.loads(pickle.dumps(rule))
    assert "_cache" not in restored.__dict__
    assert torch.equal(restored.rule(2, 9).nodes, rule.rule(2, 9).nodes)


def test_is_adaptive():
    assert Adaptive().is_adaptive
    assert not any(
        cls().is_adaptive for name, cls in INTEGRATORS.items() if name != "adaptive"
    )


@pytest.mark.parametrize("n_nodes", [0, -3, 2.5, True, None])
def test_bad_node_budgets_raise(n_nodes):
    with pytest.raises(ValueError, match="n_nodes"):
        GaussHermite().rule(2, n_nodes)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="univariate"):
        SparseGrid(univariate="clenshaw_curtis").rule(2, 10)
    with pytest.raises(ValueError, match="half_width"):
        Grid(half_width=-1.0).rule(2, 10)
    with pytest.raises(ValueError, match="defensive"):
        Adaptive(defensive=1.0).rule(1, 8, log_integrand=lambda z: z[..., 0])
    with pytest.raises(ValueError, match="log_integrand"):
        Adaptive().rule(1, 8)


def test_rule_container():
    rule = GaussHermite().rule(2, 16)
    assert rule.shared and rule.n_nodes == 16 and rule.signs is None
    moved = rule.to(dtype=torch.float32)
    assert moved.nodes.dtype == moved.log_weights.dtype == torch.float32
    per_point = Rule(rule.nodes.expand(3, -1, -1), rule.log_weights.expand(3, -1))
    assert not per_point.shared and per_point.n_nodes == 16


@pytest.mark.parametrize(
    "name,n_nodes,expected",
    [
        ("monte_carlo", 100, 100),
        ("qmc", 100, 64),
        ("grid", 100, 100),
        ("gauss_hermite", 99, 81),
        ("sparse_grid", 64, 53),
    ],
)
def test_node_budget_semantics(name, n_nodes, expected):
    rule = get_integrator(name).rule(2, n_nodes, generator=seeded())
    assert rule.nodes.shape == (expected, 2)
    assert rule.log_weights.shape == (expected,)


# ---------------------------------------------------------------------------
# Exactness on polynomials
# ---------------------------------------------------------------------------


@SETTINGS
@given(n_dims=st.integers(1, 3), k=st.integers(1, 6), data=st.data())
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


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_gauss_hermite_is_not_exact_at_degree_2k(k):
    rule = GaussHermite().rule(1, k)
    assert abs(integrate_monomial(rule, [2 * k]) - gaussian_moment([2 * k])) > 1e-3


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


# ---------------------------------------------------------------------------
# Adaptive rule
# ---------------------------------------------------------------------------


def gaussian_integrand(x, scale, noise):
    """log N(x_b; scale * z, noise^2 I): a Gaussian posterior, exact marginal."""

    def log_integrand(z):
        return (
            torch.distributions.Normal(scale * z, noise).log_prob(x[:, None, :]).sum(-1)
        )

    exact = (
        torch.distributions.Normal(0.0, torch.sqrt(scale**2 + noise**2))
        .log_prob(x)
        .sum(-1)
    )
    return log_integrand, exact


@pytest.mark.parametrize("base", ["auto", "gauss_hermite", "sparse_grid", "qmc"])
def test_adaptive_is_exact_on_gaussian_posteriors(base):
    gen = seeded(3)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 2
    scale = torch.tensor([3.0, 0.5, 1.0, 10.0], dtype=torch.float64)
    log_integrand, exact = gaussian_integrand(x, scale, 0.05)
    rule = Adaptive(base=base).rule(
        4, 64, log_integrand=log_integrand, generator=seeded()
    )
    assert rule.nodes.shape == (6, 64, 4) and rule.log_weights.shape == (6, 64)
    log_p = torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
    np.testing.assert_allclose(log_p, exact, atol=1e-8)


def test_adaptive_without_defensive_nodes_is_exact_to_rounding():
    x = torch.tensor([[3.0], [-1.0], [0.2]], dtype=torch.float64)
    log_integrand, exact = gaussian_integrand(
        x, torch.tensor(1.0, dtype=torch.float64), 0.1
    )
    rule = Adaptive(defensive=0.0).rule(
        1, 9, log_integrand=log_integrand, generator=seeded()
    )
    log_p = torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
    np.testing.assert_allclose(log_p, exact, atol=1e-13)


def test_adaptive_covers_separated_modes():
    # h(z) = N(x; z^2, 0.05^2): two modes at +-sqrt(x) for x > 0.
    x = torch.tensor([[1.0], [2.5], [0.6], [-0.5]], dtype=torch.float64)

    def log_integrand(z):
        return torch.distributions.Normal(z[..., 0] ** 2, 0.05).log_prob(x)

    reference_rule = Grid(half_width=6.0).rule(1, 200_000)
    reference = torch.logsumexp(
        reference_rule.log_weights + log_integrand(reference_rule.nodes[None]), dim=1
    )
    single = Adaptive(n_modes=1).rule(
        1, 32, log_integrand=log_integrand, generator=seeded()
    )
    double = Adaptive(n_modes=2).rule(
        1, 32, log_integrand=log_integrand, generator=seeded()
    )
    log_p = {
        name: torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
        for name, rule in (("single", single), ("double", double))
    }
    # One Laplace component misses a whole mode (log 2 nats); two cover both.
    assert float((log_p["single"][:3] - reference[:3]).abs().min()) > 0.6
    np.testing.assert_allclose(log_p["double"], reference, atol=1e-4)


def test_default_rule_on_bimodal_two_dimensional_posteriors():
    # The multimodal case of the acceptance: m = n = 2, sigma = 0.1 and
    # g(z) = (z1^2 - z2^2, 2 z1 z2), which maps z and -z to the same point, so
    # every posterior has two separated modes. Reference: a fine midpoint grid.
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(40, 2, generator=gen, dtype=torch.float64)

    def decoder(z):
        return torch.stack(
            [z[..., 0] ** 2 - z[..., 1] ** 2, 2 * z[..., 0] * z[..., 1]], -1
        )

    x = decoder(z) + 0.1 * torch.randn(40, 2, generator=gen, dtype=torch.float64)
    fine = Grid(half_width=6.0).rule(2, 1200**2)
    reference = _marginal.log_marginal(x, decoder, fine, 0.01)
    log_integrand = _marginal.gaussian_log_integrand(x, decoder, 0.01)
    errors = {}
    for n_modes in (1, 2):
        rule = Adaptive(n_modes=n_modes).rule(
            2, DEFAULT_N_NODES, log_integrand=log_integrand, generator=seeded()
        )
        estimate = _marginal.log_marginal(x, decoder, rule, 0.01)
        errors[n_modes] = (estimate - reference).abs()
    assert get_integrator(DEFAULT_INTEGRATOR).n_modes == 2
    assert float(errors[2].mean()) < 0.01
    # One Laplace component misses a mode: about log 2 on most points.
    assert float(errors[1].median()) > 0.5


def test_adaptive_defensive_nodes_bound_a_missed_mode():
    # A narrow second mode that the search cannot see with 4 nodes: the defensive
    # prior nodes keep the estimate finite and the weights bounded.
    x = torch.tensor([[1.0]], dtype=torch.float64)

    def log_integrand(z):
        return torch.distributions.Normal(z[..., 0] ** 2, 0.05).log_prob(x)

    rule = Adaptive(n_modes=1, n_search=4, n_starts=1).rule(
        1, 16, log_integrand=log_integrand, generator=seeded()
    )
    assert torch.isfinite(rule.log_weights).all()
    assert float(rule.log_weights.exp().sum()) < 2.0


def test_adaptive_float32_and_detached():
    x = torch.randn(5, 3, generator=seeded(), dtype=torch.float32)
    scale = torch.tensor(2.0, requires_grad=True)

    def log_integrand(z):
        return (
            torch.distributions.Normal(scale * z, 0.1).log_prob(x[:, None, :2]).sum(-1)
        )

    rule = Adaptive().rule(
        2, 20, dtype=torch.float32, log_integrand=log_integrand, generator=seeded()
    )
    assert rule.nodes.dtype == rule.log_weights.dtype == torch.float32
    assert not rule.nodes.requires_grad and not rule.log_weights.requires_grad
    assert rule.nodes.shape == (5, 20, 2)
    assert scale.grad is None


def test_adaptive_is_reproducible_with_a_seeded_generator():
    x = torch.randn(4, 2, generator=seeded(), dtype=torch.float64)
    log_integrand, _ = gaussian_integrand(
        x, torch.tensor(1.5, dtype=torch.float64), 0.3
    )
    first, second = (
        Adaptive().rule(2, 30, log_integrand=log_integrand, generator=seeded(7))
        for _ in range(2)
    )
    assert torch.equal(first.nodes, second.nodes)
    assert torch.equal(first.log_weights, second.log_weights)


@pytest.mark.parametrize("n_nodes", [1, 2, 3, 7])
def test_adaptive_tiny_budgets(n_nodes):
    x = torch.randn(3, 2, generator=seeded(), dtype=torch.float64)
    log_integrand, exact = gaussian_integrand(
        x, torch.tensor(1.0, dtype=torch.float64), 0.5
    )
    rule = Adaptive().rule(2, n_nodes, log_integrand=log_integrand, generator=seeded())
    assert rule.n_nodes <= n_nodes
    log_p = torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
    np.testing.assert_allclose(log_p, exact, atol=1e-3)


def test_adaptive_with_shared_search_on_the_marginal_integrand():
    # gaussian_log_integrand evaluates the shared search set by one matrix product.
    decoder = torch.nn.Linear(2, 30).double()
    x = decoder(torch.randn(8, 2, generator=seeded(), dtype=torch.float64)).detach()
    log_integrand = _marginal.gaussian_log_integrand(x, decoder, 0.01)
    rule = Adaptive().rule(2, 32, log_integrand=log_integrand, generator=seeded())
    assert rule.nodes.shape == (8, 32, 2)


def test_adaptive_with_fewer_starts_than_modes():
    x = torch.randn(3, 2, generator=seeded(), dtype=torch.float64)
    scale = torch.tensor(1.0, dtype=torch.float64)
    log_integrand, exact = gaussian_integrand(x, scale, 0.5)
    rule = Adaptive(n_modes=3, n_search=1, n_starts=1).rule(
        2, 40, log_integrand=log_integrand, generator=seeded()
    )
    assert rule.nodes.shape == (3, 40, 2)
    log_p = torch.logsumexp(rule.log_weights + log_integrand(rule.nodes), dim=1)
    np.testing.assert_allclose(log_p, exact, atol=1e-5)
