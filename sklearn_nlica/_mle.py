"""NonlinearICAMLE: direct maximum likelihood with numerical integration."""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ._base import LatentVariableModel
from ._marginal import (
    em_surrogate,
    gaussian_log_integrand,
    posterior_mean,
    signed_logsumexp,
)
from ._modules import (
    MIN_VARIANCE,
    GaussianDecoder,
    MarginalLikelihood,
    inverse_positive,
)
from ._training import ObjectiveNet
from .integrators import DEFAULT_INTEGRATOR, DEFAULT_N_NODES


def _initial_noise_variance(x):
    """The starting sigma^2: the variance per feature that the initial decoder
    leaves unexplained, i.e. all of it (its outputs start near the data mean).

    A smaller start, such as probabilistic PCA's residual variance, is
    inconsistent with a decoder that explains nothing yet: the first
    gradients with respect to sigma^2 are then of order
    n * (total variance / sigma^2), and Adam's second-moment estimate
    remembers them for about a thousand steps, which stalls sigma^2 later
    (at n = 200, sigma = 0.1 it was still 2.5 times too large after 500
    steps, against 1.03 from this start).
    """
    variance = float(x.var(0).mean()) if x.shape[0] > 1 else 1.0
    return max(variance, MIN_VARIANCE * 1e3) if np.isfinite(variance) else 1.0


def e_step(x, model, rule):
    """log p(x_i), the posterior weights r_ij and sum_j r_ij ||x_i - g(z_j)||^2.

    One pass of the decoder over the rule's nodes serves all three (in the
    accumulation dtype, float64 for float32 data), without gradients.
    """
    variance = model.noise_variance().detach().to(torch.float64)
    nodes = rule.nodes if not rule.shared else rule.nodes[None]
    with torch.no_grad():
        loglik = gaussian_log_integrand(x, model.mean, variance)(nodes)
        terms = rule.log_weights.to(loglik.dtype) + loglik
        log_p = signed_logsumexp(terms, rule.signs, dim=1)
        weights = torch.exp(terms - log_p[:, None])
        if rule.signs is not None:
            weights = weights * rule.signs
        # Undo log N = -(||x - g||^2 / sigma^2 + n log(2 pi sigma^2)) / 2.
        n_features = x.shape[1]
        sq_dist = -2.0 * variance * loglik - n_features * variance * torch.log(
            2.0 * np.pi * variance
        )
        residual = (weights * sq_dist).sum(1)
    return log_p, weights, residual


class EStepStatistics:
    """What the closed-form parts of EM's M-step need, summed over an epoch.

    From each batch's E-step (posterior weights r_ij on nodes z_ij):

    - the aggregate posterior's moments, sum_ij r_ij z~_ij z~_ij^T with
      z~ = (z, 1), for the latent standardisation (:func:`standardise_latent`);
    - the expected squared residual sum_ij r_ij ||x_i - g(z_ij)||^2, whose mean
      over the data and features is the M-step for sigma^2;
    - for a linear decoder g(z) = A z + b, also sum_i x_i (sum_j r_ij z~_ij)^T
      and sum_i ||x_i||^2: with the moments above these are the normal
      equations of the M-step for (A, b), which is then the EM algorithm for
      probabilistic PCA.

    Everything is accumulated in float64, with x centred (at ``centre``) so
    that the residual sum of squares does not cancel.
    """

    def __init__(self, n_components, n_features, centre, linear):
        kwargs = {"dtype": torch.float64, "device": centre.device}
        self.centre = centre.detach().to(torch.float64)
        self.zz = torch.zeros(n_components + 1, n_components + 1, **kwargs)
        self.residual = torch.zeros((), **kwargs)
        self.linear = linear
        if linear:
            self.xz = torch.zeros(n_features, n_components + 1, **kwargs)
            self.xx = torch.zeros((), **kwargs)
        self.count = 0

    def add(self, x, nodes, weights, residual):
        """Add one batch: ``x`` (B, n), ``nodes`` (K, m) or (B, K, m),
        ``weights`` r (B, K) and ``residual`` (B,) from :func:`e_step`."""
        r = weights.to(torch.float64)
        z = nodes.to(torch.float64)
        z = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)
        if z.dim() == 2:
            expected = r @ z
            self.zz += z.T @ (r.sum(0)[:, None] * z)
        else:
            expected = torch.einsum("bk,bkm->bm", r, z)
            flat = z.reshape(-1, z.shape[-1])
            self.zz += flat.T @ (r.reshape(-1, 1) * flat)
        self.residual += residual.sum()
        if self.linear:
            x = x.detach().to(torch.float64) - self.centre
            self.xz += x.T @ expected
            self.xx += (x * x).sum()
        self.count += x.shape[0]

    def latent_moments(self):
        """Mean and covariance of the aggregate posterior (1/N) sum_i p(z | x_i)."""
        moments = self.zz / self.count
        mean = moments[:-1, -1]
        return mean, moments[:-1, :-1] - torch.outer(mean, mean)

    def noise_variance(self, n_features):
        """The M-step for sigma^2 at the E-step's decoder."""
        return self.residual / (n_features * self.count)

    def linear_m_step(self):
        """The M-step of a linear decoder: weight (n, m), bias (n,), sigma^2."""
        zz = 0.5 * (self.zz + self.zz.T)
        # A ridge far below any real signal; it only matters if the posterior
        # moments are singular (all points at one latent value).
        ridge = 1e-12 * zz.diagonal().mean()
        eye = torch.eye(len(zz), dtype=zz.dtype, device=zz.device)
        coef = torch.linalg.solve(zz + ridge * eye, self.xz.T).T
        residual = self.xx - 2.0 * (coef * self.xz).sum() + ((coef @ zz) * coef).sum()
        noise_variance = residual / (self.xz.shape[0] * self.count)
        return coef[:, :-1], coef[:, -1] + self.centre, noise_variance


