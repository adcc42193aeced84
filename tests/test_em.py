"""The EM solver (sklearn_nlica._em): the epoch statistics, the closed-form
M-steps and the parameter-expansion step, and the driver that combines them."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_nlica._em import (
    EMNet,
    EStepStatistics,
    latent_standardisation,
    systematic_resample,
)
from sklearn_nlica._models import MarginalLikelihood
from sklearn_nlica._nn import GaussianDecoder
from sklearn_nlica._training import TensorBatches, TensorData
from sklearn_nlica.integrators import Adaptive, GaussHermite

F64 = torch.float64


def ppca_data(n_samples=400, n_features=4, n_components=2, noise=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_features, n_components, generator=gen, dtype=F64)
    z = torch.randn(n_samples, n_components, generator=gen, dtype=F64)
    x = (
        z @ weight.T
        + 1.0
        + noise * torch.randn(n_samples, n_features, generator=gen, dtype=F64)
    )
    return x


def linear_model(x, n_components=2, integrator=None, n_nodes=64):
    torch.manual_seed(0)
    decoder = GaussianDecoder(
        n_components, x.shape[1], (), "identity", noise_variance=1.0
    ).double()
    return MarginalLikelihood(
        decoder, n_components, integrator or GaussHermite(), n_nodes
    )


def one_epoch_net(model, optimizer, lr, batch_size):
    """A quiet EMNet that trains ``model`` for one epoch on all the data."""
    return EMNet(
        model,
        optimizer=optimizer,
        lr=lr,
        max_epochs=1,
        batch_size=batch_size,
        iterator_train=TensorBatches,
        train_split=None,
        verbose=0,
        callbacks__print_log=None,
    )


def test_linear_m_step_is_the_weighted_least_squares_solution():
    x = ppca_data()
    model = linear_model(x)
    rule = GaussHermite().rule(2, 64)
    _, weights, residual = model.e_step(x, rule)
    stats = EStepStatistics(2, x.shape[1], x.mean(0), linear=True)
    stats.add(x, rule.nodes, weights, residual)
    weight, bias, noise_variance = stats.linear_m_step()
    # Direct: minimise sum_ij r_ij ||x_i - A z_j - b||^2 over (A, b).
    z1 = torch.cat([rule.nodes, torch.ones(len(rule.nodes), 1, dtype=F64)], 1)
    zz = z1.T @ (weights.sum(0)[:, None] * z1)
    xz = x.T @ (weights @ z1)
    coef = torch.linalg.solve(zz, xz.T).T
    torch.testing.assert_close(weight, coef[:, :-1])
    torch.testing.assert_close(bias, coef[:, -1])
    fitted = z1 @ coef.T  # (K, n)
    sq = (x[:, None] - fitted[None]).square().sum(-1)
    expected = (weights * sq).sum() / (x.shape[0] * x.shape[1])
    torch.testing.assert_close(noise_variance, expected)


def test_statistics_of_per_point_nodes_match_shared_ones():
    x = ppca_data(50)
    rule = GaussHermite().rule(2, 25)
    weights = torch.softmax(torch.randn(50, 25, dtype=F64), 1)
    residual = torch.rand(50, dtype=F64)
    shared = EStepStatistics(2, 4, x.mean(0), linear=True)
    shared.add(x, rule.nodes, weights, residual)
    per_point = EStepStatistics(2, 4, x.mean(0), linear=True)
    per_point.add(x, rule.nodes.expand(50, -1, -1), weights, residual)
    for a, b in zip(shared.latent_moments(), per_point.latent_moments()):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(shared.linear_m_step()[0], per_point.linear_m_step()[0])
    assert shared.noise_variance(4) == per_point.noise_variance(4)


def test_latent_standardisation_is_the_symmetric_root():
    cov = torch.tensor([[2.0, 0.5], [0.5, 0.7]], dtype=F64)
    root = latent_standardisation(cov)
    torch.testing.assert_close(root, root.T)
    torch.testing.assert_close(root @ root, cov)


@settings(max_examples=50, deadline=None)
@given(
    weights=st.lists(
        st.one_of(st.just(0.0), st.floats(1e-6, 1.0)), min_size=1, max_size=12
    ).filter(lambda w: sum(w) > 0),
    n_draws=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
)
def test_systematic_resampling_draws_each_node_its_share_rounded(
    weights, n_draws, seed
):
    w = torch.tensor([weights], dtype=F64)
    w = w / w.sum()
    torch.manual_seed(seed)
    drawn = systematic_resample(w, n_draws)
    counts = drawn * n_draws
    assert torch.allclose(counts, counts.round())
    # Evenly spaced draws put floor or ceil of n w_i on node i, none on w_i = 0.
    expected = n_draws * w
    assert bool((counts >= (expected - 1e-9).floor()).all())
    assert bool((counts <= (expected + 1e-9).ceil()).all())
    assert float(drawn.sum()) == pytest.approx(1.0)


def test_systematic_resampling_is_unbiased():
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(4, 20, generator=gen, dtype=F64) ** 3
    w[:, ::5] = 0.0
    w = w / w.sum(1, keepdim=True)
    torch.manual_seed(0)
    n_repeats = 4000
    mean = sum(systematic_resample(w, 8) for _ in range(n_repeats)) / n_repeats
    # Each entry's draw share has a variance below 1 / (4 * 8**2).
    assert float((mean - w).abs().max()) < 5 * (1 / 16) / n_repeats**0.5


@pytest.mark.parametrize("hidden", [(), (6,)])
def test_one_em_epoch_never_decreases_the_likelihood(hidden):
    x = ppca_data(300)
    torch.manual_seed(1)
    decoder = GaussianDecoder(2, 4, hidden, "tanh", noise_variance=2.0).double()
    model = MarginalLikelihood(decoder, 2, Adaptive(), 32)
    net = one_epoch_net(model, torch.optim.Adam, lr=1e-3, batch_size=100)

    def total_log_likelihood():
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            return float(model.log_likelihood(x, model.rule(x, generator=gen)).sum())

    before = total_log_likelihood()
    net.fit(TensorData(x))
    assert total_log_likelihood() > before
    # sigma^2 moved in closed form, and the recorded loss is -log p at the E-steps.
    assert float(decoder.noise_variance().detach()) != pytest.approx(2.0)
    assert np.isfinite(net.history[-1, "train_loss"])


def test_closed_form_parameters_get_no_gradient_steps():
    x = ppca_data(200)
    model = linear_model(x)
    net = one_epoch_net(model, torch.optim.SGD, lr=1e-2, batch_size=50)
    net.initialize()
    net.notify("on_train_begin")
    # A linear decoder moves only in closed form: no M-step parameters left.
    assert net.m_step_parameters_ == []
