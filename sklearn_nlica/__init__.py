"""Scikit-learn compatible estimators for nonlinear ICA and deep latent-variable models."""

__version__ = "0.1.0.dev0"
