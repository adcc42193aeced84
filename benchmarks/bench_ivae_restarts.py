"""Per model seed: the ELBO (what ``n_init`` selects by) beside the MCC.

IdentifiableVAE at its defaults on ``make_segmented_sources(40, 1000, 5, 5)``
(three layers, no noise), CPU seconds per fit, the monitored stopping score
(512 fixed rows, the degree-3 rule), ``score(X, U)`` and the MCC against the sources.

    python benchmarks/bench_ivae_restarts.py leaky_relu 1,2 0,1,2

Arguments: mixing activation, data seeds, model seeds (comma-separated).
"""

import sys
import time
import warnings

from sklearn_nlica import IdentifiableVAE
from sklearn_nlica.datasets import make_segmented_sources
from sklearn_nlica.metrics import mean_correlation_coefficient as mcc


def main(activation, data_seeds, model_seeds):
    warnings.simplefilter("ignore")
    for ds in data_seeds:
        X, S, U = make_segmented_sources(
            40,
            1000,
            5,
            5,
            n_layers=3,
            activation=activation,
            noise_std=0.0,
            random_state=ds,
        )
        for ms in model_seeds:
            start = time.process_time()
            model = IdentifiableVAE(5, random_state=ms).fit(X, U)
            seconds = time.process_time() - start
            print(
                f"{activation} data {ds} model {ms} cpu {seconds:.1f} "
                f"monitored {model.net_.history[-1, 'score']:.3f} "
                f"ELBO {model.score(X, U):.3f} MCC {mcc(S, model.transform(X)):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    seeds = [[int(v) for v in arg.split(",")] for arg in sys.argv[2:4]]
    main(sys.argv[1], *seeds)
