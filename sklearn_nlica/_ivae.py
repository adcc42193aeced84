"""IdentifiableVAE: the iVAE, a VAE whose prior is conditioned on an observed u."""

import math
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import Callback, EarlyStopping, GradientNormClipping
from skorch.utils import noop

from ._base import LatentVariableModel, _draw_seed, resolve_device, seeded
from ._marginal import signed_logsumexp
from ._modules import (
    PRIOR_FAMILIES,
    ConditionalPrior,
    FullCovarianceGaussianEncoder,
    GaussianDecoder,
    GaussianEncoder,
    NONLINEAR_BRANCHES,
    IdentifiableVAEModule,
    ResidualGaussianDecoder,
    ResidualGaussianEncoder,
    posterior_log_prob,
    posterior_marginal_variance,
    posterior_points,
    posterior_total_correlation,
)
from ._vae import _IW_CHUNK_ELEMENTS
from .integrators import QMC, MonteCarlo

# When u is not given to score_samples / log_likelihood / sample, it is drawn
# from (or summed over) the training distribution of u: all classes of a
# discrete u, this many stored training rows of a continuous one.
_N_AUX_REFERENCE = 256


class _KLWarmup(Callback):
    """Raise the KL weight of the module linearly from ~0 to 1 over the first
    ``n_epochs`` epochs, batch by batch (the warm-up of Sonderby et al., 2016)."""

    def __init__(self, n_epochs, start=0.0):
        self.n_epochs = n_epochs
        self.start = start

    def on_train_begin(self, net, X=None, **kwargs):
        self.step_ = 0
        self.n_steps_ = max(1, round(self.n_epochs * _batches_per_epoch(net, X)))
        net.module_.kl_weight = self._weight()

    def _weight(self):
        t = min(1.0, self.step_ / self.n_steps_)
        return self.start + (1.0 - self.start) * t

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training:
            net.module_.kl_weight = self._weight()
            self.step_ += 1

    def on_epoch_begin(self, net, **kwargs):
        # Validation batches (early stopping) are scored with the current weight.
        pass

    def on_train_end(self, net, **kwargs):
        net.module_.kl_weight = 1.0


class _CosineLearningRate(Callback):
    """Cosine decay of Adam's learning rate, batch by batch, from
    ``learning_rate_init`` at the first step to ``final_fraction`` of it at
    ``max_iter`` epochs."""

    def __init__(self, final_fraction=0.0):
        self.final_fraction = final_fraction

    def on_train_begin(self, net, X=None, **kwargs):
        self.step_ = 0
        self.n_steps_ = max(1, round(net.max_epochs * _batches_per_epoch(net, X)))
        self.lr_ = net.lr

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if not training:
            return
        t = min(1.0, self.step_ / self.n_steps_)
        f = self.final_fraction
        lr = self.lr_ * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * t)))
        for group in net.optimizer_.param_groups:
            group["lr"] = lr
        self.step_ += 1


class _LinearWarmStart(Callback):
    """Train with the nonlinear branches of the residual encoder and decoder
    frozen for the first ``n_epochs`` epochs: a linear iVAE first."""

    def __init__(self, n_epochs):
        self.n_epochs = n_epochs

    def _set(self, net, trainable):
        for name, param in net.module_.named_parameters():
            if name.startswith(NONLINEAR_BRANCHES):
                param.requires_grad_(trainable)

    def on_train_begin(self, net, **kwargs):
        self.epoch_ = 0
        self._set(net, self.n_epochs <= 0)

    def on_epoch_end(self, net, **kwargs):
        self.epoch_ += 1
        if self.epoch_ == self.n_epochs:
            self._set(net, True)

    def on_train_end(self, net, **kwargs):
        self._set(net, True)


class _EarlyStoppingAfter(EarlyStopping):
    """Early stopping that only starts counting once the warm-up is over:
    before, the objective is not yet the ELBO and rises by design."""

    def __init__(self, start_epoch, **kwargs):
        super().__init__(**kwargs)
        self.start_epoch = start_epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) > self.start_epoch:
            super().on_epoch_end(net, **kwargs)


def _batches_per_epoch(net, dataset):
    n = len(dataset)
    split = net.train_split
    if split is not None:
        n -= max(1, int(round(split.validation_fraction * n)))
    return math.ceil(n / min(net.batch_size, max(n, 1)))


