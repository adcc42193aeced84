"""NonlinearICAMLE against VAEICA: time per epoch at their defaults, alternating.

On ``make_nonlinear_ica`` data (1,500 x 8 with m = 3 and 2,000 x 20 with
m = 2 unless ``--data`` says otherwise) each round fits ``VAEICA`` and then
``NonlinearICAMLE`` for ``--epochs`` epochs with every other parameter at its
default, on one torch thread, and measures the CPU seconds of each fit
(``time.process_time``, which a shared machine's other processes do not
inflate as much as wall time). Alternating the two within one run exposes
both to the same machine load. The figures: each round's CPU seconds per
epoch, the per-epoch wall times of the last round (skorch's ``dur``) and the
ratio MLE / VAE of the CPU seconds summed over the rounds; ``--full`` adds one
whole default fit of each (``max_iter`` at its default, until the fit's own
convergence check stops it), per epoch and in total, with its training
score (the MLE's log-likelihood, the VAE's ELBO); ``--other`` adds a whole
MLE fit with other parameters, e.g. the constant rate that the cosine
schedule replaced.

Usage::

    python benchmarks/bench_mle_speed.py                    # ~3 min on one core
    python benchmarks/bench_mle_speed.py --rounds 3 --full
    python benchmarks/bench_mle_speed.py --data 1500 8 3 --epochs 8
    python benchmarks/bench_mle_speed.py --rounds 1 --full --other \
        '{"learning_rate_init": 1e-3, "learning_rate_schedule": "constant"}'
"""

import argparse
import json
import time
import warnings

import torch

from sklearn_nlica import VAEICA, NonlinearICAMLE
from sklearn_nlica.datasets import make_nonlinear_ica


def timed_fit(estimator, X):
    """CPU seconds of ``estimator.fit(X)``, its epochs and per-epoch wall times."""
    start = time.process_time()
    estimator.fit(X)
    seconds = time.process_time() - start
    durations = [float(d) for d in estimator.net_.history[:, "dur"]]
    return seconds, estimator.n_iter_, durations


def compare(n_samples, n_features, n_components, rounds, epochs, full, other=None):
    X, _ = make_nonlinear_ica(
        n_samples=n_samples,
        n_components=n_components,
        n_features=n_features,
        random_state=0,
    )
    for cls in (VAEICA, NonlinearICAMLE):  # first-call costs, outside the timing
        cls(n_components=n_components, max_iter=1).fit(X[:200])
    print(f"\n{n_samples} x {n_features}, m = {n_components}, {epochs} epochs a fit")
    print(f"  {'round':>5} {'VAE s/epoch':>11} {'MLE s/epoch':>11} {'ratio':>6}")
    total = {"vae": [0.0, 0], "mle": [0.0, 0]}
    for r in range(rounds):
        row = {}
        for name, cls in (("vae", VAEICA), ("mle", NonlinearICAMLE)):
            estimator = cls(n_components=n_components, max_iter=epochs, random_state=r)
            seconds, n_epochs, durations = timed_fit(estimator, X)
            total[name][0] += seconds
            total[name][1] += n_epochs
            row[name] = (seconds / n_epochs, durations)
        print(
            f"  {r:5d} {row['vae'][0]:11.3f} {row['mle'][0]:11.3f} "
            f"{row['mle'][0] / row['vae'][0]:6.1f}",
            flush=True,
        )
    for name in ("vae", "mle"):
        walls = " ".join(f"{d:.2f}" for d in row[name][1])
        print(f"  last round {name} wall s per epoch: {walls}")
    vae, mle = (total[k][0] / total[k][1] for k in ("vae", "mle"))
    print(
        f"  mean CPU s/epoch: VAE {vae:.3f}, MLE {mle:.3f}, MLE / VAE {mle / vae:.1f}"
    )
    if full:
        fits = {}
        runs = [("vae", VAEICA, {}), ("mle", NonlinearICAMLE, {})]
        if other:
            runs.append(("mle, --other", NonlinearICAMLE, other))
        for name, cls, params in runs:
            estimator = cls(n_components=n_components, random_state=0, **params)
            fits[name] = (*timed_fit(estimator, X), estimator.score(X))
        print(
            f"  whole default fit: {'epochs':>6} {'CPU s':>7} {'s/epoch':>8} "
            f"{'score(X)':>9}"
        )
        for name, (seconds, n_epochs, _, score) in fits.items():
            print(
                f"  {name:>17}: {n_epochs:6d} {seconds:7.1f} {seconds / n_epochs:8.3f} "
                f"{score:9.4f}"
            )
        ratio = (fits["mle"][0] / fits["mle"][1]) / (fits["vae"][0] / fits["vae"][1])
        print(f"  whole fit MLE / VAE per epoch: {ratio:.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=int,
        nargs=3,
        action="append",
        metavar=("N_SAMPLES", "N_FEATURES", "N_COMPONENTS"),
        help="default: 1500 8 3 and 2000 20 2",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--full", action="store_true")
    parser.add_argument(
        "--other",
        type=json.loads,
        default=None,
        help="with --full, also a whole MLE fit with these parameters (JSON)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # convergence warnings of the short fits
    for data in args.data or [(1500, 8, 3), (2000, 20, 2)]:
        compare(*data, args.rounds, args.epochs, args.full, args.other)


if __name__ == "__main__":
    main()
