"""
===================================================
Maximum likelihood and the VAE on the same data
===================================================

The same generative model, z ~ N(0, I), x = g(z) + noise with g a small
network, fitted in two ways:

- :class:`~sklearn_nlica.NonlinearICAMLE` maximises the log-likelihood
  log p(x) itself, integrating over z numerically with nodes placed on each
  point's posterior;
- :class:`~sklearn_nlica.VAEICA` maximises the evidence lower bound (ELBO),
  with an encoder network as the approximate posterior.

Their scores are not on one scale: ``NonlinearICAMLE.score`` is the
log-likelihood, ``VAEICA.score`` the ELBO, which lies below it. The VAE's
:meth:`~sklearn_nlica.VAEICA.log_likelihood` estimates log p(x) by importance
sampling with the encoder as proposal, which puts both models on the
likelihood scale; the difference between the VAE's ELBO and its likelihood is
the price of the approximate posterior. The generating model's own
log-likelihood (computed with the true mixing function) is the reference.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from sklearn_nlica import VAEICA, NonlinearICAMLE
from sklearn_nlica.datasets import make_nonlinear_ica
from sklearn_nlica.integrators import Adaptive
from sklearn_nlica.metrics import mean_correlation_coefficient

torch.set_num_threads(2)
noise_std = 0.1
X, S, mixing = make_nonlinear_ica(
    n_samples=1500,
    n_components=2,
    n_features=8,
    activation="tanh",
    noise_std=noise_std,
    random_state=0,
    return_mixing=True,
)
X_train, X_test, S_test = X[:1000], X[1000:], S[1000:]

# The same decoder architecture for both; the VAE also learns an encoder.
model = dict(
    n_components=2, hidden_layer_sizes=(32,), activation="tanh", random_state=0
)
mle = NonlinearICAMLE(max_iter=25, **model).fit(X_train)
vae = VAEICA(max_iter=150, learning_rate_init=3e-3, batch_size=100, **model).fit(
    X_train
)

# %%
# The generating model's log-likelihood, by the same adaptive integration rule
# (:mod:`sklearn_nlica.integrators`): log p(x) = logsumexp_j [log w_j +
# log N(x; g(z_j), sigma^2 I)], the nodes z_j placed on each point's posterior.
x_test = torch.as_tensor(X_test)
n_features = X.shape[1]
# The mixing network in torch (the rule's Newton steps differentiate it).
activations = {"tanh": torch.tanh, "identity": lambda h: h}
layers = [
    (torch.as_tensor(W), torch.as_tensor(b), activations[name])
    for W, b, name in zip(mixing.coefs_, mixing.intercepts_, mixing.activations_)
]


def true_log_integrand(z):
    """log N(x_i; g(z_ij), sigma^2 I) for nodes z of shape (B or 1, K, 2)."""
    means = z
    for W, b, activation in layers:
        means = activation(means @ W + b)
    sq_dist = ((x_test[:, None] - means) ** 2).sum(-1)
    return -0.5 * (
        sq_dist / noise_std**2 + n_features * np.log(2 * np.pi * noise_std**2)
    )


rule = Adaptive().rule(
    2, 64, log_integrand=true_log_integrand, generator=torch.Generator().manual_seed(0)
)
truth = float(
    torch.logsumexp(rule.log_weights + true_log_integrand(rule.nodes), 1).mean()
)

scores = {
    "true model": truth,
    "MLE log p(x)": mle.score(X_test),
    "VAE log p(x)\n(importance weighted)": vae.log_likelihood(X_test).mean(),
    "VAE ELBO": vae.score(X_test),
}
for name, value in scores.items():
    print(f"{name.replace(chr(10), ' '):38s} {value:8.3f} nats per sample")
print(
    f"noise variance: true {noise_std**2:.4f}, MLE {mle.noise_variance_:.4f}, "
    f"VAE {vae.noise_variance_:.4f}"
)
Z_mle, Z_vae = mle.transform(X_test), vae.transform(X_test)
print(
    f"MCC with the sources: MLE {mean_correlation_coefficient(S_test, Z_mle):.3f}, "
    f"VAE {mean_correlation_coefficient(S_test, Z_vae):.3f}"
)

# %%
# Held-out scores on one scale (higher is better), and the latent
# representations: the MLE's is the posterior mean E[z | x] computed from the
# same integration nodes as its likelihood, the VAE's the encoder mean. Both
# recover the sources up to a rotation, as the N(0, I) prior allows.
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
names = list(scores)
values = np.array([scores[name] for name in names])
axes[0].barh(
    names,
    values - values.min() + 0.2,
    left=values.min() - 0.2,
    color=["grey", "C0", "C1", "C1"],
)
axes[0].invert_yaxis()
axes[0].set(title="held-out score", xlabel="nats per sample")
for ax, Z, name in ((axes[1], Z_mle, "NonlinearICAMLE"), (axes[2], Z_vae, "VAEICA")):
    ax.scatter(Z[:, 0], Z[:, 1], c=S_test[:, 0], s=4, cmap="viridis")
    ax.set(title=f"{name}: E[z | x]", xlabel="z0", ylabel="z1")
fig.tight_layout()
plt.show()
