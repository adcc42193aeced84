"""How exact ``NonlinearICAMLE.score`` is on a fitted nonlinear model (m = 2).

Fits ``NonlinearICAMLE`` at its defaults (one thread) on m = 2 data sets of
``bench_mle_schedule.py``, then compares each row's log-likelihood from the
default adaptive rule (cold: no warm start, as ``score_samples`` on any data
computes it) at 64, 1,024 and 4,096 nodes with a dense midpoint grid over
[-4.6, 4.6]^2 (step ``--step``), which needs no mode finding. Prints, per
node budget, the mean error, the mean and largest absolute error, and the
number of rows off by more than 1 nat, with the CPU seconds of each rule.

    python benchmarks/bench_mle_score_accuracy.py
    python benchmarks/bench_mle_score_accuracy.py --data nlica low-10 bench-20
"""

import argparse
import math
import time
import warnings

import torch
from bench_mle_schedule import DATA, load

from sklearn_nlica import NonlinearICAMLE
from sklearn_nlica._integrand import GaussianIntegrand

HALF_WIDTH = 4.6
CHUNK = 20_000  # grid nodes per pass


def grid_log_likelihood(model, x, step):
    """log p(x_b) by a midpoint grid with shared nodes, row by row in log space."""
    axis = torch.arange(-HALF_WIDTH + step / 2, HALF_WIDTH, step, dtype=x.dtype)
    nodes = torch.cartesian_prod(axis, axis)
    log_cell = 2 * math.log(step) - math.log(2 * math.pi)
    integrand = GaussianIntegrand(x, model._integrand_decoder(), model.noise_variance())
    total = torch.full((len(x),), -math.inf, dtype=x.dtype)
    for start in range(0, len(nodes), CHUNK):
        z = nodes[start : start + CHUNK]
        values = integrand(z[None]) - 0.5 * (z**2).sum(-1) + log_cell
        total = torch.logaddexp(total, torch.logsumexp(values, dim=1))
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    two = [name for name, spec in DATA.items() if spec[2] == 2]
    parser.add_argument("--data", nargs="+", default=["nlica"], choices=two)
    parser.add_argument("--step", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(
        f"{'data':>9} {'nodes':>6} {'mean err':>9} {'mean|err|':>9} "
        f"{'max|err|':>9} {'>1 nat':>6} {'CPU s':>6}"
    )
    for name in args.data:
        X, m = load(name)
        x = torch.as_tensor(X)
        fitted = NonlinearICAMLE(m, random_state=args.seed).fit(X)
        model = fitted.net_.module_
        with torch.no_grad():
            reference = grid_log_likelihood(model, x, args.step)
            for n_nodes in (64, 1024, 4096):
                start = time.process_time()
                rule = model.rule(x, n_nodes=n_nodes, generator=torch.Generator())
                error = model.log_likelihood(x, rule) - reference
                seconds = time.process_time() - start
                print(
                    f"{name:>9} {n_nodes:6d} {float(error.mean()):9.4f} "
                    f"{float(error.abs().mean()):9.4f} {float(error.abs().max()):9.2f} "
                    f"{int((error.abs() > 1).sum()):6d} {seconds:6.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
