"""Tests of the plain-numpy decomposition math in ``tfcompress.decompose``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfcompress import decompose as dc

# database=None: hypothesis must not write a .hypothesis directory into the working tree.
FAST = settings(max_examples=40, deadline=None, database=None)

kernel_shapes = st.tuples(
    st.integers(1, 5),  # kh
    st.integers(1, 5),  # kw
    st.integers(1, 8),  # C
    st.integers(1, 8),  # N
)
seeds = st.integers(0, 2**32 - 1)


def random_kernel(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def fro(a: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a).ravel()))


# ---------------------------------------------------------------- unfoldings


@FAST
@given(shape=kernel_shapes, seed=seeds)
def test_weight_unfold_layout_and_round_trip(shape, seed):
    kh, kw, c, n = shape
    kernel = random_kernel(shape, seed)
    matrix = dc.weight_svd_unfold(kernel)
    assert matrix.shape == (c, kh * kw * n)
    # row = input channel, column = (h, w, n) in C order
    h, w, ci, ni = (int(i) for i in np.random.default_rng(seed).integers(0, shape))
    assert matrix[ci, (h * kw + w) * n + ni] == kernel[h, w, ci, ni]
    np.testing.assert_array_equal(dc.weight_svd_fold(matrix, shape), kernel)
    other = random_kernel((c, kh * kw * n), seed + 1)
    np.testing.assert_array_equal(dc.weight_svd_unfold(dc.weight_svd_fold(other, shape)), other)


@FAST
@given(shape=kernel_shapes, seed=seeds)
def test_spatial_unfold_layout_and_round_trip(shape, seed):
    kh, kw, c, n = shape
    kernel = random_kernel(shape, seed)
    matrix = dc.spatial_svd_unfold(kernel)
    assert matrix.shape == (c * kh, n * kw)
    # row = (c, h), column = (n, w)
    h, w, ci, ni = (int(i) for i in np.random.default_rng(seed).integers(0, shape))
    assert matrix[ci * kh + h, ni * kw + w] == kernel[h, w, ci, ni]
    np.testing.assert_array_equal(dc.spatial_svd_fold(matrix, shape), kernel)
    other = random_kernel((c * kh, n * kw), seed + 1)
    np.testing.assert_array_equal(dc.spatial_svd_unfold(dc.spatial_svd_fold(other, shape)), other)


@pytest.mark.parametrize("func", [dc.weight_svd_unfold, dc.spatial_svd_unfold, dc.weight_svd_factors])
def test_unfold_rejects_non_4d_kernels(func):
    with pytest.raises(ValueError, match="4 dimensions"):
        func(np.zeros((3, 3, 4)), *([1] if func is dc.weight_svd_factors else []))


def test_integer_kernels_are_promoted_to_float():
    kernel = np.arange(2 * 2 * 3 * 4).reshape(2, 2, 3, 4)
    assert dc.weight_svd_unfold(kernel).dtype == np.float64
    first, second = dc.weight_svd_factors(kernel, 3)
    np.testing.assert_allclose(dc.weight_svd_compose(first, second), kernel, atol=1e-9)


# ---------------------------------------------------------------- full rank is exact


@FAST
@given(shape=kernel_shapes, seed=seeds)
def test_full_rank_factors_compose_back_exactly(shape, seed):
    kh, kw, c, n = shape
    kernel = random_kernel(shape, seed)

    first, second = dc.weight_svd_factors(kernel, min(c, kh * kw * n))
    assert first.shape[:2] == (1, 1) and first.shape[2] == c
    assert second.shape[:2] == (kh, kw) and second.shape[3] == n
    np.testing.assert_allclose(dc.weight_svd_compose(first, second), kernel, atol=1e-10)

    first, second = dc.spatial_svd_factors(kernel, min(c * kh, n * kw))
    assert first.shape[:3] == (kh, 1, c) and second.shape[0:2] == (1, kw) and second.shape[3] == n
    np.testing.assert_allclose(dc.spatial_svd_compose(first, second), kernel, atol=1e-10)

    for iterations in (0, 2):
        u_in, core, u_out = dc.tucker2_factors(kernel, (c, n), hooi_iterations=iterations)
        assert u_in.shape == (1, 1, c, c) and core.shape == (kh, kw, c, n) and u_out.shape == (1, 1, n, n)
        np.testing.assert_allclose(dc.tucker2_compose(u_in, core, u_out), kernel, atol=1e-10)


@FAST
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), seed=seeds)
def test_dense_full_rank_is_exact(rows, cols, seed):
    kernel = random_kernel((rows, cols), seed)
    a, b = dc.dense_svd_factors(kernel, min(rows, cols))
    assert a.shape == (rows, min(rows, cols)) and b.shape == (min(rows, cols), cols)
    np.testing.assert_allclose(a @ b, kernel, atol=1e-10)


# ---------------------------------------------------------------- Eckart-Young optimality


def _random_rank_r_error(matrix: np.ndarray, rank: int, rng: np.random.Generator) -> tuple[float, float]:
    """Errors of two naive rank-r approximations: random factors, and projection on a random basis."""
    m, n = matrix.shape
    random_product = rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n))
    basis, _ = np.linalg.qr(rng.normal(size=(m, rank)))
    projected = basis @ (basis.T @ matrix)  # best approximation within a random r-dimensional column space
    return fro(matrix - random_product), fro(matrix - projected)


@FAST
@given(shape=kernel_shapes, seed=seeds, rank_fraction=st.floats(0.0, 1.0))
@pytest.mark.parametrize("scheme", ["weight", "spatial"])
def test_truncated_factors_are_frobenius_optimal(scheme, shape, seed, rank_fraction):
    kernel = random_kernel(shape, seed)
    unfold, factors, compose = {
        "weight": (dc.weight_svd_unfold, dc.weight_svd_factors, dc.weight_svd_compose),
        "spatial": (dc.spatial_svd_unfold, dc.spatial_svd_factors, dc.spatial_svd_compose),
    }[scheme]
    matrix = unfold(kernel)
    singular_values = np.linalg.svd(matrix, compute_uv=False)
    rank = 1 + int(rank_fraction * (len(singular_values) - 1))

    approx = compose(*factors(kernel, rank))
    assert approx.shape == kernel.shape
    error = fro(matrix - unfold(approx))
    expected = float(np.sqrt(np.sum(singular_values[rank:] ** 2)))
    np.testing.assert_allclose(error, expected, rtol=1e-6, atol=1e-9 * fro(matrix))
    assert np.linalg.matrix_rank(unfold(approx), tol=1e-8 * fro(matrix)) <= rank
    # the error in kernel space is the same number (an unfolding is a permutation)
    np.testing.assert_allclose(fro(kernel - approx), error, rtol=1e-9, atol=1e-12)

    random_error, projected_error = _random_rank_r_error(matrix, rank, np.random.default_rng(seed))
    assert error <= random_error * (1 + 1e-9) + 1e-12
    assert error <= projected_error * (1 + 1e-9) + 1e-12


@FAST
@given(rows=st.integers(1, 10), cols=st.integers(1, 10), seed=seeds, rank_fraction=st.floats(0.0, 1.0))
def test_truncated_svd_object(rows, cols, seed, rank_fraction):
    matrix = random_kernel((rows, cols), seed)
    svd = dc.TruncatedSVD.of(matrix)
    assert svd.max_rank == min(rows, cols)
    assert np.all(np.diff(svd.s) <= 1e-12)
    rank = 1 + int(rank_fraction * (svd.max_rank - 1))
    left, right = svd.factors(rank)
    assert left.shape == (rows, rank) and right.shape == (rank, cols)
    np.testing.assert_allclose(left @ right, svd.reconstruct(rank), atol=1e-10)
    np.testing.assert_allclose(fro(matrix - svd.reconstruct(rank)), svd.residual(rank), rtol=1e-6, atol=1e-10)
    # balanced factors: both carry sqrt of the singular values
    np.testing.assert_allclose(np.linalg.norm(left, axis=0), np.linalg.norm(right, axis=1), rtol=1e-9)
    # the dense helper is the same SVD
    a, b = dc.dense_svd_factors(matrix, rank)
    np.testing.assert_allclose(a @ b, svd.reconstruct(rank), atol=1e-10)


def _check_is_an_svd(matrix: np.ndarray, svd: dc.TruncatedSVD, orthonormal_tol: float) -> None:
    k = min(matrix.shape)
    assert svd.u.shape == (matrix.shape[0], k) and svd.s.shape == (k,) and svd.vt.shape == (k, matrix.shape[1])
    np.testing.assert_allclose(svd.u.T @ svd.u, np.eye(k), atol=orthonormal_tol)
    np.testing.assert_allclose(svd.vt @ svd.vt.T, np.eye(k), atol=orthonormal_tol)
    reference = np.linalg.svd(matrix, compute_uv=False)
    np.testing.assert_allclose(svd.s, reference, rtol=0, atol=1e-10 * reference[0])
    np.testing.assert_allclose((svd.u * svd.s) @ svd.vt, matrix, atol=1e-9 * reference[0])


@settings(max_examples=8, deadline=None, database=None)
@given(rows=st.integers(128, 220), cols=st.integers(128, 220), seed=seeds, rank_fraction=st.floats(0.0, 1.0))
def test_large_matrices_take_the_gram_route_and_stay_an_exact_svd(rows, cols, seed, rank_fraction):
    """Large well-conditioned matrices (wide or tall) go through the Gram eigendecomposition: still an SVD."""
    rng = np.random.default_rng(seed)
    k = min(rows, cols)
    u, v = np.linalg.qr(rng.normal(size=(rows, k)))[0], np.linalg.qr(rng.normal(size=(cols, k)))[0]
    matrix = (u * np.sort(rng.uniform(0.01, 1.0, size=k))[::-1]) @ v.T  # condition at most 100
    assert dc.TruncatedSVD._from_gram(matrix) is not None, "this matrix must take the Gram route"
    svd = dc.TruncatedSVD.of(matrix)
    _check_is_an_svd(matrix, svd, orthonormal_tol=1e-9)
    # truncation is Frobenius-optimal: the error is the norm of the discarded singular values
    rank = 1 + int(rank_fraction * (svd.max_rank - 1))
    optimal = float(np.sqrt(np.sum(np.linalg.svd(matrix, compute_uv=False)[rank:] ** 2)))
    np.testing.assert_allclose(fro(matrix - svd.reconstruct(rank)), optimal, rtol=1e-8, atol=1e-9)
    left, right = svd.factors(rank)
    np.testing.assert_allclose(left @ right, svd.reconstruct(rank), atol=1e-9)


@settings(max_examples=8, deadline=None, database=None)
@given(
    rows=st.integers(128, 200),
    cols=st.integers(128, 200),
    seed=seeds,
    small=st.integers(1, 12),
    level=st.floats(-9.0, -4.5),
)
def test_a_few_tiny_singular_values_are_recomputed_and_the_gram_route_stays_an_exact_svd(
    rows, cols, seed, small, level
):
    """A few singular values below the Gram route's accuracy (say, near-dead filters) are recomputed directly."""
    rng = np.random.default_rng(seed)
    k = min(rows, cols)
    u, v = np.linalg.qr(rng.normal(size=(rows, k)))[0], np.linalg.qr(rng.normal(size=(cols, k)))[0]
    values = np.sort(rng.uniform(0.01, 1.0, size=k))[::-1]
    values[k - small :] = 10.0**level * rng.uniform(0.5, 1.0, size=small)  # between 1e-9 and 3e-5 of the largest
    matrix = (u * values) @ v.T
    assert dc.TruncatedSVD._from_gram(matrix) is not None, "a few tiny singular values keep the Gram route"
    svd = dc.TruncatedSVD.of(matrix)
    _check_is_an_svd(matrix, svd, orthonormal_tol=1e-9)
    assert np.all(np.diff(svd.s) <= 0)
    # the tiny ones come out right too (the squared Gram matrix alone would give them only to about 1e-8)
    np.testing.assert_allclose(svd.s[k - small :], np.sort(values)[::-1][k - small :], rtol=1e-5)
    for rank in (k - small, k - small // 2 or 1):
        optimal = float(np.sqrt(np.sum(np.sort(values)[::-1][rank:] ** 2)))
        np.testing.assert_allclose(fro(matrix - svd.reconstruct(rank)), optimal, rtol=1e-6, atol=1e-11)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: rng.normal(size=(200, 6)) @ rng.normal(size=(6, 150)),  # rank 6 of 150
        lambda rng: np.zeros((130, 140)),
        lambda rng: np.linalg.qr(rng.normal(size=(160, 160)))[0] * np.logspace(0, -7, 160),  # condition 1e7
        # one exactly zero singular value (a dead filter): too small even to recompute, so the direct SVD
        lambda rng: np.linalg.qr(rng.normal(size=(180, 140)))[0] * np.r_[np.linspace(1, 0.1, 139), 0.0],
    ],
    ids=["rank_deficient", "zero", "ill_conditioned", "one_zero_singular_value"],
)
def test_large_ill_conditioned_matrices_get_the_direct_svd(make):
    matrix = make(np.random.default_rng(3))
    assert dc.TruncatedSVD._from_gram(matrix) is None
    svd = dc.TruncatedSVD.of(matrix)
    assert np.all(np.isfinite(svd.u)) and np.all(np.isfinite(svd.vt))
    _check_is_an_svd(matrix, svd, orthonormal_tol=1e-12)


