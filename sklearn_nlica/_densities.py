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
    return -0.5 * (LOG_2PI + torch.log(variance) + (x - mean).square() / variance).sum(-1)


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


def signed_logsumexp(values, signs=None, dim=-1):
    """``log sum_j signs_j * exp(values_j)`` along ``dim``, stably.

    With ``signs=None`` this is ``torch.logsumexp``. Rules with negative
    weights (sparse grids) can give a sum that is not positive, whose log does
    not exist: that raises a FloatingPointError instead of returning NaN.
    """
    if signs is None:
        return torch.logsumexp(values, dim)
    shift = values.amax(dim, keepdim=True).detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    total = (signs * torch.exp(values - shift)).sum(dim)
    if not bool((total > 0).all()):
        raise FloatingPointError(
            "An integration rule with negative weights (a sparse grid) gave a sum "
            "that is not positive; use more nodes or a rule with positive weights "
            "(e.g. 'adaptive', 'gauss_hermite' or 'qmc').")
    return torch.log(total) + shift.squeeze(dim)
