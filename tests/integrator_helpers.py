"""Helpers shared by the integrator tests (tests/test_integrators_*.py)."""

import numpy as np
import torch


def gaussian_moment(powers):
    """E[prod_i z_i^p_i] for z ~ N(0, I): the product of (p - 1)!! over even p."""
    out = 1.0
    for p in powers:
        if p % 2:
            return 0.0
        out *= float(np.prod(np.arange(p - 1, 0, -2))) if p else 1.0
    return out


def integrate_monomial(rule, powers):
    weights = rule.log_weights.exp()
    if rule.signs is not None:
        weights = weights * rule.signs
    values = torch.ones(rule.nodes.shape[:-1], dtype=torch.float64)
    for i, p in enumerate(powers):
        values = values * rule.nodes[..., i] ** p
    return float((weights * values).sum())


def total_weight(rule):
    weights = rule.log_weights.exp()
    if rule.signs is not None:
        weights = weights * rule.signs
    return weights.sum(-1)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)
