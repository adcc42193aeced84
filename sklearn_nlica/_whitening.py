"""Whitening: the affine map that gives data zero mean and identity covariance.

A model of x = g(z) + noise with isotropic noise weighs a reconstruction
error the same in every direction of x. When the mixing squeezes some
sources into directions of x with little variance (a leaky ReLU shrinks half
of its input tenfold per layer), that noise, fitted to the large directions,
covers them, and the fit explains them as noise. Fitted to whitened data, the
same model weighs every direction of x by its spread: its noise covariance in
x's units is sigma^2 times the data's covariance.
"""

from dataclasses import dataclass

import numpy as np
from scipy import linalg

# A direction with less variance than this share of the largest is given this
# variance: whitening must not blow a direction without spread (a constant or
# repeated feature) up to unit variance.
RELATIVE_VARIANCE_FLOOR = 1e-10


@dataclass(frozen=True)
class Whitening:
    """The map x -> (x - mean) @ matrix, fitted by :func:`fit_whitening`.

    ``matrix`` is the symmetric inverse square root of the covariance (ZCA
    whitening): unlike a rotation onto the principal axes it is unique, and
    each whitened feature stays closest to its own feature of x.
    """

    mean: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray
    # log |det matrix|: the log-density of a whitened row plus this is the
    # log-density of the row in x's units.
    log_det: float

    def transform(self, X):
        """Whitened rows, in the dtype of ``X``."""
        return ((X - self.mean) @ self.matrix).astype(X.dtype, copy=False)

    def inverse_transform(self, Y):
        """Rows in x's units from whitened rows, in the dtype of ``Y``."""
        return (Y @ self.inverse + self.mean).astype(Y.dtype, copy=False)


def fit_whitening(X):
    """The ZCA whitening of the rows of ``X`` (n_samples, n_features)."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    centred = X - mean
    covariance = centred.T @ centred / X.shape[0]
    variances, vectors = linalg.eigh(covariance)
    largest = max(variances[-1], np.finfo(np.float64).tiny)
    scales = np.sqrt(np.maximum(variances, RELATIVE_VARIANCE_FLOOR * largest))
    return Whitening(
        mean=mean,
        matrix=(vectors / scales) @ vectors.T,
        inverse=(vectors * scales) @ vectors.T,
        log_det=float(-np.log(scales).sum()),
    )
