"""The cost of data-aware fits in a selection: one projection and factorisation per layer and start, whatever the
number of candidate ranks (issue 18, item 3), with the same factors as one-off fits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfcompress import data_aware as da
from tfcompress import data_moments, data_problem, decompose
from tfcompress.pruning.reconstruct import extract_patches

FAST = settings(max_examples=20, deadline=None, database=None)

COMPOSE = {
    "weight_svd": decompose.weight_svd_compose,
    "spatial_svd": decompose.spatial_svd_compose,
    "tucker": decompose.tucker2_compose,
}


def moments_of(x: np.ndarray, targets: np.ndarray | None = None) -> da.Moments:
    acc = da.MomentAccumulator(x.shape[1], paired=targets is not None)
    acc.add(x, targets)
    return acc.moments()


def relu_images(rng: np.random.Generator, count: int, hw: int, c: int) -> np.ndarray:
    mix = rng.normal(size=(c, c)) * np.geomspace(1.0, 0.05, c)[:, None]
    return np.maximum(rng.normal(size=(count * hw * hw, c)) @ mix + 0.3, 0).reshape(count, hw, hw, c)


def shared(problem: da.FitProblem) -> da.FitProblem:
    problem.shared = True
    return problem


def all_ranks(scheme: str, c: int, n: int, kh: int, kw: int) -> list:
    if scheme == "tucker":
        return [(r, max(1, min(n, r + 1))) for r in range(1, c + 1)]
    most = min(c, kh * kw * n) if scheme == "weight_svd" else min(c * kh, kw * n)
    return list(range(1, most + 1))


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    scheme=st.sampled_from(["weight_svd", "spatial_svd", "tucker"]),
    with_bias=st.booleans(),
    paired=st.booleans(),
    dead=st.booleans(),
)
def test_shared_problem_gives_the_one_off_fits_at_every_rank(seed, scheme, with_bias, paired, dead):
    rng = np.random.default_rng(seed)
    kh, kw, c, n = 3, 2, int(rng.integers(2, 6)), int(rng.integers(2, 6))
    images = relu_images(rng, 4, 6, c)
    if dead:
        images[..., 0] = 0.0  # a dead channel: a singular moment, the nested refits must still factorise
    patches = extract_patches(images, (kh, kw), padding="same")
    x_hat = patches + rng.normal(size=patches.shape) * 0.2 if paired else patches
    m = moments_of(x_hat, patches if paired else None)
    w = rng.normal(size=(kh, kw, c, n))
    b = rng.normal(size=n) if with_bias else None
    problem = shared(da.conv2d_problem(scheme, w, b, m))
    ranks = all_ranks(scheme, c, n, kh, kw)
    rng.shuffle(ranks)  # in any order (a rank above the first family's makes it again, larger)
    for rank in ranks:
        kernels, fit = da.fit_conv2d(scheme, w, b, m, rank, problem)
        one_kernels, one = da.fit_conv2d(scheme, w, b, m, rank, refine=False)
        refined = da.fit_conv2d(scheme, w, b, m, rank)[1]  # the one-off default refines: never worse
        assert refined.error <= one.error * (1 + 1e-9) + 1e-12 * max(1.0, one.reference)
        scale = max(1.0, one.reference)
        # the same best error (the nested solve differs from the one-off one by rounding and a tiny ridge)
        assert fit.error == pytest.approx(one.error, rel=1e-6, abs=1e-9 * scale), rank
        assert fit.data_free_error == pytest.approx(one.data_free_error, rel=1e-6, abs=1e-9 * scale), rank
        assert fit.error <= fit.data_free_error * (1 + 1e-9) + 1e-12 * scale
        # the reported error is the real one of the factors returned
        composed = COMPOSE[scheme](*kernels).reshape(-1, n)
        y = patches @ w.reshape(-1, n) + (0 if b is None else b)
        y_hat = x_hat @ composed + (0 if fit.bias is None else fit.bias)
        got = float(np.mean(np.sum((y - y_hat) ** 2, axis=1)))
        assert got == pytest.approx(fit.error, rel=1e-6, abs=1e-9 * scale), rank
        if not dead:  # the same outputs (a dead channel's kernel rows are free: only the outputs are compared)
            one_hat = x_hat @ COMPOSE[scheme](*one_kernels).reshape(-1, n) + (0 if one.bias is None else one.bias)
            np.testing.assert_allclose(y_hat, one_hat, atol=1e-5 * max(1.0, float(np.abs(y).max())))
    assert set(problem.counts) <= {"whitened", "data-free"}
    assert all(1 <= v <= 2 for v in problem.counts.values()), problem.counts


@pytest.mark.parametrize("scheme", ["weight_svd", "spatial_svd", "tucker", "dense"])
def test_one_projection_per_layer_and_start_whatever_the_number_of_ranks(scheme, monkeypatch):
    """The (taps*d)² moment is projected once per start for the whole rank ladder (a selection's candidates), not
    once per rank: counted at both places a projection can happen."""
    rng = np.random.default_rng(3)
    c, n = 8, 10
    if scheme == "dense":
        x = np.maximum(rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16)), 0)
        w, b = rng.normal(size=(16, n)), rng.normal(size=n)
        m = moments_of(x)
        problem = shared(da.FitProblem(w, b, m, 1))
        ranks = list(range(1, 8))  # up to the break-even rank (16*10/26 -> 7): one family, one projection

        def fit(rank):
            return da.fit_dense(w, b, m, rank, problem)
    else:
        patches = extract_patches(relu_images(rng, 6, 8, c), 3, padding="same")
        w, b = rng.normal(size=(3, 3, c, n)), rng.normal(size=n)
        m = moments_of(patches)
        problem = shared(da.conv2d_problem(scheme, w, b, m))
        ranks = [(r, r) for r in range(1, 7)] if scheme == "tucker" else list(range(1, 7))

        def fit(rank):
            return da.fit_conv2d(scheme, w, b, m, rank, problem)

    counts = {"nested": 0, "per_rank": 0}
    nested, per_rank = data_moments.projected, data_problem.projected

    def counting(key, real):
        def call(*args, **kwargs):
            counts[key] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(data_moments, "projected", counting("nested", nested))
    monkeypatch.setattr(data_problem, "projected", counting("per_rank", per_rank))
    for rank in ranks:
        fit(rank)
    starts = 1 if scheme == "tucker" else 2  # Tucker's data-free start (HOOI) depends on both ranks: per rank
    assert counts["nested"] == starts, counts
    assert counts["per_rank"] == (len(ranks) if scheme == "tucker" else 0), counts
    assert all(v == 1 for v in problem.counts.values()), problem.counts


def test_nested_refits_equal_direct_least_squares_at_every_prefix():
    rng = np.random.default_rng(0)
    taps, d, n_out = 3, 5, 4
    x = rng.normal(size=(300, taps * d)) @ rng.normal(size=(taps * d, taps * d))
    x1 = np.hstack([x, np.ones((300, 1))])  # the bias's constant
    w = rng.normal(size=(taps * d + 1, n_out))
    gram, mw = x1.T @ x1 / 300, x1.T @ x1 @ w / 300
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    nested = data_moments.NestedRefits(basis, taps, gram, mw, float(np.sum(w * mw)))
    for r in range(1, d + 1):
        q = np.zeros((taps * d + 1, taps * r + 1))
        for t in range(taps):
            q[t * d : (t + 1) * d, t * r : (t + 1) * r] = basis[:, :r]
        q[-1, -1] = 1.0
        z = x1 @ q
        direct = np.linalg.lstsq(z, x1 @ w, rcond=None)[0]
        last, error = nested.solve(r)
        np.testing.assert_allclose(last, direct, rtol=1e-6, atol=1e-7)  # (the ridge: NESTED_RIDGE)
        assert error == pytest.approx(float(np.mean(np.sum((x1 @ w - z @ direct) ** 2, axis=1))), rel=1e-6)
        g, h = nested.blocks(r)
        np.testing.assert_allclose(g, q.T @ gram @ q, atol=1e-10)
        np.testing.assert_allclose(nested.solve_for(r, h), direct, rtol=1e-6, atol=1e-7)


def test_tril_inverse_matches_numpy_on_large_and_small_matrices():
    rng = np.random.default_rng(1)
    for n in (1, 7, 129, 300):
        lower = np.tril(rng.normal(size=(n, n))) + 5 * np.eye(n)
        np.testing.assert_allclose(data_moments.tril_inverse(lower) @ lower, np.eye(n), atol=1e-10)


def test_all_zero_moments_with_a_shared_problem_keep_the_data_free_factors():
    w = np.random.default_rng(0).normal(size=(3, 3, 4, 5))
    m = moments_of(np.zeros((50, 36)))
    problem = shared(da.conv2d_problem("weight_svd", w, np.ones(5), m))
    for rank in (1, 2, 3):
        kernels, fit = da.fit_conv2d("weight_svd", w, np.ones(5), m, rank, problem)
        assert fit.start.startswith("data-free")
        assert all(np.isfinite(k).all() for k in kernels)


def test_a_plan_scored_after_the_ranks_reuses_their_factors(monkeypatch):
    """The two-plan check and the accuracy target score whole plans after every layer's ranks: their layers' kernels
    come from the factors fitted for the scores, not from each layer's problem built again."""
    import keras

    from tfcompress import data_stage

    rng = np.random.default_rng(4)
    layers, fits = [], []
    clock = data_stage.Clock()
    for name in ("a", "b"):
        conv = keras.layers.Conv2D(6, 3, padding="same", name=name)
        conv.build((None, 8, 8, 4))
        layers.append(conv)
        fits.append(
            data_stage.CandidateFit(moments_of(extract_patches(relu_images(rng, 4, 8, 4), 3, padding="same")), clock)
        )
    built = []
    real = data_stage.layer_problem
    monkeypatch.setattr(data_stage, "layer_problem", lambda *a: built.append(a[0].name) or real(*a))
    scored = {(i, r): fits[i].kernel(layers[i], "spatial_svd", r, np.float32) for i in (0, 1) for r in (2, 4, 6)}
    assert built == ["a", "b"]  # one problem per layer for all its ranks
    for (i, r), kernel in scored.items():  # a plan over both layers, after the scores
        np.testing.assert_array_equal(fits[i].kernel(layers[i], "spatial_svd", r, np.float32), kernel)
    assert built == ["a", "b"]
