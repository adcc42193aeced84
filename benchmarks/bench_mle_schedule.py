"""NonlinearICAMLE's learning-rate schedules: whole default fits, constant or cosine.

For each data set, one whole fit with a constant rate of 1e-3 (the default
until the cosine schedule replaced it) and one with the default
``learning_rate_schedule="cosine"`` at 3e-3 over the schedule's batches
(``--batches``, 400 by default), every other parameter at its default, one
torch thread. Prints the epochs run, the training
log-likelihood ``score(X)`` with the default 64 nodes and with 1,024 (the
rule's own error shows as their difference) and the CPU seconds of the fit.

Data sets (``make_nonlinear_ica``, random_state 0): ``nlica``, the ``nlica
mle`` command's built-in data (2,000 x 10, m = 2, noise 0.1, standardised);
``bench-8`` and ``bench-20``, those of ``bench_mle_speed.py`` (1,500 x 8,
m = 3 and 2,000 x 20, m = 2, the generator's default noise); ``low-10`` and
``low-8``, 2,000 x 10, m = 2 and 1,500 x 8, m = 3 at noise 0.1, unscaled.

    python benchmarks/bench_mle_schedule.py
    python benchmarks/bench_mle_schedule.py --data nlica bench-8 --batches 200 400
    python benchmarks/bench_mle_schedule.py --data low-8 --batches 160 --rate 1e-2
"""

import argparse
import time
import warnings

import torch
from sklearn.preprocessing import StandardScaler

from sklearn_nlica import NonlinearICAMLE
from sklearn_nlica import _mle as mle_module
from sklearn_nlica.datasets import make_nonlinear_ica

DATA = {
    "nlica": (2000, 10, 2, 0.1, True),
    "bench-8": (1500, 8, 3, None, False),
    "bench-20": (2000, 20, 2, None, False),
    "low-10": (2000, 10, 2, 0.1, False),
    "low-8": (1500, 8, 3, 0.1, False),
}


def load(name):
    n_samples, n_features, m, noise, standardise = DATA[name]
    noise = {} if noise is None else {"noise_std": noise}
    X, _ = make_nonlinear_ica(
        n_samples=n_samples,
        n_components=m,
        n_features=n_features,
        random_state=0,
        **noise,
    )
    return (StandardScaler().fit_transform(X) if standardise else X), m


def fit(X, m, params):
    start = time.process_time()
    model = NonlinearICAMLE(m, random_state=0, **params).fit(X)
    seconds = time.process_time() - start
    score = model.score(X)
    precise = model.set_params(n_nodes=1024).score(X)
    return model.n_iter_, score, precise, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--batches", type=int, nargs="+", default=[400])
    parser.add_argument("--rate", type=float, default=3e-3, help="the cosine's start")
    parser.add_argument("--no-constant", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    header = ("data", "schedule", "epochs", "score", "1024", "CPU s")
    print("{:>9} {:>16} {:>6} {:>9} {:>9} {:>6}".format(*header))
    for name in args.data:
        X, m = load(name)
        constant = {"learning_rate_schedule": "constant", "learning_rate_init": 1e-3}
        variants = [] if args.no_constant else [("constant 1e-3", constant, None)]
        variants += [
            (f"cosine {b} {args.rate:g}", {"learning_rate_init": args.rate}, b)
            for b in args.batches
        ]
        for label, params, batches in variants:
            if batches is not None:
                mle_module.EM_SCHEDULE_BATCHES = batches
            epochs, score, precise, seconds = fit(X, m, params)
            print(
                f"{name:>9} {label:>16} {epochs:6d} {score:9.4f} {precise:9.4f} "
                f"{seconds:6.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
