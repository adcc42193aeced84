"""Metrics and scorers for latent-variable models.

Two questions are asked of a fitted nonlinear-ICA model: how well does it
reconstruct the observations, and how well does it recover the sources? The
functions below answer them by comparing two data matrices row by row, and
the scorers plug them into :class:`~sklearn.model_selection.GridSearchCV`,
:func:`~sklearn.model_selection.cross_validate` and friends.

- :func:`procrustes_disparity`: orthogonal Procrustes disparity, invariant to
  translation, scaling, rotation and reflection (0 = same configuration).
- :func:`cca_score`: sample canonical correlations, invariant to any
  invertible affine map of either matrix.
- :func:`mean_correlation_coefficient`: the identifiability metric of the
  nonlinear ICA literature, invariant to permutation, sign and scale of the
  columns.
- :func:`make_latent_scorer` and the ready-made ``procrustes_scorer``,
  ``cca_scorer`` and ``mcc_scorer``.
"""

# SPDX-License-Identifier: BSD-3-Clause

import numbers

import numpy as np
from scipy import linalg
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata
from sklearn import get_config
from sklearn.utils import check_array, check_consistent_length
from sklearn.utils.metadata_routing import (
    UNCHANGED,
    MetadataRequest,
    get_routing_for_object,
)

__all__ = [
    "cca_score",
    "cca_scorer",
    "make_latent_scorer",
    "mcc_scorer",
    "mean_correlation_coefficient",
    "procrustes_disparity",
    "procrustes_scorer",
]


# ---------------------------------------------------------------------------
# Input validation and shared numerics
# ---------------------------------------------------------------------------


def _check_matrix(M, name):
    try:
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
    With ``A`` and ``B`` standardised, the optimal orthogonal ``R`` and scale
    ``s`` of ``B`` give the residual ``1 - s**2`` where ``s`` is the sum of
    the singular values of ``A.T @ B`` (the nuclear norm). Zero-padding the
    narrower matrix adds only zero singular values, so the padding is implicit.

    On two independent standard normal matrices with ``n_samples`` rows and
    ``p`` columns the disparity is about ``1 - c**2 * p / n_samples`` with
    ``c`` the mean singular value of the product of two Gaussian matrices
    (``c = 8 / (3 pi)`` for ``p << n_samples``): it stays near 1 as ``p``
    grows, unlike the first canonical correlation.

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


def cca_score(A, B, *, n_components=1):
    """Sample canonical correlations between two data matrices.

    The k-th canonical correlation is the largest correlation between a
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
    centred matrices, obtained by QR decomposition. No covariance matrix is
    formed or inverted, so the result stays accurate when the columns are
    nearly collinear.

    The first canonical correlation of two *independent* matrices grows with
    the number of columns: with ``p`` columns each and ``n`` rows it is
    close to ``2 * sqrt(g * (1 - g))`` with ``g = p / n`` (Wachter's edge),
    0.6 at ``p = 500, n = 5000``. It is therefore a poor measure of
    dissimilarity across dimensions.

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
    elif (
        isinstance(n_components, numbers.Integral)
        and not isinstance(n_components, bool)
        and 1 <= n_components <= max_components
    ):
        n_components_ = int(n_components)
    else:
        raise ValueError(
            "n_components must be None or an int in [1, min(n_features_a, "
            f"n_features_b)] = [1, {max_components}]; got {n_components!r}."
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


def mean_correlation_coefficient(A, B, *, method="pearson"):
    """Mean correlation coefficient (MCC) between matched columns.

    Each column of ``A`` is paired with at most one column of ``B`` so that
    the sum of absolute correlations is maximal (the Hungarian algorithm),
    and the matched absolute correlations are averaged. It is the standard
    measure of source recovery in the nonlinear ICA literature: 1 means that
    every source is recovered up to permutation, sign and scale.

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
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman'; got {method!r}.")
    A, B = _check_pair(A, B)
    if method == "spearman":
        A = rankdata(A, axis=0)
        B = rankdata(B, axis=0)
    correlation = np.abs(_standardize_columns(A).T @ _standardize_columns(B))
    np.clip(correlation, 0.0, 1.0, out=correlation)
    rows, cols = linear_sum_assignment(correlation, maximize=True)
    return float(correlation[rows, cols].sum() / A.shape[1])


