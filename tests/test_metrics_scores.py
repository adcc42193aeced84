"""Tests of sklearn_nlica.metrics._scores: the three metrics, their
invariances, reference values and input validation."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import procrustes
from scipy.stats import ortho_group
from threadpoolctl import threadpool_limits

from sklearn_nlica.metrics import (
    cca_score,
    mean_correlation_coefficient,
    procrustes_disparity,
)

METRICS = [procrustes_disparity, cca_score, mean_correlation_coefficient]

# Hypothesis draws seeds and shapes, and numpy builds the matrices from them:
# element-wise drawn arrays are slow to generate and mostly test degenerate,
# ill-conditioned corners that the dedicated tests below cover explicitly.
SETTINGS = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**32 - 1)
n_rows = st.integers(8, 40)
n_cols = st.integers(1, 4)


@pytest.fixture(autouse=True, scope="module")
def _single_blas_thread():
    # These matrices are small or, at 5000 x 500, still fast on one core;
    # on a shared machine, OpenBLAS threads fighting over busy cores were
    # measured 10x slower than a single thread.
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _gaussian(seed, n, p):
    return np.random.default_rng(seed).standard_normal((n, p))


# ---------------------------------------------------------------------------
# Reference figures of seed 003 ("Scaling of Disparity Score vs. CCA")
# ---------------------------------------------------------------------------
#
# Two independent standard normal matrices A, B with n = 5000 rows and p
# columns each; the report gives disparity 1.0 / 0.93 and first canonical
# correlation 0.017 / 0.594 at p = 2 / 500. Expected values, derived:
#
# Disparity. With A, B centred and scaled to unit norm, d = 1 - ||A'B||_*^2
# (nuclear norm). Given A, A'B = (A'A)^(1/2) G exactly, G a p x p standard
# Gaussian matrix, and ||A||^2 ~ ||B||^2 ~ (n-1) p. Hence
#   d ~ 1 - ||(A'A/(n-1))^(1/2) G||_*^2 / ((n-1) p^2).
# * p = 2: A'A/(n-1) ~ I, and E||G||_*^2 = E||G||_F^2 + 2 E|det G| = 4 + 2 = 6
#   for a 2 x 2 Gaussian G, so d ~ 1 - 6 / (4 * 4999) = 0.99970; and since
#   ||G||_*^2 <= 2 ||G||_F^2 ~ 2 chi2_4 < 36.9 with probability 0.999,
#   d > 1 - 36.9 / 19996 = 0.998.
# * p = 500: the squared singular values of (A'A/(n-1))^(1/2) G / sqrt(p)
#   follow the free multiplicative convolution of two Marchenko-Pastur laws
#   (ratios g = p/(n-1) and 1), whose S-transform is 1/((1+z)(1+g z)).
#   Solving (1+psi)^2 (1+g psi) = w psi for the Cauchy transform and
#   integrating numerically gives E[singular value] = 0.84027 (0.84883 =
#   8/(3 pi) as g -> 0), so d -> 1 - g * 0.84027^2 = 0.92938. Over 20 seeds
#   we measured 0.92936 +- 0.00024 (fluctuations are O(1/p)); the tolerance
#   is 6 sd.
#
# First canonical correlation. The squared canonical correlations of two
# independent Gaussian blocks form a Jacobi (MANOVA) ensemble.
# * p = 2, p fixed while n grows: sqrt(n-1) Q_A'Q_B tends to a 2 x 2 Gaussian
#   matrix, so rho_1 ~ s_max(G) / sqrt(n-1). E s_max(G) = sqrt(pi) for a
#   2 x 2 real Gaussian (from the joint density |s1^2 - s2^2| exp(-(s1^2 +
#   s2^2)/2)), so E rho_1 = sqrt(pi / 4999) = 0.0251, with sd 0.0095. One
#   draw is only bounded: s_max^2 <= ||G||_F^2 ~ chi2_4 < 18.47 with
#   probability 0.999, so rho_1 < 0.061. The mean over 200 seeds has sd
#   0.0095 / sqrt(200) = 0.0007, and is tested to 0.003.
# * p = 500: rho_1^2 sits at Wachter's edge (sqrt(g1 (1-g2)) + sqrt(g2
#   (1-g1)))^2 = 4 g (1-g) = 0.36 (rho_1 = 0.6) minus Tracy-Widom
#   fluctuations; Johnstone's (2008) logit-scale centring and scaling with
#   E TW1 = -1.2065 and sd 1.2680 give E rho_1 = 0.59695 and sd 0.0030
#   (20 seeds measured: 0.59705 +- 0.0031). The tolerance is 5 sd.


@pytest.mark.parametrize(
    "n_columns, disparity, disparity_tol, rho_low, rho_high",
    [(2, 0.99970, 0.0017, 0.0, 0.061), (500, 0.92938, 0.0015, 0.582, 0.612)],
)
def test_reference_figures(n_columns, disparity, disparity_tol, rho_low, rho_high):
    rng = np.random.default_rng(20240603)
    A = rng.standard_normal((5000, n_columns))
    B = rng.standard_normal((5000, n_columns))

    d = procrustes_disparity(A, B)
    assert abs(d - disparity) < disparity_tol
    rho = cca_score(A, B)
    assert rho_low < rho < rho_high

    # The report's figures, to the precision it quotes them.
    reported = {2: (1.0, 0.017), 500: (0.93, 0.594)}[n_columns]
    assert round(d, 2) == reported[0]
    assert rho_low < reported[1] < rho_high


def test_reference_first_canonical_correlation_mean_two_columns():
    rhos = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        rhos.append(cca_score(*rng.standard_normal((2, 5000, 2))))
    assert abs(np.mean(rhos) - np.sqrt(np.pi / 4999)) < 0.003


def test_disparity_scales_unlike_cca():
    # The report's point: with the dimension, CCA inflates while the
    # disparity stays near 1.
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((2, 2000, 200))
    assert procrustes_disparity(A, B) > 0.9
    assert cca_score(A, B) > 0.5
    assert cca_score(A[:, :2], B[:, :2]) < 0.1


# ---------------------------------------------------------------------------
# procrustes_disparity
# ---------------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, n=n_rows, p=n_cols)
def test_procrustes_agrees_with_scipy(seed, n, p):
    A, B = _gaussian(seed, n, p), _gaussian(seed + 1, n, p)
    assert procrustes_disparity(A, B) == pytest.approx(procrustes(A, B)[2], abs=1e-8)


@SETTINGS
@given(seed=seeds, n=n_rows, p=n_cols, q=n_cols)
def test_procrustes_pads_with_zero_columns(seed, n, p, q):
    A, B = _gaussian(seed, n, p), _gaussian(seed + 1, n, q)
    width = max(p, q)
    A_pad = np.hstack([A, np.zeros((n, width - p))])
    B_pad = np.hstack([B, np.zeros((n, width - q))])
    expected = procrustes(A_pad, B_pad)[2]
    assert procrustes_disparity(A, B) == pytest.approx(expected, abs=1e-8)


@SETTINGS
@given(
    seed=seeds,
    n=n_rows,
    p=st.integers(2, 4),
    scale=st.floats(1e-2, 1e2),
    shift=st.floats(-100, 100),
)
def test_procrustes_zero_for_similar_copy(seed, n, p, scale, shift):
    A = _gaussian(seed, n, p)
    Q = ortho_group.rvs(p, random_state=seed)  # rotations and reflections
    assert procrustes_disparity(A, scale * A @ Q + shift) == pytest.approx(0, abs=1e-9)


@SETTINGS
@given(
    seed=seeds,
    n=n_rows,
    p=st.integers(2, 4),
    scale=st.floats(1e-2, 1e2),
    shift=st.floats(-100, 100),
)
def test_procrustes_invariant_and_symmetric(seed, n, p, scale, shift):
    A, B = _gaussian(seed, n, p), _gaussian(seed + 1, n, p)
    d = procrustes_disparity(A, B)
    assert 0 <= d <= 1
    assert procrustes_disparity(B, A) == pytest.approx(d, abs=1e-10)
    Q = ortho_group.rvs(p, random_state=seed)
    assert procrustes_disparity(scale * A @ Q + shift, B) == pytest.approx(d, abs=1e-9)


def test_procrustes_constant_configuration():
    A = np.random.default_rng(0).standard_normal((10, 2))
    assert procrustes_disparity(A, np.full((10, 2), 3.7)) == 1.0
    assert procrustes_disparity(np.zeros((10, 3)), A) == 1.0


# ---------------------------------------------------------------------------
# cca_score
# ---------------------------------------------------------------------------


def _cca_by_covariance(A, B):
    # The textbook formula, fine for well-conditioned data only.
    A = A - A.mean(0)
    B = B - B.mean(0)
    Saa, Sbb, Sab = A.T @ A, B.T @ B, A.T @ B
    M = np.linalg.solve(Saa, Sab) @ np.linalg.solve(Sbb, Sab.T)
    return np.sqrt(np.clip(np.sort(np.linalg.eigvals(M).real)[::-1], 0, 1))


@SETTINGS
@given(seed=seeds, n=st.integers(20, 60), p=n_cols, q=n_cols)
def test_cca_agrees_with_covariance_formula(seed, n, p, q):
    A, B = _gaussian(seed, n, p), _gaussian(seed + 1, n, q)
    A[:, 0] += B[:, 0]  # some real correlation, not just noise
    expected = _cca_by_covariance(A, B)[: min(p, q)]
    np.testing.assert_allclose(cca_score(A, B, n_components=None), expected, atol=1e-8)


@SETTINGS
@given(seed=seeds, n=n_rows, p=st.integers(1, 4), shift=st.floats(-100, 100))
def test_cca_one_for_linear_copy(seed, n, p, shift):
    A = _gaussian(seed, n, p)
    M = _gaussian(seed + 1, p, p) + 3 * np.eye(p)  # invertible, well conditioned
    rhos = cca_score(A, A @ M + shift, n_components=None)
    np.testing.assert_allclose(rhos, 1.0, atol=1e-8)
    Q = ortho_group.rvs(max(p, 2), random_state=seed)[:p, :p]
    assert cca_score(A, 0.01 * A @ Q - shift) == pytest.approx(1.0, abs=1e-8)


@SETTINGS
@given(seed=seeds, n=n_rows, p=n_cols, q=n_cols, shift=st.floats(-100, 100))
def test_cca_invariant_and_symmetric(seed, n, p, q, shift):
    A, B = _gaussian(seed, n, p), _gaussian(seed + 1, n, q)
    rhos = cca_score(A, B, n_components=None)
    assert rhos.shape == (min(p, q),)
    assert np.all((0 <= rhos) & (rhos <= 1))
    assert np.all(np.diff(rhos) <= 1e-12)
    np.testing.assert_allclose(cca_score(B, A, n_components=None), rhos, atol=1e-10)
    M = _gaussian(seed + 2, p, p) + 3 * np.eye(p)
    transformed = cca_score(A @ M + shift, B, n_components=None)
    np.testing.assert_allclose(transformed, rhos, atol=1e-8)


def test_cca_n_components():
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((2, 100, 3))
    all_rhos = cca_score(A, B, n_components=None)
    assert isinstance(cca_score(A, B), float)
    assert cca_score(A, B) == all_rhos[0]
    np.testing.assert_array_equal(cca_score(A, B, n_components=2), all_rhos[:2])
    for bad in (0, 4, 1.5, True, "1"):
        with pytest.raises(ValueError, match="n_components"):
            cca_score(A, B, n_components=bad)


def test_cca_n_components_messages():
    A = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(
        ValueError, match=r"at most min\(n_features_a, n_features_b\) = 2"
    ):
        cca_score(A, A[:, :2], n_components=3)
    with pytest.raises(ValueError, match="int in the range"):
        cca_score(A, A, n_components=False)
    assert cca_score(A, A, n_components=np.int64(2)).shape == (2,)


def test_cca_rank_deficient():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((200, 3))
    # A constant and a duplicated column leave one genuine direction.
    B = np.column_stack([np.full(200, 5.0), A[:, 0], 2 * A[:, 0]])
    rhos = cca_score(A, B, n_components=None)
    np.testing.assert_allclose(rhos, [1.0, 0.0, 0.0], atol=1e-10)
    np.testing.assert_array_equal(cca_score(A, np.ones((200, 2)), n_components=None), 0)
    # More columns than rows: any two samples spaces of dimension n-1 coincide.
    wide = rng.standard_normal((5, 8))
    np.testing.assert_allclose(
        cca_score(wide, rng.standard_normal((5, 8)), n_components=4), 1, atol=1e-8
    )


def test_cca_stable_for_nearly_collinear_columns():
    # Covariance inversion loses ~cond^2 = 1e16 here; QR does not.
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 2))
    A = np.column_stack([z[:, 0], z[:, 0] + 1e-8 * z[:, 1]])
    B = A @ np.array([[1.0, 2.0], [3.0, -1.0]]) + 10.0
    np.testing.assert_allclose(cca_score(A, B, n_components=None), 1, atol=1e-6)
    # Column scales must not pass for rank deficiency either.
    C = np.column_stack([1e-9 * z[:, 0], 1e9 * z[:, 1]])
    np.testing.assert_allclose(cca_score(C, z, n_components=None), 1, atol=1e-8)


# ---------------------------------------------------------------------------
# mean_correlation_coefficient
# ---------------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, n=n_rows, p=n_cols, method=st.sampled_from(["pearson", "spearman"]))
def test_mcc_one_under_permutation_sign_and_scale(seed, n, p, method):
    A = _gaussian(seed, n, p)
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=p)
    scales = rng.uniform(1e-2, 1e2, size=p)
    B = A[:, rng.permutation(p)] * signs * scales + rng.uniform(-100, 100, size=p)
    assert mean_correlation_coefficient(A, B, method=method) == pytest.approx(
        1, abs=1e-9
    )


@SETTINGS
@given(seed=seeds, n=n_rows, p=n_cols)
def test_mcc_spearman_ignores_monotone_distortions(seed, n, p):
    A = _gaussian(seed, n, p)
    B = np.column_stack([np.exp(A[:, 0]), -(A[:, 1:] ** 3) - A[:, 1:]])
    B = B[:, ::-1]
    assert mean_correlation_coefficient(A, B, method="spearman") == pytest.approx(1)


@SETTINGS
@given(seed=seeds, n=n_rows, p=n_cols)
def test_mcc_matches_brute_force_and_is_symmetric(seed, n, p):
    A, B = _gaussian(seed, n, p), _gaussian(seed + 1, n, p)
    corr = np.abs(np.corrcoef(A, B, rowvar=False)[:p, p:])
    best = max(
        corr[np.arange(p), list(perm)].mean()
        for perm in itertools.permutations(range(p))
    )
    mcc = mean_correlation_coefficient(A, B)
    assert mcc == pytest.approx(best, abs=1e-10)
    assert mean_correlation_coefficient(B, A) == pytest.approx(mcc, abs=1e-10)
    assert 0 <= mcc <= 1


def test_mcc_unequal_column_counts():
    rng = np.random.default_rng(0)
    S = rng.standard_normal((300, 3))
    # Two of three sources recovered: the missing one counts as zero.
    assert mean_correlation_coefficient(S, S[:, [2, 0]]) == pytest.approx(2 / 3)
    # Extra estimated components are not penalised.
    extra = np.column_stack([S, rng.standard_normal(300)])
    assert mean_correlation_coefficient(S, extra) == pytest.approx(1)
    # A constant column correlates with nothing.
    assert mean_correlation_coefficient(S, np.ones((300, 3))) == 0


def test_mcc_bad_method():
    A = np.random.default_rng(0).standard_normal((10, 2))
    with pytest.raises(ValueError, match="method"):
        mean_correlation_coefficient(A, A, method="kendall")


# ---------------------------------------------------------------------------
# Input validation, common to all three metrics
# ---------------------------------------------------------------------------

GOOD = np.random.default_rng(0).standard_normal((10, 2))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.where(np.eye(10, 2) > 0, np.nan, GOOD), "NaN"),
        (np.where(np.eye(10, 2) > 0, np.inf, GOOD), "infinity"),
        (GOOD[:, 0], "2D"),
        (GOOD[:1], "minimum of 2"),
        (GOOD[:7], "same number of rows"),
        (GOOD[:, :0], "feature"),
        (GOOD[None], "dim 3"),
    ],
    ids=["nan", "inf", "1d", "one-row", "row-mismatch", "no-column", "3d"],
)
def test_bad_input(metric, bad, match):
    for args in ((bad, GOOD), (GOOD, bad)):
        with pytest.raises(ValueError, match=match):
            metric(*args)


@pytest.mark.parametrize("metric", METRICS)
def test_input_name_in_message(metric):
    with pytest.raises(ValueError, match="Invalid B"):
        metric(GOOD, GOOD[:1])
    with pytest.raises(ValueError, match="Input A contains NaN"):
        metric(np.full((3, 2), np.nan), GOOD[:3])


@pytest.mark.parametrize("metric", METRICS)
def test_accepts_lists_and_returns_python_float(metric):
    score = metric(GOOD.tolist(), (GOOD**3).tolist())
    assert isinstance(score, float) and 0 <= score <= 1


# ---------------------------------------------------------------------------
# Extreme but finite inputs
# ---------------------------------------------------------------------------
#
# Sums of squares of entries below 1e-154 underflow and above 1e154 overflow,
# so every metric must rescale before it squares. Column scales are drawn as
# powers of ten up to 1e150 either way: a rescaled copy then still fits in a
# float64 (|entries| < 1e300 * a few).

exponents = st.integers(-150, 150)
EXTREME = settings(max_examples=40, deadline=None)


def _column_scales(exps):
    return 10.0 ** np.asarray(exps, dtype=np.float64)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("scale", [1e-170, 1e170, 1e-300, 1e300, 1e-310, 1e307])
def test_metrics_ideal_for_a_tiny_or_huge_matrix_against_itself(scale):
    A = _gaussian(0, 50, 3)
    A = scale * A / np.abs(A).max()
    assert procrustes_disparity(A, A) == pytest.approx(0, abs=1e-12)
    assert mean_correlation_coefficient(A, A) == pytest.approx(1, abs=1e-12)
    assert mean_correlation_coefficient(A, A, method="spearman") == 1
    np.testing.assert_allclose(cca_score(A, A, n_components=None), 1, atol=1e-12)


@pytest.mark.filterwarnings("error")
def test_metrics_ideal_across_extreme_relative_scales():
    A = _gaussian(0, 50, 3)
    # The same configuration, one copy tiny, the other huge.
    assert procrustes_disparity(1e-170 * A, 1e170 * A) == pytest.approx(0, abs=1e-12)
    largest = np.nextafter(np.inf, 0)  # 1.797e308
    assert procrustes_disparity(A / np.abs(A).max() * largest, A) == pytest.approx(
        0, abs=1e-12
    )
    # Column sums that overflow.
    S = np.array([[1.0, 1.0], [1.0, 2.0], [-1.0, 4.0], [0.5, -1.0]])
    S[:, 0] *= largest
    assert procrustes_disparity(S, S) == pytest.approx(0, abs=1e-12)
    assert mean_correlation_coefficient(S, S) == pytest.approx(1, abs=1e-12)
    np.testing.assert_allclose(cca_score(S, S, n_components=None), 1, atol=1e-12)
    # Columns at 1e-200, 1 and 1e200.
    D = A * np.array([1e-200, 1.0, 1e200])
    assert mean_correlation_coefficient(D, D) == pytest.approx(1, abs=1e-12)
    np.testing.assert_allclose(cca_score(D, D, n_components=None), 1, atol=1e-12)
    assert procrustes_disparity(D, D) == pytest.approx(0, abs=1e-12)


@EXTREME
@given(
    seed=seeds,
    n=n_rows,
    p=n_cols,
    data=st.data(),
    method=st.sampled_from(["pearson", "spearman"]),
)
def test_mcc_one_at_extreme_column_scales(seed, n, p, data, method):
    rng = np.random.default_rng(seed)
    scales = _column_scales(data.draw(st.lists(exponents, min_size=p, max_size=p)))
    rescale = _column_scales(data.draw(st.lists(exponents, min_size=p, max_size=p)))
    A = _gaussian(seed, n, p) * scales
    signs = rng.choice([-1.0, 1.0], size=p)
    perm = rng.permutation(p)
    shift = rng.uniform(-100, 100, size=p) * scales[perm] * rescale
    B = A[:, perm] * signs * rescale + shift
    assert mean_correlation_coefficient(A, A, method=method) == pytest.approx(
        1, abs=1e-9
    )
    assert mean_correlation_coefficient(A, B, method=method) == pytest.approx(
        1, abs=1e-9
    )


@EXTREME
@given(seed=seeds, n=n_rows, p=n_cols, data=st.data())
def test_cca_one_at_extreme_column_scales(seed, n, p, data):
    # B is an invertible affine map of A: B = A @ inv(D_a) @ M @ D_b + shift.
    scales_a = _column_scales(data.draw(st.lists(exponents, min_size=p, max_size=p)))
    scales_b = _column_scales(data.draw(st.lists(exponents, min_size=p, max_size=p)))
    G = _gaussian(seed, n, p)
    M = _gaussian(seed + 1, p, p) + 3 * np.eye(p)  # invertible, well conditioned
    A = G * scales_a
    B = (G @ M + np.random.default_rng(seed).uniform(-100, 100, p)) * scales_b
    np.testing.assert_allclose(cca_score(A, A, n_components=None), 1, atol=1e-8)
    np.testing.assert_allclose(cca_score(A, B, n_components=None), 1, atol=1e-8)


@EXTREME
@given(seed=seeds, n=n_rows, p=st.integers(2, 4), data=st.data())
def test_procrustes_zero_at_extreme_scales(seed, n, p, data):
    scales = _column_scales(data.draw(st.lists(exponents, min_size=p, max_size=p)))
    c = 10.0 ** data.draw(exponents)
    A = _gaussian(seed, n, p) * scales
    Q = ortho_group.rvs(p, random_state=seed)
    B = c * (A @ Q + np.random.default_rng(seed).uniform(-100, 100, p) * scales.max())
    assert procrustes_disparity(A, A) == pytest.approx(0, abs=1e-12)
    assert procrustes_disparity(A, B) == pytest.approx(0, abs=1e-9)
    assert procrustes_disparity(B, A) == pytest.approx(0, abs=1e-9)


finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=64)


@pytest.mark.filterwarnings("error")
@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(2, 6),
    p=st.integers(1, 3),
    q=st.integers(1, 3),
)
def test_metrics_finite_and_in_range_for_any_finite_input(data, n, p, q):
    # Any finite entries, from subnormals to 1.8e308 and mixed: no NaN, no
    # inf, no overflow or invalid operation on the way, values in [0, 1].
    A = np.array(data.draw(st.lists(finite_floats, min_size=n * p, max_size=n * p)))
    B = np.array(data.draw(st.lists(finite_floats, min_size=n * q, max_size=n * q)))
    A, B = A.reshape(n, p), B.reshape(n, q)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        for value in (
            procrustes_disparity(A, B),
            mean_correlation_coefficient(A, B),
            mean_correlation_coefficient(A, B, method="spearman"),
            *cca_score(A, B, n_components=None),
        ):
            assert np.isfinite(value) and 0 <= value <= 1
