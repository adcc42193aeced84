"""Time ``VAEICA.fit`` against a bare torch loop training the same model.

Same architecture (the package's own VAE module), data, batch size, epochs,
optimizer and number of threads; runs alternate so that drift in the machine's
speed hits both alike. Prints each pair and the median ratio.

    python benchmarks/bench_training_overhead.py            # 20,000 x 20, m=2, (64,)
    python benchmarks/bench_training_overhead.py --repeats 9 --threads 2
"""

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from sklearn_nlica import VAEICA
from sklearn_nlica._models import VAE
from sklearn_nlica._nn import GaussianDecoder, GaussianEncoder
from sklearn_nlica.integrators import MonteCarlo


def bare_loop(X, n_components, hidden, batch_size, epochs, lr, seed):
    torch.manual_seed(seed)
    x = torch.as_tensor(X)
    encoder = GaussianEncoder(x.shape[1], n_components, hidden, "leaky_relu")
    decoder = GaussianDecoder(
        n_components,
        x.shape[1],
        hidden,
        "leaky_relu",
        noise_variance=float(x.var(0).mean()),
        mean_init=x.mean(0),
    )
    model = VAE(encoder, decoder, MonteCarlo(), 1).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        total = 0.0
        for index in torch.randperm(len(x)).split(batch_size):
            loss = -model(x[index]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
    return total / len(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--n-features", type=int, default=20)
    parser.add_argument("--n-components", type=int, default=2)
    parser.add_argument("--hidden", type=int, nargs="*", default=[64])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    rng = np.random.RandomState(0)
    X = np.tanh(
        rng.randn(args.n_samples, args.n_components)
        @ rng.randn(args.n_components, args.n_features)
    ) + 0.1 * rng.randn(args.n_samples, args.n_features)
    hidden = tuple(args.hidden)
    params = dict(
        n_components=args.n_components,
        hidden_layer_sizes=hidden,
        batch_size=args.batch_size,
        max_iter=args.epochs,
        n_iter_no_change=args.epochs + 1,
        learning_rate_init=1e-3,
        integrator="monte_carlo",
    )  # the bare loop's SGVB draw

    # Warm up both paths (imports, allocator, first-call costs).
    VAEICA(**params, random_state=0).fit(X[:1000])
    bare_loop(X[:1000], args.n_components, hidden, args.batch_size, 1, 1e-3, 0)

    ratios = []
    print(f"{'run':>4} {'VAEICA.fit [s]':>15} {'bare loop [s]':>14} {'ratio':>7}")
    for run in range(args.repeats):
        start = time.perf_counter()
        VAEICA(**params, random_state=run).fit(X)
        fit_time = time.perf_counter() - start
        start = time.perf_counter()
        bare_loop(X, args.n_components, hidden, args.batch_size, args.epochs, 1e-3, run)
        bare_time = time.perf_counter() - start
        ratios.append(fit_time / bare_time)
        print(f"{run:>4} {fit_time:>15.3f} {bare_time:>14.3f} {ratios[-1]:>7.3f}")
    print(
        f"median ratio VAEICA.fit / bare loop: {statistics.median(ratios):.3f} "
        f"({args.n_samples} x {args.n_features}, m={args.n_components}, "
        f"hidden={hidden}, batch {args.batch_size}, {args.epochs} epochs, "
        f"{args.threads} thread(s))"
    )


if __name__ == "__main__":
    main()