# ---------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------

# metric name -> (function, sign that makes greater better)
_METRICS = {
    "procrustes": (procrustes_disparity, -1),
    "cca": (cca_score, 1),
    "mcc": (mean_correlation_coefficient, 1),
}

_MODES = ("reconstruction", "latent", "latent_y")


def _as_column_matrix(M):
    # A single source is naturally passed as a 1-D array; the metrics insist
    # on 2-D input, so give it its column axis here.
    if np.ndim(M) == 1:
        return np.reshape(np.asarray(M), (-1, 1))
    return M


class _LatentModelScorer:
    """Scorer comparing a transformer's output with a reference.

    Created by :func:`make_latent_scorer`; see there for the modes. The
    ready-made ``procrustes_scorer``, ``cca_scorer`` and ``mcc_scorer`` are
    instances in reconstruction mode.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.decomposition import PCA
    >>> from sklearn_nlica.metrics import mcc_scorer, procrustes_scorer
    >>> X = np.random.default_rng(0).standard_normal((100, 4))
    >>> pca = PCA(n_components=4).fit(X)
    >>> round(procrustes_scorer(pca, X), 10) == 0
    True
    >>> round(mcc_scorer(pca, X), 10)
    1.0
    """

    def __init__(self, score_func, *, mode, sign, kwargs, name):
        self._score_func = score_func
        self._mode = mode
        self._sign = sign
        self._kwargs = kwargs
        self._name = name

    @property
    def mode(self):
        """The mode of this scorer: what is compared with what."""
        return self._mode

    def __repr__(self):
        kwargs = "".join(f", {key}={value!r}" for key, value in self._kwargs.items())
        return f"make_latent_scorer({self._name}, mode={self._mode!r}{kwargs})"

    def _routing_repr(self):
        return repr(self)

    def _accept_sample_weight(self):
        # Read by scikit-learn when metadata routing is off and sample_weight
        # is passed to a search: these metrics have no weighted form.
        return False

    def __call__(self, estimator, X, y=None, *, sources=None):
        """Score a fitted estimator on ``X``.

        Parameters
        ----------
        estimator : object
            Fitted transformer (or Pipeline ending in one) with ``transform``
            and, in reconstruction mode, ``inverse_transform``.

        X : array-like of shape (n_samples, n_features)
            Observations.

        y : array-like of shape (n_samples,) or (n_samples, n_sources), \
                default=None
            Ignored except in ``"latent_y"`` mode, where it holds the true
            sources. In the other modes it may carry anything the estimator
            uses, e.g. the auxiliary variable of an identifiable VAE.

        sources : array-like of shape (n_samples,) or (n_samples, n_sources), \
                default=None
            True sources, required in ``"latent"`` mode (where metadata
            routing passes them) and ignored otherwise.

        Returns
        -------
        score : float
            Greater is better.
        """
        if self._mode == "reconstruction":
            reference = X
            latent = _call_method(estimator, "transform", X, self._mode)
            prediction = _call_method(
                estimator, "inverse_transform", latent, self._mode
            )
        else:
            if self._mode == "latent":
                reference = sources
                if reference is None:
                    raise ValueError(
                        "This latent-mode scorer compares transform(X) with the "
                        "true sources, which were not given. Pass them as "
                        "metadata: with sklearn.set_config(enable_metadata_routing"
                        "=True), call e.g. GridSearchCV(...).fit(X, y, sources=S) "
                        "or cross_validate(..., params={'sources': S}). To read "
                        "the sources from y instead, use mode='latent_y'."
                    )
            else:
                reference = y
                if reference is None:
                    raise ValueError(
                        "This scorer (mode='latent_y') reads the true sources "
                        "from y, but y is None. Pass the sources as y, or use "
                        "mode='latent' and route them as `sources` metadata."
                    )
            reference = _as_column_matrix(reference)
            prediction = _call_method(estimator, "transform", X, self._mode)
        score = self._score_func(reference, prediction, **self._kwargs)
        # cca_score returns one correlation per component when asked for
        # several; a scorer must return a single number.
        return float(self._sign * np.mean(score))

    # -- metadata routing --------------------------------------------------
    #
    # scikit-learn asks every scorer for its requests through
    # get_metadata_routing(); a latent-mode scorer cannot work without the
    # true sources, so it requests `sources` by default instead of leaving the
    # request unset (which would make routers refuse the metadata).

    def set_score_request(self, *, sources=UNCHANGED):
        """Configure how the true sources reach this scorer.

        Only available when metadata routing is enabled
        (``sklearn.set_config(enable_metadata_routing=True)``), and only
        meaningful in ``"latent"`` mode, where ``sources`` is requested
        by default.

        Parameters
        ----------
        sources : str, True, False, or None, default=UNCHANGED
            True: consume the metadata named ``sources``; a string: consume
            the metadata of that name instead (an alias, e.g. to have two
            scorers compare with different references); False: do not
            request it; None: raise if it is passed.

        Returns
        -------
        self : object
            The scorer, with updated requests.
        """
        if not get_config().get("enable_metadata_routing", False):
            raise RuntimeError(
                "This method is only available when metadata routing is enabled."
                " You can enable it using"
                " sklearn.set_config(enable_metadata_routing=True)."
            )
        if sources is not UNCHANGED and self._mode != "latent":
            raise ValueError(
                f"A scorer in mode {self._mode!r} consumes no metadata; only "
                "mode='latent' reads `sources`."
            )
        requests = self._get_metadata_request()
        if sources is not UNCHANGED:
            requests.score.add_request(param="sources", alias=sources)
        self._metadata_request = requests
        return self

    def _get_metadata_request(self):
        if hasattr(self, "_metadata_request"):
            return get_routing_for_object(self._metadata_request)
        requests = MetadataRequest(owner=self)
        if self._mode == "latent":
            requests.score.add_request(param="sources", alias=True)
        return requests

    def get_metadata_routing(self):
        """Get the metadata routing of this scorer.

        Returns
        -------
        routing : MetadataRequest
            The requests of this scorer: ``sources`` for ``score`` in
            ``"latent"`` mode, nothing otherwise.
        """
        return self._get_metadata_request()


