"""Metrics and scorers for latent-variable models.

Two questions are asked of a fitted nonlinear-ICA model: how well does it
reconstruct the observations, and how well does it recover the sources? The
functions below answer them by comparing two data matrices row by row, and
the scorers plug them into :class:`~sklearn.model_selection.GridSearchCV`,
:func:`~sklearn.model_selection.cross_validate` and friends.

- :func:`procrustes_disparity`: orthogonal Procrustes disparity, invariant to
  translation, scaling, rotation and reflection (0 = same configuration).
- :func:`cca_score`: sample canonical correlations, invariant to any
  invertible affine map of either matrix.
- :func:`mean_correlation_coefficient`: the identifiability metric of the
  nonlinear ICA literature, invariant to permutation, sign and scale of the
  columns.
- :func:`make_latent_scorer` and the ready-made ``procrustes_scorer``,
  ``cca_scorer`` and ``mcc_scorer``.
"""

# SPDX-License-Identifier: BSD-3-Clause

from . import _scorers
from ._scorers import make_latent_scorer
from ._scores import cca_score, mean_correlation_coefficient, procrustes_disparity

# The ready-made scorers, re-exported here with their documentation.

#: Minus the Procrustes disparity between ``X`` and its reconstruction
#: ``inverse_transform(transform(X))``; greater is better, 0 is perfect.
procrustes_scorer = _scorers.procrustes_scorer

#: First canonical correlation between ``X`` and its reconstruction.
cca_scorer = _scorers.cca_scorer

#: Mean correlation coefficient between ``X`` and its reconstruction. For
#: source recovery use ``make_latent_scorer("mcc", mode="latent")``.
mcc_scorer = _scorers.mcc_scorer

__all__ = [
    "cca_score",
    "cca_scorer",
    "make_latent_scorer",
    "mcc_scorer",
    "mean_correlation_coefficient",
    "procrustes_disparity",
    "procrustes_scorer",
]
