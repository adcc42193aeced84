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
variance the posterior p(z | x) is far narrower than the prior and every prior
rule misses it (at m = 2, n = 1000, sigma = 0.1: by 10^2 to 10^3 nats per
point with 4096 nodes); :class:`Adaptive` places each point's nodes on its own
posterior and is exact there. It is the default of the maximum likelihood
estimator, with 64 nodes per point: see ``DEFAULT_INTEGRATOR``.
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

# The default of the maximum likelihood estimator, measured with
# benchmarks/bench_integrators.py (mean error per point, 64 nodes per point):
# - linear decoder (closed-form truth): 5e-11 nat at m = 2, n = 1000,
#   sigma = 0.1, where every prior rule is off by 10^3-10^4 nats (still by
#   10^2 with 4096 nodes), and below 1e-6 nat in every case of m <= 5,
#   n <= 1000, sigma in {1, 0.1};
# - bimodal posteriors (g(z) = z^2 in complex form, m = n = 2, sigma = 0.1):
#   2.4e-3 to 4.4e-3 nat over two draws (1.7e-3 at n = 20), most of it from
#   the points near the fold, whose posteriors are rings; one Laplace
#   component alone is off by log 2 on every point, prior rules by 60 to
#   100 nats with 64 nodes and still by 0.9 to 9 with 4096;
# - random tanh decoders: 4e-8 to 5e-4 nat for m <= 2 once n / sigma^2 >=
#   1000 (1e-4 and 1e-3 nat for m = 3 and 5 at n = 1000, sigma = 0.1), but
#   1e-2 to 1e-1 nat when few features and small noise make the posteriors
#   curved ridges (n = 2, sigma = 0.1), or when sigma = 1 leaves them as wide
#   as the prior (where tensor Gauss-Hermite on the prior does better, m <= 2).
# 64 nodes keep the linear case exact; 256 and 1024 nodes roughly halve and
# quarter the errors of the hard cases.
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
