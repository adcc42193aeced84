"""What the three estimators share: parameters, validation, device, dtype,
seeding, the skorch training driver and the sample/score/transform plumbing.

A subclass supplies the torch module (``_build_module``) whose ``forward``
returns the per-sample objective, and the tensor-level ``_score_samples_tensor``
and ``_transform_tensor``; everything scikit-learn facing lives here.
"""

import contextlib
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
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch.callbacks import EarlyStopping
from skorch.utils import noop

from ._modules import ACTIVATIONS
from ._training import (
    EpochProgressBar,
    HoldOut,
    ObjectiveNet,
    RaiseOnNonFinite,
    TensorBatches,
    TensorData,
)
from .integrators import INTEGRATORS, get_integrator

# Rows per forward pass at prediction time: bounds memory on large inputs.
PREDICT_CHUNK = 4096


def resolve_device(device):
    """Turn the ``device`` parameter into an available ``torch.device``.

    ``"auto"`` picks CUDA, then MPS, then the CPU. Asking for a device that
    this machine does not have raises a ValueError naming it.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a valid torch device.") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not "
                "available on this machine; use device='cpu' or 'auto'."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(
                f"device={device!r} was requested but MPS is not "
                "available on this machine; use device='cpu' or 'auto'."
            )
    elif resolved.type != "cpu":
        raise ValueError(
            f"device={device!r} is not supported; use 'cpu', 'cuda', "
            "'cuda:N', 'mps' or 'auto'."
        )
    return resolved


@contextlib.contextmanager
def seeded(seed, device):
    """Run the block on torch's global generators forked and seeded.

    Everything random inside (initialisation, shuffling, integration nodes,
    reparameterisation noise) is fixed by ``seed``, and the user's own global
    torch RNG state is restored afterwards, untouched.
    """
    if device.type == "cuda":
        devices, device_type = list(range(torch.cuda.device_count())), "cuda"
    elif device.type == "mps":
        devices, device_type = [0], "mps"
    else:
        devices, device_type = [], "cuda"
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(seed)
        yield


def _draw_seed(random_state):
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class LatentVariableModel(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Base class of the estimators: x = g(z) + noise with z ~ N(0, I).

    Not for direct use: subclasses define the torch module and the objective.
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": ["array-like"],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "noise_variance": [None, Interval(Real, 0, None, closed="neither")],
        "integrator": [StrOptions(set(INTEGRATORS)), HasMethods(["rule"])],
        "n_nodes": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "batch_size": [
            StrOptions({"auto"}),
            Interval(Integral, 1, None, closed="left"),
        ],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [None, list],
    }

    # ---- hooks for subclasses -------------------------------------------------

    def _build_module(self, x):
        """Return the torch module for training data ``x`` (a tensor)."""
        raise NotImplementedError

    def _alternating_groups(self):
        """Parameter-name prefixes to update in turn, or None for joint updates."""
        return None

    # The skorch net class and extra keyword arguments for it (e.g. optimizer
    # parameter groups); a subclass with its own update rule overrides these.
    _net_class = ObjectiveNet

    def _net_kwargs(self):
        return {}

    def _score_samples_tensor(self, x, rule):
        """Per-sample score of ``x`` in eval mode with a fixed integration rule."""
        raise NotImplementedError

    def _transform_tensor(self, x):
        raise NotImplementedError

    # ---- fitting --------------------------------------------------------------

    def _check_hidden_layer_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = tuple(np.atleast_1d(sizes).tolist()) if np.ndim(sizes) else (sizes,)
        if not all(isinstance(h, Integral) and h > 0 for h in sizes):
            raise ValueError(
                "hidden_layer_sizes must be a tuple of positive "
                f"integers (or () for a linear model), got {sizes!r}."
            )
        return tuple(int(h) for h in sizes)

    def _validate_X(self, X, reset):
        return validate_data(
            self,
            X,
            reset=reset,
            dtype=[np.float64, np.float32],
            ensure_min_samples=1 if not reset else 2,
        )

    def _as_tensor(self, array, device, dtype=None):
        return torch.tensor(
            np.asarray(array), dtype=dtype or self._dtype, device=device
        )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the model to ``X`` by maximising its training objective.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Observations. float32 input is trained in float32, anything else
            in float64.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        X = self._validate_X(X, reset=True)
        self._fit(X)
        return self

    def _fit(self, X, seed=None, **extras):
        """Train on validated ``X`` (numpy); ``extras`` are tensors for forward.

        ``seed`` (an int) replaces the one drawn from ``random_state``, for
        subclasses that train several initialisations.
        """
        self._hidden = self._check_hidden_layer_sizes()
        device = resolve_device(self.device)
        self._dtype = torch.float32 if X.dtype == np.float32 else torch.float64
        # A private copy: rules cache their nodes, the user's object stays as given.
        self._integrator = clone(get_integrator(self.integrator))
        self._seed = _draw_seed(self.random_state) if seed is None else int(seed)
        n_samples = X.shape[0]
        batch_size = (
            min(200, n_samples)
            if self.batch_size == "auto"
            else min(self.batch_size, n_samples)
        )
        if self.early_stopping and n_samples < 2:
            raise ValueError("early_stopping needs at least 2 samples.")

        with seeded(self._seed, device):
            x = self._as_tensor(X, device)
            data = TensorData(x, **extras)
            module = self._build_module(x).to(device=device, dtype=self._dtype)
            net = self._net_class(
                module,
                optimizer=torch.optim.Adam,
                lr=self.learning_rate_init,
                max_epochs=self.max_iter,
                batch_size=batch_size,
                iterator_train=TensorBatches,
                iterator_train__shuffle=True,
                iterator_valid=TensorBatches,
                train_split=HoldOut(self.validation_fraction)
                if self.early_stopping
                else None,
                callbacks=self._callbacks(),
                device=device,
                verbose=int(self.verbose),
                alternating=self._alternating_groups(),
                **({} if self.verbose >= 2 else {"callbacks__print_log": None}),
                **self._net_kwargs(),
            )
            with warnings.catch_warnings():
                # skorch warns when handed an already initialised module.
                warnings.simplefilter("ignore", UserWarning)
                net.initialize()
            net.partial_fit(data)
        self.net_ = net
        self._store_history(net)
        return self

    def _callbacks(self):
        monitor = "valid_loss" if self.early_stopping else "train_loss"
        callbacks = [
            ("raise_on_non_finite", RaiseOnNonFinite()),
            (
                "early_stopping",
                EarlyStopping(
                    monitor=monitor,
                    patience=self.n_iter_no_change,
                    threshold=self.tol,
                    threshold_mode="abs",
                    load_best=self.early_stopping,
                    sink=print if self.verbose else noop,
                ),
            ),
        ]
        if self.verbose == 1:
            callbacks.append(
                ("progress_bar", EpochProgressBar(self.max_iter, type(self).__name__))
            )
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
        if self.n_iter_ == self.max_iter and not self._converged(history):
            warnings.warn(
                f"{type(self).__name__} reached max_iter={self.max_iter} epochs "
                "without converging; increase max_iter.",
                ConvergenceWarning,
                stacklevel=2,
            )

    def _warm_epochs(self):
        """Leading epochs that optimise another objective (a warm-up)."""
        return 0

    def _converged(self, history):
        # Warm-up epochs optimise another objective: judge the rest only.
        monitor = "valid_loss" if self.early_stopping else "train_loss"
        losses = np.asarray(history[:, monitor], dtype=float)[self._warm_epochs() :]
        if len(losses) <= self.n_iter_no_change:
            return False
        best_before = losses[: -self.n_iter_no_change].min()
        return losses[-self.n_iter_no_change :].min() > best_before - self.tol

    # ---- fitted model ---------------------------------------------------------

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
    def noise_variance_(self):
        """The fitted decoder noise variance sigma^2 (None when it depends on z)."""
        decoder = self.module_.decoder
        if decoder.variance == "per_sample":
            return None
        with torch.no_grad():
            return float(
                decoder(
                    torch.zeros(
                        1, self.n_components, dtype=self._dtype, device=self.device_
                    )
                )[1]
            )

    @property
    def _n_features_out(self):
        return self.n_components

    def _predict(self, X, fn, rule=None, **extras):
        """Apply ``fn`` (tensor -> tensor) to ``X`` in chunks, in eval mode.

        ``extras`` (tensors with one row per row of ``X``, e.g. an auxiliary
        variable) are chunked alongside and passed to ``fn`` by keyword.
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        device = self.device_
        module = self.module_
        was_training = module.training
        module.eval()
        out = []
        with torch.no_grad():
            for start in range(0, X.shape[0], PREDICT_CHUNK):
                x = self._as_tensor(X[start : start + PREDICT_CHUNK], device)
                part = {k: v[start : start + PREDICT_CHUNK] for k, v in extras.items()}
                out.append(fn(x, **part) if rule is None else fn(x, rule, **part))
        module.train(was_training)
        return torch.cat(out).cpu().numpy().astype(X.dtype, copy=False)

    def _evaluation_rule(self, n_dims, n_nodes=None, log_integrand=None):
        """A deterministic rule (fixed seed) so that scores are reproducible and
        every row is scored with the same nodes (or, for adaptive rules, nodes
        that depend on that row alone)."""
        generator = torch.Generator().manual_seed(self._seed)
        return self._integrator.rule(
            n_dims,
            n_nodes or self.n_nodes,
            dtype=self._dtype,
            device=self.device_,
            generator=generator,
            log_integrand=log_integrand,
        )

    def transform(self, X):
        """Latent representation of ``X``: the posterior mean E[z | x].

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components)
        """
        return self._predict(X, self._transform_tensor)

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
        Z = self._validate_latent(X)
        with torch.no_grad():
            mean, _ = self.module_.decoder(self._as_tensor(Z, self.device_))
        return mean.cpu().numpy().astype(Z.dtype, copy=False)

    def _validate_latent(self, Z):
        from sklearn.utils import check_array

        Z = check_array(Z, dtype=[np.float64, np.float32])
        if Z.shape[1] != self.n_components:
            raise ValueError(
                f"Z has {Z.shape[1]} features, but {type(self).__name__} "
                f"is expecting {self.n_components} latent components."
            )
        return Z

    def score_samples(self, X):
        """Per-sample score (see the estimator: log-likelihood or ELBO).

        Deterministic: the integration nodes are fixed by ``random_state``
        and shared by all rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        rule = self._evaluation_rule(self.n_components)
        return self._predict(X, self._score_samples_tensor, rule)

    def score(self, X, y=None):
        """Mean of :meth:`score_samples` over ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        score : float
        """
        return float(np.mean(self.score_samples(X)))

    def _sample_latent(self, n_samples):
        return torch.randn(n_samples, self.n_components, dtype=self._dtype)

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
        return self._draw(n_samples, random_state)

    def _draw(self, n_samples, random_state, **latent_kwargs):
        """``sample``'s body; ``latent_kwargs`` go to ``_sample_latent``."""
        check_is_fitted(self)
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(
                f"n_samples must be a positive integer, got {n_samples!r}."
            )
        seed = _draw_seed(self.random_state if random_state is None else random_state)
        device = self.device_
        with seeded(seed, torch.device("cpu")), torch.no_grad():
            z = self._sample_latent(n_samples, **latent_kwargs)
            noise = torch.randn(n_samples, self.n_features_in_, dtype=self._dtype)
            mean, variance = self.module_.decoder(z.to(device))
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
        return tags
