"""NonlinearICAMLE: conformance, gradients of the marginal likelihood module,
exactness and convergence on probabilistic PCA, solvers, and the API."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch.callbacks import Callback

from sklearn_nlica import NonlinearICAMLE
from sklearn_nlica import _mle as mle_module
from sklearn_nlica._densities import inverse_positive
from sklearn_nlica._em import latent_standardisation
from sklearn_nlica._marginal import NonPositiveIntegralError
from sklearn_nlica._models import MarginalLikelihood
from sklearn_nlica._nn import GaussianDecoder
from sklearn_nlica.integrators import Adaptive, get_integrator

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

LINEAR = dict(hidden_layer_sizes=(), activation="identity")


def ppca_data(n_samples=300, n_features=5, noise=0.5, n_components=2, seed=0):
    """Rows of x = W z + b + noise e, and the generating (W, b)."""
    rng = np.random.RandomState(seed)
    W = rng.randn(n_features, n_components)
    b = rng.randn(n_features)
    X = (
        rng.randn(n_samples, n_components) @ W.T
        + b
        + noise * rng.randn(n_samples, n_features)
    )
    return X, W, b


def closed_form(W, b, noise_variance, X):
    """log N(x; b, W W^T + sigma^2 I) and the posterior mean E[z | x]."""
    W, b, X = (torch.as_tensor(a, dtype=torch.float64) for a in (W, b, X))
    cov = W @ W.T + noise_variance * torch.eye(len(b), dtype=torch.float64)
    log_p = torch.distributions.MultivariateNormal(b, cov).log_prob(X)
    M = W.T @ W + noise_variance * torch.eye(W.shape[1], dtype=torch.float64)
    mean = torch.linalg.solve(M, W.T @ (X - b).T).T
    return log_p.numpy(), mean.numpy()


def ppca_mle_score(pca, n_train, X):
    """Held-out score of the exact maximum likelihood pPCA fit: PCA's, with its
    1 / (N - 1) variances rescaled to the likelihood's 1 / N."""
    cov = pca.get_covariance() * (n_train - 1) / n_train
    return float(multivariate_normal(pca.mean_, cov).logpdf(X).mean())


def linear_model(X, W, b, noise_variance, integrator="adaptive", n_nodes=64):
    """A fitted linear NonlinearICAMLE whose parameters are then set by hand."""
    mle = NonlinearICAMLE(
        W.shape[1], max_iter=1, integrator="gauss_hermite", random_state=0, **LINEAR
    ).fit(X)
    # Swap in the rule under test only now: a sparse grid may fail to train.
    mle.set_params(integrator=integrator, n_nodes=n_nodes)
    mle._integrator = clone(get_integrator(integrator))
    mle.module_.integrator, mle.module_.n_nodes = mle._integrator, n_nodes
    decoder = mle.module_.decoder
    with torch.no_grad():
        decoder.out.weight.copy_(torch.as_tensor(W))
        decoder.out.bias.copy_(torch.as_tensor(b))
        decoder.raw_noise_variance.fill_(inverse_positive(noise_variance))
    return mle


# ---------------------------------------------------------------------------
# scikit-learn conformance
# ---------------------------------------------------------------------------


# Few epochs, as scikit-learn caps max_iter for its own iterative estimators
# in these checks: they test the API on tiny random data, not convergence.
@parametrize_with_checks([NonlinearICAMLE(max_iter=20)])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# ---------------------------------------------------------------------------
# Gradients: analytic (Fisher's identity) = autograd = finite differences
# ---------------------------------------------------------------------------


def random_module(
    n_components,
    n_features,
    hidden,
    activation,
    integrator,
    n_nodes,
    noise_variance,
    seed,
):
    torch.manual_seed(seed)
    decoder = GaussianDecoder(
        n_components, n_features, hidden, activation, noise_variance=noise_variance
    ).double()
    with torch.no_grad():
        for p in decoder.parameters():
            if p.dim():
                p.add_(0.3 * torch.randn_like(p))
    return MarginalLikelihood(
        decoder, n_components, get_integrator(integrator), n_nodes
    )