@settings(max_examples=20, deadline=None, database=None)
@given(rows=st.integers(2, 40), cols=st.integers(2, 40), seed=seeds, data=st.data())
def test_extend_adds_the_triplets_between_two_ranks(rows, cols, seed, data):
    matrix = np.random.default_rng(seed).normal(size=(rows, cols))
    svd = dc.TruncatedSVD.of(matrix)
    low = data.draw(st.integers(1, svd.max_rank))
    high = data.draw(st.integers(low, svd.max_rank))
    np.testing.assert_allclose(svd.extend(svd.reconstruct(low), low, high), svd.reconstruct(high), atol=1e-10)
    single = svd.extend(svd.reconstruct(low, dtype=np.float32), low, high)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, svd.reconstruct(high), atol=1e-5 * max(1.0, svd.s[0]))
    if low > 1:
        with pytest.raises(ValueError, match="below the previous rank"):
            svd.extend(svd.reconstruct(low), low, low - 1)


@pytest.mark.parametrize("rank", [0, 4, -1])
def test_truncated_svd_rejects_bad_ranks(rank):
    svd = dc.TruncatedSVD.of(np.ones((3, 5)))
    with pytest.raises(ValueError, match="between 1 and 3"):
        svd.factors(rank)


def test_truncated_svd_rejects_non_matrices():
    with pytest.raises(ValueError, match="matrix"):
        dc.TruncatedSVD.of(np.ones((2, 2, 2)))


