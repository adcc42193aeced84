"""Tests of sklearn_nlica.metrics._scorers: the scorers, alone and inside
scikit-learn's model-selection tools."""

import pickle

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.decomposition import PCA, FastICA
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from sklearn_nlica.datasets import make_segmented_sources
from sklearn_nlica.metrics import (
    cca_score,
    cca_scorer,
    make_latent_scorer,
    mcc_scorer,
    mean_correlation_coefficient,
    procrustes_disparity,
    procrustes_scorer,
)

# FastICA may stop at max_iter on some folds; the scores are still valid.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def segmented():
    # Linear mixing (n_layers=1) of sources whose variance changes across
    # segments: marginally non-Gaussian, so FastICA can unmix them.
    return make_segmented_sources(
        n_segments=20,
        n_per_segment=30,
        n_components=3,
        n_features=5,
        n_layers=1,
        noise_std=0.01,
        random_state=0,
    )


@pytest.fixture
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


def _fastica(n_components=3):
    return FastICA(
        n_components=n_components, whiten="unit-variance", max_iter=400, random_state=0
    )


SCORER_NAMES = ["procrustes", "cca", "mcc"]
READY_MADE = {"procrustes": procrustes_scorer, "cca": cca_scorer, "mcc": mcc_scorer}


def test_ready_made_scorers_are_reconstruction_scorers():
    for name, scorer in READY_MADE.items():
        assert scorer.mode == "reconstruction"
        assert repr(scorer) == f"make_latent_scorer('{name}', mode='reconstruction')"


def test_reconstruction_mode_values(segmented):
    X, _S, U = segmented
    full = make_pipeline(StandardScaler(), PCA(n_components=5)).fit(X)
    assert procrustes_scorer(full, X) == pytest.approx(0, abs=1e-10)
    assert cca_scorer(full, X) == pytest.approx(1)
    assert mcc_scorer(full, X, U) == pytest.approx(1)  # y is ignored
    lossy = make_pipeline(StandardScaler(), PCA(n_components=1)).fit(X)
    X_hat = lossy.inverse_transform(lossy.transform(X))
    assert procrustes_scorer(lossy, X) == -procrustes_disparity(X, X_hat) < 0
    assert mcc_scorer(lossy, X) == mean_correlation_coefficient(X, X_hat)


def test_latent_y_mode_values(segmented):
    X, S, _U = segmented
    ica = make_pipeline(StandardScaler(), _fastica()).fit(X)
    Z = ica.transform(X)
    scorer = make_latent_scorer("mcc", mode="latent_y")
    assert scorer(ica, X, S) == mean_correlation_coefficient(S, Z) > 0.95
    cca2 = make_latent_scorer("cca", mode="latent_y", n_components=2)
    assert cca2(ica, X, S) == pytest.approx(np.mean(cca_score(S, Z, n_components=2)))
    # A single source may come as a 1-D array.
    assert 0 < scorer(ica, X, S[:, 0]) <= 1
    with pytest.raises(ValueError, match="y is None"):
        scorer(ica, X)


def test_latent_mode_direct_call(segmented):
    X, S, U = segmented
    ica = make_pipeline(StandardScaler(), _fastica()).fit(X)
    scorer = make_latent_scorer("procrustes", mode="latent")
    expected = -procrustes_disparity(S, ica.transform(X))
    assert scorer(ica, X, U, sources=S) == expected
    with pytest.raises(ValueError, match="sources=S"):
        scorer(ica, X, U)


def test_custom_metric_and_sign(segmented):
    X, _S, _U = segmented
    pca = PCA(n_components=2).fit(X)

    def mse(A, B):
        return float(np.mean((A - B) ** 2))

    loss = make_latent_scorer(mse, greater_is_better=False)
    X_hat = pca.inverse_transform(pca.transform(X))
    assert loss(pca, X) == -mse(X, X_hat) < 0
    assert "mse" in repr(loss)


def test_make_latent_scorer_validation():
    with pytest.raises(ValueError, match="mode"):
        make_latent_scorer("mcc", mode="sources")
    with pytest.raises(ValueError, match="metric"):
        make_latent_scorer("r2")
    with pytest.raises(TypeError, match="metric"):
        make_latent_scorer(3)


def test_make_latent_scorer_flags_are_bools():
    with pytest.raises(ValueError, match="greater_is_better"):
        make_latent_scorer(np.corrcoef, greater_is_better="yes")


def test_missing_methods_are_reported(segmented):
    X, _S, _U = segmented
    no_inverse = make_pipeline(StandardScaler(), Normalizer()).fit(X)
    with pytest.raises(AttributeError, match="inverse_transform"):
        procrustes_scorer(no_inverse, X)


def test_set_score_request(routing):
    scorer = make_latent_scorer("mcc", mode="latent")
    assert scorer.get_metadata_routing().score.requests == {"sources": True}
    assert scorer.set_score_request(sources="S_true") is scorer
    assert scorer.get_metadata_routing().score.requests == {"sources": "S_true"}
    assert procrustes_scorer.get_metadata_routing().score.requests == {}
    with pytest.raises(ValueError, match="consumes no metadata"):
        make_latent_scorer("mcc").set_score_request(sources=True)


def test_set_score_request_needs_routing():
    with pytest.raises(RuntimeError, match="enable_metadata_routing"):
        make_latent_scorer("mcc", mode="latent").set_score_request(sources=True)


