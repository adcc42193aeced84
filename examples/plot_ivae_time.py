r"""
======================================================
An iVAE with a continuous auxiliary variable: time
======================================================

The auxiliary variable :math:`u` of :class:`~sklearn_nlica.IdentifiableVAE`
need not be a segment label. Here the sources of a time series change their
means and variances *smoothly* over time, and :math:`u` is simply the time
index :math:`t`. The prior :math:`p(z \mid u) = \prod_i N(z_i; \mu_i(u),
s_i^2(u))` is then a small network of :math:`u` rather than a table of
segments: passing a real-valued ``y`` with one value per row selects it
(``aux_type="auto"``; ``aux_type="continuous"`` says so explicitly).
"""

# SPDX-License-Identifier: BSD-3-Clause

import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.exceptions import ConvergenceWarning

from sklearn_nlica import VAEICA, IdentifiableVAE
from sklearn_nlica.datasets import make_segmented_sources
from sklearn_nlica.metrics import mean_correlation_coefficient

# One torch thread: on problems this small, more threads add more overhead
# than they save (up to 10x slower on a loaded two-core machine).
torch.set_num_threads(1)
# The iVAE's learning rate follows a cosine schedule that reaches 0 at
# max_iter: training ends there by design, and the estimator's warning that
# the loss was still moving is expected.
warnings.filterwarnings("ignore", category=ConvergenceWarning)

# %%
# Nonstationary sources
# ---------------------
# Two sources over 3,000 time steps. At time :math:`t` source :math:`i` is
# Gaussian with a mean and a log standard deviation that follow slow
# sinusoids (one and two cycles over the series, different for each
# source). We mix them with the random invertible leaky-ReLU network that
# :func:`~sklearn_nlica.datasets.make_segmented_sources` draws (two layers, no
# sensor noise), reusing its mixing function.
rng = np.random.default_rng(0)
n_steps = 3000
t = np.arange(n_steps)
cycles = np.array([1.0, 2.0])
phase = rng.uniform(0, 2 * np.pi, size=2)
true_std = np.exp(np.sin(2 * np.pi * cycles * t[:, None] / n_steps + phase))
true_mean = 1.5 * np.cos(2 * np.pi * cycles[::-1] * t[:, None] / n_steps)
S = true_mean + true_std * rng.standard_normal((n_steps, 2))

*_, mixing = make_segmented_sources(
    n_segments=2,
    n_per_segment=2,
    n_components=2,
    n_layers=2,
    random_state=0,
    return_mixing=True,
)
X = mixing(S)
u = t.astype(float)  # the time index, one real value per row

# %%
# Fit the iVAE on (X, u), and a VAE on X alone
# --------------------------------------------
# Batches of 64 give the iVAE enough steps in 40 epochs. With a continuous
# :math:`u` its classifier term compares each row's latent with the priors
# of the other rows of its batch.
ivae = IdentifiableVAE(n_components=2, max_iter=40, batch_size=64, random_state=0)
ivae.fit(X, u)
vae = VAEICA(
    n_components=2, max_iter=40, batch_size=64, learning_rate_init=1e-2, random_state=0
).fit(X)
Z_ivae, Z_vae = ivae.transform(X), vae.transform(X)
mcc = {
    "iVAE (given t)": mean_correlation_coefficient(S, Z_ivae),
    "VAE": mean_correlation_coefficient(S, Z_vae),
    "observations x": mean_correlation_coefficient(S, X),
}
for name, value in mcc.items():
    print(f"{name:16s} MCC = {value:.3f}")


# %%
# Latents over time
# -----------------
# Each latent is matched to a source (the matching of the MCC), its sign
# aligned, and standardised, as is each source: the model identifies the
# sources only up to permutation and component-wise transformation.
def match(S, Z):
    """Z's columns reordered, sign-flipped and standardised to follow S."""
    corr = np.corrcoef(S.T, Z.T)[: S.shape[1], S.shape[1] :]
    _, order = linear_sum_assignment(-np.abs(corr))
    signs = np.sign(corr[np.arange(S.shape[1]), order])
    Z = Z[:, order] * signs
    return (Z - Z.mean(0)) / Z.std(0)


standardised = (S - S.mean(0)) / S.std(0)
series = {
    "sources": standardised,
    f"iVAE latents (MCC {mcc['iVAE (given t)']:.2f})": match(S, Z_ivae),
    f"VAE latents (MCC {mcc['VAE']:.2f})": match(S, Z_vae),
}
fig, axes = plt.subplots(
    3, 2, figsize=(13, 8), sharex=True, sharey=True, layout="constrained"
)
for row, (name, Z) in enumerate(series.items()):
    for i in range(2):
        ax = axes[row, i]
        ax.plot(t, Z[:, i], ".", ms=1, color=f"C{row}")
        ax.set(title=f"{name}: component {i + 1}", ylabel="standardised value")
for ax in axes[-1]:
    ax.set_xlabel("time index t (= u)")
plt.show()

# %%
# What to see. The sources' spread swells and shrinks over time (one and two
# cycles) while their centres drift. The iVAE's latents reproduce both
# patterns component by component: each latent follows one source. The
# VAE's latents are one-sided instead: each has a sharp edge (component 1 at
# the top, component 2 at the bottom) where the leaky-ReLU mixing has a kink
# that the VAE has not undone, so neither follows its source's symmetric
# spread, and their MCC is lower.
#
# The learned prior
# -----------------
# ``sample(n, y=u)`` draws :math:`z` from the learned prior
# :math:`p(z \mid u)` at the given values of :math:`u`. Drawing 200 latents
# at each of 60 times estimates the prior's standard deviation over time;
# we compare it, matched and scaled to a mean of 1, with the sources' true
# standard deviation (also scaled). Latents and sources agree only up to a
# component-wise transformation, so the shapes, not the levels, are what
# can agree.
grid = np.linspace(0, n_steps - 1, 60)
_, Z_prior = ivae.sample(200 * len(grid), y=np.repeat(grid, 200), random_state=0)
prior_std = Z_prior.reshape(len(grid), 200, 2).std(axis=1)
corr = np.corrcoef(S.T, Z_ivae.T)[:2, 2:]
_, order = linear_sum_assignment(-np.abs(corr))

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
for i, ax in enumerate(axes):
    ax.plot(t, true_std[:, i] / true_std[:, i].mean(), "k", label="true source")
    learned = prior_std[:, order[i]]
    ax.plot(grid, learned / learned.mean(), "o-", ms=3, color="C1", label="iVAE prior")
    ax.set(
        title=f"standard deviation of component {i + 1} over time",
        xlabel="time index t (= u)",
        ylabel="relative standard deviation",
    )
    ax.legend()
plt.show()

# %%
# The learned prior's spread follows the true one (for component 2 with a
# smaller swing): the network of :math:`u` has found when each source is
# loud and when it is quiet, which is the information that makes the sources
# identifiable. The time course must be smooth enough for that network to
# follow: with faster modulation (two and three cycles per series, and
# larger amplitudes) the same estimator settings recovered the sources less
# reliably in our trials, with MCCs between 0.5 and 0.87 over four mixings,
# against 0.96 to 0.99 for the slow modulation of this example.
