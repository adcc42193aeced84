"""Tests of sklearn_nlica.datasets._mixing: the mixing MLP, its activations
and inverses, and the well-conditioned random matrices."""

import numpy as np
import pytest

from sklearn_nlica.datasets import MixingMLP
from sklearn_nlica.datasets._mixing import well_conditioned_matrix

INVERTIBLE = ["leaky_relu", "sigmoid", "tanh", "xtanh", "identity"]


def test_mixing_mlp_checks():
    f = MixingMLP([np.ones((2, 3))], [np.zeros(3)], ["relu"], 0.01)
    with pytest.raises(ValueError, match="shape"):
        f(np.ones((4, 3)))
    with pytest.raises(ValueError, match="not invertible"):
        f.inverse(np.ones((4, 3)))
    g = MixingMLP([np.ones((3, 2))], [np.zeros(2)], ["identity"], 0.01)
    with pytest.raises(ValueError, match="not invertible"):
        g.inverse(np.ones((4, 2)))
    assert "layer_sizes=[2, 3]" in repr(f)


@pytest.mark.parametrize("activation", INVERTIBLE)
def test_mixing_mlp_inverse_of_each_invertible_activation(activation):
    # Two injective layers, 2 -> 3 -> 4, with biases.
    rng = np.random.default_rng(0)
    coefs = [rng.standard_normal((2, 3)) / 2, rng.standard_normal((3, 4)) / 2]
    intercepts = [rng.uniform(-0.5, 0.5, 3), rng.uniform(-0.5, 0.5, 4)]
    f = MixingMLP(coefs, intercepts, [activation, activation], 0.2)
    S = rng.standard_normal((50, 2))
    assert f.n_components == 2 and f.n_features == 4
    np.testing.assert_allclose(f.inverse(f(S)), S, atol=1e-8)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_mixing_mlp_non_invertible_activations(activation):
    f = MixingMLP([np.eye(2)], [np.zeros(2)], [activation], 0.01)
    with pytest.raises(ValueError, match="not invertible"):
        f.inverse(np.ones((3, 2)))


@pytest.mark.parametrize("n_in, n_out", [(1, 1), (2, 5), (4, 4)])
def test_well_conditioned_matrix(n_in, n_out):
    rng = np.random.RandomState(0)
    W = well_conditioned_matrix(rng, n_in, n_out)
    assert W.shape == (n_in, n_out)
    np.testing.assert_allclose(np.linalg.norm(W, axis=0), 1)
    assert np.linalg.matrix_rank(W) == n_in
    # The same draws again give the same matrix.
    np.testing.assert_array_equal(
        well_conditioned_matrix(np.random.RandomState(0), n_in, n_out), W
    )
