"""IdentifiableVAE: the iVAE, a VAE whose prior is conditioned on an observed u."""

import math
from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from ._aux import AuxEncoder, ConditionalMixin
from ._base import LatentVariableModel, check_layer_sizes
from ._conditional_prior import PRIOR_FAMILIES, ConditionalPrior
from ._models import IdentifiableVAEModule
from ._nn import (
    FullCovarianceGaussianEncoder,
    GaussianDecoder,
    GaussianEncoder,
    initial_noise_variance,
)
from ._schedules import SCHEDULE_STEPS, scheduled_plan
from ._training import GradientClipping, KLWarmup, linear_warm_start
from ._validation import NotBoolInterval
from .integrators import QMC, MonteCarlo


class IdentifiableVAE(ConditionalMixin, LatentVariableModel):
    """Identifiable VAE (iVAE): nonlinear ICA with an observed auxiliary variable.

    The generative model of Khemakhem, Kingma, Monti and Hyvarinen [1]_ is
    x | z ~ N(g(z), sigma^2 I) with g an MLP decoder, and a conditionally
    factorial prior given an observed auxiliary variable u (segment labels,
    a time index, covariates)::

        p(z | u) = prod_i N(z_i; mu_i(u), s_i^2(u)),

    the exponential family with sufficient statistics (z, z^2) whose
    identifiability theory recovers the sources up to permutation and
    scaling when u moves the sources' means and variances enough; its
    parameters are a table indexed by the class of a discrete u, or an MLP
    of a continuous u. An MLP encoder q(z | x) (or q(z | x, u)) is trained
    with the decoder and the prior on the evidence lower bound
    ``ELBO(x, u) = E_q[log p(x | z)] - KL(q(z | x) || p(z | u))`` (the
    reparameterisation, a closed-form KL) plus a discriminative term (see
    the notes). ``fit(X, y)`` takes u as ``y``; :meth:`transform`, the
    posterior mean, needs no u with the default encoder, so the estimator
    works in any :class:`~sklearn.pipeline.Pipeline`.

    Parameters
    ----------
    n_components : int, default=2
        Latent dimension m (the number of sources).
    hidden_layer_sizes : tuple of int, default=(64, 64, 64)
        Hidden widths of the decoder g and of the encoder. ``()`` gives a
        linear model.
    activation : {"relu", "leaky_relu", "tanh", "sigmoid", "gelu", "identity"}, \
            default="leaky_relu"
        Hidden-layer nonlinearity (leaky ReLU has slope 0.2), also of the
        prior network of a continuous u.
    noise_variance : float or None, default=None
        Decoder noise variance sigma^2 (of whitened X when whitened): None
        sets it to the ELBO's maximiser (the batch's mean squared error per
        feature) at each training step; a float keeps it fixed.
    whiten : "auto" or bool, default="auto"
        Fit the model to whitened X (zero mean, identity covariance, by the
        map ``whitening_``), in float32: its isotropic noise is then sigma^2
        times the data's covariance in X's units, so that sources squeezed
        into directions of little variance are not taken for noise.
        ``"auto"`` whitens when ``n_features == n_components``; with more
        features it would blow directions of pure noise up to the sources'
        scale. Scores stay densities of X, in X's precision.
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
        a diagonal (see the notes).
    integrator : str or Integrator, default="qmc"
        Rule for E_q[log p(x | z)] over the reparameterisation noise; see
        :mod:`sklearn_nlica.integrators`. During training, random rules
        give each row its own randomly shifted copy of their nodes.
    n_mc_samples : int, default=1
        Nodes per sample for the reconstruction term during training.
    n_nodes : int, default=256
        Nodes per sample at evaluation (:meth:`score_samples`).
    linear_warm_start : float in [0, 1) or int, default=1/3
        The start of training during which only the linear parts of the
        (then residual) encoder and decoder, the prior and the noise move: a
        float is a share of the scheduled epochs, an int a number of epochs.
        0 trains plain MLPs from the start. Ignored for a linear model.
    contrastive_weight : float, default=20.0
        Weight of log p(u | z) at the posterior mean in the training
        objective (see the notes); 0 trains on the plain ELBO. A
        discrete u is classified among all its classes (with their training
        frequencies as p(u)); a continuous u among the batch's rows (the
        InfoNCE estimate), which needs ``batch_size`` of 2 or more.
    kl_warmup : float, default=0
        Epochs over which the KL term's weight rises linearly from 0 to 1
        (KL annealing); 0 trains on the ELBO throughout.
    n_init : int, default=1
        Initialisations; the one of best final monitored ELBO is kept.
    learning_rate_schedule : {"cosine", "constant"}, default="cosine"
        As in :class:`VAEICA`: ``"cosine"`` decays the rate to 0 over about
        4,800 steps, ``"constant"`` keeps it for up to ``max_iter`` epochs.
    max_grad_norm : float or None, default=100.0
        Clip the gradient's norm to this value at every step (None: never).
    max_iter : int, default=200
        Maximum number of epochs.
    tol : float, default=1e-4
        Minimum improvement of the monitored ELBO (nats per sample; as in
        :class:`VAEICA`) that counts.
    n_iter_no_change : int, default=10
        Stop after this many epochs without a ``tol`` improvement, counted
        from the end of the warm starts and the schedule's first half.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data, stop on its ELBO, keep
        the best epoch.
    validation_fraction : float, default=0.1
        Share of the data held out for early stopping.
    batch_size : int or "auto", default=256
        Mini-batch size (at most n_samples); "auto" is 200, as elsewhere.
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
    warm_start : bool, default=False
        When fitted, :meth:`fit` trains the fitted model ``max_iter`` more
        epochs (same features; a cosine schedule is planned anew over them).
        A continued fit (this or :meth:`partial_fit`) takes ``max_iter``,
        ``learning_rate_init`` and ``on_interrupt`` as they are now, and
        refuses a change to any other parameter (``ValueError``).
    on_interrupt : {"raise", "keep"}, default="raise"
        What a Ctrl-C (KeyboardInterrupt) during fitting does: ``"raise"``
        stops and leaves the estimator as it was; ``"keep"`` keeps the
        partially trained model, with a warning.
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
        Fitted sigma^2 (in whitened units when whitened).
    whitening_ : ndarray of shape (n_features, n_features) or None
        The symmetric whitening matrix W: the model is fitted to
        ``(X - X.mean(0)) @ W``. None when X was not whitened.
    n_iter_ : int
        Number of epochs run.
    active_components_ : ndarray of shape (n_components,), dtype=bool
        Latents whose posterior mean varies over the training rows (variance
        above 0.01); False marks a latent collapsed onto the prior.
    loss_curve_ : list of float
        Minus the mean training objective of each epoch (the ELBO plus the
        contrastive term, the KL weighted during a KL warm-up), nats/sample.
    best_loss_ : float or None
        Smallest training loss (None with ``early_stopping``).
    validation_scores_ : list of float or None
        Held-out ELBO per epoch on the monitored rows (``early_stopping``).
    best_validation_score_ : float or None
        Best of ``validation_scores_``.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names seen during fit, when X has string column names.

    See Also
    --------
    VAEICA : The same VAE with a N(0, I) prior (not identifiable).
    sklearn.decomposition.FastICA : Linear ICA.

    Notes
    -----
    The defaults are a training recipe (the evidence is in the user guide's
    page "How the defaults were chosen"): whitened data, trained in float32,
    where the mixing is square; a full-covariance posterior; sigma^2 set at
    every step to the batch's maximiser of the ELBO; independent
    reparameterisation noise for each row; a linear warm start (residual
    networks whose MLP branches, starting at zero, stay frozen at first:
    linear ICA by nonstationarity first); Adam with a cosine learning-rate
    decay and gradient clipping; and the training objective ``ELBO(x, u) +
    contrastive_weight * log p(u | E_q[z])``, where p(u | z) is the model's
    own prior turned into a classifier of u by Bayes' rule, the hybrid
    objective of [2]_ with the classifier of [3]_. :meth:`score` stays the
    plain ELBO.

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

    _parameter_constraints: dict = {
        **LatentVariableModel._parameter_constraints,
        "whiten": [StrOptions({"auto"}), "boolean"],
        "prior": [StrOptions(set(PRIOR_FAMILIES))],
        "aux_type": [StrOptions({"auto", "discrete", "continuous"})],
        "prior_hidden_layer_sizes": ["array-like"],
        "conditional_encoder": ["boolean"],
        "posterior_covariance": [StrOptions({"full", "diagonal"})],
        "n_mc_samples": [NotBoolInterval(Integral, 1, None, closed="left")],
        "kl_warmup": [NotBoolInterval(Real, 0, None, closed="left")],
        "contrastive_weight": [NotBoolInterval(Real, 0, None, closed="left")],
        "linear_warm_start": [
            NotBoolInterval(Integral, 0, None, closed="left"),
            NotBoolInterval(Real, 0, 1, closed="left"),
        ],
        "learning_rate_schedule": [StrOptions({"constant", "cosine"})],
        "max_grad_norm": [None, NotBoolInterval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        n_components=2,
        *,
        hidden_layer_sizes=(64, 64, 64),
        activation="leaky_relu",
        noise_variance=None,
        whiten="auto",
        prior="gaussian",
        aux_type="auto",
        prior_hidden_layer_sizes=(64,),
        conditional_encoder=False,
        posterior_covariance="full",
        integrator="qmc",
        n_mc_samples=1,
        n_nodes=256,
        contrastive_weight=20.0,
        linear_warm_start=1 / 3,
        kl_warmup=0,
        n_init=1,
        learning_rate_schedule="cosine",
        max_grad_norm=100.0,
        max_iter=200,
        tol=1e-4,
        n_iter_no_change=10,
        early_stopping=False,
        validation_fraction=0.1,
        batch_size=256,
        learning_rate_init=1e-2,
        device="cpu",
        random_state=None,
        verbose=0,
        warm_start=False,
        on_interrupt="raise",
        callbacks=None,
    ):
        self.n_components = n_components
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.noise_variance = noise_variance
        self.whiten = whiten
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
        self.warm_start = warm_start
        self.on_interrupt = on_interrupt
        self.callbacks = callbacks

    _requires_y = True
    _node_budgets = ("n_mc_samples", "n_nodes")
    _injective = True

    def _fit_condition(self, y, n_samples):
        encoder = AuxEncoder(self.aux_type, type(self).__name__)
        u = encoder.fit_transform(y, n_samples)
        single = self._batch_size(n_samples) < 2
        if self.contrastive_weight and not encoder.discrete and single:
            raise ValueError(
                "The contrastive term with a continuous u compares the rows of a "
                "batch: it needs batch_size >= 2, or contrastive_weight=0."
            )
        return encoder, {"u": u}

    def _whitens(self, n_features):
        square = n_features == self.n_components
        return self.whiten is True or (self.whiten == "auto" and square)

    def _training_dtype(self, X):
        # float32 folds sources on some draws of raw data, not of whitened data.
        whitened = self._training_precision is None and self._whitens(X.shape[1])
        return torch.float32 if whitened else super()._training_dtype(X)

    @property
    def whitening_(self):
        """The whitening matrix W of the fit (None when X was not whitened)."""
        check_is_fitted(self)
        return None if self._whitening is None else self._whitening.matrix

    # ---- the model and its training -------------------------------------------

    def _build_module(self, x, *, seed, encoding, u):
        hidden = check_layer_sizes(self.hidden_layer_sizes)
        residual = self.linear_warm_start > 0 and len(hidden) > 0
        prior = self._build_prior(encoding)
        n_in = x.shape[1]
        if self.conditional_encoder:
            n_in += prior.n_classes if prior.discrete else prior.n_aux
        full = self.posterior_covariance == "full"
        encoder = (FullCovarianceGaussianEncoder if full else GaussianEncoder)(
            n_in, self.n_components, hidden, self.activation, residual=residual
        )
        learned = self.noise_variance is None
        initial = initial_noise_variance(x) if learned else self.noise_variance
        decoder = GaussianDecoder(
            self.n_components,
            x.shape[1],
            hidden,
            self.activation,
            variance="fixed",
            noise_variance=initial,
            mean_init=x.mean(0),
            residual=residual,
        )
        reference_u, reference_log_p = encoding.reference(u.cpu().numpy(), seed)
        integrator = self._new_integrator()
        return IdentifiableVAEModule(
            encoder,
            decoder,
            prior,
            integrator,
            self.n_mc_samples,
            reference_u=torch.as_tensor(reference_u, dtype=u.dtype),
            reference_log_p=torch.as_tensor(reference_log_p, dtype=x.dtype),
            conditional_encoder=self.conditional_encoder,
            # Equal-weight random rules get independent nodes per row in training.
            independent_rows=isinstance(integrator, (MonteCarlo, QMC)),
            optimal_noise=learned,
            contrastive_weight=self.contrastive_weight,
        )

    def _build_prior(self, encoding):
        hidden = check_layer_sizes(
            self.prior_hidden_layer_sizes, "prior_hidden_layer_sizes"
        )
        shape = encoding.prior_shape()  # a table of classes, or a network of u
        if not encoding.discrete:
            shape.update(hidden_layer_sizes=hidden, activation=self.activation)
        return ConditionalPrior(self.n_components, family=self.prior, **shape)

    def _training_plan(self, module, n_batches):
        plan, epochs = scheduled_plan(
            module,
            n_batches,
            SCHEDULE_STEPS,
            self.max_iter,
            self.learning_rate_schedule,
        )
        warm = max(plan.warm_epochs, math.ceil(self.kl_warmup))
        if module.nonlinear_parameters():
            share = self.linear_warm_start
            n_linear = share if isinstance(share, Integral) else round(share * epochs)
            plan.callbacks += linear_warm_start(module, n_linear)
            warm = max(warm, n_linear)
        if self.kl_warmup > 0:
            n_steps = max(1, round(self.kl_warmup * n_batches))
            plan.callbacks.append(("kl_warmup", KLWarmup(n_steps)))
        if self.max_grad_norm is not None:
            clip = GradientClipping(self.max_grad_norm)
            plan.callbacks.append(("gradient_clipping", clip))
        plan.warm_epochs = warm
        return plan

    # ---- the fitted model, given u or not ---------------------------------------

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
        return self._transform(X, u if self.conditional_encoder else None)

    def score_samples(self, X, y=None):
        """Per-sample ELBO, in nats.

        With u, the ELBO of log p(x | u). Without u (as scikit-learn tools
        call it), ``log sum_u p(u) exp(ELBO(x, u)) <= log p(x)`` over the
        training distribution of u (the class shares of a discrete u, 256
        stored rows of a continuous one). Deterministic: ``n_nodes`` nodes
        fixed by ``random_state``, shared by every row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, k), default=None
            The auxiliary variable u.

        Returns
        -------
        elbo : ndarray of shape (n_samples,)
        """
        return self._score_samples(X, y)

    def log_likelihood(self, X, y=None, n_samples=None):
        """Importance-weighted estimate of log p(x | u) per sample.

        ``logsumexp_j [log w_j + log p(x, z_j | u) - log q(z_j)]`` with nodes
        z_j from the encoder's posterior (the proposal): for random rules the
        importance weighted bound, rising towards log p(x | u) with
        ``n_samples``. Without u, mixed over u as in :meth:`score_samples`.

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
        return self._log_likelihood(X, y, n_samples)
