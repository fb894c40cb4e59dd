"""Plain-numpy unfoldings of every decomposable kernel, per (layer kind, scheme).

:mod:`tfcompress.decompose` holds the ``Conv2D`` unfoldings (the SVD itself is :mod:`tfcompress.truncated_svd`);
this module adds the kernels of the other convolutions and one table that maps a
``(kind, scheme)`` pair to its unfolding, so callers (the greedy search, the
decomposed layers) never branch on layer types. Nothing here knows about Keras.
Kernels follow the TensorFlow layouts:

=====================  ========================  ==============================  ===========================
kind                   kernel                    scheme: unfolding               factor kernels
=====================  ========================  ==============================  ===========================
``conv1d``             ``(k, C, N)``             weight SVD: ``(C, k*N)``        1-wide ``C -> r``, k-wide
                                                                                 ``r -> N``
``conv1d``             ``(k, C, N)``             spatial SVD: ``(C*k, N)``       k-wide ``C -> r``, 1-wide
                                                                                 ``r -> N``
``separable_conv2d``   pointwise ``(1,1,M,N)``   weight SVD: ``(M, N)``          1x1 ``M -> r``, 1x1 ``r -> N``
                       (``M = C * depth_mult``)
``conv2d_transpose``   ``(kh, kw, N, C)``        weight SVD: ``(C, kh*kw*N)``    1x1 ``C -> r``, transposed
                                                                                 ``kh x kw`` ``r -> N``
=====================  ========================  ==============================  ===========================

**Why the 1-D spatial SVD is (k-wide, then 1-wide).** A ``Conv1D`` is a ``Conv2D``
whose kernel is ``k x 1`` on an ``L x 1`` image. The spatial SVD of a ``kh x kw``
kernel splits it into a ``kh x 1`` and a ``1 x kw`` convolution through the
``(C*kh, N*kw)`` unfolding; with ``kw = 1`` that is exactly the ``(C*k, N)``
unfolding here: a ``k``-wide convolution ``C -> r`` (with the original strides,
dilation and padding) followed by a pointwise ``r -> N``. It is the mirror image of
weight SVD (pointwise first, ``(C, k*N)``): with one spatial axis there is no second
axis to move half of the kernel to, so the two schemes differ only in which side of
the convolution carries the spatial taps. Spatial SVD pays off when ``N`` is large
against ``C*k``; weight SVD when ``C`` is large against ``k*N``.

The literal alternative, splitting the ``k`` taps themselves as ``k = a*b`` (an
``a``-tap convolution followed by a ``b``-tap one dilated by ``a``), was rejected: it
is exact only for such factorable ``k`` (not the common 3, 5, 7), the first stage
must run at stride 1 over the whole input (so strided layers get more expensive)
and TensorFlow cannot combine the second stage's dilation with a stride, and
``same``/``causal`` padding do not split into per-stage paddings.

By Eckart-Young each truncated SVD gives the Frobenius-optimal rank-``r`` factors:
``||W - W_r||`` equals the norm of the discarded singular values.

Example:
    >>> import numpy as np
    >>> kernel = np.random.default_rng(0).normal(size=(5, 4, 6))      # Conv1D (k, C, N)
    >>> first, second = conv1d_spatial_svd_factors(kernel, rank=6)     # full rank: exact
    >>> np.allclose(conv1d_spatial_svd_compose(first, second), kernel)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import decompose
from .decompose import TruncatedSVD
from .einsum_unfold import einsum_fold, einsum_unfold

__all__ = [
    "KINDS",
    "unfold",
    "fold",
    "conv1d_weight_svd_unfold",
    "conv1d_weight_svd_fold",
    "conv1d_weight_svd_factors",
    "conv1d_weight_svd_compose",
    "conv1d_spatial_svd_unfold",
    "conv1d_spatial_svd_fold",
    "conv1d_spatial_svd_factors",
    "conv1d_spatial_svd_compose",
    "pointwise_svd_unfold",
    "pointwise_svd_fold",
    "pointwise_svd_factors",
    "pointwise_svd_compose",
    "transpose_weight_svd_unfold",
    "transpose_weight_svd_fold",
    "transpose_weight_svd_factors",
    "transpose_weight_svd_compose",
]


def _kernel(kernel: np.ndarray, ndim: int, what: str) -> np.ndarray:
    kernel = np.asarray(kernel)
    if kernel.ndim != ndim:
        raise ValueError(f"{what} expects a kernel with {ndim} dimensions, got shape {kernel.shape}.")
    if not np.issubdtype(kernel.dtype, np.floating):
        kernel = kernel.astype(np.float64)
    return kernel


# ---------------------------------------------------------------- Conv1D: the (k, 1) Conv2D view


def conv1d_weight_svd_unfold(kernel: np.ndarray) -> np.ndarray:
    """Unfold a ``(k, C, N)`` Conv1D kernel as the ``(C, k*N)`` matrix of weight SVD."""
    return decompose.weight_svd_unfold(_kernel(kernel, 3, "conv1d_weight_svd_unfold")[:, None])


def conv1d_weight_svd_fold(matrix: np.ndarray, kernel_shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`conv1d_weight_svd_unfold`."""
    k, c, n = kernel_shape
    return decompose.weight_svd_fold(matrix, (k, 1, c, n))[:, 0]


