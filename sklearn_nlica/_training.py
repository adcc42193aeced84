"""The skorch training driver shared by every estimator, with its callbacks.

The estimators' torch modules return a per-sample objective (log-likelihood
or ELBO); :class:`ObjectiveNet` minimises minus its mean with skorch, which
brings the history, the callbacks and the device handling. skorch's default
data path indexes a Dataset row by row; :class:`TensorBatches` instead slices
whole tensors that already live on the device, which keeps skorch within a
few percent of a bare torch loop.

Every training policy lives here: batching and the hold-out split, device
and seed handling, the non-finite guard, the progress bar, early stopping
that starts after a warm-up, the KL warm-up, the cosine learning-rate
schedule and the linear warm start, the score monitor and the thread
policy. An estimator states what it needs in a :class:`TrainingPlan`.
"""

import contextlib
import contextvars
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.utils import check_random_state
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, Freezer, LRScheduler, Unfreezer
from skorch.utils import TeeGenerator

# ---- device and seeds ----------------------------------------------------------


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
                f"device={device!r} was requested but CUDA is not available on "
                "this machine; use device='cpu' or 'auto'."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(
                f"device={device!r} was requested but MPS is not available on "
                "this machine; use device='cpu' or 'auto'."
            )
    elif resolved.type != "cpu":
        raise ValueError(
            f"device={device!r} is not supported; use 'cpu', 'cuda', 'cuda:N', "
            "'mps' or 'auto'."
        )
    return resolved


@contextlib.contextmanager
def seeded(seed, device):
    """Run the block on torch's global generators forked and seeded.

    Everything random inside (initialisation, shuffling, integration nodes,
    reparameterisation noise) is fixed by ``seed``, and the caller's own
    global torch RNG state is restored afterwards, untouched.
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


def draw_seed(random_state):
    """An int seed for torch drawn from a scikit-learn ``random_state``."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


# ---- data ----------------------------------------------------------------------


class TensorData:
    """Named tensors of equal length, all on the training device.

    ``x`` is the observations; ``extras`` (e.g. the iVAE's auxiliary ``u``)
    travel with them and reach the module as keyword arguments.
    """

    def __init__(self, x, **extras):
        self.x = x
        self.extras = extras

    def __len__(self):
        return len(self.x)

    def take(self, index):
        return TensorData(
            self.x[index], **{k: v[index] for k, v in self.extras.items()}
        )

    def as_input(self):
        """What the module's ``forward`` receives: a tensor, or a dict of them."""
        return {"x": self.x, **self.extras} if self.extras else self.x


class TensorBatches:
    """Mini-batches of a :class:`TensorData` as slices of a shuffled index.

    Used as skorch's ``iterator_train``/``iterator_valid``. The permutation
    is drawn with torch's global generator, which the estimators fork and
    seed for the duration of ``fit`` so that ``random_state`` fixes it.
    """

    def __init__(self, dataset, batch_size, shuffle=False):
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle

    def __len__(self):
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            # Drawn on the CPU so that the same seed gives the same batches on
            # every device.
            order = torch.randperm(n).to(self.dataset.x.device)
            for index in order.split(self.batch_size):
                yield self.dataset.take(index).as_input(), None
        else:
            for start in range(0, n, self.batch_size):
                part = self.dataset.take(slice(start, start + self.batch_size))
                yield part.as_input(), None


class HoldOut:
    """skorch ``train_split``: a validation set drawn once, like MLPRegressor's."""

    def __init__(self, validation_fraction):
        self.validation_fraction = validation_fraction

    def n_valid(self, n_samples):
        """Rows held out of ``n_samples``."""
        return max(1, round(self.validation_fraction * n_samples))

    def __call__(self, dataset, y=None, **kwargs):
        n = len(dataset)
        n_valid = self.n_valid(n)
        if n - n_valid < 1:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} leaves no training "
                f"sample out of {n}; use more samples or early_stopping=False."
            )
        order = torch.randperm(n).to(dataset.x.device)
        return dataset.take(order[n_valid:]), dataset.take(order[:n_valid])


