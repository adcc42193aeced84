"""IdentifiableVAE: the KL formulas and prior densities against
torch.distributions, scikit-learn conformance, identifiability on small
segmented data (discrete and continuous u), the auxiliary variable's
validation, scoring and sampling with and without u, metadata routing, and
the command line."""

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch.callbacks import Callback
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from sklearn_nlica import VAEICA, IdentifiableVAE
from sklearn_nlica._cli import main
from sklearn_nlica._densities import (
    kl_diag_diag,
    kl_diag_laplace,
    posterior_log_prob,
    posterior_total_correlation,
)
from sklearn_nlica._nn import (
    FullCovarianceGaussianEncoder,
)
from sklearn_nlica.datasets import make_segmented_sources
from sklearn_nlica.metrics import mean_correlation_coefficient

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

FAST = {"max_iter": 4, "linear_warm_start": 2, "hidden_layer_sizes": (16,)}


def segmented(n_segments=10, n_per_segment=60, n_components=2, seed=0, **kwargs):
    return make_segmented_sources(
        n_segments, n_per_segment, n_components, random_state=seed, **kwargs
    )


@pytest.fixture(scope="module")
def small():
    X, S, U = segmented()
    model = IdentifiableVAE(2, random_state=0, **FAST).fit(X, U)
    return model, X, S, U


# ---- numerics -----------------------------------------------------------------

finite = st.floats(-3, 3, allow_nan=False)
positive = st.floats(0.05, 5, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, positive, finite, positive), min_size=1, max_size=6))
def test_kl_diag_diag_matches_torch(params):
    mq, vq, mp, vp = (torch.tensor(c, dtype=torch.float64) for c in zip(*params))
    expected = kl_divergence(Normal(mq, vq.sqrt()), Normal(mp, vp.sqrt())).sum(-1)
    torch.testing.assert_close(kl_diag_diag(mq, vq, mp, vp), expected)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(0, 10_000))
def test_full_covariance_kl_matches_torch(m, seed):
    # KL(N(mu, L L^T) || N(loc, diag v)) = KL of the marginals + q's total
    # correlation: the form the module uses.
    g = torch.Generator().manual_seed(seed)
    mean, loc = torch.randn(3, m, generator=g), torch.randn(3, m, generator=g)
    tril = torch.randn(3, m, m, generator=g).tril(-1) + torch.diag_embed(
        torch.rand(3, m, generator=g) + 0.2
    )
    variance = torch.rand(3, m, generator=g) + 0.1
    marginal = tril.square().sum(-1)
    ours = kl_diag_diag(mean, marginal, loc, variance) + posterior_total_correlation(
        tril
    )
    expected = kl_divergence(
        MultivariateNormal(mean, scale_tril=tril),
        MultivariateNormal(loc, torch.diag_embed(variance)),
    )
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "mq, vq, loc, scale",
    [(0.0, 1.0, 0.0, 1.0), (1.5, 0.3, -0.5, 2.0), (-2.0, 4.0, 1.0, 0.5)],
)
def test_kl_to_laplace_matches_quadrature(mq, vq, loc, scale):
    from scipy import integrate, stats

    q, p = stats.norm(mq, np.sqrt(vq)), stats.laplace(loc, scale)
    expected = integrate.quad(
        lambda z: q.pdf(z) * (q.logpdf(z) - p.logpdf(z)),
        -40,
        40,
        points=[loc],
        limit=200,
    )[0]
    ours = kl_diag_laplace(
        *(torch.tensor([[v]], dtype=torch.float64) for v in (mq, vq, loc, scale))
    )
    assert float(ours) == pytest.approx(expected, abs=1e-7)


def test_full_covariance_encoder_log_density():
    torch.manual_seed(0)
    encoder = FullCovarianceGaussianEncoder(3, 4, (8,), "tanh").double()
    with torch.no_grad():
        encoder.off_diagonal.weight.normal_()
    x = torch.randn(5, 3, dtype=torch.float64)
    mean, tril = encoder(x)
    assert torch.all(torch.diagonal(tril, dim1=-2, dim2=-1) > 0)
    z = torch.randn(5, 7, 4, dtype=torch.float64)
    expected = MultivariateNormal(
        mean.unsqueeze(1), scale_tril=tril.unsqueeze(1)
    ).log_prob(z)
    torch.testing.assert_close(posterior_log_prob(z, mean, tril), expected)


