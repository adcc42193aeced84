"""The two generators: stationary Gaussian sources under a random MLP, and
segment-wise nonstationary sources under a random invertible MLP."""

# SPDX-License-Identifier: BSD-3-Clause

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions, validate_params

from .._validation import NotBoolInterval
from ._mixing import MixingMLP, well_conditioned_matrix

_ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "identity")

# The leaky ReLU of make_nonlinear_ica: torch.nn.LeakyReLU's default negative
# slope, kept so that the data of every benchmark and experiment stay as they
# are. It is not the slope of the estimators' decoders (_modules.
# LEAKY_RELU_SLOPE = 0.2, a modelling choice that keeps networks well
# conditioned and invertible): at equal width the two slopes give different
# function classes, so a decoder does not contain this mixing as such. It
# approximates it, and with twice the hidden units and a linear layer after
# them represents it exactly, since for slopes a and b
# leaky_a(h) = ((1 - a b) leaky_b(h) + (b - a) leaky_b(-h)) / (1 - b^2).
_LEAKY_RELU_SLOPE = 0.01


def _check_range(name, value, positive=False):
    # A pair of finite numbers in increasing order, which the parameter
    # constraints (one value at a time) cannot express.
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high); got {value!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high) and low <= high) or (
        positive and low <= 0
    ):
        raise ValueError(
            f"{name} must be a finite pair with low <= high"
            + (" and low > 0" if positive else "")
            + f"; got {value!r}."
        )
    return low, high


_COUNT = NotBoolInterval(Integral, 1, None, closed="left")
_STD = NotBoolInterval(Real, 0, None, closed="left")


