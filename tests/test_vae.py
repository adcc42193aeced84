"""VAEICA: scikit-learn conformance, the ELBO against exact likelihoods,
reproducibility, options, and bad input."""

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_nlica import VAEICA
from sklearn_nlica.datasets import make_nonlinear_ica
from sklearn_nlica.integrators import GaussHermite

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def ppca_data(n_samples=2000, n_features=5, n_components=2, noise=0.5, seed=0):
    rng = np.random.RandomState(seed)
    W = rng.randn(n_features, n_components)
    Z = rng.randn(n_samples, n_components)
    return Z @ W.T + noise * rng.randn(n_samples, n_features) + 1.0


def exact_ppca_loglik(vae, X):
    """log N(x; b, W W^T + sigma^2 I) of a fitted linear VAE's decoder."""
    decoder, m = vae.module_.decoder, vae.n_components
    with torch.no_grad():
        b = decoder.mean(torch.zeros(m, dtype=torch.float64))
        W = (decoder.mean(torch.eye(m, dtype=torch.float64)) - b).T
    cov = W @ W.T + vae.noise_variance_ * torch.eye(W.shape[0], dtype=W.dtype)
    return (
        torch.distributions.MultivariateNormal(b, cov)
        .log_prob(torch.as_tensor(X))
        .numpy()
    )


def exact_elbo(vae, X):
    """The ELBO with a rule that is exact for a linear decoder (GH, 2 per axis)."""
    rule = GaussHermite().rule(vae.n_components, 2**vae.n_components)
    with torch.no_grad():
        return vae.module_.elbo(torch.as_tensor(X), rule).numpy()


@pytest.fixture(scope="module")
def linear_vae():
    X = ppca_data()
    vae = VAEICA(
        2,
        hidden_layer_sizes=(),
        activation="identity",
        max_iter=300,
        n_iter_no_change=300,
        learning_rate_init=3e-3,
        batch_size=64,
        random_state=0,
    ).fit(X[:1000])
    return vae, X[:1000], X[1000:]


@parametrize_with_checks([VAEICA()])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_linear_vae_reaches_ppca_optimum(linear_vae):
    vae, X_train, X_test = linear_vae
    optimum = PCA(2).fit(X_train)
    iw = vae.log_likelihood(X_test, n_samples=5000).mean()
    assert abs(iw - optimum.score(X_test)) < 0.1
    # The ELBO is a lower bound: never above the maximum likelihood.
    assert exact_elbo(vae, X_train).mean() <= optimum.score(X_train)
    assert vae.score(X_train) <= optimum.score(X_train) + 0.01


def test_elbo_below_importance_weighted_below_exact(linear_vae):
    vae, _, X_test = linear_vae
    exact = exact_ppca_loglik(vae, X_test)
    elbo = exact_elbo(vae, X_test)
    # Per sample, the exact ELBO is a strict lower bound.
    assert np.all(elbo <= exact + 1e-10)
    iw = {k: vae.log_likelihood(X_test, n_samples=k).mean() for k in (100, 5000)}
    # IW_K rises towards log p(x) with K; one node set is shared by all rows,
    # so small K carries a common error of a few tenths of a nat.
    assert abs(iw[100] - exact.mean()) < 0.1
    assert elbo.mean() <= iw[5000] <= exact.mean() + 0.01
    assert abs(iw[5000] - exact.mean()) < 0.02


def test_features_on_any_scale_train_the_same_model():
    # The networks work in standardised units: rescaling and shifting X gives
    # the same latents and a log-density shifted by the Jacobian, -n log c.
    # Trained in raw units, a scale of 1000 left the first fit far from this.
    X, _ = make_nonlinear_ica(400, 2, 4, random_state=0)
    kwargs = dict(max_iter=5, random_state=0)
    vae = VAEICA(2, **kwargs).fit(X)
    scaled = VAEICA(2, **kwargs).fit(1000.0 * X + 5.0)
    np.testing.assert_allclose(
        scaled.transform(1000.0 * X + 5.0), vae.transform(X), atol=2e-3
    )
    assert scaled.noise_variance_ == pytest.approx(1e6 * vae.noise_variance_, 1e-3)
    expected = vae.score(X) - 4 * np.log(1000.0)
    assert scaled.score(1000.0 * X + 5.0) == pytest.approx(expected, abs=1e-2)