def standardise_latent(decoder, mean, covariance):
    """Move the aggregate posterior's mean and covariance into the decoder.

    The parameter-expanded EM step (Liu, Rubin and Wu, 1998): give the prior
    a free mean mu and covariance S, maximise the EM surrogate over them (the
    aggregate posterior's moments), then return to the N(0, I) prior by
    z = mu + S^1/2 z', folded into the decoder's first (affine) layer. The
    decoder computes the same function of z' as it did of z, and the
    likelihood cannot decrease. This moves the parameters along the
    directions that the likelihood sees only through the prior (scale and
    offset of the latent space), where gradient steps and plain EM both crawl
    once the noise is small: EM changes the scale of a probabilistic PCA
    decoder by a factor 1 + O(sigma^2 / lambda) per iteration (lambda the
    signal variance).
    """
    first = decoder.hidden[0] if len(decoder.hidden) else decoder.out
    eigenvalues, eigenvectors = torch.linalg.eigh(0.5 * (covariance + covariance.T))
    # The symmetric root leaves the latent axes where they are (no rotation).
    root = (eigenvectors * eigenvalues.clamp_min(1e-12).sqrt()) @ eigenvectors.T
    with torch.no_grad():
        weight = first.weight.to(torch.float64)
        first.bias.add_((weight @ mean).to(first.bias.dtype))
        first.weight.copy_((weight @ root).to(first.weight.dtype))


