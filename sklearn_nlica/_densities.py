"""Gaussian and Laplace log-densities, KL divergences and posterior algebra.

Pure tensor functions: they broadcast over leading dimensions and sum over the
last (feature or latent) dimension. No scikit-learn, no state. The variance
parametrisation used by every module (softplus plus a floor) lives here too.
"""

import math

import torch
from torch.nn import functional as F

LOG_2PI = math.log(2.0 * math.pi)

# Variances are softplus of an unconstrained value plus this floor: the floor
# keeps log-variances finite in float32 without biasing any realistic fit.
MIN_VARIANCE = 1e-6


def positive(raw):
    """Map an unconstrained tensor to a variance, smoothly and without overflow."""
    return F.softplus(raw) + MIN_VARIANCE


def inverse_positive(variance):
    """The unconstrained value whose :func:`positive` is ``variance``.

    Takes a float (returns a float) or a tensor (returns a tensor).
    """
    if isinstance(variance, torch.Tensor):
        v = (variance - MIN_VARIANCE).clamp_min(1e-12)
        # softplus^{-1}(v) = log(expm1(v)), written to stay finite for large v.
        return v + torch.log(-torch.expm1(-v))
    v = max(float(variance) - MIN_VARIANCE, 1e-12)
    return v + math.log(-math.expm1(-v))


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


def log_laplace_diag(x, loc, scale):
    """Log-density of independent Laplace(loc, scale) coordinates, summed
    over the last axis: ``sum(-log(2 scale) - |x - loc| / scale)``."""
    return (-math.log(2.0) - torch.log(scale) - (x - loc).abs() / scale).sum(-1)