def gradients(module, x, seed, mode):
    """Value and gradients of sum_i log p(x_i) through ``forward`` in ``mode``;
    the seed fixes the rule that ``forward`` draws."""
    module.gradient = mode
    module.zero_grad()
    torch.manual_seed(seed)
    value = module(x).sum()
    value.backward()
    return value.detach(), [p.grad.clone() for p in module.parameters()]


module_cases = dict(
    n_components=st.integers(1, 2),
    n_features=st.integers(1, 6),
    hidden=st.sampled_from([(), (3,), (4, 3)]),
    activation=st.sampled_from(["tanh", "identity", "gelu", "leaky_relu"]),
    integrator=st.sampled_from(["adaptive", "gauss_hermite", "qmc", "sparse_grid"]),
    n_nodes=st.sampled_from([9, 16, 64]),
    n_samples=st.integers(1, 6),
    noise_variance=st.floats(0.05, 3.0),
    spread=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**16),
)


def module_and_data(
    n_components,
    n_features,
    hidden,
    activation,
    integrator,
    n_nodes,
    n_samples,
    noise_variance,
    spread,
    seed,
):
    module = random_module(
        n_components,
        n_features,
        hidden,
        activation,
        integrator,
        n_nodes,
        noise_variance,
        seed,
    )
    with torch.no_grad():
        z = torch.randn(n_samples, n_components, dtype=torch.float64)
        x = module.mean(z) + spread * torch.randn(
            n_samples, n_features, dtype=torch.float64
        )
    return module, x


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**module_cases)
def test_analytic_gradient_equals_autograd(**case):
    module, x = module_and_data(**case)
    try:
        value_a, grad_a = gradients(module, x, case["seed"], "autograd")
    except NonPositiveIntegralError:
        assume(False)  # a sparse grid on a narrow posterior: no logarithm
    value_f, grad_f = gradients(module, x, case["seed"], "analytic")
    assert torch.equal(value_a, value_f)
    for a, f in zip(grad_a, grad_f):
        torch.testing.assert_close(
            f, a, rtol=1e-7, atol=1e-9 * (1 + float(a.abs().max()))
        )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**module_cases, mode=st.sampled_from(["autograd", "analytic"]))
