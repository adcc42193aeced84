"""The maximum-likelihood estimator's solver: parameter-expanded EM on mini-batches.

Every batch: an E-step (the integration rule and the posterior weights r_ij
at the current parameters), then ``n_m_steps`` optimizer steps on the EM
surrogate sum_ij r_ij log N(x_i; g(z_j), sigma^2 I) with the weights held
fixed. Every epoch, from the E-step statistics of all batches
(:class:`EStepStatistics`): sigma^2 jumps to its M-step, a linear decoder to
its exact M-step (EM for probabilistic PCA, Tipping and Bishop, 1999), and the
latent space is standardised (:func:`latent_standardisation`). The closed-form
updates use the whole training set, so they carry no mini-batch noise and need
no step size.

The solver asks the module which parameters move in closed form
(``closed_form_parameters()``) and writes the updates through the decoder's
own methods; it knows no parameter by name.

Adaptive rules are warm-started: the solver keeps every training row's
posterior modes (the batches name their rows) and builds the next epoch's
rule for the row from them, so that Newton's method starts at the mode it
found last time instead of searching the latent space again. The search runs
on the first epoch, every ``SEARCH_EVERY`` epochs as a check for modes that
appeared since, and for any row whose warm start does not converge. The
parameter-expansion step moves the stored modes with the latent space. The
rule is built without a graph; each M-step decodes ``M_STEP_NODES`` nodes
per row of an adaptive rule, resampled from the posterior weights (every
node above ``M_STEP_MIN_WEIGHT`` where weights can be negative), and for a
float64 model runs the decoder's hidden layers in float32
(``M_STEP_FLOAT32``; the residuals and sums stay in float64). The E-step,
the closed-form updates, the recorded loss and every score stay in the
model's dtype.
"""

import math

import torch

from ._training import ObjectiveNet

# Epochs between two searches for new posterior modes (the first epoch
# searches; between searches every row starts from its modes of the epoch
# before).
SEARCH_EVERY = 10
# Where the M-steps cannot resample (a rule with negative weights), posterior
# weights at or below this are left out (their nodes are not decoded): the
# surrogate misses only their share of each row's posterior mass (the
# E-step's closed-form statistics use every node).
M_STEP_MIN_WEIGHT = 1e-3
# The M-steps run a float64 decoder's hidden layers in float32 (the
# residuals, the surrogate and its sums stay in float64): they only choose
# an optimizer step's direction, and float32 makes their forward and
# backward passes about three times cheaper. The E-step, the rule, the
# closed-form updates and every reported value stay in float64.
M_STEP_FLOAT32 = True
# Nodes per row that an M-step decodes on a per-row (adaptive) rule: drawn
# afresh for every M-step by systematic resampling of the posterior weights,
# an unbiased estimate of the surrogate and its gradient, where the weight
# cut (M_STEP_MIN_WEIGHT) kept about 22 of a row's 57 nodes (whose effective
# number is about 9). None decodes every node above the cut instead.
M_STEP_NODES = 8


class EStepStatistics:
    """What the closed-form parts of EM's M-step need, summed over an epoch.

    From each batch's E-step (posterior weights r_ij on nodes z_ij):

    - the aggregate posterior's moments, sum_ij r_ij z~_ij z~_ij^T with
      z~ = (z, 1), for the latent standardisation;
    - the expected squared residual sum_ij r_ij ||x_i - g(z_ij)||^2, whose mean
      over the data and features is the M-step for sigma^2;
    - for a linear decoder g(z) = A z + b, also sum_i x_i (sum_j r_ij z~_ij)^T
      and sum_i ||x_i||^2: with the moments above these are the normal
      equations of the M-step for (A, b).

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
        ``weights`` r (B, K) and ``residual`` (B,) from the E-step."""
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


