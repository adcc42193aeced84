"""Accuracy and speed of the integration rules on the marginal likelihood.

For the model z ~ N(0, I_m), x | z ~ N(g(z), sigma^2 I_n) this script measures,
for every rule of :mod:`sklearn_nlica.integrators` and several node budgets,
the error of log p(x) per sample and the time of one batch (rule + log-marginal,
forward only), on

- ``linear``: g(z) = W z + b (probabilistic PCA), against the closed form
  N(b, W W^T + sigma^2 I);
- ``tanh``: a random one-hidden-layer tanh network (16 units, weights
  N(0, 1/fan_in), biases U(-1, 1), as in ``make_nonlinear_ica``), against a
  fine reference: a 1500^m midpoint grid on [-6, 6]^m where the posteriors are
  wide enough for it (m <= 2, n <= 20), else the adaptive rule with about 4000
  nodes per point. ``ref_check`` is the mean gap between the reference and a
  second estimate: a 1000^m grid (it bounds the fine grid's error), or QMC with
  2^20 nodes (an overestimate where posteriors are narrow);
- ``square``: g(z) = C (z1^2 - z2^2, 2 z1 z2) (m = 2; C = I for n = 2), a map
  with two preimages for every x: bimodal posteriors with separated modes.

Data are drawn from each model. Errors are |log p_hat(x) - log p(x)| in nats,
averaged over the points (``mean``), their maximum, and the fraction of points
where a signed rule's sum was not positive (``fail``; those points are left
out of the error columns).

Usage::

    python benchmarks/bench_integrators.py --quick
    python benchmarks/bench_integrators.py            # the full grid (minutes)
    python benchmarks/bench_integrators.py --dims 2 --features 1000 --sigmas 0.1
"""

import argparse
import contextlib
import itertools
import math
import time

import torch

from sklearn_nlica import _marginal
from sklearn_nlica.integrators import (
    DEFAULT_INTEGRATOR,
    DEFAULT_N_NODES,
    QMC,
    Adaptive,
    Grid,
    get_integrator,
)

RULES = ["monte_carlo", "qmc", "grid", "gauss_hermite", "sparse_grid", "adaptive"]
DTYPE = torch.float64


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def make_model(kind, n_dims, n_features, seed):
    """A decoder (N, m) -> (N, n) with fixed random parameters."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "linear":
        weight = torch.randn(n_features, n_dims, generator=gen, dtype=DTYPE)
        bias = torch.randn(n_features, generator=gen, dtype=DTYPE)

        def decoder(z):
            return z @ weight.T + bias

        decoder.weight, decoder.bias = weight, bias
        return decoder
    if kind == "tanh":
        hidden = 16
        w1 = torch.randn(hidden, n_dims, generator=gen, dtype=DTYPE) / math.sqrt(n_dims)
        b1 = 2 * torch.rand(hidden, generator=gen, dtype=DTYPE) - 1
        w2 = torch.randn(n_features, hidden, generator=gen, dtype=DTYPE) / math.sqrt(
            hidden
        )
        return lambda z: torch.tanh(z @ w1.T + b1) @ w2.T
    if kind == "square":
        mix = (
            torch.eye(2, dtype=DTYPE)
            if n_features == 2
            else torch.randn(n_features, 2, generator=gen, dtype=DTYPE)
        )
        return lambda z: (
            torch.stack([z[:, 0] ** 2 - z[:, 1] ** 2, 2 * z[:, 0] * z[:, 1]], 1) @ mix.T
        )
    raise ValueError(kind)


def sample(decoder, n_dims, sigma, n_points, seed):
    gen = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(n_points, n_dims, generator=gen, dtype=DTYPE)
    mean = decoder(z)
    return mean + sigma * torch.randn(mean.shape, generator=gen, dtype=DTYPE)


def closed_form(decoder, x, sigma):
    weight, bias = decoder.weight, decoder.bias
    cov = weight @ weight.T + sigma**2 * torch.eye(len(bias), dtype=DTYPE)
    return torch.distributions.MultivariateNormal(bias, cov).log_prob(x)


def reference(kind, decoder, x, n_dims, sigma):
    """(reference log p, mean gap to a second estimate or nan, description)."""
    if kind == "linear":
        return closed_form(decoder, x, sigma), float("nan"), "exact"
    variance = sigma**2
    if n_dims <= 2 and x.shape[1] <= 20:
        # Midpoint grids converge geometrically once the spacing resolves the
        # posterior: the gap between two resolutions bounds the finer one's error.
        sizes = {1: (200_000, 100_000), 2: (1500**2, 1000**2)}[n_dims]
        fine, coarse = (
            _marginal.log_marginal(
                x, decoder, Grid(half_width=6.0).rule(n_dims, size), variance
            )
            for size in sizes
        )
        return fine, float((fine - coarse).abs().mean()), "grid"
    # Posteriors too narrow for a grid: a large adaptive rule, checked against
    # prior QMC with 2^20 nodes (itself inaccurate when the posteriors are very
    # narrow, so the gap is then an overestimate).
    adaptive = Adaptive(n_modes=4, n_search=4096, n_starts=16)
    size = {1: 800, 2: 4 * 961, 3: 4 * 1331, 5: 4 * 1024}.get(n_dims, 4096)
    rule = adaptive.rule(
        n_dims,
        size,
        generator=torch.Generator().manual_seed(12345),
        log_integrand=_marginal.gaussian_log_integrand(x, decoder, variance),
    )
    by_adaptive = _marginal.log_marginal(x, decoder, rule, variance)
    qmc = QMC().rule(n_dims, 2**20, generator=torch.Generator().manual_seed(54321))
    by_qmc = _marginal.log_marginal(x, decoder, qmc, variance)
    return by_adaptive, float((by_qmc - by_adaptive).abs().mean()), "adaptive"


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------


def log_marginal_or_nan(x, decoder, rule, variance):
    """log p_hat(x) point by point, nan where a signed rule's sum is not positive."""
    out = torch.full((x.shape[0],), math.nan, dtype=x.dtype)
    for i in range(x.shape[0]):
        point_rule = (
            rule
            if rule.shared
            else type(rule)(*(None if t is None else t[i : i + 1] for t in rule))
        )
        with contextlib.suppress(_marginal.NonPositiveIntegralError):
            out[i] = _marginal.log_marginal(
                x[i : i + 1], decoder, point_rule, variance
            )[0]
    return out


