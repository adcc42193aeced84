"""Variants of the iVAE's training recipe on the xtanh benchmark, iVAE only.

IdentifiableVAE on ``make_segmented_sources(40, 1000, 5, 5, n_layers=3,
activation="xtanh", noise_std=0)`` (the data of ``bench_ivae.py``), one line
per data seed: MCC against the true sources, ``score(X, U)`` (the ELBO) and
CPU seconds per fit (one thread). The recipe's private knobs are set here:
``--schedule-steps`` (the cosine schedule's length in optimizer steps) and
``--precision`` (training precision; by default the estimator's own
choice); ``--params`` passes estimator
parameters as JSON; ``--activation leaky_relu`` mixes with the leaky ReLU
instead.

    python benchmarks/bench_ivae_recipe.py --schedule-steps 3200
    python benchmarks/bench_ivae_recipe.py --precision float64 --data-seeds 1 2
    python benchmarks/bench_ivae_recipe.py --schedule-steps 2400 \\
        --params '{"batch_size": 512, "learning_rate_init": 0.0141}'
"""

import argparse
import json
import statistics
import time
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning

import sklearn_nlica._ivae as ivae_module
from sklearn_nlica import IdentifiableVAE
from sklearn_nlica.datasets import make_segmented_sources
from sklearn_nlica.metrics import mean_correlation_coefficient as mcc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--model-seed", type=int, default=0)
    parser.add_argument("--params", default="{}", help="estimator parameters, JSON")
    parser.add_argument("--schedule-steps", type=int, default=None)
    parser.add_argument("--precision", choices=["float32", "float64"])
    parser.add_argument(
        "--activation", default="xtanh", choices=["xtanh", "leaky_relu"]
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ConvergenceWarning)
    if args.schedule_steps:
        ivae_module.SCHEDULE_STEPS = args.schedule_steps
    if args.precision:
        IdentifiableVAE._training_precision = getattr(torch, args.precision)
    params = json.loads(args.params)
    scores, times = [], []
    for data_seed in args.data_seeds:
        X, S, U = make_segmented_sources(
            40,
            1000,
            5,
            5,
            n_layers=3,
            activation=args.activation,
            noise_std=0,
            random_state=data_seed,
        )
        start = time.process_time()
        model = IdentifiableVAE(5, random_state=args.model_seed, **params).fit(X, U)
        times.append(time.process_time() - start)
        scores.append(mcc(S, model.transform(X)))
        print(
            f"data {data_seed} model {args.model_seed}: MCC {scores[-1]:.3f} "
            f"ELBO {model.score(X, U):.3f} CPU {times[-1]:.1f} s "
            f"epochs {model.n_iter_}",
            flush=True,
        )
    print(
        f"median MCC {statistics.median(scores):.3f}, worst {min(scores):.3f}; "
        f"CPU s per fit {min(times):.1f} to {max(times):.1f}"
    )


if __name__ == "__main__":
    main()