# ---- scikit-learn conformance -------------------------------------------------


@parametrize_with_checks([IdentifiableVAE(max_iter=5, linear_warm_start=2)])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# ---- identifiability ----------------------------------------------------------


def test_sources_recovered_better_than_by_a_vae():
    # Three sources, one leaky-ReLU layer, 20 segments, no noise: small enough
    # for CI (a few seconds). The VAE recovers a rotation of the sources at
    # best (MCC 0.65-0.77 over seeds here); the iVAE, given the segments,
    # 0.98-0.99 on this data draw over six model seeds, whitened or not
    # (0.92-0.96 on the plain ELBO, contrastive_weight=0, unwhitened).
    X, S, U = segmented(
        n_segments=20,
        n_per_segment=200,
        n_components=3,
        seed=1,
        n_layers=2,
        noise_std=0.0,
    )
    ivae = IdentifiableVAE(3, max_iter=30, batch_size=64, random_state=0).fit(X, U)
    vae = VAEICA(
        3, max_iter=30, learning_rate_init=1e-2, batch_size=64, random_state=0
    ).fit(X)
    mcc_ivae = mean_correlation_coefficient(S, ivae.transform(X))
    mcc_vae = mean_correlation_coefficient(S, vae.transform(X))
    assert mcc_ivae > 0.85
    assert mcc_ivae > mcc_vae + 0.15


def smooth_sources(n_samples=4000, n_components=3, seed=1):
    """Sources whose standard deviations drift smoothly with time t."""
    rng = np.random.RandomState(seed)
    t = np.linspace(0, 1, n_samples)
    freq = rng.uniform(0.5, 2, n_components)
    phase = rng.uniform(0, 2 * np.pi, n_components)
    std = np.exp(1.2 * np.sin(2 * np.pi * freq * t[:, None] + phase))
    S = rng.randn(n_samples, n_components) * std
    _, _, _, mixing = segmented(
        n_components=n_components, n_layers=2, return_mixing=True, seed=seed
    )
    return mixing(S), S, t


def test_continuous_time_index():
    # u = the time index itself, a continuous covariate: the prior network
    # learns how each source's variance drifts with it.
    X, S, t = smooth_sources()
    ivae = IdentifiableVAE(
        3, max_iter=30, batch_size=64, random_state=0, prior_hidden_layer_sizes=(32, 32)
    ).fit(X, t)
    assert not ivae._encoding.discrete and ivae.n_aux_features_ == 1
    vae = VAEICA(
        3, max_iter=30, learning_rate_init=1e-2, batch_size=64, random_state=0
    ).fit(X)
    mcc_ivae = mean_correlation_coefficient(S, ivae.transform(X))
    assert mcc_ivae > 0.85
    assert mcc_ivae > mean_correlation_coefficient(S, vae.transform(X)) + 0.15
    assert np.isfinite(ivae.score(X, t)) and np.isfinite(ivae.score(X))
    Xs, Zs = ivae.sample(5, y=[0.5], random_state=0)
    assert Xs.shape == (5, 3) and Zs.shape == (5, 3)


# ---- the auxiliary variable ---------------------------------------------------


def test_u_is_required_and_validated(small):
    model, X, _, U = small
    with pytest.raises(ValueError, match="auxiliary variable"):
        IdentifiableVAE(**FAST).fit(X)
    with pytest.raises(ValueError, match="rows but X has"):
        IdentifiableVAE(**FAST).fit(X, U[:-1])
    with pytest.raises(ValueError, match="NaN"):
        IdentifiableVAE(**FAST).fit(X, np.where(U == 1, np.nan, U / 7))
    with pytest.raises(TypeError, match="sparse"):
        IdentifiableVAE(**FAST).fit(X, sp.csr_matrix(U[:, None]))
    with pytest.raises(ValueError, match="not seen during fit"):
        model.score(X[:3], [0, 1, 99])
    with pytest.raises(ValueError, match="rows but X has"):
        model.score_samples(X[:3], U[:2])
    with pytest.raises(ValueError, match="single column"):
        IdentifiableVAE(aux_type="discrete", **FAST).fit(X, np.c_[U, U])


