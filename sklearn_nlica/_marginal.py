"""Marginal likelihood of the Gaussian decoder model by numerical integration.

Model: z ~ N(0, I_m), x | z ~ N(g(z), sigma^2 I_n), with g a torch decoder. For
an integration rule (nodes z_j, log-weights log w_j, see
:mod:`sklearn_nlica.integrators`),

    log p(x_i) ~= logsumexp_j [log w_j + log N(x_i; g(z_j), sigma^2 I)],

the posterior weights are r_ij = softmax_j(log w_j + log N(x_i; g(z_j), sigma^2 I))
and the posterior mean is E[z | x_i] ~= sum_j r_ij z_j. The gradient of the
log-likelihood is Fisher's identity: the gradient of the complete-data
log-likelihood averaged with r_ij held fixed (the E-step of EM),

    d log p(x_i) / d theta   = sum_j r_ij (x_i - g(z_j))^T dg(z_j)/d theta / sigma^2,
    d log p(x_i) / d sigma^2 = sum_j r_ij (||x_i - g(z_j)||^2 / sigma^2 - n)
                               / (2 sigma^2).

Everything stays in log space: p(x) underflows for a few dozen features. With
nodes shared by a batch the squared distances are one matrix product
||x||^2 - 2 x.g + ||g||^2 (batch x nodes), never a batch x nodes x features
tensor; that expansion cancels catastrophically in float32 (0.24 nat at
n = 1000, sigma = 0.1), so it is accumulated in float64 (or, where float64 is
missing, replaced by direct differences). Work is split into chunks so that no
intermediate exceeds about 2**24 elements, whatever n_nodes and n_features are;
under autograd, chunks are checkpointed so that memory stays bounded in the
backward pass too.

All functions take ``x`` of shape (B, n), a ``decoder`` mapping (N, m) to
(N, n), a :class:`~sklearn_nlica.integrators.Rule` with shared nodes (K, m) or
per-point nodes (B, K, m), and ``noise_variance`` sigma^2 (a float or a
one-element tensor, possibly requiring grad).
"""

import math

import torch
from torch.utils.checkpoint import checkpoint

from ._densities import (
    CHUNK_ELEMENTS,
    accumulation_dtype,
    as_variance,
    gaussian_loglik_matrix,
)
from ._integrand import GaussianIntegrand, pair_width, pairwise_loglik

__all__ = [
    "NonPositiveIntegralError",
    "e_step",
    "em_surrogate",
    "gaussian_log_integrand",
    "log_marginal",
    "log_marginal_from_values",
    "posterior_mean",
    "signed_logsumexp",
]


class NonPositiveIntegralError(FloatingPointError, ValueError):
    """A rule with negative weights gave a sum that is not positive."""


# ---------------------------------------------------------------------------
# Log-sum-exp with signs
# ---------------------------------------------------------------------------


def signed_logsumexp(values, signs=None, dim=-1):
    """log(sum_j signs_j * exp(values_j)) along ``dim``, stably.

    Parameters
    ----------
    values : Tensor
    signs : Tensor or None, default=None
        +1 or -1, broadcastable to ``values``; None for all positive (then this
        is :func:`torch.logsumexp`).
    dim : int, default=-1

    Returns
    -------
    out : Tensor
        ``values`` reduced along ``dim``.

    Raises
    ------
    NonPositiveIntegralError
        If a signed sum is zero or negative (a sparse grid on a posterior far
        narrower than its nodes): its logarithm does not exist.
    """
    if signs is None:
        return torch.logsumexp(values, dim)
    peak, total = _partial_sums(values, signs, dim)
    return _finish(peak, total)


def _partial_sums(values, signs, dim):
    """(peak, sum_j s_j exp(v_j - peak)): mergeable pieces of a log-sum-exp."""
    peak = values.detach().amax(dim)
    # An all -inf slice has no peak; any finite shift gives the zero sum.
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    terms = torch.exp(values - peak.unsqueeze(dim))
    if signs is not None:
        terms = terms * signs
    return peak, terms.sum(dim)


def _merge(parts):
    """Merge (peak, total) pieces of disjoint node sets."""
    peaks = torch.stack([peak for peak, _ in parts])
    totals = torch.stack([total for _, total in parts])
    peak = peaks.amax(0)
    return peak, (totals * torch.exp(peaks - peak)).sum(0)


def _finish(peak, total):
    bad = ~(total > 0)
    if bool(bad.any()):
        raise NonPositiveIntegralError(
            f"The integration rule's weighted sum is not positive for "
            f"{int(bad.sum())} of {bad.numel()} points, so its logarithm does not "
            "exist. The rule has negative weights (a sparse grid) and the "
            "integrand is concentrated where they dominate; use more nodes or "
            "another rule, e.g. integrator='adaptive'."
        )
    return peak + total.log()


