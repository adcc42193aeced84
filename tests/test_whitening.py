import numpy as np
import pytest
from scipy.stats import multivariate_normal

from sklearn_nlica._whitening import fit_whitening


def correlated(n=500, seed=0):
    rng = np.random.default_rng(seed)
    mixing = np.array([[2.0, 0.3, 0.0], [0.5, 0.1, 0.02], [-1.0, 0.0, 0.4]])
    return rng.standard_normal((n, 3)) @ mixing + [1.0, -2.0, 5.0]


def test_whitened_rows_have_zero_mean_and_identity_covariance():
    X = correlated()
    Y = fit_whitening(X).transform(X)
    np.testing.assert_allclose(Y.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Y.T @ Y / len(Y), np.eye(3), atol=1e-10)


def test_the_matrix_is_symmetric_and_inverted_by_inverse_transform():
    X = correlated()
    whitening = fit_whitening(X)
    np.testing.assert_allclose(whitening.matrix, whitening.matrix.T, atol=1e-12)
    np.testing.assert_allclose(whitening.inverse_transform(whitening.transform(X)), X)


def test_log_det_turns_densities_of_whitened_rows_into_densities_of_x():
    X = correlated()
    whitening = fit_whitening(X)
    covariance = np.cov(X, rowvar=False, bias=True)
    exact = multivariate_normal(X.mean(0), covariance).logpdf(X[:20])
    whitened = multivariate_normal(np.zeros(3)).logpdf(whitening.transform(X[:20]))
    np.testing.assert_allclose(whitened + whitening.log_det, exact)
    sign, log_det = np.linalg.slogdet(whitening.matrix)
    assert sign > 0 and whitening.log_det == pytest.approx(log_det)


def test_a_direction_without_spread_stays_finite_and_small():
    X = correlated()
    X = np.column_stack([X, X[:, 0]])  # a repeated feature: singular covariance
    Y = fit_whitening(X).transform(X)
    assert np.isfinite(Y).all()
    # Three directions of unit variance and one of (almost) none.
    variances = np.linalg.eigvalsh(Y.T @ Y / len(Y))
    np.testing.assert_allclose(variances[1:], 1, atol=1e-6)
    assert variances[0] < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_maps_keep_the_dtype(dtype):
    X = correlated().astype(dtype)
    whitening = fit_whitening(X)
    assert whitening.transform(X).dtype == dtype
    assert whitening.inverse_transform(X).dtype == dtype
