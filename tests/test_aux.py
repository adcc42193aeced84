"""The auxiliary-variable encoder (sklearn_nlica._aux)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_nlica._aux import N_REFERENCE_ROWS, AuxEncoder


@pytest.mark.parametrize(
    "u, discrete",
    [
        (np.repeat([3, 1, 2], 4), True),  # integer labels
        (np.repeat(["b", "a"], 5), True),  # strings
        (np.repeat([True, False], 5), True),
        (np.repeat([1.0, 2.0], 5), True),  # integral floats
        (np.arange(10), False),  # a time index: one value per row
        (np.linspace(0, 1, 10), False),
        (np.random.RandomState(0).randn(10, 2), False),  # covariates
    ],
)
def test_auto_decides_discrete_or_continuous(u, discrete):
    encoder = AuxEncoder("auto")
    encoder.fit_transform(u, len(u))
    assert encoder.discrete is discrete


def test_labels_become_codes_with_class_shares():
    u = np.array(["b", "a", "b", "c", "b", "a"])
    encoder = AuxEncoder()
    codes = encoder.fit_transform(u, 6)
    np.testing.assert_array_equal(encoder.classes_, ["a", "b", "c"])
    np.testing.assert_array_equal(codes, [1, 0, 1, 2, 1, 0])
    np.testing.assert_allclose(encoder.class_weights_, [2 / 6, 3 / 6, 1 / 6])
    np.testing.assert_array_equal(encoder.transform(["c", "a"], 2), [2, 0])
    with pytest.raises(ValueError, match="not seen during fit"):
        encoder.transform(["d", "a"], 2)
    u_ref, log_p = encoder.reference(codes, seed=0)
    np.testing.assert_array_equal(u_ref, [0, 1, 2])
    np.testing.assert_allclose(np.exp(log_p), encoder.class_weights_)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    n_rows=st.integers(2, 600),
    n_cols=st.integers(1, 3),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 1000),
)
def test_covariates_are_standardised_and_sampled_for_reference(
    n_rows, n_cols, scale, seed
):
    u = scale * np.random.RandomState(seed).randn(n_rows, n_cols) + 5.0
    encoder = AuxEncoder("continuous")
    encoded = encoder.fit_transform(u, n_rows)
    assert encoded.shape == (n_rows, n_cols) and encoder.n_features_ == n_cols
    np.testing.assert_allclose(encoded.mean(0), 0.0, atol=1e-8)
    np.testing.assert_allclose(encoder.transform(u, n_rows), encoded)
    u_ref, log_p = encoder.reference(encoded, seed)
    assert len(u_ref) == min(n_rows, N_REFERENCE_ROWS)
    np.testing.assert_allclose(np.exp(log_p).sum(), 1.0)
    # The reference rows are training rows.
    assert all((encoded == row).all(1).any() for row in u_ref)


@pytest.mark.parametrize(
    "y, n_samples, error, match",
    [
        (None, 3, ValueError, "requires y"),
        (np.zeros((3, 1, 1)), 3, ValueError, "1-D"),
        (np.zeros(4), 3, ValueError, "4 rows but X has 3"),
    ],
)
def test_bad_u_is_named(y, n_samples, error, match):
    with pytest.raises(error, match=match):
        AuxEncoder().fit_transform(y, n_samples)


def test_width_of_covariates_is_checked():
    encoder = AuxEncoder("continuous")
    encoder.fit_transform(np.zeros((4, 2)), 4)
    with pytest.raises(ValueError, match="3 columns"):
        encoder.transform(np.zeros((4, 3)), 4)
