"""Tests of the integrators' base: names, parameters, validation, cache, Rule."""

import pickle

import pytest
import torch
from integrator_helpers import seeded
from sklearn.base import clone

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
    grid = Grid(normalize=True)
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


def test_rule_signed_weights():
    positive = GaussHermite().rule(2, 9)
    assert torch.equal(positive.signed_weights(), positive.log_weights.exp())
    signed = SparseGrid().rule(2, 20)
    assert signed.signs is not None
    weights = signed.signed_weights()
    assert torch.equal(weights, signed.log_weights.exp() * signed.signs)
    assert bool((weights < 0).any())
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    per_point = Rule(signed.nodes.expand(3, -1, -1), signed.log_weights.expand(3, -1))
    assert per_point.signed_weights().shape == (3, signed.n_nodes)


# ---------------------------------------------------------------------------
# Rule.shift_rows
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MonteCarlo, QMC])
def test_shift_rows_shapes_weights_and_independent_rows(cls):
    rule = cls().rule(3, 16, generator=seeded())
    torch.manual_seed(0)
    rows = rule.shift_rows(5)
    assert rows.nodes.shape == (5, 16, 3) and rows.log_weights.shape == (5, 16)
    assert not rows.shared and rows.n_nodes == 16 and rows.signs is None
    # Same weights for every row, different nodes in every row.
    assert torch.equal(rows.log_weights, rule.log_weights.expand(5, -1))
    for i in range(5):
        for j in range(i):
            assert not torch.equal(rows.nodes[i], rows.nodes[j])
    assert torch.isfinite(rows.nodes).all()


def test_shift_rows_is_a_cranley_patterson_rotation_from_the_global_generator():
    rule = QMC().rule(2, 8, generator=seeded(), dtype=torch.float32)
    torch.manual_seed(3)
    rows = rule.shift_rows(4)
    torch.manual_seed(3)
    shift = torch.rand(4, 1, 2, dtype=torch.float32)
    eps = torch.finfo(torch.float32).eps
    uniform = torch.remainder(torch.special.ndtr(rule.nodes) + shift, 1.0)
    expected = torch.special.ndtri(uniform.clamp(eps, 1.0 - eps))
    assert rows.nodes.dtype == torch.float32
    assert torch.equal(rows.nodes, expected)
    torch.manual_seed(3)
    assert torch.equal(rule.shift_rows(4).nodes, rows.nodes)  # reproducible


def test_shifted_qmc_nodes_stay_standard_normal():
    from scipy import stats

    rule = QMC().rule(2, 64, generator=seeded())
    torch.manual_seed(1)
    nodes = rule.shift_rows(200).nodes  # (200, 64, 2)
    # One node per row (over the rows) is i.i.d. N(0, I): a uniform shift of a
    # point of the unit cube modulo 1 is uniform.
    for k in (0, 17, 63):
        for d in range(2):
            sample = nodes[:, k, d].numpy()
            assert stats.kstest(sample, "norm").pvalue > 1e-3
    # Each row is still a randomised QMC set: E[z_1^2] = 1 with a small error.
    weights = rule.log_weights.exp()
    estimates = (nodes[..., 0] ** 2 * weights).sum(-1)
    assert float(estimates.mean()) == pytest.approx(1.0, abs=0.02)


def test_shift_rows_needs_shared_positive_weights():
    with pytest.raises(ValueError, match="shared"):
        SparseGrid().rule(2, 20).shift_rows(3)
    rule = QMC().rule(1, 4, generator=seeded())
    per_point = Rule(rule.nodes.expand(2, -1, -1), rule.log_weights.expand(2, -1))
    with pytest.raises(ValueError, match="shared"):
        per_point.shift_rows(2)


# ---------------------------------------------------------------------------
# Parameter validation: once, then after set_params
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "integrator,name",
    [
        (Grid(half_width=0.0), "half_width"),
        (Grid(half_width="5"), "half_width"),
        (Grid(normalize="yes"), "normalize"),
        (SparseGrid(univariate="clenshaw_curtis"), "univariate"),
        (Adaptive(n_modes=0), "n_modes"),
        (Adaptive(n_search=0), "n_search"),
        (Adaptive(max_iter=2.5), "max_iter"),
        (Adaptive(n_starts=0), "n_starts"),
        (Adaptive(defensive=-0.1), "defensive"),
        (Adaptive(base="grid"), "base"),
    ],
)
def test_invalid_parameters_raise_a_value_error_naming_them(integrator, name):
    with pytest.raises(ValueError, match=f"'{name}' parameter of"):
        integrator.rule(1, 8, log_integrand=lambda z: -(z**2).sum(-1))


def test_parameters_are_validated_once_then_after_set_params(monkeypatch):
    calls = []
    original = Integrator._validate_params

    def counting(self):
        calls.append(type(self).__name__)
        return original(self)

    monkeypatch.setattr(Integrator, "_validate_params", counting)
    grid = Grid(normalize=True)
    for n_nodes in (4, 9, 4, 16):
        grid.rule(2, n_nodes)
    assert calls == ["Grid"]
    grid.set_params(half_width=4.0)
    grid.rule(2, 4)
    grid.rule(2, 4)
    assert calls == ["Grid", "Grid"]
    monte_carlo = MonteCarlo()
    for _ in range(3):
        monte_carlo.rule(2, 4, generator=seeded())
    assert calls == ["Grid", "Grid", "MonteCarlo"]