def test_gradients_match_central_finite_differences(mode, **case):
    module, x = module_and_data(**case)
    seed = case["seed"]
    try:
        _, grads = gradients(module, x, seed, mode)
    except NonPositiveIntegralError:
        assume(False)
    torch.manual_seed(seed)
    with torch.no_grad():
        rule = module.rule(x)  # the rule forward drew, held fixed
    params = list(module.parameters())
    directions = [torch.randn_like(p) for p in params]
    directional = sum(float((g * d).sum()) for g, d in zip(grads, directions))

    def objective(step):
        with torch.no_grad():
            for p, d in zip(params, directions):
                p.add_(step * d)
            value = float(module.log_likelihood(x, rule).sum())
            for p, d in zip(params, directions):
                p.sub_(step * d)
        return value

    eps = 1e-5
    finite = (objective(eps) - objective(-eps)) / (2 * eps)
    assert finite == pytest.approx(directional, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("solver", ["adam", "alternating"])
def test_estimator_trains_identically_with_either_gradient(solver):
    X, _, _ = ppca_data(120, noise=0.3)
    fits = [
        NonlinearICAMLE(
            solver=solver,
            gradient=mode,
            hidden_layer_sizes=(8,),
            activation="tanh",
            max_iter=3,
            batch_size=40,
            learning_rate_init=1e-2,
            random_state=0,
        ).fit(X)
        for mode in ("autograd", "analytic")
    ]
    np.testing.assert_allclose(fits[0].loss_curve_, fits[1].loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(
        fits[0].score_samples(X), fits[1].score_samples(X), rtol=1e-7
    )
    assert fits[0].noise_variance_ == pytest.approx(fits[1].noise_variance_, rel=1e-7)


@pytest.mark.parametrize(
    "integrator, rtol",
    [
        (Adaptive(defensive=0.0), 1e-9),
        # The default's defensive prior nodes make it exact to ~1e-7 only.
        ("adaptive", 1e-4),
    ],
)
def test_linear_gradient_is_the_exact_likelihood_gradient(integrator, rtol):
    # On a linear decoder Gauss-Hermite nodes on the Laplace posterior are
    # exact, so the gradient (nodes held fixed) is the closed form's gradient.
    X, W, b = ppca_data(20, n_features=4, noise=0.3)
    mle = linear_model(X, W, b, 0.09, integrator)
    module = mle.module_
    torch.manual_seed(0)
    module(torch.as_tensor(X)).sum().backward()
    W_t = torch.tensor(W, requires_grad=True)
    b_t = torch.tensor(b, requires_grad=True)
    s2 = torch.tensor(0.09, dtype=torch.float64, requires_grad=True)
    cov = W_t @ W_t.T + s2 * torch.eye(4, dtype=torch.float64)
    torch.distributions.MultivariateNormal(b_t, cov).log_prob(
        torch.as_tensor(X)
    ).sum().backward()
    out = module.decoder.out
    torch.testing.assert_close(out.weight.grad, W_t.grad, rtol=rtol, atol=rtol)
    torch.testing.assert_close(out.bias.grad, b_t.grad, rtol=rtol, atol=rtol)
    # The raw parameter is softplus^-1(sigma^2): chain rule by sigma'(raw).
    raw = module.decoder.raw_noise_variance
    dvar_draw = torch.sigmoid(raw.detach())
    torch.testing.assert_close(raw.grad, s2.grad * dvar_draw, rtol=rtol, atol=rtol)


# ---------------------------------------------------------------------------
# Probabilistic PCA: exact likelihood and posterior mean at given parameters
# ---------------------------------------------------------------------------

# (rule, nodes, tolerance on the mean absolute error of log p in nats per
# sample and of E[z | x]), at about 3 times the measured error. Wide
# posteriors (n = 3, sigma = 1): every rule works, the prior rules least well
# on the outlying points, whose posteriors sit in the prior's tails.
WIDE_RULES = [
    ("adaptive", 64, 1e-6),
    ("gauss_hermite", 400, 5e-6),
    ("grid", 400, 1e-3),
    ("sparse_grid", 1000, 5e-3),
    ("qmc", 4096, 0.1),
    ("monte_carlo", 4096, 0.3),
]


@pytest.mark.parametrize("integrator, n_nodes, tol", WIDE_RULES)
def test_ppca_likelihood_and_posterior_mean_wide(integrator, n_nodes, tol):
    X, W, b = ppca_data(200, n_features=3, noise=1.0)
    W = 0.5 * W
    mle = linear_model(X, W, b, 1.0, integrator, n_nodes)
    log_p, mean = closed_form(W, b, 1.0, X)
    assert np.abs(mle.score_samples(X) - log_p).mean() < tol
    assert np.abs(mle.transform(X) - mean).mean() < tol


@pytest.mark.parametrize("n_features, noise", [(20, 0.5), (200, 0.1), (1000, 0.1)])
def test_ppca_likelihood_and_posterior_mean_narrow(n_features, noise):
    # n / sigma^2 up to 10^5: the posterior is far narrower than the prior and
    # only the default adaptive rule is accurate (prior rules miss by nats).
    X, W, b = ppca_data(50, n_features=n_features, noise=noise)
    mle = linear_model(X, W, b, noise**2)
    log_p, mean = closed_form(W, b, noise**2, X)
    np.testing.assert_allclose(mle.score_samples(X), log_p, atol=1e-5, rtol=0)
    np.testing.assert_allclose(mle.transform(X), mean, atol=1e-6, rtol=0)
    prior_rule = linear_model(X, W, b, noise**2, "gauss_hermite", 64)
    assert np.abs(prior_rule.score_samples(X) - log_p).mean() > 1.0


# ---------------------------------------------------------------------------
# Probabilistic PCA: fitting with the defaults reaches the maximum likelihood
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_features, noise", [(20, 0.5), (200, 0.1)])
def test_default_fit_matches_pca_on_held_out_data(n_features, noise):
    X, _, _ = ppca_data(700, n_features=n_features, noise=noise)
    X_train, X_test = X[:300], X[300:]
    mle = NonlinearICAMLE(2, random_state=0, **LINEAR).fit(X_train)
    pca = PCA(2).fit(X_train)
    assert abs(mle.score(X_test) - pca.score(X_test)) < 0.05
    assert abs(mle.score(X_test) - ppca_mle_score(pca, len(X_train), X_test)) < 0.01
    assert mle.noise_variance_ == pytest.approx(noise**2, rel=0.1)
    assert mle.n_iter_ < 50  # EM stops on its own


class _Rates(Callback):
    """Records Adam's learning rate at every training batch."""

    def __init__(self):
        self.rates = []

    def on_batch_begin(self, net, training=False, **kwargs):
        if training:
            self.rates.append(net.optimizer_.param_groups[0]["lr"])


def test_em_rate_decays_over_its_scheduled_batches(monkeypatch):
    monkeypatch.setattr(mle_module, "EM_SCHEDULE_BATCHES", 8)
    X, _, _ = ppca_data(400, n_features=4)
    rates = _Rates()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # it runs its plan
        mle = NonlinearICAMLE(
            2,
            hidden_layer_sizes=(4,),
            batch_size=100,
            callbacks=[("rates", rates)],
            random_state=0,
        ).fit(X)
    assert mle.n_iter_ == 2  # 8 batches of 100 rows
    assert rates.rates[0] == pytest.approx(mle.learning_rate_init)
    assert np.all(np.diff(rates.rates) < 0)
    assert rates.rates[-1] < 0.1 * mle.learning_rate_init
    with pytest.warns(ConvergenceWarning) as caught:
        NonlinearICAMLE(
            2,
            hidden_layer_sizes=(4,),
            batch_size=100,
            max_iter=1,
        ).fit(X)
    assert sum(w.category is ConvergenceWarning for w in caught) == 1


def test_em_runs_its_whole_schedule_whatever_the_training_loss(monkeypatch):
    # A tolerance no epoch can beat: only the schedule may end the fit,
    # unless a held-out likelihood is asked for.
    monkeypatch.setattr(mle_module, "EM_SCHEDULE_BATCHES", 16)
    X, _, _ = ppca_data(200, n_features=4)
    params = dict(
        hidden_layer_sizes=(4,),
        batch_size=100,
        n_iter_no_change=1,
        tol=1e6,
        random_state=0,
    )
    mle = NonlinearICAMLE(2, **params).fit(X)
    assert mle.n_iter_ == 8
    # A continued fit plans its schedule anew, and runs it all too.
    assert mle.set_params(warm_start=True, max_iter=6).fit(X).n_iter_ == 14
    held_out = NonlinearICAMLE(2, early_stopping=True, **params).fit(X)
    assert held_out.n_iter_ < 8


def test_exact_em_and_a_constant_schedule_keep_the_rate():
    X, _, _ = ppca_data(200, n_features=4)
    for params in (
        LINEAR,
        {
            "hidden_layer_sizes": (4,),
            "max_iter": 2,
            "learning_rate_schedule": "constant",
        },
    ):
        rates = _Rates()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mle = NonlinearICAMLE(
                2,
                batch_size=50,
                callbacks=[("rates", rates)],
                random_state=0,
                **params,
            ).fit(X)
        assert "lr_schedule" not in dict(mle.net_.callbacks_)
        assert set(rates.rates) == {mle.learning_rate_init}


def test_em_never_decreases_the_likelihood():
    # One batch per epoch makes each epoch one exact EM iteration (with the
    # parameter-expansion step), which cannot lower the likelihood.
    X, _, _ = ppca_data(150, n_features=20, noise=0.2)
    mle = NonlinearICAMLE(
        2, batch_size=150, max_iter=12, n_iter_no_change=12, random_state=0, **LINEAR
    ).fit(X)
    # Up to the default rule's ~1e-7 nat error (its defensive prior nodes).
    assert np.all(np.diff(mle.loss_curve_) <= 1e-6)


def test_standardise_latent_keeps_the_decoder_function():
    torch.manual_seed(0)
    for hidden in [(), (5,)]:
        decoder = GaussianDecoder(2, 4, hidden, "tanh").double()
        mean = torch.tensor([0.3, -1.0], dtype=torch.float64)
        cov = torch.tensor([[2.0, 0.5], [0.5, 0.7]], dtype=torch.float64)
        z = torch.randn(10, 2, dtype=torch.float64)
        eigval, eigvec = torch.linalg.eigh(cov)
        root = eigvec @ torch.diag(eigval.sqrt()) @ eigvec.T
        with torch.no_grad():
            before = decoder(mean + z @ root)[0]
            decoder.absorb_affine(mean, latent_standardisation(cov))
            torch.testing.assert_close(decoder(z)[0], before)


# ---------------------------------------------------------------------------
# Solvers and options
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"solver": "em"},
        {"solver": "em", "n_m_steps": 1},
        {"solver": "adam", "learning_rate_init": 1e-2},
        {"solver": "alternating", "learning_rate_init": 1e-2},
        {"solver": "em", "noise_variance": 0.5},
        {"solver": "adam", "noise_variance": 0.5, "learning_rate_init": 1e-2},
        {"solver": "em", "early_stopping": True},
        {"solver": "em", "integrator": "qmc", "n_nodes": 256},
    ],
)
def test_solvers_and_options_improve_the_likelihood(params):
    X, _, _ = ppca_data(200, noise=0.3)
    model = dict(
        hidden_layer_sizes=(16,), activation="tanh", batch_size=100, random_state=0
    )
    fixed = {
        k: v for k, v in params.items() if k not in ("solver", "learning_rate_init")
    }
    untrained = NonlinearICAMLE(
        max_iter=1, learning_rate_init=1e-12, solver="adam", **model, **fixed
    ).fit(X)
    mle = NonlinearICAMLE(max_iter=10, **model, **params).fit(X)
    assert np.isfinite(mle.loss_curve_).all()
    assert mle.score(X) > untrained.score(X) + 0.1
    if "noise_variance" in params:
        assert mle.noise_variance_ == pytest.approx(params["noise_variance"])
    if params.get("early_stopping"):
        assert len(mle.validation_scores_) == mle.n_iter_
        assert mle.best_validation_score_ == max(mle.validation_scores_)


