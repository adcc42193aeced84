"""Mixing functions: activations and their inverses, the MixingMLP returned by
the generators, and the well-conditioned random matrices of its layers."""

# SPDX-License-Identifier: BSD-3-Clause

import numpy as np
from scipy.special import expit, logit, ndtr


def _activate(name, H, negative_slope):
    if name == "relu":
        return np.maximum(H, 0.0)
    if name == "leaky_relu":
        return np.where(H > 0.0, H, negative_slope * H)
    if name == "sigmoid":
        return expit(H)
    if name == "tanh":
        return np.tanh(H)
    if name == "gelu":
        # The exact GELU (torch's default), not the tanh approximation.
        return H * ndtr(H)
    if name == "xtanh":
        return np.tanh(H) + negative_slope * H
    return H


def _deactivate(name, H, negative_slope):
    if name == "leaky_relu":
        return np.where(H > 0.0, H, H / negative_slope)
    if name == "sigmoid":
        return logit(H)
    if name == "tanh":
        return np.arctanh(H)
    if name == "identity":
        return H
    if name == "xtanh":
        return _inverse_xtanh(H, negative_slope)
    raise ValueError(f"The activation {name!r} is not invertible.")


def _inverse_xtanh(Y, slope):
    """Solve tanh(h) + slope * h = y elementwise (strictly increasing in h).

    Newton's method from sign(y) max((|y| - 1) / slope, 0), which lies
    between 0 and the root: the function is concave for h > 0 (convex for
    h < 0), so from there the iterates move monotonically to the root.
    """
    Y = np.asarray(Y, dtype=np.float64)
    H = np.sign(Y) * np.maximum((np.abs(Y) - 1.0) / slope, 0.0)
    for _ in range(100):
        step = (np.tanh(H) + slope * H - Y) / (1.0 - np.tanh(H) ** 2 + slope)
        H = H - step
        if np.all(np.abs(step) <= 1e-13 * (1.0 + np.abs(H))):
            break
    return H


class MixingMLP:
    """A fixed random multilayer perceptron, as returned by the generators.

    ``mixing(S)`` maps sources of shape (n_samples, n_components) to the
    noiseless observations. Layers use the row convention of scikit-learn's
    MLPs: ``H = activation(H @ coefs_[i] + intercepts_[i])``.

    Parameters
    ----------
    coefs : list of ndarray
        Weight matrices, the i-th of shape (n_inputs_i, n_outputs_i).

    intercepts : list of ndarray
        Bias vectors, the i-th of shape (n_outputs_i,).

    activations : list of str
        The activation after each layer, one of ``"relu"``, ``"leaky_relu"``,
        ``"sigmoid"``, ``"tanh"``, ``"gelu"``, ``"xtanh"``, ``"identity"``.

    negative_slope : float
        Slope of ``"leaky_relu"`` for negative inputs, and of the linear term
        of ``"xtanh"`` (tanh(h) + negative_slope * h).

    Attributes
    ----------
    coefs_ : list of ndarray
        The weight matrices.

    intercepts_ : list of ndarray
        The bias vectors.

    activations_ : list of str
        The activation after each layer.

    negative_slope : float
        Slope of the leaky ReLU for negative inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_nlica.datasets import MixingMLP
    >>> f = MixingMLP([np.eye(2)], [np.zeros(2)], ["leaky_relu"], 0.5)
    >>> f(np.array([[1.0, -2.0]]))
    array([[ 1., -1.]])
    >>> f.inverse(np.array([[1.0, -1.0]]))
    array([[ 1., -2.]])
    """

    def __init__(self, coefs, intercepts, activations, negative_slope):
        self.coefs_ = [np.asarray(W, dtype=np.float64) for W in coefs]
        self.intercepts_ = [np.asarray(b, dtype=np.float64) for b in intercepts]
        self.activations_ = list(activations)
        self.negative_slope = float(negative_slope)

    @property
    def n_components(self):
        """Number of inputs (sources)."""
        return self.coefs_[0].shape[0]

    @property
    def n_features(self):
        """Number of outputs (observed features)."""
        return self.coefs_[-1].shape[1]

    def __call__(self, S):
        """Map sources to noiseless observations.

        Parameters
        ----------
        S : array-like of shape (n_samples, n_components)
            Sources.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Noiseless observations.
        """
        H = np.asarray(S, dtype=np.float64)
        if H.ndim != 2 or H.shape[1] != self.n_components:
            raise ValueError(
                f"Expected sources of shape (n_samples, {self.n_components}); "
                f"got {H.shape}."
            )
        for W, b, name in zip(self.coefs_, self.intercepts_, self.activations_):
            H = _activate(name, H @ W + b, self.negative_slope)
        return H

    def inverse(self, X):
        """Recover the sources from noiseless observations.

        Available when every layer is injective (no fewer outputs than
        inputs, full column rank) and every activation is invertible
        (``"leaky_relu"``, ``"sigmoid"``, ``"tanh"``, ``"xtanh"``,
        ``"identity"``), as in
        :func:`make_segmented_sources`. Each layer is undone by least
        squares, which is exact on the image of the mixing.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Noiseless observations, ``mixing(S)``.

        Returns
        -------
        S : ndarray of shape (n_samples, n_components)
            The sources.
        """
        H = np.asarray(X, dtype=np.float64)
        for W, b, name in reversed(
            list(zip(self.coefs_, self.intercepts_, self.activations_))
        ):
            if W.shape[0] > W.shape[1]:
                raise ValueError("A layer that reduces dimension is not invertible.")
            H = _deactivate(name, H, self.negative_slope) - b
            H = np.linalg.lstsq(W.T, H.T, rcond=None)[0].T
        return H

    def __repr__(self):
        sizes = [self.coefs_[0].shape[0]] + [W.shape[1] for W in self.coefs_]
        return f"MixingMLP(layer_sizes={sizes}, activations={self.activations_})"


# How many candidate matrices are drawn to estimate the condition-number
# quantile below which a mixing matrix is accepted; the iVAE authors' code
# draws 10^4 per matrix, which is needlessly slow for a generator.
_N_CONDITION_DRAWS = 256


def well_conditioned_matrix(rng, n_in, n_out):
    """Random matrix with unit-norm columns and a small condition number.

    As in the simulations of Khemakhem, Kingma, Monti and Hyvarinen (2020):
    entries U(-1, 1), columns normalised, and
    accepted only below the 25th percentile of the condition number of such
    matrices. Drawing a batch and picking uniformly among its lower quarter
    samples the same conditional distribution as their rejection loop, with
    a bounded cost.
    """
    candidates = rng.uniform(-1.0, 1.0, size=(_N_CONDITION_DRAWS, n_in, n_out))
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    conditions = np.linalg.cond(candidates)
    accepted = np.flatnonzero(conditions <= np.percentile(conditions, 25))
    return candidates[rng.choice(accepted)]
