"""What the ``nlica`` command writes: the latents and a figure of them.

Output paths are checked before the fit, so that a mistake in them costs
nothing; nothing is written unless asked.
"""

import os
from pathlib import Path

import numpy as np

LATENT_SUFFIXES = (".csv", ".npy")


def check_output_paths(output, plot):
    """Raise a ValueError naming the problem with ``--output`` or ``--plot``."""
    for option, path in (("--output", output), ("--plot", plot)):
        if path is None:
            continue
        parent = Path(path).parent
        if not parent.is_dir():
            raise ValueError(f"{option} {path}: {parent} is not a directory")
        if not os.access(parent, os.W_OK):
            raise ValueError(f"{option} {path}: {parent} is not writable")
        if Path(path).is_dir():
            raise ValueError(f"{option} {path} is a directory; name a file")
    if output is not None and Path(output).suffix not in LATENT_SUFFIXES:
        raise ValueError(f"--output {output}: use a .csv or .npy file name")
    if plot is not None:
        _check_figure_format(plot)


def _check_figure_format(path):
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = FigureCanvasAgg.get_supported_filetypes()
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in formats:
        raise ValueError(
            f"--plot {path}: unknown figure format {suffix!r}; use one of "
            f"{', '.join(sorted(formats))}"
        )


def write_latents(path, Z):
    if Path(path).suffix == ".npy":
        np.save(path, Z)
    else:
        header = ",".join(f"z{i}" for i in range(Z.shape[1]))
        np.savetxt(path, Z, delimiter=",", header=header, comments="")


def plot_latents(path, Z, S=None, U=None):
    """Each latent against the true source it matches best (with built-in
    data), or against the next latent; points coloured by u when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = Z.shape[1]
    fig, axes = plt.subplots(1, m, figsize=(3.2 * m, 3.2), squeeze=False)
    style = {"s": 2, "alpha": 0.5}
    if U is not None and np.ndim(U) == 1:
        style.update(c=np.unique(U, return_inverse=True)[1], cmap="tab20")
    order = _match(S, Z) if S is not None else None
    for i, ax in enumerate(axes[0]):
        if order is not None:
            j, r = order[i]
            ax.scatter(S[:, j], Z[:, i], **style)
            ax.set(xlabel=f"true source s{j}", ylabel=f"latent z{i}")
            ax.set_title(f"z{i} vs s{j}: |corr| = {r:.2f}", fontsize=9)
        elif m > 1:
            k = (i + 1) % m
            ax.scatter(Z[:, i], Z[:, k], **style)
            ax.set(xlabel=f"latent z{i}", ylabel=f"latent z{k}")
        else:
            ax.hist(Z[:, 0], bins=50)
            ax.set(xlabel="latent z0", ylabel="count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _match(S, Z):
    """For each latent, the source it is matched to (Hungarian algorithm on
    the absolute correlations) and that correlation."""
    from scipy.optimize import linear_sum_assignment

    m = Z.shape[1]
    corr = np.abs(np.corrcoef(Z.T, S.T)[:m, m:])
    corr = np.nan_to_num(corr)
    rows, cols = linear_sum_assignment(-corr)
    matched = dict(zip(rows, cols))
    out = []
    for i in range(m):
        j = matched.get(i, int(np.argmax(corr[i])))
        out.append((j, corr[i, j]))
    return out
