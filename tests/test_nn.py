"""Network building blocks (sklearn_nlica._nn): parameter groups, the
closed-form writes into the decoder, and the starting noise variance."""

import numpy as np
import pytest
import torch

from sklearn_nlica._densities import MIN_VARIANCE
from sklearn_nlica._nn import (
    FullCovarianceGaussianEncoder,
    GaussianDecoder,
    GaussianEncoder,
    feature_scales,
    initial_noise_variance,
)

F64 = torch.float64


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("hidden", [(), (5,), (5, 3)])
def test_absorb_affine_keeps_the_decoder_function(hidden, residual):
    torch.manual_seed(0)
    decoder = GaussianDecoder(2, 4, hidden, "tanh", residual=residual).double()
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    shift = torch.tensor([0.3, -1.0], dtype=F64)
    cov = torch.tensor([[2.0, 0.5], [0.5, 0.7]], dtype=F64)
    root = torch.linalg.cholesky(cov)  # any invertible root will do
    z = torch.randn(10, 2, dtype=F64)
    with torch.no_grad():
        before = decoder.mean(shift + z @ root.T)
        decoder.absorb_affine(shift, root)
        torch.testing.assert_close(decoder.mean(z), before)


@pytest.mark.parametrize("value", [1e-8, 1e-3, 0.7, 50.0, 1e6])
def test_set_noise_variance_round_trips(value):
    for variance in ("shared", "fixed"):
        decoder = GaussianDecoder(2, 3, (), "identity", variance=variance).double()
        expected = pytest.approx(max(value, MIN_VARIANCE), rel=1e-9, abs=1e-11)
        decoder.set_noise_variance(value)
        assert float(decoder.noise_variance().detach()) == expected
        decoder.set_noise_variance(torch.tensor(value, dtype=F64))
        assert float(decoder.noise_variance().detach()) == expected


def test_parameter_groups_partition_the_decoder():
    decoder = GaussianDecoder(2, 3, (4,), "relu", residual=True)
    mean, noise = decoder.mean_parameters(), decoder.noise_parameters()
    assert {id(p) for p in mean} | {id(p) for p in noise} == {
        id(p) for p in decoder.parameters()
    }
    assert len(noise) == 1 and not ({id(p) for p in mean} & {id(p) for p in noise})
    # The nonlinear branch: the hidden layers and the output weight, not the
    # linear skip or the bias.
    branch = {id(p) for p in decoder.nonlinear_parameters()}
    assert id(decoder.skip.weight) not in branch and id(decoder.out.bias) not in branch
    assert id(decoder.out.weight) in branch
    assert GaussianDecoder(2, 3, (4,), "relu").nonlinear_parameters() == []


def test_closed_form_parameters():
    linear = GaussianDecoder(2, 3, (), "identity")
    assert len(linear.closed_form_parameters()) == 3  # sigma^2, weight, bias
    fixed = GaussianDecoder(2, 3, (4,), "relu", variance="fixed")
    assert fixed.closed_form_parameters() == [] and fixed.noise_parameters() == []
    assert (
        GaussianDecoder(2, 3, (4,), "relu", variance="per_sample").noise_variance()
        is None
    )


@pytest.mark.parametrize("cls", [GaussianEncoder, FullCovarianceGaussianEncoder])
def test_residual_encoders_start_linear(cls):
    torch.manual_seed(0)
    encoder = cls(4, 2, (8,), "tanh", residual=True).double()
    x = torch.randn(5, 4, dtype=F64)
    mean, _ = encoder(x)
    torch.testing.assert_close(mean, encoder.skip(x))
    assert len(encoder.nonlinear_parameters()) == 4  # trunk and mean head


def test_initial_noise_variance_policies():
    rng = np.random.RandomState(0)
    signal = rng.randn(500, 2) @ rng.randn(2, 6)
    x = torch.as_tensor(signal + 0.1 * rng.randn(500, 6))
    total = float(x.var(0).mean())
    assert initial_noise_variance(x) == pytest.approx(total)
    residual = initial_noise_variance(x, 2)
    assert residual == pytest.approx(0.01, rel=0.2)
    assert initial_noise_variance(x[:1]) == 1.0
    assert initial_noise_variance(torch.zeros(10, 3)) == 1e-3