def test_invalid_set_params_raises_at_the_next_rule():
    grid = Grid(normalize=True)
    grid.rule(1, 10)
    grid.set_params(half_width=-1.0)
    with pytest.raises(ValueError, match="half_width"):
        grid.rule(1, 10)
    grid.set_params(half_width=2.0)
    assert float(grid.rule(1, 10).nodes.abs().max()) < 2.0
    adaptive = Adaptive()
    adaptive.rule(1, 8, log_integrand=lambda z: -(z**2).sum(-1))
    adaptive.set_params(defensive=1.0)
    with pytest.raises(ValueError, match="defensive"):
        adaptive.rule(1, 8, log_integrand=lambda z: -(z**2).sum(-1))


# ---------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------


def test_cache_returns_the_same_tensors_for_the_same_key():
    rule = SparseGrid(univariate="genz_keister")
    first = rule.rule(3, 50)
    again = rule.rule(3, 50)
    assert again is first
    assert again.nodes is first.nodes and again.log_weights is first.log_weights
    assert rule.rule(3, 50, dtype=torch.float32) is not first
    assert rule.rule(3, 49) is not first  # another key, the same grid
    assert torch.equal(rule.rule(3, 49).nodes, first.nodes)


def test_random_rules_are_not_cached():
    qmc = QMC()
    assert not torch.equal(
        qmc.rule(2, 8, generator=seeded(0)).nodes,
        qmc.rule(2, 8, generator=seeded(1)).nodes,
    )
    assert "_cache" not in qmc.__dict__


def test_cache_is_per_instance_and_bounded():
    from sklearn_nlica.integrators._base import _CACHE_SIZE

    first, second = GaussHermite(), GaussHermite()
    first.rule(2, 9)
    assert "_cache" in first.__dict__ and "_cache" not in second.__dict__
    for n_nodes in range(2, 2 * _CACHE_SIZE + 1):
        first.rule(1, n_nodes)
    assert len(first.__dict__["_cache"]) == _CACHE_SIZE
    # The most recently used entries stay.
    last = first.rule(1, 2 * _CACHE_SIZE)
    assert first.rule(1, 2 * _CACHE_SIZE) is last


def test_set_params_empties_the_cache():
    grid = Grid(normalize=True)
    grid.rule(2, 9)
    assert grid.__dict__["_cache"]
    grid.set_params(half_width=3.0)
    assert "_cache" not in grid.__dict__


def test_no_module_level_cache_state():
    from sklearn_nlica.integrators import _adaptive, _base, _prior, _sparse

    SparseGrid(univariate="genz_keister").rule(4, 100)
    Adaptive().rule(4, 32, log_integrand=lambda z: -(z**2).sum(-1))
    for module in (_base, _prior, _sparse, _adaptive):
        for name, value in vars(module).items():
            assert not isinstance(value, Integrator), (module.__name__, name)
            if isinstance(value, (dict, list, set)) and not name.startswith("__"):
                # Only constant tables live at module level.
                assert name in {"_GENZ_KEISTER", "_GENZ_KEISTER_DEGREE"}, name
            assert not hasattr(value, "cache_info"), (module.__name__, name)


# ---------------------------------------------------------------------------
# Pickling and cloning
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "integrator",
    [
        Grid(half_width=3.0, normalize=True),
        SparseGrid(univariate="genz_keister"),
        GaussHermite(),
    ],
)
def test_pickling_drops_the_cache_but_keeps_the_rules(integrator):
    before = integrator.rule(2, 30)
    restored = pickle.loads(pickle.dumps(integrator))
    assert "_cache" not in restored.__dict__
    assert "_params_validated" not in restored.__dict__
    assert restored.get_params() == integrator.get_params()
    assert torch.equal(restored.rule(2, 30).nodes, before.nodes)
    assert torch.equal(restored.rule(2, 30).log_weights, before.log_weights)
    # Pickling leaves the original's cache alone.
    assert integrator.rule(2, 30) is before


def test_clone_of_a_used_integrator_starts_empty():
    adaptive = Adaptive(n_modes=3, base="sparse_grid", refine_tol=None)
    log_integrand = lambda z: -((z - 1.0) ** 2).sum(-1)  # noqa: E731
    first = adaptive.rule(4, 64, log_integrand=log_integrand, generator=seeded(2))
    assert "_cache" in adaptive.__dict__
    copy = clone(adaptive)
    assert "_cache" not in copy.__dict__ and copy.get_params() == adaptive.get_params()
    second = copy.rule(4, 64, log_integrand=log_integrand, generator=seeded(2))
    for a, b in zip(first, second):
        if a is None or b is None:
            assert a is b
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    restored = pickle.loads(pickle.dumps(adaptive))
    third = restored.rule(4, 64, log_integrand=log_integrand, generator=seeded(2))
    assert torch.equal(first.log_weights, third.log_weights)