# ---- the net -------------------------------------------------------------------


@dataclass
class TrainingPlan:
    """How an estimator trains: the net class and its extra arguments, the
    callbacks of its recipe, and the leading epochs that optimise something
    other than the final objective (a warm-up, not judged for convergence)."""

    net_class: type = None
    net_kwargs: dict = field(default_factory=dict)
    callbacks: list = field(default_factory=list)
    warm_epochs: int = 0
    # The epochs the recipe plans (None: max_iter); a fit that max_iter cuts
    # short of them warns.
    planned_epochs: int = None
    # The history key that stopping and the convergence check read (lower is
    # better; None: the training or validation loss).
    monitor: str = None


class _NoCriterion(torch.nn.Module):
    """skorch wants a criterion; the module's output already is the objective."""

    def forward(self, objective):
        return -objective.mean()


def _objective(y_pred):
    # A module may return the objective with closed-form values (TrainingStep).
    return y_pred[0] if isinstance(y_pred, tuple) else y_pred


class ObjectiveNet(NeuralNet):
    """A skorch ``NeuralNet`` whose loss is minus the module's mean objective.

    The module's ``forward`` returns one objective value per sample (to be
    maximised), or a ``TrainingStep`` whose closed-form values the module
    writes into itself (``apply_closed_form``) after each optimizer step.
    ``alternating=True`` switches to one step per parameter group and batch,
    each moving that group alone, with the groups given by the module's
    ``alternating_groups()`` (coordinate ascent).
    """

    def __init__(self, module, *args, alternating=False, **kwargs):
        super().__init__(module, *args, criterion=_NoCriterion, **kwargs)
        self.alternating = alternating

    def get_loss(self, y_pred, y_true, X=None, training=False):
        return self.criterion_(_objective(y_pred))

    def get_dataset(self, X, y=None):
        return X

    def _set_training(self, training=True):
        # skorch switches the mode at every step; walking the module tree each
        # time costs ~5% of a small model's step, so only switch on a change.
        if self.module_.training != training:
            super()._set_training(training)

    def train_step(self, batch, **fit_params):
        groups = self.module_.alternating_groups() if self.alternating else None
        if groups is None:
            step = super().train_step(batch, **fit_params)
        else:
            step = self._alternating_step(batch, groups, **fit_params)
        if isinstance(step["y_pred"], tuple):
            self.module_.apply_closed_form(step["y_pred"].closed_form)
        return step

    def _alternating_step(self, batch, groups, **fit_params):
        for group in groups:
            self.optimizer_.zero_grad()
            step = self.train_step_single(batch, **fit_params)
            # Adam skips parameters without a gradient: only this group moves.
            moving = {id(p) for p in group}
            for param in self.module_.parameters():
                if id(param) not in moving:
                    param.grad = None
            self.notify(
                "on_grad_computed",
                batch=batch,
                training=True,
                named_parameters=TeeGenerator(self.get_all_learnable_params()),
            )
            self.optimizer_.step()
        return step

    def on_train_end(self, net, **kwargs):
        # A warm start may end with parameters still frozen; the fitted model
        # leaves them all trainable.
        for param in self.module_.parameters():
            param.requires_grad_(True)


# ---- callbacks -----------------------------------------------------------------


class RaiseOnNonFinite(Callback):
    """Stop the fit at the first NaN or infinite loss with an actionable error."""

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        # skorch has already synchronised on the loss; reading it again is free.
        if loss is not None and not math.isfinite(loss.item()):
            epoch = len(net.history)
            raise FloatingPointError(
                f"The training objective became {loss.item()} in epoch {epoch}. "
                "Lower learning_rate_init, standardise X (e.g. StandardScaler), "
                "fix noise_variance to a larger value, or use float64 input."
            )


