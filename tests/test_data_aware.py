"""Tests of the data-aware low-rank factors (plain numpy, ``tfcompress.data_aware``)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfcompress import data_aware as da
from tfcompress import decompose
from tfcompress.pruning.reconstruct import extract_patches

FAST = settings(max_examples=25, deadline=None, database=None)
seeds = st.integers(0, 2**32 - 1)


def moments_of(x: np.ndarray, targets: np.ndarray | None = None) -> da.Moments:
    acc = da.MomentAccumulator(x.shape[1], paired=targets is not None)
    for lo in range(0, len(x), 37):  # streamed in uneven batches
        acc.add(x[lo : lo + 37], None if targets is None else targets[lo : lo + 37])
    return acc.moments()


def empirical(x_hat, p, b_fit, x, w, b) -> float:
    y = x @ w + (0 if b is None else b)
    y_hat = x_hat @ p + (0 if b_fit is None else b_fit)
    return float(np.mean(np.sum((y - y_hat) ** 2, axis=1)))


def correlated(rng, n, d, scale=1.0):
    mix = rng.normal(size=(d, d)) * np.geomspace(1.0, 0.01, d)[:, None]
    return (rng.normal(size=(n, d)) @ mix + rng.normal(size=d)) * scale


def images_in_subspace(rng, count, hw, c, k):
    """Images whose every pixel's channel vector lies in one k-dim subspace of R^c."""
    basis = rng.normal(size=(k, c))
    return rng.normal(size=(count, hw, hw, k)) @ basis


# ---------------------------------------------------------------- moments


def test_accumulator_matches_direct_moments_and_streams():
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(101, 5)), rng.normal(size=(101, 5))
    m = moments_of(x, t)
    assert m.count == 101
    np.testing.assert_allclose(m.gram, x.T @ x / 101)
    np.testing.assert_allclose(m.cross, x.T @ t / 101)
    np.testing.assert_allclose(m.target_gram, t.T @ t / 101)
    np.testing.assert_allclose(m.mean, x.mean(0))
    with pytest.raises(ValueError, match="targets"):
        da.MomentAccumulator(5).add(x, t)
    with pytest.raises(ValueError, match="NaN"):
        da.MomentAccumulator(2).add(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="no samples"):
        da.MomentAccumulator(2).moments()


@FAST
@given(seed=seeds, with_bias=st.booleans(), paired=st.booleans())
def test_output_error_from_moments_equals_the_sampled_error(seed, with_bias, paired):
    rng = np.random.default_rng(seed)
    x = correlated(rng, 80, 6)
    x_hat = x + rng.normal(size=x.shape) * 0.3 if paired else x
    w, p = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    b, b_fit = (rng.normal(size=4), rng.normal(size=4)) if with_bias else (None, None)
    m = moments_of(x_hat, x if paired else None)
    assert da.output_error(m, w, b, p, b_fit) == pytest.approx(empirical(x_hat, p, b_fit, x, w, b), rel=1e-9)


# ---------------------------------------------------------------- the closed form


@FAST
@given(seed=seeds, d=st.integers(2, 9), n=st.integers(2, 9), scale=st.floats(0.1, 10.0))
def test_white_inputs_give_the_plain_truncated_svd(seed, d, n, scale):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, n))
    m = da.Moments(1000, np.zeros(d), scale * np.eye(d))
    for rank in range(1, min(d, n) + 1):
        fit = da.fit_dense(w, None, m, rank)
        a, b = fit.factors
        np.testing.assert_allclose(a @ b, decompose.TruncatedSVD.of(w).reconstruct(rank), atol=1e-8)
        assert fit.error == pytest.approx(fit.data_free_error, rel=1e-6, abs=1e-9)


@FAST
@given(seed=seeds, d=st.integers(3, 10), n=st.integers(3, 10), k=st.integers(1, 3), with_bias=st.booleans())
def test_dense_inputs_in_a_subspace_are_fitted_exactly_at_its_rank(seed, d, n, k, with_bias):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, k)) @ rng.normal(size=(k, d))
    w = rng.normal(size=(d, n))
    b = rng.normal(size=n) if with_bias else None
    fit = da.fit_dense(w, b, moments_of(x), rank=k)
    a, second = fit.factors
    y = x @ w + (0 if b is None else b)
    np.testing.assert_allclose(x @ a @ second + (0 if fit.bias is None else fit.bias), y, atol=1e-6 * np.abs(y).max())
    assert fit.relative_error < 1e-10


