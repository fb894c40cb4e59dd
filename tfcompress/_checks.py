"""Small input checks shared by the package (plain Python and numpy: no TensorFlow import).

* numbers: ``np.float32(0.5)`` and ``np.int64(10)`` are numbers like ``0.5`` and ``10`` (booleans are not);
* arrays: a kernel, a matrix or a batch of activations with a NaN or an infinity is refused before any
  factorisation, with one line that says where (LAPACK would otherwise spin for ever on an infinity, or fail
  with "SVD did not converge" without naming the layer).

Example:
    >>> import numpy as np
    >>> is_real(np.float32(0.5)), is_int(np.int64(3)), is_int(True), is_real("1")
    (True, True, False, False)
    >>> check_finite(np.array([1.0, np.inf, np.nan]), "layer 'conv'")
    Traceback (most recent call last):
    ...
    ValueError: layer 'conv' holds 2 non-finite value(s) (1 NaN, 1 infinite; the first at index (1,)); nothing can be factorised from it: fix or retrain the weights first.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["is_real", "is_int", "check_finite"]


def is_real(value: Any) -> bool:
    """A real number (Python or numpy scalar), not a boolean."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def is_int(value: Any) -> bool:
    """An integer (Python or numpy scalar), not a boolean."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def check_finite(
    array: Any, what: str, advice: str = "nothing can be factorised from it: fix or retrain the weights first"
) -> None:
    """Raise ``ValueError`` naming ``what`` when ``array`` holds a NaN or an infinity (integer arrays pass)."""
    values = np.asarray(array)
    if not np.issubdtype(values.dtype, np.inexact):
        return
    finite = np.isfinite(values)
    if finite.all():
        return
    nan = int(np.count_nonzero(np.isnan(values)))
    bad = int(values.size - np.count_nonzero(finite))
    first = tuple(int(i) for i in np.argwhere(~finite)[0])
    raise ValueError(
        f"{what} holds {bad} non-finite value(s) ({nan} NaN, {bad - nan} infinite; the first at index {first}); "
        f"{advice}."
    )