class EpochProgressBar(Callback):
    """One tqdm bar over epochs showing the latest training loss."""

    def __init__(self, total, desc=None):
        self.total = total
        self.desc = desc

    def on_train_begin(self, net, **kwargs):
        from tqdm.auto import tqdm

        self.bar_ = tqdm(total=self.total, desc=self.desc, unit="epoch", leave=False)

    def on_epoch_end(self, net, **kwargs):
        row = net.history[-1]
        if "score" in row:
            # What the estimator's score reports, from ScoreMonitor.
            postfix = {"score": f"{row['score']:.4f}"}
            if "valid_score" in row:
                postfix["valid"] = f"{row['valid_score']:.4f}"
        else:
            postfix = {"loss": f"{row['train_loss']:.4f}"}
            if "valid_loss" in row:
                postfix["valid"] = f"{row['valid_loss']:.4f}"
        self.bar_.set_postfix(postfix, refresh=False)
        self.bar_.update()

    def on_train_end(self, net, **kwargs):
        self.bar_.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("bar_", None)
        return state


class EarlyStoppingAfter(EarlyStopping):
    """skorch's early stopping, counting only once ``start_epoch`` epochs are
    over: during a warm-up the objective is not yet the final one and rises
    by design."""

    def __init__(self, start_epoch=0, **kwargs):
        super().__init__(**kwargs)
        self.start_epoch = start_epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) > self.start_epoch:
            super().on_epoch_end(net, **kwargs)


def converged(losses, n_iter_no_change, tol, start_epoch=0):
    """Whether the last ``n_iter_no_change`` losses (after ``start_epoch``)
    failed to improve on the best before them by more than ``tol``."""
    losses = np.asarray(losses, dtype=float)[start_epoch:]
    if len(losses) <= n_iter_no_change:
        return False
    best_before = losses[:-n_iter_no_change].min()
    return losses[-n_iter_no_change:].min() > best_before - tol


class KLWarmup(Callback):
    """Raise the module's ``kl_weight`` linearly from 0 to 1 over the first
    ``n_steps`` training steps (the warm-up of Sonderby et al., 2016)."""

    def __init__(self, n_steps):
        self.n_steps = n_steps

    def on_train_begin(self, net, **kwargs):
        self.step_ = 0
        net.module_.kl_weight = 0.0

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        # Validation batches (early stopping) are scored with the current weight.
        if training:
            net.module_.kl_weight = min(1.0, self.step_ / max(1, self.n_steps))
            self.step_ += 1

    def on_train_end(self, net, **kwargs):
        net.module_.kl_weight = 1.0


class CosineDecay:
    """The factor of a cosine learning-rate decay, for ``LambdaLR``: from 1 at
    step 0 to ``final_fraction`` at ``n_steps``, then flat."""

    def __init__(self, n_steps, final_fraction=0.0):
        self.n_steps = n_steps
        self.final_fraction = final_fraction

    def __call__(self, step):
        t = min(1.0, step / max(1, self.n_steps))
        f = self.final_fraction
        return f + (1 - f) * 0.5 * (1 + math.cos(math.pi * t))


def cosine_schedule(n_steps):
    """skorch's ``LRScheduler`` stepping a cosine decay to 0 at every batch."""
    return LRScheduler(
        policy=torch.optim.lr_scheduler.LambdaLR,
        lr_lambda=CosineDecay(n_steps),
        step_every="batch",
        event_name=None,
    )


class _NameIn:
    """A picklable parameter-name pattern for skorch's ``Freezer``."""

    def __init__(self, names):
        self.names = frozenset(names)

    def __call__(self, name):
        return name in self.names


def linear_warm_start(module, n_epochs):
    """Callbacks that freeze ``module.nonlinear_parameters()`` for the first
    ``n_epochs`` epochs (skorch's ``Freezer`` and ``Unfreezer``)."""
    frozen = {id(p) for p in module.nonlinear_parameters()}
    names = _NameIn(name for name, p in module.named_parameters() if id(p) in frozen)
    return [
        ("linear_warm_start", Freezer(names, at=1)),
        ("linear_warm_start_end", Unfreezer(names, at=n_epochs + 1)),
    ]


