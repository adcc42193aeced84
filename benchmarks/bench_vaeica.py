"""VAEICA at its defaults, as a user runs it: whole fits, one torch thread.

Cases (issue 12), each over ``--seeds`` (data and model seed together):

- ``linear``: probabilistic-PCA data (20 features, m = 2, sigma = 0.5, 5,000
  rows), a linear VAE (``hidden_layer_sizes=()``, ``activation="identity"``)
  at default training parameters; the gap of its importance-weighted
  log-likelihood and of its ELBO to ``PCA(2).score`` (the pPCA optimum).
- ``highdim``: ``make_nonlinear_ica(5000, 10, 100)`` fitted with
  ``n_components=100``; the ELBO (``score``) beside ``PCA(k).score``, and the
  active dimensions (latents whose posterior means vary: std > 0.1).
- ``segments``: the iVAE benchmark's data (40 x 1,000, 5 sources, xtanh,
  3 layers) without u: time, epochs, the smallest latent std (collapse) and
  MCC.
- ``quickstart``: the README's quick start, MCC at the defaults against the
  old recipe run for 200 full epochs (constant rate 1e-3, float64).
- ``digits``: scikit-learn's ``load_digits`` (standardised), n_components=10:
  the ELBO against ``PCA(10).score``.
- ``bundled``: scikit-learn's bundled data sets (iris, wine, breast cancer,
  diabetes, digits) as loaded and standardised, n_components=2, the default
  VAE and the linear one: the ELBO against ``PCA(2).score``.

Every row gives CPU seconds (``time.process_time``), epochs run and the
number of ConvergenceWarnings.

    python benchmarks/bench_vaeica.py                  # every case, seeds 0 1 2
    python benchmarks/bench_vaeica.py linear --seeds 0
"""

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn import datasets
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler, scale

from sklearn_nlica import VAEICA
from sklearn_nlica.datasets import make_nonlinear_ica, make_segmented_sources
from sklearn_nlica.metrics import mean_correlation_coefficient as mcc


def timed_fit(model, X):
    """Fit; return CPU seconds and the number of ConvergenceWarnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.process_time()
        model.fit(X)
        seconds = time.process_time() - start
    n_warn = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return seconds, n_warn


def active(model, X, threshold=0.1):
    """Latents whose posterior means vary (std over rows > threshold)."""
    std = model.transform(X).std(0)
    return int((std > threshold).sum()), float(std.min())


def ppca_data(seed, n=5000, n_features=20, m=2, sigma=0.5):
    rng = np.random.RandomState(seed)
    W = rng.normal(size=(n_features, m))
    return rng.normal(size=(n, m)) @ W.T + sigma * rng.normal(size=(n, n_features))


def case_linear(seed):
    X = ppca_data(seed)
    model = VAEICA(2, hidden_layer_sizes=(), activation="identity", random_state=seed)
    seconds, n_warn = timed_fit(model, X)
    best = PCA(2).fit(X).score(X)
    ll = model.log_likelihood(X, n_samples=1024).mean()
    elbo = model.score(X)
    return (
        f"ppca     seed {seed}: PCA(2).score {best:9.4f}  IW-loglik gap "
        f"{best - ll:7.4f}  ELBO gap {best - elbo:7.4f}  "
        f"{seconds:5.1f} s  {model.n_iter_:3d} ep  warn {n_warn}"
    )


def case_highdim(seed):
    X, _ = make_nonlinear_ica(5000, 10, 100, random_state=seed)
    model = VAEICA(100, random_state=seed)
    seconds, n_warn = timed_fit(model, X)
    scores = {k: PCA(k).fit(X).score(X) for k in (10, 50)}
    n_active, _ = active(model, X)
    return (
        f"100-D    seed {seed}: ELBO {model.score(X):9.2f}  PCA(10) "
        f"{scores[10]:9.2f}  PCA(50) {scores[50]:9.2f}  active {n_active:3d}/100  "
        f"{seconds:5.1f} s  {model.n_iter_:3d} ep  warn {n_warn}"
    )


def case_segments(seed):
    X, S, _ = make_segmented_sources(
        40, 1000, 5, 5, n_layers=3, activation="xtanh", noise_std=0.0, random_state=seed
    )
    model = VAEICA(5, random_state=seed)
    seconds, n_warn = timed_fit(model, X)
    n_active, smallest = active(model, X)
    return (
        f"40000x5  seed {seed}: MCC {mcc(S, model.transform(X)):.3f}  "
        f"active {n_active}/5  min latent std {smallest:.3f}  "
        f"ELBO {model.score(X):8.3f}  {seconds:5.1f} s  {model.n_iter_:3d} ep  "
        f"warn {n_warn}"
    )


def case_quickstart(seed):
    X, S = make_nonlinear_ica(
        n_samples=5000,
        n_components=2,
        n_features=20,
        activation="leaky_relu",
        noise_std=1.0,
        random_state=seed,
    )
    X = StandardScaler().fit_transform(X)
    out = []
    old = dict(
        learning_rate_schedule="constant",
        learning_rate_init=1e-3,
        n_iter_no_change=200,
    )
    for name, params, data in (
        ("default", {}, X),
        ("200 ep ", old, X.astype(np.float64)),
    ):
        model = VAEICA(2, random_state=seed, **params)
        seconds, n_warn = timed_fit(model, data)
        out.append(
            f"{name} MCC {mcc(S, model.transform(X)):.3f} ELBO {model.score(X):8.3f} "
            f"{seconds:5.1f} s {model.n_iter_:3d} ep warn {n_warn}"
        )
    return f"quick    seed {seed}: " + " | ".join(out)


def case_digits(seed):
    X = StandardScaler().fit_transform(load_digits().data)
    X = X[:, X.std(0) > 0]
    model = VAEICA(10, random_state=seed)
    seconds, n_warn = timed_fit(model, X)
    n_active, _ = active(model, X)
    return (
        f"digits   seed {seed}: ELBO {model.score(X):9.3f}  PCA(10).score "
        f"{PCA(10).fit(X).score(X):9.3f}  active {n_active}/10  "
        f"{seconds:5.1f} s  {model.n_iter_:3d} ep  warn {n_warn}"
    )


def case_bundled(seed):
    out = []
    for name in ("iris", "wine", "breast_cancer", "diabetes", "digits"):
        raw = getattr(datasets, f"load_{name}")().data
        for kind, X in (("as loaded", raw), ("standardised", scale(raw))):
            scores = []
            for params in ({}, dict(hidden_layer_sizes=(), activation="identity")):
                model = VAEICA(2, random_state=seed, **params)
                timed_fit(model, X)
                scores.append(model.score(X))
            out.append(
                f"bundled  seed {seed}: {name:13s} {kind:12s} ELBO {scores[0]:9.3f}  "
                f"linear {scores[1]:9.3f}  PCA(2).score {PCA(2).fit(X).score(X):9.3f}"
            )
    return "\n".join(out)


CASES = {
    "linear": case_linear,
    "highdim": case_highdim,
    "segments": case_segments,
    "quickstart": case_quickstart,
    "digits": case_digits,
    "bundled": case_bundled,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for case in args.cases:
        for seed in args.seeds:
            print(CASES[case](seed), flush=True)


if __name__ == "__main__":
    main()
