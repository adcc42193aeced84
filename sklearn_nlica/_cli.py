"""The ``nlica`` command: fit an estimator on a file or on built-in data.

    nlica vae                         # built-in generated data, progress bar
    nlica vae data.csv -m 3 -o z.csv  # your data: CSV (header optional) or .npy
    python -m sklearn_nlica --help

Prints the scores, writes the latent representation (``--output``) and
optionally a figure (``--plot``). The options mirror the estimators'
parameters; the data are standardised first unless ``--no-standardize``.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ESTIMATORS = {
    "mle": "NonlinearICAMLE",
    "vae": "VAEICA",
    "ivae": "IdentifiableVAE",
}


def _estimator_class(name):
    import sklearn_nlica

    return getattr(sklearn_nlica, ESTIMATORS[name])


def _hidden_sizes(text):
    text = text.strip()
    if text in ("", "()", "linear"):
        return ()
    try:
        return tuple(int(h) for h in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected comma-separated integers such as 64,64 (or 'linear'), "
            f"got {text!r}"
        ) from None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="nlica",
        description="Fit a nonlinear-ICA model (sklearn-nlica) and write the "
        "recovered sources.",
    )
    parser.add_argument(
        "estimator", choices=sorted(ESTIMATORS), help="which estimator to fit"
    )
    parser.add_argument(
        "data",
        nargs="?",
        type=Path,
        help="CSV or .npy file of shape (n_samples, n_features); "
        "omit it to use built-in generated data",
    )
    _add_model_options(parser.add_argument_group("model (the estimator's parameters)"))
    _add_data_options(parser)
    _add_output_options(parser.add_argument_group("output"))
    return parser


def _add_model_options(model):
    model.add_argument("-m", "--n-components", type=int, default=2)
    model.add_argument(
        "--hidden-layer-sizes",
        type=_hidden_sizes,
        default=None,
        metavar="64,64",
        help="hidden widths, or 'linear'",
    )
    model.add_argument("--activation", default=None)
    model.add_argument(
        "--noise-variance",
        type=float,
        default=None,
        help="fix sigma^2 (default: learn it)",
    )
    model.add_argument("--integrator", default=None)
    model.add_argument("--n-nodes", type=int, default=None)
    model.add_argument("--max-iter", type=int, default=None, help="epochs")
    model.add_argument("--batch-size", type=int, default=None)
    model.add_argument("--learning-rate-init", type=float, default=None)
    model.add_argument("--early-stopping", action="store_true", default=None)
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps, auto")
    model.add_argument("--random-state", type=int, default=0)


def _add_data_options(parser):
    builtin = parser.add_argument_group("built-in data (when no file is given)")
    builtin.add_argument("--n-samples", type=int, default=2000)
    builtin.add_argument("--n-features", type=int, default=10)
    builtin.add_argument("--noise-std", type=float, default=0.1)
    builtin.add_argument(
        "--n-segments",
        type=int,
        default=20,
        help="ivae: segments of the built-in segmented data",
    )
    aux = parser.add_argument_group(
        "auxiliary variable u (ivae; the segment labels of built-in data)"
    )
    aux.add_argument(
        "--aux-column",
        type=int,
        default=None,
        metavar="J",
        help="column J of the data file holds u (it is removed from X)",
    )
    aux.add_argument(
        "--aux",
        type=Path,
        default=None,
        metavar="FILE",
        help="u in its own CSV or .npy file, one row per sample",
    )


def _add_output_options(out):
    out.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("latents.csv"),
        help="where to write the latent representation (.csv or .npy)",
    )
    out.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="also save a figure of the latents (needs matplotlib)",
    )
    out.add_argument(
        "--no-standardize",
        action="store_true",
        help="fit on the raw data instead of standardised data",
    )
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def load_data(path):
    """Read a .npy or delimited text file (one header line allowed)."""
    if not path.exists():
        raise SystemExit(f"nlica: no such file: {path}")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    delimiter = "," if path.suffix == ".csv" else None
    first = path.read_text().splitlines()[:1]
    try:
        [float(v) for v in (first[0].split(delimiter) if first else [])]
        skip = 0
    except ValueError:
        skip = 1
    return np.loadtxt(path, delimiter=delimiter, skiprows=skip, ndmin=2)


def builtin_data(args):
    from sklearn_nlica.datasets import make_nonlinear_ica, make_segmented_sources

    if args.estimator == "ivae":
        n_per_segment = max(1, args.n_samples // args.n_segments)
        return make_segmented_sources(
            args.n_segments,
            n_per_segment,
            args.n_components,
            max(args.n_features, args.n_components),
            noise_std=args.noise_std,
            random_state=args.random_state,
        )
    X, S = make_nonlinear_ica(
        n_samples=args.n_samples,
        n_components=args.n_components,
        n_features=args.n_features,
        noise_std=args.noise_std,
        random_state=args.random_state,
    )
    return X, S, None


def file_data(args):
    """X and, for the iVAE, u from ``--aux-column`` or ``--aux``."""
    X, U = load_data(args.data), None
    if args.aux_column is not None:
        if not -X.shape[1] <= args.aux_column < X.shape[1]:
            raise ValueError(
                f"--aux-column {args.aux_column} is out of range for "
                f"{X.shape[1]} columns."
            )
        U = X[:, args.aux_column]
        X = np.delete(X, args.aux_column, axis=1)
    elif args.aux is not None:
        U = load_data(args.aux)
        U = U.ravel() if U.ndim == 2 and U.shape[1] == 1 else U
    if args.estimator == "ivae" and U is None:
        raise ValueError(
            "ivae needs the auxiliary variable u: name its column "
            "(--aux-column J) or its file (--aux FILE)."
        )
    return X, U


def estimator_params(cls, args):
    """The command-line options that name one of the estimator's parameters."""
    names = cls().get_params()
    params = {
        name: value
        for name, value in vars(args).items()
        if name in names and value is not None
    }
    params["verbose"] = 0 if args.quiet else 1
    return params


