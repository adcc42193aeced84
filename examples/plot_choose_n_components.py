r"""
=======================================================
Choosing n_components by held-out likelihood or ELBO
=======================================================

How many sources are there? Each estimator's ``score`` is a proper
held-out criterion for that question: the log-likelihood for
:class:`~sklearn_nlica.NonlinearICAMLE`, the evidence lower bound (ELBO)
for :class:`~sklearn_nlica.VAEICA`. Too few latent dimensions cannot
explain the data; more than needed add nothing, so the held-out score rises
up to the true dimension and then levels off. We let
:class:`~sklearn.model_selection.GridSearchCV` compute it for each candidate
``n_components`` on data with three sources, together with the
reconstruction scorers of :mod:`sklearn_nlica.metrics`, and see which of
these criteria find the truth.
"""

# SPDX-License-Identifier: BSD-3-Clause

import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, ShuffleSplit

from sklearn_nlica import VAEICA, NonlinearICAMLE
from sklearn_nlica.datasets import make_nonlinear_ica
from sklearn_nlica.metrics import cca_scorer, procrustes_scorer

# One torch thread: on problems this small, more threads add more overhead
# than they save (up to 10x slower on a loaded two-core machine).
torch.set_num_threads(1)
# The MLE gets a short, fixed budget of epochs (it would warn that more
# epochs could still improve it).
warnings.filterwarnings("ignore", category=ConvergenceWarning)

true_m = 3
X, S = make_nonlinear_ica(
    n_samples=700,
    n_components=true_m,
    n_features=10,
    activation="tanh",
    noise_std=0.3,
    random_state=0,
)

# %%
# One grid search per estimator
# -----------------------------
# A single 60/40 split (420 rows to fit, 280 to score) keeps the example fast
# (``cv=5`` would average over five). Several scorers are computed at once:
# the estimator's own ``score``, then the reconstruction scorers, which
# compare the held-out ``X`` with ``inverse_transform(transform(X))`` (the
# negated Procrustes disparity and the first canonical correlation).
# ``refit=False``: we only want the table.
split = ShuffleSplit(n_splits=1, test_size=0.4, random_state=0)


def held_out_score(estimator, X, y=None):
    """The estimator's own score: log-likelihood (MLE) or ELBO (VAE)."""
    return estimator.score(X)


scoring = {
    "score": held_out_score,
    "neg_disparity": procrustes_scorer,
    "cca": cca_scorer,
}
common = dict(hidden_layer_sizes=(16,), activation="tanh", random_state=0)
searches = {
    "NonlinearICAMLE: log-likelihood": GridSearchCV(
        NonlinearICAMLE(max_iter=20, batch_size=140, learning_rate_init=1e-2, **common),
        {"n_components": [1, 2, 3, 4]},
        scoring=scoring,
        cv=split,
        refit=False,
    ),
    "VAEICA: ELBO": GridSearchCV(
        VAEICA(
            max_iter=150,
            n_iter_no_change=30,
            n_mc_samples=4,
            batch_size=50,
            learning_rate_init=3e-3,
            **common,
        ),
        {"n_components": [1, 2, 3, 4]},
        scoring=scoring,
        cv=split,
        refit=False,
    ),
}
for search in searches.values():
    search.fit(X)

for name, search in searches.items():
    results = search.cv_results_
    print(name)
    print("  n_components   score   -disparity    cca")
    for k, s, d, c in zip(
        results["param_n_components"],
        results["mean_test_score"],
        results["mean_test_neg_disparity"],
        results["mean_test_cca"],
    ):
        print(f"  {k:12d} {s:8.3f} {d:11.3f} {c:8.4f}")

# %%
# A selection rule
# ----------------
# More latent dimensions never help much once the true number is reached,
# and the held-out score then moves by the noise of training and of a test
# set of 280 rows. Take the smallest ``n_components`` whose held-out score is
# within 0.1 nat per sample of the best (``cv=5`` would give a standard error
# to use instead).
tolerance = 0.1
chosen = {}
for name, search in searches.items():
    ks = np.asarray(search.cv_results_["param_n_components"], dtype=int)
    scores = search.cv_results_["mean_test_score"]
    chosen[name] = ks[scores >= scores.max() - tolerance].min()
    print(f"{name}: n_components = {chosen[name]} (truth: {true_m})")

# %%
# The criteria against the candidate dimension
# --------------------------------------------
# Left: each estimator's held-out score (the MLE's log-likelihood, the VAE's
# ELBO, nats per sample). Right: the reconstruction scorers of the same
# fits. The dotted line marks the true number of sources.
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
for i, (name, search) in enumerate(searches.items()):
    results = search.cv_results_
    ks = np.asarray(results["param_n_components"], dtype=int)
    axes[0].plot(ks, results["mean_test_score"], "o-", color=f"C{i}", label=name)
    axes[0].plot(
        chosen[name],
        results["mean_test_score"][ks == chosen[name]],
        "*",
        ms=16,
        color=f"C{i}",
    )
    label = name.split(":")[0]
    axes[1].plot(
        ks,
        -results["mean_test_neg_disparity"],
        "o-",
        color=f"C{i}",
        label=f"{label}: Procrustes disparity",
    )
    axes[1].plot(
        ks,
        results["mean_test_cca"],
        "s--",
        color=f"C{i}",
        label=f"{label}: first canonical correlation",
    )
axes[0].set(
    xlabel="n_components",
    ylabel="held-out score, nats per sample",
    title="estimator's own score (star: chosen)",
)
axes[1].set(
    xlabel="n_components",
    ylabel="held-out value",
    title="reconstruction scorers",
    ylim=(0, 1.05),
)
for ax in axes:
    ax.axvline(true_m, color="k", ls=":", lw=1)
    ax.set_xticks(range(1, 5))
    ax.legend(fontsize=8)
plt.show()

# %%
# What to see. Both likelihood-type scores climb steeply up to three
# components and then dip by less than a tenth of a nat (the fourth
# dimension has nothing left to explain): the selection rule finds the true
# number of sources with either estimator. The Procrustes disparity of the
# reconstructions tells the same story from the data side: it drops until
# three components and then barely moves. The first canonical correlation
# between the data and their reconstruction is above 0.87 for every
# candidate and about 0.98 or more from two components on, so it cannot
# tell two, three and four components apart: a reconstruction is a smooth
# function of the data, and some linear combination of it always correlates
# with some linear combination of the data. See
# :ref:`sphx_glr_auto_examples_plot_metric_scaling.py` for the same effect
# on independent data.
