"""How the estimators fit: restarts, warm starts, partial fits, interrupts.

:class:`FitMixin` is the fitting half of the estimators' template
(``_base.LatentVariableModel`` is the other half). Every fit builds its state
on the side and commits it only when training succeeds: a fit that raises or
is interrupted leaves the estimator as it was.
"""

import copy
import warnings

import numpy as np
import torch
from sklearn.base import _fit_context, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from skorch.utils import noop

from ._densities import MIN_VARIANCE
from ._schedules import restart_schedule, set_base_rate, thread_policy
from ._training import (
    EarlyStoppingAfter,
    EpochProgressBar,
    HoldOut,
    NumericalGuard,
    ObjectiveNet,
    PlainPrintLog,
    TensorBatches,
    TensorData,
    converged,
    draw_seed,
    resolve_device,
    seeded,
)
from ._validation import check_noise_variance
from .integrators import get_integrator

# The activity test of the fitted latents: rows it looks at, and the variance
# of a latent's posterior mean over them below which it counts as collapsed.
ACTIVITY_ROWS = 2000
ACTIVITY_THRESHOLD = 1e-2
# The parameters that a continued fit (warm_start, partial_fit) takes as they
# are now; every other one was built into the fitted model or its training.
CONTINUABLE = frozenset(
    {"learning_rate_init", "max_iter", "on_interrupt", "warm_start"}
)


