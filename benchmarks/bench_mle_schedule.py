"""NonlinearICAMLE's learning-rate schedules: whole default fits, constant or cosine.

For each data set, one whole fit with a constant rate of 1e-3 (the default
until the cosine schedule replaced it) and one with the default
``learning_rate_schedule="cosine"`` at 3e-3 over the schedule's batches
(``--batches``, 400 by default), every other parameter at its default, one
torch thread. Prints the epochs run, the training
log-likelihood ``score(X)`` with the default 64 nodes and with 1,024 (the
rule's own error shows as their difference) and the CPU seconds of the fit.
The solver's settings can be set too, to compare whole fits with and
without a change: ``--m-step-nodes``, the nodes per row that each M-step
resamples (``M_STEP_NODES``; ``all`` decodes every node above the weight
cut, as before resampling); ``--warm-tol``, the Newton decrement at which
a warm-started mode is kept (``0.01``, the cold tolerance, as before);
``--refine-tol``, the adaptive rule's ``refine_tol`` during training only
(the scores use the default rule). ``--seeds`` fits each variant from
several model seeds (the data stay those of seed 0): the trajectories are
chaotic, and single fits of one setting differ by up to 0.1 nat from seed
to seed.

Data sets (``make_nonlinear_ica``, random_state 0): ``nlica``, the ``nlica
mle`` command's built-in data (2,000 x 10, m = 2, noise 0.1, standardised);
``bench-8`` and ``bench-20``, those of ``bench_mle_speed.py`` (1,500 x 8,
m = 3 and 2,000 x 20, m = 2, the generator's default noise); ``low-10`` and
``low-8``, 2,000 x 10, m = 2 and 1,500 x 8, m = 3 at noise 0.1, unscaled.

    python benchmarks/bench_mle_schedule.py
    python benchmarks/bench_mle_schedule.py --data nlica bench-8 --batches 200 400
    python benchmarks/bench_mle_schedule.py --data low-8 --batches 160 --rate 1e-2
    python benchmarks/bench_mle_schedule.py --no-constant --seeds 0 1 2 \
        --m-step-nodes all --warm-tol 0.01
    python benchmarks/bench_mle_schedule.py --no-constant --refine-tol 0.05 1e9
"""

import argparse
import time
import warnings
from itertools import product

import torch
from sklearn.preprocessing import StandardScaler

from sklearn_nlica import NonlinearICAMLE
from sklearn_nlica import _em as em_module
from sklearn_nlica import _mle as mle_module
from sklearn_nlica.datasets import make_nonlinear_ica
from sklearn_nlica.integrators import Adaptive, _newton

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


def fit(X, m, params, seed):
    start = time.process_time()
    model = NonlinearICAMLE(m, random_state=seed, **params).fit(X)
    seconds = time.process_time() - start
    model.net_.module_.integrator = Adaptive()  # scores by the default rule
    score = model.score(X)
    precise = model.set_params(n_nodes=1024).score(X)
    return model.n_iter_, score, precise, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--batches", type=int, nargs="+", default=[400])
    parser.add_argument("--rate", type=float, default=3e-3, help="the cosine's start")
    parser.add_argument("--no-constant", action="store_true")
    parser.add_argument(
        "--warm-tol", type=float, default=_newton._WARM_TOL, help="Newton's, warm"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="models")
    parser.add_argument(
        "--m-step-nodes", nargs="+", default=[str(em_module.M_STEP_NODES)]
    )
    parser.add_argument(
        "--refine-tol", type=float, nargs="+", default=[Adaptive().refine_tol]
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    _newton._WARM_TOL = args.warm_tol
    header = ("data", "schedule", "nodes", "refine", "seed", "epochs", "score")
    header += ("1024", "CPU s")
    print("{:>9} {:>16} {:>5} {:>6} {:>4} {:>6} {:>9} {:>9} {:>6}".format(*header))
    for name in args.data:
        X, m = load(name)
        constant = {"learning_rate_schedule": "constant", "learning_rate_init": 1e-3}
        variants = [] if args.no_constant else [("constant 1e-3", constant, None)]
        variants += [
            (f"cosine {b} {args.rate:g}", {"learning_rate_init": args.rate}, b)
            for b in args.batches
        ]
        for nodes, tol in product(args.m_step_nodes, args.refine_tol):
            em_module.M_STEP_NODES = None if nodes == "all" else int(nodes)
            for (label, params, batches), seed in product(variants, args.seeds):
                if batches is not None:
                    mle_module.EM_SCHEDULE_BATCHES = batches
                params = {**params, "integrator": Adaptive(refine_tol=tol)}
                epochs, score, precise, seconds = fit(X, m, params, seed)
                print(
                    f"{name:>9} {label:>16} {nodes:>5} {tol:6g} {seed:4d} {epochs:6d} "
                    f"{score:9.4f} {precise:9.4f} {seconds:6.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