def _decode(decoder, z):
    """Decoder means at z of shape (..., m): shape (..., n)."""
    means = decoder(z.reshape(-1, z.shape[-1]))
    return means.reshape(z.shape[:-1] + means.shape[-1:])


def gaussian_log_integrand(x, decoder, noise_variance, *, chunk_size=None):
    """The integrand log N(x_b; g(z), sigma^2 I) in the form adaptive rules take.

    Parameters
    ----------
    x : Tensor of shape (B, n)
    decoder : callable or HeadDecoder
        Maps (N, m) to (N, n); see :class:`sklearn_nlica._integrand.HeadDecoder`
        for decoders with a linear last layer.
    noise_variance : float or Tensor
    chunk_size : int or None, default=None
        Pairs of a point and a node per chunk.

    Returns
    -------
    log_integrand : GaussianIntegrand
        Takes z of shape (B, K, m) (per-point nodes) or (1, K, m) (shared
        nodes, evaluated with one matrix product) and returns (B, K) values;
        it also evaluates (point, node) pairs and their z-derivatives. Pass
        it as ``log_integrand`` to
        :meth:`~sklearn_nlica.integrators.Integrator.rule`.
    """
    return GaussianIntegrand(x, decoder, noise_variance, chunk_size=chunk_size)


# ---------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------


def _check_rule(x, rule):
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, n), got {tuple(x.shape)}.")
    if not rule.shared and rule.nodes.shape[0] != x.shape[0]:
        raise ValueError(
            f"The rule has per-point nodes for {rule.nodes.shape[0]} points "
            f"but x has {x.shape[0]}."
        )