class FitMixin:
    """``fit`` and ``partial_fit`` of the estimators (see the module notes)."""

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the model to ``X`` by maximising its training objective.

        With ``warm_start=True`` and a fitted model, training continues from
        it for ``max_iter`` more epochs. A fit that raises (or is
        interrupted) leaves the estimator as it was: unfitted, or with its
        previous model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Observations, trained in the estimator's precision (float32 for
            the VAEs; the input's, float32 or float64, for the MLE).
        y : array-like of shape (n_samples,) or (n_samples, k), default=None
            The auxiliary variable u of a conditional model (required by
            :class:`~sklearn_nlica.IdentifiableVAE`: class labels or
            covariates, see its ``aux_type``), ignored otherwise.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        warm = self.warm_start and hasattr(self, "net_")
        return self._transaction(X, y, epochs=self.max_iter, warm=warm, warn=True)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Train for one epoch on ``X``, continuing the fitted model if any.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, k), default=None
            The auxiliary variable u of a conditional model
            (:class:`~sklearn_nlica.IdentifiableVAE`; the first call defines
            its classes or columns), ignored otherwise.

        Returns
        -------
        self : object
            The estimator, trained for one more epoch.
        """
        return self._transaction(X, y, epochs=1, warm=hasattr(self, "net_"), warn=False)

    def _transaction(self, X, y, *, epochs, warm, warn):
        state = dict(self.__dict__)
        try:
            if warm:
                self._check_continuable()
                # fit plans its epochs anew; partial_fit follows the plan.
                net, caught = self._continue(X, y, epochs, restart=warn)
            else:
                net, caught = self._fit_restarts(X, y, epochs)
            self.net_ = net
            self._fitted_settings = self.get_params(deep=False)
            self._store_history(net, warn and net.epochs_run_ == epochs)
            self._store_activity(X, y)
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            return self
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(state)
            raise

    def _fit_restarts(self, X, y, epochs):
        X = self._validate_X(X, reset=True)
        self._check_fit_settings(*X.shape)
        if self.noise_variance is not None:
            check_noise_variance(
                self.noise_variance, self._numpy_training_dtype(X), MIN_VARIANCE
            )
        encoding, condition = self._fit_condition(y, X.shape[0])
        rng = check_random_state(self.random_state)
        seeds = [draw_seed(rng) for _ in range(self.n_init)]
        best = None
        for seed in seeds:
            # Each fit's warnings are kept; only the selected fit's are shown.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                net = self._train(X, condition, seed, encoding, epochs)
            objective = _final_objective(net.history)
            if best is None or objective > best[0]:
                best = (objective, net, seed, caught)
            if getattr(net, "interrupted_", False):
                break
        _, net, self._seed, caught = best
        self._encoding = encoding
        # A model trained in float32 evaluates in the input's precision.
        net.module_.to(_input_dtype(X))
        return net, caught

    def _check_continuable(self):
        """Refuse a continued fit whose parameters changed where it cannot
        follow them: they were built into the fitted model and its training."""
        fitted = getattr(self, "_fitted_settings", None)
        if fitted is None:
            return
        changed = [
            name
            for name, value in self.get_params(deep=False).items()
            if name not in CONTINUABLE and not _same_setting(value, fitted[name])
        ]
        if changed:
            now = ", ".join(f"{name}={getattr(self, name)!r}" for name in changed)
            then = ", ".join(f"{name}={fitted[name]!r}" for name in changed)
            raise ValueError(
                f"{type(self).__name__} continues its fitted model (warm_start=True "
                f"or partial_fit), which was built and trained with {then}: it "
                f"cannot take {now}. Set them back, or fit anew (warm_start=False); "
                f"a continued fit takes only {', '.join(sorted(CONTINUABLE))} as "
                "they are now."
            )

    def _continue(self, X, y, epochs, restart):
        """Train a copy of the fitted net for ``epochs`` more epochs, with a
        learning-rate schedule restarted over them or resumed, at the current
        ``learning_rate_init``."""
        X = self._validate_X(X, reset=False)
        condition = self._condition(y, X.shape[0])
        net = copy.deepcopy(self.net_)
        fitted = getattr(self, "_fitted_settings", {})
        set_base_rate(
            net,
            fitted.get("learning_rate_init", self.learning_rate_init),
            self.learning_rate_init,
        )
        guard = dict(net.callbacks_).get("numerical_guard")
        if guard is not None:
            guard.advice = self._numerics_advice(X, continued=True)
        if restart:
            restart_schedule(net, epochs)
        evaluation = next(net.module_.parameters()).dtype
        dtype = self._training_dtype(X)
        net.module_.to(dtype)
        device = torch.device(net.device)
        seed = (self._seed + len(net.history)) % np.iinfo(np.int32).max
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with seeded(seed, device), thread_policy(device):
                data = _tensor_data(X, condition, dtype, device)
                self._run(net, data, epochs)
        net.module_.to(evaluation)
        return net, caught

    def _train(self, X, condition, seed, encoding, epochs):
        """One training run from ``seed``: the fitted skorch net."""
        device = resolve_device(self.device)
        dtype = self._training_dtype(X)
        split = HoldOut(self.validation_fraction) if self.early_stopping else None
        n_train = X.shape[0] - (split.n_valid(X.shape[0]) if split else 0)
        batch_size = self._batch_size(X.shape[0])
        with seeded(seed, device), thread_policy(device):
            data = _tensor_data(X, condition, dtype, device)
            module = self._build_module(
                data.x, seed=seed, encoding=encoding, **data.extras
            ).to(device, dtype)
            plan = self._training_plan(module, -(-n_train // batch_size))
            net = (plan.net_class or ObjectiveNet)(
                module,
                optimizer=torch.optim.Adam,
                lr=self.learning_rate_init,
                max_epochs=epochs,
                batch_size=batch_size,
                iterator_train=TensorBatches,
                iterator_train__shuffle=True,
                iterator_valid=TensorBatches,
                train_split=split,
                callbacks=self._callbacks(plan, X),
                device=device,
                verbose=int(self.verbose),
                callbacks__print_log=PlainPrintLog() if self.verbose >= 2 else None,
                **plan.net_kwargs,
            )
            with warnings.catch_warnings():
                # skorch warns when handed an already initialised module.
                warnings.simplefilter("ignore", UserWarning)
                net.initialize()
            net.warm_epochs_ = plan.warm_epochs
            # The recipe's planned epochs (inf: max_iter is the only limit).
            net.planned_epochs_ = plan.planned_epochs or np.inf
            net.monitor_ = self._monitor(plan)
            self._run(net, data, min(epochs, net.planned_epochs_))
        return net

    def _run(self, net, data, epochs):
        """Train ``net`` for ``epochs`` epochs; a Ctrl-C stops it (and, with
        ``on_interrupt="keep"``, keeps what the finished epochs trained)."""
        start = len(net.history)
        try:
            net.partial_fit(data, epochs=epochs)
        except KeyboardInterrupt:
            if self.on_interrupt != "keep" or net.complete_epochs() == 0:
                raise
            net.interrupted_ = True
            warnings.warn(
                f"{type(self).__name__} was interrupted in epoch "
                f"{len(net.history) + 1}: it keeps a partially trained model "
                "(on_interrupt='keep').",
                UserWarning,
                stacklevel=2,
            )
        net.epochs_run_ = len(net.history) - start

    def _batch_size(self, n_samples):
        size = 200 if self.batch_size == "auto" else self.batch_size
        return min(size, n_samples)

    def _new_integrator(self):
        # A private copy: rules cache their nodes, the user's object stays as given.
        return clone(get_integrator(self.integrator))

    # The torch dtype of every training run (None: float32 for float32 input,
    # else float64); evaluation always follows the input.
    _training_precision = None

    def _training_dtype(self, X):
        """The torch dtype of training."""
        return self._training_precision or _input_dtype(X)

    def _monitor(self, plan):
        """The history key that stopping reads (lower is better)."""
        if plan.monitor is not None:
            return f"valid_{plan.monitor}" if self.early_stopping else plan.monitor
        return "valid_loss" if self.early_stopping else "train_loss"

    def _callbacks(self, plan, X):
        early_stopping = EarlyStoppingAfter(
            plan.warm_epochs,
            monitor=self._monitor(plan),
            patience=self.n_iter_no_change,
            threshold=self.tol,
            threshold_mode="abs",
            load_best=self.early_stopping,
            sink=print if self.verbose else noop,
        )
        callbacks = [
            *plan.callbacks,
            ("numerical_guard", NumericalGuard(self._numerics_advice(X))),
            ("early_stopping", early_stopping),
        ]
        if self.verbose == 1:
            bar = EpochProgressBar(self.max_iter, type(self).__name__)
            callbacks.append(("progress_bar", bar))
        return callbacks + list(self.callbacks or [])

    def _numerics_advice(self, X, continued=False):
        """What to change when training blows up, given these data and settings."""
        tips = [f"lower learning_rate_init (now {self.learning_rate_init:g})"]
        spread = np.nanstd(X, axis=0) if X.size else np.ones(1)
        centre = np.abs(np.nanmean(X, axis=0)) if X.size else np.zeros(1)
        if spread.max() > 1e3 or spread.min() < 1e-3 or centre.max() > 1e3:
            tips.append("standardise X (e.g. with StandardScaler)")
        # Only where training follows the input's precision.
        as_float64 = np.empty((0, X.shape[1]))
        if X.dtype == np.float32 and self._training_dtype(as_float64) == torch.float64:
            tips.append("use float64 input")
        if self.noise_variance is not None:
            tips.append(
                ("fit anew (warm_start=False) with " if continued else "set ")
                + f"noise_variance (now {self.noise_variance:g}) nearer "
                "the data's variance, or None to learn it"
            )
        return "; ".join(tips)

    def _store_activity(self, X, y):
        """Mark the latents that carry information about x: those whose
        posterior mean varies over (up to 2,000) training rows with variance
        above 0.01, the activity test of Burda, Grosse and Salakhutdinov
        (2016). A collapsed latent sits at the prior whatever x is."""
        X = self._validate_X(X, reset=False)[:ACTIVITY_ROWS]
        y = None if y is None else np.asarray(y)[:ACTIVITY_ROWS]
        Z = self._evaluate(X, "posterior_mean", y)
        self.active_components_ = np.var(Z, axis=0) > ACTIVITY_THRESHOLD

    def _store_history(self, net, check_convergence):
        history = net.history
        self.n_iter_ = len(history)
        self.loss_curve_ = [float(v) for v in history[:, "train_loss"]]
        if self.early_stopping:
            # The monitored held-out ELBO where the recipe records one.
            key = "valid_score_loss" if "valid_score" in history[-1] else "valid_loss"
            self.validation_scores_ = [-float(v) for v in history[:, key]]
            self.best_validation_score_ = max(self.validation_scores_)
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = min(self.loss_curve_)
        # Warn only when max_iter cut the fit short of its plan, unconverged.
        planned = getattr(net, "planned_epochs_", np.inf)
        short = check_convergence and planned > net.epochs_run_
        if short and not converged(
            history[:, net.monitor_], self.n_iter_no_change, self.tol, net.warm_epochs_
        ):
            plan = f" (its schedule plans {planned})" if np.isfinite(planned) else ""
            warnings.warn(
                f"{type(self).__name__} reached max_iter={self.max_iter} epochs "
                f"without converging{plan}; increase max_iter, or continue with "
                "warm_start=True.",
                ConvergenceWarning,
                stacklevel=5,
            )


def _input_dtype(X):
    """float32 for float32 input, else float64 (as a torch dtype)."""
    return torch.float32 if X.dtype == np.float32 else torch.float64


def _final_objective(history):
    """What restarts compare: the monitored score (the ELBO on fixed rows)
    where the recipe records one, else minus the last training loss."""
    row = history[-1]
    return float(row["score"]) if "score" in row else -float(row["train_loss"])


def _tensor_data(X, condition, dtype, device):
    """X and the encoded conditioning variables as tensors on ``device``."""
    x = torch.tensor(X, dtype=dtype, device=device)
    extras = {k: as_tensor(v, dtype, device) for k, v in condition.items()}
    return TensorData(x, **extras)


def as_tensor(array, dtype, device):
    """Integer arrays (class codes) as int64, anything else in ``dtype``."""
    array = np.asarray(array)
    kind = torch.long if array.dtype.kind in "iu" else dtype
    return torch.as_tensor(array, dtype=kind, device=device)


def _same_setting(a, b):
    """Whether two parameter values are the same setting (arrays by value)."""
    if a is b:
        return True
    try:
        return bool(np.shape(a) == np.shape(b) and np.all(np.asarray(a == b)))
    except (TypeError, ValueError):
        return False
