"""The recipes' schedules: how long a fit runs, what its stopping reads, and
the threads torch uses while an estimator works (the training layer, beside
``_training.py``)."""

import contextlib
import contextvars
import math

import torch
from skorch.callbacks import Callback, LRScheduler

from ._training import TrainingPlan
from .integrators._base import degree_three_rule

# Optimizer steps of the VAEs' default schedule, whatever the number of rows.
SCHEDULE_STEPS = 4800
# Batches (E-steps, each followed by its M-steps) of the maximum-likelihood
# estimator's default schedule.
EM_SCHEDULE_BATCHES = 400
SCHEDULE_EPOCHS = 200


class CosineDecay:
    """The factor of a cosine learning-rate decay, for ``LambdaLR``: from 1 at
    step 0 to ``final_fraction`` at ``n_steps``, then flat."""

    def __init__(self, n_steps, final_fraction=0.0, start=0):
        self.n_steps = n_steps
        self.final_fraction = final_fraction
        self.start = start

    def __call__(self, step):
        t = min(1.0, max(0, step - self.start) / max(1, self.n_steps))
        f = self.final_fraction
        return f + (1 - f) * 0.5 * (1 + math.cos(math.pi * t))


class BatchLRScheduler(LRScheduler):
    """skorch's ``LRScheduler`` for schedules stepped at every batch, resumed
    at the batch it reached: skorch passes a continued fit the number of
    epochs as the scheduler's position."""

    def _get_scheduler(self, net, policy, **scheduler_kwargs):
        if self.step_every == "batch" and len(net.history):
            scheduler_kwargs.setdefault("last_epoch", self.batch_idx_ - 1)
        return super()._get_scheduler(net, policy, **scheduler_kwargs)


def restart_schedule(net, epochs):
    """Plan a continued fit (``warm_start``, ``partial_fit``) like a new one:
    a cosine decay over its ``epochs`` from the initial rate, and stopping
    held back over their first half, or over all of them where the first
    fit's plan never let it stop. Resumed instead, a finished decay would
    train at a rate of 0."""
    callbacks = dict(net.callbacks_)
    schedule = callbacks.get("lr_schedule")
    if not isinstance(getattr(schedule, "lr_lambda", None), CosineDecay):
        return
    batches = net.history[:, "train_batch_count"]
    schedule.lr_lambda = CosineDecay(epochs * batches[-1], start=sum(batches))
    stopping = callbacks["early_stopping"]
    never = stopping.start_epoch >= len(batches)
    stopping.start_epoch = len(batches) + (epochs if never else epochs // 2)
    net.planned_epochs_ = epochs


def set_base_rate(net, old, new):
    """Make ``new`` the base rate of ``net``'s optimizer where ``old`` was
    (the schedule keeps its position; groups with a rate of their own, such
    as the MLE's noise_learning_rate, keep it)."""
    if new == old:
        return
    for group in net.optimizer_.param_groups:
        if group.get("initial_lr", group["lr"]) == old:
            group["lr"] = new * group["lr"] / old
            if "initial_lr" in group:
                group["initial_lr"] = new
    net.lr = new


def cosine_schedule(n_steps):
    """A cosine decay to 0 over ``n_steps`` batches."""
    return BatchLRScheduler(
        policy=torch.optim.lr_scheduler.LambdaLR,
        lr_lambda=CosineDecay(n_steps),
        step_every="batch",
        event_name=None,
    )


def scheduled_plan(
    module, n_batches, n_steps, max_iter, schedule="cosine", *, score_monitor=True
):
    """The plan of a scheduled recipe, and the epochs it runs.

    A schedule of about ``n_steps`` batches (optimizer steps; E-steps for
    EM), whatever the data size (whole epochs, at least one and at most
    ``SCHEDULE_EPOCHS``, the estimators' default ``max_iter``), that
    ``max_iter`` can only cut short: with ``schedule="cosine"`` the learning
    rate decays to 0 over the epochs
    run, and stopping may end the fit only in its second half, once the
    rate is low enough for the parameters to settle; with ``"constant"`` it
    stays, and ``max_iter`` alone bounds the fit. With ``score_monitor`` a
    :class:`ScoreMonitor` records the score that stopping reads (else it
    reads the training loss), and Adam uses its fused kernel where torch has
    one.
    """
    wanted = min(max(1, math.ceil(n_steps / max(1, n_batches))), SCHEDULE_EPOCHS)
    epochs = min(wanted, max_iter) if schedule == "cosine" else max_iter
    callbacks = [("score_monitor", ScoreMonitor())] if score_monitor else []
    if schedule == "cosine":
        callbacks.append(("lr_schedule", cosine_schedule(epochs * n_batches)))
    device = next(module.parameters()).device
    fused = {"optimizer__fused": True} if device.type in ("cpu", "cuda") else {}
    plan = TrainingPlan(
        net_kwargs=fused,
        callbacks=callbacks,
        planned_epochs=wanted if schedule == "cosine" else None,
        monitor="score_loss" if score_monitor else None,
        warm_epochs=epochs // 2 if schedule == "cosine" else 0,
    )
    return plan, epochs


class ScoreMonitor(Callback):
    """Record the estimator's score on fixed rows after every epoch.

    The module's ``score_samples`` on up to ``n_rows`` rows spread evenly
    over the training data (and over the held-out data, when there is a
    hold-out), integrated with the degree-3 rule of ``2 m + 1`` nodes (the
    centre and two points on each axis): a deterministic function of the
    parameters, so that its change from epoch to epoch is the model's and
    not the estimator's noise, and exact for expectations of polynomials of
    degree 3, which puts it within hundredths of a nat of ``score``. Fewer
    rows are read when ``m`` is large, to keep its cost at about
    ``n_rows * 16`` decoder rows. Writes ``score`` and ``score_loss`` (minus
    it, for stopping), and ``valid_score`` and ``valid_score_loss`` with a
    hold-out.
    """

    def __init__(self, n_rows=512):
        self.n_rows = n_rows

    def on_train_begin(self, net, X=None, **kwargs):
        self.fixed_ = {}

    def on_train_end(self, net, **kwargs):
        # The fitted model keeps no copy of the training rows.
        self.fixed_ = {}

    def _rows(self, key, dataset, n_nodes):
        if key not in self.fixed_:
            n = len(dataset)
            wanted = max(1, min(self.n_rows, self.n_rows * 16 // n_nodes))
            index = torch.linspace(0, n - 1, min(n, wanted)).round().long()
            self.fixed_[key] = dataset.take(index.to(dataset.x.device))
        return self.fixed_[key]

    @torch.no_grad()
    def _score(self, module, key, dataset):
        rule = degree_three_rule(module.n_components)
        part = self._rows(key, dataset, rule.n_nodes)
        rule = rule.to(dtype=part.x.dtype, device=part.x.device)
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
    """Set the torch intra-op threads of the estimators inside the block.

    Outside any block, fits and predictions use one thread; the caller's own
    ``torch.get_num_threads()`` is restored after each of them.

    Parameters
    ----------
    n_threads : int or None
        Threads for torch's intra-op pool while an estimator works on the
        CPU; None leaves torch's own setting alone.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_nlica import VAEICA, torch_threads
    >>> X = np.random.RandomState(0).normal(size=(100, 4))
    >>> with torch_threads(2):
    ...     model = VAEICA(n_components=2, max_iter=2, random_state=0).fit(X)
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
