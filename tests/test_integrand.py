"""Tests of the marginal likelihood's integrand (sklearn_nlica._integrand)."""

import pytest
import torch
from torch.func import hessian

from sklearn_nlica._integrand import GaussianIntegrand, HeadDecoder, pairwise_loglik

F64 = torch.float64


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def mlp(n_dims, n_features, activation, seed=0, width=6):
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(
        torch.nn.Linear(n_dims, width), activation(), torch.nn.Linear(width, width)
    ).to(F64)
    out = torch.nn.Linear(width, n_features).to(F64)
    return trunk, out


def reference(x, decoder, z, variance):
    """log N(x_b; g(z_b), sigma^2 I) by torch.distributions, pair by pair."""
    normal = torch.distributions.Normal(decoder(z), variance**0.5)
    return normal.log_prob(x).sum(-1)


@pytest.mark.parametrize("n_features", [3, 12])  # wider and narrower than H = 6
def test_values_match_torch_distributions(n_features):
    trunk, out = mlp(2, n_features, torch.nn.Tanh)
    head = HeadDecoder(trunk, out.weight, out.bias)
    plain = torch.nn.Sequential(trunk, out)
    x = torch.randn(5, n_features, generator=seeded(1), dtype=F64)
    z = torch.randn(5, 4, 2, generator=seeded(2), dtype=F64)
    expected = reference(x[:, None], plain, z, 0.3)
    for decoder in (plain, head):
        integrand = GaussianIntegrand(x, decoder, 0.3)
        torch.testing.assert_close(integrand(z), expected)
        # Nodes shared by every row: one matrix product.
        shared = integrand(z[:1, :3])
        torch.testing.assert_close(shared, reference(x[:, None], plain, z[0, :3], 0.3))
    assert GaussianIntegrand(x, head, 0.3).projected == (n_features > 6)


def test_pairs_evaluate_only_the_active_entries():
    trunk, out = mlp(2, 10, torch.nn.Tanh)
    head = HeadDecoder(trunk, out.weight, out.bias)
    x = torch.randn(4, 10, generator=seeded(1), dtype=F64)
    z = torch.randn(4, 3, 2, generator=seeded(2), dtype=F64)
    active = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    values = pairwise_loglik(x, head, z, active, 0.5)
    expected = reference(x[:, None], torch.nn.Sequential(trunk, out), z, 0.5)
    torch.testing.assert_close(values[active], expected[active])
    assert torch.all(values[~active] == 0)


def test_gram_form_keeps_gradients_for_the_parameters():
    trunk, out = mlp(2, 15, torch.nn.Tanh)
    x = torch.randn(6, 15, generator=seeded(1), dtype=F64)
    z = torch.randn(6, 5, 2, generator=seeded(2), dtype=F64)
    variance = torch.tensor(0.4, dtype=F64, requires_grad=True)
    grads = []
    for decoder in (HeadDecoder(trunk, out.weight, out.bias), lambda t: out(trunk(t))):
        value = GaussianIntegrand(x, decoder, variance)(z).sum()
        params = [out.weight, out.bias, variance, *trunk.parameters()]
        grads.append(torch.autograd.grad(value, params))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("projected", [False, True])
@pytest.mark.parametrize(
    "activation, piecewise_linear",
    [(torch.nn.Tanh, False), (torch.nn.LeakyReLU, True), (torch.nn.GELU, False)],
)
def test_derivatives_match_autograd_hessians(projected, activation, piecewise_linear):
    n_features = 14 if projected else 4
    trunk, out = mlp(3, n_features, activation)
    head = HeadDecoder(trunk, out.weight, out.bias, piecewise_linear)
    x = torch.randn(3, n_features, generator=seeded(1), dtype=F64)
    rows = torch.tensor([0, 2, 2, 1, 0])
    z = torch.randn(5, 3, generator=seeded(2), dtype=F64)
    integrand = GaussianIntegrand(x, head, 0.2)
    assert integrand.projected == projected
    value, grad, hess = integrand.derivatives(rows, z)
    for p in range(len(rows)):

        def log_h(point, row=int(rows[p])):
            return reference(x[row], lambda t: out(trunk(t)), point, 0.2)

        point = z[p].clone().requires_grad_(True)
        (auto_grad,) = torch.autograd.grad(log_h(point), point)
        torch.testing.assert_close(value[p], log_h(z[p]))
        torch.testing.assert_close(grad[p], auto_grad)
        torch.testing.assert_close(hess[p], hessian(log_h)(z[p]))


def test_gradient_matches_central_finite_differences():
    trunk, out = mlp(2, 9, torch.nn.Tanh)
    x = torch.randn(2, 9, generator=seeded(1), dtype=F64)
    integrand = GaussianIntegrand(x, HeadDecoder(trunk, out.weight, out.bias), 0.5)
    rows = torch.tensor([0, 1])
    z = torch.randn(2, 2, generator=seeded(3), dtype=F64)
    _, grad, _ = integrand.derivatives(rows, z)
    eps = 1e-6
    for i in range(2):
        step = torch.zeros(2, dtype=F64)
        step[i] = eps
        finite = (integrand.pairs(rows, z + step) - integrand.pairs(rows, z - step)) / (
            2 * eps
        )
        torch.testing.assert_close(grad[:, i], finite, rtol=1e-6, atol=1e-6)


def test_float32_decoder_accumulates_in_float64():
    # ||x - g||^2 of order n sigma^2 beside ||x - c||^2 of order n: the Gram
    # expansion must not lose it to float32 rounding.
    trunk, out = mlp(2, 400, torch.nn.Tanh)
    trunk, out = trunk.float(), out.float()
    z = torch.randn(3, 2, generator=seeded(2))
    with torch.no_grad():
        x = out(trunk(z)) + 1e-3 * torch.randn(3, 400, generator=seeded(4))
    head = HeadDecoder(trunk, out.weight, out.bias)
    values = GaussianIntegrand(x, head, 1e-6).pairs(torch.arange(3), z)
    assert values.dtype == F64
    with torch.no_grad():
        exact = reference(x.double(), lambda t: out(trunk(t.float())).double(), z, 1e-6)
    torch.testing.assert_close(values, exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("activation", ["leaky_relu", "relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("head", [False, True])
def test_chain_jacobian_matches_forward_mode(activation, head):
    from torch.func import jvp, vmap

    from sklearn_nlica._integrand import _chain_jacobian
    from sklearn_nlica._nn import make_trunk

    torch.manual_seed(0)
    trunk, width = make_trunk(3, (16, 16), activation)
    function = trunk.double()
    if head:
        weight = torch.randn(20, width, dtype=torch.float64)
        function = HeadDecoder(trunk, weight, torch.randn(20, dtype=torch.float64))
    z = torch.randn(50, 3, dtype=torch.float64)
    tangents = torch.eye(3, dtype=z.dtype)[:, None, :].expand(3, *z.shape)
    out, jac = vmap(lambda t: jvp(function, (z,), (t,)), out_dims=(None, -1))(tangents)
    chained_out, chained_jac = _chain_jacobian(function, z)
    torch.testing.assert_close(chained_out, out)
    torch.testing.assert_close(chained_jac, jac, rtol=1e-6, atol=1e-8)
