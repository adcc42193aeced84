"""VAEICA: a Gaussian variational autoencoder trained on the ELBO."""

from numbers import Integral

import torch
from sklearn.utils._param_validation import StrOptions

from ._base import LatentVariableModel, check_layer_sizes
from ._models import VAE
from ._nn import (
    GaussianDecoder,
    GaussianEncoder,
    feature_scales,
    initial_noise_variance,
)
from ._schedules import SCHEDULE_STEPS, scheduled_plan
from ._validation import NotBoolInterval
from .integrators import QMC, MonteCarlo


class VAEICA(LatentVariableModel):
    """Nonlinear ICA by a Gaussian variational autoencoder.

    The generative model is z ~ N(0, I), x | z ~ N(g(z), sigma^2 I) with g an
    MLP decoder; an MLP encoder q(z|x) = N(mu(x), diag s^2(x)) approximates
    the posterior. Both are trained jointly on the evidence lower bound

        ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || N(0, I)),

    with the reparameterisation z = mu + s * e and the analytic KL (the SGVB
    estimator of [1]_). The expectation over e ~ N(0, I) is an
    integration rule from :mod:`sklearn_nlica.integrators`: ``n_mc_samples``
    nodes per sample and step during training (fresh each step for the random
    rules), ``n_nodes`` fixed nodes for the deterministic :meth:`score_samples`.

    Parameters
    ----------
    n_components : int, default=2
        Latent dimension m.
    hidden_layer_sizes : tuple of int, default=(64, 64)
        Hidden widths of the decoder g and of the encoder. ``()`` gives the
        linear model (probabilistic PCA when ``activation="identity"``).
    activation : {"relu", "leaky_relu", "tanh", "sigmoid", "gelu", "identity"}, \
            default="leaky_relu"
        Hidden-layer nonlinearity (leaky ReLU has slope 0.2).
    noise_variance : float or None, default=None
        Decoder noise variance sigma^2: None sets it at every step to the
        ELBO's maximiser (the batch's mean squared reconstruction error per
        feature), a float keeps it fixed.
    decoder_variance : {"shared", "per_sample"}, default="shared"
        ``"shared"``: one sigma^2 for every sample (learned or fixed by
        ``noise_variance``). ``"per_sample"``: a scalar head
        ``log s^2 = W2 h + b2`` on the decoder's last hidden layer, a variance
        per latent code, as in the Gaussian MLP decoder of [1]_
        (``noise_variance`` must then be None).
    integrator : str or Integrator, default="qmc"
        Rule for E_q[log p(x|z)] over e ~ N(0, I); see
        :mod:`sklearn_nlica.integrators`. Randomised QMC with one node is a plain
        Monte Carlo draw (the SGVB estimator); with many it is far more
        accurate than Monte Carlo at evaluation.
    n_mc_samples : int, default=1
        Nodes per sample for the reconstruction term during training (L).
    n_nodes : int, default=256
        Nodes per sample at evaluation (:meth:`score_samples`). With the
        default QMC rule the ELBO of a linear-Gaussian model is then within
        0.01 nat of its exact value (Monte Carlo needs ~10^5 nodes for that).
    update : {"joint", "alternating"}, default="joint"
        ``"joint"`` updates encoder and decoder together; ``"alternating"``
        takes one encoder step then one decoder step per batch (coordinate
        ascent on the ELBO).
    gradient : {"reparameterization", "score_function"}, \
            default="reparameterization"
        Gradient of the reconstruction term with respect to the encoder: the
        pathwise (reparameterisation) gradient, or the score-function
        (REINFORCE) estimator with a leave-one-out baseline, which has a much
        larger variance (use several ``n_mc_samples``).
    n_init : int, default=1
        Number of initialisations; the one with the best final monitored
        ELBO (see ``tol``) is kept.
    learning_rate_schedule : {"cosine", "constant"}, default="cosine"
        ``"cosine"``: Adam's rate decays from ``learning_rate_init`` to 0 over
        about 4,800 steps (whole epochs, at most 200) whatever the data size;
        ``max_iter`` only cuts that short (with a ConvergenceWarning), and
        stopping may end the fit only in the schedule's second half.
        ``"constant"``: a fixed rate for up to ``max_iter`` epochs.
    max_iter : int, default=200
        Maximum number of epochs.
    tol : float, default=1e-4
        Minimum improvement of the monitored ELBO (nats per sample) that
        counts: the ELBO of up to 512 fixed training rows (held-out rows
        with ``early_stopping``) by a deterministic rule of ``2 m + 1``
        nodes, after every epoch; it is what the progress bar shows.
    n_iter_no_change : int, default=10
        Stop after this many epochs without a ``tol`` improvement of the
        monitored ELBO.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data, stop on its ELBO and
        restore the best epoch's weights.
    validation_fraction : float, default=0.1
        Share of the data held out for early stopping.
    batch_size : int or "auto", default="auto"
        Mini-batch size; "auto" is ``min(200, n_samples)``.
    learning_rate_init : float, default=1e-2
        Adam's (initial) learning rate.
    device : str or torch.device, default="cpu"
        "cpu", "cuda", "cuda:N", "mps" or "auto" (the best available).
    random_state : int, RandomState instance or None, default=None
        Fixes initialisation, batching and every random draw; the same value
        gives the same model, bitwise on the CPU. The global torch RNG of the
        caller is left untouched.
    verbose : int, default=0
        0 silent, 1 a progress bar over epochs, 2 one line per epoch.
    warm_start : bool, default=False
        When fitted, :meth:`fit` continues training the fitted model for
        ``max_iter`` more epochs instead of starting anew (the data must
        have the same features), its cosine schedule planned anew over
        them; :meth:`partial_fit` follows the first fit's schedule instead.
        A continued fit (this or :meth:`partial_fit`) takes ``max_iter``,
        ``learning_rate_init`` and ``on_interrupt`` as they are now, and
        refuses a change to any other parameter (``ValueError``).
    on_interrupt : {"raise", "keep"}, default="raise"
        What a Ctrl-C (KeyboardInterrupt) during fitting does: ``"raise"``
        stops and leaves the estimator as it was; ``"keep"`` keeps the
        partially trained model, with a warning.
    callbacks : list of (name, skorch Callback) or None, default=None
        Extra skorch callbacks, e.g. ``("lr", LRScheduler(...))``.

    Attributes
    ----------
    net_ : ObjectiveNet
        The fitted skorch net (history, callbacks, optimizer).
    module_ : torch.nn.Module
        The fitted torch module, with ``encoder`` and ``decoder`` submodules.
    noise_variance_ : float or None
        Fitted sigma^2 (None with ``decoder_variance="per_sample"``).
    n_iter_ : int
        Number of epochs run.
    active_components_ : ndarray of shape (n_components,), dtype=bool
        Latents whose posterior mean varies over the training rows (variance
        above 0.01); False marks a latent collapsed onto the prior.
    loss_curve_ : list of float
        Training loss (minus the mean ELBO, nats per sample) of each epoch.
    best_loss_ : float or None
        Smallest training loss (None with ``early_stopping``).
    validation_scores_ : list of float or None
        Held-out ELBO of each epoch, on the monitored rows (see ``tol``),
        with ``early_stopping``.
    best_validation_score_ : float or None
        Best of ``validation_scores_``.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names seen during fit, when X has string column names.

    See Also
    --------
    NonlinearICAMLE : Direct maximum likelihood by numerical integration.
    IdentifiableVAE : The iVAE, identifiable thanks to an auxiliary variable.

    Notes
    -----
    The defaults are a training recipe (the evidence is in the user guide's
    page "How the defaults were chosen"): sigma^2 set at every step to the
    batch's maximiser of the ELBO; independent reparameterisation noise for
    each row; Adam with a cosine learning-rate decay over a fixed number of
    steps; stopping on a deterministic ELBO of fixed rows; float32 training
    (scores in the input's precision). The networks work in standardised
    units (the encoder reads each feature centred and divided by its training
    standard deviation, the decoder's outputs are multiplied back), so
    features on any scale train alike; the model, with one noise variance in
    X's units, is the same.

    References
    ----------
    .. [1] D. P. Kingma and M. Welling, "Auto-encoding variational Bayes",
       ICLR 2014.
    .. [2] Y. Burda, R. Grosse and R. Salakhutdinov, "Importance weighted
       autoencoders", ICLR 2016.

    Examples
    --------
    >>> from sklearn_nlica import VAEICA
    >>> from sklearn_nlica.datasets import make_nonlinear_ica
    >>> X, S = make_nonlinear_ica(n_samples=500, n_components=2, n_features=5,
    ...                           random_state=0)
    >>> vae = VAEICA(n_components=2, max_iter=20, random_state=0).fit(X)
    >>> vae.transform(X).shape
    (500, 2)
    >>> X_new, Z_new = vae.sample(3, random_state=0)
    >>> X_new.shape, Z_new.shape
    ((3, 5), (3, 2))
    """

    _node_budgets = ("n_mc_samples", "n_nodes")
    _training_precision = torch.float32

    _parameter_constraints: dict = {
        **LatentVariableModel._parameter_constraints,
        "decoder_variance": [StrOptions({"shared", "per_sample"})],
        "n_mc_samples": [NotBoolInterval(Integral, 1, None, closed="left")],
        "update": [StrOptions({"joint", "alternating"})],
        "gradient": [StrOptions({"reparameterization", "score_function"})],
        "learning_rate_schedule": [StrOptions({"constant", "cosine"})],
    }

    def __init__(
        self,
        n_components=2,
        *,
        hidden_layer_sizes=(64, 64),
        activation="leaky_relu",
        noise_variance=None,
        decoder_variance="shared",
        integrator="qmc",
        n_mc_samples=1,
        n_nodes=256,
        update="joint",
        gradient="reparameterization",
        n_init=1,
        learning_rate_schedule="cosine",
        max_iter=200,
        tol=1e-4,
        n_iter_no_change=10,
        early_stopping=False,
        validation_fraction=0.1,
        batch_size="auto",
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
        self.decoder_variance = decoder_variance
        self.integrator = integrator
        self.n_mc_samples = n_mc_samples
        self.n_nodes = n_nodes
        self.update = update
        self.gradient = gradient
        self.n_init = n_init
        self.learning_rate_schedule = learning_rate_schedule
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

    def _decoder_variance_mode(self):
        if self.decoder_variance == "per_sample":
            if self.noise_variance is not None:
                raise ValueError(
                    "decoder_variance='per_sample' learns the variance: "
                    "noise_variance must be None."
                )
            return "per_sample"
        return "optimal" if self.noise_variance is None else "fixed"

    def _build_module(self, x, *, seed, encoding):
        mode = self._decoder_variance_mode()
        hidden = check_layer_sizes(self.hidden_layer_sizes)
        initial = self.noise_variance if mode == "fixed" else initial_noise_variance(x)
        # The networks work in standardised units, the model in X's units.
        loc, scale = feature_scales(x)
        encoder = GaussianEncoder(
            x.shape[1],
            self.n_components,
            hidden,
            self.activation,
            input_scaling=(loc, scale),
        )
        decoder = GaussianDecoder(
            self.n_components,
            x.shape[1],
            hidden,
            self.activation,
            variance="fixed" if mode == "optimal" else mode,
            noise_variance=initial,
            mean_init=loc,
            output_scale=scale,
        )
        integrator = self._new_integrator()
        return VAE(
            encoder,
            decoder,
            integrator,
            self.n_mc_samples,
            gradient=self.gradient,
            # Equal-weight random rules get independent nodes per row in training.
            independent_rows=isinstance(integrator, (MonteCarlo, QMC)),
            optimal_noise=mode == "optimal",
        )

    def _training_plan(self, module, n_batches):
        plan, _ = scheduled_plan(
            module,
            n_batches,
            SCHEDULE_STEPS,
            self.max_iter,
            self.learning_rate_schedule,
        )
        plan.net_kwargs["alternating"] = self.update == "alternating"
        return plan

    def score_samples(self, X):
        """Per-sample ELBO, in nats.

        Uses ``n_nodes`` integration nodes fixed by ``random_state`` and
        shared by every row, so it is deterministic and row-independent.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        elbo : ndarray of shape (n_samples,)
        """
        return self._score_samples(X)

    def score(self, X, y=None):
        """Mean ELBO per sample (a lower bound on the log-likelihood).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        elbo : float
        """
        return super().score(X, y)

    def log_likelihood(self, X, n_samples=None):
        """Importance-weighted estimate of log p(x) per sample.

        ``log p(x) ~ logsumexp_j [log w_j + log p(x, z_j) - log q(z_j | x)]``
        with nodes z_j = mu(x) + s(x) e_j from the estimator's integrator: the
        encoder is the proposal. For random rules this is the importance
        weighted bound of Burda, Grosse and Salakhutdinov (2016), which rises
        towards log p(x) as ``n_samples`` grows; it is never below the ELBO
        in expectation.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        n_samples : int, default=None
            Nodes per observation; None uses ``max(n_nodes, 1024)``.

        Returns
        -------
        log_likelihood : ndarray of shape (n_samples,)
        """
        return self._log_likelihood(X, n_samples=n_samples)
