"""Bad input and faults, shared by the three estimators.

Every case runs on VAEICA, NonlinearICAMLE and IdentifiableVAE: failed fits
leave the estimator as it was, interrupts propagate, divergence stops with
advice, inputs beyond the safe range are refused, outputs stay finite,
integration budgets are checked at fit, models persist and continue.
"""

import os
import pickle
import signal
import warnings

import joblib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils._param_validation import InvalidParameterError
from skorch.callbacks import Callback

from sklearn_nlica import VAEICA, IdentifiableVAE, NonlinearICAMLE
from sklearn_nlica._validation import safe_magnitude

SMALL = {"hidden_layer_sizes": (8,), "n_components": 2, "max_iter": 2}
FACTORIES = {
    "vae": lambda **kw: VAEICA(**{**SMALL, "random_state": 0, **kw}),
    "mle": lambda **kw: NonlinearICAMLE(**{**SMALL, "random_state": 0, **kw}),
    "ivae": lambda **kw: IdentifiableVAE(**{**SMALL, "random_state": 0, **kw}),
}
KINDS = list(FACTORIES)
CASES = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def make(kind, **params):
    return FACTORIES[kind](**params)


def nodes(kind, n_nodes):
    """A node budget for training and scoring alike."""
    both = {"n_nodes": n_nodes}
    return both if kind == "mle" else {**both, "n_mc_samples": n_nodes}


def data(n_samples=60, n_features=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_samples, 2))
    mixing = rng.normal(size=(2, n_features))
    X = np.tanh(z @ mixing) + 0.1 * rng.normal(size=(n_samples, n_features))
    u = np.arange(n_samples) % 3
    return X.astype(dtype), u


