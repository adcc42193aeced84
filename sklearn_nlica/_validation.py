"""Parameter constraints shared by the public functions of the package.

The functions validate their parameters with scikit-learn's
:func:`~sklearn.utils._param_validation.validate_params`; this module holds
the one constraint scikit-learn lacks.
"""

# SPDX-License-Identifier: BSD-3-Clause

import numpy as np
from sklearn.utils._param_validation import Interval


class NotBoolInterval(Interval):
    """An interval constraint that also rejects ``True`` and ``False``.

    Python's ``bool`` is a subclass of ``int``, so scikit-learn's
    ``Interval(Integral, 1, None, closed="left")`` accepts ``True`` as the
    int 1 (and ``Interval(Real, ...)`` as the float 1.0). A flag passed
    where a count or a scale is expected is a mistake, and is reported as
    one. Same arguments as ``Interval``.
    """

    def is_satisfied_by(self, val):
        return not isinstance(val, bool) and super().is_satisfied_by(val)


def safe_magnitude(dtype):
    """The largest |value| that computations in ``dtype`` take without overflow.

    The fourth root of the type's largest number (about 4e9 in float32 and
    1e77 in float64): the models square the data (distances, variances) and
    sum or multiply such squares again, which stays finite from there.
    """
    return float(np.finfo(dtype).max) ** 0.25


def check_finite_range(X, dtype, name="X"):
    """Raise a ValueError if ``X`` has values beyond ``safe_magnitude(dtype)``."""
    limit = safe_magnitude(dtype)
    peak = float(np.max(np.abs(X))) if np.size(X) else 0.0
    if peak > limit:
        raise ValueError(
            f"{name} has values up to {peak:.3g} in absolute value, beyond the "
            f"range in which {np.dtype(dtype).name} computations stay finite "
            f"(+-{limit:.3g}). Rescale {name}, e.g. with StandardScaler."
        )
    return X


def check_noise_variance(value, dtype, floor):
    """Raise a ValueError if a fixed noise variance is outside what ``dtype``
    computations represent (or below the variance ``floor``)."""
    limit = safe_magnitude(dtype) ** 2
    if not floor <= value <= limit:
        raise ValueError(
            f"noise_variance={value:g} is outside [{floor:g}, {limit:.3g}], the "
            f"variances that {np.dtype(dtype).name} computations represent; "
            "use a value on the scale of the data's variance, or None to learn it."
        )
