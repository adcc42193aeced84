"""Synthetic data for nonlinear ICA.

- :func:`make_nonlinear_ica`: Gaussian sources pushed through a random MLP,
  plus Gaussian noise (the process of the MLE-vs-VAE report, seed 003,
  section 4.1).
- :func:`make_segmented_sources`: nonstationary sources whose mean and
  variance change from segment to segment, mixed by a random invertible
  leaky-ReLU MLP, plus sensor noise (the simulations of the identifiable VAE,
  Khemakhem et al., 2020).

Both are pure numpy and deterministic under ``random_state``; with
``return_mixing=True`` they also return the mixing function, so that the
noiseless observations can be recomputed exactly.
"""

# SPDX-License-Identifier: BSD-3-Clause

from ._generators import make_nonlinear_ica, make_segmented_sources
from ._mixing import MixingMLP

__all__ = ["MixingMLP", "make_nonlinear_ica", "make_segmented_sources"]
