"""The skorch driver: batching, hold-out split, alternating updates, NaN guard."""

import math

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn

from sklearn_nlica._models import TrainingStep
from sklearn_nlica._schedules import CosineDecay, cosine_schedule
from sklearn_nlica._training import (
    EarlyStoppingAfter,
    GradientClipping,
    HoldOut,
    KLWarmup,
    NumericalGuard,
    ObjectiveNet,
    TensorBatches,
    TensorData,
    converged,
    draw_seed,
    linear_warm_start,
    resolve_device,
    seeded,
)


def test_tensor_batches_cover_every_row_once():
    x = torch.arange(23.0).unsqueeze(1)
    u = torch.arange(23)
    batches = TensorBatches(TensorData(x, u=u), batch_size=5, shuffle=True)
    assert len(batches) == 5
    seen = []
    for inputs, rows in batches:
        assert torch.equal(rows, inputs["u"])  # each batch names its rows
        assert torch.equal(inputs["x"][:, 0].long(), inputs["u"])  # rows stay aligned
        seen += inputs["u"].tolist()
    assert sorted(seen) == list(range(23)) and seen != list(range(23))
    ordered = [b[0] for b in TensorBatches(TensorData(x), batch_size=10)]
    assert torch.equal(torch.cat(ordered), x) and len(ordered) == 3


def test_hold_out_split_is_disjoint_and_sized():
    data = TensorData(torch.arange(50.0).unsqueeze(1))
    train, valid = HoldOut(0.2)(data)
    assert (len(train), len(valid)) == (40, 10)
    assert set(train.x[:, 0].tolist()).isdisjoint(valid.x[:, 0].tolist())
    with pytest.raises(ValueError, match="validation_fraction"):
        HoldOut(0.9)(TensorData(torch.zeros(1, 1)))


class TwoGroups(nn.Module):
    """Objective -(a b - 1)^2 - a^2 b^2: the groups interact, so the order of
    updates shows in the result."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(1, 1, bias=False)
        self.b = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.a.weight.fill_(0.5)
            self.b.weight.fill_(2.0)

    def forward(self, x):
        y = self.b(self.a(x))
        return -(y - 1.0).square().sum(1) - 0.1 * y.square().sum(1)

    def alternating_groups(self):
        return [list(self.a.parameters()), list(self.b.parameters())]


def one_step(alternating):
    net = ObjectiveNet(
        TwoGroups(),
        optimizer=torch.optim.SGD,
        lr=0.1,
        max_epochs=1,
        batch_size=1,
        iterator_train=TensorBatches,
        train_split=None,
        alternating=alternating,
        verbose=0,
        callbacks__print_log=None,
    )
    net.fit(TensorData(torch.ones(1, 1)))
    return net.module_.a.weight.item(), net.module_.b.weight.item()


def test_alternating_updates_use_the_fresh_first_group():
    a0, b0 = 0.5, 2.0
    a_joint, b_joint = one_step(False)
    a_alt, b_alt = one_step(True)
    # The first group takes exactly the joint step ...
    assert a_alt == pytest.approx(a_joint)
    # ... the second group's gradient is taken at the updated first group.
    y = a_alt * b0
    expected_b = b0 + 0.1 * (-2 * (y - 1) - 0.2 * y) * a_alt
    assert b_alt == pytest.approx(expected_b)
    assert b_alt != pytest.approx(b_joint)
    assert a_joint != a0


def test_non_finite_loss_raises():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.w + torch.log(torch.zeros(len(x)))

    net = ObjectiveNet(
        Bad(),
        max_epochs=1,
        batch_size=2,
        iterator_train=TensorBatches,
        train_split=None,
        callbacks=[("nan", NumericalGuard())],
        callbacks__print_log=None,
    )
    with pytest.raises(FloatingPointError, match="became"):
        net.fit(TensorData(torch.ones(4, 1)))


# ---------------------------------------------------------------------------
# Callbacks and policies
# ---------------------------------------------------------------------------


class Quadratic(nn.Module):
    """Objective -||w - 3||^2 with a linear part and a 'nonlinear' part."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Parameter(torch.zeros(2))
        self.branch = nn.Parameter(torch.zeros(2))
        self.kl_weight = 1.0

    def forward(self, x):
        w = torch.cat([self.linear, self.branch])
        return -(w - 3.0).square().sum().expand(len(x)) * self.kl_weight

    def nonlinear_parameters(self):
        return [self.branch]


def fit_net(module, callbacks, max_epochs=4, n_rows=10, batch_size=5, **kwargs):
    net = ObjectiveNet(
        module,
        optimizer=torch.optim.SGD,
        lr=0.1,
        max_epochs=max_epochs,
        batch_size=batch_size,
        iterator_train=TensorBatches,
        train_split=None,
        callbacks=callbacks,
        verbose=0,
        callbacks__print_log=None,
        **kwargs,
    )
    return net.fit(TensorData(torch.ones(n_rows, 1)))


def test_linear_warm_start_freezes_the_branch_for_n_epochs():
    seen = []

    class Record(Callback):
        def on_epoch_end(self, net, **kwargs):
            seen.append(net.module_.branch.detach().clone())

    module = Quadratic()
    fit_net(module, [*linear_warm_start(module, 2), ("record", Record())])
    assert torch.all(seen[0] == 0) and torch.all(seen[1] == 0)
    assert torch.all(seen[2] != 0)
    # The fitted module leaves every parameter trainable.
    assert all(p.requires_grad for p in module.parameters())
    stopped = Quadratic()
    fit_net(stopped, linear_warm_start(stopped, 10), max_epochs=2)
    assert torch.all(stopped.branch == 0) and stopped.branch.requires_grad