def fit(estimator, X, u):
    """Fit without the ConvergenceWarning that two-epoch fits always raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, u)


def args(estimator, u):
    """The y argument of methods that take u (the iVAE's) or nothing."""
    return (u,) if isinstance(estimator, IdentifiableVAE) else ()


def sample(estimator):
    if isinstance(estimator, IdentifiableVAE):
        return estimator.sample(5, np.zeros(5, dtype=int), random_state=1)
    return estimator.sample(5, random_state=1)


def snapshot(estimator, X, u):
    """What a user sees of a fitted model."""
    return {
        "transform": estimator.transform(X),
        "score_samples": estimator.score_samples(X, *args(estimator, u)),
        "n_features_in_": estimator.n_features_in_,
        "n_iter_": estimator.n_iter_,
        "params": estimator.get_params(),
    }


def assert_same(before, after):
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        elif key != "params":
            assert after[key] == value, key


class Interrupt(Callback):
    """Presses Ctrl-C (a real SIGINT) at the end of epoch ``at``."""

    def __init__(self, at=1):
        self.at = at

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


# ---- generated inputs: accepted with finite outputs, or refused clearly ---------


@pytest.mark.parametrize("kind", KINDS)
@CASES
@given(
    n_samples=st.integers(6, 40),
    n_features=st.integers(2, 5),
    log_scale=st.floats(-12, 12),
    float32=st.booleans(),
    continuous_u=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_generated_inputs_fit_to_finite_outputs_or_are_refused(
    kind, n_samples, n_features, log_scale, float32, continuous_u, seed
):
    dtype = np.float32 if float32 else np.float64
    X, u = data(n_samples, n_features, seed, dtype)
    X = (X * 10.0**log_scale).astype(dtype)
    u = np.linspace(0.0, 1.0, n_samples) if continuous_u else u
    estimator = make(kind, n_components=min(2, n_features))
    if np.abs(X).max() > safe_magnitude(dtype):
        with pytest.raises(ValueError, match="beyond the range"):
            fit(estimator, X, u)
        with pytest.raises(NotFittedError):
            estimator.transform(X)
        return
    try:
        fit(estimator, X, u)
    except FloatingPointError as error:  # divergence: stopped with advice
        assert "learning_rate_init" in str(error)
        with pytest.raises(NotFittedError):
            estimator.transform(X)
        return
    Z = estimator.transform(X)
    assert Z.dtype == dtype and np.isfinite(Z).all()
    assert estimator.active_components_.shape == (Z.shape[1],)
    assert np.isfinite(estimator.score_samples(X, *args(estimator, u))).all()
    assert np.isfinite(estimator.inverse_transform(Z)).all()


@pytest.mark.parametrize("kind", KINDS)
@CASES
@given(log_distance=st.floats(0, 8), float32=st.booleans())
def test_outputs_stay_finite_far_from_the_data(kind, log_distance, float32):
    dtype = np.float32 if float32 else np.float64
    X, u = data(dtype=dtype)
    estimator = fit(make(kind), X, u)
    far = np.clip(X * 10.0**log_distance, -1e8, 1e8).astype(dtype)
    assert np.isfinite(estimator.transform(far)).all()
    assert np.isfinite(estimator.score_samples(far, *args(estimator, u))).all()
    assert np.isfinite(estimator.score(far, *args(estimator, u)))


# ---- failed fits leave the estimator as it was ------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("huge", [1e200, np.inf, np.nan])
def test_failed_refit_keeps_the_previous_model(kind, huge):
    X, u = data()
    estimator = fit(make(kind), X, u)
    before = snapshot(estimator, X, u)
    bad = X.copy()
    bad[0, 0] = huge
    with pytest.raises(ValueError):
        fit(estimator, bad, u)
    assert_same(before, snapshot(estimator, X, u))


@pytest.mark.parametrize("kind", KINDS)
def test_failed_first_fit_leaves_it_unfitted(kind):
    X, u = data()
    estimator = make(kind)
    X[0, 0] = 1e200
    with pytest.raises(ValueError, match="beyond the range"):
        fit(estimator, X, u)
    with pytest.raises(NotFittedError):
        estimator.transform(X)
    assert not hasattr(estimator, "n_features_in_")


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_stops_with_advice_and_keeps_the_previous_model(kind):
    X, u = data()
    estimator = fit(make(kind), X, u)
    before = snapshot(estimator, X, u)
    estimator.set_params(learning_rate_init=1e6, max_iter=20)
    if kind == "mle":
        estimator.set_params(solver="adam")  # EM's closed-form steps cannot diverge
    with pytest.raises(FloatingPointError, match="learning_rate_init"):
        fit(estimator, X * 100, u)
    assert estimator.learning_rate_init == 1e6  # parameters are the user's
    assert_same(before, snapshot(estimator, X, u))


@pytest.mark.parametrize(
    "estimator, advised",
    [
        (NonlinearICAMLE(2), True),
        (VAEICA(2), False),  # trains in float32 whatever the input
        (IdentifiableVAE(2), False),  # whitens square data: float32 too
        (IdentifiableVAE(2, whiten=False), True),
    ],
)
def test_divergence_advice_asks_for_float64_only_where_training_follows_it(
    estimator, advised
):
    X = np.random.RandomState(0).normal(size=(20, 2)).astype(np.float32)
    assert ("use float64 input" in estimator._numerics_advice(X)) == advised


# ---- interrupts -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_init", [1, 3])
def test_ctrl_c_propagates_and_keeps_the_previous_model(kind, n_init):
    X, u = data()
    estimator = fit(make(kind), X, u)
    before = snapshot(estimator, X, u)
    estimator.set_params(n_init=n_init, max_iter=5, callbacks=[Interrupt(at=2)])
    with pytest.raises(KeyboardInterrupt):
        fit(estimator, X, u)
    assert_same(before, snapshot(estimator, X, u))


@pytest.mark.parametrize("kind", KINDS)
def test_ctrl_c_on_a_first_fit_leaves_it_unfitted(kind):
    X, u = data()
    estimator = make(kind, max_iter=5, callbacks=[Interrupt(at=1)])
    with pytest.raises(KeyboardInterrupt):
        fit(estimator, X, u)
    with pytest.raises(NotFittedError):
        estimator.transform(X)


@pytest.mark.parametrize("kind", KINDS)
def test_keep_mode_keeps_the_partial_model_with_a_warning(kind):
    X, u = data()
    estimator = make(
        kind, max_iter=5, n_init=3, on_interrupt="keep", callbacks=[Interrupt(at=2)]
    )
    with pytest.warns(UserWarning, match="interrupted"):
        fit(estimator, X, u)
    assert estimator.n_iter_ == 2
    assert np.isfinite(estimator.transform(X)).all()


# ---- refused settings ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "params, error, match",
    [
        ({"integrator": "grid", "budget": 16, "n_components": 5}, ValueError, "32"),
        ({"integrator": "grid", "budget": 16}, ValueError, "normalize=True"),
        ({"integrator": "gauss_hermite", "budget": 3}, ValueError, "n_nodes >= 4"),
        ({"integrator": "sparse_grid", "budget": 3}, ValueError, "at least 5"),
        ({"n_nodes": 2**40}, ValueError, "n_nodes"),
        ({"hidden_layer_sizes": (10**9,)}, ValueError, "smaller layers"),
        ({"callbacks": [object()]}, TypeError, "skorch Callback"),
        ({"callbacks": [("name", 3)]}, TypeError, "skorch Callback"),
        ({"n_components": True}, InvalidParameterError, "n_components"),
        ({"max_iter": 1.5}, InvalidParameterError, "max_iter"),
        ({"noise_variance": 1e300}, ValueError, "scale of the data"),
        ({"noise_variance": -1.0}, InvalidParameterError, "noise_variance"),
    ],
)
def test_impossible_settings_are_refused_at_fit(kind, params, error, match):
    X, u = data(n_features=6)
    if "budget" in params:
        params = {**params, **nodes(kind, params["budget"])}
        del params["budget"]
    estimator = make(kind, **params)
    with pytest.raises(error, match=match):
        fit(estimator, X, u)
    assert not hasattr(estimator, "n_features_in_")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "X, match",
    [
        (np.ones((5, 3), dtype=np.float32) * 1e30, "beyond the range"),
        (np.full((5, 3), np.nan), "NaN"),
        (np.ones((1, 3)), "minimum of 2"),
        (np.ones((5, 0)), "0 feature"),
        (np.array([["a", "b"], ["c", "d"]]), "convert"),
    ],
)
def test_bad_data_is_refused_clearly(kind, X, match):
    u = np.arange(len(X)) % 2
    with pytest.raises(ValueError, match=match):
        fit(make(kind, n_components=1), X, u)