@FAST
@given(seed=seeds, c=st.integers(3, 6), n=st.integers(2, 6), k=st.integers(1, 2), kernel=st.sampled_from([1, 2, 3]))
def test_weight_svd_with_pixels_in_a_subspace_is_exact_at_its_rank(seed, c, n, k, kernel):
    # every pixel's channel vector lies in a k-dim subspace: the 1x1 stage C -> k loses nothing, and the exact
    # refit of the kh x kw stage on the full patch moment recovers the outputs (the per-pixel moment alone could not
    # know how the taps correlate)
    rng = np.random.default_rng(seed)
    images = images_in_subspace(rng, 6, 7, c, k)
    patches = extract_patches(images, kernel, padding="same")
    w = rng.normal(size=(kernel, kernel, c, n))
    kernels, fit = da.fit_conv2d("weight_svd", w, None, moments_of(patches), k)
    composed = decompose.weight_svd_compose(*kernels)
    y = patches @ w.reshape(-1, n)
    np.testing.assert_allclose(patches @ composed.reshape(-1, n), y, atol=1e-6 * np.abs(y).max())
    assert fit.relative_error < 1e-10
    # (the data-free factors are usually far from exact here, but not always: a random kernel can happen to have its
    # top singular directions on the subspace, so that is not asserted)


# ---------------------------------------------------------------- never worse than data-free


schemes = st.sampled_from(["weight_svd", "spatial_svd", "tucker"])


@FAST
@given(seed=seeds, scheme=schemes, with_bias=st.booleans(), paired=st.booleans(), frac=st.floats(0.1, 0.9))
def test_conv_fits_are_never_worse_than_the_data_free_factors(seed, scheme, with_bias, paired, frac):
    rng = np.random.default_rng(seed)
    kh, kw, c, n = 3, 2, int(rng.integers(2, 6)), int(rng.integers(2, 6))
    images = np.maximum(correlated(rng, 4 * 6 * 6, c).reshape(4, 6, 6, c), 0)  # ReLU'd, correlated channels
    images[..., 0] = 0.0  # a dead channel
    patches = extract_patches(images, (kh, kw), padding="same")
    w = rng.normal(size=(kh, kw, c, n))
    b = rng.normal(size=n) if with_bias else None
    x_hat = patches + rng.normal(size=patches.shape) * 0.2 if paired else patches
    m = moments_of(x_hat, patches if paired else None)
    if scheme == "tucker":
        rank = (max(1, round(frac * c)), max(1, round(frac * n)))
        data_free = decompose.tucker2_compose(*decompose.tucker2_factors(w, rank, hooi_iterations=2))
    elif scheme == "weight_svd":
        rank = max(1, round(frac * min(c, kh * kw * n)))
        data_free = decompose.weight_svd_compose(*decompose.weight_svd_factors(w, rank))
    else:
        rank = max(1, round(frac * min(c * kh, n * kw)))
        data_free = decompose.spatial_svd_compose(*decompose.spatial_svd_factors(w, rank))
    kernels, fit = da.fit_conv2d(scheme, w, b, m, rank)
    compose = {"weight_svd": decompose.weight_svd_compose, "spatial_svd": decompose.spatial_svd_compose}
    composed = compose.get(scheme, decompose.tucker2_compose)(*kernels)
    assert all(np.isfinite(k).all() for k in kernels)
    got = empirical(x_hat, composed.reshape(-1, n), fit.bias, patches, w.reshape(-1, n), b)
    before = empirical(x_hat, data_free.reshape(-1, n), b, patches, w.reshape(-1, n), b)
    assert got == pytest.approx(fit.error, rel=1e-6, abs=1e-9)  # the reported error is the real one
    assert before == pytest.approx(fit.data_free_error, rel=1e-6, abs=1e-9)
    assert got <= before * (1 + 1e-9) + 1e-12


def test_data_aware_beats_data_free_on_correlated_images_and_says_which_start_won():
    rng = np.random.default_rng(5)
    images = np.maximum(correlated(rng, 16 * 8 * 8, 16).reshape(16, 8, 8, 16), 0)
    patches = extract_patches(images, 3, padding="same")
    w = rng.normal(size=(3, 3, 16, 24))
    m = moments_of(patches)
    for scheme, rank in (("weight_svd", 4), ("spatial_svd", 8), ("tucker", (4, 8))):
        _, fit = da.fit_conv2d(scheme, w, np.zeros(24), m, rank)
        assert fit.relative_error < 0.5 * fit.data_free_relative_error, scheme
        assert fit.start.removesuffix(", refined") in ("whitened", "data-free, refitted")


