"""Encoding of the identifiable VAE's auxiliary variable u.

u is either discrete (segment labels, classes of any type) or continuous
(a time index, covariates). :class:`AuxEncoder` decides which, validates u
like scikit-learn validates a target, and turns it into what the model
takes: class codes (int64) or standardised covariates (float, 2-D). It also
keeps the training distribution of u (the class shares, or a reference
sample of rows), over which the model mixes when u is not given.
:class:`ConditionalMixin` holds the estimator methods that take u.
"""

from numbers import Integral

import numpy as np
import scipy.sparse as sp
from sklearn.utils import check_array

# When u is not given to score_samples / log_likelihood / sample, the model
# mixes over (or draws from) the training distribution of u: all classes of a
# discrete u, this many training rows of a continuous one.
N_REFERENCE_ROWS = 256


def _missing_y_message(owner):
    # The wording starts as scikit-learn's own for a required target.
    return (
        f"{owner} requires y to be passed, but the target y is None: y is the "
        "auxiliary variable u (segment labels, a time index or covariates with "
        "one row per sample)."
    )


class AuxEncoder:
    """Validate and encode an auxiliary variable u.

    Parameters
    ----------
    aux_type : {"auto", "discrete", "continuous"}
        How to read u; ``"auto"`` treats a 1-D u of strings or booleans, or of
        integer values with at most ``n_samples // 2`` distinct values, as
        labels, and anything else as continuous covariates.
    owner : str
        The estimator's name, for error messages.

    Attributes
    ----------
    discrete : bool
        Whether u is read as class labels.
    classes_ : ndarray of shape (n_classes,)
        The labels (discrete u).
    class_weights_ : ndarray of shape (n_classes,)
        Share of the training rows in each class (discrete u).
    n_features_ : int
        Columns of a continuous u.
    mean_, scale_ : ndarray of shape (n_features_,)
        Standardisation of a continuous u.
    """

    def __init__(self, aux_type="auto", owner="IdentifiableVAE"):
        self.aux_type = aux_type
        self.owner = owner

    def fit_transform(self, y, n_samples):
        """Learn the encoding from the training u and return the encoded u."""
        y = self._check_shape(y, n_samples)
        self.discrete = self._is_discrete(y)
        if self.discrete:
            labels = self._labels(y)
            self.classes_, codes = np.unique(labels, return_inverse=True)
            counts = np.bincount(codes, minlength=len(self.classes_))
            self.class_weights_ = counts / len(codes)
            return codes.astype(np.int64)
        covariates = self._covariates(y)
        self.n_features_ = covariates.shape[1]
        self.mean_ = covariates.mean(0)
        scale = covariates.std(0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        # Standardised: a raw time index in the thousands would saturate the
        # prior network.
        return (covariates - self.mean_) / self.scale_

    def transform(self, y, n_samples):
        """Encode u for a fitted model (labels must have been seen in fit)."""
        y = self._check_shape(y, n_samples)
        if not self.discrete:
            covariates = self._covariates(y)
            if covariates.shape[1] != self.n_features_:
                raise ValueError(
                    f"y has {covariates.shape[1]} columns, but {self.owner} was "
                    f"fitted with {self.n_features_}."
                )
            return (covariates - self.mean_) / self.scale_
        labels = self._labels(y)
        codes = np.clip(
            np.searchsorted(self.classes_, labels), 0, len(self.classes_) - 1
        )
        unseen = self.classes_[codes] != labels
        if unseen.any():
            raise ValueError(
                "y contains labels not seen during fit: "
                f"{np.unique(labels[unseen])[:5].tolist()}"
            )
        return codes.astype(np.int64)

    def prior_shape(self):
        """What a conditional prior of the encoded u is built from."""
        if self.discrete:
            return {
                "n_classes": len(self.classes_),
                "class_weights": self.class_weights_,
            }
        return {"n_aux": self.n_features_}

    def reference(self, encoded, seed):
        """Candidate values of u and their log-probabilities under the
        training distribution: every class with its share, or up to
        ``N_REFERENCE_ROWS`` training rows (chosen by ``seed``) with equal
        weights."""
        if self.discrete:
            return np.arange(len(self.classes_)), np.log(self.class_weights_)
        rng = np.random.RandomState(seed % (2**32))
        rows = np.sort(rng.permutation(len(encoded))[:N_REFERENCE_ROWS])
        return encoded[rows], np.full(len(rows), -np.log(len(rows)))

    # ---- validation ----------------------------------------------------------

    def _check_shape(self, y, n_samples):
        if y is None:
            raise ValueError(_missing_y_message(self.owner))
        if sp.issparse(y):
            raise TypeError(
                "A sparse auxiliary variable y is not supported; pass a dense array."
            )
        # One conversion up front: array-likes that refuse numpy's array
        # functions (np.ndim, np.shape) still convert through __array__.
        y = np.asarray(y)
        if y.ndim not in (1, 2):
            raise ValueError(
                "The auxiliary variable y must be 1-D (labels, a time index) or 2-D "
                f"(covariates); got shape {y.shape}."
            )
        if y.shape[0] != n_samples:
            raise ValueError(
                f"y has {y.shape[0]} rows but X has {n_samples} samples; the "
                "auxiliary variable needs one row per sample."
            )
        return y

    def _is_discrete(self, y):
        if self.aux_type != "auto":
            return self.aux_type == "discrete"
        if y.ndim == 2 and y.shape[1] != 1:
            return False
        y = y.ravel()
        if y.dtype.kind in "OUSb":
            return True
        if y.dtype.kind not in "iuf":
            return False
        if y.dtype.kind == "f":
            finite = np.isfinite(y)
            if not finite.all() or not np.array_equal(y, np.round(y)):
                return False
        # Integer values: labels when each class has two rows on average.
        return len(np.unique(y)) <= len(y) // 2

    @staticmethod
    def _labels(y):
        y = check_array(
            y, ensure_2d=False, dtype=None, input_name="y", ensure_min_samples=0
        )
        if y.ndim == 2:
            if y.shape[1] != 1:
                raise ValueError(
                    f"Discrete u must be a single column of labels; got {y.shape[1]} "
                    "columns."
                )
            y = y.ravel()
        if y.dtype.kind == "c":
            raise ValueError("Complex data not supported for y.")
        return y

    @staticmethod
    def _covariates(y):
        Y = check_array(
            y,
            ensure_2d=False,
            dtype=[np.float64, np.float32],
            input_name="y",
            ensure_min_samples=0,
        )
        return Y.reshape(len(Y), -1)


class ConditionalMixin:
    """The estimator methods that read u through the fitted ``_encoding`` (an
    :class:`AuxEncoder`): its fitted attributes, and sampling given u."""

    def _condition(self, y, n_samples):
        return {"u": self._encoding.transform(y, n_samples)}

    def sample(self, n_samples=1, y=None, random_state=None):
        """Draw z from p(z | u), then x from p(x | z).

        Parameters
        ----------
        n_samples : int, default=1
        y : array-like of shape (n_samples,) or (n_samples, k), or one value, \
                default=None
            The auxiliary variable of each draw; a single label or row is
            used for all. None draws u from its training distribution.
        random_state : int, RandomState instance or None, default=None
            Seeds the draw; None uses the estimator's ``random_state``.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        Z : ndarray of shape (n_samples, n_components)
        """
        condition = None
        if y is not None:
            y = np.atleast_1d(y)
            if len(y) == 1 and isinstance(n_samples, Integral) and n_samples > 1:
                y = np.repeat(y, n_samples, axis=0)
            condition = self._condition_arrays(y, n_samples)
        return self._sample(n_samples, random_state, condition)

    @property
    def classes_(self):
        """The labels of a discrete u."""
        return self._discrete_attribute("classes_")

    @property
    def aux_class_weights_(self):
        """Share of the training rows in each class of a discrete u."""
        return self._discrete_attribute("class_weights_")

    @property
    def n_aux_features_(self):
        """Number of columns of a continuous u."""
        encoding = self._fitted_encoding()
        if encoding.discrete:
            raise AttributeError("n_aux_features_ is only defined for a continuous u.")
        return encoding.n_features_

    def _fitted_encoding(self):
        if "_encoding" not in self.__dict__:
            raise AttributeError("The auxiliary variable is known once fitted.")
        return self._encoding

    def _discrete_attribute(self, name):
        encoding = self._fitted_encoding()
        if not encoding.discrete:
            raise AttributeError("Only a discrete u has classes.")
        return getattr(encoding, name)
