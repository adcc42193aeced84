"""
=============================================
Recovering nonlinearly mixed sources with VAE
=============================================

Two independent Gaussian sources are mixed into 10 features by a random
one-hidden-layer leaky-ReLU network plus noise (the process of
:func:`~sklearn_nlica.datasets.make_nonlinear_ica`). A :class:`~sklearn_nlica.VAEICA`
in a pipeline with :class:`~sklearn.preprocessing.StandardScaler` learns the
decoder and an encoder; its ``transform`` gives the posterior means, which we
compare with the true sources by the mean correlation coefficient. A plain VAE
recovers the sources only up to a rotation (the prior N(0, I) is rotation
invariant): that is the identifiability problem the iVAE solves.
"""

# SPDX-License-Identifier: BSD-3-Clause

import matplotlib.pyplot as plt
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_nlica import VAEICA
from sklearn_nlica.datasets import make_nonlinear_ica
from sklearn_nlica.metrics import mean_correlation_coefficient

X, S = make_nonlinear_ica(
    n_samples=2000,
    n_components=2,
    n_features=10,
    activation="leaky_relu",
    noise_std=0.1,
    random_state=0,
)

model = make_pipeline(StandardScaler(), VAEICA(n_components=2, random_state=0))
model.fit(X)
vae = model[-1]
Z = model.transform(X)
X_scaled = model[:-1].transform(X)

print(f"epochs: {vae.n_iter_}")
print(f"mean ELBO per sample: {model.score(X):.3f}")
print(f"importance-weighted log-likelihood: {vae.log_likelihood(X_scaled).mean():.3f}")
print(f"noise variance: {vae.noise_variance_:.3f}")
print(f"MCC with the true sources: {mean_correlation_coefficient(S, Z):.3f}")

# %%
# The training curve (minus the ELBO) and the recovered latents next to the
# true sources, coloured by the first source.
fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
axes[0].plot(vae.loss_curve_)
axes[0].set(title="training loss (-ELBO)", xlabel="epoch", ylabel="nats per sample")
axes[1].scatter(S[:, 0], S[:, 1], c=S[:, 0], s=3, cmap="viridis")
axes[1].set(title="true sources", xlabel="s0", ylabel="s1")
axes[2].scatter(Z[:, 0], Z[:, 1], c=S[:, 0], s=3, cmap="viridis")
axes[2].set(title="VAEICA latents", xlabel="z0", ylabel="z1")
plt.show()

# %%
# What to see. The training loss drops steeply over the first ten epochs,
# then creeps down as the learning-rate schedule anneals; training stops
# after about 130 epochs, once the monitored ELBO has stopped improving in
# the schedule's second half. The latents reproduce the colour gradient of
# the sources, turned by a rotation: the MCC of about 0.82 measures how far
# that rotation and the remaining distortion are from the sources' own axes.
# The noise variance is that of the standardised data.