@pytest.mark.parametrize(
    "u, discrete",
    [
        (lambda U: U, True),
        (lambda U: U.astype(float), True),
        (lambda U: np.array([f"seg{v}" for v in U]), True),
        (lambda U: np.arange(len(U)), False),  # a time index: one value per row
        (lambda U: U + 0.5 * np.sin(np.arange(len(U))), False),
        (lambda U: np.c_[U, U**2], False),
    ],
)
def test_aux_type_auto(u, discrete):
    X, _, U = segmented(n_segments=4, n_per_segment=30)
    model = IdentifiableVAE(max_iter=1, hidden_layer_sizes=(4,)).fit(X, u(U))
    assert model._encoding.discrete is discrete
    if discrete:
        assert len(model.classes_) == 4
        np.testing.assert_allclose(model.aux_class_weights_, 0.25)
    else:
        assert model.n_aux_features_ == np.atleast_2d(u(U).T).shape[0]
    assert model.score_samples(X, u(U)).shape == (len(X),)


def test_forcing_aux_type():
    X, _, U = segmented(n_segments=4, n_per_segment=30)
    continuous = IdentifiableVAE(aux_type="continuous", max_iter=1).fit(X, U)
    assert continuous.n_aux_features_ == 1
    with pytest.raises(ValueError, match="columns"):
        continuous.score(X, np.c_[U, U])
    discrete = IdentifiableVAE(aux_type="discrete", max_iter=1).fit(
        X, np.arange(len(X))
    )
    assert len(discrete.classes_) == len(X)


# ---- the fitted model ---------------------------------------------------------


def test_scores_and_likelihood(small):
    model, X, _, U = small
    elbo = model.score_samples(X, U)
    assert elbo.shape == (len(X),) and np.isfinite(elbo).all()
    assert model.score(X, U) == pytest.approx(elbo.mean())
    # Without u, the bound on log p(x) = log sum_u p(u) p(x | u) is at least the
    # term of the row's own u.
    marginal = model.score_samples(X)
    own = elbo + np.log(model.aux_class_weights_[np.searchsorted(model.classes_, U)])
    assert np.all(marginal >= own - 1e-9)
    # The importance-weighted estimate tightens the ELBO.
    iw = model.log_likelihood(X, U, n_samples=512)
    assert iw.mean() > elbo.mean()
    assert np.isfinite(model.log_likelihood(X[:20], n_samples=64)).all()
    # Deterministic, row by row.
    np.testing.assert_array_equal(model.score_samples(X[5:9], U[5:9]), elbo[5:9])


def test_whitened_fit_is_the_same_on_any_scale_and_scores_densities_of_x(small):
    model, X, _, U = small  # square: two sources in two features
    assert model.whitening_.shape == (2, 2)
    # c X + b whitens to the same rows: the same model, its densities of x
    # lower by log c per feature, its draws and decodings mapped back.
    c, b = 1000.0, 5.0
    scaled = IdentifiableVAE(2, random_state=0, **FAST).fit(c * X + b, U)
    Z = model.transform(X)
    np.testing.assert_allclose(scaled.transform(c * X + b), Z, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        scaled.score_samples(c * X + b, U),
        model.score_samples(X, U) - 2 * np.log(c),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        scaled.inverse_transform(Z), c * model.inverse_transform(Z) + b, rtol=1e-6
    )
    np.testing.assert_allclose(
        scaled.sample(5, random_state=0)[0],
        c * model.sample(5, random_state=0)[0] + b,
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "n_features, whiten, whitened",
    [(2, "auto", True), (3, "auto", False), (3, True, True), (2, False, False)],
)
def test_whiten_auto_whitens_square_data_only(n_features, whiten, whitened):
    X, _, U = segmented(n_features=n_features)
    params = {**FAST, "max_iter": 1}
    seen = DtypeSeen()
    model = IdentifiableVAE(
        2, whiten=whiten, random_state=0, callbacks=[("dtype", seen)], **params
    ).fit(X, U)
    assert (model.whitening_ is not None) == whitened
    # Whitened fits train in float32, raw ones in X's float64; both score
    # in float64.
    assert seen.dtypes == {torch.float32 if whitened else torch.float64}
    assert model.score_samples(X, U).dtype == np.float64
    assert np.isfinite(model.score_samples(X, U)).all()