def test_factor_functions_accept_a_precomputed_svd():
    kernel = random_kernel((3, 2, 4, 5), 7)
    svd = dc.TruncatedSVD.of(dc.spatial_svd_unfold(kernel))
    for got, want in zip(dc.spatial_svd_factors(kernel, 3, svd=svd), dc.spatial_svd_factors(kernel, 3), strict=True):
        np.testing.assert_allclose(got, want)


# ---------------------------------------------------------------- relative residuals


@FAST
@given(rows=st.integers(1, 10), cols=st.integers(1, 10), seed=seeds, scale=st.floats(1e-3, 1e3))
def test_relative_residuals_properties(rows, cols, seed, scale):
    matrix = scale * random_kernel((rows, cols), seed)
    svd = dc.TruncatedSVD.of(matrix)
    residuals = dc.relative_residuals(svd.s)
    assert residuals.shape == (svd.max_rank + 1,)
    assert residuals[0] == pytest.approx(1.0, rel=1e-12)
    assert residuals[-1] == 0.0
    assert np.all(np.diff(residuals) <= 1e-12), residuals
    for rank in range(1, svd.max_rank + 1):
        direct = fro(matrix - svd.reconstruct(rank)) / fro(matrix)
        assert residuals[rank] == pytest.approx(direct, rel=1e-6, abs=1e-9)