@pytest.mark.parametrize("kind", KINDS)
def test_data_beyond_the_safe_range_is_refused_at_predict(kind):
    X, u = data()
    estimator = fit(make(kind), X, u)
    with pytest.raises(ValueError, match="beyond the range"):
        estimator.transform(X * 1e200)
    with pytest.raises(ValueError, match="beyond the range"):
        estimator.score_samples(X * 1e200, *args(estimator, u))


def test_ivae_needs_no_more_components_than_features():
    X, u = data(n_features=3)
    with pytest.raises(ValueError, match="needs n_components <= n_features"):
        fit(make("ivae", n_components=4), X, u)


def test_ivae_contrastive_term_with_continuous_u_needs_pairs():
    X, _ = data()
    u = np.linspace(0, 1, len(X))
    with pytest.raises(ValueError, match="batch_size >= 2"):
        fit(make("ivae", batch_size=1), X, u)
    fit(make("ivae", batch_size=1, contrastive_weight=0.0, max_iter=1), X, u)


def test_ivae_refit_from_discrete_to_continuous_u():
    X, u = data()
    estimator = fit(make("ivae"), X, u)
    assert estimator._encoding.discrete
    continuous = np.linspace(-1, 1, len(X))
    fit(estimator, X, continuous)
    assert not estimator._encoding.discrete
    assert np.isfinite(estimator.score_samples(X, continuous)).all()


# ---- persistence, cloning, continuing -----------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_round_trips_give_the_same_model(kind, dump, tmp_path):
    X, u = data()
    estimator = fit(make(kind), X, u)
    if dump == "pickle":
        loaded = pickle.loads(pickle.dumps(estimator))
    else:
        joblib.dump(estimator, tmp_path / "model.joblib")
        loaded = joblib.load(tmp_path / "model.joblib")
    assert_same(snapshot(estimator, X, u), snapshot(loaded, X, u))
    for original, restored in zip(sample(estimator), sample(loaded)):
        np.testing.assert_array_equal(restored, original)


