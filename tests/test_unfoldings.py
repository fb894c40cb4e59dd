"""Property tests of the unfoldings of the Conv1D, SeparableConv2D (pointwise) and Conv2DTranspose kernels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfcompress import unfoldings as uf

PROPERTY = settings(max_examples=30, deadline=None, database=None)

# (kind, scheme) -> (factors, compose, kernel ndim)
SCHEMES = {
    ("conv1d", "weight_svd"): (uf.conv1d_weight_svd_factors, uf.conv1d_weight_svd_compose),
    ("conv1d", "spatial_svd"): (uf.conv1d_spatial_svd_factors, uf.conv1d_spatial_svd_compose),
    ("separable_conv2d", "weight_svd"): (uf.pointwise_svd_factors, uf.pointwise_svd_compose),
    ("conv2d_transpose", "weight_svd"): (uf.transpose_weight_svd_factors, uf.transpose_weight_svd_compose),
}


@st.composite
def kernels(draw, kind: str):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    c, n = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    if kind == "conv1d":
        shape = (draw(st.integers(1, 5)), c, n)
    elif kind == "separable_conv2d":
        shape = (1, 1, c * draw(st.integers(1, 3)), n)
    else:  # (kh, kw, N, C)
        shape = (draw(st.integers(1, 4)), draw(st.integers(1, 4)), n, c)
    return rng.normal(size=shape)


def _direct_conv1d_weight(first, second):
    """Independent composition: W[t, c, n] = sum_r A[0, c, r] B[t, r, n]."""
    return np.einsum("cr,trn->tcn", first[0], second)


def _direct_conv1d_spatial(first, second):
    """W[t, c, n] = sum_r A[t, c, r] B[0, r, n]."""
    return np.einsum("tcr,rn->tcn", first, second[0])


def _direct_transpose(first, second):
    """W[i, j, n, c] = sum_r A[0, 0, c, r] B[i, j, n, r] (a transposed conv is linear in its input channels)."""
    return np.einsum("cr,ijnr->ijnc", first[0, 0], second)


def _direct_pointwise(first, second):
    return np.einsum("mr,rn->mn", first[0, 0], second[0, 0])[None, None]


DIRECT = {
    ("conv1d", "weight_svd"): _direct_conv1d_weight,
    ("conv1d", "spatial_svd"): _direct_conv1d_spatial,
    ("separable_conv2d", "weight_svd"): _direct_pointwise,
    ("conv2d_transpose", "weight_svd"): _direct_transpose,
}


@pytest.mark.parametrize("key", list(SCHEMES), ids=lambda k: f"{k[0]}-{k[1]}")
@PROPERTY
@given(data=st.data())
def test_fold_inverts_unfold(key, data):
    kind, scheme = key
    kernel = data.draw(kernels(kind))
    matrix = uf.unfold(kind, scheme, kernel)
    assert matrix.ndim == 2 and matrix.size == kernel.size
    np.testing.assert_array_equal(uf.fold(kind, scheme, matrix, kernel.shape), kernel)


@pytest.mark.parametrize("key", list(SCHEMES), ids=lambda k: f"{k[0]}-{k[1]}")
@PROPERTY
@given(data=st.data())
def test_factors_are_eckart_young_optimal_and_exact_at_full_rank(key, data):
    kind, scheme = key
    factors_fn, compose = SCHEMES[key]
    kernel = data.draw(kernels(kind))
    matrix = uf.unfold(kind, scheme, kernel)
    s = np.linalg.svd(matrix, compute_uv=False)  # independent of tfcompress's SVD
    full = min(matrix.shape)
    rank = data.draw(st.integers(1, full))
    first, second = factors_fn(kernel, rank)
    approx = compose(first, second)
    assert approx.shape == kernel.shape
    # the composition is the one the layers compute (an independent einsum) ...
    np.testing.assert_allclose(approx, DIRECT[key](first, second), atol=1e-10)
    # ... its unfolding has rank <= r, and its error is the norm of the discarded singular values (Eckart-Young)
    assert np.linalg.matrix_rank(uf.unfold(kind, scheme, approx), tol=1e-8 * max(s[0], 1e-12)) <= rank
    np.testing.assert_allclose(np.linalg.norm(kernel - approx), np.sqrt(np.sum(s[rank:] ** 2)), atol=1e-9)
    np.testing.assert_allclose(compose(*factors_fn(kernel, full)), kernel, atol=1e-9)


def test_factor_shapes():
    k = np.ones((5, 4, 6))
    assert [f.shape for f in uf.conv1d_weight_svd_factors(k, 3)] == [(1, 4, 3), (5, 3, 6)]
    assert [f.shape for f in uf.conv1d_spatial_svd_factors(k, 3)] == [(5, 4, 3), (1, 3, 6)]
    assert [f.shape for f in uf.pointwise_svd_factors(np.ones((1, 1, 8, 6)), 3)] == [(1, 1, 8, 3), (1, 1, 3, 6)]
    assert [f.shape for f in uf.transpose_weight_svd_factors(np.ones((3, 2, 6, 4)), 3)] == [(1, 1, 4, 3), (3, 2, 6, 3)]


def test_the_unfoldings_read_the_right_axes():
    k = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)  # (k, C, N)
    # weight SVD: row c holds every (tap, filter) weight reading input channel c
    np.testing.assert_array_equal(uf.conv1d_weight_svd_unfold(k)[1], k[:, 1, :].ravel())
    # spatial SVD: column n holds every (channel, tap) weight of filter n
    np.testing.assert_array_equal(uf.conv1d_spatial_svd_unfold(k)[:, 2], k[:, :, 2].T.ravel())
    t = np.arange(2 * 2 * 3 * 5, dtype=float).reshape(2, 2, 3, 5)  # (kh, kw, N, C)
    np.testing.assert_array_equal(uf.transpose_weight_svd_unfold(t)[4], t[..., 4].ravel())


def test_unknown_pairs_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"'tucker'.*'conv1d'"):
        uf.unfold("conv1d", "tucker", np.ones((3, 2, 2)))
    with pytest.raises(ValueError, match="dimensions"):
        uf.conv1d_weight_svd_unfold(np.ones((3, 3, 2, 2)))
    with pytest.raises(ValueError, match=r"\(1, 1, M, N\)"):
        uf.pointwise_svd_unfold(np.ones((3, 3, 2, 2)))
    assert set(uf.KINDS) == {"dense", "einsum_dense", "conv2d", "conv1d", "separable_conv2d", "conv2d_transpose"}
