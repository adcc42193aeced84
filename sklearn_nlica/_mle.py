"""NonlinearICAMLE: direct maximum likelihood with numerical integration."""

from numbers import Integral, Real

from sklearn.utils._param_validation import StrOptions

from ._base import LatentVariableModel, check_layer_sizes
from ._em import EMNet
from ._models import MarginalLikelihood
from ._nn import GaussianDecoder, initial_noise_variance
from ._schedules import EM_SCHEDULE_BATCHES, scheduled_plan
from ._training import TrainingPlan
from ._validation import NotBoolInterval
from .integrators import DEFAULT_INTEGRATOR, DEFAULT_N_NODES


class NonlinearICAMLE(LatentVariableModel):
    """Nonlinear ICA by direct maximum likelihood.

    The model is z ~ N(0, I_m), x | z ~ N(g(z), sigma^2 I_n) with g an MLP
    decoder. The log-likelihood

        log p(x) = log E_{z ~ N(0, I)}[N(x; g(z), sigma^2 I)]
                 ~ logsumexp_j [log w_j + log N(x; g(z_j), sigma^2 I)]

    is computed by an integration rule (nodes z_j, weights w_j) in log space,
    so it never underflows whatever the number of features; with nodes shared
    by a batch the squared distances are one matrix product, accumulated in
    float64, and everything is chunked to bound memory.

    The default rule, ``"adaptive"``, places each point's nodes on its own
    posterior (Newton's method from several starts, Laplace scales, tensor
    Gauss-Hermite nodes, plus defensive prior nodes; adaptive Gauss-Hermite
    quadrature [1]_) and is exact for a linear decoder, i.e. probabilistic
    PCA [3]_: every rule that places its nodes on the prior is off by nats
    once the posterior is narrow (many features or a small sigma), see
    :mod:`sklearn_nlica.integrators`.

    The default solver is parameter-expanded EM (``solver="em"``, [2]_).
    Plain gradient ascent (``"adam"``, ``"alternating"``) is ill-conditioned
    here: the likelihood sees the scale and offset of the latent space only
    through the prior, a direction whose curvature is about sigma^2 / lambda
    (lambda the signal variance) times that of the others. EM alone is slow
    along the same direction; the parameter expansion, which moves the
    aggregate posterior's mean and covariance into the decoder's first layer
    after each epoch, removes that. The user guide's page "How the defaults
    were chosen" gives the measurements.

    Parameters
    ----------
    n_components : int, default=2
        Latent dimension m.
    hidden_layer_sizes : tuple of int, default=(64, 64)
        Hidden widths of the decoder g; ``()`` is the linear decoder, which
        with ``activation="identity"`` is probabilistic PCA.
    activation : {"relu", "leaky_relu", "tanh", "sigmoid", "gelu", "identity"}, \
            default="leaky_relu"
        Hidden-layer nonlinearity (leaky ReLU has slope 0.2).
    noise_variance : float or None, default=None
        sigma^2: None learns it, a float keeps it fixed.
    integrator : str or Integrator, default="adaptive"
        Integration rule over z; see :mod:`sklearn_nlica.integrators`.
    n_nodes : int, default=64
        Nodes per sample, for training and evaluation alike.
    gradient : {"autograd", "analytic"}, default="autograd"
        Gradient of the log-likelihood for ``solver="adam"`` and
        ``"alternating"``: ``"autograd"`` differentiates through the
        log-sum-exp, ``"analytic"`` uses the closed form of Fisher's identity
        (the posterior weights r_ij held fixed). They agree to rounding.
        ``solver="em"`` always uses the closed form.
    solver : {"em", "adam", "alternating"}, default="em"
        ``"em"``: per batch, an E-step (the posterior weights r_ij on the
        rule's nodes) and ``n_m_steps`` Adam steps on the EM surrogate
        sum_j r_ij log N(x; g(z_j), sigma^2 I) with the weights held fixed;
        per epoch, from the E-steps of all batches, the exact M-step for
        sigma^2 (and for the whole decoder when it is linear: EM for
        probabilistic PCA) and the parameter-expansion step. The recorded
        loss is minus log p(x) at each batch's E-step. With the adaptive
        rule each M-step decodes 8 nodes per row, drawn afresh from the
        posterior weights (systematic resampling: an unbiased estimate of
        the surrogate). For float64 data the M-steps run the decoder's
        hidden layers in float32 (the residuals and the surrogate's sums
        stay in float64); the E-step, the closed-form updates, the recorded
        loss and every score stay in the data's dtype.
        ``"adam"``: joint gradient ascent on log p(x) for decoder and sigma^2.
        ``"alternating"``: a decoder step, then a sigma^2 step with its own
        step size ``noise_learning_rate`` (gradient ascent with Adam).
    noise_learning_rate : float or None, default=None
        Step size of the sigma^2 updates with ``solver="alternating"`` (None:
        ``learning_rate_init``).
    n_m_steps : int, default=5
        Optimizer steps per E-step with ``solver="em"``: each E-step (which
        places the adaptive nodes) serves several steps.
    n_init : int, default=1
        Number of initialisations; the fit with the best final training
        log-likelihood is kept.
    learning_rate_schedule : {"cosine", "constant"}, default="cosine"
        ``"cosine"``: the rate decays from ``learning_rate_init`` to 0 over
        about 400 batches (whole epochs, at most 200: 40 epochs of 2,000
        rows) whatever the data size, and the fit runs all of it: ``max_iter``
        only cuts that short (with a ConvergenceWarning), and with
        ``early_stopping`` the held-out likelihood may end it in the
        schedule's second half. ``"constant"``: a fixed rate for up to
        ``max_iter`` epochs, until ``n_iter_no_change`` epochs bring no
        ``tol`` improvement (1e-3 suits it). A linear decoder (exact EM)
        has no rate to schedule.
    max_iter : int, default=200
        Maximum number of epochs.
    tol : float, default=1e-4
        Minimum improvement of the loss (nats per sample) that counts.
    n_iter_no_change : int, default=10
        Stop after this many epochs without a ``tol`` improvement.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data, stop on its
        log-likelihood and restore the best epoch's weights.
    validation_fraction : float, default=0.1
        Share of the data held out for early stopping.
    batch_size : int or "auto", default="auto"
        Mini-batch size; "auto" is ``min(200, n_samples)``.
    learning_rate_init : float, default=3e-3
        Adam's (initial) learning rate (of the M-steps with ``solver="em"``).
    device : str or torch.device, default="cpu"
        "cpu", "cuda", "cuda:N", "mps" or "auto".
    random_state : int, RandomState instance or None, default=None
        Fixes initialisation, batching and integration nodes; the same value
        gives the same model, bitwise on the CPU. The global torch RNG of the
        caller is left untouched.
    verbose : int, default=0
        0 silent, 1 a progress bar over epochs, 2 one line per epoch.
    warm_start : bool, default=False
        When fitted, :meth:`fit` continues training the fitted model for
        ``max_iter`` more epochs instead of starting anew (the data must
        have the same features).
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
        The fitted skorch net.
    module_ : torch.nn.Module
        The fitted module; ``module_.decoder`` is g.
    noise_variance_ : float
        Fitted (or fixed) sigma^2.
    n_iter_ : int
        Number of epochs run.
    active_components_ : ndarray of shape (n_components,), dtype=bool
        Latents whose posterior mean varies over the training rows (variance
        above 0.01); False marks a latent collapsed onto the prior.
    loss_curve_ : list of float
        Minus the mean training log-likelihood of each epoch.
    best_loss_ : float or None
        Smallest training loss (None with ``early_stopping``).
    validation_scores_ : list of float or None
        Held-out mean log-likelihood of each epoch (with ``early_stopping``).
    best_validation_score_ : float or None
        Best of ``validation_scores_``.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names seen during fit, when X has string column names.

    See Also
    --------
    VAEICA : The same model fitted by variational inference.
    IdentifiableVAE : The iVAE, identifiable thanks to an auxiliary variable.

    References
    ----------
    .. [1] Q. Liu and D. A. Pierce, "A note on Gauss-Hermite quadrature",
       Biometrika 81(3), 1994 (adaptive Gauss-Hermite quadrature).
    .. [2] C. Liu, D. B. Rubin and Y. N. Wu, "Parameter expansion to
       accelerate EM: the PX-EM algorithm", Biometrika 85(4), 1998.
    .. [3] M. E. Tipping and C. M. Bishop, "Probabilistic principal component
       analysis", JRSS B 61(3), 1999.

    Examples
    --------
    >>> from sklearn_nlica import NonlinearICAMLE
    >>> from sklearn_nlica.datasets import make_nonlinear_ica
    >>> X, S = make_nonlinear_ica(n_samples=300, n_components=2, n_features=5,
    ...                           random_state=0)
    >>> mle = NonlinearICAMLE(n_components=2, max_iter=5, random_state=0).fit(X)
    >>> mle.transform(X).shape
    (300, 2)
    >>> round(float(mle.score(X)), 1) < 0
    True
    """

    _parameter_constraints: dict = {
        **LatentVariableModel._parameter_constraints,
        "gradient": [StrOptions({"autograd", "analytic"})],
        "solver": [StrOptions({"adam", "alternating", "em"})],
        "noise_learning_rate": [None, NotBoolInterval(Real, 0, None, closed="neither")],
        "n_m_steps": [NotBoolInterval(Integral, 1, None, closed="left")],
        "learning_rate_schedule": [StrOptions({"constant", "cosine"})],
    }

    def __init__(
        self,
        n_components=2,
        *,
        hidden_layer_sizes=(64, 64),
        activation="leaky_relu",
        noise_variance=None,
        integrator=DEFAULT_INTEGRATOR,
        n_nodes=DEFAULT_N_NODES,
        gradient="autograd",
        solver="em",
        noise_learning_rate=None,
        n_m_steps=5,
        n_init=1,
        max_iter=200,
        tol=1e-4,
        n_iter_no_change=10,
        early_stopping=False,
        validation_fraction=0.1,
        batch_size="auto",
        learning_rate_init=3e-3,
        learning_rate_schedule="cosine",
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
        self.integrator = integrator
        self.n_nodes = n_nodes
        self.gradient = gradient
        self.solver = solver
        self.noise_learning_rate = noise_learning_rate
        self.n_m_steps = n_m_steps
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.learning_rate_schedule = learning_rate_schedule
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.on_interrupt = on_interrupt
        self.callbacks = callbacks

    def _build_module(self, x, *, seed, encoding):
        fixed = self.noise_variance is not None
        decoder = GaussianDecoder(
            self.n_components,
            x.shape[1],
            check_layer_sizes(self.hidden_layer_sizes),
            self.activation,
            variance="fixed" if fixed else "shared",
            noise_variance=self.noise_variance if fixed else initial_noise_variance(x),
            mean_init=x.mean(0),
        )
        return MarginalLikelihood(
            decoder,
            self.n_components,
            self._new_integrator(),
            self.n_nodes,
            gradient=self.gradient,
        )

    def _training_plan(self, module, n_batches):
        plan = self._schedule(module, n_batches)
        if self.solver == "em":
            plan.net_class = EMNet
            plan.net_kwargs["n_m_steps"] = self.n_m_steps
            return plan
        alternating = self.solver == "alternating"
        plan.net_kwargs["alternating"] = alternating
        noise = {id(p) for p in module.decoder.noise_parameters()}
        if alternating and noise and self.noise_learning_rate is not None:
            names = [name for name, p in module.named_parameters() if id(p) in noise]
            plan.net_kwargs["optimizer__param_groups"] = [
                (name, {"lr": self.noise_learning_rate}) for name in names
            ]
        return plan

    def _schedule(self, module, n_batches):
        """The cosine schedule's plan, or a plain one for a constant rate."""
        # EM with a linear decoder is exact: it never steps the optimizer.
        exact_em = self.solver == "em" and module.decoder.is_linear
        if self.learning_rate_schedule == "constant" or exact_em:
            return TrainingPlan()
        # No score monitor: a likelihood needs the adaptive rule, which costs
        # as much as an epoch's E-steps.
        plan, epochs = scheduled_plan(
            module,
            n_batches,
            EM_SCHEDULE_BATCHES,
            self.max_iter,
            score_monitor=False,
        )
        if not self.early_stopping:
            # Late in the decay the training loss gains less per epoch than
            # its batch-to-batch noise, so stopping on it ends fits short of
            # the schedule by chance; the schedule alone ends them.
            plan.warm_epochs = epochs
        return plan

    def score_samples(self, X):
        """Log-likelihood log p(x) of each sample, in nats.

        Deterministic: the integration nodes are fixed by ``random_state``
        (adaptive nodes depend on each row alone).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_likelihood : ndarray of shape (n_samples,)
        """
        return self._score_samples(X)

    def score(self, X, y=None):
        """Mean log-likelihood per sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        log_likelihood : float
        """
        return super().score(X, y)

    def transform(self, X):
        """Posterior mean E[z | x], from the same nodes and weights as the score.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components)
        """
        return self._transform(X)