def test_asymmetric_fit_reproduces_the_original_outputs_from_transformed_inputs():
    # the compressed model's inputs are an invertible mix of the original ones: at full rank the fit must map them
    # back exactly (target kernel M^-1 C W), which a symmetric fit on either input alone cannot
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)
    mix = rng.normal(size=(6, 6)) + 3 * np.eye(6)
    x_hat = x @ mix
    w, b = rng.normal(size=(6, 5)), rng.normal(size=5)
    fit = da.fit_two_stage(w, b, moments_of(x_hat, x), taps=1, rank=5)
    a, second = fit.factors
    np.testing.assert_allclose(x_hat @ a @ second + fit.bias, x @ w + b, atol=1e-4 * np.abs(x @ w + b).max())


# ---------------------------------------------------------------- degenerate inputs


def test_all_zero_inputs_fall_back_to_the_data_free_factors_and_say_so():
    w = np.random.default_rng(0).normal(size=(3, 3, 4, 5))
    m = moments_of(np.zeros((50, 36)))
    kernels, fit = da.fit_conv2d("weight_svd", w, np.ones(5), m, 2)
    assert fit.start.startswith("data-free")
    assert any("all zero" in note for note in fit.notes)
    assert all(np.isfinite(k).all() for k in kernels)
    np.testing.assert_allclose(fit.bias, np.ones(5))  # nothing to refit it from: it stays


def test_constant_inputs_and_duplicated_channels_stay_finite():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 2))
    x = np.hstack([base, base, np.ones((40, 2)) * 3.0])  # duplicated and constant features: rank-deficient
    w = rng.normal(size=(6, 4))
    for with_bias in (False, True):
        fit = da.fit_dense(w, np.zeros(4) if with_bias else None, moments_of(x), 2)
        assert all(np.isfinite(f).all() for f in fit.factors)
        assert fit.error <= fit.data_free_error * (1 + 1e-9) + 1e-12


def test_bad_arguments_are_refused_by_name():
    m = moments_of(np.random.default_rng(0).normal(size=(20, 4)))
    with pytest.raises(ValueError, match="rank"):
        da.fit_dense(np.ones((4, 3)), None, m, 4)
    with pytest.raises(ValueError, match="input rows"):
        da.fit_dense(np.ones((5, 3)), None, m, 1)
    with pytest.raises(ValueError, match="scheme"):
        da.fit_conv2d("svd", np.ones((1, 2, 2, 3)), None, m, 1)
    assert da.spatial_order(2, 2, 1).tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize(
    "scheme, ranks", [("weight_svd", [1, 3, 4]), ("spatial_svd", [2, 5]), ("tucker", [(2, 3), (4, 5)])]
)
def test_one_problem_per_layer_serves_every_rank_with_the_same_factors(scheme, ranks, monkeypatch):
    """The selection builds a layer's FitProblem once and fits every rank from it: the factors are those of a fresh
    fit, and the rank-independent eigendecompositions run once, not once per rank."""
    rng = np.random.default_rng(7)
    w = rng.normal(size=(3, 3, 4, 6))
    b = rng.normal(size=6)
    m = moments_of(correlated(rng, 400, 36))
    problem = da.conv2d_problem(scheme, w, b, m)
    calls = {"eigh": 0}
    eigh = np.linalg.eigh

    def counting(a, *args, **kwargs):
        # Tucker's leading subspaces (decompose._leading_left_vectors) are rank-dependent and use eigh too: only the
        # covariance eigendecompositions are counted
        if sys._getframe(1).f_code.co_name != "_leading_left_vectors":
            calls["eigh"] += 1
        return eigh(a, *args, **kwargs)

    shared = []
    monkeypatch.setattr(np.linalg, "eigh", counting)
    for rank in ranks:
        shared.append(da.fit_conv2d(scheme, w, b, m, rank, problem))
    with_problem = calls["eigh"]
    monkeypatch.setattr(np.linalg, "eigh", eigh)
    for rank, (kernels, fit) in zip(ranks, shared, strict=True):
        fresh_kernels, fresh = da.fit_conv2d(scheme, w, b, m, rank)
        for got, want in zip(kernels, fresh_kernels, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        assert fit.error == pytest.approx(fresh.error, rel=1e-9, abs=1e-12)
    assert with_problem <= 2  # the whitened target's vectors (and, for Tucker, the outputs' directions): once