def test_feature_scales_floor_constant_features():
    rng = np.random.RandomState(0)
    x = rng.randn(200, 3) * [100.0, 1.0, 0.0] + [5.0, -1.0, 7.0]
    loc, scale = feature_scales(torch.as_tensor(x))
    np.testing.assert_allclose(loc.numpy(), x.mean(0))
    rms = np.sqrt(np.mean(x.std(0) ** 2))
    np.testing.assert_allclose(
        scale.numpy(), [x[:, 0].std(), x[:, 1].std(), 0.01 * rms]
    )
    _, ones = feature_scales(torch.full((4, 2), 3.0))
    assert torch.equal(ones, torch.ones(2))


@pytest.mark.parametrize("hidden", [(), (5,)])
def test_output_scale_is_a_change_of_units_only(hidden):
    # A decoder whose layers work in units of ``scale`` is the same g(z) as
    # one whose last layer carries the scale; writes take the data's units.
    torch.manual_seed(0)
    scale = torch.tensor([100.0, 0.5, 2.0], dtype=F64)
    mean = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    scaled = GaussianDecoder(
        2, 3, hidden, "tanh", mean_init=mean, output_scale=scale
    ).double()
    plain = GaussianDecoder(2, 3, hidden, "tanh").double()
    plain.load_state_dict(scaled.state_dict(), strict=False)
    z = torch.randn(7, 2, dtype=F64)
    with torch.no_grad():
        plain.out.weight.mul_(scale.unsqueeze(1))
        plain.out.bias.copy_(mean)
        torch.testing.assert_close(scaled.mean(z), plain.mean(z))
        if not hidden:
            W = torch.randn(3, 2, dtype=F64)
            scaled.set_linear(W, mean)
            torch.testing.assert_close(scaled.mean(z), z @ W.T + mean)


def test_input_scaling_standardises_the_encoder_input():
    torch.manual_seed(0)
    loc = torch.tensor([10.0, -3.0], dtype=F64)
    scale = torch.tensor([50.0, 0.1], dtype=F64)
    encoder = GaussianEncoder(2, 2, (4,), "tanh", input_scaling=(loc, scale))
    encoder = encoder.double()
    plain = GaussianEncoder(2, 2, (4,), "tanh").double()
    plain.load_state_dict(encoder.state_dict(), strict=False)
    x = loc + scale * torch.randn(6, 2, dtype=F64)
    for got, expected in zip(encoder(x), plain((x - loc) / scale)):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("variance", ["fixed", "shared"])
def test_frozen_zero_branch_gives_the_same_mean_and_gradients(variance):
    # During a linear warm start the decoder skips its frozen MLP branch,
    # whose output weight is zero: same values and gradients as computing it.
    torch.manual_seed(0)
    decoder = GaussianDecoder(
        2, 4, (5, 5), "leaky_relu", variance=variance, residual=True
    ).double()
    for p in decoder.nonlinear_parameters():
        p.requires_grad_(False)
    assert decoder._branch_is_constant()
    z = torch.randn(6, 3, 2, dtype=F64, requires_grad=True)
    fast = decoder.log_prob(torch.ones(4, dtype=F64), z).sum()
    (grad_fast,) = torch.autograd.grad(fast, z)
    full = (
        decoder.out(decoder.hidden(z)) + decoder.skip(z),
        decoder.noise_variance(),
    )
    mean, noise = decoder(z)
    torch.testing.assert_close(mean, full[0], rtol=0, atol=0)
    torch.testing.assert_close(noise, full[1], rtol=0, atol=0)
    slow = (
        -0.5 * ((1.0 - full[0]).square().sum(-1) / full[1])
        - 0.5 * 4 * torch.log(2 * torch.pi * full[1])
    ).sum()
    (grad_slow,) = torch.autograd.grad(slow, z)
    torch.testing.assert_close(grad_fast, grad_slow)
    # Trainable, or with a nonzero output weight, the branch is computed.
    with torch.no_grad():
        decoder.out.weight.add_(0.1)
    assert not decoder._branch_is_constant()
    with torch.no_grad():
        decoder.out.weight.zero_()
    decoder.hidden[0].weight.requires_grad_(True)
    assert not decoder._branch_is_constant()