class DtypeSeen(Callback):
    """Records the dtype of the module's parameters at every training batch."""

    def initialize(self):
        self.dtypes = set()
        return self

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        self.dtypes.add(next(net.module_.parameters()).dtype)


def test_sample_draws_from_the_conditional_prior(small):
    model, *_ = small
    label = model.classes_[3]
    X_new, Z_new = model.sample(4000, y=label, random_state=0)
    assert X_new.shape == (4000, model.n_features_in_)
    with torch.no_grad():
        loc, variance = model.module_.prior(torch.tensor([3]))
    np.testing.assert_allclose(Z_new.mean(0), loc[0].numpy(), atol=0.15)
    np.testing.assert_allclose(Z_new.var(0), variance[0].numpy(), rtol=0.15)
    np.testing.assert_array_equal(
        model.sample(3, y=[label] * 3, random_state=1)[0],
        model.sample(3, y=[label] * 3, random_state=1)[0],
    )
    assert model.sample(7)[1].shape == (7, 2)
    with pytest.raises(ValueError, match="rows but X has"):
        model.sample(3, y=[label, label])


def test_conditional_encoder_and_metadata_routing():
    X, _, U = segmented()
    model = IdentifiableVAE(2, conditional_encoder=True, random_state=0, **FAST)
    Z = model.fit_transform(X, U)
    np.testing.assert_array_equal(Z, model.transform(X, u=U))
    with pytest.raises(ValueError, match="u="):
        model.transform(X)
    with sklearn.config_context(enable_metadata_routing=True):
        est = IdentifiableVAE(2, conditional_encoder=True, random_state=0, **FAST)
        est.set_transform_request(u=True)
        pipe = make_pipeline(StandardScaler(), est).fit(X, U)
        assert pipe.transform(X, u=U).shape == (len(X), 2)


@pytest.mark.parametrize(
    "params",
    [
        {"prior": "variance"},
        {"prior": "laplace"},
        {"posterior_covariance": "diagonal"},
        {"kl_warmup": 2},
        {"learning_rate_schedule": "constant"},
        {"linear_warm_start": 0},
        {"noise_variance": 0.05},
        {"early_stopping": True},
        {"n_init": 2},
        {"max_grad_norm": None},
    ],
)
def test_options_train(params):
    X, _, U = segmented()
    untrained = IdentifiableVAE(
        learning_rate_init=1e-12, random_state=0, **{**FAST, "max_iter": 1, **params}
    ).fit(X, U)
    model = IdentifiableVAE(random_state=0, **{**FAST, "max_iter": 8, **params}).fit(
        X, U
    )
    assert np.isfinite(model.loss_curve_).all()
    assert model.score(X, U) > untrained.score(X, U)
    assert all(p.requires_grad for p in model.module_.parameters())
    if "noise_variance" in params:
        assert model.noise_variance_ == pytest.approx(params["noise_variance"])


