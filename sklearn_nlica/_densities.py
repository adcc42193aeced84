"""Gaussian log-densities and KL divergences as pure tensor functions.

Everything here works on torch tensors, broadcasts over leading dimensions and
sums over the last (feature or latent) dimension. No scikit-learn, no state.
"""

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def log_normal_isotropic(x, mean, variance):
    """Log-density of ``N(x; mean, variance * I)`` summed over the last axis.

    Parameters
    ----------
    x, mean : Tensor of shape (..., n)
        Points and means; they broadcast against each other.
    variance : Tensor or float
        Scalar variance, or one variance per leading index (shape ``(...)``).

    Returns
    -------
    Tensor of shape (...)
    """
    n = x.shape[-1]
    variance = torch.as_tensor(variance, dtype=x.dtype, device=x.device)
    sq = (x - mean).square().sum(-1)
    return -0.5 * (n * (LOG_2PI + torch.log(variance)) + sq / variance)


def log_normal_diag(x, mean, variance):
    """Log-density of ``N(x; mean, diag(variance))`` summed over the last axis."""
    return -0.5 * (LOG_2PI + torch.log(variance) + (x - mean).square() / variance).sum(
        -1
    )


def log_standard_normal(z):
    """Log-density of ``N(z; 0, I)`` summed over the last axis."""
    return -0.5 * (LOG_2PI + z.square()).sum(-1)


def kl_diag_standard(mean, variance):
    """``KL(N(mean, diag(variance)) || N(0, I))`` summed over the last axis.

    The closed form ``1/2 sum(variance + mean^2 - 1 - log variance)``; it is
    the negative of the seeds' ``1/2 sum(1 + log s^2 - mu^2 - s^2)``.
    """
    return 0.5 * (variance + mean.square() - 1.0 - torch.log(variance)).sum(-1)


def kl_diag_diag(mean_q, variance_q, mean_p, variance_p):
    """``KL(N(mean_q, diag(variance_q)) || N(mean_p, diag(variance_p)))``.

    ``1/2 sum[log(var_p / var_q) + (var_q + (mean_q - mean_p)^2) / var_p - 1]``,
    summed over the last axis.
    """
    ratio = variance_q / variance_p
    return 0.5 * (
        ratio + (mean_q - mean_p).square() / variance_p - 1.0 - torch.log(ratio)
    ).sum(-1)


def log_laplace_diag(x, loc, scale):
    """Log-density of independent Laplace(loc, scale) coordinates, summed
    over the last axis: ``sum(-log(2 scale) - |x - loc| / scale)``."""
    return (-math.log(2.0) - torch.log(scale) - (x - loc).abs() / scale).sum(-1)


def expected_abs_normal(mean, variance):
    """``E|y|`` for ``y ~ N(mean, variance)`` (the folded normal's mean).

    ``s sqrt(2/pi) exp(-mean^2 / (2 s^2)) + mean (1 - 2 Phi(-mean / s))``,
    elementwise.
    """
    std = variance.sqrt()
    t = mean / std
    return std * math.sqrt(2.0 / math.pi) * torch.exp(
        -0.5 * t.square()
    ) + mean * torch.erf(t / math.sqrt(2.0))


def kl_diag_laplace(mean_q, variance_q, loc_p, scale_p):
    """``KL(N(mean_q, diag(variance_q)) || prod_j Laplace(loc_p, scale_p))``.

    Closed form: minus the Gaussian entropy ``1/2 log(2 pi e var_q)`` minus
    ``E_q log Laplace = -log(2 b) - E|z - loc| / b``, with the folded-normal
    mean for ``E|z - loc|``; summed over the last axis.
    """
    entropy = 0.5 * (LOG_2PI + 1.0 + torch.log(variance_q))
    cross = (
        math.log(2.0)
        + torch.log(scale_p)
        + expected_abs_normal(mean_q - loc_p, variance_q) / scale_p
    )
    return (cross - entropy).sum(-1)
