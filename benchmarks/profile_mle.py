"""Where the time of a default NonlinearICAMLE fit goes, phase by phase.

Fits ``NonlinearICAMLE`` at its defaults (one thread) on ``make_nonlinear_ica``
data for a few epochs and prints the CPU seconds per epoch spent in each phase:
building the integration rule (search, Newton, nodes), the E-step, the M-step
surrogate's forward passes, the backward passes, the optimizer steps, the
end-of-epoch closed-form steps, and the rest (skorch, batching). Phases are
timed by wrapping the module's and the solver's methods, so the figures
include no profiler overhead; ``--cprofile`` adds the functions with the
largest own time.

Usage::

    python benchmarks/profile_mle.py                      # both data sets
    python benchmarks/profile_mle.py --data 1500 8 3 --epochs 8 --cprofile
"""

import argparse
import cProfile
import functools
import pstats
import time
import warnings

import torch

from sklearn_nlica import NonlinearICAMLE, _em, _models
from sklearn_nlica.datasets import make_nonlinear_ica

PHASES = {
    "rule": (_models.MarginalLikelihood, "rule"),
    "e_step": (_models.MarginalLikelihood, "e_step"),
    "m_step_forward": (_models.MarginalLikelihood, "em_surrogate"),
    "backward": (torch.Tensor, "backward"),
    "optimizer": (torch.optim.Adam, "step"),
    "closed_form": (_em.EMNet, "_closed_form_step"),
}


class Timers:
    def __init__(self):
        self.total = dict.fromkeys(PHASES, 0.0)
        self.depth = 0
        self.originals = []

    def wrap(self, name, owner, attr):
        original = owner.__dict__[attr]
        is_static = isinstance(original, staticmethod)
        function = original.__func__ if is_static else original

        @functools.wraps(function)
        def timed(*args, **kwargs):
            if self.depth:  # count nested phases once, in the outer one
                return function(*args, **kwargs)
            self.depth += 1
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.total[name] += time.process_time() - start
                self.depth -= 1

        setattr(owner, attr, staticmethod(timed) if is_static else timed)
        self.originals.append((owner, attr, original))

    def __enter__(self):
        for name, (owner, attr) in PHASES.items():
            self.wrap(name, owner, attr)
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self.originals):
            setattr(owner, attr, original)


def profile(n_samples, n_features, n_components, epochs, use_cprofile):
    X, _ = make_nonlinear_ica(
        n_samples=n_samples,
        n_components=n_components,
        n_features=n_features,
        random_state=0,
    )
    params = dict(n_components=n_components, random_state=0, max_iter=epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NonlinearICAMLE(**{**params, "max_iter": 1}).fit(X[:200])  # warm-up
        profiler = cProfile.Profile() if use_cprofile else None
        with Timers() as timers:
            start = time.process_time()
            if profiler:
                profiler.enable()
            mle = NonlinearICAMLE(**params).fit(X)
            if profiler:
                profiler.disable()
            fit = time.process_time() - start
        start = time.process_time()
        mle.score(X)
        score = time.process_time() - start
    n_epochs = mle.n_iter_
    print(
        f"\n{n_samples} x {n_features}, m = {n_components}: {n_epochs} epochs, "
        f"{fit / n_epochs:.3f} CPU s per epoch, score(X) {score:.2f} CPU s"
    )
    print(f"  {'phase':<16} {'s/epoch':>8} {'share':>6}")
    rest = fit
    for name, seconds in timers.total.items():
        rest -= seconds
        print(f"  {name:<16} {seconds / n_epochs:8.3f} {seconds / fit:6.1%}")
    print(f"  {'other':<16} {rest / n_epochs:8.3f} {rest / fit:6.1%}")
    if profiler:
        pstats.Stats(profiler).sort_stats(use_cprofile).print_stats(25)


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
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--cprofile",
        nargs="?",
        const="tottime",
        metavar="SORT",
        help="add a cProfile listing, sorted by SORT (default tottime)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    for data in args.data or [(1500, 8, 3), (2000, 20, 2)]:
        profile(*data, args.epochs, args.cprofile)


if __name__ == "__main__":
    main()