def test_cosine_schedule_follows_the_closed_form():
    lrs = []

    class Record(Callback):
        def on_batch_begin(self, net, training=False, **kwargs):
            if training:
                lrs.append(net.optimizer_.param_groups[0]["lr"])

    n_steps = 8  # 4 epochs of 2 batches
    fit_net(Quadratic(), [("lr", cosine_schedule(n_steps)), ("record", Record())])
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * k / n_steps)) for k in range(8)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert CosineDecay(4)(10) == 0.0  # flat after the end


def test_kl_warmup_rises_linearly_then_stays_at_one():
    weights = []

    class Record(Callback):
        def on_batch_begin(self, net, training=False, **kwargs):
            if training:
                weights.append(net.module_.kl_weight)

    module = Quadratic()
    # The warm-up's own on_batch_begin runs first: it is listed first.
    fit_net(module, [("kl", KLWarmup(4)), ("record", Record())])
    np.testing.assert_allclose(weights, [0, 0.25, 0.5, 0.75, 1, 1, 1, 1])
    assert module.kl_weight == 1.0


def test_early_stopping_waits_for_the_warm_up():
    class Flat(Quadratic):
        def forward(self, x):
            return super().forward(x) * 0 + self.linear.sum() * 0

    net = fit_net(
        Flat(),
        [
            (
                "stop",
                EarlyStoppingAfter(3, monitor="train_loss", patience=1, sink=print),
            )
        ],
        max_epochs=10,
    )
    # A flat loss: stops at the first epoch after the warm-up with no improvement.
    assert len(net.history) == 5


def test_converged_ignores_the_warm_up():
    losses = [5.0, 1.0, 2.0, 2.0, 2.0]
    assert converged(losses, 2, 1e-3)
    assert not converged(losses, 2, 1e-3, start_epoch=3)  # too few epochs after it
    assert converged([5, 4, 3, 3, 3, 3], 2, 1e-3, start_epoch=1)
    assert not converged([5, 4, 3, 2, 1], 2, 1e-3)


def test_closed_form_values_are_written_after_the_step():
    class WithClosedForm(Quadratic):
        def __init__(self):
            super().__init__()
            self.register_buffer("value", torch.zeros(()))

        def forward(self, x):
            objective = super().forward(x)
            if not self.training:
                return objective
            return TrainingStep(objective, {"value": objective.detach().mean()})

        def apply_closed_form(self, values):
            self.value.copy_(values["value"])

    module = WithClosedForm()
    net = fit_net(module, [], max_epochs=1, n_rows=5)
    assert float(module.value) == pytest.approx(-float(net.history[-1, "train_loss"]))


def test_seeded_restores_the_callers_generator():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7, torch.device("cpu")):
        inside = torch.rand(3)
    torch.testing.assert_close(torch.rand(3), expected)
    with seeded(7, torch.device("cpu")):
        torch.testing.assert_close(torch.rand(3), inside)
    assert draw_seed(0) == draw_seed(np.random.RandomState(0))


@pytest.mark.parametrize("device", ["gpu", "tpu:0", 3.5])
def test_unknown_devices_are_named(device):
    with pytest.raises(ValueError, match="device"):
        resolve_device(device)


def test_divergence_stops_the_fit_with_the_advice():
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            # The loss grows tenfold every step: far past its scale by step 5.
            return -(10.0**self.calls) + 0 * self.w.expand(len(x))

    net = ObjectiveNet(
        Exploding(),
        max_epochs=5,
        batch_size=1,
        iterator_train=TensorBatches,
        train_split=None,
        callbacks=[("guard", NumericalGuard("lower learning_rate_init"))],
        callbacks__print_log=None,
    )
    with pytest.raises(FloatingPointError, match=r"diverged.*Lower learning_rate"):
        net.fit(TensorData(torch.ones(8, 1)))
    assert net.module_.calls == 5  # stopped at 1e5 > 10 + 1e3 * 11


def test_a_users_interrupt_propagates_and_early_stopping_does_not():
    import os
    import signal

    class CtrlC(Callback):
        def on_batch_end(self, net, **kwargs):
            if len(net.history) == 2:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        fit_net(Quadratic(), [("ctrl_c", CtrlC())], max_epochs=4)

    class StopNow(Callback):  # skorch's way to end training early
        def on_epoch_end(self, net, **kwargs):
            raise KeyboardInterrupt

    net = fit_net(Quadratic(), [("stop", StopNow())], max_epochs=4)
    assert len(net.history) == 1


def test_gradient_clipping_scales_the_gradient_norm_down_to_its_bound():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)).double()
    module[0].bias.requires_grad_(False)  # a frozen parameter has no gradient
    module(torch.randn(5, 3, dtype=torch.float64)).sum().mul(100).backward()
    grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    assert norm > 1.0

    class Net:
        module_ = module

    clip = GradientClipping(1.0)
    clip.on_train_begin(Net())
    clip.on_grad_computed(Net())
    clipped = [p.grad for p in module.parameters() if p.grad is not None]
    for g, c in zip(grads, clipped):
        torch.testing.assert_close(c, g / (norm + 1e-6))
    clip.on_train_end(Net())
    assert clip.params_ == []
