"""Plain-numpy decomposition math: unfoldings, truncated SVD, HOSVD, reconstruction.

The SVD machinery lives in its own modules and is importable from here too: :class:`TruncatedSVD`
(:mod:`tfcompress.truncated_svd`), :class:`BackgroundSVDs` (:mod:`tfcompress.background_svd`), the scoped memo
:func:`reuse_svds` (:mod:`tfcompress.svd_memo`) and :func:`blas_single_thread` (:mod:`tfcompress.blas`).
This module holds the ``Dense``/``Conv2D`` unfoldings, their factor kernels and Tucker-2.

Nothing in this module knows about Keras. Kernels follow the TensorFlow layout:
a ``Conv2D`` kernel is ``(kh, kw, C, N)`` (input channels ``C``, filters ``N``) and a
``Dense`` kernel is ``(in, units)``.

Two unfoldings of a conv kernel are used:

* **weight SVD** reads the kernel as a ``(C, kh*kw*N)`` matrix. Its rank-``r``
  factors are a 1x1 convolution ``C -> r`` followed by a ``kh x kw`` convolution
  ``r -> N``.
* **spatial SVD** reads the kernel as a ``(C*kh, N*kw)`` matrix. Its rank-``r``
  factors are a ``kh x 1`` convolution ``C -> r`` followed by a ``1 x kw``
  convolution ``r -> N``.

By the Eckart-Young theorem the truncated SVD gives the rank-``r`` factors whose
product is closest to the kernel in Frobenius norm, and the error is exactly the
norm of the discarded singular values.

Example:
    >>> import numpy as np
    >>> kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 8))
    >>> a, b = spatial_svd_factors(kernel, rank=12)   # full rank: exact
    >>> np.allclose(spatial_svd_compose(a, b), kernel)
    True
"""

from __future__ import annotations

import numpy as np

from ._checks import check_finite
from .background_svd import BackgroundSVDs
from .blas import blas_single_thread
from .svd_memo import forget_svd as forget_svd
from .svd_memo import reuse_svds
from .svd_memo import serve_remembered_svds_once as serve_remembered_svds_once
from .truncated_svd import TruncatedSVD

__all__ = [
    "TruncatedSVD",
    "dense_svd_factors",
    "weight_svd_unfold",
    "weight_svd_fold",
    "weight_svd_factors",
    "weight_svd_compose",
    "spatial_svd_unfold",
    "spatial_svd_fold",
    "spatial_svd_factors",
    "spatial_svd_compose",
    "tucker2_factors",
    "tucker2_compose",
    "relative_residuals",
    "reuse_svds",
    "BackgroundSVDs",
]


def _check_kernel(kernel: np.ndarray, ndim: int, what: str) -> np.ndarray:
    kernel = np.asarray(kernel)
    if kernel.ndim != ndim:
        raise ValueError(f"{what} expects a kernel with {ndim} dimensions, got shape {kernel.shape}.")
    if not np.issubdtype(kernel.dtype, np.floating):
        kernel = kernel.astype(np.float64)
    check_finite(kernel, f"{what}: the kernel")
    return kernel


def relative_residuals(singular_values: np.ndarray) -> np.ndarray:
    """``r -> ||W - W_r|| / ||W||`` for ``r = 0..k`` given the singular values of ``W``.

    Entry ``r`` is the relative Frobenius error of the best rank-``r`` approximation,
    so entry 0 is 1 (for a non-zero matrix) and entry ``k`` is 0.

    Example:
        >>> relative_residuals(np.array([3.0, 4.0])).round(3).tolist()
        [1.0, 0.8, 0.0]
    """
    s2 = np.asarray(singular_values, dtype=np.float64) ** 2
    total = s2.sum()
    tail = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])
    if total == 0:
        return np.zeros_like(tail)
    return np.sqrt(np.maximum(tail, 0.0) / total)


# ---------------------------------------------------------------- dense