def test_alternating_gives_sigma2_its_own_step_size():
    X, _, _ = ppca_data(200, noise=0.3)
    params = dict(
        solver="alternating",
        max_iter=10,
        batch_size=50,
        learning_rate_init=1e-2,
        random_state=0,
        **LINEAR,
    )
    frozen = NonlinearICAMLE(noise_learning_rate=1e-12, **params).fit(X)
    moving = NonlinearICAMLE(noise_learning_rate=1e-1, **params).fit(X)
    start = float(X.var(0, ddof=1).mean())
    assert frozen.noise_variance_ == pytest.approx(start, rel=1e-6)
    assert abs(moving.noise_variance_ - start) > 0.1 * start
    # The decoder moved in both.
    assert not np.allclose(frozen.inverse_transform(np.zeros((1, 2))), X.mean(0))


# ---------------------------------------------------------------------------
# Prediction API
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    X, _, _ = ppca_data(300, noise=0.3)
    return NonlinearICAMLE(
        hidden_layer_sizes=(16,), activation="tanh", max_iter=5, random_state=0
    ).fit(X), X


def test_score_samples_deterministic_and_row_independent(fitted):
    mle, X = fitted
    scores = mle.score_samples(X)
    np.testing.assert_array_equal(scores, mle.score_samples(X))
    order = np.random.RandomState(0).permutation(len(X))
    np.testing.assert_allclose(mle.score_samples(X[order]), scores[order], rtol=1e-12)
    np.testing.assert_allclose(mle.score_samples(X[:3]), scores[:3], rtol=1e-12)
    np.testing.assert_allclose(
        mle.transform(X[:3]), mle.transform(X)[:3], rtol=1e-10, atol=1e-12
    )
    assert mle.score(X) == pytest.approx(scores.mean())


