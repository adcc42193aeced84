"""
=================================================
Scoring latent-variable models in a grid search
=================================================

A fitted nonlinear-ICA model is judged in two ways: how well it reconstructs
the observations, and, on simulated data where the truth is known, how well
it recovers the sources. :mod:`sklearn_nlica.metrics` provides both as
scikit-learn scorers, for :class:`~sklearn.model_selection.GridSearchCV`,
:func:`~sklearn.model_selection.cross_validate` and friends:

- in **reconstruction** mode (the ready-made ``procrustes_scorer``,
  ``cca_scorer`` and ``mcc_scorer``) a scorer compares ``X`` with
  ``inverse_transform(transform(X))`` and needs no labels;
- in **latent** mode (``make_latent_scorer(..., mode="latent")``) it compares
  ``transform(X)`` with the true sources, which reach it through
  scikit-learn's metadata routing, so that ``y`` stays free for the
  auxiliary variable of an identifiable VAE.

The package's own estimators are not needed to show the mechanics: here
:class:`~sklearn.decomposition.PCA` and
:class:`~sklearn.decomposition.FastICA` stand in for them.
"""

# SPDX-License-Identifier: BSD-3-Clause

import matplotlib.pyplot as plt
import numpy as np

# %%
# Why the Procrustes disparity rather than the canonical correlation, as a
# measure of how alike two data matrices are, is the subject of
# :ref:`sphx_glr_auto_examples_plot_metric_scaling.py`: on independent
# matrices the first canonical correlation grows with the number of columns.
# Here we look at both as scorers.
#
# Data
# ----
# :func:`~sklearn_nlica.datasets.make_segmented_sources` simulates the
# identifiable-VAE benchmark: within each segment ``U`` the sources are
# independent Gaussians whose variance changes from segment to segment.
# With ``n_layers=1`` the mixing is linear, so that the linear methods used
# here are the right model class; the sources are non-Gaussian marginally
# (variance mixtures), which is what FastICA needs.
from sklearn_nlica.datasets import make_segmented_sources

X, S, U = make_segmented_sources(
    n_segments=20,
    n_per_segment=40,
    n_components=3,
    n_features=6,
    n_layers=1,
    noise_std=0.05,
    shuffle=True,
    random_state=0,
)
print(f"X: {X.shape}, S: {S.shape}, U: {U.shape}")

# %%
# Reconstruction mode
# -------------------
# The ready-made scorers need only ``X``. Several can be given at once, with
# ``refit`` naming the one that picks the best model. They are
# greater-is-better, so the disparity scorer returns minus the disparity.
from sklearn.decomposition import PCA, FastICA
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_nlica.metrics import cca_scorer, mcc_scorer, procrustes_scorer

pipe = Pipeline([("scale", StandardScaler()), ("model", PCA())])
search = GridSearchCV(
    pipe,
    {"model__n_components": [1, 2, 3, 4]},
    scoring={"disparity": procrustes_scorer, "cca": cca_scorer, "mcc": mcc_scorer},
    refit="disparity",
    cv=4,
)
search.fit(X)
results = search.cv_results_
print("n_components  -disparity     cca     mcc")
for k, d, c, m in zip(
    results["param_model__n_components"],
    results["mean_test_disparity"],
    results["mean_test_cca"],
    results["mean_test_mcc"],
):
    print(f"{k:12d}  {d:10.4f}  {c:6.3f}  {m:6.3f}")

# %%
# The disparity drops to about 0 at the true number of sources, 3; a fourth
# component only reproduces noise and gains almost nothing, though the
# search, which takes the maximum, may still prefer it. The first canonical
# correlation is 1 for every rank: a linear reconstruction is a linear
# function of ``X``, so some combination of it always matches some
# combination of ``X`` perfectly. ``make_latent_scorer("cca",
# n_components=None)`` averages all canonical correlations instead.
print(search.best_params_)

# %%
# Latent mode: the sources as metadata
# ------------------------------------
# An identifiable VAE takes its auxiliary variable as ``y``
# (``IdentifiableVAE().fit(X, U)``), so the true sources cannot travel as
# ``y`` too. They are passed as the metadata ``sources``: enable metadata
# routing, and give them to ``fit`` by name. scikit-learn cuts them into
# folds with the same indices as ``X`` and hands each test fold's rows to
# the scorers that request them. Latent-mode scorers request ``sources`` by
# default; reconstruction-mode scorers ignore it, so both kinds mix freely.
import sklearn

from sklearn_nlica.metrics import make_latent_scorer

scoring = {
    "mcc": make_latent_scorer("mcc", mode="latent"),
    "disparity": make_latent_scorer("procrustes", mode="latent"),
    "reconstruction": procrustes_scorer,
}
grid = {
    "model": [
        PCA(n_components=3),
        FastICA(n_components=3, whiten="unit-variance", random_state=0),
    ]
}
with sklearn.config_context(enable_metadata_routing=True):
    search = GridSearchCV(pipe, grid, scoring=scoring, refit="mcc", cv=4)
    # y = U goes where y goes (PCA and FastICA ignore it); S goes to the
    # scorers only.
    search.fit(X, U, sources=S)

latent = search.cv_results_
models = ["PCA", "FastICA"]  # the order of the grid
names = ["mcc", "disparity", "reconstruction"]
print("model      mcc  -disparity  -disparity(X)")
for i, model in enumerate(models):
    values = "  ".join(f"{latent[f'mean_test_{name}'][i]:9.4f}" for name in names)
    print(f"{model:8s} {values}")

# %%
# Both models reconstruct equally well (they span the same 3-dimensional
# subspace), but only FastICA recovers the individual sources: PCA returns
# mixtures of them. The latent disparity sees only part of the difference,
# since it forgives any rotation of the sources and penalises PCA just for
# the unequal scales of its components; the mean correlation coefficient,
# which forgives only permutations, signs and scales, sees the mixing.
# The bars are labelled with their values (the reconstruction disparities
# are too small to see).
fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
width = 0.35
for i, model in enumerate(models):
    values = [latent[f"mean_test_{name}"][i] for name in names]
    bars = ax.bar(np.arange(3) + (i - 0.5) * width, values, width, label=model)
    ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
ax.set_xticks(np.arange(3), ["MCC (latent)", "-disparity (latent)", "-disparity (X)"])
ax.axhline(0, color="k", lw=0.5)
ax.set(
    xlabel="scorer",
    ylabel="cross-validated score (greater is better)",
    title="PCA and FastICA on linearly mixed sources, 4-fold CV",
    ylim=(-0.15, 1.15),
)
ax.legend(loc="center right")

# %%
# The refitted search keeps the routing: scoring new data needs the sources
# again.
with sklearn.config_context(enable_metadata_routing=True):
    print(f"MCC of the refitted FastICA: {search.score(X, U, sources=S):.3f}")

# %%
# To route the sources under another name, e.g. to compare with two
# different references, rename the request:
# ``make_latent_scorer("mcc", mode="latent").set_score_request(sources="S_true")``
# and call ``search.fit(X, U, S_true=S)``.
#
# Latent mode without routing
# ---------------------------
# For estimators that ignore ``y``, ``mode="latent_y"`` simply reads the
# sources from ``y`` and needs no configuration.
from sklearn.model_selection import cross_validate

scores = cross_validate(
    FastICA(n_components=3, whiten="unit-variance", random_state=0),
    X,
    S,
    scoring={"mcc": make_latent_scorer("mcc", mode="latent_y")},
    cv=4,
)
scores["test_mcc"]

plt.show()