def write_latents(path, Z):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, Z)
    else:
        header = ",".join(f"z{i}" for i in range(Z.shape[1]))
        np.savetxt(path, Z, delimiter=",", header=header, comments="")


def plot_latents(path, Z, S=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, 2 if S is not None else 1, figsize=(9, 4), squeeze=False
    )
    axes[0, 0].scatter(Z[:, 0], Z[:, min(1, Z.shape[1] - 1)], s=2, alpha=0.5)
    axes[0, 0].set(title="recovered latents", xlabel="z0", ylabel="z1")
    if S is not None:
        axes[0, 1].scatter(S[:, 0], S[:, min(1, S.shape[1] - 1)], s=2, alpha=0.5)
        axes[0, 1].set(title="true sources", xlabel="s0", ylabel="s1")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load(args):
    """The data (X, true sources or None, u or None) and a description."""
    if args.data is None:
        X, S, U = builtin_data(args)
        generator = "make_segmented_sources" if U is not None else "make_nonlinear_ica"
        shape = f"{X.shape[0]} x {X.shape[1]}, {args.n_components} sources"
        return X, S, U, f"built-in {generator} data ({shape})"
    X, U = file_data(args)
    return X, None, U, f"{args.data} ({X.shape[0]} x {X.shape[1]})"


def fit(args, X, aux):
    """Fit the estimator (in a pipeline after a StandardScaler, by default)."""
    cls = _estimator_class(args.estimator)
    estimator = cls(**estimator_params(cls, args))
    model = (
        estimator if args.no_standardize else make_pipeline(StandardScaler(), estimator)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, *aux)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        print("  note: max_iter reached before convergence; try a larger --max-iter")
    return model, estimator


def report(args, model, estimator, X, S, aux):
    """Print the scores; return the latent representation."""
    from sklearn_nlica.metrics import mean_correlation_coefficient, procrustes_disparity

    Z = model.transform(X)
    variational = hasattr(estimator, "log_likelihood")
    kind = "ELBO" if variational else "log-likelihood"
    print(
        f"  score                {model.score(X, *aux):.4f}  (mean {kind} per sample)"
    )
    if variational:
        Xs = X if args.no_standardize else model[:-1].transform(X)
        log_likelihood = estimator.log_likelihood(Xs, *aux).mean()
        print(f"  log-likelihood       {log_likelihood:.4f}  (importance-weighted)")
    if estimator.noise_variance_ is not None:
        print(f"  noise variance       {estimator.noise_variance_:.4g}")
    disparity = procrustes_disparity(X, model.inverse_transform(Z))
    print(
        f"  reconstruction       {disparity:.4f}  (Procrustes disparity, 0 = perfect)"
    )
    if S is not None:
        mcc = mean_correlation_coefficient(S, Z)
        print(
            f"  source recovery      {mcc:.4f}  (MCC against the true sources, "
            "1 = perfect)"
        )
    return Z


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        X, S, U, source = load(args)
        # Only the iVAE takes u (as y); the others ignore a given --aux.
        aux = (U,) if args.estimator == "ivae" else ()
        name = ESTIMATORS[args.estimator]
        print(f"nlica: fitting {name} on {source}", flush=True)
        start = time.perf_counter()
        model, estimator = fit(args, X, aux)
    except (ValueError, TypeError, FloatingPointError) as exc:
        raise SystemExit(f"nlica: {type(exc).__name__}: {exc}") from None
    elapsed = time.perf_counter() - start
    print(f"  epochs               {estimator.n_iter_}  ({elapsed:.1f} s)")
    Z = report(args, model, estimator, X, S, aux)
    write_latents(args.output, Z)
    print(f"  latents written to   {args.output}")
    if args.plot is not None:
        plot_latents(args.plot, Z, S)
        print(f"  figure written to    {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
