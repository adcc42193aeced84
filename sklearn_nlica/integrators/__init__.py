"""Integration rules for expectations over a standard normal latent variable.

Every estimator in this package needs integrals of the form

    E_{e ~ N(0, I_m)}[h(e)]  ~=  sum_j w_j h(e_j),

the marginal likelihood of :class:`NonlinearICAMLE` (h = p(x | z)), the
reconstruction term of the VAEs (h = log p(x | mu + s e)) and importance
weighted likelihoods. An :class:`Integrator` hands out the nodes e_j and the
weights w_j as a :class:`Rule`; how they were chosen (random draws, a lattice,
a Gaussian quadrature, a sparse grid, or nodes adapted to each point's
posterior) is the only thing that differs between the built-in rules.

Weights are always carried as logarithms (plus a sign where a rule has negative
weights) so that callers can combine them with log-densities in a
log-sum-exp without ever forming a probability.

Choosing a rule
---------------
Rules that place their nodes on the prior (``"monte_carlo"``, ``"qmc"``,
``"grid"``, ``"gauss_hermite"``, ``"sparse_grid"``) are fine when the
integrand is spread over the prior, e.g. the VAE's reparameterised
expectations, or a marginal likelihood with few features and a large noise
variance. For the marginal likelihood with many features or a small noise
variance the posterior p(z | x) is far narrower than the prior, and a rule on
the prior puts few or none of its nodes where the posterior has its mass;
:class:`Adaptive` places each point's nodes on its own posterior and is exact
there when the posterior is Gaussian. It is the default of the maximum
likelihood estimator (``DEFAULT_INTEGRATOR``), with ``DEFAULT_N_NODES`` nodes
per point.

Examples
--------
>>> from sklearn_nlica.integrators import get_integrator
>>> rule = get_integrator("gauss_hermite").rule(2, 9)
>>> rule.nodes.shape, rule.log_weights.shape
(torch.Size([9, 2]), torch.Size([9]))
>>> # E[z_1^2] = 1
>>> round(float((rule.signed_weights() * rule.nodes[:, 0] ** 2).sum()), 12)
1.0
"""

from ._adaptive import Adaptive
from ._base import Integrator, Rule
from ._prior import QMC, GaussHermite, Grid, MonteCarlo
from ._sparse import SparseGrid

__all__ = [
    "DEFAULT_INTEGRATOR",
    "DEFAULT_N_NODES",
    "INTEGRATORS",
    "QMC",
    "Adaptive",
    "GaussHermite",
    "Grid",
    "Integrator",
    "MonteCarlo",
    "Rule",
    "SparseGrid",
    "get_integrator",
]

# The default of the maximum likelihood estimator: the only rule that stays
# accurate when posteriors are far narrower than the prior (many features,
# small noise), with two Laplace components for posteriors with two modes.
DEFAULT_INTEGRATOR = "adaptive"
DEFAULT_N_NODES = 64

INTEGRATORS = {
    "monte_carlo": MonteCarlo,
    "qmc": QMC,
    "grid": Grid,
    "gauss_hermite": GaussHermite,
    "sparse_grid": SparseGrid,
    "adaptive": Adaptive,
}


def get_integrator(integrator):
    """Resolve an integrator name or pass an :class:`Integrator` through.

    Parameters
    ----------
    integrator : str or Integrator
        One of ``"monte_carlo"``, ``"qmc"``, ``"grid"``, ``"gauss_hermite"``,
        ``"sparse_grid"``, ``"adaptive"`` (built with default parameters), or an
        Integrator instance, returned unchanged.

    Returns
    -------
    integrator : Integrator

    Examples
    --------
    >>> from sklearn_nlica.integrators import get_integrator
    >>> get_integrator("gauss_hermite")
    GaussHermite()
    """
    if isinstance(integrator, Integrator):
        return integrator
    names = ", ".join(repr(name) for name in INTEGRATORS)
    if isinstance(integrator, str):
        if integrator not in INTEGRATORS:
            raise ValueError(
                f"Unknown integrator {integrator!r}; valid names are {names}."
            )
        return INTEGRATORS[integrator]()
    raise TypeError(
        f"integrator must be one of {names} or an Integrator instance, "
        f"got {type(integrator).__name__}."
    )
