"""What the three estimators share: the scikit-learn surface.

:class:`LatentVariableModel` is the one template the estimators fill. It
validates the data, converts numpy to tensors and back, trains through the
skorch driver (with ``n_init`` restarts), stores the fitted attributes, and
evaluates through the fitted torch module. A subclass supplies:

- ``_build_module(x, seed=..., encoding=..., **condition)``: the torch
  module (``_models.py``);
- ``_training_plan(module, n_batches)``: how it trains (a ``TrainingPlan``);
- optionally the conditioning hook, for a model of x given an observed y:
  ``_fit_condition(y, n_samples)`` learns an encoding of y and returns it
  with the encoded y, ``_condition(y, n_samples)`` encodes y for a fitted
  model. Encoded y reaches every module method as keyword arguments.
"""

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array, check_random_state, check_scalar
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch.utils import noop

from ._nn import ACTIVATIONS
from ._training import (
    EarlyStoppingAfter,
    EpochProgressBar,
    HoldOut,
    ObjectiveNet,
    RaiseOnNonFinite,
    TensorBatches,
    TensorData,
    converged,
    draw_seed,
    resolve_device,
    seeded,
    thread_policy,
)
from ._validation import NotBoolInterval
from .integrators import INTEGRATORS, get_integrator

# Rows per forward pass at prediction time, and the largest intermediate
# (elements) one pass may build: together they bound memory on large inputs.
PREDICT_CHUNK = 4096
_PREDICT_ELEMENTS = 2**24


def check_layer_sizes(sizes, name="hidden_layer_sizes"):
    """A tuple of positive ints (``()`` for a linear map), or a ValueError."""
    sizes = tuple(np.atleast_1d(sizes).tolist()) if np.ndim(sizes) else (sizes,)
    if not all(isinstance(h, Integral) and h > 0 for h in sizes):
        raise ValueError(
            f"{name} must be a tuple of positive integers (or () for a linear "
            f"map), got {sizes!r}."
        )
    return tuple(int(h) for h in sizes)