@validate_params(
    {
        "n_samples": [_COUNT],
        "n_components": [_COUNT],
        "n_features": [_COUNT],
        "activation": [StrOptions(set(_ACTIVATIONS))],
        "noise_std": [_STD],
        "hidden_size": [_COUNT, None],
        "random_state": ["random_state"],
        "return_mixing": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def make_nonlinear_ica(
    n_samples=1000,
    n_components=2,
    n_features=20,
    *,
    activation="leaky_relu",
    noise_std=1.0,
    hidden_size=None,
    random_state=None,
    return_mixing=False,
):
    """Generate observations of the nonlinear ICA model with Gaussian sources.

    Standard normal sources are mapped through a random multilayer
    perceptron and observed with isotropic Gaussian noise::

        S ~ N(0, I_m)                      (n_samples, n_components)
        X = f(S) + noise_std * N(0, I_n)   (n_samples, n_features)

    with ``f`` a random MLP, drawn once:

    - ``hidden_size=None`` (the default): one layer followed by the
      activation, ``f(s) = activation(s @ W + b)``, W of shape
      (n_components, n_features);
    - ``hidden_size=h``: one hidden layer of width ``h`` and a linear
      output layer, ``f(s) = activation(s @ W1 + b1) @ W2``.

    Weights are drawn as ``W ~ N(0, 1 / fan_in)`` entrywise, so that
    pre-activations have unit variance whatever the dimensions, and biases
    of the activated layer as ``b ~ U(-1, 1)``, which places the kinks of
    ReLU-type activations (and the inflection of sigmoid/tanh) inside the
    bulk of the data. The output layer has no bias.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of rows.

    n_components : int, default=2
        Dimension m of the sources.

    n_features : int, default=20
        Dimension n of the observations.

    activation : {"leaky_relu", "relu", "sigmoid", "tanh", "gelu", \
            "identity"}, default="leaky_relu"
        Nonlinearity of ``f``. ``"leaky_relu"`` has negative slope 0.01,
        the default of :class:`torch.nn.LeakyReLU` (see Notes);
        ``"gelu"`` is the exact GELU ``x * Phi(x)``; ``"identity"`` gives
        linear mixing, the model of probabilistic PCA.

    noise_std : float, default=1.0
        Standard deviation sigma of the isotropic Gaussian noise.

    hidden_size : int or None, default=None
        Width of the hidden layer; None for a single activated layer (see
        above).

    random_state : int, RandomState instance or None, default=None
        Determines the mixing, the sources and the noise. Pass an int for
        reproducible output. The mixing is drawn first, so it does not
        depend on ``n_samples``.

    return_mixing : bool, default=False
        If True, also return the mixing function ``f``.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        Observations.

    S : ndarray of shape (n_samples, n_components)
        The sources (latent variables).

    mixing : MixingMLP
        The function ``f``, a numpy callable: ``mixing(S)`` gives the
        noiseless observations, so ``X - mixing(S)`` is exactly the noise.
        Only returned if ``return_mixing=True``.

    See Also
    --------
    make_segmented_sources : Nonstationary sources with an auxiliary
        variable, under which nonlinear ICA is identifiable.

    Notes
    -----
    Gaussian sources are not identifiable: any rotation of ``S`` explains
    ``X`` equally well, and without further assumptions a nonlinear mixture
    of independent sources has infinitely many independent decompositions
    [1]_. These data suit comparisons of likelihoods and reconstructions;
    for source recovery use :func:`make_segmented_sources`.

    The leaky ReLU of the mixing has negative slope 0.01, while the decoders
    of the estimators in this package use 0.2, a modelling choice that
    keeps their networks well conditioned and invertible. The two slopes
    give different function classes at equal width, so a decoder with
    ``activation="leaky_relu"`` approximates this mixing but does not
    contain it as such; with twice the hidden units followed by a linear
    layer it can represent it exactly, because
    ``leaky_a(h) = ((1 - a*b) * leaky_b(h) + (b - a) * leaky_b(-h)) / (1 - b**2)``
    for slopes ``a`` and ``b``.

    References
    ----------
    .. [1] A. Hyvarinen and P. Pajunen, "Nonlinear independent component
       analysis: Existence and uniqueness results", Neural Networks 12(3),
       429-439, 1999.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_nlica.datasets import make_nonlinear_ica
    >>> X, S, f = make_nonlinear_ica(n_samples=500, n_components=2,
    ...                              n_features=20, activation="tanh",
    ...                              noise_std=0.1, random_state=0,
    ...                              return_mixing=True)
    >>> X.shape, S.shape
    ((500, 20), (500, 2))
    >>> round(float(np.std(X - f(S))), 1)
    0.1
    """
    rng = check_random_state(random_state)

    if hidden_size is None:
        W = rng.standard_normal((n_components, n_features)) / np.sqrt(n_components)
        b = rng.uniform(-1.0, 1.0, size=n_features)
        mixing = MixingMLP([W], [b], [activation], _LEAKY_RELU_SLOPE)
    else:
        W1 = rng.standard_normal((n_components, hidden_size)) / np.sqrt(n_components)
        b1 = rng.uniform(-1.0, 1.0, size=hidden_size)
        W2 = rng.standard_normal((hidden_size, n_features)) / np.sqrt(hidden_size)
        mixing = MixingMLP(
            [W1, W2],
            [b1, np.zeros(n_features)],
            [activation, "identity"],
            _LEAKY_RELU_SLOPE,
        )

    S = rng.standard_normal((n_samples, n_components))
    X = mixing(S)
    if noise_std > 0:
        X += noise_std * rng.standard_normal(X.shape)
    if return_mixing:
        return X, S, mixing
    return X, S


@validate_params(
    {
        "n_segments": [_COUNT],
        "n_per_segment": [_COUNT],
        "n_components": [_COUNT],
        "n_features": [_COUNT, None],
        "n_layers": [_COUNT],
        "noise_std": [_STD],
        "std_range": ["array-like"],
        "mean_range": ["array-like", None],
        "negative_slope": [NotBoolInterval(Real, 0, None, closed="neither")],
        "activation": [StrOptions({"leaky_relu", "xtanh"})],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "return_mixing": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def make_segmented_sources(
    n_segments=40,
    n_per_segment=250,
    n_components=5,
    n_features=None,
    *,
    n_layers=3,
    noise_std=0.1,
    std_range=(0.5, 3.0),
    mean_range=None,
    negative_slope=0.1,
    activation="leaky_relu",
    shuffle=False,
    random_state=None,
    return_mixing=False,
):
    """Generate nonstationary sources mixed by a random invertible MLP.

    The simulation of the identifiable VAE [1]_, after the segment-wise
    nonstationary sources of time-contrastive learning [2]_. The rows come
    in ``n_segments`` segments of ``n_per_segment`` rows; the segment index
    is the auxiliary variable ``u``. Within segment ``u`` the sources are
    independent Gaussians::

        S[i, j] ~ N(mean[u, j], std[u, j] ** 2)
        std[u, j] ~ U(std_range)            (drawn once per segment)
        mean[u, j] ~ U(mean_range), or 0 if mean_range is None

    so that the sources are independent given ``u`` but not Gaussian
    marginally. They are mixed by an MLP of ``n_layers`` layers::

        H_0 = S
        H_k = act(H_{k-1} @ A_k)            for k < n_layers
        X   = H_{n_layers - 1} @ A_{n_layers} + noise_std * N(0, I)

    with ``A_1`` of shape (n_components, n_features) and the others square.
    Each ``A_k`` has entries U(-1, 1), unit-norm columns, and is kept only if
    its condition number lies below the 25th percentile of such matrices,
    which makes the mixing invertible and well conditioned. ``n_layers=1``
    gives linear mixing.

    Parameters
    ----------
    n_segments : int, default=40
        Number of segments (values of the auxiliary variable).

    n_per_segment : int, default=250
        Number of rows in each segment.

    n_components : int, default=5
        Number of sources.

    n_features : int or None, default=None
        Number of observed features, at least ``n_components`` so that the
        mixing is injective; None means ``n_components``.

    n_layers : int, default=3
        Number of layers of the mixing MLP (the last one is linear).

    noise_std : float, default=0.1
        Standard deviation of the isotropic Gaussian sensor noise.

    std_range : tuple of float, default=(0.5, 3.0)
        Range of the uniform distribution of the per-segment standard
        deviations, as in the simulations of [1]_.

    mean_range : tuple of float or None, default=None
        Range of the uniform distribution of the per-segment means; None for
        zero means (only the variances change). The simulations of [1]_
        use (-5, 5) for their uncentred variant.

    negative_slope : float, default=0.1
        Slope of the leaky ReLU for negative inputs, or of the linear term
        of ``"xtanh"``; must be positive for the mixing to be invertible.
        The default 0.1 is the slope of the authors' released code for
        both activations (see Notes).

    activation : {"leaky_relu", "xtanh"}, default="leaky_relu"
        Nonlinearity ``act`` of the mixing: the leaky ReLU of the paper, or
        ``"xtanh"``, tanh(h) + negative_slope * h, which the authors'
        released code uses in its default configuration (with no sensor
        noise). Both are invertible; the leaky ReLU squeezes each negative
        half-space by 1 / negative_slope per layer, the smooth ``"xtanh"``
        only its tails.

    shuffle : bool, default=False
        Whether to shuffle the rows. Unshuffled, the segments are
        contiguous, as for a time series; note that unshuffled K-fold
        cross-validation then tests on segments absent from training.

    random_state : int, RandomState instance or None, default=None
        Determines the mixing, the segment parameters, the sources, the
        noise and the shuffling, drawn in that order. Pass an int for
        reproducible output.

    return_mixing : bool, default=False
        If True, also return the mixing function.

    Returns
    -------
    X : ndarray of shape (n_segments * n_per_segment, n_features)
        Observations.

    S : ndarray of shape (n_segments * n_per_segment, n_components)
        The sources.

    U : ndarray of shape (n_segments * n_per_segment,)
        Segment labels (ints from 0 to ``n_segments - 1``), the auxiliary
        variable; pass it as ``y`` to an identifiable VAE.

    mixing : MixingMLP
        The mixing function: ``mixing(S)`` gives the noiseless observations
        and ``mixing.inverse`` recovers ``S`` from them. Only returned if
        ``return_mixing=True``.

    See Also
    --------
    make_nonlinear_ica : Stationary Gaussian sources, no auxiliary variable.

    Notes
    -----
    The decoders of the estimators in this package use the leaky ReLU with
    negative slope 0.2, a modelling choice that keeps their networks well
    conditioned and invertible, and offer no ``"xtanh"``. A decoder
    therefore approximates this mixing rather than containing it as such
    (with twice the hidden units it can represent a leaky-ReLU mixing of
    another slope exactly, see :func:`make_nonlinear_ica`). Identifiability
    [1]_ concerns the sources, not the form of the mixing: it holds for any
    injective mixing.

    References
    ----------
    .. [1] I. Khemakhem, D. P. Kingma, R. P. Monti and A. Hyvarinen,
       "Variational autoencoders and nonlinear ICA: a unifying framework",
       AISTATS 2020.
    .. [2] A. Hyvarinen and H. Morioka, "Unsupervised feature extraction by
       time-contrastive learning and nonlinear ICA", NeurIPS 2016.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_nlica.datasets import make_segmented_sources
    >>> X, S, U, f = make_segmented_sources(n_segments=4, n_per_segment=100,
    ...                                     n_components=2, noise_std=0.0,
    ...                                     random_state=0, return_mixing=True)
    >>> X.shape, S.shape, U.shape
    ((400, 2), (400, 2), (400,))
    >>> np.unique(U)
    array([0, 1, 2, 3])
    >>> bool(np.allclose(f.inverse(X), S))
    True
    """
    if n_features is None:
        n_features = n_components
    if n_features < n_components:
        raise ValueError(
            f"n_features ({n_features}) must be >= n_components ({n_components}) "
            "for the mixing to be invertible."
        )
    std_low, std_high = _check_range("std_range", std_range, positive=True)
    if mean_range is not None:
        mean_low, mean_high = _check_range("mean_range", mean_range)
    rng = check_random_state(random_state)

    coefs = [well_conditioned_matrix(rng, n_components, n_features)]
    coefs += [
        well_conditioned_matrix(rng, n_features, n_features)
        for _ in range(n_layers - 1)
    ]
    mixing = MixingMLP(
        coefs,
        [np.zeros(n_features)] * n_layers,
        [activation] * (n_layers - 1) + ["identity"],
        negative_slope,
    )

    stds = rng.uniform(std_low, std_high, size=(n_segments, n_components))
    if mean_range is None:
        means = np.zeros((n_segments, n_components))
    else:
        means = rng.uniform(mean_low, mean_high, size=(n_segments, n_components))
    U = np.repeat(np.arange(n_segments), n_per_segment)
    S = rng.standard_normal((U.size, n_components)) * stds[U] + means[U]

    X = mixing(S)
    if noise_std > 0:
        X += noise_std * rng.standard_normal(X.shape)
    if shuffle:
        order = rng.permutation(U.size)
        X, S, U = X[order], S[order], U[order]
    if return_mixing:
        return X, S, U, mixing
    return X, S, U
