"""Source recovery of IdentifiableVAE on the iVAE paper's simulation setting.

Data: ``make_segmented_sources`` with 40 segments x 1,000 points, 5 sources,
5 features, 3 mixing layers and, by default, NO sensor noise
(``noise_std=0``) and the ``"xtanh"`` nonlinearity tanh(h) + 0.1 h: the
default configuration of the code released with Khemakhem et al. (2020)
(``configs/ivae.yaml``: ``act: xtanh``, ``noisy: false``). Their paper's
text names the leaky ReLU (slope 0.1), which ``--activation leaky_relu``
selects; it is much harder (median MCC 0.69 over data seeds 0-4 at model
seed 0, against 0.95 with xtanh; benchmarks/results/ivae.txt). Their code
also reuses one mixing matrix in every layer; ours draws one per layer.
For every data seed, IdentifiableVAE is fitted
with its default parameters once per model seed; VAEICA and FastICA are the
baselines. Prints, per data seed, the MCC (mean correlation coefficient of
``transform(X)`` with the true sources), the training ELBO next to the true
mean log-likelihood log p(x | u) (exact here: the mixing is invertible), the
wall time per fit and whether the fit stayed finite, then the medians and
the acceptance checks of issue 5.

``--oracle`` adds a ceiling: an MLP regressor trained on the *true* sources
from (x, one-hot u), scored on held-out rows. Measured with this script's
oracle on data seeds 0-1 (leaky ReLU): MCC 0.98 / 0.95 without noise, 0.93 / 0.90 at
``noise_std=0.01`` and 0.83 / 0.77 at 0.1 (``make_segmented_sources``'
default). With sensor noise the sources are only partly recoverable from
x, since each leaky-ReLU layer squeezes half of its input tenfold and the
noise then swamps the squeezed sources; compare methods with the oracle
beside them when you pass ``--noise-std``.

    python benchmarks/bench_ivae.py      # noiseless, 5 data x 3 model seeds
    python benchmarks/bench_ivae.py --noise-std 0.1 --oracle
    python benchmarks/bench_ivae.py --data-seeds 0 1 --model-seeds 0
    python benchmarks/bench_ivae.py --contrastive-weight 0   # the plain ELBO
"""

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from sklearn.decomposition import FastICA
from sklearn.exceptions import ConvergenceWarning

from sklearn_nlica import VAEICA, IdentifiableVAE
from sklearn_nlica.datasets import make_segmented_sources
from sklearn_nlica.metrics import mean_correlation_coefficient as mcc