def _count(value, name):
    """A positive integer argument of a method (n_samples and the like)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not a bool.")
    return check_scalar(value, name, Integral, min_val=1)


class LatentVariableModel(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
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
        "callbacks": [None, list],
    }

    # Whether fit needs y (the iVAE's auxiliary variable).
    _requires_y = False

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

    # ---- fitting -------------------------------------------------------------

    def _validate_X(self, X, reset):
        return validate_data(
            self,
            X,
            reset=reset,
            dtype=[np.float64, np.float32],
            ensure_min_samples=2 if reset else 1,
        )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the model to ``X`` by maximising its training objective.

        A fit that raises (or is interrupted) leaves the estimator as it was:
        unfitted, or with its previous model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Observations, trained in the estimator's precision (float32 for
            the VAEs; the input's, float32 or float64, for the MLE).
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        state = dict(self.__dict__)
        try:
            return self._fit(X, y)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(state)
            raise

    def _fit(self, X, y):
        X = self._validate_X(X, reset=True)
        encoding, condition = self._fit_condition(y, X.shape[0])
        rng = check_random_state(self.random_state)
        seeds = [draw_seed(rng) for _ in range(self.n_init)]
        best = None
        for seed in seeds:
            # Each fit's warnings are kept; only the selected fit's are shown.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                net = self._train(X, condition, seed, encoding)
            objective = -float(net.history[-1, "train_loss"])
            if best is None or objective > best[0]:
                best = (objective, net, seed, caught)
        _, net, self._seed, caught = best
        self._encoding = encoding
        self.net_ = net
        self._store_history(net)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return self

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

    def _new_integrator(self):
        # A private copy: rules cache their nodes, the user's object stays as given.
        return clone(get_integrator(self.integrator))

    def _training_dtype(self, X):
        """The torch dtype of training: float32 for float32 input, else float64."""
        return torch.float32 if X.dtype == np.float32 else torch.float64

    def _batch_size(self, n_samples):
        size = 200 if self.batch_size == "auto" else self.batch_size
        return min(size, n_samples)

    def _train(self, X, condition, seed, encoding):
        """One training run from ``seed``: the fitted skorch net."""
        device = resolve_device(self.device)
        dtype = self._training_dtype(X)
        split = HoldOut(self.validation_fraction) if self.early_stopping else None
        n_train = X.shape[0] - (split.n_valid(X.shape[0]) if split else 0)
        batch_size = self._batch_size(X.shape[0])
        with seeded(seed, device), thread_policy(device):
            x = torch.tensor(X, dtype=dtype, device=device)
            extras = {k: _as_tensor(v, dtype, device) for k, v in condition.items()}
            module = self._build_module(x, seed=seed, encoding=encoding, **extras)
            module = module.to(device, dtype)
            plan = self._training_plan(module, -(-n_train // batch_size))
            net = (plan.net_class or ObjectiveNet)(
                module,
                optimizer=torch.optim.Adam,
                lr=self.learning_rate_init,
                max_epochs=min(plan.planned_epochs or np.inf, self.max_iter),
                batch_size=batch_size,
                iterator_train=TensorBatches,
                iterator_train__shuffle=True,
                iterator_valid=TensorBatches,
                train_split=split,
                callbacks=self._callbacks(plan),
                device=device,
                verbose=int(self.verbose),
                **({} if self.verbose >= 2 else {"callbacks__print_log": None}),
                **plan.net_kwargs,
            )
            with warnings.catch_warnings():
                # skorch warns when handed an already initialised module.
                warnings.simplefilter("ignore", UserWarning)
                net.initialize()
            net.partial_fit(TensorData(x, **extras))
        net.warm_epochs_ = plan.warm_epochs
        # Without a plan, max_iter is the only limit: reaching it stops short.
        net.planned_epochs_ = plan.planned_epochs or np.inf
        net.monitor_ = self._monitor(plan)
        return net

    def _monitor(self, plan):
        """The history key that stopping reads (lower is better)."""
        if plan.monitor is not None:
            return f"valid_{plan.monitor}" if self.early_stopping else plan.monitor
        return "valid_loss" if self.early_stopping else "train_loss"

    def _callbacks(self, plan):
        monitor = self._monitor(plan)
        early_stopping = EarlyStoppingAfter(
            plan.warm_epochs,
            monitor=monitor,
            patience=self.n_iter_no_change,
            threshold=self.tol,
            threshold_mode="abs",
            load_best=self.early_stopping,
            sink=print if self.verbose else noop,
        )
        callbacks = [
            *plan.callbacks,
            ("raise_on_non_finite", RaiseOnNonFinite()),
            ("early_stopping", early_stopping),
        ]
        if self.verbose == 1:
            bar = EpochProgressBar(self.max_iter, type(self).__name__)
            callbacks.append(("progress_bar", bar))
        return callbacks + list(self.callbacks or [])

    def _store_history(self, net):
        history = net.history
        self.n_iter_ = len(history)
        self.loss_curve_ = [float(v) for v in history[:, "train_loss"]]
        if self.early_stopping:
            self.validation_scores_ = [-float(v) for v in history[:, "valid_loss"]]
            self.best_validation_score_ = max(self.validation_scores_)
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = min(self.loss_curve_)
        losses = history[:, net.monitor_]
        # Warn only when max_iter stopped the fit short of its plan, unconverged.
        if (
            self.n_iter_ == self.max_iter
            and net.planned_epochs_ > self.max_iter
            and not converged(losses, self.n_iter_no_change, self.tol, net.warm_epochs_)
        ):
            planned = net.planned_epochs_
            warnings.warn(
                f"{type(self).__name__} reached max_iter={self.max_iter} epochs "
                "without converging"
                + (f" (its schedule plans {planned})" if np.isfinite(planned) else "")
                + "; increase max_iter.",
                ConvergenceWarning,
                stacklevel=3,
            )

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
        X = self._validate_X(X, reset=False)
        module, device, dtype = self.module_, self.device_, self._dtype
        n_nodes = n_nodes or self.n_nodes
        extras = {
            k: _as_tensor(v, dtype, device)
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
        return self._predict(X, "score_samples", y)

    def _log_likelihood(self, X, y=None, n_samples=None):
        check_is_fitted(self)
        n_nodes = max(self.n_nodes, 1024) if n_samples is None else n_samples
        return self._predict(X, "log_likelihood", y, _count(n_nodes, "n_samples"))

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
        return mean.cpu().numpy().astype(Z.dtype, copy=False)

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
            k: _as_tensor(v, self._dtype, torch.device("cpu"))
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
        dtype = np.float32 if self._dtype == torch.float32 else np.float64
        return x.numpy().astype(dtype), z.numpy().astype(dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.non_deterministic = False
        tags.target_tags.required = self._requires_y
        return tags


def _as_tensor(array, dtype, device):
    """Integer arrays (class codes) as int64, anything else in ``dtype``."""
    array = np.asarray(array)
    kind = torch.long if array.dtype.kind in "iu" else dtype
    return torch.as_tensor(array, dtype=kind, device=device)