def test_relative_residuals_of_zero_matrix():
    np.testing.assert_array_equal(dc.relative_residuals(np.zeros(3)), np.zeros(4))


# ---------------------------------------------------------------- Tucker-2


def tucker_error(kernel: np.ndarray, ranks: tuple[int, int], iterations: int) -> float:
    return fro(kernel - dc.tucker2_compose(*dc.tucker2_factors(kernel, ranks, hooi_iterations=iterations)))


@FAST
@given(shape=kernel_shapes, seed=seeds, fractions=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_hooi_never_increases_the_error(shape, seed, fractions):
    c, n = shape[2:]
    ranks = (1 + int(fractions[0] * (c - 1)), 1 + int(fractions[1] * (n - 1)))
    kernel = random_kernel(shape, seed)
    errors = [tucker_error(kernel, ranks, iterations) for iterations in range(4)]
    slack = 1e-9 * fro(kernel) + 1e-12
    # each HOOI half-step is an optimal update of one factor, so the error is monotone in the iterations
    assert all(later <= earlier + slack for earlier, later in itertools.pairwise(errors)), errors


@FAST
@given(shape=kernel_shapes, seed=seeds, fractions=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_tucker_factors_are_orthonormal_projections(shape, seed, fractions):
    kh, kw, c, n = shape
    ranks = (1 + int(fractions[0] * (c - 1)), 1 + int(fractions[1] * (n - 1)))
    kernel = random_kernel(shape, seed)
    u_in, core, u_out = dc.tucker2_factors(kernel, ranks, hooi_iterations=1)
    assert u_in.shape == (1, 1, c, ranks[0]) and core.shape == (kh, kw, *ranks) and u_out.shape == (1, 1, ranks[1], n)
    np.testing.assert_allclose(u_in[0, 0].T @ u_in[0, 0], np.eye(ranks[0]), atol=1e-10)
    np.testing.assert_allclose(u_out[0, 0] @ u_out[0, 0].T, np.eye(ranks[1]), atol=1e-10)
    # orthogonal projection: ||K - K_hat||^2 = ||K||^2 - ||core||^2
    error = fro(kernel - dc.tucker2_compose(u_in, core, u_out))
    np.testing.assert_allclose(error**2, fro(kernel) ** 2 - fro(core) ** 2, rtol=1e-6, atol=1e-9 * fro(kernel) ** 2)


def test_hooi_improves_on_hosvd_example():
    kernel = random_kernel((3, 3, 16, 16), 0)
    hosvd = tucker_error(kernel, (4, 4), 0)
    hooi = tucker_error(kernel, (4, 4), 5)
    improvement = (hosvd - hooi) / hosvd
    message = f"HOSVD error {hosvd:.4f}, HOOI(5) error {hooi:.4f}: relative improvement {improvement:.2%}"
    assert improvement > 0.01, message


@pytest.mark.parametrize("ranks", [(0, 2), (2, 0), (5, 2), (2, 7)])
def test_tucker_rejects_out_of_range_ranks(ranks):
    with pytest.raises(ValueError, match="Tucker-2 ranks"):
        dc.tucker2_factors(np.ones((3, 3, 4, 6)), ranks)


@pytest.mark.parametrize("hooi_iterations", [0, 2])
def test_tucker_ranks_beyond_the_unfolding_rank(hooi_iterations):
    """A 1x1 conv C=3 -> N=8: the mode-N unfolding is 8 x 3, yet r_out may be up to N (regression test)."""
    kernel = random_kernel((1, 1, 3, 8), 4)
    for ranks in [(3, 8), (2, 5)]:
        u_in, core, u_out = dc.tucker2_factors(kernel, ranks, hooi_iterations=hooi_iterations)
        assert u_in.shape == (1, 1, 3, ranks[0]) and core.shape == (1, 1, *ranks) and u_out.shape == (1, 1, ranks[1], 8)
        np.testing.assert_allclose(u_out[0, 0] @ u_out[0, 0].T, np.eye(ranks[1]), atol=1e-10)
    np.testing.assert_allclose(
        dc.tucker2_compose(*dc.tucker2_factors(kernel, (3, 8), hooi_iterations)), kernel, atol=1e-10
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keep_leading_frees_vectors_and_changes_no_result(dtype):
    """Issue 19: once a layer's candidates are scored, compress_model(auto) keeps only the singular vectors up to
    the highest candidate rank. Every rank must still give the very same factors and reconstructions."""
    matrix = np.random.default_rng(3).normal(size=(40, 70)).astype(dtype)
    fresh = dc.TruncatedSVD.of(matrix)
    svd = dc.TruncatedSVD.of(matrix)
    svd.keep_leading(12)
    assert svd.kept_rank == 12 and svd.max_rank == 40
    assert svd.u.nbytes * 40 == fresh.u.nbytes * 12
    for rank in (1, 7, 12):
        for ours, theirs in zip(svd.factors(rank), fresh.factors(rank), strict=True):
            np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_allclose(svd.reconstruct(rank, dtype), fresh.reconstruct(rank, dtype), rtol=1e-5, atol=1e-5)
    assert svd.kept_rank == 12  # ranks up to the kept one need nothing more
    np.testing.assert_allclose(svd.extend(svd.reconstruct(3), 3, 30), fresh.reconstruct(30), rtol=1e-4, atol=1e-4)
    assert svd.kept_rank == 40  # a higher rank factorised the matrix again: nothing was lost
    for ours, theirs in zip(svd.factors(30), fresh.factors(30), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(ValueError, match="rank"):
        svd.keep_leading(0)