def oracle_mcc(X, S, U, seed):
    """MCC of a supervised regressor of s on (x, u): a practical ceiling."""
    from sklearn.neural_network import MLPRegressor

    if U.dtype.kind in "iu":
        aux = np.eye(U.max() + 1)[U]
    else:  # a continuous u, standardised
        aux = ((U - U.mean(0)) / U.std(0)).reshape(len(U), -1)
    features = np.hstack([X, aux])
    order = np.random.RandomState(seed).permutation(len(X))
    train, test = order[: len(X) * 3 // 4], order[len(X) * 3 // 4 :]
    regressor = MLPRegressor(
        hidden_layer_sizes=(128, 128),
        max_iter=100,
        early_stopping=True,
        random_state=seed,
    )
    regressor.fit(features[train], S[train])
    return mcc(S[test], regressor.predict(features[test]))


def true_log_likelihood(S, U, mixing):
    """Mean log p(x | u) of the generating model on noiseless data.

    log p(s | u) - log |det J_f(s)| by the change of variables (the mixing
    is invertible), with each segment's source variances estimated from S:
    the level a perfectly fitted iVAE's ELBO approaches as sigma^2 -> 0.
    """
    labels = np.unique(U)
    std = np.array([S[U == k].std(0) for k in labels])[np.searchsorted(labels, U)]
    log_p = (-0.5 * (S / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(1)
    h = S
    for coef, intercept, activation in zip(
        mixing.coefs_, mixing.intercepts_, mixing.activations_
    ):
        pre = h @ coef + intercept
        log_p -= np.linalg.slogdet(coef)[1]
        if activation == "leaky_relu":
            log_p -= np.log(mixing.negative_slope) * (pre < 0).sum(1)
            h = np.where(pre > 0, pre, mixing.negative_slope * pre)
        elif activation == "xtanh":
            slope = np.cosh(pre) ** -2 + mixing.negative_slope
            log_p -= np.log(slope).sum(1)
            h = np.tanh(pre) + mixing.negative_slope * pre
        else:
            h = pre
    return float(log_p.mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--noise-std",
        type=float,
        default=0.0,
        help="sensor noise of the data (default 0, the paper's setting; "
        "make_segmented_sources' own default is 0.1)",
    )
    parser.add_argument("--n-segments", type=int, default=40)
    parser.add_argument("--n-per-segment", type=int, default=1000)
    parser.add_argument("--n-components", type=int, default=5)
    parser.add_argument("--n-layers", type=int, default=3)
    parser.add_argument(
        "--activation",
        default="xtanh",
        choices=["xtanh", "leaky_relu"],
        help="mixing nonlinearity (default xtanh, as in the default "
        "configuration of the authors' code; the paper's text "
        "names the leaky ReLU)",
    )
    parser.add_argument(
        "--vae-max-iter",
        type=int,
        default=200,
        help="max_iter of the VAEICA baseline (default: its default)",
    )
    parser.add_argument(
        "--contrastive-weight",
        type=float,
        default=None,
        help="IdentifiableVAE's contrastive_weight (default: its default; "
        "0 trains on the plain ELBO)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--oracle", action="store_true", help="also fit the supervised ceiling (slow)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ConvergenceWarning)
    m = args.n_components
    params = (
        {}
        if args.contrastive_weight is None
        else {"contrastive_weight": args.contrastive_weight}
    )

    print(
        f"make_segmented_sources({args.n_segments}, {args.n_per_segment}, {m}, {m}, "
        f"n_layers={args.n_layers}, activation={args.activation!r}, "
        f"noise_std={args.noise_std}); "
        f"IdentifiableVAE({params or 'defaults'}), model seeds {args.model_seeds}; "
        f"{args.threads} thread(s)"
    )
    header = (
        f"{'data':>4}  {'iVAE MCC per model seed':<26}"
        f"{'ELBO':>8}{'true':>8}{'s/fit':>7}"
        f"{'VAEICA':>8}{'FastICA':>8}" + (f"{'oracle':>8}" if args.oracle else "")
    )
    print(header)
    rows, times, diverged = [], [], 0
    for data_seed in args.data_seeds:
        X, S, U, mixing = make_segmented_sources(
            args.n_segments,
            args.n_per_segment,
            m,
            m,
            n_layers=args.n_layers,
            activation=args.activation,
            noise_std=args.noise_std,
            random_state=data_seed,
            return_mixing=True,
        )
        # The exact log-likelihood is only defined without sensor noise.
        truth = (
            true_log_likelihood(S, U, mixing) if args.noise_std == 0 else float("nan")
        )
        scores, elbos = [], []
        for model_seed in args.model_seeds:
            start = time.process_time()
            try:
                model = IdentifiableVAE(m, random_state=model_seed, **params).fit(X, U)
            except FloatingPointError:
                diverged += 1
                scores.append(float("nan"))
                continue
            times.append(time.process_time() - start)
            elbo = model.score(X, U)
            Z = model.transform(X)
            if not (np.isfinite(elbo) and np.isfinite(Z).all()):
                diverged += 1
            scores.append(mcc(S, Z))
            elbos.append(elbo)
        vae = VAEICA(m, max_iter=args.vae_max_iter, random_state=0).fit(X)
        ica = FastICA(m, whiten="unit-variance", random_state=0).fit(X)
        row = {
            "ivae": scores,
            "vae": mcc(S, vae.transform(X)),
            "ica": mcc(S, ica.transform(X)),
        }
        if args.oracle:
            row["oracle"] = oracle_mcc(X, S, U, data_seed)
        rows.append(row)
        per_seed = " ".join(f"{s:.3f}" for s in scores)
        true_text = f"{truth:.3f}" if np.isfinite(truth) else "-"
        print(
            f"{data_seed:>4}  {per_seed:<26}{np.mean(elbos):>8.3f}{true_text:>8}"
            f"{np.mean(times[-len(args.model_seeds) :]):>7.1f}{row['vae']:>8.3f}"
            f"{row['ica']:>8.3f}" + (f"{row['oracle']:>8.3f}" if args.oracle else ""),
            flush=True,
        )

    # Per data seed, the median over model seeds; then the median over data.
    per_data = [float(np.nanmedian(r["ivae"])) for r in rows]
    all_fits = [s for r in rows for s in r["ivae"]]
    med = statistics.median(per_data)
    med_vae = statistics.median(r["vae"] for r in rows)
    med_ica = statistics.median(r["ica"] for r in rows)
    print()
    print(
        f"median MCC over data seeds: iVAE {med:.3f} "
        f"(worst data seed {min(per_data):.3f},"
        f" worst fit {np.nanmin(all_fits):.3f}), VAEICA {med_vae:.3f}, FastICA "
        f"{med_ica:.3f}"
        + (
            f", oracle {statistics.median(r['oracle'] for r in rows):.3f}"
            if args.oracle
            else ""
        )
    )
    print(
        f"CPU time per iVAE fit: min {min(times):.1f} s, median "
        f"{statistics.median(times):.1f} s, max {max(times):.1f} s; "
        f"diverged fits: {diverged} of {len(all_fits)}"
    )
    checks = {
        "median >= 0.9": med >= 0.9,
        "no data seed below 0.8": min(per_data) >= 0.8,
        "median >= VAEICA + 0.15": med >= med_vae + 0.15,
        "no divergence": diverged == 0,
        "fit <= 15 CPU s": max(times) <= 15,
    }
    print(
        "acceptance: "
        + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items())
    )


if __name__ == "__main__":
    main()