def dense_svd_factors(kernel: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-``r`` factors ``A (in, r)``, ``B (r, units)`` of a dense kernel, ``A @ B ~ kernel``.

    Example:
        >>> a, b = dense_svd_factors(np.eye(4), 2)
        >>> a.shape, b.shape
        ((4, 2), (2, 4))
    """
    kernel = _check_kernel(kernel, 2, "dense_svd_factors")
    return TruncatedSVD.of(kernel).factors(rank)


# ---------------------------------------------------------------- weight SVD


def weight_svd_unfold(kernel: np.ndarray) -> np.ndarray:
    """Unfold a ``(kh, kw, C, N)`` kernel as the ``(C, kh*kw*N)`` matrix of weight SVD."""
    kernel = _check_kernel(kernel, 4, "weight_svd_unfold")
    kh, kw, c, n = kernel.shape
    return kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * n)


def weight_svd_fold(matrix: np.ndarray, kernel_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`weight_svd_unfold`."""
    kh, kw, c, n = kernel_shape
    return np.asarray(matrix).reshape(c, kh, kw, n).transpose(1, 2, 0, 3)


def weight_svd_factors(kernel: np.ndarray, rank: int, svd: TruncatedSVD | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weight-SVD factors: a ``(1, 1, C, r)`` kernel and a ``(kh, kw, r, N)`` kernel.

    Convolving with the first (stride 1) and then the second (the original strides,
    padding and dilation) equals convolving with the best rank-``r`` approximation
    of the ``(C, kh*kw*N)`` unfolding.
    """
    kernel = _check_kernel(kernel, 4, "weight_svd_factors")
    kh, kw, c, n = kernel.shape
    svd = svd or TruncatedSVD.of(weight_svd_unfold(kernel))
    left, right = svd.factors(rank)
    first = left.reshape(1, 1, c, rank)
    second = right.reshape(rank, kh, kw, n).transpose(1, 2, 0, 3)
    return first, second


def weight_svd_compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The ``(kh, kw, C, N)`` kernel equivalent to the two weight-SVD factor kernels."""
    first = np.asarray(first)[0, 0]  # (C, r)
    return first @ np.asarray(second)  # (C, r) @ (kh, kw, r, N) -> (kh, kw, C, N)


# ---------------------------------------------------------------- spatial SVD


def spatial_svd_unfold(kernel: np.ndarray) -> np.ndarray:
    """Unfold a ``(kh, kw, C, N)`` kernel as the ``(C*kh, N*kw)`` matrix of spatial SVD."""
    kernel = _check_kernel(kernel, 4, "spatial_svd_unfold")
    kh, kw, c, n = kernel.shape
    return kernel.transpose(2, 0, 3, 1).reshape(c * kh, n * kw)


def spatial_svd_fold(matrix: np.ndarray, kernel_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`spatial_svd_unfold`."""
    kh, kw, c, n = kernel_shape
    return np.asarray(matrix).reshape(c, kh, n, kw).transpose(1, 3, 0, 2)


def spatial_svd_factors(
    kernel: np.ndarray, rank: int, svd: TruncatedSVD | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Spatial-SVD factors: a ``(kh, 1, C, r)`` kernel and a ``(1, kw, r, N)`` kernel."""
    kernel = _check_kernel(kernel, 4, "spatial_svd_factors")
    kh, kw, c, n = kernel.shape
    svd = svd or TruncatedSVD.of(spatial_svd_unfold(kernel))
    left, right = svd.factors(rank)  # (C*kh, r), (r, N*kw)
    first = left.reshape(c, kh, rank).transpose(1, 0, 2)[:, None]  # (kh, 1, C, r)
    second = right.reshape(rank, n, kw).transpose(2, 0, 1)[None]  # (1, kw, r, N)
    return first, second


def spatial_svd_compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The ``(kh, kw, C, N)`` kernel equivalent to the two spatial-SVD factor kernels."""
    vertical = np.asarray(first)[:, 0]  # (kh, C, r)
    horizontal = np.asarray(second)[0]  # (kw, r, N)
    return vertical[:, None] @ horizontal[None]  # (kh, 1, C, r) @ (1, kw, r, N) -> (kh, kw, C, N)


# ---------------------------------------------------------------- Tucker-2


def _leading_left_vectors(matrix: np.ndarray, rank: int) -> np.ndarray:
    """``rank`` orthonormal columns spanning the leading left singular subspace of ``matrix``.

    When ``rank`` exceeds the number of columns of ``matrix`` (e.g. a 1x1 conv with N > C), the thin SVD has too
    few vectors; they are completed to an orthonormal basis so the factor shapes always match ``rank``.
    """
    m, n = matrix.shape
    if m <= n and rank <= m:
        # the eigenvectors of the small (m, m) Gram matrix: only the left vectors are needed, so neither the right
        # ones (as large as the matrix) nor LAPACK's SVD workspace are made (issue 19: Tucker's scoring peak). The
        # leading subspace is what counts here (Tucker projects onto it), and its Gram eigenvectors match the SVD's
        # to rounding for the well-separated leading values; a cluster straddling the rank gives an equally good
        # basis.
        _, vectors = np.linalg.eigh(matrix @ matrix.T)
        return np.ascontiguousarray(vectors[:, ::-1][:, :rank])
    u = np.linalg.svd(matrix, full_matrices=False)[0]
    if u.shape[1] < rank:
        u = np.linalg.svd(u, full_matrices=True)[0]  # (m, m); its first columns span the same space as u
    return u[:, :rank]


def tucker2_factors(
    kernel: np.ndarray, ranks: tuple[int, int], hooi_iterations: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 factors of a ``(kh, kw, C, N)`` kernel over its two channel modes.

    Returns ``(u_in (1, 1, C, r_in), core (kh, kw, r_in, r_out), u_out (1, 1, r_out, N))``.
    The factor matrices come from the HOSVD (leading left singular vectors of the
    mode-C and mode-N unfoldings); ``hooi_iterations`` > 0 refines them by
    higher-order orthogonal iteration, which never increases the error.
    """
    kernel = _check_kernel(kernel, 4, "tucker2_factors")
    _, _, c, n = kernel.shape
    r_in, r_out = (int(r) for r in ranks)
    if not (1 <= r_in <= c and 1 <= r_out <= n):
        raise ValueError(f"Tucker-2 ranks must be within (1..{c}, 1..{n}), got {ranks}.")
    with blas_single_thread():
        return _tucker2(kernel.astype(np.float64), r_in, r_out, int(hooi_iterations))


def _project_in(kernel: np.ndarray, u_in: np.ndarray) -> np.ndarray:
    """Contract the C mode of a (kh, kw, C, N) kernel with u_in (C, r): (kh, kw, r, N)."""
    return u_in.T @ kernel


def _tucker2(k64: np.ndarray, r_in: int, r_out: int, hooi_iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, _, c, n = k64.shape
    u_in = _leading_left_vectors(k64.transpose(2, 0, 1, 3).reshape(c, -1), r_in)  # mode-C unfolding
    u_out = _leading_left_vectors(k64.transpose(3, 0, 1, 2).reshape(n, -1), r_out)  # mode-N unfolding
    for _ in range(hooi_iterations):
        proj_n = k64 @ u_out  # (kh, kw, C, r_out)
        u_in = _leading_left_vectors(proj_n.transpose(2, 0, 1, 3).reshape(c, -1), r_in)
        proj_c = _project_in(k64, u_in)  # (kh, kw, r_in, N)
        u_out = _leading_left_vectors(proj_c.transpose(3, 0, 1, 2).reshape(n, -1), r_out)
    core = _project_in(k64, u_in) @ u_out  # matrix products (BLAS), fast for large C and N
    return u_in[None, None], core, u_out.T[None, None]


def tucker2_compose(u_in: np.ndarray, core: np.ndarray, u_out: np.ndarray) -> np.ndarray:
    """The ``(kh, kw, C, N)`` kernel equivalent to the three Tucker-2 factor kernels."""
    expanded = np.asarray(core) @ np.asarray(u_out)[0, 0]  # (kh, kw, r_in, N)
    return np.asarray(u_in)[0, 0] @ expanded
