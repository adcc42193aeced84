"""The adaptive rule's ``refine_tol``: which rows keep the small rule, at what error.

Fits ``NonlinearICAMLE`` at its defaults (one thread) for ``--epochs`` on a
data set of ``bench_mle_schedule.py``, then rebuilds the training rule of
every batch of 200 rows as the next epoch would (warm-started from the
fit's kept modes) at each ``refine_tol`` of ``--tols``. Prints the share of
rows that kept the small rule (2 m + 1 nodes per component with the prior
nodes), the CPU seconds of the rules, and the error of their log-likelihood
against a cold rule of 1,024 nodes: mean, mean absolute and largest
absolute, over all rows and over the rows that kept the small rule.

    python benchmarks/bench_mle_refine_tol.py
    python benchmarks/bench_mle_refine_tol.py --data bench-8 --epochs 5 60
"""

import argparse
import warnings

import torch
from bench_mle_schedule import DATA
from bench_mle_warm_start import fitted_models, timed_rebuilds

from sklearn_nlica.integrators import _adaptive


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["nlica"], choices=list(DATA))
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 30])
    parser.add_argument(
        "--tols", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5, 1.0]
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    needs_refinement = _adaptive._needs_refinement
    kept = []

    def recorded(staged, tol):
        refine = needs_refinement(staged, tol)
        kept.append(~refine)
        return refine

    _adaptive._needs_refinement = recorded
    print(
        f"{'data':>8} {'epochs':>6} {'tol':>5} {'kept':>6} {'CPU s':>6} "
        f"{'mean err':>9} {'mean|err|':>9} {'max|err|':>9} "
        f"{'kept mean':>9} {'kept max':>9}"
    )

    def set_tol(model, tol):
        model.integrator.refine_tol = tol

    models = fitted_models(args.data, args.epochs)
    for name, epochs, tol, seconds, error in timed_rebuilds(
        models, args.tols, set_tol, kept
    ):
        small = torch.cat(kept)
        on_small = error[small] if bool(small.any()) else error.new_zeros(1)
        print(
            f"{name:>8} {epochs:6d} {tol:5g} "
            f"{float(small.double().mean()):6.1%} {seconds:6.2f} "
            f"{float(error.mean()):9.2e} {float(error.abs().mean()):9.2e} "
            f"{float(error.abs().max()):9.2e} "
            f"{float(on_small.mean()):9.2e} "
            f"{float(on_small.abs().max()):9.2e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
