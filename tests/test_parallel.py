"""Tuning in parallel: joblib's loky processes and a dask cluster give the
same cross-validation results as a sequential search."""

import warnings

import joblib
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from sklearn_nlica import VAEICA, IdentifiableVAE, NonlinearICAMLE
from sklearn_nlica.datasets import make_nonlinear_ica

ESTIMATORS = {
    "vae": VAEICA(hidden_layer_sizes=(8,), max_iter=3, random_state=0),
    "mle": NonlinearICAMLE(hidden_layer_sizes=(8,), max_iter=3, random_state=0),
    "ivae": IdentifiableVAE(hidden_layer_sizes=(8,), max_iter=3, random_state=0),
}


def search(kind, n_jobs=None):
    X, _ = make_nonlinear_ica(
        n_samples=120, n_components=2, n_features=4, noise_std=0.3, random_state=0
    )
    u = np.arange(len(X)) % 3
    grid = GridSearchCV(ESTIMATORS[kind], {"n_components": [1, 2]}, cv=2, n_jobs=n_jobs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return grid.fit(X, u if kind == "ivae" else None).cv_results_


def assert_same_results(results, expected):
    for key, values in expected.items():
        if "time" in key:
            continue
        if isinstance(values, np.ndarray) and values.dtype.kind == "f":
            np.testing.assert_array_equal(results[key], values, err_msg=key)
        else:
            assert list(results[key]) == list(values), key


@pytest.mark.parametrize("kind", list(ESTIMATORS))
def test_loky_grid_search_matches_the_sequential_one(kind):
    assert_same_results(search(kind, n_jobs=2), search(kind))


def test_dask_grid_search_matches_the_sequential_one():
    distributed = pytest.importorskip("distributed")
    expected = {kind: search(kind) for kind in ESTIMATORS}
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster),
        joblib.parallel_config(backend="dask"),
    ):
        for kind, results in expected.items():
            assert_same_results(search(kind, n_jobs=-1), results)