def _call_method(estimator, method, data, mode):
    if not hasattr(estimator, method):
        raise AttributeError(
            f"The {mode!r} mode of this scorer calls {method}, which "
            f"{type(estimator).__name__} does not provide."
        )
    return getattr(estimator, method)(data)


def make_latent_scorer(
    metric, *, mode="reconstruction", greater_is_better=True, **kwargs
):
    """Make a scorer for latent-variable models and other transformers.

    The scorer is called as ``scorer(estimator, X, y=None, *, sources=None)``
    and compares, depending on ``mode``:

    - ``"reconstruction"``: ``X`` with
      ``estimator.inverse_transform(estimator.transform(X))``. Needs no
      labels; ``y`` is ignored, so it may carry the auxiliary variable of an
      identifiable VAE.
    - ``"latent"``: the true sources with ``estimator.transform(X)``. The
      sources travel as the ``sources`` metadata (scikit-learn metadata
      routing), so that ``y`` stays free for the estimator. The scorer
      requests ``sources`` by default; ``set_score_request`` renames it.
    - ``"latent_y"``: ``y`` (the true sources) with ``estimator.transform(X)``.
      Simple, for estimators that ignore ``y``; needs no routing.

    In the two latent modes the true sources come first, as ``A``.

    Parameters
    ----------
    metric : {"procrustes", "cca", "mcc"} or callable
        ``"procrustes"``: minus :func:`procrustes_disparity`;
        ``"cca"``: :func:`cca_score` (the mean of the first
        ``n_components`` canonical correlations when several are asked for);
        ``"mcc"``: :func:`mean_correlation_coefficient`. A callable is
        called as ``metric(reference, prediction, **kwargs)`` and must
        return a number (or an array, which is averaged).

    mode : {"reconstruction", "latent", "latent_y"}, default="reconstruction"
        What to compare, see above.

    greater_is_better : bool, default=True
        Only for a callable ``metric``: whether it is a score (True) or a
        loss (False, then the scorer returns its negative). The named
        metrics already know their direction.

    **kwargs
        Passed to the metric, e.g. ``n_components=2`` for ``"cca"`` or
        ``method="spearman"`` for ``"mcc"``.

    Returns
    -------
    scorer : callable
        Object usable as ``scoring=`` (alone or in a dict of scorers) in
        :class:`~sklearn.model_selection.GridSearchCV`,
        :func:`~sklearn.model_selection.cross_validate` and the like. Its
        scores are greater-is-better. It works on a
        :class:`~sklearn.pipeline.Pipeline` whose last step is the
        transformer, since a Pipeline forwards ``transform`` and
        ``inverse_transform`` through its steps.

    See Also
    --------
    sklearn.metrics.make_scorer : For metrics of predictions.

    Examples
    --------
    Reconstruction mode needs nothing but ``X``:

    >>> from sklearn.decomposition import PCA
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sklearn_nlica.datasets import make_segmented_sources
    >>> from sklearn_nlica.metrics import make_latent_scorer
    >>> X, S, U = make_segmented_sources(n_segments=10, n_per_segment=40,
    ...                                  n_components=3, n_features=6,
    ...                                  random_state=0)
    >>> scorer = make_latent_scorer("procrustes")
    >>> search = GridSearchCV(PCA(), {"n_components": [1, 3]}, scoring=scorer)
    >>> search.fit(X).best_params_
    {'n_components': 3}

    Latent mode receives the true sources by metadata routing, while ``y``
    (here the segment labels) goes to the estimator:

    >>> import sklearn
    >>> with sklearn.config_context(enable_metadata_routing=True):
    ...     mcc = make_latent_scorer("mcc", mode="latent")
    ...     search = GridSearchCV(PCA(), {"n_components": [1, 3]}, scoring=mcc)
    ...     search = search.fit(X, U, sources=S)
    >>> bool(0 < search.best_score_ <= 1)
    True
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}; got {mode!r}.")
    if isinstance(metric, str):
        if metric not in _METRICS:
            raise ValueError(
                f"metric must be one of {tuple(_METRICS)} or a callable; "
                f"got {metric!r}."
            )
        score_func, sign = _METRICS[metric]
        name = repr(metric)
    elif callable(metric):
        score_func = metric
        sign = 1 if greater_is_better else -1
        name = getattr(metric, "__name__", repr(metric))
    else:
        raise TypeError(
            f"metric must be a string or a callable; got {type(metric).__name__}."
        )
    return _LatentModelScorer(
        score_func, mode=mode, sign=sign, kwargs=dict(kwargs), name=name
    )


#: Minus the Procrustes disparity between ``X`` and its reconstruction
#: ``inverse_transform(transform(X))``; greater is better, 0 is perfect.
procrustes_scorer = make_latent_scorer("procrustes")

#: First canonical correlation between ``X`` and its reconstruction.
cca_scorer = make_latent_scorer("cca")

#: Mean correlation coefficient between ``X`` and its reconstruction. For
#: source recovery use ``make_latent_scorer("mcc", mode="latent")``.
mcc_scorer = make_latent_scorer("mcc")
