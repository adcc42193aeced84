"""How far the monitored ELBO (stopping, progress bar) is from ``score``.

Fits VAEICA and IdentifiableVAE at their defaults on a few data sets, then
evaluates the ELBO of the monitor's fixed rows (up to 512, spread evenly)
with the degree-3 rule of 2 m + 1 nodes that the monitor uses, and with
4, 16 and 32 QMC nodes drawn once (the monitor before had 4), and prints
each one's difference from ``score`` on the same rows (the estimators'
own rule, 256 QMC nodes).

    OMP_NUM_THREADS=1 python benchmarks/bench_score_monitor.py
"""

import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from sklearn_nlica import VAEICA, IdentifiableVAE
from sklearn_nlica.datasets import make_nonlinear_ica, make_segmented_sources
from sklearn_nlica.integrators._base import degree_three_rule

QMC_NODES = (4, 16, 32)


def monitored_rows(n, n_rows=512):
    return np.linspace(0, n - 1, min(n, n_rows)).round().astype(int)


def gaps(model, X, y=None):
    rows = monitored_rows(len(X))
    args = (X[rows],) if y is None else (X[rows], y[rows])
    reference = model.score(*args)
    module = model.net_.module_
    dtype = next(module.parameters()).dtype
    x = torch.as_tensor(X[rows], dtype=dtype)
    extras = {}
    if y is not None:
        extras = {"u": torch.as_tensor(model._condition(y[rows], len(rows))["u"])}
    rules = {"2m+1": degree_three_rule(module.n_components).to(dtype=dtype)}
    for n_nodes in QMC_NODES:
        generator = torch.Generator().manual_seed(0)
        rules[f"qmc {n_nodes}"] = module.rule(x, n_nodes, generator)
    with torch.no_grad():
        values = {
            name: float(module.score_samples(x, rule, **extras).mean())
            for name, rule in rules.items()
        }
    return reference, {name: value - reference for name, value in values.items()}


def cases():
    for seed in (0, 1):
        X, _ = make_nonlinear_ica(
            n_samples=2000, n_features=10, n_components=2, random_state=seed
        )
        yield (
            f"make_nonlinear_ica 2000x10 seed {seed}",
            VAEICA(2, random_state=0),
            X,
            None,
        )
    wine = StandardScaler().fit_transform(load_wine().data)
    yield "wine, m = 3", VAEICA(3, random_state=0), wine, None
    digits = StandardScaler().fit_transform(load_digits().data)
    yield "digits, m = 5", VAEICA(5, random_state=0), digits, None
    X, _, U = make_segmented_sources(
        20, 500, 5, 5, n_layers=3, activation="xtanh", noise_std=0.0, random_state=0
    )
    yield "segmented 20x500, m = 5", IdentifiableVAE(5, random_state=0), X, U


def main():
    torch.set_num_threads(1)
    names = ["2m+1"] + [f"qmc {n}" for n in QMC_NODES]
    print(
        f"{'data':34s} {'estimator':16s} {'score()':>9s} "
        + " ".join(f"{n:>8s}" for n in names)
    )
    for label, model, X, y in cases():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X) if y is None else model.fit(X, y)
        reference, difference = gaps(model, X, y)
        print(
            f"{label:34s} {type(model).__name__:16s} {reference:9.4f} "
            + " ".join(f"{difference[n]:+8.3f}" for n in names)
        )


if __name__ == "__main__":
    main()