def test_reproducible_and_leaves_global_rng_alone():
    X = ppca_data(300)
    state = torch.get_rng_state()
    a = VAEICA(max_iter=5, random_state=3).fit(X)
    assert torch.equal(torch.get_rng_state(), state)
    b = VAEICA(max_iter=5, random_state=3).fit(X)
    c = VAEICA(max_iter=5, random_state=4).fit(X)
    assert a.loss_curve_ == b.loss_curve_
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    np.testing.assert_array_equal(a.score_samples(X), b.score_samples(X))
    assert not np.array_equal(a.transform(X), c.transform(X))
    np.testing.assert_array_equal(
        a.sample(4, random_state=1)[0], b.sample(4, random_state=1)[0]
    )


def test_pickle_round_trip():
    X = ppca_data(300)
    vae = VAEICA(max_iter=3, random_state=0).fit(X)
    loaded = pickle.loads(pickle.dumps(vae))
    np.testing.assert_array_equal(loaded.transform(X), vae.transform(X))
    np.testing.assert_array_equal(loaded.score_samples(X), vae.score_samples(X))
    loaded.fit(X)  # and it can be refitted


def test_float32_is_trained_and_returned_in_float32():
    X = ppca_data(300).astype(np.float32)
    vae = VAEICA(max_iter=3, random_state=0).fit(X)
    assert all(p.dtype == torch.float32 for p in vae.module_.parameters())
    assert vae.transform(X).dtype == np.float32
    assert vae.inverse_transform(vae.transform(X)).dtype == np.float32
    assert vae.sample(2)[0].dtype == np.float32
    assert vae.transform(X.astype(np.float64)).dtype == np.float64


@pytest.mark.parametrize(
    "params",
    [
        {"update": "alternating"},
        {"gradient": "score_function", "n_mc_samples": 8},
        {"decoder_variance": "per_sample"},
        {"noise_variance": 0.5},
        {"early_stopping": True},
        {"integrator": "qmc", "n_mc_samples": 4},
    ],
)
def test_options_train_to_a_better_elbo(params):
    X = ppca_data(600, noise=0.3)
    untrained = VAEICA(
        max_iter=1, learning_rate_init=1e-12, random_state=0, **params
    ).fit(X)
    vae = VAEICA(
        max_iter=40, learning_rate_init=3e-3, batch_size=50, random_state=0, **params
    ).fit(X)
    assert np.isfinite(vae.loss_curve_).all()
    assert vae.score(X) > untrained.score(X) + 0.5
    if "noise_variance" in params:
        assert vae.noise_variance_ == pytest.approx(params["noise_variance"])
    if params.get("decoder_variance") == "per_sample":
        assert vae.noise_variance_ is None
    if params.get("early_stopping"):
        assert len(vae.validation_scores_) == vae.n_iter_
        assert vae.best_validation_score_ == max(vae.validation_scores_)


def test_large_latent_dimension_stays_finite():
    # The source report saw invalid values at m = n = 100.
    rng = np.random.RandomState(0)
    X = np.tanh(rng.randn(5000, 100) @ rng.randn(100, 100) / 10) + 0.1 * rng.randn(
        5000, 100
    )
    vae = VAEICA(n_components=100, max_iter=30, batch_size=256, random_state=0).fit(X)
    assert vae.n_iter_ == 30 or vae.n_iter_ > 10
    assert np.isfinite(vae.loss_curve_).all()
    assert np.isfinite(vae.score_samples(X[:500])).all()
    assert np.isfinite(vae.transform(X[:500])).all()
    assert np.isfinite(vae.inverse_transform(vae.transform(X[:500]))).all()


def test_huge_values_are_rejected_and_divergence_stops_with_clear_error():
    X = ppca_data(100)
    with pytest.raises(ValueError, match="beyond the range"):
        VAEICA(max_iter=2, random_state=0).fit(X * 1e200)
    with pytest.raises(FloatingPointError, match="learning_rate_init"):
        VAEICA(max_iter=2, random_state=0, learning_rate_init=1e6).fit(X)