def latent_standardisation(covariance):
    """The symmetric square root S^1/2 of the aggregate posterior's covariance.

    The parameter-expanded EM step (Liu, Rubin and Wu, 1998): give the prior
    a free mean mu and covariance S, maximise the EM surrogate over them (the
    aggregate posterior's moments), then return to the N(0, I) prior by
    z = mu + S^1/2 z', folded into the decoder (``absorb_affine``): the
    decoder computes the same function of z' as it did of z, and the
    likelihood cannot decrease. This moves the parameters along the
    directions that the likelihood sees only through the prior (scale and
    offset of the latent space), where gradient steps and plain EM both crawl
    once the noise is small. The symmetric root leaves the latent axes where
    they are (no rotation).
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(0.5 * (covariance + covariance.T))
    return (eigenvectors * eigenvalues.clamp_min(1e-12).sqrt()) @ eigenvectors.T


def systematic_resample(weights, n_draws):
    """Weights (B, K) of ``n_draws`` nodes per row drawn in proportion to the
    non-negative ``weights`` by systematic resampling (one uniform offset per
    row, then evenly spaced): each drawn node weighs 1 / ``n_draws`` per
    draw. Unbiased for the weighted sum of any function of the nodes, and
    it never draws a node of weight 0."""
    cumulative = weights.cumsum(1)
    offsets = torch.rand(len(weights), 1, dtype=weights.dtype, device=weights.device)
    steps = torch.arange(n_draws, dtype=weights.dtype, device=weights.device)
    # Below each row's total, so that the strict search lands on a node of
    # positive weight (the last of them at most).
    u = (offsets + steps) / n_draws * cumulative[:, -1:]
    index = torch.searchsorted(cumulative, u, right=True)
    index = index.clamp_max(weights.shape[1] - 1)
    counts = torch.zeros_like(weights).scatter_add_(1, index, torch.ones_like(u))
    return counts / n_draws


class EMNet(ObjectiveNet):
    """Generalised, parameter-expanded EM on mini-batches (see the module notes).

    The history records log p(x) at each batch's E-step.
    """

    def __init__(self, module, *args, n_m_steps=5, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.n_m_steps = n_m_steps

    def on_train_begin(self, net, **kwargs):
        super().on_train_begin(net, **kwargs)
        closed_form = {id(p) for p in self.module_.closed_form_parameters()}
        self.m_step_parameters_ = [
            p for p in self.module_.parameters() if id(p) not in closed_form
        ]
        # One seed for every rule of the fit: the search set, its neighbour
        # graph and the defensive nodes are built once.
        self.rule_seed_ = int(torch.randint(0, 2**62, ()))

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        if not training or iterator is None:
            return super().run_single_epoch(
                iterator, training, prefix, step_fn, **fit_params
            )
        decoder = self.module_.decoder
        x = iterator.dataset.x
        self._prepare_modes(len(x))
        self.statistics_ = EStepStatistics(
            self.module_.n_components, x.shape[1], x.mean(0), linear=decoder.is_linear
        )
        super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)
        statistics = self.statistics_
        del self.statistics_
        self._closed_form_step(decoder, statistics, x.shape[1])

    def _prepare_modes(self, n_rows):
        """Per-row modes (NaN: none yet); forgotten on the epochs that search."""
        epoch = len(self.history) - 1
        modes = getattr(self, "row_modes_", None)
        if modes is None or len(modes) != n_rows or epoch % SEARCH_EVERY == 0:
            modes = None
        self.row_modes_ = modes
        self._n_rows = n_rows

    def _warm_start(self, rows):
        if self.row_modes_ is None or rows is None:
            return None
        return self.row_modes_[rows]

    def _keep_modes(self, rows, modes):
        if modes is None or rows is None:
            return
        if self.row_modes_ is None or self.row_modes_.shape[1:] != modes.shape[1:]:
            self.row_modes_ = torch.full(
                (self._n_rows, *modes.shape[1:]),
                math.nan,
                dtype=modes.dtype,
                device=modes.device,
            )
        self.row_modes_[rows.to(modes.device)] = modes

    def _closed_form_step(self, decoder, statistics, n_features):
        noise_variance = statistics.noise_variance(n_features)
        if statistics.linear:
            weight, bias, noise_variance = statistics.linear_m_step()
            decoder.set_linear(weight, bias)
        if decoder.noise_parameters():
            decoder.set_noise_variance(float(noise_variance))
        mean, covariance = statistics.latent_moments()
        root = latent_standardisation(covariance)
        decoder.absorb_affine(mean, root)
        modes = getattr(self, "row_modes_", None)
        if modes is not None:
            # The same points in the new coordinates z' = root^-1 (z - mean).
            shifted = (modes - mean.to(modes)).reshape(-1, modes.shape[-1])
            moved = torch.linalg.solve(root.to(modes), shifted.T).T
            self.row_modes_ = moved.reshape(modes.shape)

    def train_step(self, batch, **fit_params):
        self._set_training(True)
        x, rows = batch
        model = self.module_
        steps = [p for p in self.m_step_parameters_ if p.requires_grad]
        n_steps = self.n_m_steps if steps else 0
        generator = torch.Generator().manual_seed(self.rule_seed_)
        # Without a graph: the M-steps decode their own (pruned, float32)
        # nodes, which costs less than a backward pass through the rule's
        # float64 evaluation of every node.
        with torch.no_grad():
            rule = model.rule(x, generator=generator, warm_start=self._warm_start(rows))
        self._keep_modes(rows, rule.modes)
        log_p, weights, residual = model.e_step(x, rule)
        self.statistics_.add(x, rule.nodes, weights, residual)
        # Per-row nodes with positive weights (a rule without signs), read
        # off the rule instead of the weights: no device sync per batch.
        resample = (
            M_STEP_NODES is not None and rule.nodes.dim() == 3 and rule.signs is None
        )
        for _ in range(n_steps):
            self.optimizer_.zero_grad()
            step_weights, min_weight = weights, M_STEP_MIN_WEIGHT
            if resample:
                step_weights = systematic_resample(weights, M_STEP_NODES)
                min_weight = 0.0
            surrogate = model.em_surrogate(
                x,
                rule,
                step_weights,
                min_weight=min_weight,
                reduced_precision=M_STEP_FLOAT32,
            )
            (-surrogate.mean()).backward()
            for param in model.closed_form_parameters():
                param.grad = None
            self.notify(
                "on_grad_computed",
                batch=batch,
                training=True,
                named_parameters=list(self.get_all_learnable_params()),
            )
            self.optimizer_.step()
        return {"loss": -log_p.mean().to(x.dtype), "y_pred": log_p.to(x.dtype)}
