r"""
====================================================
Procrustes disparity and CCA against the dimension
====================================================

Two ways to compare two data matrices with the same rows, for instance
observations and their reconstruction by a fitted model
(:mod:`sklearn_nlica.metrics`):

- the orthogonal Procrustes disparity
  (:func:`~sklearn_nlica.metrics.procrustes_disparity`): centre both, scale
  them to unit Frobenius norm, rotate (and scale) the second onto the first,
  and measure what is left: 0 for the same configuration, 1 for unrelated
  ones;
- the first canonical correlation (:func:`~sklearn_nlica.metrics.cca_score`):
  the largest correlation between a linear combination of the columns of one
  matrix and a linear combination of the columns of the other.

A measure of dissimilarity should call two *independent* matrices unrelated
whatever their number of columns. This example checks that on pairs of
independent standard normal matrices of 5,000 rows, with several
repetitions per dimension, and compares them with single draws of the
same experiment (a disparity of 1.0 and a canonical correlation of 0.017
with 2 columns, 0.93 and 0.594 with 500).
"""

# SPDX-License-Identifier: BSD-3-Clause

import matplotlib.pyplot as plt
import numpy as np

from sklearn_nlica.metrics import cca_score, procrustes_disparity

n_samples = 5000
dimensions = [2, 5, 10, 20, 50, 100, 200, 500]
n_repeats = 5
rng = np.random.default_rng(0)

disparity = np.empty((len(dimensions), n_repeats))
correlation = np.empty((len(dimensions), n_repeats))
for i, p in enumerate(dimensions):
    for r in range(n_repeats):
        A = rng.standard_normal((n_samples, p))
        B = rng.standard_normal((n_samples, p))
        disparity[i, r] = procrustes_disparity(A, B)
        correlation[i, r] = cca_score(A, B)

print(f"{'columns':>8s} {'disparity':>18s} {'first canonical corr.':>24s}")
for i, p in enumerate(dimensions):
    print(
        f"{p:8d} {disparity[i].mean():10.3f} +- {disparity[i].std():.3f}"
        f" {correlation[i].mean():15.3f} +- {correlation[i].std():.3f}"
    )

# %%
# Both measures against the number of columns: the mean over the five
# repetitions (line) and their range (band; narrower than the line for the
# disparity), with the single draws quoted above as crosses. The dotted curve is
# the limit of the first canonical correlation of independent Gaussian
# matrices as rows and columns grow together, Wachter's edge
# :math:`2\sqrt{\gamma (1 - \gamma)}` with :math:`\gamma` the ratio of
# columns to rows.
gamma = np.array(dimensions) / n_samples
fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
for values, label, color in (
    (disparity, "Procrustes disparity", "C0"),
    (correlation, "first canonical correlation", "C1"),
):
    ax.plot(dimensions, values.mean(1), "o-", color=color, label=label)
    ax.fill_between(
        dimensions, values.min(1), values.max(1), color=color, alpha=0.3, lw=0
    )
ax.plot(dimensions, 2 * np.sqrt(gamma * (1 - gamma)), "k:", label="Wachter's edge")
ax.plot([2, 500], [1.0, 0.93], "x", color="C0", ms=9, mew=2, label="single draws")
ax.plot([2, 500], [0.017, 0.594], "x", color="C1", ms=9, mew=2)
ax.set(
    xscale="log",
    xlabel="number of columns of each matrix",
    ylabel="value for two independent matrices",
    title=f"Independent standard normal matrices, {n_samples} rows",
    ylim=(0, 1.05),
)
ax.legend(loc="center left")
plt.show()

# %%
# What to see. The disparity stays near 1 (0.93 at 500 columns) with no
# visible spread: it keeps calling independent matrices unrelated. The first
# canonical correlation climbs from about 0.02 to 0.6 as the columns grow,
# along Wachter's edge: with many columns, *some* combination of one random
# matrix correlates with *some* combination of the other, so a high
# canonical correlation says nothing by itself. Both agree with the single
# draws (crosses) to within 0.01.
#
# The same mechanism makes the canonical correlation useless for comparing
# a reconstruction with the data: a reconstruction
# ``inverse_transform(transform(X))`` is a smooth function of ``X``, so its
# first canonical correlation with ``X`` is close to 1 for every reasonable
# model. Prefer the disparity (or the held-out likelihood) to select models;
# see :ref:`sphx_glr_auto_examples_plot_choose_n_components.py`.
