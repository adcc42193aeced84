"""The metrics: Procrustes disparity, canonical correlations and the mean
correlation coefficient, with their input validation and shared numerics."""

# SPDX-License-Identifier: BSD-3-Clause

from numbers import Integral

import numpy as np
from scipy import linalg
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata
from sklearn.utils import check_array, check_consistent_length
from sklearn.utils._param_validation import StrOptions, validate_params

from .._validation import NotBoolInterval

# ---------------------------------------------------------------------------
# Input validation and shared numerics
# ---------------------------------------------------------------------------


def _check_matrix(M, name):
    try:
        # check_array first tests the sum of the entries for finiteness,
        # which overflows (with a RuntimeWarning) for large finite entries,
        # and then checks them one by one: the warning is noise.
        with np.errstate(over="ignore", invalid="ignore"):
            return check_array(
                M,
                dtype=np.float64,
                ensure_2d=True,
                ensure_min_samples=2,
                ensure_min_features=1,
                ensure_all_finite=True,
                input_name=name,
            )
    except ValueError as exc:
        # check_array names the input only in its NaN/inf messages; with two
        # matrices the user needs to know which one was rejected.
        message = str(exc)
        if message.startswith(f"Input {name} "):
            raise
        raise ValueError(f"Invalid {name}: {message}") from exc


def _check_pair(A, B):
    A = _check_matrix(A, "A")
    B = _check_matrix(B, "B")
    # The metrics compare the i-th row of A with the i-th row of B.
    try:
        check_consistent_length(A, B)
    except ValueError as exc:
        raise ValueError(
            "A and B must have the same number of rows (samples); got "
            f"A with {A.shape[0]} and B with {B.shape[0]}."
        ) from exc
    return A, B


def _rescale(M, axis=None):
    """Scale by a power of two so that the largest |entry| lies in [0.5, 1).

    With ``axis=0`` each column is scaled on its own. Squares of entries
    below about 1e-154 underflow and above 1e154 overflow, so that a tiny or
    huge matrix (or column) would pass for one without spread; after this,
    sums of squares are safe for any finite input. A power of two scales
    exactly (entries that become subnormal are negligible next to the
    largest one), and all the metrics are scale invariant, so results at
    ordinary scales are unchanged.
    """
    largest = np.max(np.abs(M), axis=axis, keepdims=axis is not None)
    _, exponent = np.frexp(largest)
    return np.ldexp(M, -exponent)


def _zero_spread_tol(M):
    # Centring a constant column leaves round-off of order eps * n * |value|
    # (the error of the column mean), not exact zeros, so "no spread" must be
    # judged relative to the magnitude of the data.
    return np.finfo(np.float64).eps * max(M.shape[0], 10)


def _standardize_columns(M):
    """Centre the columns and scale them to unit Euclidean norm.

    Columns without spread become zero, so that they correlate with nothing
    instead of producing 0/0.
    """
    M = _rescale(M, axis=0)
    centred = M - M.mean(axis=0)
    norms = np.linalg.norm(centred, axis=0)
    scale = np.linalg.norm(M, axis=0)
    constant = norms <= _zero_spread_tol(M) * scale
    norms[constant] = 1.0
    centred /= norms
    centred[:, constant] = 0.0
    return centred


def _orthonormal_basis(M):
    """Orthonormal basis of the column space of the centred data.

    QR first (cheap, backward stable), then an SVD of the small triangular
    factor to decide the numerical rank: unpivoted QR alone does not reveal
    rank, and an SVD of the full tall matrix costs about twice as much.
    Columns are standardised first because CCA ignores column scales, and a
    badly scaled but informative column must not pass for rank deficiency.
    """
    Ms = _standardize_columns(M)
    keep = np.any(Ms != 0.0, axis=0)
    Ms = Ms[:, keep]
    if Ms.shape[1] == 0:
        return np.zeros((M.shape[0], 0))
    Q, R = linalg.qr(Ms, mode="economic", overwrite_a=True, check_finite=False)
    U, s, _ = linalg.svd(R, full_matrices=False, check_finite=False)
    tol = s[0] * max(Ms.shape) * np.finfo(np.float64).eps
    rank = int(np.sum(s > tol))
    return Q @ U[:, :rank]


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


