"""IdentifiableVAE at its defaults on a grid of settings no default is tuned to.

Each setting is a data family: our generator (``make_segmented_sources``,
one mixing matrix drawn per layer), a generator written to the procedure of
the iVAE authors' released code (one uniform, well-conditioned matrix
reused in every layer, no sensor noise; written here from its description),
or a continuous auxiliary variable (u a time in [0, 1], each source's
log-standard-deviation a random smooth function of it, mixed by our MLP).
Settings vary the nonlinearity (xtanh, leaky ReLU), the mixing depth (2-4
layers), the number of sources (5, 10), of segments (20, 40) and of rows
per segment (250-1,000).

For every setting and data seed the script prints the supervised ceiling
(an MLP from (x, u) to s on held-out rows, as ``bench_ivae.py --oracle``),
the MCC of IdentifiableVAE per model seed, and VAEICA's and FastICA's. A
setting counts as possible when its ceiling is at least 0.95; there the
acceptance asks for a median iVAE MCC of at least 0.95 and every fit at
least 0.85. ``--jobs 2`` runs the settings in two processes (one thread
each); the figures are CPU seconds of the iVAE fits. ``--params`` passes
estimator parameters as JSON (``'{"whiten": false}'``).

    OMP_NUM_THREADS=1 python benchmarks/bench_ivae_grid.py --jobs 2
    python benchmarks/bench_ivae_grid.py --settings default leaky_relu --data-seeds 0
"""

import argparse
import json
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from bench_ivae import oracle_mcc
from sklearn.decomposition import FastICA
from sklearn.exceptions import ConvergenceWarning

from sklearn_nlica import VAEICA, IdentifiableVAE
from sklearn_nlica.datasets import make_segmented_sources
from sklearn_nlica.metrics import mean_correlation_coefficient as mcc


def ours(n_segments, n_per_segment, m, n_layers, activation, seed):
    X, S, U = make_segmented_sources(
        n_segments,
        n_per_segment,
        m,
        m,
        n_layers=n_layers,
        activation=activation,
        noise_std=0.0,
        random_state=seed,
    )
    return X, S, U


def _act(h, activation, slope=0.1):
    if activation == "xtanh":
        return np.tanh(h) + slope * h
    return np.where(h > 0, h, slope * h)


def _authors_matrix(rng, m, n_draws=10_000):
    """Uniform entries in [-1, 1], unit-norm columns, condition number below
    the 25th percentile of ``n_draws`` such matrices."""

    def draw():
        a = rng.uniform(-1, 1, (m, m))
        return a / np.linalg.norm(a, axis=0)

    threshold = np.percentile([np.linalg.cond(draw()) for _ in range(n_draws)], 25)
    while True:
        a = draw()
        if np.linalg.cond(a) <= threshold:
            return a


def authors(n_segments, n_per_segment, m, n_layers, activation, seed):
    rng = np.random.RandomState(seed)
    std = rng.uniform(0.5, 3.0, (n_segments, m))
    U = np.repeat(np.arange(n_segments), n_per_segment)
    S = rng.normal(size=(len(U), m)) * std[U]
    a = _authors_matrix(rng, m)
    X = S
    for layer in range(n_layers):
        X = X @ a
        if layer < n_layers - 1:
            X = _act(X, activation)
    return X, S, U


def continuous(n_segments, n_per_segment, m, n_layers, activation, seed):
    """u = t in [0, 1]; log std_j(t) = a_j sin(2 pi (f_j t + phase_j))."""
    rng = np.random.RandomState(seed)
    n = n_segments * n_per_segment
    t = np.sort(rng.uniform(0, 1, n))
    amplitude = rng.uniform(0.5, 1.0, m)
    frequency = rng.uniform(1.0, 4.0, m)
    phase = rng.uniform(0, 1, m)
    log_std = amplitude * np.sin(2 * np.pi * (frequency * t[:, None] + phase))
    S = rng.normal(size=(n, m)) * np.exp(log_std)
    *_, mixing = make_segmented_sources(
        2,
        2,
        m,
        m,
        n_layers=n_layers,
        activation=activation,
        noise_std=0.0,
        random_state=seed,
        return_mixing=True,
    )
    return mixing(S), S, t