def kl_diag_standard(mean, variance):
    """``KL(N(mean, diag(variance)) || N(0, I))`` summed over the last axis.

    The closed form ``1/2 sum(variance + mean^2 - 1 - log variance)``, the
    negative of the familiar ``1/2 sum(1 + log s^2 - mu^2 - s^2)``.
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


def expected_abs_normal(mean, variance):
    """``E|y|`` for ``y ~ N(mean, variance)`` (the folded normal's mean).

    ``s sqrt(2/pi) exp(-mean^2 / (2 s^2)) + mean (1 - 2 Phi(-mean / s))``,
    elementwise.
    """
    std = variance.sqrt()
    t = mean / std
    return std * math.sqrt(2.0 / math.pi) * torch.exp(-0.5 * t.square()) + mean * (
        torch.erf(t / math.sqrt(2.0))
    )


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


# ---- log N(x_i; g_j, sigma^2 I) for every point and every mean ---------------
#
# The squared distances ||x - g||^2 of many points to many means cancel in
# float32 once they are large against sigma^2 (0.24 nat at n = 1000, sigma =
# 0.1): they are accumulated in float64.

# Largest intermediate (elements) of one chunk: 128 MiB in float64.
CHUNK_ELEMENTS = 2**24


def accumulation_dtype(x):
    """The dtype in which squared distances are accumulated: float64 (where
    the device has it), whatever the dtype of ``x``."""
    if x.dtype == torch.float64 or x.device.type == "mps":
        return x.dtype
    return torch.float64


def as_variance(noise_variance, dtype, device):
    """A positive scalar variance (float or one-element tensor) as a 0-d tensor."""
    if isinstance(noise_variance, torch.Tensor):
        if noise_variance.numel() != 1:
            raise ValueError(
                "noise_variance must be a scalar, got a tensor of shape "
                f"{tuple(noise_variance.shape)}."
            )
        return noise_variance.reshape(()).to(dtype=dtype, device=device)
    noise_variance = float(noise_variance)
    if not noise_variance > 0:
        raise ValueError(f"noise_variance must be positive, got {noise_variance!r}.")
    return torch.tensor(noise_variance, dtype=dtype, device=device)


def gaussian_loglik_matrix(x, means, noise_variance, *, chunk_size=None):
    """log N(x_i; mean, sigma^2 I) for every point and every mean.

    Parameters
    ----------
    x : Tensor of shape (B, n)
    means : Tensor of shape (K, n) or (B, K, n)
        Means shared by all points, or one set per point.
    noise_variance : float or Tensor
        sigma^2.
    chunk_size : int or None, default=None
        Points per chunk for per-point means (None: chunks of about 2**24
        elements).

    Returns
    -------
    loglik : Tensor of shape (B, K)
        In float64 when ``x`` is float32 or lower (the accumulation type, so
        that callers keep the precision through the log-sum-exp).

    Notes
    -----
    Shared means take one matrix product, ||x - c||^2 - 2 (x - c).(g - c) +
    ||g - c||^2 with c the batch mean (which shrinks the terms that cancel),
    in float64, clamped at zero. Per-point means take direct differences,
    squared and summed in float64, chunked over the batch.
    """
    n_features = x.shape[-1]
    dtype = accumulation_dtype(x)
    variance = as_variance(noise_variance, dtype, x.device)
    if means.dim() == 2 and dtype == torch.float64:
        sq_dist = _sq_dist_product(x, means, dtype)
    else:
        if means.dim() == 2:  # no float64 here: the expansion would cancel
            means = means.expand(x.shape[0], -1, -1)
        sq_dist = _sq_dist_direct(x, means, dtype, chunk_size)
    return -0.5 * (sq_dist / variance + n_features * (LOG_2PI + variance.log()))


def _sq_dist_product(x, means, dtype):
    x = x.to(dtype)
    means = means.to(dtype)
    centre = x.detach().mean(0)
    x = x - centre
    means = means - centre
    sq_dist = (
        (x * x).sum(1, keepdim=True) - 2.0 * (x @ means.T) + (means * means).sum(1)
    )
    return sq_dist.clamp_min(0.0)


def _sq_dist_direct(x, means, dtype, chunk_size):
    n_points, n_nodes, n_features = means.shape
    rows = chunk_size or max(1, CHUNK_ELEMENTS // max(1, n_nodes * n_features))
    out = []
    for start in range(0, n_points, rows):
        diff = x[start : start + rows, None, :].to(dtype) - means[
            start : start + rows
        ].to(dtype)
        out.append((diff * diff).sum(-1))
    return torch.cat(out) if len(out) > 1 else out[0]


# ---- Gaussian posteriors given by variances or by a Cholesky factor ---------
#
# An encoder returns a mean (B, m) and a "spread": variances (B, m) for a
# diagonal q, or a lower-triangular Cholesky factor L (B, m, m) for a full q.


def _is_full(spread):
    return spread.dim() == 3


def posterior_marginal_variance(spread):
    """The variances of q's coordinates, from variances or a Cholesky factor."""
    return spread.square().sum(-1) if _is_full(spread) else spread


def posterior_points(mean, spread, nodes):
    """z = mean + L e for rule nodes e of shape (K, m) or (B, K, m): (B, K, m)."""
    if not _is_full(spread):
        return mean.unsqueeze(1) + spread.sqrt().unsqueeze(1) * nodes
    pattern = "bij,kj->bki" if nodes.dim() == 2 else "bij,bkj->bki"
    return mean.unsqueeze(1) + torch.einsum(pattern, spread, nodes)


def posterior_log_prob(z, mean, spread):
    """log q(z) for points z (B, K, m) of a diagonal or full-covariance q."""
    if not _is_full(spread):
        return log_normal_diag(z, mean.unsqueeze(1), spread.unsqueeze(1))
    diff = (z - mean.unsqueeze(1)).transpose(1, 2)  # (B, m, K)
    white = torch.linalg.solve_triangular(spread, diff, upper=False)
    log_det = torch.log(torch.diagonal(spread, dim1=-2, dim2=-1)).sum(-1, keepdim=True)
    m = z.shape[-1]
    return -0.5 * (m * LOG_2PI + white.square().sum(1)) - log_det


def posterior_total_correlation(spread):
    """H(diagonal of q) - H(q) = 1/2 (sum log Sigma_ii - log det Sigma) >= 0.

    The KL from a full-covariance q to a factorial prior is the KL from q's
    marginals plus this term; it is 0 for a diagonal q.
    """
    if not _is_full(spread):
        return torch.zeros(spread.shape[:-1], dtype=spread.dtype, device=spread.device)
    log_diag = torch.log(torch.diagonal(spread, dim1=-2, dim2=-1))
    return 0.5 * torch.log(spread.square().sum(-1)).sum(-1) - log_diag.sum(-1)
