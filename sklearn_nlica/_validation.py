"""Parameter constraints shared by the public functions of the package.

The functions validate their parameters with scikit-learn's
:func:`~sklearn.utils._param_validation.validate_params`; this module holds
the one constraint scikit-learn lacks.
"""

# SPDX-License-Identifier: BSD-3-Clause

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