# ---- schedule length, the score monitor, threads -------------------------------


def scheduled_plan(module, n_batches, n_steps, max_iter, schedule="cosine"):
    """The plan of a VAE recipe, and the epochs it runs.

    A schedule of about ``n_steps`` optimizer steps, whatever the data size
    (whole epochs, at least one), that ``max_iter`` can only cut short: with
    ``schedule="cosine"`` the learning rate decays to 0 over the epochs
    run; with ``"constant"`` it stays, and ``max_iter`` alone bounds the fit.
    A :class:`ScoreMonitor` records the score that stopping reads, and Adam
    uses its fused kernel where torch has one.
    """
    wanted = max(1, math.ceil(n_steps / max(1, n_batches)))
    epochs = min(wanted, max_iter) if schedule == "cosine" else max_iter
    callbacks = [("score_monitor", ScoreMonitor())]
    if schedule == "cosine":
        callbacks.append(("lr_schedule", cosine_schedule(epochs * n_batches)))
    device = next(module.parameters()).device
    fused = {"optimizer__fused": True} if device.type in ("cpu", "cuda") else {}
    plan = TrainingPlan(
        net_kwargs=fused,
        callbacks=callbacks,
        planned_epochs=wanted if schedule == "cosine" else None,
        monitor="score_loss",
    )
    return plan, epochs


class ScoreMonitor(Callback):
    """Record the estimator's score on fixed rows after every epoch.

    The module's ``score_samples`` on up to ``n_rows`` rows spread evenly
    over the training data (and over the held-out data, when there is a
    hold-out), with ``n_nodes`` nodes drawn once from ``seed``: a
    deterministic function of the parameters, so that its change from epoch
    to epoch is the model's and not the estimator's noise. Writes ``score``
    and ``score_loss`` (minus it, for stopping), and ``valid_score`` and
    ``valid_score_loss`` with a hold-out.
    """

    def __init__(self, n_rows=512, n_nodes=4, seed=0):
        self.n_rows = n_rows
        self.n_nodes = n_nodes
        self.seed = seed

    def on_train_begin(self, net, X=None, **kwargs):
        self.fixed_ = {}

    def _rows(self, key, dataset):
        if key not in self.fixed_:
            n = len(dataset)
            index = torch.linspace(0, n - 1, min(n, self.n_rows)).round().long()
            self.fixed_[key] = dataset.take(index.to(dataset.x.device))
        return self.fixed_[key]

    @torch.no_grad()
    def _score(self, module, key, dataset):
        part = self._rows(key, dataset)
        generator = torch.Generator().manual_seed(self.seed)
        rule = module.rule(part.x, self.n_nodes, generator)
        return float(module.score_samples(part.x, rule, **part.extras).mean())

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        module = net.module_
        was_training = module.training
        module.eval()
        for key, dataset in (("score", dataset_train), ("valid_score", dataset_valid)):
            if dataset is not None and len(dataset):
                value = self._score(module, key, dataset)
                net.history.record(key, value)
                net.history.record(f"{key}_loss", -value)
        module.train(was_training)


# The intra-op threads of the estimators' torch work, set by torch_threads.
_THREADS = contextvars.ContextVar("sklearn_nlica_threads", default=1)


@contextlib.contextmanager
def torch_threads(n_threads):
    """Run the estimators' fits and predictions inside the block with
    ``n_threads`` torch intra-op threads (outside: one).

    Parameters
    ----------
    n_threads : int or None
        Threads for torch's intra-op pool while an estimator works; None
        leaves torch's own setting alone.
    """
    token = _THREADS.set(n_threads)
    try:
        yield
    finally:
        _THREADS.reset(token)


@contextlib.contextmanager
def thread_policy(device):
    """Apply the thread setting of :func:`torch_threads` for the block (CPU
    only), and give the caller back its own setting afterwards."""
    n_threads = _THREADS.get()
    if n_threads is None or device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