@pytest.mark.parametrize(
    "X, error, match",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]]), ValueError, "NaN"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), ValueError, "infinity"),
        (np.empty((0, 3)), ValueError, "0 sample"),
        (np.arange(5.0), ValueError, "2D array"),
        (np.array([["a", "b"], ["c", "d"]]), ValueError, "float"),
        (np.array([[1 + 1j, 2], [3, 4]]), ValueError, "[Cc]omplex"),
        (sp.random(10, 3, density=0.5, format="csr"), TypeError, "[Ss]parse"),
    ],
)
def test_bad_input_gets_a_clear_error(X, error, match):
    with pytest.raises(error, match=match):
        VAEICA(max_iter=1).fit(X)


def test_wrong_width_and_unfitted():
    X = ppca_data(50)
    with pytest.raises(NotFittedError):
        VAEICA().transform(X)
    vae = VAEICA(max_iter=1).fit(X)
    with pytest.raises(ValueError, match="features"):
        vae.transform(X[:, :3])
    with pytest.raises(ValueError, match="latent"):
        vae.inverse_transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="n_samples"):
        vae.log_likelihood(X, n_samples=0)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_components": 0}, "n_components"),
        ({"activation": "swish"}, "activation"),
        ({"hidden_layer_sizes": (4, 0)}, "hidden_layer_sizes"),
        ({"integrator": "simpson"}, "integrator"),
        ({"device": "cuda:7"}, "cuda:7"),
        ({"device": "banana"}, "banana"),
        ({"decoder_variance": "per_sample", "noise_variance": 1.0}, "noise_variance"),
        ({"validation_fraction": 1.5}, "validation_fraction"),
    ],
)
def test_invalid_parameters(params, match):
    if params.get("device") == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ValueError, match=match):
        VAEICA(max_iter=1, **params).fit(ppca_data(20))


def test_verbose_levels(capsys):
    X = ppca_data(100)
    VAEICA(max_iter=3, verbose=2, random_state=0).fit(X)
    out = capsys.readouterr().out
    assert "train_loss" in out and out.count("\n") >= 5
    VAEICA(max_iter=3, verbose=1, random_state=0).fit(X)
    assert "epoch" in capsys.readouterr().err
    VAEICA(max_iter=3, verbose=0, random_state=0).fit(X)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_grid_search_over_components_by_elbo():
    X = ppca_data(300)
    search = GridSearchCV(
        VAEICA(max_iter=10, random_state=0), {"n_components": [1, 2]}, cv=2
    ).fit(X)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.n_components in (1, 2)


def test_model_saved_on_a_gpu_loads_on_the_cpu():
    # Simulate a GPU-fitted model on this CPU-only machine: the net records
    # "cuda" as its device; unpickling must map everything to the CPU.
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    X = ppca_data(200)
    vae = VAEICA(max_iter=2, random_state=0).fit(X)
    expected = vae.transform(X)
    vae.net_.device = "cuda"
    with pytest.warns(UserWarning, match="cpu"):
        loaded = pickle.loads(pickle.dumps(vae))
    assert loaded.device_ == torch.device("cpu")
    np.testing.assert_array_equal(loaded.transform(X), expected)
    assert np.isfinite(loaded.score(X))


def test_feature_names_out_and_fit_transform():
    X = ppca_data(100)
    vae = VAEICA(3, max_iter=2, random_state=0)
    Z = vae.fit_transform(X)
    assert Z.shape == (100, 3)
    assert list(vae.get_feature_names_out()) == ["vaeica0", "vaeica1", "vaeica2"]
    np.testing.assert_array_equal(Z, vae.transform(X))


def test_log_likelihood_of_a_dataframe_warns_nothing():
    pd = pytest.importorskip("pandas")
    X = ppca_data(200)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*feature names")
        vae = VAEICA(max_iter=2, random_state=0).fit(df)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = vae.log_likelihood(df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # X has no feature names
        np.testing.assert_allclose(values, vae.log_likelihood(X), rtol=1e-12)


def test_active_components_mark_the_latents_the_data_need():
    # Two sources, four latents: the VAE lets two collapse onto the prior.
    X, _ = make_nonlinear_ica(
        1000, n_components=2, n_features=10, noise_std=0.1, random_state=0
    )
    vae = VAEICA(n_components=4, hidden_layer_sizes=(16,), random_state=0).fit(X)
    assert vae.active_components_.dtype == bool
    assert vae.active_components_.sum() == 2
    Z = vae.transform(X)
    assert np.all(Z[:, ~vae.active_components_].std(0) < 0.1)
    assert np.all(Z[:, vae.active_components_].std(0) > 0.5)