def conv1d_weight_svd_factors(
    kernel: np.ndarray, rank: int, svd: TruncatedSVD | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weight-SVD factors of a ``(k, C, N)`` kernel: a ``(1, C, r)`` kernel and a ``(k, r, N)`` kernel.

    Example:
        >>> first, second = conv1d_weight_svd_factors(np.ones((3, 4, 5)), 1)
        >>> first.shape, second.shape
        ((1, 4, 1), (3, 1, 5))
    """
    kernel = _kernel(kernel, 3, "conv1d_weight_svd_factors")
    first, second = decompose.weight_svd_factors(kernel[:, None], rank, svd)
    return first[0], second[:, 0]


def conv1d_weight_svd_compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The ``(k, C, N)`` kernel equivalent to the two Conv1D weight-SVD factor kernels."""
    return decompose.weight_svd_compose(np.asarray(first)[None], np.asarray(second)[:, None])[:, 0]


def conv1d_spatial_svd_unfold(kernel: np.ndarray) -> np.ndarray:
    """Unfold a ``(k, C, N)`` Conv1D kernel as the ``(C*k, N)`` matrix of spatial SVD."""
    return decompose.spatial_svd_unfold(_kernel(kernel, 3, "conv1d_spatial_svd_unfold")[:, None])


def conv1d_spatial_svd_fold(matrix: np.ndarray, kernel_shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`conv1d_spatial_svd_unfold`."""
    k, c, n = kernel_shape
    return decompose.spatial_svd_fold(matrix, (k, 1, c, n))[:, 0]


def conv1d_spatial_svd_factors(
    kernel: np.ndarray, rank: int, svd: TruncatedSVD | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Spatial-SVD factors of a ``(k, C, N)`` kernel: a ``(k, C, r)`` kernel and a ``(1, r, N)`` kernel.

    Example:
        >>> first, second = conv1d_spatial_svd_factors(np.ones((3, 4, 5)), 2)
        >>> first.shape, second.shape
        ((3, 4, 2), (1, 2, 5))
    """
    kernel = _kernel(kernel, 3, "conv1d_spatial_svd_factors")
    first, second = decompose.spatial_svd_factors(kernel[:, None], rank, svd)
    return first[:, 0], second[0]


def conv1d_spatial_svd_compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The ``(k, C, N)`` kernel equivalent to the two Conv1D spatial-SVD factor kernels."""
    return np.asarray(first) @ np.asarray(second)[0]  # (k, C, r) @ (r, N)


# ---------------------------------------------------------------- SeparableConv2D: the pointwise kernel


def pointwise_svd_unfold(kernel: np.ndarray) -> np.ndarray:
    """The ``(M, N)`` matrix of a ``(1, 1, M, N)`` pointwise kernel (``M = C * depth_multiplier``)."""
    kernel = _kernel(kernel, 4, "pointwise_svd_unfold")
    if kernel.shape[:2] != (1, 1):
        raise ValueError(f"pointwise_svd_unfold expects a (1, 1, M, N) kernel, got shape {kernel.shape}.")
    return kernel[0, 0]


def pointwise_svd_fold(matrix: np.ndarray, kernel_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`pointwise_svd_unfold`."""
    return np.asarray(matrix).reshape(kernel_shape)


def pointwise_svd_factors(
    kernel: np.ndarray, rank: int, svd: TruncatedSVD | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Factors of a ``(1, 1, M, N)`` pointwise kernel: ``(1, 1, M, r)`` and ``(1, 1, r, N)`` kernels.

    Example:
        >>> a, b = pointwise_svd_factors(np.ones((1, 1, 6, 4)), 2)
        >>> a.shape, b.shape
        ((1, 1, 6, 2), (1, 1, 2, 4))
    """
    matrix = pointwise_svd_unfold(kernel)
    left, right = (svd or TruncatedSVD.of(matrix)).factors(rank)
    return left[None, None], right[None, None]


def pointwise_svd_compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The ``(1, 1, M, N)`` pointwise kernel equivalent to the two 1x1 factor kernels."""
    return (np.asarray(first)[0, 0] @ np.asarray(second)[0, 0])[None, None]


# ---------------------------------------------------------------- Conv2DTranspose


def transpose_weight_svd_unfold(kernel: np.ndarray) -> np.ndarray:
    """Unfold a ``(kh, kw, N, C)`` Conv2DTranspose kernel (Keras stores its filters before its input channels)
    as the ``(C, kh*kw*N)`` matrix of weight SVD."""
    kernel = _kernel(kernel, 4, "transpose_weight_svd_unfold")
    return decompose.weight_svd_unfold(kernel.swapaxes(2, 3))


def transpose_weight_svd_fold(matrix: np.ndarray, kernel_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`transpose_weight_svd_unfold`."""
    kh, kw, n, c = kernel_shape
    return decompose.weight_svd_fold(matrix, (kh, kw, c, n)).swapaxes(2, 3)


def transpose_weight_svd_factors(
    kernel: np.ndarray, rank: int, svd: TruncatedSVD | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weight-SVD factors of a ``(kh, kw, N, C)`` transposed kernel: a ``(1, 1, C, r)`` convolution kernel and a
    ``(kh, kw, N, r)`` transposed-convolution kernel.

    A transposed convolution is linear in its input channels, so mixing the ``C``
    inputs down to ``r`` first (the 1x1 convolution) and then scattering the ``r``
    mixtures equals scattering with the composed kernel.

    Example:
        >>> first, second = transpose_weight_svd_factors(np.ones((3, 3, 5, 4)), 1)
        >>> first.shape, second.shape
        ((1, 1, 4, 1), (3, 3, 5, 1))
    """
    kernel = _kernel(kernel, 4, "transpose_weight_svd_factors")
    if svd is None:
        svd = TruncatedSVD.of(transpose_weight_svd_unfold(kernel))
    first, second = decompose.weight_svd_factors(kernel.swapaxes(2, 3), rank, svd)
    return first, second.swapaxes(2, 3)


def transpose_weight_svd_compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The ``(kh, kw, N, C)`` transposed kernel equivalent to the two factor kernels."""
    return decompose.weight_svd_compose(first, np.asarray(second).swapaxes(2, 3)).swapaxes(2, 3)


# ---------------------------------------------------------------- one table for every kind


def _identity(matrix: np.ndarray) -> np.ndarray:
    return np.asarray(matrix)


def _identity_fold(matrix: np.ndarray, kernel_shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(matrix).reshape(kernel_shape)


_TABLE: dict[tuple[str, str], tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]] = {
    ("dense", "svd"): (_identity, _identity_fold),
    ("conv2d", "weight_svd"): (decompose.weight_svd_unfold, decompose.weight_svd_fold),
    ("conv2d", "spatial_svd"): (decompose.spatial_svd_unfold, decompose.spatial_svd_fold),
    ("conv1d", "weight_svd"): (conv1d_weight_svd_unfold, conv1d_weight_svd_fold),
    ("conv1d", "spatial_svd"): (conv1d_spatial_svd_unfold, conv1d_spatial_svd_fold),
    ("separable_conv2d", "weight_svd"): (pointwise_svd_unfold, pointwise_svd_fold),
    ("conv2d_transpose", "weight_svd"): (transpose_weight_svd_unfold, transpose_weight_svd_fold),
}

#: the layer kinds, each with the SVD schemes it can be unfolded for (Tucker-2 of ``conv2d`` is not an unfolding)
KINDS: dict[str, tuple[str, ...]] = {}
for _kind, _scheme in _TABLE:
    KINDS.setdefault(_kind, ())
    KINDS[_kind] += (_scheme,)


KINDS["einsum_dense"] = ("svd",)  # unfolded per its equation (tfcompress.einsum_unfold), not by a table entry


def _entry(kind: str, scheme: str) -> tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]:
    try:
        return _TABLE[(kind, scheme)]
    except KeyError:
        raise ValueError(
            f"no {scheme!r} unfolding for a {kind!r} kernel; {kind!r} takes {list(KINDS.get(kind, ()))}."
        ) from None


def _einsum(kind: str, scheme: str, equation: str | None) -> bool:
    if kind != "einsum_dense":
        return False
    if scheme not in ("svd", "weight_svd", "spatial_svd") or not equation:
        raise ValueError(
            f"an 'einsum_dense' kernel unfolds for 'svd' with its equation (got {scheme!r}, {equation!r})."
        )
    return True


def unfold(kind: str, scheme: str, kernel: np.ndarray, equation: str | None = None) -> np.ndarray:
    """The matrix whose truncated SVD gives the ``scheme`` factors of a ``kind`` layer's kernel (an
    ``"einsum_dense"`` kernel needs its ``equation``).

    Example:
        >>> unfold("conv2d_transpose", "weight_svd", np.zeros((3, 3, 8, 4))).shape
        (4, 72)
        >>> unfold("einsum_dense", "svd", np.zeros((2, 4, 16)), equation="abcd,cde->abe").shape
        (8, 16)
    """
    if _einsum(kind, scheme, equation):
        return einsum_unfold(kernel, equation)
    return _entry(kind, scheme)[0](kernel)


def fold(
    kind: str, scheme: str, matrix: np.ndarray, kernel_shape: tuple[int, ...], equation: str | None = None
) -> np.ndarray:
    """Inverse of :func:`unfold`: the kernel of shape ``kernel_shape`` whose unfolding is ``matrix``.

    Example:
        >>> k = np.arange(24.0).reshape(2, 3, 4)
        >>> np.array_equal(fold("conv1d", "spatial_svd", unfold("conv1d", "spatial_svd", k), k.shape), k)
        True
    """
    if _einsum(kind, scheme, equation):
        return einsum_fold(matrix, equation, tuple(kernel_shape))
    return _entry(kind, scheme)[1](matrix, tuple(kernel_shape))