def _blocks(x, decoder, rule, chunk_size):
    """(rows, cols) slices: node chunks for shared nodes, point chunks otherwise."""
    n_points, n_features = x.shape
    n_nodes = rule.n_nodes
    if rule.shared:
        size = chunk_size or max(1, CHUNK_ELEMENTS // (n_features + n_points))
        return [
            (slice(None), slice(start, start + size))
            for start in range(0, n_nodes, size)
        ]
    width = pair_width(decoder, n_features)
    size = chunk_size or max(1, CHUNK_ELEMENTS // max(1, n_nodes * width))
    return [
        (slice(start, start + size), slice(None)) for start in range(0, n_points, size)
    ]


def _block_rule(rule, rows, cols):
    """Nodes, log-weights and signs of one block; per-point tensors keep rows."""
    index = cols if rule.shared else rows
    signs = None if rule.signs is None else rule.signs[index]
    return rule.nodes[index], rule.log_weights[index], signs


def _maybe_checkpoint(n_blocks, fn, *args):
    # Recomputing a chunk's decoder pass in the backward keeps only its (B, K)
    # outputs alive; with one chunk there is nothing to bound.
    if n_blocks > 1 and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _loglik(x, decoder, nodes, log_weights, noise_variance):
    """log N(x_i; g(z_j), sigma^2 I) for one block: a matrix product for
    shared nodes; per-point nodes only where their weight is not zero (0
    elsewhere)."""
    if nodes.dim() == 2:
        return gaussian_loglik_matrix(x, _decode(decoder, nodes), noise_variance)
    active = torch.isfinite(log_weights)
    return pairwise_loglik(x, decoder, nodes, active, noise_variance)


def _terms(loglik, log_weights):
    """log w_j + loglik_ij (-inf where the weight is zero)."""
    terms = log_weights.to(loglik.dtype) + loglik
    return torch.where(torch.isfinite(log_weights), terms, -math.inf)


def _log_terms(x, decoder, nodes, log_weights, noise_variance):
    """log w_j + log N(x_i; g(z_j), sigma^2 I) for one block."""
    loglik = _loglik(x, decoder, nodes, log_weights, noise_variance)
    return _terms(loglik, log_weights)


# ---------------------------------------------------------------------------
# Log-likelihood, posterior weights and mean
# ---------------------------------------------------------------------------


def _log_marginal(x, decoder, rule, noise_variance, chunk_size):
    """log p(x) in the accumulation dtype."""
    _check_rule(x, rule)
    blocks = _blocks(x, decoder, rule, chunk_size)
    if rule.shared:

        def partial(x, nodes, log_weights, signs, noise_variance):
            terms = _log_terms(x, decoder, nodes, log_weights, noise_variance)
            return _partial_sums(terms, signs, 1)

        parts = [
            _maybe_checkpoint(
                len(blocks), partial, x, *_block_rule(rule, rows, cols), noise_variance
            )
            for rows, cols in blocks
        ]
        if rule.signs is None and len(parts) == 1:
            peak, total = parts[0]
            return peak + total.log()
        return _finish(*_merge(parts))

    def block_log_marginal(x, nodes, log_weights, signs, noise_variance):
        terms = _log_terms(x, decoder, nodes, log_weights, noise_variance)
        return signed_logsumexp(terms, signs, dim=1)

    out = [
        _maybe_checkpoint(
            len(blocks),
            block_log_marginal,
            x[rows],
            *_block_rule(rule, rows, cols),
            noise_variance,
        )
        for rows, cols in blocks
    ]
    return torch.cat(out) if len(out) > 1 else out[0]


def log_marginal(x, decoder, rule, noise_variance, *, chunk_size=None):
    """Log-likelihood log p(x_i) of each point by numerical integration.

    Parameters
    ----------
    x : Tensor of shape (B, n)
    decoder : callable
        Maps latent points (N, m) to means (N, n).
    rule : Rule
        Shared nodes (K, m) or per-point nodes (B, K, m), over the prior.
    noise_variance : float or Tensor
        sigma^2; a tensor may require grad.
    chunk_size : int or None, default=None
        Nodes per chunk (shared nodes) or points per chunk (per-point nodes);
        None keeps every chunk's largest intermediate near 2**24 elements.

    Returns
    -------
    log_p : Tensor of shape (B,)
        In the dtype of ``x`` (accumulated in float64), differentiable with
        respect to the decoder's parameters and ``noise_variance``.

    Raises
    ------
    NonPositiveIntegralError
        If a rule with negative weights gives a sum that is not positive.
    """
    return _log_marginal(x, decoder, rule, noise_variance, chunk_size).to(x.dtype)


def _weights(terms, signs, log_p=None):
    """log p and the posterior weights r = sign * exp(terms - log p) of a block."""
    if log_p is None:
        log_p = signed_logsumexp(terms, signs, dim=1)
    r = torch.exp(terms - log_p[:, None])
    return log_p, r if signs is None else r * signs


def _posterior_blocks(x, decoder, rule, noise_variance, chunk_size=None):
    """Yield (rows, cols, nodes, loglik, log_p, r) block by block, without grad.

    ``loglik`` (log N(x_i; g(z_j), sigma^2 I)), ``log_p`` and the posterior
    weights ``r`` are in the accumulation dtype. Shared nodes split over
    several blocks need log p(x) from a first pass; otherwise every block
    holds all the nodes of its rows and gives its own.
    """
    blocks = _blocks(x, decoder, rule, chunk_size)
    log_p = None
    if rule.shared and len(blocks) > 1:
        log_p = _log_marginal(x, decoder, rule, noise_variance, chunk_size)
    for rows, cols in blocks:
        nodes, log_weights, signs = _block_rule(rule, rows, cols)
        loglik = _loglik(x[rows], decoder, nodes, log_weights, noise_variance)
        terms = _terms(loglik, log_weights)
        block_log_p, r = _weights(terms, signs, None if log_p is None else log_p[rows])
        yield rows, cols, nodes, loglik, block_log_p, r


def _residuals(loglik, variance, n_features):
    """||x_i - g(z_j)||^2 from log N(x_i; g(z_j), sigma^2 I)."""
    # Undo log N = -(||x - g||^2 / sigma^2 + n log(2 pi sigma^2)) / 2.
    return -2.0 * variance * loglik - n_features * variance * torch.log(
        2.0 * math.pi * variance
    )


def e_step(x, decoder, rule, noise_variance, *, chunk_size=None, values=None):
    """The E-step of EM in one pass of the decoder over the rule's nodes.

    Parameters
    ----------
    x, decoder, rule, noise_variance, chunk_size
        As in :func:`log_marginal`.
    values : Tensor of shape (B, K) or None, default=None
        log N(x_i; g(z_ij), sigma^2 I) at the rule's per-point nodes when
        they are already known (an adaptive rule's ``Rule.values`` for the
        same x, decoder and sigma^2): then nothing is decoded.

    Returns
    -------
    log_p : Tensor of shape (B,)
        log p(x_i).
    weights : Tensor of shape (B, K)
        Posterior weights r_ij; rows sum to one (some are negative for
        signed rules), 0 at nodes of zero weight.
    residual : Tensor of shape (B,)
        Expected squared residual sum_j r_ij ||x_i - g(z_j)||^2.

    All three in the accumulation dtype (float64 for float32 input), without
    gradient.
    """
    _check_rule(x, rule)
    n_features = x.shape[1]
    with torch.no_grad():
        variance = as_variance(noise_variance, accumulation_dtype(x), x.device)
        if values is not None:
            loglik = values.detach().to(variance.dtype)
            log_p, r = _weights(_terms(loglik, rule.log_weights), rule.signs)
            residual = (r * _residuals(loglik, variance, n_features)).sum(1)
            return log_p, r, residual
        log_p, weights, residual = [], [], []
        for _, _, _, loglik, block_log_p, r in _posterior_blocks(
            x, decoder, rule, variance, chunk_size
        ):
            log_p.append(block_log_p)
            weights.append(r)
            residual.append((r * _residuals(loglik, variance, n_features)).sum(1))
    if rule.shared:
        return log_p[0], torch.cat(weights, dim=1), sum(residual)
    return torch.cat(log_p), torch.cat(weights), torch.cat(residual)


def log_marginal_from_values(rule, values):
    """log p(x_i) from the log-integrand at a rule's per-point nodes.

    Parameters
    ----------
    rule : Rule
        Per-point nodes (B, K, m).
    values : Tensor of shape (B, K)
        log N(x_i; g(z_ij), sigma^2 I), e.g. the rule's own ``Rule.values``.

    Returns
    -------
    log_p : Tensor of shape (B,)
        In the dtype of ``values``, differentiable through them.
    """
    return signed_logsumexp(_terms(values, rule.log_weights), rule.signs, dim=1)


def posterior_mean(x, decoder, rule, noise_variance, *, chunk_size=None, values=None):
    """Posterior mean E[z | x_i] ~= sum_j r_ij z_j from the rule's nodes.

    Parameters
    ----------
    x, decoder, rule, noise_variance, chunk_size, values
        As in :func:`e_step`.

    Returns
    -------
    mean : Tensor of shape (B, m)
        In the dtype of ``x``; no gradient.
    """
    _check_rule(x, rule)
    if values is not None:
        with torch.no_grad():
            _, r = _weights(_terms(values.detach(), rule.log_weights), rule.signs)
            return torch.einsum("bk,bkm->bm", r, rule.nodes.to(r.dtype)).to(x.dtype)
    parts = []
    with torch.no_grad():
        for *_, nodes, _, _, r in _posterior_blocks(
            x, decoder, rule, noise_variance, chunk_size
        ):
            nodes = nodes.to(r.dtype)
            if rule.shared:
                parts.append(r @ nodes)
            else:
                parts.append(torch.einsum("bk,bkm->bm", r, nodes))
    mean = sum(parts) if rule.shared else torch.cat(parts)
    return mean.to(x.dtype)


# ---------------------------------------------------------------------------
# Fisher's identity: E-step weights held fixed
# ---------------------------------------------------------------------------


def em_surrogate(
    x, decoder, rule, noise_variance, *, weights=None, chunk_size=None, min_weight=0.0
):
    """The EM surrogate Q_i = sum_j stopgrad(r_ij) log N(x_i; g(z_j), sigma^2 I).

    Its gradient with respect to the decoder's parameters and ``noise_variance``
    equals that of :func:`log_marginal` when ``r`` are the current posterior
    weights (Fisher's identity); with ``weights`` from an earlier E-step held
    fixed it is the M-step objective of EM. The value differs from log p(x_i)
    by the entropy of r_i and the weighted log-weights.

    Parameters
    ----------
    x, decoder, rule, noise_variance, chunk_size
        As in :func:`log_marginal`.
    weights : Tensor of shape (B, K) or None, default=None
        Posterior weights from :func:`e_step`; None computes them at the
        current parameters.
    min_weight : float, default=0.0
        Per-point nodes whose weight |r_ij| is at most this are left out (not
        decoded): the surrogate and its gradient then miss at most their
        share of the posterior mass.

    Returns
    -------
    q : Tensor of shape (B,)
        In the dtype of ``x``.
    """
    _check_rule(x, rule)
    blocks = _blocks(x, decoder, rule, chunk_size)
    if weights is None and len(blocks) == 1 and rule.shared:
        # One pass: the weights come from the same (detached) log-likelihoods.
        nodes, log_weights, signs = _block_rule(rule, *blocks[0])
        loglik = gaussian_loglik_matrix(x, _decode(decoder, nodes), noise_variance)
        with torch.no_grad():
            _, r = _weights(_terms(loglik, log_weights), signs)
        return (r * loglik).sum(1).to(x.dtype)
    if weights is None:
        weights = e_step(x, decoder, rule, noise_variance, chunk_size=chunk_size)[1]

    def block_q(x, nodes, r, noise_variance):
        if nodes.dim() == 2:
            loglik = gaussian_loglik_matrix(x, _decode(decoder, nodes), noise_variance)
        else:
            used = r.abs() > min_weight
            loglik = pairwise_loglik(x, decoder, nodes, used, noise_variance)
        return (r.to(loglik.dtype) * loglik).sum(1)

    parts = []
    for rows, cols in blocks:
        nodes = _block_rule(rule, rows, cols)[0]
        parts.append(
            _maybe_checkpoint(
                len(blocks),
                block_q,
                x[rows],
                nodes,
                weights[rows, cols].detach(),
                noise_variance,
            )
        )
    q = sum(parts) if rule.shared else torch.cat(parts)
    return q.to(x.dtype)