# name: (generator, segments, rows per segment, sources, layers, activation)
SETTINGS = {
    "default": (ours, 40, 1000, 5, 3, "xtanh"),
    "leaky_relu": (ours, 40, 1000, 5, 3, "leaky_relu"),
    "authors_xtanh": (authors, 40, 1000, 5, 3, "xtanh"),
    "authors_leaky_relu": (authors, 40, 1000, 5, 3, "leaky_relu"),
    "shallow_small": (ours, 20, 250, 5, 2, "xtanh"),
    "deep": (ours, 40, 1000, 5, 4, "xtanh"),
    "ten_sources": (ours, 40, 1000, 10, 3, "xtanh"),
    "ten_leaky_small": (ours, 20, 500, 10, 2, "leaky_relu"),
    "continuous_u": (continuous, 20, 500, 5, 3, "xtanh"),
}


def run_setting(name, data_seeds, model_seeds, params):
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ConvergenceWarning)
    generator, n_segments, n_per_segment, m, n_layers, activation = SETTINGS[name]
    rows = []
    for data_seed in data_seeds:
        X, S, U = generator(
            n_segments, n_per_segment, m, n_layers, activation, data_seed
        )
        fits, times = [], []
        for model_seed in model_seeds:
            start = time.process_time()
            try:
                model = IdentifiableVAE(m, random_state=model_seed, **params)
                model.fit(X, U)
                fits.append(mcc(S, model.transform(X)))
            except FloatingPointError:
                fits.append(float("nan"))
            times.append(time.process_time() - start)
        vae = VAEICA(m, random_state=0).fit(X)
        ica = FastICA(m, whiten="unit-variance", random_state=0, max_iter=1000).fit(X)
        rows.append(
            {
                "seed": data_seed,
                "oracle": oracle_mcc(X, S, U, data_seed),
                "ivae": fits,
                "seconds": times,
                "vae": mcc(S, vae.transform(X)),
                "ica": mcc(S, ica.transform(X)),
            }
        )
    return name, rows


def describe(name):
    generator, n_segments, n_per_segment, m, n_layers, activation = SETTINGS[name]
    return (
        f"{name}: {generator.__name__}, {n_segments} x {n_per_segment}, {m} sources, "
        f"{n_layers} layers, {activation}"
    )


def report(name, rows):
    print(describe(name))
    print(
        f"  {'data':>4} {'oracle':>7}  {'iVAE MCC per model seed':<24} {'CPU s':>6} "
        f"{'VAEICA':>7} {'FastICA':>7}"
    )
    for row in rows:
        fits = " ".join(f"{v:.3f}" for v in row["ivae"])
        print(
            f"  {row['seed']:>4} {row['oracle']:7.3f}  {fits:<24} "
            f"{statistics.mean(row['seconds']):6.1f} "
            f"{row['vae']:7.3f} {row['ica']:7.3f}"
        )
    fits = [v for row in rows for v in row["ivae"]]
    ceiling = statistics.median(row["oracle"] for row in rows)
    median = float(np.nanmedian(fits))
    worst = float(np.nanmin(fits)) if not np.isnan(fits).all() else float("nan")
    verdict = "ceiling below 0.95: not judged"
    if ceiling >= 0.95:
        ok = median >= 0.95 and worst >= 0.85 and not np.isnan(fits).any()
        verdict = "meets median >= 0.95, every fit >= 0.85" if ok else "FAILS"
    print(
        f"  median iVAE {median:.3f}, worst fit {worst:.3f}, oracle {ceiling:.3f}, "
        f"VAEICA {statistics.median(r['vae'] for r in rows):.3f}, "
        f"FastICA {statistics.median(r['ica'] for r in rows):.3f}: {verdict}",
        flush=True,
    )
    return {
        "name": name,
        "median": median,
        "worst": worst,
        "ceiling": ceiling,
        "verdict": verdict,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS)
    )
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--params", default="{}", help="estimator parameters, JSON")
    args = parser.parse_args(argv)
    params = json.loads(args.params)
    print(
        f"IdentifiableVAE(**{params}); data seeds {args.data_seeds}, model seeds "
        f"{args.model_seeds}; one thread a process, {args.jobs} process(es)"
    )
    work = [(name, args.data_seeds, args.model_seeds, params) for name in args.settings]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = pool.map(run_setting, *zip(*work))
            summaries = [report(name, rows) for name, rows in results]
    else:
        summaries = [report(*run_setting(*item)) for item in work]
    print()
    print("summary")
    for s in summaries:
        print(
            f"  {s['name']:<20} oracle {s['ceiling']:.3f}  median {s['median']:.3f}  "
            f"worst {s['worst']:.3f}  {s['verdict']}"
        )


if __name__ == "__main__":
    main()