def test_training_objective_adds_the_classifier_to_the_elbo(small):
    model, X, _, U = small
    module = model.module_
    x, u = (
        torch.as_tensor(X[:50]),
        torch.as_tensor(model._encoding.transform(U[:50], 50)),
    )
    assert module.contrastive_weight == model.contrastive_weight == 20.0
    module.train()  # the objective at the batch's optimal noise variance
    with torch.no_grad():
        torch.manual_seed(0)
        objective = module(x, u).objective
        module.contrastive_weight = 0.0
        torch.manual_seed(0)
        elbo = module(x, u).objective
        module.contrastive_weight = 20.0
        classifier = module.prior.log_posterior(
            module.encode(x)[0], u, *module.prior(u)
        )
    torch.testing.assert_close(objective, elbo + 20.0 * classifier)
    assert torch.all(classifier <= 0)
    # The score is the plain ELBO, whatever the training objective.
    plain = IdentifiableVAE(2, random_state=0, contrastive_weight=0, **FAST).fit(X, U)
    plain.module_.load_state_dict(module.state_dict())
    np.testing.assert_allclose(plain.score_samples(X, U), model.score_samples(X, U))


def test_reproducible_pickle_and_float32(small):
    model, X, _, U = small
    again = IdentifiableVAE(2, random_state=0, **FAST).fit(X, U)
    np.testing.assert_array_equal(model.transform(X), again.transform(X))
    loaded = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(loaded.score_samples(X, U), model.score_samples(X, U))
    m32 = IdentifiableVAE(2, random_state=0, **FAST).fit(X.astype(np.float32), U)
    assert m32.transform(X.astype(np.float32)).dtype == np.float32
    assert m32.sample(2, y=U[:2])[0].dtype == np.float32


def test_unfitted_and_bad_parameters():
    X, _, U = segmented(n_segments=3, n_per_segment=20)
    with pytest.raises(NotFittedError):
        IdentifiableVAE().transform(X)
    for params, match in [
        ({"prior": "cauchy"}, "prior"),
        ({"aux_type": "x"}, "aux_type"),
        ({"n_init": 0}, "n_init"),
        ({"prior_hidden_layer_sizes": (0,)}, "prior_hidden_layer_sizes"),
    ]:
        with pytest.raises(ValueError, match=match):
            IdentifiableVAE(max_iter=1, **params).fit(X, U + 0.5)


# ---- command line -------------------------------------------------------------


def test_cli_builtin_and_file(tmp_path, capsys):
    out = tmp_path / "z.csv"
    assert (
        main(
            [
                "ivae",
                "--max-iter",
                "2",
                "--n-samples",
                "400",
                "--n-segments",
                "8",
                "--n-features",
                "3",
                "-q",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "make_segmented_sources" in printed and "source recovery" in printed
    assert np.loadtxt(out, delimiter=",", skiprows=1).shape == (400, 2)

    X, _, U = segmented(n_segments=5, n_per_segment=30, n_components=2)
    data = tmp_path / "data.csv"
    np.savetxt(data, np.c_[X[:, :1], U, X[:, 1:]], delimiter=",")
    assert (
        main(
            [
                "ivae",
                str(data),
                "--aux-column",
                "1",
                "--max-iter",
                "2",
                "-q",
                "--output",
                str(tmp_path / "z.npy"),
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "z.npy").shape == (150, 2)
    np.save(tmp_path / "u.npy", U)
    np.savetxt(tmp_path / "x.csv", X, delimiter=",")
    assert (
        main(
            [
                "ivae",
                str(tmp_path / "x.csv"),
                "--aux",
                str(tmp_path / "u.npy"),
                "--max-iter",
                "2",
                "-q",
                "--output",
                str(tmp_path / "z2.csv"),
            ]
        )
        == 0
    )
    assert main(["ivae", str(tmp_path / "x.csv"), "--max-iter", "1", "-q"]) == 2


def test_log_likelihood_of_a_dataframe_warns_nothing(small):
    pd = pytest.importorskip("pandas")
    _, X, _, U = small
    df = pd.DataFrame(X, columns=["a", "b"])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*feature names")
        model = IdentifiableVAE(2, random_state=0, **FAST).fit(df, U)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with_u = model.log_likelihood(df, U, n_samples=64)
        without_u = model.log_likelihood(df, n_samples=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # X has no feature names
        expected = model.log_likelihood(X, U, n_samples=64)
    np.testing.assert_allclose(with_u, expected, rtol=1e-12)
    assert np.isfinite(without_u).all()
