"""Synthetic data for nonlinear ICA.

- :func:`make_nonlinear_ica`: Gaussian sources pushed through a random MLP,
  plus Gaussian noise: the nonlinear ICA model (Hyvarinen and Pajunen,
  1999) with a generic random mixing.
- :func:`make_segmented_sources`: nonstationary sources whose mean and
  variance change from segment to segment, mixed by a random invertible
  leaky-ReLU MLP, plus sensor noise: the simulations of the identifiable VAE
  (Khemakhem, Kingma, Monti and Hyvarinen, 2020), after time-contrastive
  learning (Hyvarinen and Morioka, 2016).
- :class:`MixingMLP`: the mixing function the generators return.

Both are pure numpy and deterministic under ``random_state``; with
``return_mixing=True`` they also return the mixing function, so that the
noiseless observations can be recomputed exactly.
"""

# SPDX-License-Identifier: BSD-3-Clause

from ._generators import make_nonlinear_ica, make_segmented_sources
from ._mixing import MixingMLP

__all__ = ["MixingMLP", "make_nonlinear_ica", "make_segmented_sources"]
