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
schedule and the linear warm start (schedule length, score monitor and
threads: ``_schedules.py``). An estimator states what it needs in a
:class:`TrainingPlan`.
"""

import contextlib
import math
import re
import signal
import sys
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.utils import check_random_state
from skorch import NeuralNet
from skorch.callbacks import (
    Callback,
    EarlyStopping,
    Freezer,
    PrintLog,
    Unfreezer,
)
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

    Used as skorch's ``iterator_train``/``iterator_valid``. Each batch is
    ``(inputs, rows)``: the module's input and the indices of its rows in the
    dataset (skorch's target slot, which the objectives ignore), so that a
    solver can keep state per row across epochs. The permutation is drawn
    with torch's global generator, which the estimators fork and seed for the
    duration of ``fit`` so that ``random_state`` fixes it.
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
        else:
            order = torch.arange(n, device=self.dataset.x.device)
        for index in order.split(self.batch_size):
            yield self.dataset.take(index).as_input(), index


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


@contextlib.contextmanager
def watch_interrupts():
    """Yield a function that tells whether a SIGINT (Ctrl-C) arrived inside
    the block: skorch's callbacks raise KeyboardInterrupt to stop training,
    so the exception alone does not say whether the user asked to stop.
    Outside the main thread no signal arrives; nothing is installed there."""
    hit = []
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(
        previous
    ):
        yield lambda: bool(hit)
        return

    def handler(signum, frame):
        hit.append(signum)
        previous(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class TrainingPlan:
    """How an estimator trains: the net class and its extra arguments, the
    callbacks of its recipe, and the leading epochs that optimise something
    other than the final objective (a warm-up, not judged for convergence)."""

    net_class: type = None
    net_kwargs: dict = field(default_factory=dict)
    callbacks: list = field(default_factory=list)
    warm_epochs: int = 0
    planned_epochs: int = None  # None: max_iter; max_iter cutting them short warns
    monitor: str = None  # history key stopping reads (None: the loss)


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

    def partial_fit(self, X, y=None, classes=None, epochs=None, **fit_params):
        """skorch's ``partial_fit``, except that a user's interrupt (Ctrl-C)
        or an error stops training and propagates, after the callbacks' ends
        ran. skorch's own callbacks (early stopping) still stop training by
        raising KeyboardInterrupt, which ends the fit normally."""
        if not self.initialized_:
            self.initialize()
        self.notify("on_train_begin", X=X, y=y)
        try:
            with watch_interrupts() as interrupted:
                try:
                    self.fit_loop(X, y, epochs=epochs, **fit_params)
                except KeyboardInterrupt:
                    if interrupted():
                        raise
        finally:
            self.notify("on_train_end", X=X, y=y)
        return self

    def on_train_end(self, net, **kwargs):
        # A warm start may end with parameters still frozen; the fitted model
        # leaves them all trainable.
        for param in self.module_.parameters():
            param.requires_grad_(True)

    def complete_epochs(self):
        """Drop the history row of an epoch that an interrupt cut short."""
        while len(self.history) and "train_loss" not in self.history[-1]:
            self.history.pop()
        return len(self.history)


# ---- callbacks -----------------------------------------------------------------


# A training loss this many times its scale above where it started has diverged.
DIVERGENCE_FACTOR = 1e3


class NumericalGuard(Callback):
    """Stop the fit at the first non-finite loss, or once the loss has grown
    by orders of magnitude above the lowest value it reached (divergence),
    with an error that says what to change (``advice``)."""

    def __init__(self, advice="lower learning_rate_init"):
        self.advice = advice

    def on_train_begin(self, net, **kwargs):
        losses = [row["train_loss"] for row in net.history if "train_loss" in row]
        self.best_ = min(losses, default=math.inf)

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if loss is None or not training:
            return
        # skorch has already synchronised on the loss; reading it again is free.
        value = loss.item()
        epoch = len(net.history)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"The training objective became {value} in epoch {epoch}: "
                f"{self.advice}."
            )
        if value - self.best_ > DIVERGENCE_FACTOR * (abs(self.best_) + 1.0):
            raise FloatingPointError(
                f"The training objective diverged in epoch {epoch}: the loss grew "
                f"from {self.best_:.4g} to {value:.4g}. {self.advice.capitalize()}."
            )
        self.best_ = min(self.best_, value)


class PlainPrintLog(PrintLog):
    """skorch's table of epochs, without its colour codes where the output is
    not a terminal (a log file, a notebook's captured output)."""

    def format_row(self, row, key, color):
        text = super().format_row(row, key, color)
        if isinstance(text, str) and not sys.stdout.isatty():
            text = _ANSI.sub("", text)
        return text


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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


class GradientClipping(Callback):
    """Clip the gradient's norm to ``max_norm`` at every step, as skorch's
    ``GradientNormClipping`` does, on the module's parameters listed once per
    fit rather than gathered anew at every step."""

    def __init__(self, max_norm):
        self.max_norm = max_norm

    def on_train_begin(self, net, **kwargs):
        self.params_ = list(net.module_.parameters())

    def on_grad_computed(self, net, **kwargs):
        torch.nn.utils.clip_grad_norm_(self.params_, max_norm=self.max_norm)

    def on_train_end(self, net, **kwargs):
        self.params_ = []


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
