"""Where an IdentifiableVAE training step's time goes, in a bare torch loop.

Takes the module of a default IdentifiableVAE (one epoch fitted on the xtanh
benchmark data of ``bench_ivae.py``, every parameter trainable) and times,
on one thread and without skorch, ``--steps`` steps of batches of 256 rows
in ``--precision`` (float32, as the default fit on these whitened data
trains, or float64): the forward pass alone, forward and backward, and the whole
step (forward, backward, gradient clipping, fused Adam as the estimators
use it), alternating, ``--rounds`` times. Prints milliseconds per step
(CPU time) and each part's share.

    python benchmarks/profile_ivae_step.py [--precision float64]
"""

import argparse
import time
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning

from sklearn_nlica import IdentifiableVAE
from sklearn_nlica.datasets import make_segmented_sources

BATCH = 256


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--precision", choices=["float32", "float64"], default="float32"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ConvergenceWarning)
    X, _, U = make_segmented_sources(
        40, 1000, 5, 5, n_layers=3, activation="xtanh", noise_std=0, random_state=0
    )
    module = IdentifiableVAE(5, max_iter=1, random_state=0).fit(X, U).net_.module_
    dtype = getattr(torch, args.precision)
    module = module.to(dtype).train()
    params = list(module.parameters())
    for p in params:
        p.requires_grad_(True)
    x, u = torch.as_tensor(X, dtype=dtype), torch.as_tensor(U)
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)  # as in the fits

    def loss(i):
        rows = slice(i * BATCH % (len(x) - BATCH), i * BATCH % (len(x) - BATCH) + BATCH)
        out = module(x[rows], u[rows])
        return -(out[0] if isinstance(out, tuple) else out).mean()

    def forward(i):
        with torch.no_grad():
            loss(i)

    def forward_backward(i):
        optimizer.zero_grad()
        loss(i).backward()

    def whole(i):
        forward_backward(i)
        torch.nn.utils.clip_grad_norm_(params, 100.0)
        optimizer.step()

    parts = {"forward": forward, "forward+backward": forward_backward, "step": whole}
    for i in range(50):
        whole(i)
    times = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, function in parts.items():
            start = time.process_time()
            for i in range(args.steps):
                function(i)
            times[name].append(1e3 * (time.process_time() - start) / args.steps)
    ms = {name: min(values) for name, values in times.items()}
    print(f"ms per step (min of {args.rounds} rounds of {args.steps}):")
    print(f"  forward (no graph)        {ms['forward']:.2f}")
    print(f"  forward + backward        {ms['forward+backward']:.2f}")
    print(f"  whole step                {ms['step']:.2f}")
    print(
        f"  shares: forward {ms['forward'] / ms['step']:.0%}, backward and graph "
        f"{(ms['forward+backward'] - ms['forward']) / ms['step']:.0%}, clipping "
        f"and Adam {(ms['step'] - ms['forward+backward']) / ms['step']:.0%}"
    )


if __name__ == "__main__":
    main()
