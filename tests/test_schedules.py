"""The recipes' schedules (sklearn_nlica._schedules): planned length, the
score monitor, the ConvergenceWarning policy and the thread policy."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from skorch.callbacks import Callback

from sklearn_nlica import VAEICA, torch_threads
from sklearn_nlica import _schedules as schedules
from sklearn_nlica._schedules import (
    SCHEDULE_EPOCHS,
    ScoreMonitor,
    scheduled_plan,
    thread_policy,
)
from sklearn_nlica._training import TensorData

LINEAR = {"hidden_layer_sizes": (), "activation": "identity"}


def data(n=60, seed=0):
    rng = np.random.RandomState(seed)
    return rng.normal(size=(n, 2)) @ rng.normal(size=(2, 4)) + 0.3 * rng.normal(
        size=(n, 4)
    )


@pytest.mark.parametrize(
    "n_batches, max_iter, epochs, planned",
    [(25, 200, 192, 192), (1, 200, SCHEDULE_EPOCHS, SCHEDULE_EPOCHS), (25, 5, 5, 192)],
)
def test_cosine_plan_has_a_fixed_number_of_steps(n_batches, max_iter, epochs, planned):
    module = torch.nn.Linear(2, 2)
    plan, run = scheduled_plan(module, n_batches, 4800, max_iter)
    assert run == epochs and plan.planned_epochs == planned
    assert plan.warm_epochs == epochs // 2  # stopping only in the second half
    constant, run = scheduled_plan(module, n_batches, 4800, max_iter, "constant")
    assert run == max_iter and constant.planned_epochs is None


def test_a_fit_that_runs_its_schedule_does_not_warn(monkeypatch):
    monkeypatch.setattr(schedules, "SCHEDULE_EPOCHS", 20)  # a short schedule
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = VAEICA(2, random_state=0, **LINEAR).fit(data())
    assert model.n_iter_ <= 20


def test_max_iter_cutting_the_schedule_warns_once():
    with pytest.warns(ConvergenceWarning, match="schedule plans 200") as caught:
        VAEICA(2, max_iter=2, random_state=0, **LINEAR).fit(data())
    assert sum(w.category is ConvergenceWarning for w in caught) == 1


def test_score_monitor_records_the_deterministic_score_of_fixed_rows():
    X = data()
    model = VAEICA(2, max_iter=3, random_state=0, **LINEAR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    history = model.net_.history
    assert history[-1, "score_loss"] == -history[-1, "score"]
    # Recomputed on the fitted module: the same rows and nodes, the same value.
    monitor = ScoreMonitor()
    monitor.fixed_ = {}
    dataset = TensorData(torch.tensor(X, dtype=model._dtype))
    again = monitor._score(model.module_, "score", dataset)
    assert again == pytest.approx(history[-1, "score"], abs=1e-4)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("hidden", [(), (16,)])
def test_monitored_score_is_the_score_of_its_rows(hidden):
    # What the progress bar shows and stopping reads is score() on the same
    # rows: for a linear decoder up to float32 training and score()'s QMC
    # error (the degree-3 rule integrates the quadratic log-likelihood
    # exactly), within hundredths of a nat otherwise.
    X = data(n=300)
    activation = "identity" if not hidden else "tanh"
    model = VAEICA(2, hidden_layer_sizes=hidden, activation=activation, max_iter=20)
    model.set_params(random_state=0).fit(X)
    monitored = model.net_.history[-1, "score"]
    assert monitored == pytest.approx(model.score(X), abs=0.02 if hidden else 5e-3)


def test_monitor_reads_fewer_rows_for_many_latent_dimensions():
    monitor = ScoreMonitor(n_rows=512)
    monitor.fixed_ = {}
    dataset = TensorData(torch.zeros(1000, 3))
    assert len(monitor._rows("score", dataset, n_nodes=5).x) == 512
    monitor.fixed_ = {}
    assert len(monitor._rows("score", dataset, n_nodes=201).x) == 512 * 16 // 201


class RecordThreads(Callback):
    def on_epoch_end(self, net, **kwargs):
        self.seen_ = torch.get_num_threads()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("n_threads", [1, 2])
def test_fits_use_the_thread_setting_and_restore_the_callers(n_threads):
    before = torch.get_num_threads()
    record = RecordThreads()
    with torch_threads(n_threads):
        VAEICA(2, max_iter=1, random_state=0, callbacks=[("t", record)], **LINEAR).fit(
            data()
        )
    assert record.seen_ == n_threads
    assert torch.get_num_threads() == before


def test_thread_policy_none_leaves_torch_alone():
    before = torch.get_num_threads()
    with torch_threads(None), thread_policy(torch.device("cpu")):
        assert torch.get_num_threads() == before


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_validation_scores_are_the_monitored_held_out_elbo():
    model = VAEICA(2, max_iter=3, early_stopping=True, random_state=0, **LINEAR)
    model.fit(data(n=100))
    expected = [float(v) for v in model.net_.history[:, "valid_score"]]
    assert model.validation_scores_ == pytest.approx(expected)
    assert model.best_validation_score_ == max(expected)


def test_warm_start_plans_its_schedule_anew_and_partial_fit_resumes_it():
    from sklearn_nlica.datasets import make_nonlinear_ica

    X, _ = make_nonlinear_ica(
        600, n_components=2, n_features=6, noise_std=0.1, random_state=0
    )
    rates = []

    class Rate(Callback):
        def on_batch_begin(self, net, **kwargs):
            rates.append(net.optimizer_.param_groups[0]["lr"])

    vae = VAEICA(
        n_components=2,
        hidden_layer_sizes=(16,),
        max_iter=30,
        warm_start=True,
        callbacks=[("rate", Rate())],
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        vae.fit(X)
    first = vae.score(X)
    rates.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # it ran its plan
        vae.set_params(max_iter=10).fit(X)
    # From the initial rate down to 0 again, not resumed at 0 nor jumped back
    # up midway (skorch resumes per-batch schedules by epoch count).
    assert rates[0] == pytest.approx(vae.learning_rate_init, rel=1e-3)
    assert rates[-1] < 0.1 * vae.learning_rate_init
    assert np.all(np.diff(rates) <= 1e-12)
    assert vae.score(X) > first - 0.05
    rates.clear()
    vae.partial_fit(X)
    assert max(rates) < 0.1 * vae.learning_rate_init  # the decay's tail
