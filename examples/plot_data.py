r"""
=================================================
Sources and observations of nonlinear ICA models
=================================================

The model behind every estimator of the package: independent standard
normal sources :math:`z \in \mathbb{R}^m` are mixed by a nonlinear function
and observed with noise,

.. math::

   z \sim N(0, I_m), \qquad x = f(z) + \varepsilon, \qquad
   \varepsilon \sim N(0, \sigma^2 I_n).

:func:`~sklearn_nlica.datasets.make_nonlinear_ica` draws such data with
:math:`f(z) = a(zW + b)` a random one-layer network and :math:`a` one of four
activations: ReLU, sigmoid, tanh and leaky ReLU. This example draws the
sources and the observations for three shapes, :math:`(m, n) = (1, 1)`,
:math:`(1, 2)` and :math:`(2, 2)`, so that both can be plotted directly.
"""

# SPDX-License-Identifier: BSD-3-Clause

import matplotlib.pyplot as plt
import numpy as np

from sklearn_nlica.datasets import make_nonlinear_ica

activations = ["relu", "sigmoid", "tanh", "leaky_relu"]
shapes = [(1, 1), (1, 2), (2, 2)]
noise_std = 0.05  # small, so that the shape of f shows

# %%
# One figure: a row per shape,
# the sources in the first column and the observations under each activation
# in the others. The same ``random_state`` draws the same weights ``W, b`` for
# every activation, so the columns differ only by the activation. Points are
# coloured by the (first) source, and the noiseless curve :math:`f(z)` is
# drawn in black where it is a curve.
fig, axes = plt.subplots(3, 5, figsize=(15, 9), layout="constrained")
for row, (m, n) in enumerate(shapes):
    for col, activation in enumerate(activations):
        X, Z, mixing = make_nonlinear_ica(
            n_samples=2000,
            n_components=m,
            n_features=n,
            activation=activation,
            noise_std=noise_std,
            random_state=3,
            return_mixing=True,
        )
        ax = axes[row, col + 1]
        if n == 1:
            ax.hist(X[:, 0], bins=60, color="C1")
            ax.set(xlabel="$x$", ylabel="count")
        else:
            ax.scatter(X[:, 0], X[:, 1], c=Z[:, 0], s=2, cmap="viridis")
            if m == 1:
                grid = np.linspace(-3, 3, 400)[:, None]
                curve = mixing(grid)
                ax.plot(curve[:, 0], curve[:, 1], "k", lw=0.8)
            ax.set(xlabel="$x_1$", ylabel="$x_2$")
        ax.set_title(f"x, {activation}, m={m}, n={n}")
    ax = axes[row, 0]
    if m == 1:
        ax.hist(Z[:, 0], bins=60, color="C0")
        ax.set(xlabel="$z$", ylabel="count")
    else:
        ax.scatter(Z[:, 0], Z[:, 1], c=Z[:, 0], s=2, cmap="viridis")
        ax.set(xlabel="$z_1$", ylabel="$z_2$")
    ax.set_title(f"sources z, m={m}")
plt.show()

# %%
# What to see. With one source and one feature (top row) the activation
# reshapes the normal density: ReLU piles every negative pre-activation onto
# 0 (the spike), sigmoid and tanh squash both tails into a bounded interval
# (tanh piles them up at -1 and 1). The leaky ReLU of the generator has a
# negative slope of 0.01, so at this scale it looks like ReLU, but it maps
# the negative half-line onto a short interval instead of a point, and stays
# invertible. With two features (middle row) the data lie near a
# one-dimensional curve :math:`f(z)` (black), bent where the activations bend;
# under ReLU a whole half-line of :math:`z` lands on one corner point (the
# dark points near the origin). With two sources and two features (bottom
# row) ReLU folds the plane onto the quadrant and its two edges (where a
# pre-activation is negative the observation lands on an axis, so different
# sources give the same observation), while sigmoid and tanh bend the plane
# into a bounded square. Only an invertible :math:`f` can be undone: the ReLU
# columns show why the sources cannot always be recovered, even with little
# noise.
