"""The ``nlica`` command: fit an estimator on a file or on built-in data.

    nlica vae                         # built-in generated data
    nlica vae data.csv -m 3 -o z.csv  # your data: CSV (header optional) or .npy
    python -m sklearn_nlica --help

Prints the scores, and writes the latent representation (``--output``) and a
figure (``--plot``) when asked. The options mirror the estimators'
parameters; the data are standardised first unless ``--no-standardize``.
Exit codes: 0 success, 1 the fit failed (e.g. diverged), 2 a usage or input
error, 130 interrupted; every error is one line on stderr.
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

from ._cli_output import check_output_paths, plot_latents, write_latents

ESTIMATORS = {
    "mle": "NonlinearICAMLE",
    "vae": "VAEICA",
    "ivae": "IdentifiableVAE",
}


class UsageError(Exception):
    """A mistake in the command line or the input files (exit code 2)."""


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default where the command has one of its own; the estimators'
    defaults are written into the options' help instead."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _estimator_defaults(parser):
    """Append the estimators' own defaults to the help of the options that
    leave them unset (e.g. "vae: 200, ivae: 30")."""
    defaults = {name: _estimator_class(name)().get_params() for name in ESTIMATORS}
    for action in parser._actions:
        if action.default is not None or "default" in (action.help or ""):
            continue
        values = {n: p[action.dest] for n, p in defaults.items() if action.dest in p}
        if not values:
            continue
        shown = {repr(v) for v in values.values()}
        if len(shown) == 1:
            note = f"default: {shown.pop()}"
        else:
            note = "default: " + ", ".join(f"{n} {v!r}" for n, v in values.items())
        action.help = f"{action.help} ({note})" if action.help else f"({note})"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="nlica",
        description="Fit a nonlinear-ICA model (sklearn-nlica) and report how well "
        "it explains the data; optionally write the recovered sources.",
        epilog="Options left unset take the estimator's own default. Exit codes: "
        "0 success, 1 the fit failed, 2 a usage or input error, 130 interrupted.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("estimator", choices=sorted(ESTIMATORS), help="which estimator")
    parser.add_argument(
        "data",
        nargs="?",
        type=Path,
        help="CSV or .npy file of shape (n_samples, n_features); omit it to use "
        "built-in generated data",
    )
    _add_model_options(parser.add_argument_group("model"))
    _add_training_options(parser.add_argument_group("training"))
    _add_data_options(parser)
    _add_output_options(parser.add_argument_group("output"))
    _estimator_defaults(parser)
    return parser


def _add_model_options(group):
    group.add_argument("-m", "--n-components", type=int, default=2, help="sources")
    group.add_argument(
        "--hidden-layer-sizes",
        type=_hidden_sizes,
        metavar="64,64",
        help="hidden widths, or 'linear'",
    )
    group.add_argument("--activation", help="relu, leaky_relu, tanh, sigmoid, ...")
    group.add_argument("--noise-variance", type=float, help="fix sigma^2 (else learn)")
    group.add_argument("--integrator", help="adaptive, qmc, gauss_hermite, ...")
    group.add_argument("--n-nodes", type=int, help="integration nodes per sample")
    group.add_argument("--solver", help="mle: em, adam or alternating")


def _add_training_options(group):
    group.add_argument("--max-iter", type=int, help="epochs")
    group.add_argument("--tol", type=float, help="improvement that counts (nats)")
    group.add_argument("--n-iter-no-change", type=int, help="patience (epochs)")
    group.add_argument(
        "--early-stopping",
        action="store_true",
        default=None,
        help="hold out a validation set and stop on its score",
    )
    group.add_argument("--batch-size", type=int, help="rows per step")
    group.add_argument("--learning-rate-init", type=float, help="Adam's step size")
    group.add_argument("--n-init", type=int, help="initialisations, the best kept")
    group.add_argument("--device", help="cpu, cuda, cuda:N, mps, auto")
    group.add_argument("--random-state", type=int, default=0, help="seed")
    group.add_argument(
        "-v",
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        help="0 silent, 1 a progress bar, 2 a line per epoch (default: 1 on a "
        "terminal, else 0)",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="same as -v 0")


def _add_data_options(parser):
    builtin = parser.add_argument_group("built-in data (when no file is given)")
    builtin.add_argument("--n-samples", type=int, default=2000, help="rows")
    builtin.add_argument("--n-features", type=int, default=10, help="columns")
    builtin.add_argument(
        "--noise-std", type=float, default=0.1, help="sensor noise added to x"
    )
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
        metavar="J",
        help="column J of the data file holds u (it is removed from X)",
    )
    aux.add_argument(
        "--aux",
        type=Path,
        metavar="FILE",
        help="u in its own CSV or .npy file, one row per sample",
    )


def _add_output_options(group):
    group.add_argument(
        "-o",
        "--output",
        type=Path,
        help="write the latent representation here (.csv or .npy)",
    )
    group.add_argument(
        "--plot",
        type=Path,
        help="save a figure of every latent (against the true sources on "
        "built-in data); needs matplotlib",
    )
    group.add_argument(
        "--no-standardize",
        action="store_true",
        help="fit on the raw data instead of standardised data",
    )


def load_data(path, columns_only=False):
    """Read a .npy or delimited text file (one header line allowed) as a 2-D
    table; ``columns_only`` also accepts a 1-D array (one column)."""
    if not path.exists():
        raise UsageError(f"no such file: {path}")
    if not path.is_file():
        raise UsageError(f"not a file: {path}")
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            data = _load_text(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if data.ndim == 1 and (columns_only or path.suffix != ".npy"):
        data = data.reshape(-1, 1)
    if data.ndim != 2:
        raise UsageError(
            f"{path} holds an array of shape {data.shape}; expected a 2-D table "
            "(n_samples, n_features)"
        )
    return data


def _load_text(path):
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
        n_per_segment = max(1, args.n_samples // max(args.n_segments, 1))
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
            raise UsageError(
                f"--aux-column {args.aux_column} is out of range for {X.shape[1]} "
                "columns"
            )
        U = X[:, args.aux_column]
        X = np.delete(X, args.aux_column, axis=1)
    elif args.aux is not None:
        U = load_data(args.aux, columns_only=True)
        U = U.ravel() if U.shape[1] == 1 else U
    if args.estimator == "ivae" and U is None:
        raise UsageError(
            "ivae needs the auxiliary variable u: name its column (--aux-column J) "
            "or its file (--aux FILE)"
        )
    return X, U


def estimator_params(cls, args):
    """The command-line options that name one of the estimator's parameters."""
    names = cls().get_params()
    if args.solver is not None and "solver" not in names:
        raise UsageError(f"--solver is an option of mle, not of {args.estimator}")
    params = {
        name: value
        for name, value in vars(args).items()
        if name in names and value is not None
    }
    verbose = args.verbose if args.verbose is not None else int(sys.stderr.isatty())
    params["verbose"] = 0 if args.quiet else verbose
    return params


