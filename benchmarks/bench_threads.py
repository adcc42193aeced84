"""Torch intra-op threads for the estimators' small models: 1 against 2.

Fits VAEICA (2,000 x 20 quick-start data) and IdentifiableVAE
(20 segments x 100, 5 sources) at their defaults under
``sklearn_nlica.torch_threads(k)``, k = 1 and 2 alternately, ``--repeats``
times, and prints wall and CPU seconds per fit (median). Run it once on an
idle machine and once with the machine loaded (e.g. ``--load 2`` starts two
busy-looping processes beside it).

    python benchmarks/bench_threads.py --repeats 3
    python benchmarks/bench_threads.py --repeats 3 --load 2
"""

import argparse
import multiprocessing
import os
import statistics
import time
import warnings

from sklearn_nlica import VAEICA, IdentifiableVAE, torch_threads
from sklearn_nlica.datasets import make_nonlinear_ica, make_segmented_sources


def spin():
    while True:
        pass


def fits():
    X, _ = make_nonlinear_ica(2000, 2, 20, random_state=0)
    Xs, _, U = make_segmented_sources(20, 100, 5, 5, random_state=0)
    return {
        "VAEICA": lambda: VAEICA(2, random_state=0).fit(X),
        "IdentifiableVAE": lambda: IdentifiableVAE(5, random_state=0).fit(Xs, U),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load", type=int, default=0, help="busy processes beside")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    load = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for p in load:
        p.start()
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"{args.load} busy processes started"
    )
    for name, fit in fits().items():
        times = {1: [], 2: []}
        for _ in range(args.repeats):
            for k in (1, 2):
                with torch_threads(k):
                    wall, cpu = time.perf_counter(), time.process_time()
                    fit()
                    times[k].append(
                        (time.perf_counter() - wall, time.process_time() - cpu)
                    )
        for k, rows in times.items():
            wall = statistics.median(w for w, _ in rows)
            cpu = statistics.median(c for _, c in rows)
            print(f"{name:16s} {k} thread(s): wall {wall:6.1f} s  CPU {cpu:6.1f} s")
    for p in load:
        p.terminate()


if __name__ == "__main__":
    main()
