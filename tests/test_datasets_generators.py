"""Tests of sklearn_nlica.datasets._generators: the generative processes
they document."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit, ndtr

from sklearn_nlica.datasets import MixingMLP, make_nonlinear_ica, make_segmented_sources

ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "identity"]


# ---------------------------------------------------------------------------
# make_nonlinear_ica
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("hidden_size", [None, 7])
def test_nonlinear_ica_shapes_and_exact_mixing(activation, hidden_size):
    X, S, f = make_nonlinear_ica(
        n_samples=300,
        n_components=3,
        n_features=6,
        activation=activation,
        noise_std=0.0,
        hidden_size=hidden_size,
        random_state=0,
        return_mixing=True,
    )
    assert X.shape == (300, 6) and S.shape == (300, 3)
    assert X.dtype == S.dtype == np.float64
    assert isinstance(f, MixingMLP)
    np.testing.assert_array_equal(X, f(S))
    assert f.n_components == 3 and f.n_features == 6
    assert len(f.coefs_) == (1 if hidden_size is None else 2)


def test_nonlinear_ica_single_layer_is_the_report_process():
    # f(s) = activation(s @ W + b): check each activation by hand.
    kwargs = {
        "n_samples": 200,
        "n_components": 2,
        "n_features": 4,
        "noise_std": 0.0,
        "random_state": 1,
        "return_mixing": True,
    }
    expected = {
        "relu": lambda H: np.maximum(H, 0),
        "leaky_relu": lambda H: np.where(H > 0, H, 0.01 * H),
        "sigmoid": expit,
        "tanh": np.tanh,
        "gelu": lambda H: H * ndtr(H),
        "identity": lambda H: H,
    }
    for activation, act in expected.items():
        X, S, f = make_nonlinear_ica(activation=activation, **kwargs)
        (W,), (b,) = f.coefs_, f.intercepts_
        np.testing.assert_allclose(X, act(S @ W + b), rtol=1e-12, atol=1e-14)
    X, S, f = make_nonlinear_ica(activation="relu", **kwargs)
    assert X.min() == 0  # some units are off, none negative
    X, S, f = make_nonlinear_ica(activation="sigmoid", **kwargs)
    assert 0 < X.min() and X.max() < 1


def test_nonlinear_ica_hidden_layer():
    X, S, f = make_nonlinear_ica(
        n_samples=100,
        n_components=2,
        n_features=5,
        activation="tanh",
        hidden_size=9,
        noise_std=0.0,
        random_state=0,
        return_mixing=True,
    )
    (W1, W2), (b1, b2) = f.coefs_, f.intercepts_
    assert W1.shape == (2, 9) and W2.shape == (9, 5)
    np.testing.assert_array_equal(b2, 0)
    np.testing.assert_allclose(X, np.tanh(S @ W1 + b1) @ W2, rtol=1e-12)
    assert f.activations_ == ["tanh", "identity"]


def test_nonlinear_ica_noise_and_sources_distribution():
    X, S, f = make_nonlinear_ica(
        n_samples=20000,
        n_components=2,
        n_features=10,
        noise_std=0.5,
        random_state=0,
        return_mixing=True,
    )
    # Standard normal sources, white noise of the requested scale; tolerances
    # are ~5 standard errors at these sample sizes.
    np.testing.assert_allclose(S.mean(0), 0, atol=0.04)
    np.testing.assert_allclose(np.cov(S.T), np.eye(2), atol=0.05)
    noise = X - f(S)
    np.testing.assert_allclose(noise.std(0), 0.5, rtol=0.03)
    assert np.abs(np.corrcoef(noise.T) - np.eye(10)).max() < 0.04


def test_nonlinear_ica_weight_scaling():
    # Pre-activations have unit-order variance whatever the dimensions.
    f = make_nonlinear_ica(
        n_components=50, n_features=2000, random_state=0, return_mixing=True
    )[2]
    (W,), (b,) = f.coefs_, f.intercepts_
    assert W.var() * 50 == pytest.approx(1, rel=0.05)
    assert -1 <= b.min() and b.max() <= 1


def test_nonlinear_ica_determinism():
    a = make_nonlinear_ica(n_samples=50, random_state=3)
    b = make_nonlinear_ica(n_samples=50, random_state=3)
    c = make_nonlinear_ica(n_samples=50, random_state=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[0], c[0])
    # The mixing is drawn first, so it does not depend on n_samples.
    f_small = make_nonlinear_ica(n_samples=10, random_state=3, return_mixing=True)[2]
    f_large = make_nonlinear_ica(n_samples=99, random_state=3, return_mixing=True)[2]
    np.testing.assert_array_equal(f_small.coefs_[0], f_large.coefs_[0])
    # A RandomState instance is accepted and advanced.
    rs = np.random.RandomState(0)
    first = make_nonlinear_ica(n_samples=5, random_state=rs)[0]
    second = make_nonlinear_ica(n_samples=5, random_state=rs)[0]
    assert not np.allclose(first, second)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_components": 1.5}, "n_components"),
        ({"n_features": True}, "n_features"),
        ({"activation": "softplus"}, "activation"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"noise_std": np.nan}, "noise_std"),
        ({"hidden_size": 0}, "hidden_size"),
    ],
)
def test_nonlinear_ica_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_nonlinear_ica(**kwargs)


def test_nonlinear_ica_leaky_relu_slope_and_decoders():
    # The slope is torch.nn.LeakyReLU's default, 0.01; a network with the
    # decoders' slope 0.2 and twice the units represents the mixing exactly.
    torch = pytest.importorskip("torch")
    X, S, f = make_nonlinear_ica(
        n_samples=200,
        n_components=2,
        n_features=3,
        noise_std=0.0,
        random_state=0,
        return_mixing=True,
    )
    (W,), (b,) = f.coefs_, f.intercepts_
    H = torch.from_numpy(S @ W + b)
    np.testing.assert_allclose(X, torch.nn.LeakyReLU()(H).numpy(), rtol=1e-15)
    a, c = 0.01, 0.2
    wide = torch.nn.LeakyReLU(c)(torch.cat([H, -H], dim=1)).numpy()
    out = np.vstack([(1 - a * c) * np.eye(3), (c - a) * np.eye(3)]) / (1 - c**2)
    np.testing.assert_allclose(wide @ out, X, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_std": True},
        {"noise_std": np.inf},
        {"hidden_size": True},
        {"hidden_size": 2.0},
        {"return_mixing": 1},
        {"random_state": "0"},
    ],
)
def test_nonlinear_ica_more_bad_parameters(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        make_nonlinear_ica(**kwargs)


# ---------------------------------------------------------------------------
# make_segmented_sources
# ---------------------------------------------------------------------------


def test_segmented_shapes_and_labels():
    X, S, U = make_segmented_sources(
        n_segments=6, n_per_segment=20, n_components=3, n_features=5, random_state=0
    )
    assert X.shape == (120, 5) and S.shape == (120, 3) and U.shape == (120,)
    np.testing.assert_array_equal(U, np.repeat(np.arange(6), 20))
    assert np.issubdtype(U.dtype, np.integer)
    X, S, U = make_segmented_sources(n_segments=2, n_per_segment=5, n_components=4)
    assert X.shape == (10, 4)  # n_features defaults to n_components


def test_segmented_source_distribution():
    # Per segment, each source is N(mean, std^2) with std ~ U(std_range) and
    # mean ~ U(mean_range); estimated from 4000 rows per segment, the sample
    # std and mean are within ~4 standard errors of the truth, which the
    # ranges below contain with a wide margin.
    _, S, U = make_segmented_sources(
        n_segments=8,
        n_per_segment=4000,
        n_components=3,
        std_range=(0.5, 3.0),
        mean_range=(-5.0, 5.0),
        random_state=0,
    )
    stds = np.array([S[U == u].std(0) for u in range(8)])
    means = np.array([S[U == u].mean(0) for u in range(8)])
    assert np.all((0.5 * 0.95 < stds) & (stds < 3.0 * 1.05))
    assert np.all((-5.1 < means) & (means < 5.1))
    # Parameters really vary between segments.
    assert stds.std(0).min() > 0.2 and means.std(0).min() > 1
    # Zero means by default.
    _, S, U = make_segmented_sources(
        n_segments=8, n_per_segment=4000, n_components=3, random_state=0
    )
    centred = np.array([S[U == u].mean(0) / S[U == u].std(0) for u in range(8)])
    assert np.abs(centred).max() < 4 / np.sqrt(4000)
    # Within a segment the sources are uncorrelated.
    corr = np.corrcoef(S[U == 0].T)
    assert np.abs(corr - np.eye(3)).max() < 4 / np.sqrt(4000)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_segmented_mixing_is_exact_and_invertible(n_layers):
    X, S, _U, f = make_segmented_sources(
        n_segments=5,
        n_per_segment=40,
        n_components=3,
        n_features=4,
        n_layers=n_layers,
        noise_std=0.0,
        random_state=0,
        return_mixing=True,
    )
    np.testing.assert_array_equal(X, f(S))
    np.testing.assert_allclose(f.inverse(X), S, atol=1e-8)
    assert len(f.coefs_) == n_layers
    assert f.coefs_[0].shape == (3, 4)
    assert all(W.shape == (4, 4) for W in f.coefs_[1:])
    assert f.activations_ == ["leaky_relu"] * (n_layers - 1) + ["identity"]
    for W in f.coefs_:
        # Unit-norm columns, U(-1, 1) entries before normalisation.
        np.testing.assert_allclose(np.linalg.norm(W, axis=0), 1)


def test_segmented_mixing_is_well_conditioned():
    # The accepted matrices lie in the lower quartile of condition numbers of
    # random unit-column matrices; compare with that distribution directly.
    f = make_segmented_sources(
        n_components=5, n_layers=8, random_state=0, return_mixing=True
    )[3]
    rng = np.random.default_rng(0)
    reference = rng.uniform(-1, 1, size=(4000, 5, 5))
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    quartile = np.percentile(np.linalg.cond(reference), 25)
    conditions = np.linalg.cond(np.stack(f.coefs_))
    # 256 draws estimate the quartile to within ~10%.
    assert np.all(conditions < 1.15 * quartile)


def test_segmented_leaky_relu_slope():
    X, S, _U, f = make_segmented_sources(
        n_segments=2,
        n_per_segment=50,
        n_components=2,
        n_layers=2,
        noise_std=0.0,
        negative_slope=0.3,
        random_state=0,
        return_mixing=True,
    )
    H = S @ f.coefs_[0]
    np.testing.assert_allclose(X, np.where(H > 0, H, 0.3 * H) @ f.coefs_[1])


def test_segmented_xtanh_mixing_and_its_inverse():
    # The authors' code: act(h) = tanh(h) + slope * h, inverted by Newton.
    X, S, _U, f = make_segmented_sources(
        n_segments=4,
        n_per_segment=250,
        n_components=3,
        n_layers=3,
        noise_std=0.0,
        activation="xtanh",
        random_state=0,
        return_mixing=True,
    )
    H = S @ f.coefs_[0]
    H = np.tanh(H) + 0.1 * H
    H = H @ f.coefs_[1]
    H = np.tanh(H) + 0.1 * H
    np.testing.assert_allclose(X, H @ f.coefs_[2])
    assert f.activations_ == ["xtanh", "xtanh", "identity"]
    np.testing.assert_allclose(f.inverse(X), S, atol=1e-9)
    # Far out in the linear tails too.
    big = MixingMLP([np.eye(1)], [np.zeros(1)], ["xtanh"], 0.01)
    s = np.array([[-300.0], [-2.0], [0.0], [1e-9], [5.0], [300.0]])
    np.testing.assert_allclose(big.inverse(big(s)), s, rtol=1e-12, atol=1e-12)


def test_segmented_noise():
    X, S, _U, f = make_segmented_sources(
        n_segments=10,
        n_per_segment=1000,
        n_components=3,
        noise_std=0.3,
        random_state=0,
        return_mixing=True,
    )
    np.testing.assert_allclose((X - f(S)).std(0), 0.3, rtol=0.03)


def test_segmented_shuffle():
    kwargs = {
        "n_segments": 4,
        "n_per_segment": 25,
        "n_components": 2,
        "random_state": 5,
    }
    X, S, U = make_segmented_sources(**kwargs)
    Xs, Ss, Us = make_segmented_sources(shuffle=True, **kwargs)
    assert not np.array_equal(Us, U)
    order = np.lexsort((Ss[:, 0], Us))
    reference = np.lexsort((S[:, 0], U))
    # Same rows, new order, rows kept together.
    np.testing.assert_array_equal(Xs[order], X[reference])
    np.testing.assert_array_equal(Us[order], U[reference])


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_components=st.integers(1, 4),
    extra=st.integers(0, 3),
    n_layers=st.integers(1, 4),
)
def test_segmented_determinism_and_invertibility(seed, n_components, extra, n_layers):
    kwargs = {
        "n_segments": 3,
        "n_per_segment": 10,
        "n_components": n_components,
        "n_features": n_components + extra,
        "n_layers": n_layers,
        "noise_std": 0.0,
        "random_state": seed,
        "return_mixing": True,
    }
    X, S, _U, f = make_segmented_sources(**kwargs)
    X2, S2, _U2, _f2 = make_segmented_sources(**kwargs)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(S, S2)
    np.testing.assert_allclose(f.inverse(X), S, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_segments": 0}, "n_segments"),
        ({"n_per_segment": -1}, "n_per_segment"),
        ({"n_components": 3, "n_features": 2}, "n_features"),
        ({"n_layers": 0}, "n_layers"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"std_range": (0.0, 1.0)}, "std_range"),
        ({"std_range": (2.0, 1.0)}, "std_range"),
        ({"std_range": 1.0}, "std_range"),
        ({"mean_range": (1.0, np.inf)}, "mean_range"),
        ({"negative_slope": 0.0}, "negative_slope"),
        ({"activation": "tanh"}, "activation"),
    ],
)
def test_segmented_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_segmented_sources(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_segments": True}, "n_segments"),
        ({"n_features": 0}, "n_features"),
        ({"noise_std": False}, "noise_std"),
        ({"negative_slope": True}, "negative_slope"),
        ({"negative_slope": np.inf}, "negative_slope"),
        ({"std_range": (1.0, 2.0, 3.0)}, "std_range"),
        ({"std_range": "ab"}, "std_range"),
        ({"mean_range": (1.0, -1.0)}, "mean_range"),
        ({"mean_range": 0.0}, "mean_range"),
        ({"shuffle": "yes"}, "shuffle"),
        ({"return_mixing": None}, "return_mixing"),
    ],
)
def test_segmented_more_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_segmented_sources(**kwargs)


def test_segmented_accepts_numpy_integers():
    # n_features=None means n_components; numpy integers are accepted.
    X, S, U = make_segmented_sources(
        n_segments=np.int64(2), n_per_segment=5, n_components=3, random_state=0
    )
    assert X.shape == (10, 3) and S.shape == (10, 3) and U.shape == (10,)
