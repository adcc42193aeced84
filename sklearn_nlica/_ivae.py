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

from ._base import LatentVariableModel, _draw_seed, resolve_device
from ._marginal import signed_logsumexp
from ._modules import (
    NONLINEAR_BRANCHES,
    PRIOR_FAMILIES,
    ConditionalPrior,
    FullCovarianceGaussianEncoder,
    GaussianDecoder,
    GaussianEncoder,
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
    """Raise the KL weight of the module linearly from 0 to 1 over the first
    ``n_epochs`` epochs, batch by batch (the warm-up of Sonderby et al., 2016)."""

    def __init__(self, n_epochs):
        self.n_epochs = n_epochs

    def on_train_begin(self, net, X=None, **kwargs):
        self.step_ = 0
        self.n_steps_ = max(1, round(self.n_epochs * _batches_per_epoch(net, X)))
        net.module_.kl_weight = 0.0

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        # Validation batches (early stopping) are scored with the current weight.
        if training:
            net.module_.kl_weight = min(1.0, self.step_ / self.n_steps_)
            self.step_ += 1

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
        n -= max(1, round(split.validation_fraction * n))
    return math.ceil(n / net.batch_size)


class IdentifiableVAE(LatentVariableModel):
    """Identifiable VAE (iVAE): nonlinear ICA with an observed auxiliary variable.

    The generative model of Khemakhem, Kingma, Monti and Hyvarinen (2020) is
    x | z ~ N(g(z), sigma^2 I) with g an MLP decoder, and a conditionally
    factorial prior given an observed auxiliary variable u (segment labels,
    a time index, covariates)::

        p(z | u) = prod_i N(z_i; mu_i(u), s_i^2(u)),

    the exponential family with sufficient statistics (z, z^2) whose
    identifiability theory (k = 2) recovers the sources up to permutation
    and scaling when u moves the sources' means and variances enough. The
    natural parameters are a table indexed by the class of a discrete u, or
    an MLP of a continuous u. An MLP encoder q(z | x) (or q(z | x, u), see
    ``conditional_encoder``) is trained with the decoder and the prior on
    the evidence lower bound of log p(x | u)::

        ELBO(x, u) = E_q[log p(x | z)] - KL(q(z | x) || p(z | u)),

    with the reparameterisation for the first term and the KL in closed
    form. ``fit(X, y)`` takes u as ``y``; :meth:`transform` is the posterior
    mean, which needs no u with the default encoder, so the estimator works
    in any :class:`~sklearn.pipeline.Pipeline`.

    Training recipe (the defaults), each part measured on the paper's
    simulation (``benchmarks/bench_ivae.py``; details in the notes below):

    - a full-covariance Gaussian posterior (``posterior_covariance="full"``):
      with a diagonal one, the ELBO's gap KL(q || p(z | x, u)) is smallest
      for decoders with orthogonal Jacobian columns, a bias of order one nat
      that competes with the prior's pull towards the sources. Started at
      the true linear model, a diagonal-posterior iVAE drifts from MCC 0.997
      to 0.93 as its ELBO improves; a full-covariance one stays at 0.997
      and its ELBO reaches the true log-likelihood;
    - the decoder noise variance set, at every step, to the batch's
      maximiser of the ELBO (the mean squared reconstruction error per
      feature) rather than learned by gradient, which took most of the
      budget to shrink from the data variance to the noise level;
    - independent reparameterisation noise for every row of a batch (the
      shared rule of :class:`VAEICA` makes a whole batch share one draw,
      so its gradient noise does not average out);
    - a linear warm start: residual encoder and decoder (a linear map plus
      an MLP branch that starts at zero) trained with the MLP branches
      frozen for ``linear_warm_start`` epochs, i.e. a linear iVAE (linear
      ICA by nonstationarity) first. Trained from scratch, the nonlinear
      model settles in the first epochs in a local optimum that mixes the
      sources cone by cone (leaky-ReLU mixings are linear on cones);
    - Adam at 1e-2 with a cosine decay to 0 over ``max_iter`` epochs and
      gradient-norm clipping, which survives a bad batch;
    - a discriminative term (``contrastive_weight``): the training objective
      is ``ELBO(x, u) + contrastive_weight * log p(u | E_q[z])``, where
      p(u | z) is the model's own prior turned into a classifier of u by
      Bayes' rule (no extra parameters). This is the hybrid
      generative-discriminative objective of the semi-supervised VAE [2]_,
      with the classifier of generalized contrastive learning [3]_, whose
      optimum is the sources too: on infinite noiseless data both terms are
      maximised by the generating model. The ELBO only asks each z to be
      likely under its own segment; the classifier also asks it to be
      unlikely under the others, a much stronger pull towards latents that
      separate the segments. It takes the median MCC on the paper's
      simulation from 0.74 to 0.95 (see the notes). :meth:`score` stays the
      plain ELBO.

    Weighting or annealing the objective (KL warm-up from 0, or from 3 or
    10 down to 1, deterministic annealing of sigma^2), the authors' weighted
    objective (100 x reconstruction, 10 x prior), a variance-only prior and
    wider networks were measured too and did not recover the sources better;
    restarts selected by the ELBO (``n_init``) help where the ELBO ranks
    the optima (two sources) but not reliably with five.

    Parameters
    ----------
    n_components : int, default=2
        Latent dimension m (the number of sources).
    hidden_layer_sizes : tuple of int, default=(64, 64, 64)
        Hidden widths of the decoder g and of the encoder. ``()`` gives a
        linear model.
    activation : {"relu", "leaky_relu", "tanh", "sigmoid", "gelu", "identity"}, \
            default="leaky_relu"
        Hidden-layer nonlinearity (leaky ReLU has slope 0.2), also used by
        the prior network of a continuous u.
    noise_variance : float or None, default=None
        Decoder noise variance sigma^2: None sets it to the ELBO's maximiser
        (the batch's mean squared reconstruction error per feature) at each
        training step; a float keeps it fixed.
    prior : {"gaussian", "variance", "laplace"}, default="gaussian"
        Family of p(z_i | u): a Gaussian with mean and variance depending on
        u (the k = 2 exponential family of the theory), a zero-mean Gaussian
        whose variance alone depends on u, or a Laplace distribution with
        location and scale depending on u. The KL is in closed form for all
        three.
    aux_type : {"auto", "discrete", "continuous"}, default="auto"
        How to read u. ``"discrete"``: class labels (any values, e.g.
        segment numbers or strings), each class with its own row of prior
        parameters. ``"continuous"``: covariates of shape (n_samples,) or
        (n_samples, k), standardised and fed to an MLP. ``"auto"`` treats a
        1-D u of strings or booleans, or of integer values with at most
        ``n_samples // 2`` distinct values, as labels, and anything else
        (real values, a time index with one value per row, several columns)
        as continuous.
    prior_hidden_layer_sizes : tuple of int, default=(64,)
        Hidden widths of the prior network of a continuous u.
    conditional_encoder : bool, default=False
        Use q(z | x, u) as in the paper (u one-hot encoded or standardised
        and appended to x). :meth:`transform` then needs u: pass it as
        ``transform(X, u=...)``, or in a pipeline route it with metadata
        routing (``set_transform_request(u=True)``).
    posterior_covariance : {"full", "diagonal"}, default="full"
        Covariance of q: a full matrix (Cholesky factor from the encoder) or
        a diagonal. See the recipe above.
    integrator : str or Integrator, default="qmc"
        Rule for E_q[log p(x | z)] over the reparameterisation noise; see
        :mod:`sklearn_nlica.integrators`. During training, random rules
        give each row its own randomly shifted copy of their nodes.
    n_mc_samples : int, default=1
        Nodes per sample for the reconstruction term during training.
    n_nodes : int, default=256
        Nodes per sample at evaluation (:meth:`score_samples`).
    linear_warm_start : int, default=10
        Epochs at the start of training during which only the linear parts
        of the (then residual) encoder and decoder, the prior and the noise
        move. 0 trains plain MLPs from the start. Ignored for a linear model.
    contrastive_weight : float, default=20.0
        Weight of log p(u | z) at the posterior mean in the training
        objective (see the recipe above); 0 trains on the plain ELBO. A
        discrete u is classified among all its classes (with their training
        frequencies as p(u)); a continuous u among the batch's rows (the
        InfoNCE estimate), which needs ``batch_size`` of 2 or more.
    kl_warmup : float, default=0
        Epochs over which the weight of the KL term rises linearly from 0 to
        1 (KL annealing). The objective is the ELBO from then on; 0 trains
        on the ELBO throughout.
    n_init : int, default=1
        Number of initialisations; the one with the best final training
        objective (the ELBO plus the contrastive term) is kept. With the
        defaults, fits of different seeds agree to within 0.04 in MCC on
        the paper's simulation, so the default is 1 (see the notes for the
        failures restarts catch).
    learning_rate_schedule : {"cosine", "constant"}, default="cosine"
        ``"cosine"`` decays Adam's learning rate from ``learning_rate_init``
        to 0 over ``max_iter`` epochs, step by step.
    max_grad_norm : float or None, default=100.0
        Clip the gradient's Euclidean norm to this value at every step (None:
        no clipping).
    max_iter : int, default=30
        Maximum number of epochs.
    tol : float, default=1e-4
        Minimum improvement of the loss (nats per sample) that counts.
    n_iter_no_change : int, default=10
        Stop after this many epochs without a ``tol`` improvement of the
        training loss (or of the validation loss with ``early_stopping``),
        counted from the end of the warm starts.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data, stop on its loss and
        restore the best epoch's weights.
    validation_fraction : float, default=0.1
        Share of the data held out for early stopping.
    batch_size : int or "auto", default=256
        Mini-batch size; "auto" is ``min(200, n_samples)``.
    learning_rate_init : float, default=1e-2
        Adam's (initial) learning rate.
    device : str or torch.device, default="cpu"
        "cpu", "cuda", "cuda:N", "mps" or "auto" (the best available).
    random_state : int, RandomState instance or None, default=None
        Fixes initialisation, batching and every random draw; the same value
        gives the same model, bitwise on the CPU. The caller's global torch
        RNG is left untouched.
    verbose : int, default=0
        0 silent, 1 a progress bar over epochs, 2 one line per epoch.
    callbacks : list of (name, skorch Callback) or None, default=None
        Extra skorch callbacks.

    Attributes
    ----------
    net_ : ObjectiveNet
        The fitted skorch net (history, callbacks, optimizer).
    module_ : torch.nn.Module
        The fitted torch module, with ``encoder``, ``decoder`` and ``prior``
        submodules.
    classes_ : ndarray of shape (n_classes,)
        The labels of a discrete u (absent for a continuous u).
    aux_class_weights_ : ndarray of shape (n_classes,)
        Share of the training rows in each class of a discrete u.
    n_aux_features_ : int
        Number of columns of a continuous u (absent for a discrete u).
    noise_variance_ : float
        Fitted sigma^2.
    n_iter_ : int
        Number of epochs run.
    loss_curve_ : list of float
        Training loss of each epoch: minus the mean training objective,
        nats per sample (the ELBO plus the contrastive term, with the KL
        weighted during a KL warm-up).
    best_loss_ : float or None
        Smallest training loss (None with ``early_stopping``).
    validation_scores_ : list of float or None
        Held-out mean objective of each epoch (with ``early_stopping``).
    best_validation_score_ : float or None
        Best of ``validation_scores_``.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names seen during fit, when X has string column names.

    See Also
    --------
    VAEICA : The same VAE with an unconditional N(0, I) prior (not identifiable).
    sklearn.decomposition.FastICA : Linear ICA.

    Notes
    -----
    On the iVAE paper's simulation, ``make_segmented_sources(40, 1000, 5,
    5)``, three mixing layers and no sensor noise, with the nonlinearity of
    the authors' released configuration (``activation="xtanh"``), the
    defaults reach a median MCC of 0.95 over five data draws (0.91 to 0.96
    per fit, six model seeds each; VAEICA 0.59, FastICA 0.64) in about 24 s
    per fit on one CPU thread: see ``benchmarks/bench_ivae.py``. On the
    plain ELBO (``contrastive_weight=0``) the same recipe reaches 0.74
    (0.65 to 0.85 per fit), and no variation of it measured within a 30 s
    budget did better (fixed noise variance 1e-3 or 1e-2, learning rate
    3e-3 or 3e-2, diagonal posterior, variance-only prior, a conditional
    encoder, no or a shorter linear warm start, wider, tanh or GELU
    networks, batches of 64 to 1024, two restarts, 200 epochs): those fits
    stall at a mixed solution, 1.4 to 4 nats per sample below the exact
    log p(x | u) of the generating model.

    The contrastive weight trades two failure modes. Too weak (10 or 15),
    some fits still stall at a mixed solution (MCC 0.73 to 0.78 on one data
    draw). Too strong (30), a source can fold: the latent follows ``|s|``
    instead of s (for centred sources whose variance moves with u the two
    classify u equally well; only the reconstruction tells them apart),
    MCC 0.76 in half the fits on one data draw and in one of six on a small
    three-source problem. 20 avoided both in all 30 fits and 6 small fits
    measured. Both failures lower the ELBO by 0.5 to 2 nats per sample, so
    ``n_init`` > 1 selects the good fit where the time is available.
    Without the linear warm start the contrastive objective stalls too
    (0.69 to 0.73).

    With one nonlinear mixing layer the plain ELBO reaches 0.89, with
    linear mixing 1.00. The leaky-ReLU mixing of the paper's text
    (``--activation leaky_relu``) is harder: median 0.69 over the five data
    draws at one model seed (0.57 to 0.92; plain ELBO 0.58, VAEICA 0.49,
    FastICA 0.53), 3.5 to 4.6 nats below the exact log p(x | u). Sensor
    noise caps what any method can recover: at ``noise_std=0.1`` a
    supervised regressor of the sources on (x, u) reaches only about 0.8
    (``--oracle``), because each leaky ReLU (slope 0.1) squeezes half of
    its input tenfold and the noise hides the squeezed sources.

    On small data sets the default batch size leaves few steps per epoch:
    with a few thousand rows, batches of 64 (or more epochs) are needed.

    References
    ----------
    .. [1] I. Khemakhem, D. P. Kingma, R. P. Monti and A. Hyvarinen,
       "Variational autoencoders and nonlinear ICA: a unifying framework",
       AISTATS 2020.
    .. [2] D. P. Kingma, D. J. Rezende, S. Mohamed and M. Welling,
       "Semi-supervised learning with deep generative models", NeurIPS 2014.
    .. [3] A. Hyvarinen, H. Sasaki and R. E. Turner, "Nonlinear ICA using
       auxiliary variables and generalized contrastive learning",
       AISTATS 2019.

    Examples
    --------
    >>> from sklearn_nlica import IdentifiableVAE
    >>> from sklearn_nlica.datasets import make_segmented_sources
    >>> X, S, U = make_segmented_sources(n_segments=10, n_per_segment=50,
    ...                                  n_components=2, random_state=0)
    >>> ivae = IdentifiableVAE(n_components=2, max_iter=5, random_state=0)
    >>> ivae.fit(X, U).transform(X).shape
    (500, 2)
    >>> X_new, Z_new = ivae.sample(3, y=[4, 4, 7], random_state=0)
    >>> X_new.shape, Z_new.shape
    ((3, 2), (3, 2))
    """

    # See the recipe above: sigma^2 is set to the batch's ELBO maximiser.
    _optimal_noise = True

    _parameter_constraints: dict = {
        **LatentVariableModel._parameter_constraints,
        "prior": [StrOptions(set(PRIOR_FAMILIES))],
        "aux_type": [StrOptions({"auto", "discrete", "continuous"})],
        "prior_hidden_layer_sizes": ["array-like"],
        "conditional_encoder": ["boolean"],
        "posterior_covariance": [StrOptions({"full", "diagonal"})],
        "n_mc_samples": [Interval(Integral, 1, None, closed="left")],
        "kl_warmup": [Interval(Real, 0, None, closed="left")],
        "contrastive_weight": [Interval(Real, 0, None, closed="left")],
        "linear_warm_start": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "learning_rate_schedule": [StrOptions({"constant", "cosine"})],
        "max_grad_norm": [None, Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        n_components=2,
        *,
        hidden_layer_sizes=(64, 64, 64),
        activation="leaky_relu",
        noise_variance=None,
        prior="gaussian",
        aux_type="auto",
        prior_hidden_layer_sizes=(64,),
        conditional_encoder=False,
        posterior_covariance="full",
        integrator="qmc",
        n_mc_samples=1,
        n_nodes=256,
        contrastive_weight=20.0,
        linear_warm_start=10,
        kl_warmup=0,
        n_init=1,
        learning_rate_schedule="cosine",
        max_grad_norm=100.0,
        max_iter=30,
        tol=1e-4,
        n_iter_no_change=10,
        early_stopping=False,
        validation_fraction=0.1,
        batch_size=256,
        learning_rate_init=1e-2,
        device="cpu",
        random_state=None,
        verbose=0,
        callbacks=None,
    ):
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
        self.contrastive_weight = contrastive_weight
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
            # The wording starts as scikit-learn's own for a required target.
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y "
                "is None: y is the auxiliary variable u (segment labels, a time "
                "index or covariates with one row per sample)."
            )
        if sp.issparse(y):
            raise TypeError(
                "A sparse auxiliary variable y is not supported; pass a dense array."
            )
        # One conversion up front: array-likes that refuse numpy's array
        # functions (np.ndim, np.shape) still convert through __array__.
        y = np.asarray(y)
        if y.ndim not in (1, 2):
            raise ValueError(
                "The auxiliary variable y must be 1-D (labels, a time "
                f"index) or 2-D (covariates); got shape {y.shape}."
            )
        if y.shape[0] != n_samples:
            raise ValueError(
                f"y has {y.shape[0]} rows but X has {n_samples} "
                "samples; the auxiliary variable needs one row per "
                "sample."
            )
        if reset:
            self._aux_discrete = self._is_discrete(y)
        if self._aux_discrete:
            return self._encode_labels(y, reset)
        Y = check_array(
            y,
            ensure_2d=False,
            dtype=[np.float64, np.float32],
            input_name="y",
            ensure_min_samples=0,
        )
        Y = Y.reshape(len(Y), -1)
        if reset:
            self.n_aux_features_ = Y.shape[1]
            self._aux_mean = Y.mean(0)
            scale = Y.std(0)
            self._aux_scale = np.where(scale > 0, scale, 1.0)
        elif Y.shape[1] != self.n_aux_features_:
            raise ValueError(
                f"y has {Y.shape[1]} columns, but {type(self).__name__} "
                f"was fitted with {self.n_aux_features_}."
            )
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
        y = check_array(
            y, ensure_2d=False, dtype=None, input_name="y", ensure_min_samples=0
        )
        if y.ndim == 2:
            if y.shape[1] != 1:
                raise ValueError(
                    "Discrete u must be a single column of labels; got "
                    f"{y.shape[1]} columns."
                )
            y = y.ravel()
        if y.dtype.kind == "c":
            raise ValueError("Complex data not supported for y.")
        if reset:
            self.classes_, codes = np.unique(y, return_inverse=True)
            self.aux_class_weights_ = np.bincount(
                codes, minlength=len(self.classes_)
            ) / len(codes)
            return codes.astype(np.int64)
        codes = np.searchsorted(self.classes_, y)
        codes = np.clip(codes, 0, len(self.classes_) - 1)
        unseen = self.classes_[codes] != y
        if unseen.any():
            raise ValueError(
                f"y contains labels not seen during fit: "
                f"{np.unique(y[unseen])[:5].tolist()}"
            )
        return codes.astype(np.int64)

    def _aux_tensor(self, codes, device):
        if self._aux_discrete:
            return torch.as_tensor(codes, dtype=torch.long, device=device)
        return torch.as_tensor(codes, dtype=self._dtype, device=device)

    # ---- fitting -------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the iVAE to ``X`` given the auxiliary variable u, passed as ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Observations. float32 input is trained in float32, anything else
            in float64.
        y : array-like of shape (n_samples,) or (n_samples, k)
            The auxiliary variable u: class labels or covariates (see
            ``aux_type``). Required.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        X = self._validate_X(X, reset=True)
        aux = self._check_aux(y, X.shape[0], reset=True)
        self._prior_hidden = self._check_sizes(
            self.prior_hidden_layer_sizes, "prior_hidden_layer_sizes"
        )
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
            raise ValueError(
                f"{name} must be a tuple of positive integers (or () for "
                f"a linear map), got {sizes!r}."
            )
        return tuple(int(h) for h in sizes)

    def _build_module(self, x):
        optimal = self._optimal_noise and self.noise_variance is None
        mode = "fixed" if optimal or self.noise_variance is not None else "shared"
        data_variance = float(x.var(0).mean()) if len(x) > 1 else 1.0
        initial = (
            max(data_variance, 1e-3)
            if self.noise_variance is None
            else self.noise_variance
        )
        if self._aux_discrete:
            prior = ConditionalPrior(
                self.n_components,
                family=self.prior,
                n_classes=len(self.classes_),
                class_weights=self.aux_class_weights_,
            )
            n_aux_in = len(self.classes_)
        else:
            prior = ConditionalPrior(
                self.n_components,
                family=self.prior,
                n_aux=self.n_aux_features_,
                hidden_layer_sizes=self._prior_hidden,
                activation=self.activation,
            )
            n_aux_in = self.n_aux_features_
        n_in = x.shape[1] + (n_aux_in if self.conditional_encoder else 0)
        residual = self._residual()
        if self.posterior_covariance == "full":
            encoder = FullCovarianceGaussianEncoder(
                n_in,
                self.n_components,
                self._hidden,
                self.activation,
                residual=residual,
            )
        else:
            encoder = (ResidualGaussianEncoder if residual else GaussianEncoder)(
                n_in, self.n_components, self._hidden, self.activation
            )
        decoder = (ResidualGaussianDecoder if residual else GaussianDecoder)(
            self.n_components,
            x.shape[1],
            self._hidden,
            self.activation,
            variance=mode,
            noise_variance=initial,
            mean_init=x.mean(0),
        )
        # Equal-weight random rules get independent nodes per row in training.
        independent = isinstance(self._integrator, (MonteCarlo, QMC))
        return IdentifiableVAEModule(
            encoder,
            decoder,
            prior,
            self._integrator,
            self.n_mc_samples,
            conditional_encoder=self.conditional_encoder,
            independent_rows=independent,
            optimal_noise=optimal,
            contrastive_weight=self.contrastive_weight,
        )

    def _warm_epochs(self):
        """Epochs that train something other than the final model's ELBO."""
        return max(
            math.ceil(self.kl_warmup), self.linear_warm_start if self._residual() else 0
        )

    def _residual(self):
        return self.linear_warm_start > 0 and len(self._hidden) > 0

    def _callbacks(self):
        callbacks = super()._callbacks()
        monitor = "valid_loss" if self.early_stopping else "train_loss"
        start = self._warm_epochs()
        callbacks = [
            (
                name,
                _EarlyStoppingAfter(
                    start,
                    monitor=monitor,
                    patience=self.n_iter_no_change,
                    threshold=self.tol,
                    threshold_mode="abs",
                    load_best=self.early_stopping,
                    sink=print if self.verbose else noop,
                ),
            )
            if name == "early_stopping"
            else (name, cb)
            for name, cb in callbacks
        ]
        extra = []
        if self._residual():
            extra.append(
                ("linear_warm_start", _LinearWarmStart(self.linear_warm_start))
            )
        if self.kl_warmup > 0:
            extra.append(("kl_warmup", _KLWarmup(self.kl_warmup)))
        if self.learning_rate_schedule == "cosine":
            extra.append(("lr_schedule", _CosineLearningRate()))
        if self.max_grad_norm is not None:
            extra.append(
                (
                    "gradient_clipping",
                    GradientNormClipping(gradient_clip_value=self.max_grad_norm),
                )
            )
        return extra + callbacks

    # ---- fitted model --------------------------------------------------------

    def _transform_tensor(self, x, u=None):
        return self.module_.encode(x, u)[0]

    def transform(self, X, u=None):
        """Latent representation of ``X``: the posterior mean.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        u : array-like of shape (n_samples,) or (n_samples, k), default=None
            The auxiliary variable, needed (and only used) with
            ``conditional_encoder=True``. In a pipeline, route it with
            metadata routing: ``set_transform_request(u=True)``.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components)
            E[z | x] under q(z | x), or E[z | x, u] under q(z | x, u).
        """
        check_is_fitted(self)
        if self.conditional_encoder:
            if u is None:
                raise ValueError(
                    "This IdentifiableVAE has conditional_encoder=True: "
                    "transform needs the auxiliary variable, "
                    "transform(X, u=...)."
                )
            aux = self._check_aux(u, _num_rows(X), reset=False)
            return self._predict(
                X, self._transform_tensor, u=self._aux_tensor(aux, self.device_)
            )
        return self._predict(X, self._transform_tensor)

    def fit_transform(self, X, y=None):
        """Fit to ``X`` given u (as ``y``) and return the posterior means.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, k)
            The auxiliary variable u.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components)
        """
        self.fit(X, y)
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
            log_p = torch.log(
                torch.as_tensor(
                    self.aux_class_weights_, dtype=self._dtype, device=device
                )
            )
        else:
            u = torch.as_tensor(self._aux_reference, dtype=self._dtype, device=device)
            log_p = torch.full(
                (len(u),), -math.log(len(u)), dtype=self._dtype, device=device
            )
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
            kl = module.prior.kl(
                mean.unsqueeze(1),
                posterior_marginal_variance(spread).unsqueeze(1),
                loc,
                var,
            )
            return (rec - posterior_total_correlation(spread)).unsqueeze(1) - kl
        cols = [
            module.elbo(x, u[k].expand(len(x), *u.shape[1:]), rule)
            for k in range(len(u))
        ]
        return torch.stack(cols, dim=1)

    def score_samples(self, X, y=None):
        """Per-sample ELBO, in nats.

        With u, the ELBO of log p(x | u) with the closed-form KL. Without
        u (e.g. inside scikit-learn tools that pass X alone), the bound
        ``log sum_u p(u) exp(ELBO(x, u)) <= log p(x)`` under the training
        distribution of u: the class shares of a discrete u, or 256 stored
        training rows of a continuous one. Uses ``n_nodes`` integration nodes
        fixed by ``random_state`` and shared by every row, so it is
        deterministic and row-independent.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, k), default=None
            The auxiliary variable u.

        Returns
        -------
        elbo : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        rule = self._evaluation_rule(self.n_components)
        if y is None:
            return self._predict(X, self._score_samples_tensor, rule)
        aux = self._check_aux(y, _num_rows(X), reset=False)
        return self._predict(
            X, self._score_samples_tensor, rule, u=self._aux_tensor(aux, self.device_)
        )

    def score(self, X, y=None):
        """Mean of :meth:`score_samples`: the mean ELBO per sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, k), default=None
            The auxiliary variable u (None: bound on log p(x), see
            :meth:`score_samples`).

        Returns
        -------
        elbo : float
        """
        return float(np.mean(self.score_samples(X, y)))

    def log_likelihood(self, X, y=None, n_samples=None):
        """Importance-weighted estimate of log p(x | u) per sample.

        ``log p(x | u) ~ logsumexp_j [log w_j + log p(x, z_j | u) - log q(z_j)]``
        with nodes z_j from the encoder's posterior (the proposal) and the
        estimator's integrator; for random rules this is the IWAE bound,
        which rises towards log p(x | u) with ``n_samples``. Without u, the
        same mixture over the training distribution of u as
        :meth:`score_samples` gives an estimate of log p(x).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, k), default=None
            The auxiliary variable u.
        n_samples : int, default=None
            Nodes per observation; None uses ``max(n_nodes, 1024)``.

        Returns
        -------
        log_likelihood : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        n_samples = max(self.n_nodes, 1024) if n_samples is None else n_samples
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(
                f"n_samples must be a positive integer, got {n_samples!r}."
            )
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
        parts = [
            self._predict(
                X[s : s + chunk],
                self._log_likelihood_tensor,
                rule,
                **{k: v[s : s + chunk] for k, v in extras.items()},
            )
            for s in range(0, X.shape[0], chunk)
        ]
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
        log_ratio = (
            module.decoder.log_prob(x.unsqueeze(1), z)
            + module.prior.log_prob(z, loc.unsqueeze(1), var.unsqueeze(1))
            - posterior_log_prob(z, mean, spread)
        )
        return signed_logsumexp(log_ratio + rule.log_weights, rule.signs, dim=1)

    def _iw_per_aux(self, x, u, rule):
        cols = [
            self._iw_given_aux(x, u[k].expand(len(x), *u.shape[1:]), rule)
            for k in range(len(u))
        ]
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
