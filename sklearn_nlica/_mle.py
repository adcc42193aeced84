"""NonlinearICAMLE: direct maximum likelihood with numerical integration."""

from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ._base import LatentVariableModel
from ._marginal import em_surrogate, posterior_mean, posterior_weights
from ._modules import GaussianDecoder, MarginalLikelihood, initial_noise_variance
from ._net import ObjectiveNet
from .integrators import DEFAULT_INTEGRATOR, DEFAULT_N_NODES


class EMNet(ObjectiveNet):
    """Generalised EM: per batch one E-step, then ``n_m_steps`` optimizer steps
    on the EM surrogate with the posterior weights held fixed."""

    def __init__(self, module, *args, n_m_steps=5, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.n_m_steps = n_m_steps

    def train_step(self, batch, **fit_params):
        self._set_training(True)
        x = batch[0]
        model = self.module_
        with torch.no_grad():
            rule = model.rule(x)
            log_p = model.log_likelihood(x, rule)
            weights = posterior_weights(x, model.mean, rule, model.noise_variance())
        for _ in range(self.n_m_steps):
            self.optimizer_.zero_grad()
            surrogate = em_surrogate(x, model.mean, rule, model.noise_variance(),
                                     weights=weights)
            (-surrogate.mean()).backward()
            self.notify("on_grad_computed", batch=batch, training=True,
                        named_parameters=list(self.get_all_learnable_params()))
            self.optimizer_.step()
        # The history records log p(x) at the E-step's parameters.
        return {"loss": -log_p.mean(), "y_pred": log_p}


class NonlinearICAMLE(LatentVariableModel):
    """Nonlinear ICA by direct maximum likelihood.

    The model is z ~ N(0, I_m), x | z ~ N(g(z), sigma^2 I_n) with g an MLP
    decoder. The log-likelihood

        log p(x) = log E_{z ~ N(0, I)}[N(x; g(z), sigma^2 I)]
                 ~ logsumexp_j [log w_j + log N(x; g(z_j), sigma^2 I)]

    is computed by an integration rule (nodes z_j, weights w_j) in log space,
    so it never underflows whatever the number of features; with nodes shared
    by a batch the squared distances are one matrix product, accumulated in
    float64, and everything is chunked to bound memory. It is maximised by
    mini-batch gradient ascent (Adam), by the source notes' alternating
    algorithm, or by generalised EM.

    The default rule, ``"adaptive"``, places each point's nodes on its own
    posterior (Newton's method from several starts, Laplace scales, tensor
    Gauss-Hermite nodes, plus defensive prior nodes) and is exact for a
    linear decoder: every rule that places its nodes on the prior is off by
    nats once the posterior is narrow (many features or a small sigma), see
    :mod:`sklearn_nlica.integrators`.

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
        sigma^2: None learns it, a float keeps it fixed (the source report fixes
        sigma^2 = 1).
    integrator : str or Integrator, default="adaptive"
        Integration rule over z; see :mod:`sklearn_nlica.integrators`.
    n_nodes : int, default=64
        Nodes per sample, for training and evaluation alike.
    gradient : {"autograd", "analytic"}, default="autograd"
        ``"autograd"`` differentiates through the log-sum-exp; ``"analytic"``
        uses the source notes' closed form (Fisher's identity: the posterior
        weights r_ij held fixed). They agree to rounding.
    solver : {"adam", "alternating", "em"}, default="adam"
        ``"adam"`` updates decoder and sigma^2 jointly; ``"alternating"`` is
        the source notes' Algorithm 1 (a decoder step, then a sigma^2 step with
        its own step size ``noise_learning_rate``), as gradient ascent with
        Adam; ``"em"`` is generalised EM (one E-step per batch, then
        ``n_m_steps`` steps on the surrogate with the weights fixed).
    noise_learning_rate : float or None, default=None
        Step size of the sigma^2 updates with ``solver="alternating"`` (None:
        ``learning_rate_init``).
    n_m_steps : int, default=5
        M-steps per E-step with ``solver="em"``.
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
    learning_rate_init : float, default=1e-3
        Adam's learning rate.
    device : str or torch.device, default="cpu"
        "cpu", "cuda", "cuda:N", "mps" or "auto".
    random_state : int, RandomState instance or None, default=None
        Fixes initialisation, batching and integration nodes.
    verbose : int, default=0
        0 silent, 1 a progress bar over epochs, 2 one line per epoch.
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
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Feature names seen during fit, when X has string column names.

    See Also
    --------
    VAEICA : The same model fitted by variational inference.

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
        "noise_learning_rate": [None, Interval(Real, 0, None, closed="neither")],
        "n_m_steps": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, n_components=2, *, hidden_layer_sizes=(64, 64),
                 activation="leaky_relu", noise_variance=None,
                 integrator=DEFAULT_INTEGRATOR, n_nodes=DEFAULT_N_NODES,
                 gradient="autograd", solver="adam", noise_learning_rate=None,
                 n_m_steps=5, max_iter=200, tol=1e-4, n_iter_no_change=10,
                 early_stopping=False, validation_fraction=0.1, batch_size="auto",
                 learning_rate_init=1e-3, device="cpu", random_state=None, verbose=0,
                 callbacks=None):
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

    def _build_module(self, x):
        fixed = self.noise_variance is not None
        decoder = GaussianDecoder(
            self.n_components, x.shape[1], self._hidden, self.activation,
            variance="fixed" if fixed else "shared",
            noise_variance=(self.noise_variance if fixed
                            else initial_noise_variance(x, self.n_components)),
            mean_init=x.mean(0))
        return MarginalLikelihood(decoder, self.n_components, self._integrator,
                                  self.n_nodes, gradient=self.gradient)

    # The mean g's parameters and sigma^2 (Algorithm 1 alternates between them).
    _MEAN_PARAMS = ("decoder.hidden.", "decoder.out.")
    _NOISE_PARAMS = ("decoder.raw_noise_variance",)

    def _alternating_groups(self):
        if self.solver == "alternating" and self.noise_variance is None:
            return [self._MEAN_PARAMS, self._NOISE_PARAMS]
        return None

    @property
    def _net_class(self):
        return EMNet if self.solver == "em" else ObjectiveNet

    def _net_kwargs(self):
        kwargs = {}
        if self.solver == "em":
            kwargs["n_m_steps"] = self.n_m_steps
        if self.solver == "alternating" and self.noise_learning_rate is not None:
            kwargs["optimizer__param_groups"] = [
                ("decoder.raw_noise_variance", {"lr": self.noise_learning_rate})]
        return kwargs

    def _rule_for(self, x):
        """The evaluation rule for the rows of ``x``: a fixed seed, so that
        scores are deterministic and each row's nodes depend on that row alone."""
        return self.module_.rule(x, generator=torch.Generator().manual_seed(self._seed))

    def _score_samples_tensor(self, x, rule=None):
        return self.module_.log_likelihood(x, self._rule_for(x))

    def _transform_tensor(self, x):
        model = self.module_
        return posterior_mean(x, model.mean, self._rule_for(x), model.noise_variance())

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
        return self._predict(X, self._score_samples_tensor)

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
        return super().transform(X)
