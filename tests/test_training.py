"""The skorch driver: batching, hold-out split, alternating updates, NaN guard."""

import pytest
import torch
from torch import nn

from sklearn_nlica._training import (
    HoldOut,
    ObjectiveNet,
    RaiseOnNonFinite,
    TensorBatches,
    TensorData,
)


def test_tensor_batches_cover_every_row_once():
    x = torch.arange(23.0).unsqueeze(1)
    u = torch.arange(23)
    batches = TensorBatches(TensorData(x, u=u), batch_size=5, shuffle=True)
    assert len(batches) == 5
    seen = []
    for inputs, target in batches:
        assert target is None
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
    a_joint, b_joint = one_step(None)
    a_alt, b_alt = one_step(["a.", "b."])
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
        callbacks=[("nan", RaiseOnNonFinite())],
        callbacks__print_log=None,
    )
    with pytest.raises(FloatingPointError, match="became"):
        net.fit(TensorData(torch.ones(4, 1)))
