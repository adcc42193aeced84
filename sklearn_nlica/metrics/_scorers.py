"""Scorers for model selection: the scorer class, make_latent_scorer and the
ready-made reconstruction scorers."""

# SPDX-License-Identifier: BSD-3-Clause

import numpy as np
from sklearn import get_config
from sklearn.utils._param_validation import StrOptions, validate_params
from sklearn.utils.metadata_routing import (
    UNCHANGED,
    MetadataRequest,
    get_routing_for_object,
)

from ._scores import cca_score, mean_correlation_coefficient, procrustes_disparity

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


@validate_params(
    {
        "metric": [StrOptions(set(_METRICS)), callable],
        "mode": [StrOptions(set(_MODES))],
        "greater_is_better": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
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
    if isinstance(metric, str):
        score_func, sign = _METRICS[metric]
        name = repr(metric)
    else:
        score_func = metric
        sign = 1 if greater_is_better else -1
        name = getattr(metric, "__name__", repr(metric))
    return _LatentModelScorer(
        score_func, mode=mode, sign=sign, kwargs=dict(kwargs), name=name
    )


# The ready-made scorers; their API documentation is where they are
# re-exported, in metrics/__init__.py.
procrustes_scorer = make_latent_scorer("procrustes")
cca_scorer = make_latent_scorer("cca")
mcc_scorer = make_latent_scorer("mcc")