def load(args):
    """The data (X, true sources or None, u or None) and a description."""
    if args.data is None:
        X, S, U = builtin_data(args)
        generator = "make_segmented_sources" if U is not None else "make_nonlinear_ica"
        shape = f"{X.shape[0]} x {X.shape[1]}, {args.n_components} sources"
        return X, S, U, f"built-in {generator} data ({shape})"
    X, U = file_data(args)
    return X, None, U, f"{args.data} ({X.shape[0]} x {X.shape[1]})"


def make_model(args):
    """The estimator, in a pipeline after a StandardScaler unless
    ``--no-standardize``; its parameters are validated here, before any work."""
    cls = _estimator_class(args.estimator)
    estimator = cls(**estimator_params(cls, args))
    estimator._validate_params()
    if args.no_standardize:
        return estimator, estimator
    return make_pipeline(StandardScaler(), estimator), estimator


def fit(model, X, aux):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, *aux)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        print("  note: max_iter reached before convergence; try a larger --max-iter")


def report(args, model, estimator, X, S, aux):
    """Print the scores; return the latent representation."""
    from sklearn_nlica.metrics import mean_correlation_coefficient, procrustes_disparity

    Z = model.transform(X)
    variational = hasattr(estimator, "log_likelihood")
    kind = "ELBO" if variational else "log-likelihood"
    score = model.score(X, *aux)
    print(f"  score                {score:.4f}  (mean {kind} per sample)")
    if variational:
        Xs = X if args.no_standardize else model[:-1].transform(X)
        log_likelihood = estimator.log_likelihood(Xs, *aux).mean()
        print(f"  log-likelihood       {log_likelihood:.4f}  (importance-weighted)")
    if estimator.noise_variance_ is not None:
        print(f"  noise variance       {estimator.noise_variance_:.4g}")
    disparity = procrustes_disparity(X, model.inverse_transform(Z))
    print(f"  reconstruction       {disparity:.4f}  (Procrustes disparity, 0 is best)")
    if S is not None:
        mcc = mean_correlation_coefficient(S, Z)
        print(
            f"  source recovery      {mcc:.4f}  (MCC against the true sources, "
            "1 = perfect)"
        )
    return Z


def run(args):
    check_output_paths(args.output, args.plot)
    model, estimator = make_model(args)
    X, S, U, source = load(args)
    # Only the iVAE takes u (as y); the others ignore a given --aux.
    aux = (U,) if args.estimator == "ivae" else ()
    print(f"nlica: fitting {ESTIMATORS[args.estimator]} on {source}", flush=True)
    start = time.perf_counter()
    fit(model, X, aux)
    elapsed = time.perf_counter() - start
    print(f"  epochs               {estimator.n_iter_}  ({elapsed:.1f} s)")
    Z = report(args, model, estimator, X, S, aux)
    if args.output is not None:
        write_latents(args.output, Z)
        print(f"  latents written to   {args.output}")
    if args.plot is not None:
        plot_latents(args.plot, Z, S, U)
        print(f"  figure written to    {args.plot}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except KeyboardInterrupt:
        print("nlica: interrupted; nothing written", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError) as exc:
        print(f"nlica: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"nlica: the fit failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


def _one_line(exc):
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
