"""Scikit-learn compatible estimators for nonlinear ICA and deep latent-variable models.

Observations are modelled as a noisy nonlinear mixture of independent sources,
z ~ N(0, I), x = g(z) + noise, with g a neural network. The estimators share
one training core built on skorch and PyTorch.
"""

from ._ivae import IdentifiableVAE
from ._mle import NonlinearICAMLE
from ._schedules import torch_threads
from ._vae import VAEICA

__version__ = "0.1.0.dev0"

__all__ = ["VAEICA", "IdentifiableVAE", "NonlinearICAMLE", "torch_threads"]