def test_scorer_pickles(segmented):
    X, S, _U = segmented
    pca = PCA(n_components=2).fit(X)
    for scorer in (procrustes_scorer, make_latent_scorer("cca", mode="latent")):
        clone_ = pickle.loads(pickle.dumps(scorer))
        assert clone_(pca, X, sources=S) == scorer(pca, X, sources=S)


# -- inside scikit-learn's tools --------------------------------------------


@pytest.mark.parametrize("name", SCORER_NAMES)
def test_grid_search_reconstruction_mode(segmented, name):
    X, _S, _U = segmented
    pipe = make_pipeline(StandardScaler(), PCA())
    search = GridSearchCV(
        pipe, {"pca__n_components": [1, 2, 5]}, scoring=READY_MADE[name], cv=3
    )
    search.fit(X)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))
    if name == "cca":
        # A linear reconstruction is a linear function of X, so its first
        # canonical correlation with X is 1 whatever the rank: the report's
        # caveat about CCA, in its purest form.
        np.testing.assert_allclose(scores, 1)
        return
    # Keeping every component reconstructs exactly.
    assert search.best_params_ == {"pca__n_components": 5}
    assert search.best_score_ == pytest.approx(0 if name == "procrustes" else 1)


def test_grid_search_reconstruction_all_canonical_correlations(segmented):
    # The mean of all canonical correlations does see the rank: k of 5.
    X, _S, _U = segmented
    scorer = make_latent_scorer("cca", n_components=None)
    search = GridSearchCV(PCA(), {"n_components": [1, 2, 5]}, scoring=scorer, cv=3)
    search.fit(X)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], [0.2, 0.4, 1])


@pytest.mark.parametrize("name", SCORER_NAMES)
def test_grid_search_latent_y_mode(segmented, name):
    X, S, _U = segmented
    search = GridSearchCV(
        make_pipeline(StandardScaler(), _fastica()),
        {"fastica__n_components": [1, 3]},
        scoring=make_latent_scorer(name, mode="latent_y"),
        cv=3,
    ).fit(X, S)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_params_ == {"fastica__n_components": 3}


@pytest.mark.parametrize("name", SCORER_NAMES)
def test_grid_search_latent_mode_routes_fold_sources(segmented, routing, name):
    # y carries the auxiliary variable (segment labels), the sources travel as
    # metadata; each fold's score must use that fold's rows of the sources.
    X, S, U = segmented
    pipe = make_pipeline(StandardScaler(), PCA(n_components=3))
    scorer = make_latent_scorer(name, mode="latent")
    cv = KFold(3, shuffle=True, random_state=0)
    search = GridSearchCV(pipe, {"pca__whiten": [False]}, scoring=scorer, cv=cv)
    search.fit(X, U, sources=S)
    metric = {
        "procrustes": lambda A, B: -procrustes_disparity(A, B),
        "cca": cca_score,
        "mcc": mean_correlation_coefficient,
    }[name]
    for i, (train, test) in enumerate(cv.split(X)):
        fitted = clone(pipe).fit(X[train])
        expected = metric(S[test], fitted.transform(X[test]))
        assert search.cv_results_[f"split{i}_test_score"][0] == pytest.approx(expected)


def test_grid_search_latent_mode_with_alias(segmented, routing):
    X, S, U = segmented
    scorer = make_latent_scorer("mcc", mode="latent").set_score_request(
        sources="true_sources"
    )
    search = GridSearchCV(PCA(), {"n_components": [1, 3]}, scoring=scorer, cv=3)
    search.fit(X, U, true_sources=S)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_grid_search_several_scorers_with_refit(segmented, routing):
    X, S, U = segmented
    scoring = {
        "disparity": procrustes_scorer,
        "cca": cca_scorer,
        "mcc": mcc_scorer,
        "latent_disparity": make_latent_scorer("procrustes", mode="latent"),
        "latent_cca": make_latent_scorer("cca", mode="latent"),
        "latent_mcc": make_latent_scorer("mcc", mode="latent"),
    }
    search = GridSearchCV(
        make_pipeline(StandardScaler(), _fastica()),
        {"fastica__n_components": [1, 2, 3]},
        scoring=scoring,
        refit="latent_mcc",
        cv=3,
    ).fit(X, U, sources=S)
    for name in scoring:
        assert np.all(np.isfinite(search.cv_results_[f"mean_test_{name}"]))
    assert search.best_params_ == {"fastica__n_components": 3}
    assert search.best_score_ > 0.9
    # The refitted search scores new data with the refit metric.
    Z = search.best_estimator_.transform(X)
    assert search.score(X, U, sources=S) == mean_correlation_coefficient(S, Z)


def test_cross_validate(segmented, routing):
    X, S, U = segmented
    scoring = {
        "disparity": procrustes_scorer,
        "mcc": make_latent_scorer("mcc", mode="latent"),
        "cca": make_latent_scorer("cca", mode="latent", n_components=3),
    }
    results = cross_validate(
        make_pipeline(StandardScaler(), PCA(n_components=3)),
        X,
        U,
        scoring=scoring,
        params={"sources": S},
        cv=3,
    )
    for name in scoring:
        scores = results[f"test_{name}"]
        assert scores.shape == (3,) and np.all(np.isfinite(scores))


def test_cross_validate_without_routing(segmented):
    X, S, _U = segmented
    results = cross_validate(
        _fastica(),
        X,
        S,
        scoring={
            "disparity": procrustes_scorer,
            "mcc": make_latent_scorer("mcc", mode="latent_y"),
        },
        cv=3,
    )
    assert np.all(np.isfinite(results["test_disparity"]))
    assert np.all(results["test_mcc"] > 0.9)