@validate_params(
    {"A": ["array-like"], "B": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def procrustes_disparity(A, B):
    """Orthogonal Procrustes disparity between two configurations.

    Both matrices are centred and scaled to unit Frobenius norm; then ``B``
    is rotated, reflected and scaled to best match ``A`` in the least-squares
    sense, and the remaining sum of squared differences is returned. The
    disparity is 0 when ``B`` is a similarity transform (translation,
    scaling, rotation, reflection) of ``A`` and close to 1 when the two are
    unrelated.

    Parameters
    ----------
    A : array-like of shape (n_samples, n_features_a)
        Reference configuration, one point per row.

    B : array-like of shape (n_samples, n_features_b)
        Configuration to fit onto ``A``. When the column counts differ, the
        narrower matrix is padded with zero columns, as is standard (this
        leaves its shape unchanged).

    Returns
    -------
    disparity : float
        The residual sum of squares, in [0, 1]. It is symmetric in ``A`` and
        ``B``. If either matrix has no spread at all (all rows equal), no
        transform of one can reproduce any shape of the other and 1.0 is
        returned.

    See Also
    --------
    scipy.spatial.procrustes : The same disparity (equal column counts only),
        together with the transformed matrices.
    cca_score : Canonical correlations, invariant to any invertible linear map.

    Notes
    -----
    With ``A`` and ``B`` standardised, the optimal orthogonal ``R`` [1]_ and
    scale ``s`` of ``B`` give the residual ``1 - s**2`` where ``s`` is the
    sum of the singular values of ``A.T @ B`` (the nuclear norm) [2]_.
    Zero-padding the narrower matrix adds only zero singular values, so the
    padding is implicit.

    On two independent standard normal matrices with ``n_samples`` rows and
    ``p`` columns the disparity is about ``1 - c**2 * p / n_samples`` with
    ``c`` the mean singular value of the product of two Gaussian matrices
    (``c = 8 / (3 pi)`` for ``p << n_samples``): it stays near 1 as ``p``
    grows, unlike the first canonical correlation.

    References
    ----------
    .. [1] P. H. Schönemann, "A generalized solution of the orthogonal
       Procrustes problem", Psychometrika 31(1), 1-10, 1966.
    .. [2] J. C. Gower, "Generalized Procrustes analysis", Psychometrika
       40(1), 33-51, 1975.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_nlica.metrics import procrustes_disparity
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 3))
    >>> Q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    >>> round(procrustes_disparity(A, 2.5 * A @ Q + 7.0), 12)
    0.0
    >>> round(procrustes_disparity(A, rng.standard_normal((100, 3))), 2)
    0.99
    """
    A, B = _check_pair(A, B)
    A = _rescale(A)
    B = _rescale(B)
    scale_a = np.linalg.norm(A)
    scale_b = np.linalg.norm(B)
    A = A - A.mean(axis=0)
    B = B - B.mean(axis=0)
    norm_a = np.linalg.norm(A)
    norm_b = np.linalg.norm(B)
    if (
        norm_a <= _zero_spread_tol(A) * scale_a
        or norm_b <= _zero_spread_tol(B) * scale_b
    ):
        return 1.0
    A /= norm_a
    B /= norm_b
    nuclear = linalg.svdvals(A.T @ B, check_finite=False).sum()
    return float(np.clip(1.0 - nuclear**2, 0.0, 1.0))


@validate_params(
    {
        "A": ["array-like"],
        "B": ["array-like"],
        "n_components": [NotBoolInterval(Integral, 1, None, closed="left"), None],
    },
    prefer_skip_nested_validation=True,
)
def cca_score(A, B, *, n_components=1):
    """Sample canonical correlations between two data matrices.

    The k-th canonical correlation [1]_ is the largest correlation between a
    linear combination of the columns of ``A`` and one of the columns of
    ``B``, uncorrelated with the first k - 1 such pairs.

    Parameters
    ----------
    A : array-like of shape (n_samples, n_features_a)
        First data matrix.

    B : array-like of shape (n_samples, n_features_b)
        Second data matrix, row-aligned with ``A``.

    n_components : int or None, default=1
        How many canonical correlations to return, between 1 and
        ``min(n_features_a, n_features_b)``; None returns all of them.

    Returns
    -------
    correlation : float or ndarray of shape (n_components,)
        The first canonical correlation (a float) when ``n_components=1``,
        otherwise the first ``n_components`` in decreasing order. Values lie
        in [0, 1]; 1 means a linear combination of one matrix reproduces one
        of the other exactly (e.g. ``B`` is an invertible linear map of
        ``A``). Directions that do not exist because a matrix is rank
        deficient (constant or collinear columns, or fewer rows than columns)
        get a correlation of 0.

    See Also
    --------
    procrustes_disparity : A similarity measure that does not inflate with
        the number of columns.
    sklearn.cross_decomposition.CCA : An iterative CCA estimator.

    Notes
    -----
    The correlations are the singular values of ``Q_A.T @ Q_B``, where
    ``Q_A`` and ``Q_B`` are orthonormal bases of the column spaces of the
    centred matrices, obtained by QR decomposition [2]_. No covariance matrix is
    formed or inverted, so the result stays accurate when the columns are
    nearly collinear.

    The first canonical correlation of two *independent* matrices grows with
    the number of columns: with ``p`` columns each and ``n`` rows it is
    close to ``2 * sqrt(g * (1 - g))`` with ``g = p / n`` (Wachter's edge),
    0.6 at ``p = 500, n = 5000``. It is therefore a poor measure of
    dissimilarity across dimensions.

    References
    ----------
    .. [1] H. Hotelling, "Relations between two sets of variates",
       Biometrika 28(3/4), 321-377, 1936.
    .. [2] A. Björck and G. H. Golub, "Numerical methods for computing angles
       between linear subspaces", Mathematics of Computation 27(123),
       579-594, 1973.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_nlica.metrics import cca_score
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((200, 3))
    >>> M = rng.standard_normal((3, 3))
    >>> round(cca_score(A, A @ M - 4.0), 10)
    1.0
    >>> cca_score(A, A @ M, n_components=3).round(10)
    array([1., 1., 1.])
    """
    A, B = _check_pair(A, B)
    max_components = min(A.shape[1], B.shape[1])
    if n_components is None:
        n_components_ = max_components
    elif n_components <= max_components:
        n_components_ = int(n_components)
    else:
        raise ValueError(
            "n_components must be at most min(n_features_a, n_features_b) = "
            f"{max_components}; got {n_components!r}."
        )

    Q_a = _orthonormal_basis(A)
    Q_b = _orthonormal_basis(B)
    correlations = np.zeros(max_components)
    if Q_a.shape[1] and Q_b.shape[1]:
        values = linalg.svdvals(Q_a.T @ Q_b, check_finite=False)
        correlations[: values.size] = np.clip(values, 0.0, 1.0)
    if n_components == 1:
        return float(correlations[0])
    return correlations[:n_components_]


@validate_params(
    {
        "A": ["array-like"],
        "B": ["array-like"],
        "method": [StrOptions({"pearson", "spearman"})],
    },
    prefer_skip_nested_validation=True,
)
def mean_correlation_coefficient(A, B, *, method="pearson"):
    """Mean correlation coefficient (MCC) between matched columns.

    Each column of ``A`` is paired with at most one column of ``B`` so that
    the sum of absolute correlations is maximal (the Hungarian algorithm
    [1]_), and the matched absolute correlations are averaged. It is the
    standard measure of source recovery in the nonlinear ICA literature
    [2]_, [3]_: 1 means that every source is recovered up to permutation,
    sign and scale.

    Parameters
    ----------
    A : array-like of shape (n_samples, n_features_a)
        Reference matrix, typically the true sources.

    B : array-like of shape (n_samples, n_features_b)
        Matrix to compare with ``A``, typically the estimated sources.

    method : {"pearson", "spearman"}, default="pearson"
        Which correlation to use. ``"spearman"`` (the Pearson correlation of
        the ranks) also ignores strictly monotone distortions of each
        column.

    Returns
    -------
    mcc : float
        Mean absolute correlation of the matched pairs, in [0, 1]. The mean
        runs over the columns of ``A``: when ``B`` has fewer columns, the
        unmatched columns of ``A`` count as 0 (a source that was not
        recovered), and extra columns of ``B`` are ignored. With equal column
        counts the MCC is symmetric in ``A`` and ``B``. A column without
        spread has correlation 0 with everything.

    See Also
    --------
    scipy.optimize.linear_sum_assignment : The matching used here.

    References
    ----------
    .. [1] H. W. Kuhn, "The Hungarian method for the assignment problem",
       Naval Research Logistics Quarterly 2(1-2), 83-97, 1955.
    .. [2] A. Hyvarinen and H. Morioka, "Unsupervised feature extraction by
       time-contrastive learning and nonlinear ICA", NeurIPS 2016.
    .. [3] I. Khemakhem, D. P. Kingma, R. P. Monti and A. Hyvarinen,
       "Variational autoencoders and nonlinear ICA: a unifying framework",
       AISTATS 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_nlica.metrics import mean_correlation_coefficient
    >>> rng = np.random.default_rng(0)
    >>> S = rng.standard_normal((500, 3))
    >>> S_hat = -2.0 * S[:, [2, 0, 1]] + 1.0
    >>> round(mean_correlation_coefficient(S, S_hat), 12)
    1.0
    >>> round(mean_correlation_coefficient(S, np.exp(S), method="spearman"), 12)
    1.0
    """
    A, B = _check_pair(A, B)
    if method == "spearman":
        A = rankdata(A, axis=0)
        B = rankdata(B, axis=0)
    correlation = np.abs(_standardize_columns(A).T @ _standardize_columns(B))
    np.clip(correlation, 0.0, 1.0, out=correlation)
    rows, cols = linear_sum_assignment(correlation, maximize=True)
    return float(correlation[rows, cols].sum() / A.shape[1])
