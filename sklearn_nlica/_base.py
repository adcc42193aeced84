"""What the three estimators share: the scikit-learn surface.

:class:`LatentVariableModel` is the one template the estimators fill. It
validates the data, converts numpy to tensors and back, fits (``fit``,
``partial_fit``, restarts and warm starts: ``_fitting.FitMixin``), and
evaluates through the fitted torch module. A subclass supplies:

- ``_build_module(x, seed=..., encoding=..., **condition)``: the torch
  module (``_models.py``);
- ``_training_plan(module, n_batches)``: how it trains (a ``TrainingPlan``);
- optionally the conditioning hook, for a model of x given an observed y:
  ``_fit_condition(y, n_samples)`` learns an encoding of y and returns it
  with the encoded y, ``_condition(y, n_samples)`` encodes y for a fitted
  model. Encoded y reaches every module method as keyword arguments.
"""

import itertools
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils import check_array, check_scalar
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch.callbacks import Callback

from ._fitting import FitMixin, as_tensor
from ._nn import ACTIVATIONS
from ._schedules import thread_policy
from ._training import draw_seed, seeded
from ._validation import NotBoolInterval, check_finite_range
from ._whitening import fit_whitening
from .integrators import INTEGRATORS

# Rows per forward pass at prediction time, and the largest intermediate
# (elements) one pass may build: together they bound memory on large inputs.
PREDICT_CHUNK = 4096
_PREDICT_ELEMENTS = 2**24
# Limits past which a fit would only end in an allocation error: weights per
# network, and elements of the largest tensor of a training batch (the
# decoder's activations at every node of every row).
MAX_PARAMETERS = 2**27
MAX_BATCH_ELEMENTS = 2**29


def check_layer_sizes(sizes, name="hidden_layer_sizes"):
    """A tuple of positive ints (``()`` for a linear map), or a ValueError."""
    sizes = tuple(np.atleast_1d(sizes).tolist()) if np.ndim(sizes) else (sizes,)
    if not all(isinstance(h, Integral) and h > 0 for h in sizes):
        raise ValueError(
            f"{name} must be a tuple of positive integers (or () for a linear "
            f"map), got {sizes!r}."
        )
    return tuple(int(h) for h in sizes)


def check_callbacks(callbacks):
    """skorch callbacks, or (name, callback) pairs, or a TypeError naming the
    element that is neither."""
    for item in callbacks or []:
        callback = item[1] if isinstance(item, tuple) and len(item) == 2 else item
        is_class = isinstance(callback, type) and issubclass(callback, Callback)
        if not (isinstance(callback, Callback) or is_class):
            raise TypeError(
                "callbacks must be skorch Callback instances or (name, callback) "
                f"pairs, got {item!r}."
            )