def test_sample_and_inverse_transform(fitted):
    mle, X = fitted
    X_new, Z_new = mle.sample(2000, random_state=1)
    assert X_new.shape == (2000, X.shape[1]) and Z_new.shape == (2000, 2)
    np.testing.assert_array_equal(
        mle.sample(5, random_state=1)[0], mle.sample(5, random_state=1)[0]
    )
    residual = X_new - mle.inverse_transform(Z_new)
    assert residual.var() == pytest.approx(mle.noise_variance_, rel=0.1)
    # Samples from the model score like the training data.
    assert mle.score(X_new) == pytest.approx(mle.score(X), abs=0.3)


def test_float32_is_trained_and_returned_in_float32():
    X = ppca_data(200, noise=0.3)[0].astype(np.float32)
    mle = NonlinearICAMLE(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X)
    assert all(p.dtype == torch.float32 for p in mle.module_.parameters())
    assert mle.transform(X).dtype == np.float32
    assert mle.score_samples(X).dtype == np.float32
    assert mle.inverse_transform(mle.transform(X)).dtype == np.float32
    assert mle.sample(2)[0].dtype == np.float32
    mle64 = NonlinearICAMLE(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(
        X.astype(np.float64)
    )
    assert mle.score(X) == pytest.approx(mle64.score(X), abs=1e-3)


def test_float32_linear_fit_reaches_pca():
    X, _, _ = ppca_data(700, n_features=200, noise=0.1)
    X = X.astype(np.float32)
    mle = NonlinearICAMLE(2, random_state=0, **LINEAR).fit(X[:300])
    pca = PCA(2).fit(X[:300].astype(np.float64))
    exact = ppca_mle_score(pca, 300, X[300:].astype(np.float64))
    assert abs(mle.score(X[300:]) - exact) < 0.01


def test_reproducible_and_leaves_global_rng_alone():
    X, _, _ = ppca_data(200)
    state = torch.get_rng_state()
    params = dict(hidden_layer_sizes=(8,), max_iter=3)
    a = NonlinearICAMLE(random_state=3, **params).fit(X)
    assert torch.equal(torch.get_rng_state(), state)
    b = NonlinearICAMLE(random_state=3, **params).fit(X)
    c = NonlinearICAMLE(random_state=4, **params).fit(X)
    assert a.loss_curve_ == b.loss_curve_
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    np.testing.assert_array_equal(a.score_samples(X), b.score_samples(X))
    assert not np.array_equal(a.transform(X), c.transform(X))


def test_pickle_round_trip(fitted):
    mle, X = fitted
    loaded = pickle.loads(pickle.dumps(mle))
    np.testing.assert_array_equal(loaded.transform(X), mle.transform(X))
    np.testing.assert_array_equal(loaded.score_samples(X), mle.score_samples(X))
    loaded.set_params(max_iter=1).fit(X)  # and it can be refitted


def test_many_features_stay_finite():
    # The source report's p(x) underflowed beyond n = 15 features.
    rng = np.random.RandomState(0)
    X = rng.randn(40, 2) @ rng.randn(2, 10_000) + 0.1 * rng.randn(40, 10_000)
    mle = NonlinearICAMLE(2, max_iter=2, random_state=0, **LINEAR).fit(X)
    assert np.isfinite(mle.loss_curve_).all()
    scores = mle.score_samples(X)
    assert np.isfinite(scores).all() and scores.mean() > 0  # a density far above 1
    assert np.isfinite(mle.transform(X)).all()


@pytest.mark.parametrize(
    "params, match",
    [
        ({"solver": "newton"}, "solver"),
        ({"gradient": "numeric"}, "gradient"),
        ({"n_m_steps": 0}, "n_m_steps"),
        ({"noise_learning_rate": -1.0}, "noise_learning_rate"),
        ({"integrator": "simpson"}, "integrator"),
    ],
)
def test_invalid_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        NonlinearICAMLE(max_iter=1, **params).fit(ppca_data(20)[0])


def test_unfitted_and_wrong_width():
    X, _, _ = ppca_data(50)
    with pytest.raises(NotFittedError):
        NonlinearICAMLE().score(X)
    mle = NonlinearICAMLE(max_iter=1, hidden_layer_sizes=(4,)).fit(X)
    with pytest.raises(ValueError, match="features"):
        mle.score_samples(X[:, :3])
    with pytest.raises(ValueError, match="latent"):
        mle.inverse_transform(np.zeros((2, 3)))


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit_transform(load_digits().data)


@pytest.mark.parametrize("k", range(2, 9))
def test_default_rule_fits_load_digits(digits, k):
    # Above m = 3 the default adaptive base has positive weights: no
    # NonPositiveIntegralError on real data at the defaults.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mle = NonlinearICAMLE(n_components=k, max_iter=1, random_state=0)
        mle.fit(digits)
    assert np.isfinite(mle.score_samples(digits)).all()


def test_linear_decoder_matches_pca_on_load_digits(digits):
    mle = NonlinearICAMLE(
        n_components=3, hidden_layer_sizes=(), max_iter=30, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mle.fit(digits)
    assert mle.score(digits) == pytest.approx(
        PCA(3).fit(digits).score(digits), abs=0.01
    )
