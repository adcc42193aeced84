"""The EM solver's warm-started rules: time and accuracy by Newton's warm tolerance.

Fits ``NonlinearICAMLE`` at its defaults (one thread) for ``--epochs`` on a
data set of ``bench_mle_schedule.py``, then rebuilds the training rule of
every batch of 200 rows as the next epoch would: from the posterior modes
the fit kept for each row, at each Newton tolerance of ``--tols`` for warm
starts (the decrement below which a kept mode is taken as it is). Prints the
CPU seconds of those rules, the Newton evaluations they needed (entries and
calls) and the error of their log-likelihood (64 nodes) against a cold rule
of 1,024 nodes: its mean and largest absolute value over the rows.

    python benchmarks/bench_mle_warm_start.py
    python benchmarks/bench_mle_warm_start.py --data bench-8 --epochs 5 30
"""

import argparse
import time
import warnings

import torch
from bench_mle_schedule import DATA, load

from sklearn_nlica import NonlinearICAMLE
from sklearn_nlica.integrators import _newton

BATCH = 200


def rebuild_rules(model, x, modes, seed):
    """log p of every row by the warm-started rules of 200-row batches."""
    values = []
    for start in range(0, len(x), BATCH):
        rows = torch.arange(start, min(start + BATCH, len(x)))
        generator = torch.Generator().manual_seed(seed)
        rule = model.rule(x[rows], generator=generator, warm_start=modes[rows])
        values.append(model.log_likelihood(x[rows], rule))
    return torch.cat(values)


def fitted_models(names, epochs_list):
    """For each data set and fit length: (name, epochs, x, module, net, the
    log-likelihood of every row by a cold 1,024-node rule), default fits."""
    for name in names:
        X, m = load(name)
        x = torch.as_tensor(X)
        for epochs in epochs_list:
            fitted = NonlinearICAMLE(m, max_iter=epochs, random_state=0).fit(X)
            model, net = fitted.net_.module_, fitted.net_
            with torch.no_grad():
                cold = model.rule(x, n_nodes=1024, generator=torch.Generator())
                reference = model.log_likelihood(x, cold)
            yield name, epochs, x, model, net, reference


def timed_rebuilds(models, tols, set_tol, recorder):
    """For each model of ``fitted_models`` and each tolerance: set it with
    ``set_tol(module, tol)``, empty ``recorder`` and rebuild every row's rule
    from its stored modes; yield (name, epochs, tol, CPU seconds, the error
    of each row's log-likelihood against the cold reference)."""
    for name, epochs, x, model, net, reference in models:
        for tol in tols:
            set_tol(model, tol)
            recorder.clear()
            start = time.process_time()
            with torch.no_grad():
                log_p = rebuild_rules(model, x, net.row_modes_, net.rule_seed_)
            yield name, epochs, tol, time.process_time() - start, log_p - reference


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["nlica"], choices=list(DATA))
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 30])
    parser.add_argument("--tols", type=float, nargs="+", default=[0.01, 0.1, 0.3, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    derivatives = _newton.Posterior.derivatives
    entries = []

    def counted(self, z, active):
        entries.append(int(active.sum()))
        return derivatives(self, z, active)

    _newton.Posterior.derivatives = counted
    print(
        f"{'data':>8} {'epochs':>6} {'tol':>5} {'CPU s':>6} {'entries':>8} "
        f"{'calls':>5} {'mean err':>9} {'max |err|':>9}"
    )

    def set_tol(model, tol):
        _newton._WARM_TOL = tol

    models = fitted_models(args.data, args.epochs)
    for name, epochs, tol, seconds, error in timed_rebuilds(
        models, args.tols, set_tol, entries
    ):
        print(
            f"{name:>8} {epochs:6d} {tol:5g} {seconds:6.2f} "
            f"{sum(entries):8d} {len(entries):5d} "
            f"{float(error.mean()):9.2e} {float(error.abs().max()):9.2e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