def measure(rule_name, n_nodes, decoder, x, n_dims, sigma, truth, seed):
    integrator = get_integrator(rule_name)
    variance = sigma**2
    log_integrand = _marginal.gaussian_log_integrand(x, decoder, variance)

    def rule():
        return integrator.rule(
            n_dims,
            n_nodes,
            generator=torch.Generator().manual_seed(seed),
            log_integrand=log_integrand,
        )

    rule()  # warm the caches of deterministic rules (sparse grids take a while)
    start = time.perf_counter()
    try:
        estimate = _marginal.log_marginal(x, decoder, rule(), variance)
        elapsed = time.perf_counter() - start
    except _marginal.NonPositiveIntegralError:
        elapsed = time.perf_counter() - start
        estimate = log_marginal_or_nan(x, decoder, rule(), variance)
    error = (estimate - truth).abs()
    ok = torch.isfinite(error)
    return {
        "K": rule().n_nodes,
        "mean": float(error[ok].mean()) if ok.any() else math.nan,
        "max": float(error[ok].max()) if ok.any() else math.nan,
        "over": float((error[ok] > 0.01).double().mean()) if ok.any() else math.nan,
        "fail": float((~ok).double().mean()),
        "ms": 1000 * elapsed,
    }


def cases(args):
    for kind, m, n, sigma in itertools.product(
        args.decoders, args.dims, args.features, args.sigmas
    ):
        if kind == "square" and m != 2:
            continue
        yield kind, m, n, sigma


QUICK_CASES = [
    ("linear", 2, 1000, 0.1),
    ("linear", 2, 20, 1.0),
    ("linear", 5, 20, 0.1),
    ("tanh", 2, 20, 0.1),
    ("tanh", 2, 2, 0.1),
    ("square", 2, 2, 0.1),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a few headline cases at 64 and 1024 nodes"
    )
    parser.add_argument("--rules", nargs="+", default=RULES, choices=RULES)
    parser.add_argument(
        "--nodes", nargs="+", type=int, default=[16, 64, 256, 1024, 4096]
    )
    parser.add_argument("--dims", nargs="+", type=int, default=[1, 2, 3, 5])
    parser.add_argument("--features", nargs="+", type=int, default=[2, 20, 1000])
    parser.add_argument("--sigmas", nargs="+", type=float, default=[1.0, 0.1])
    parser.add_argument(
        "--decoders",
        nargs="+",
        default=["linear", "tanh", "square"],
        choices=["linear", "tanh", "square"],
    )
    parser.add_argument("--n-points", type=int, default=100, help="points per case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    case_list = QUICK_CASES if args.quick else list(cases(args))
    nodes = [64, 1024] if args.quick else args.nodes

    header = (
        f"{'decoder':<7} {'m':>2} {'n':>5} {'sigma':>5} {'rule':<14} {'nodes':>6} "
        f"{'K':>6} {'mean':>9} {'max':>9} {'>0.01':>6} {'fail':>5} {'ms':>8}"
    )
    headline = []
    for kind, m, n, sigma in case_list:
        decoder = make_model(kind, m, n, args.seed)
        x = sample(decoder, m, sigma, args.n_points, args.seed)
        start = time.perf_counter()
        truth, check, ref_name = reference(kind, decoder, x, m, sigma)
        print(
            f"\n{kind} decoder, m={m}, n={n}, sigma={sigma}: reference {ref_name}"
            + ("" if math.isnan(check) else f", ref_check {check:.1e}")
            + f" ({time.perf_counter() - start:.1f} s)"
        )
        print(header)
        for rule_name, n_nodes in itertools.product(args.rules, nodes):
            r = measure(rule_name, n_nodes, decoder, x, m, sigma, truth, args.seed)
            print(
                f"{kind:<7} {m:>2} {n:>5} {sigma:>5g} {rule_name:<14} {n_nodes:>6} "
                f"{r['K']:>6} {r['mean']:>9.1e} {r['max']:>9.1e} {r['over']:>6.2f} "
                f"{r['fail']:>5.2f} {r['ms']:>8.1f}",
                flush=True,
            )
            if rule_name == DEFAULT_INTEGRATOR and n_nodes == DEFAULT_N_NODES:
                headline.append((kind, m, n, sigma, r))
    if headline:
        default = f"{DEFAULT_INTEGRATOR!r}, {DEFAULT_N_NODES} nodes per point"
        print(f"\nDefault rule ({default}):")
        for kind, m, n, sigma, r in headline:
            print(
                f"  {kind:<7} m={m} n={n:<5} sigma={sigma:<4g} "
                f"mean error {r['mean']:.1e} nat, max {r['max']:.1e}, "
                f"{r['ms']:.0f} ms per {args.n_points} points"
            )


if __name__ == "__main__":
    main()