class EMNet(ObjectiveNet):
    """Generalised, parameter-expanded EM on mini-batches.

    Every batch: an E-step (the integration rule and the posterior weights
    r_ij at the current parameters), then ``n_m_steps`` optimizer steps on
    the EM surrogate sum_ij r_ij log N(x_i; g(z_j), sigma^2 I) with the
    weights held fixed. Every epoch, from the E-step statistics of all
    batches (:class:`EStepStatistics`): sigma^2 jumps to its M-step, a linear
    decoder to its exact M-step, and the latent space is standardised
    (:func:`standardise_latent`). The closed-form updates use the whole
    training set, so they carry no mini-batch noise and need no step size.
    """

    def __init__(self, module, *args, n_m_steps=5, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.n_m_steps = n_m_steps

    def _closed_form(self):
        """Names of the parameters that move only at the end of an epoch."""
        decoder = self.module_.decoder
        names = {"decoder.raw_noise_variance"}
        if not len(decoder.hidden):
            names |= {"decoder.out.weight", "decoder.out.bias"}
        return names

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        if not training or iterator is None:
            return super().run_single_epoch(
                iterator, training, prefix, step_fn, **fit_params
            )
        decoder = self.module_.decoder
        x = iterator.dataset.x
        self.statistics_ = EStepStatistics(
            self.module_.n_components,
            x.shape[1],
            x.mean(0),
            linear=not len(decoder.hidden),
        )
        super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)
        statistics = self.statistics_
        del self.statistics_
        noise_variance = statistics.noise_variance(x.shape[1])
        with torch.no_grad():
            if statistics.linear:
                weight, bias, noise_variance = statistics.linear_m_step()
                decoder.out.weight.copy_(weight)
                decoder.out.bias.copy_(bias)
            if isinstance(decoder.raw_noise_variance, torch.nn.Parameter):
                decoder.raw_noise_variance.fill_(
                    inverse_positive(max(float(noise_variance), MIN_VARIANCE))
                )
        standardise_latent(decoder, *statistics.latent_moments())

    def train_step(self, batch, **fit_params):
        self._set_training(True)
        x = batch[0]
        model = self.module_
        with torch.no_grad():
            rule = model.rule(x)
        log_p, weights, residual = e_step(x, model, rule)
        self.statistics_.add(x, rule.nodes, weights, residual)
        closed_form = self._closed_form()
        steps = [
            p
            for name, p in model.named_parameters()
            if p.requires_grad and name not in closed_form
        ]
        for _ in range(self.n_m_steps if steps else 0):
            self.optimizer_.zero_grad()
            surrogate = em_surrogate(
                x, model.mean, rule, model.noise_variance(), weights=weights
            )
            (-surrogate.mean()).backward()
            for name, param in model.named_parameters():
                if name in closed_form:
                    param.grad = None
            self.notify(
                "on_grad_computed",
                batch=batch,
                training=True,
                named_parameters=list(self.get_all_learnable_params()),
            )
            self.optimizer_.step()
        # The history records log p(x) at the E-step's parameters.
        return {"loss": -log_p.mean().to(x.dtype), "y_pred": log_p.to(x.dtype)}


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
    Gauss-Hermite nodes, plus defensive prior nodes) and is exact for a
    linear decoder: every rule that places its nodes on the prior is off by
    nats once the posterior is narrow (many features or a small sigma), see
    :mod:`sklearn_nlica.integrators`.

    The default solver is parameter-expanded EM (``solver="em"``). Plain
    gradient ascent (``"adam"``, and the source notes' ``"alternating"``)
    is ill-conditioned here: the likelihood sees the scale and offset of the
    latent space only through the prior, a direction whose curvature is
    about sigma^2 / lambda (lambda the signal variance) times that of the
    others, and sigma^2 itself moves slowly once Adam has seen the large
    gradients of the first steps. On probabilistic PCA data (m = 2, n = 200,
    sigma = 0.1, 1,000 rows) Adam at a learning rate of 3e-2 was still 0.5
    to 20 nats per sample short of the maximum likelihood after 100 epochs;
    EM reaches it to 1e-3 nat in 5 epochs. EM alone is slow along the same
    direction (it changes the latent scale by a factor 1 + O(sigma^2 /
    lambda) per iteration); the parameter expansion, which moves the
    posterior's mean and covariance into the decoder's first layer after each
    epoch, removes that. See ``benchmarks/bench_mle.py``.

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
        Gradient of the log-likelihood for ``solver="adam"`` and
        ``"alternating"``: ``"autograd"`` differentiates through the
        log-sum-exp, ``"analytic"`` uses the source notes' closed form
        (Fisher's identity: the posterior weights r_ij held fixed). They agree
        to rounding. ``solver="em"`` always uses the closed form.
    solver : {"em", "adam", "alternating"}, default="em"
        ``"em"``: per batch, an E-step (the posterior weights r_ij on the
        rule's nodes) and ``n_m_steps`` Adam steps on the EM surrogate
        sum_j r_ij log N(x; g(z_j), sigma^2 I) with the weights held fixed;
        per epoch, from the E-steps of all batches, the exact M-step for
        sigma^2 (and for the whole decoder when it is linear: EM for
        probabilistic PCA) and the parameter-expansion step. The recorded
        loss is minus log p(x) at each batch's E-step.
        ``"adam"``: joint gradient ascent on log p(x) for decoder and sigma^2.
        ``"alternating"``: the source notes' Algorithm 1, a decoder step, then
        a sigma^2 step with its own step size ``noise_learning_rate``
        (gradient ascent with Adam).
    noise_learning_rate : float or None, default=None
        Step size of the sigma^2 updates with ``solver="alternating"`` (None:
        ``learning_rate_init``).
    n_m_steps : int, default=5
        Optimizer steps per E-step with ``solver="em"``: each E-step (which
        places the adaptive nodes) serves several steps.
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
        Adam's learning rate (of the M-steps with ``solver="em"``).
    device : str or torch.device, default="cpu"
        "cpu", "cuda", "cuda:N", "mps" or "auto".
    random_state : int, RandomState instance or None, default=None
        Fixes initialisation, batching and integration nodes; the same value
        gives the same model, bitwise on the CPU. The global torch RNG of the
        caller is left untouched.
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
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
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
        max_iter=200,
        tol=1e-4,
        n_iter_no_change=10,
        early_stopping=False,
        validation_fraction=0.1,
        batch_size="auto",
        learning_rate_init=1e-3,
        device="cpu",
        random_state=None,
        verbose=0,
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
            self.n_components,
            x.shape[1],
            self._hidden,
            self.activation,
            variance="fixed" if fixed else "shared",
            noise_variance=self.noise_variance if fixed else _initial_noise_variance(x),
            mean_init=x.mean(0),
        )
        return MarginalLikelihood(
            decoder,
            self.n_components,
            self._integrator,
            self.n_nodes,
            gradient=self.gradient,
        )

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
                ("decoder.raw_noise_variance", {"lr": self.noise_learning_rate})
            ]
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