def _count(value, name):
    """A positive integer argument of a method (n_samples and the like)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not a bool.")
    return check_scalar(value, name, Integral, min_val=1)


class LatentVariableModel(
    FitMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Base class of the estimators: x = g(z) + noise with z ~ N(0, I).

    Not for direct use: subclasses define the torch module and the objective.
    """

    _parameter_constraints: dict = {
        "n_components": [NotBoolInterval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": ["array-like"],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "noise_variance": [None, NotBoolInterval(Real, 0, None, closed="neither")],
        "integrator": [StrOptions(set(INTEGRATORS)), HasMethods(["rule"])],
        "n_nodes": [NotBoolInterval(Integral, 1, None, closed="left")],
        "n_init": [NotBoolInterval(Integral, 1, None, closed="left")],
        "max_iter": [NotBoolInterval(Integral, 1, None, closed="left")],
        "tol": [NotBoolInterval(Real, 0, None, closed="left")],
        "n_iter_no_change": [NotBoolInterval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [NotBoolInterval(Real, 0, 1, closed="neither")],
        "batch_size": [
            StrOptions({"auto"}),
            NotBoolInterval(Integral, 1, None, closed="left"),
        ],
        "learning_rate_init": [NotBoolInterval(Real, 0, None, closed="neither")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "on_interrupt": [StrOptions({"raise", "keep"})],
        "callbacks": [None, list],
    }

    # Whether fit needs y (the iVAE's auxiliary variable).
    _requires_y = False
    # The parameters that set node counts, the training one first.
    _node_budgets = ("n_nodes",)
    # Whether the model needs an injective mixing (n_components <= n_features).
    _injective = False
    # The fitted whitening of X (see _whitens); None: X's own units.
    _whitening = None

    # ---- hooks ---------------------------------------------------------------

    def _build_module(self, x, *, seed, encoding, **condition):
        """The torch module for training data ``x`` (a tensor), the run's
        ``seed`` and the conditioning variable (its encoding and values)."""
        raise NotImplementedError

    def _training_plan(self, module, n_batches):
        """How to train ``module`` with ``n_batches`` batches per epoch."""
        raise NotImplementedError

    def _fit_condition(self, y, n_samples):
        """Learn the encoding of the conditioning variable y: (encoding, arrays)."""
        return None, {}

    def _condition(self, y, n_samples):
        """Encode ``y`` for the fitted model ({} for unconditional models)."""
        return {}

    def _whitens(self, n_features):
        """Whether the model is fitted to whitened X (``_whitening``) for
        training data of ``n_features`` features, or in X's units."""
        return False

    # ---- fitting -------------------------------------------------------------

    def _check_fit_settings(self, n_samples, n_features):
        """Refuse settings that cannot work on data of this shape: networks and
        node budgets beyond memory (subclasses add their own)."""
        check_callbacks(self.callbacks)
        if self._injective and self.n_components > n_features:
            raise ValueError(
                f"n_components={self.n_components} is more than the {n_features} "
                f"features of X; {type(self).__name__} needs n_components <= "
                "n_features."
            )
        hidden = check_layer_sizes(self.hidden_layer_sizes)
        sizes = (n_features, *hidden, self.n_components)
        n_weights = sum(a * b for a, b in itertools.pairwise(sizes))
        if n_weights > MAX_PARAMETERS:
            raise ValueError(
                f"hidden_layer_sizes={hidden} with {n_features} features gives "
                f"{n_weights:.3g} weights per network, more than {MAX_PARAMETERS:.3g}"
                "; use smaller layers."
            )
        training_nodes = getattr(self, self._node_budgets[0])
        batch = self._batch_size(n_samples)
        per_node = batch * max((n_features, *hidden))
        if per_node * training_nodes > MAX_BATCH_ELEMENTS:
            raise ValueError(
                f"{self._node_budgets[0]}={training_nodes} with batches of {batch} "
                f"rows needs tensors of {per_node * training_nodes:.3g} elements; "
                f"use at most {MAX_BATCH_ELEMENTS // per_node} or a smaller "
                "batch_size."
            )
        self._check_rules()

    def _check_rules(self):
        """Build each rule the fit will use once, so that a budget the rule
        cannot serve fails now, naming its parameter."""
        integrator = self._new_integrator()
        if integrator.is_adaptive:  # its rules depend on the data
            return
        for name in self._node_budgets:
            n_nodes = getattr(self, name)
            try:
                integrator.rule(self.n_components, n_nodes, generator=torch.Generator())
            except ValueError as error:
                raise ValueError(f"{name}={n_nodes}: {error}") from None

    def _validate_X(self, X, reset):
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype=[np.float64, np.float32],
            ensure_min_samples=2 if reset else 1,
        )
        # Values must stay finite in the precision the model computes in.
        dtype = self._numpy_training_dtype(X) if reset else self._numpy_dtype
        X = check_finite_range(X, dtype)
        if reset:
            self._whitening = fit_whitening(X) if self._whitens(X.shape[1]) else None
        return X if self._whitening is None else self._whitening.transform(X)

    def _numpy_training_dtype(self, X):
        return np.float32 if self._training_dtype(X) == torch.float32 else np.float64

    @property
    def _numpy_dtype(self):
        return np.float32 if self._dtype == torch.float32 else np.float64

    def fit_transform(self, X, y=None):
        """Fit to ``X`` and return its latent representation.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, k), default=None
            Passed to :meth:`fit`: the auxiliary variable u of a conditional
            model (:class:`~sklearn_nlica.IdentifiableVAE`), ignored otherwise.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components)
        """
        return self.fit(X, y)._transform(X, y)

    # ---- the fitted model ------------------------------------------------------

    @property
    def module_(self):
        """The fitted torch module (on ``device_``)."""
        return self.net_.module_

    @property
    def device_(self):
        """The device the fitted model lives on (CPU after loading a GPU model
        on a machine without one)."""
        return torch.device(self.net_.device)

    @property
    def _dtype(self):
        return next(self.module_.parameters()).dtype

    @property
    def noise_variance_(self):
        """The fitted decoder noise variance sigma^2 (None when it depends on z)."""
        with torch.no_grad():
            variance = self.module_.decoder.noise_variance()
        return None if variance is None else float(variance)

    @property
    def _n_features_out(self):
        return self.n_components

    def _predict(self, X, method, condition=None, n_nodes=None):
        """``module_.<method>(x, rule, **condition)`` on chunks of ``X``, in eval
        mode and without gradients, as an array of the input's dtype.

        The rule of each chunk comes from ``module_.rule`` with a generator
        seeded by the fit, so that results are deterministic and every row's
        nodes are the same whichever chunk it falls in.
        """
        check_is_fitted(self)
        return self._evaluate(
            self._validate_X(X, reset=False), method, condition, n_nodes
        )

    def _evaluate(self, X, method, condition=None, n_nodes=None):
        """:meth:`_predict` on an already validated array ``X``."""
        module, device, dtype = self.module_, self.device_, self._dtype
        n_nodes = n_nodes or self.n_nodes
        extras = {
            k: as_tensor(v, dtype, device)
            for k, v in self._condition_arrays(condition, X.shape[0]).items()
        }
        work = module.elements_per_row(n_nodes, **{k: v[:1] for k, v in extras.items()})
        rows = int(np.clip(_PREDICT_ELEMENTS // max(1, work), 1, PREDICT_CHUNK))
        was_training = module.training
        module.eval()
        out = []
        with torch.no_grad(), thread_policy(device):
            for start in range(0, X.shape[0], rows):
                x = torch.tensor(X[start : start + rows], dtype=dtype, device=device)
                part = {k: v[start : start + rows] for k, v in extras.items()}
                generator = torch.Generator().manual_seed(self._seed)
                rule = module.rule(x, n_nodes, generator)
                out.append(getattr(module, method)(x, rule, **part))
        module.train(was_training)
        return torch.cat(out).cpu().numpy().astype(X.dtype, copy=False)

    def _condition_arrays(self, y, n_samples):
        return {} if y is None else self._condition(y, n_samples)

    def _transform(self, X, y=None):
        return self._predict(X, "posterior_mean", y)

    def _score_samples(self, X, y=None):
        return self._in_x_units(self._predict(X, "score_samples", y))

    def _log_likelihood(self, X, y=None, n_samples=None):
        check_is_fitted(self)
        n_nodes = max(self.n_nodes, 1024) if n_samples is None else n_samples
        count = _count(n_nodes, "n_samples")
        return self._in_x_units(self._predict(X, "log_likelihood", y, count))

    def _in_x_units(self, log_density):
        """A log-density of whitened rows as the log-density of X's rows."""
        if self._whitening is None:
            return log_density
        return log_density + log_density.dtype.type(self._whitening.log_det)

    def _unwhiten(self, X):
        """Rows of the model's space in X's units."""
        return X if self._whitening is None else self._whitening.inverse_transform(X)

    def transform(self, X):
        """Latent representation of ``X``: the posterior mean E[z | x].

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components)
        """
        return self._transform(X)

    def inverse_transform(self, X):
        """Decoder mean g(z) of latent codes.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)
            Latent codes (e.g. the output of ``transform``).

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        Z = check_array(X, dtype=[np.float64, np.float32])
        if Z.shape[1] != self.n_components:
            raise ValueError(
                f"Z has {Z.shape[1]} features, but {type(self).__name__} is "
                f"expecting {self.n_components} latent components."
            )
        z = torch.tensor(Z, dtype=self._dtype, device=self.device_)
        with torch.no_grad():
            mean = self.module_.decoder.mean(z)
        return self._unwhiten(mean.cpu().numpy().astype(Z.dtype, copy=False))

    def score_samples(self, X):
        """Per-sample score (see the estimator: log-likelihood or ELBO).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        return self._score_samples(X)

    def score(self, X, y=None):
        """Mean of :meth:`score_samples` over ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, k), default=None
            The auxiliary variable u of a conditional model
            (:class:`~sklearn_nlica.IdentifiableVAE`; None gives its bound on
            log p(x)), ignored otherwise.

        Returns
        -------
        score : float
        """
        return float(np.mean(self._score_samples(X, y)))

    def sample(self, n_samples=1, random_state=None):
        """Draw ``(X, Z)`` from the fitted generative model.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None
            Seeds the draw; None uses the estimator's ``random_state``.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        Z : ndarray of shape (n_samples, n_components)
        """
        return self._sample(n_samples, random_state)

    def _sample(self, n_samples, random_state, condition=None):
        check_is_fitted(self)
        _count(n_samples, "n_samples")
        seed = draw_seed(self.random_state if random_state is None else random_state)
        extras = {
            k: as_tensor(v, self._dtype, torch.device("cpu"))
            for k, v in (condition or {}).items()
        }
        with seeded(seed, torch.device("cpu")), torch.no_grad():
            z = self.module_.sample_latent(n_samples, **extras)
            noise = torch.randn(n_samples, self.n_features_in_, dtype=self._dtype)
            mean, variance = self.module_.decoder(z.to(self.device_))
            variance = variance.cpu()
            if variance.ndim:
                variance = variance.unsqueeze(-1)
            x = mean.cpu() + variance.sqrt() * noise
        dtype = self._numpy_dtype
        return self._unwhiten(x.numpy().astype(dtype)), z.numpy().astype(dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.non_deterministic = False
        tags.target_tags.required = self._requires_y
        return tags