class IdentifiableVAE(LatentVariableModel):
    _optimal_noise = True

    """Identifiable VAE (iVAE): nonlinear ICA with an auxiliary variable.

    DRAFT docstring.
    """

    _parameter_constraints: dict = {
        **LatentVariableModel._parameter_constraints,
        "prior": [StrOptions(set(PRIOR_FAMILIES))],
        "aux_type": [StrOptions({"auto", "discrete", "continuous"})],
        "prior_hidden_layer_sizes": ["array-like"],
        "conditional_encoder": ["boolean"],
        "posterior_covariance": [StrOptions({"full", "diagonal"})],
        "n_mc_samples": [Interval(Integral, 1, None, closed="left")],
        "kl_warmup": [Interval(Real, 0, None, closed="left")],
        "linear_warm_start": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "learning_rate_schedule": [StrOptions({"constant", "cosine"})],
        "max_grad_norm": [None, Interval(Real, 0, None, closed="neither")],
    }

    def __init__(self, n_components=2, *, hidden_layer_sizes=(64, 64),
                 activation="leaky_relu", noise_variance=None, prior="gaussian",
                 aux_type="auto", prior_hidden_layer_sizes=(64,),
                 conditional_encoder=False, posterior_covariance="full", integrator="qmc", n_mc_samples=1,
                 n_nodes=256, linear_warm_start=10, kl_warmup=0, n_init=1,
                 learning_rate_schedule="cosine", max_grad_norm=100.0,
                 max_iter=30, tol=1e-4, n_iter_no_change=10, early_stopping=False,
                 validation_fraction=0.1, batch_size=256, learning_rate_init=1e-2,
                 device="cpu", random_state=None, verbose=0, callbacks=None):
        self.n_components = n_components
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.noise_variance = noise_variance
        self.prior = prior
        self.aux_type = aux_type
        self.prior_hidden_layer_sizes = prior_hidden_layer_sizes
        self.conditional_encoder = conditional_encoder
        self.posterior_covariance = posterior_covariance
        self.integrator = integrator
        self.n_mc_samples = n_mc_samples
        self.n_nodes = n_nodes
        self.linear_warm_start = linear_warm_start
        self.kl_warmup = kl_warmup
        self.n_init = n_init
        self.learning_rate_schedule = learning_rate_schedule
        self.max_grad_norm = max_grad_norm
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    # ---- the auxiliary variable ----------------------------------------------

    def _check_aux(self, y, n_samples, reset):
        """Validate u and encode it: class codes (int64) or covariates (2-D float)."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires the auxiliary variable u as y "
                "(segment labels, a time index or covariates with one row per "
                "sample); got y=None.")
        if sp.issparse(y):
            raise TypeError("A sparse auxiliary variable y is not supported; pass a "
                            "dense array.")
        y = np.asarray(y) if not hasattr(y, "__array__") or np.ndim(y) == 0 else y
        if np.ndim(y) not in (1, 2):
            raise ValueError("The auxiliary variable y must be 1-D (labels, a time "
                             f"index) or 2-D (covariates); got shape {np.shape(y)}.")
        if np.shape(y)[0] != n_samples:
            raise ValueError(f"y has {np.shape(y)[0]} rows but X has {n_samples} "
                             "samples; the auxiliary variable needs one row per "
                             "sample.")
        if reset:
            self._aux_discrete = self._is_discrete(y)
        if self._aux_discrete:
            return self._encode_labels(y, reset)
        Y = check_array(y, ensure_2d=False, dtype=[np.float64, np.float32],
                        input_name="y", ensure_min_samples=0)
        Y = Y.reshape(len(Y), -1)
        if reset:
            self.n_aux_features_ = Y.shape[1]
            self._aux_mean = Y.mean(0)
            scale = Y.std(0)
            self._aux_scale = np.where(scale > 0, scale, 1.0)
        elif Y.shape[1] != self.n_aux_features_:
            raise ValueError(f"y has {Y.shape[1]} columns, but {type(self).__name__} "
                             f"was fitted with {self.n_aux_features_}.")
        # Standardised: a raw time index in the thousands would saturate the
        # prior network.
        return (Y - self._aux_mean) / self._aux_scale

    def _is_discrete(self, y):
        if self.aux_type != "auto":
            return self.aux_type == "discrete"
        y = np.asarray(y)
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

    def _encode_labels(self, y, reset):
        y = check_array(y, ensure_2d=False, dtype=None, input_name="y",
                        ensure_min_samples=0)
        if y.ndim == 2:
            if y.shape[1] != 1:
                raise ValueError("Discrete u must be a single column of labels; got "
                                 f"{y.shape[1]} columns.")
            y = y.ravel()
        if y.dtype.kind == "c":
            raise ValueError("Complex data not supported for y.")
        if reset:
            self.classes_, codes = np.unique(y, return_inverse=True)
            self.aux_class_weights_ = np.bincount(codes, minlength=len(self.classes_)
                                                  ) / len(codes)
            return codes.astype(np.int64)
        codes = np.searchsorted(self.classes_, y)
        codes = np.clip(codes, 0, len(self.classes_) - 1)
        unseen = self.classes_[codes] != y
        if unseen.any():
            raise ValueError(f"y contains labels not seen during fit: "
                             f"{np.unique(y[unseen])[:5].tolist()}")
        return codes.astype(np.int64)

    def _aux_tensor(self, codes, device):
        if self._aux_discrete:
            return torch.as_tensor(codes, dtype=torch.long, device=device)
        return torch.as_tensor(codes, dtype=self._dtype, device=device)

    # ---- fitting -------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the iVAE to ``X`` given the auxiliary variable ``y`` = u.

        DRAFT
        """
        X = self._validate_X(X, reset=True)
        aux = self._check_aux(y, X.shape[0], reset=True)
        self._prior_hidden = self._check_sizes(self.prior_hidden_layer_sizes,
                                               "prior_hidden_layer_sizes")
        device = resolve_device(self.device)
        self._dtype = torch.float32 if X.dtype == np.float32 else torch.float64
        u = self._aux_tensor(aux, device)
        rng = check_random_state(self.random_state)
        seeds = [_draw_seed(rng) for _ in range(self.n_init)]
        best = None
        for seed in seeds:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                self._fit(X, seed=seed, u=u)
            score = -self.loss_curve_[-1]
            if best is None or score > best[0]:
                best = (score, self.net_, self._seed, caught)
        score, self.net_, self._seed, caught = best
        self._store_history(self.net_, warn=False)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self._store_reference_aux(aux, device)
        return self

    def _store_history(self, net, warn=True):
        if warn:
            return super()._store_history(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            super()._store_history(net)

    def _store_reference_aux(self, aux, device):
        if self._aux_discrete:
            return
        rng = np.random.RandomState(self._seed % (2**32))
        rows = np.sort(rng.permutation(len(aux))[:_N_AUX_REFERENCE])
        self._aux_reference = aux[rows]

    def _check_sizes(self, sizes, name):
        sizes = tuple(np.atleast_1d(sizes).tolist()) if np.ndim(sizes) else (sizes,)
        if not all(isinstance(h, Integral) and h > 0 for h in sizes):
            raise ValueError(f"{name} must be a tuple of positive integers (or () for "
                             f"a linear map), got {sizes!r}.")
        return tuple(int(h) for h in sizes)

    def _build_module(self, x):
        optimal = self._optimal_noise and self.noise_variance is None
        mode = "fixed" if optimal or self.noise_variance is not None else "shared"
        data_variance = float(x.var(0).mean()) if len(x) > 1 else 1.0
        initial = max(data_variance, 1e-3) if self.noise_variance is None else self.noise_variance
        if self._aux_discrete:
            prior = ConditionalPrior(self.n_components, family=self.prior,
                                     n_classes=len(self.classes_))
            n_aux_in = len(self.classes_)
        else:
            prior = ConditionalPrior(self.n_components, family=self.prior,
                                     n_aux=self.n_aux_features_,
                                     hidden_layer_sizes=self._prior_hidden,
                                     activation=self.activation)
            n_aux_in = self.n_aux_features_
        n_in = x.shape[1] + (n_aux_in if self.conditional_encoder else 0)
        residual = self._residual()
        if self.posterior_covariance == "full":
            encoder = FullCovarianceGaussianEncoder(n_in, self.n_components, self._hidden,
                                                    self.activation, residual=residual)
        else:
            encoder = (ResidualGaussianEncoder if residual else GaussianEncoder)(
                n_in, self.n_components, self._hidden, self.activation)
        decoder = (ResidualGaussianDecoder if residual else GaussianDecoder)(
            self.n_components, x.shape[1], self._hidden, self.activation, variance=mode,
            noise_variance=initial, mean_init=x.mean(0))
        # Equal-weight random rules get independent nodes per row in training.
        independent = isinstance(self._integrator, (MonteCarlo, QMC))
        return IdentifiableVAEModule(encoder, decoder, prior, self._integrator,
                                     self.n_mc_samples,
                                     conditional_encoder=self.conditional_encoder,
                                     independent_rows=independent,
                                     optimal_noise=optimal)

    def _warm_epochs(self):
        """Epochs that train something other than the final model's ELBO."""
        return max(math.ceil(self.kl_warmup),
                   self.linear_warm_start if self._residual() else 0)

    def _residual(self):
        return self.linear_warm_start > 0 and len(self._hidden) > 0

    def _callbacks(self):
        callbacks = super()._callbacks()
        monitor = "valid_loss" if self.early_stopping else "train_loss"
        start = self._warm_epochs()
        callbacks = [
            (name, _EarlyStoppingAfter(
                start, monitor=monitor, patience=self.n_iter_no_change,
                threshold=self.tol, threshold_mode="abs",
                load_best=self.early_stopping, sink=print if self.verbose else noop))
            if name == "early_stopping" else (name, cb)
            for name, cb in callbacks]
        extra = []
        if self._residual():
            extra.append(("linear_warm_start", _LinearWarmStart(self.linear_warm_start)))
        if self.kl_warmup > 0:
            extra.append(("kl_warmup", _KLWarmup(self.kl_warmup)))
        if self.learning_rate_schedule == "cosine":
            extra.append(("lr_schedule", _CosineLearningRate()))
        if self.max_grad_norm is not None:
            extra.append(("gradient_clipping",
                          GradientNormClipping(gradient_clip_value=self.max_grad_norm)))
        return extra + callbacks

    def _converged(self, history):
        # The warm-up epochs optimise another objective: judge the rest only.
        monitor = "valid_loss" if self.early_stopping else "train_loss"
        losses = np.asarray(history[:, monitor], dtype=float)[self._warm_epochs():]
        if len(losses) <= self.n_iter_no_change:
            return False
        best_before = losses[: -self.n_iter_no_change].min()
        return losses[-self.n_iter_no_change:].min() > best_before - self.tol

    # ---- fitted model --------------------------------------------------------

    def _transform_tensor(self, x, u=None):
        return self.module_.encode(x, u)[0]

    def transform(self, X, u=None):
        """DRAFT"""
        check_is_fitted(self)
        if self.conditional_encoder:
            if u is None:
                raise ValueError("This IdentifiableVAE has conditional_encoder=True: "
                                 "transform needs the auxiliary variable, "
                                 "transform(X, u=...).")
            aux = self._check_aux(u, _num_rows(X), reset=False)
            return self._predict(X, self._transform_tensor,
                                 u=self._aux_tensor(aux, self.device_))
        return self._predict(X, self._transform_tensor)

    def fit_transform(self, X, y=None, **fit_params):
        """DRAFT"""
        self.fit(X, y, **fit_params)
        return self.transform(X, u=y if self.conditional_encoder else None)

    def _score_samples_tensor(self, x, rule, u=None):
        if u is not None:
            return self.module_.elbo(x, u, rule)
        return self._marginal_tensor(x, rule, self._elbo_per_aux)

    def _reference(self):
        """Candidate values of u (tensor) and their log-probabilities."""
        device = self.device_
        if self._aux_discrete:
            u = torch.arange(len(self.classes_), device=device)
            log_p = torch.log(torch.as_tensor(self.aux_class_weights_,
                                              dtype=self._dtype, device=device))
        else:
            u = torch.as_tensor(self._aux_reference, dtype=self._dtype, device=device)
            log_p = torch.full((len(u),), -math.log(len(u)), dtype=self._dtype,
                               device=device)
        return u, log_p

    def _marginal_tensor(self, x, rule, per_aux):
        # log sum_u p(u) exp(bound(x | u)) <= log sum_u p(u) p(x | u) = log p(x).
        u, log_p = self._reference()
        values = per_aux(x, u, rule)  # (B, K)
        return torch.logsumexp(values + log_p, dim=1)

    def _elbo_per_aux(self, x, u, rule):
        module = self.module_
        loc, var = module.prior(u)  # (K, m)
        if not module.conditional_encoder:
            mean, spread = module.encode(x)
            rec = module.reconstruction(x, mean, spread, rule)  # (B,)
            kl = module.prior.kl(mean.unsqueeze(1),
                                 posterior_marginal_variance(spread).unsqueeze(1), loc, var)
            return (rec - posterior_total_correlation(spread)).unsqueeze(1) - kl
        cols = [module.elbo(x, u[k].expand(len(x), *u.shape[1:]), rule)
                for k in range(len(u))]
        return torch.stack(cols, dim=1)

    def score_samples(self, X, y=None):
        """DRAFT"""
        check_is_fitted(self)
        rule = self._evaluation_rule(self.n_components)
        if y is None:
            return self._predict(X, self._score_samples_tensor, rule)
        aux = self._check_aux(y, _num_rows(X), reset=False)
        return self._predict(X, self._score_samples_tensor, rule,
                             u=self._aux_tensor(aux, self.device_))

    def score(self, X, y=None):
        """DRAFT"""
        return float(np.mean(self.score_samples(X, y)))

    def log_likelihood(self, X, y=None, n_samples=None):
        """DRAFT"""
        check_is_fitted(self)
        n_samples = max(self.n_nodes, 1024) if n_samples is None else n_samples
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        rule = self._evaluation_rule(self.n_components, n_samples)
        X = self._validate_X(X, reset=False)
        extras = {}
        if y is not None:
            aux = self._check_aux(y, X.shape[0], reset=False)
            extras["u"] = self._aux_tensor(aux, self.device_)
        n_nodes = rule.nodes.shape[0]
        chunk = max(1, _IW_CHUNK_ELEMENTS // (n_nodes * X.shape[1]))
        if y is None:
            chunk = max(1, chunk // len(self._reference()[0]))
        parts = [self._predict(X[s:s + chunk], self._log_likelihood_tensor, rule,
                               **{k: v[s:s + chunk] for k, v in extras.items()})
                 for s in range(0, X.shape[0], chunk)]
        return np.concatenate(parts) if parts else np.empty(0, X.dtype)

    def _log_likelihood_tensor(self, x, rule, u=None):
        if u is not None:
            return self._iw_given_aux(x, u, rule)
        return self._marginal_tensor(x, rule, self._iw_per_aux)

    def _iw_given_aux(self, x, u, rule):
        module = self.module_
        mean, spread = module.encode(x, u)
        z = posterior_points(mean, spread, rule.nodes)  # (B, K, m)
        loc, var = module.prior(u)
        log_ratio = (module.decoder.log_prob(x.unsqueeze(1), z)
                     + module.prior.log_prob(z, loc.unsqueeze(1), var.unsqueeze(1))
                     - posterior_log_prob(z, mean, spread))
        return signed_logsumexp(log_ratio + rule.log_weights, rule.signs, dim=1)

    def _iw_per_aux(self, x, u, rule):
        cols = [self._iw_given_aux(x, u[k].expand(len(x), *u.shape[1:]), rule)
                for k in range(len(u))]
        return torch.stack(cols, dim=1)

    def _sample_latent(self, n_samples, u=None):
        prior = self.module_.prior
        if u is None:
            cand, log_p = self._reference()
            index = torch.multinomial(log_p.exp().cpu(), n_samples, replacement=True)
            u = cand[index.to(cand.device)]
        loc, variance = prior(u.to(self.device_))
        return prior.draw(loc.cpu(), variance.cpu())

    def sample(self, n_samples=1, y=None, random_state=None):
        """DRAFT"""
        check_is_fitted(self)
        u = None
        if y is not None:
            n_rows = np.shape(y)[0] if np.ndim(y) else 1
            if np.ndim(y) == 0:
                y = np.asarray([y])
            if n_rows == 1 and isinstance(n_samples, Integral) and n_samples > 1:
                y = np.repeat(np.asarray(y), n_samples, axis=0)
            aux = self._check_aux(y, n_samples, reset=False)
            u = self._aux_tensor(aux, torch.device("cpu"))
        return self._draw(n_samples, random_state, u=u)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags


def _num_rows(X):
    return X.shape[0] if hasattr(X, "shape") else len(X)