@pytest.mark.parametrize("kind", KINDS)
def test_model_saved_on_a_gpu_loads_on_the_cpu(kind):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (see test_cuda_fit_score_and_load)")
    X, u = data()
    estimator = fit(make(kind), X, u)
    expected = estimator.transform(X)
    estimator.net_.device = "cuda"  # as if fitted on a GPU
    with pytest.warns(UserWarning, match="cpu"):
        loaded = pickle.loads(pickle.dumps(estimator))
    assert loaded.device_ == torch.device("cpu")
    np.testing.assert_array_equal(loaded.transform(X), expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_fit_score_and_load(kind):
    X, u = data()
    estimator = fit(make(kind, device="cuda"), X, u)
    assert estimator.device_.type == "cuda"
    Z = estimator.transform(X)
    assert np.isfinite(Z).all()
    assert np.isfinite(estimator.score(X, *args(estimator, u)))
    cpu = fit(make(kind, device="cpu"), X, u)
    # Same seeds, other kernels: close, not bitwise.
    np.testing.assert_allclose(Z, cpu.transform(X), rtol=1e-3, atol=1e-3)
    loaded = pickle.loads(pickle.dumps(estimator))
    np.testing.assert_allclose(loaded.transform(X), Z)


@pytest.mark.parametrize("kind", KINDS)
def test_clone_set_params_and_refit(kind):
    X, u = data()
    estimator = fit(make(kind), X, u)
    copy = clone(estimator)
    assert not hasattr(copy, "n_features_in_")
    assert copy.get_params() == estimator.get_params()
    fit(copy, X, u)
    np.testing.assert_array_equal(copy.transform(X), estimator.transform(X))
    estimator.set_params(n_components=1)
    fit(estimator, X, u)
    assert estimator.transform(X).shape == (len(X), 1)
    fit(estimator, X[:, :3], u)
    assert estimator.n_features_in_ == 3


@pytest.mark.parametrize("kind", KINDS)
def test_warm_start_and_partial_fit_continue(kind):
    X, u = data()
    estimator = fit(make(kind, warm_start=True), X, u)
    first = estimator.n_iter_
    fit(estimator, X, u)
    assert estimator.n_iter_ == first + estimator.max_iter
    estimator.partial_fit(X, *args(estimator, u))
    assert estimator.n_iter_ == first + estimator.max_iter + 1
    assert np.isfinite(estimator.transform(X)).all()
    with pytest.raises(ValueError, match="features"):
        estimator.partial_fit(X[:, :3], *args(estimator, u))


@pytest.mark.parametrize("kind", KINDS)
def test_a_continued_fit_refuses_settings_built_into_the_model(kind):
    X, u = data()
    estimator = fit(make(kind, warm_start=True), X, u)
    before = snapshot(estimator, X, u)
    estimator.set_params(hidden_layer_sizes=(3,), tol=0.5)
    with pytest.raises(ValueError, match=r"hidden_layer_sizes=\(8,\), tol=0.0001"):
        fit(estimator, X, u)
    with pytest.raises(ValueError, match=r"cannot take hidden_layer_sizes=\(3,\)"):
        estimator.partial_fit(X, *args(estimator, u))
    assert_same(before, snapshot(estimator, X, u))
    # Set back, or changed where a continued fit follows them: it continues.
    estimator.set_params(hidden_layer_sizes=(8,), tol=1e-4, max_iter=1)
    estimator.set_params(learning_rate_init=estimator.learning_rate_init / 2)
    assert fit(estimator, X, u).n_iter_ == before["n_iter_"] + 1


@pytest.mark.parametrize("kind", ["vae", "mle"])
def test_a_continued_fit_trains_at_the_current_learning_rate(kind):
    # The decoder's output layer moves only by the optimizer in both.
    X, u = data()
    first = fit(make(kind, warm_start=True), X, u)
    weights = first.net_.module_.decoder.out.weight.detach().clone()
    moved = {}
    for rate in (first.learning_rate_init, 1e-30):
        estimator = pickle.loads(pickle.dumps(first))
        fit(estimator.set_params(learning_rate_init=rate), X, u)
        change = estimator.net_.module_.decoder.out.weight.detach() - weights
        moved[rate] = float(change.abs().max())
    assert moved[first.learning_rate_init] > 1e-4
    assert moved[1e-30] < 1e-20


@pytest.mark.parametrize("kind", KINDS)
def test_fit_leaves_the_callers_torch_state_alone(kind):
    X, u = data()
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(make(kind), X, u)
    assert torch.get_num_threads() == threads
    np.testing.assert_array_equal(torch.rand(3), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_scoring_with_many_nodes_runs_in_bounded_chunks(kind, monkeypatch):
    # 2**16 nodes for 2,000 rows once asked for an 8.4 GB tensor at once.
    from sklearn_nlica import _base

    X, u = data(n_samples=200, n_features=5)
    estimator = fit(make(kind, hidden_layer_sizes=(), max_iter=1), X, u)
    estimator.set_params(n_nodes=2**16)
    module = estimator.module_
    rows = []
    original = module.score_samples

    def spy(x, rule, **condition):
        rows.append(len(x))
        return original(x, rule, **condition)

    monkeypatch.setattr(module, "score_samples", spy)
    scores = estimator.score_samples(X, *args(estimator, u))
    assert np.isfinite(scores).all() and len(scores) == 200
    per_row = module.elements_per_row(2**16, **({"u": 0} if kind == "ivae" else {}))
    assert max(rows) * per_row <= _base._PREDICT_ELEMENTS
