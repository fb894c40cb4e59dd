"""Tests of the alternating refinement of a two-stage layer's first factor (``tfcompress.data_refine``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfcompress import data_aware as da
from tfcompress import data_refine as dr
from tfcompress.pruning.reconstruct import extract_patches

FAST = settings(max_examples=25, deadline=None, database=None)
seeds = st.integers(0, 2**32 - 1)


def problem_of(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, taps: int, x_hat: np.ndarray | None = None):
    """``FitProblem`` of kernel ``w`` on patches ``x`` (the fitted layer sees ``x_hat``, default ``x``)."""
    acc = da.MomentAccumulator(x.shape[1], paired=x_hat is not None)
    acc.add(x if x_hat is None else x_hat, None if x_hat is None else x)
    return da.FitProblem(w, b, acc.moments(), taps)


def tap_correlated(rng, n: int, taps: int, d: int) -> np.ndarray:
    """``(n, taps*d)`` patches whose neighbouring taps are strongly correlated (a random walk over the taps)."""
    steps = rng.normal(size=(n, taps, d)) @ (rng.normal(size=(d, d)) * np.geomspace(1, 0.05, d)[:, None])
    return (steps.cumsum(axis=1) + rng.normal(size=d)).reshape(n, taps * d)


def empirical(x_hat, a, last, taps, x, w, b) -> float:
    """``mean ||y - ŷ||²`` of the two-stage layer ``(a, last)`` (bias row last when ``b`` is given)."""
    n, r = x.shape[0], a.shape[1]
    y = x @ w + (0 if b is None else b)
    feats = np.einsum("ntd,dr->ntr", x_hat.reshape(n, taps, -1), a).reshape(n, taps * r)
    y_hat = feats @ last[: taps * r] + (0 if b is None else last[taps * r])
    return float(np.mean(np.sum((y - y_hat) ** 2, axis=1)))


def random_start(problem, rng, r):
    a = np.linalg.qr(rng.normal(size=(problem.moments.dim // problem.taps, r)))[0]
    return a, dr.refit_last(problem.gram, problem.mw, problem.const, problem.taps, a)[0]


@FAST
@given(seed=seeds, taps=st.integers(1, 4), d=st.integers(2, 6), bias=st.booleans(), paired=st.booleans())
def test_the_error_never_increases_and_is_the_real_one(seed, taps, d, bias, paired):
    rng = np.random.default_rng(seed)
    n_out = int(rng.integers(1, 7))
    r = int(rng.integers(1, min(d, taps * n_out) + 1))
    x = tap_correlated(rng, 150, taps, d)
    x_hat = x + 0.3 * rng.normal(size=x.shape) if paired else None
    w, b = rng.normal(size=(taps * d, n_out)), (rng.normal(size=n_out) if bias else None)
    problem = problem_of(x, w, b, taps, x_hat)
    a, last = random_start(problem, rng, r)
    start = dr.two_stage_error(problem.gram, problem.mw, problem.const, taps, a, last)
    out = dr.refine_first_factor(problem.gram, problem.mw, problem.const, taps, a, last)
    assert out.start_error == pytest.approx(start, rel=1e-9, abs=1e-12)
    assert out.error <= start * (1 + 1e-12) + 1e-12
    got = empirical(x if x_hat is None else x_hat, out.a, out.last, taps, x, w, b)
    assert got == pytest.approx(out.error, rel=1e-6, abs=1e-9)


@FAST
@given(seed=seeds, d=st.integers(2, 8), n_out=st.integers(2, 8), bias=st.booleans())
def test_one_tap_reaches_the_closed_form_and_cannot_improve_on_it(seed, d, n_out, bias):
    # a Dense layer: the whitened closed form is the optimum; the refinement from a random first factor reaches its
    # error (reduced-rank regression has no other local minimum), and from the closed form it gains nothing
    rng = np.random.default_rng(seed)
    r = int(rng.integers(1, min(d, n_out) + 1))
    x = rng.normal(size=(400, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    w, b = rng.normal(size=(d, n_out)), (rng.normal(size=n_out) if bias else None)
    problem = problem_of(x, w, b, 1)
    closed = da.fit_two_stage(w, b, problem.moments, 1, r, problem=problem)
    a, last = random_start(problem, rng, r)
    out = dr.refine_first_factor(problem.gram, problem.mw, problem.const, 1, a, last, iterations=200, tolerance=0)
    scale = problem.reference + 1e-12
    assert out.error / scale == pytest.approx(closed.error / scale, abs=1e-6)
    a0, second0 = closed.factors
    last0 = second0 if b is None else np.vstack([second0, closed.bias[None]])
    again = dr.refine_first_factor(problem.gram, problem.mw, problem.const, 1, a0, last0)
    # nothing to gain but the closed form's shrinkage ridge (up to 1.5e-4 relative here) allows: measured gains up to
    # ~1e-9 of the outputs' variance, so 1e-6 of it bounds what the ridge can explain
    assert again.error >= closed.error - 1e-6 * scale
    assert "refined" not in closed.start  # one tap: the fit does not try


def test_exact_at_the_rank_of_the_kernel_from_any_start():
    # the kernel is exactly rank r in the first factor's unfolding (W_t = A* B*_t) and the taps are correlated: the
    # whitened per-tap start is not exact, the alternating refinement drives the output error to zero
    rng = np.random.default_rng(3)
    taps, d, n_out, r = 3, 6, 5, 2
    a_true, b_true = rng.normal(size=(d, r)), rng.normal(size=(taps, r, n_out))
    w = np.einsum("dr,trn->tdn", a_true, b_true).reshape(taps * d, n_out)
    x = tap_correlated(rng, 600, taps, d)
    problem = problem_of(x, w, None, taps)
    a, last = random_start(problem, rng, r)
    out = dr.refine_first_factor(problem.gram, problem.mw, problem.const, taps, a, last, iterations=300, tolerance=0)
    assert out.start_error / problem.reference > 1e-2
    assert out.error / problem.reference < 1e-8


def test_conjugate_gradients_agree_with_the_direct_solve(monkeypatch):
    rng = np.random.default_rng(4)
    taps, d, n_out, r = 3, 8, 6, 3
    x = tap_correlated(rng, 500, taps, d)
    problem = problem_of(x, rng.normal(size=(taps * d, n_out)), rng.normal(size=n_out), taps)
    a, last = random_start(problem, rng, r)
    direct = dr.refine_first_factor(problem.gram, problem.mw, problem.const, taps, a, last, iterations=1)
    monkeypatch.setattr(dr, "DIRECT_MAX", 0)
    monkeypatch.setattr(dr, "CG_STEPS", d * r)  # conjugate gradients are exact in as many steps as unknowns
    cg = dr.refine_first_factor(problem.gram, problem.mw, problem.const, taps, a, last, iterations=1)
    assert direct.rounds == cg.rounds == 1
    assert cg.error == pytest.approx(direct.error, rel=1e-6)
    monkeypatch.setattr(dr, "CG_STEPS", 3)  # truncated: still never worse than the start
    short = dr.refine_first_factor(problem.gram, problem.mw, problem.const, taps, a, last, iterations=1)
    assert direct.error <= short.error <= short.start_error


@pytest.mark.parametrize("scheme, rank", [("weight_svd", 4), ("spatial_svd", 6)])
def test_one_off_conv_fits_are_refined_and_shared_problems_are_not(scheme, rank, monkeypatch):
    rng = np.random.default_rng(5)
    img = rng.normal(size=(24, 10, 10, 8))
    for _ in range(2):  # neighbouring pixels correlated, as in real images
        img = img + np.roll(img, 1, axis=1) + np.roll(img, 1, axis=2)
    img = np.maximum(img @ rng.normal(size=(8, 8)), 0)
    patches = extract_patches(img, 3, padding="same")
    acc = da.MomentAccumulator(patches.shape[1])
    acc.add(patches)
    m = acc.moments()
    w, b = rng.normal(size=(3, 3, 8, 10)), rng.normal(size=10)
    kernels, fit = da.fit_conv2d(scheme, w, b, m, rank)
    problem = da.conv2d_problem(scheme, w, b, m)
    problem.shared = True
    _, unrefined = da.fit_conv2d(scheme, w, b, m, rank, problem)
    assert fit.start.endswith(", refined") and "refined" not in unrefined.start
    assert fit.error < 0.98 * unrefined.error
    assert any("first factor refined" in note for note in fit.notes)
    from tfcompress import decompose

    compose = {"weight_svd": decompose.weight_svd_compose, "spatial_svd": decompose.spatial_svd_compose}[scheme]
    y_hat = patches @ compose(*kernels).reshape(-1, 10) + fit.bias
    got = float(np.mean(np.sum((patches @ w.reshape(-1, 10) + b - y_hat) ** 2, axis=1)))
    assert got == pytest.approx(fit.error, rel=1e-6)
    monkeypatch.setattr(dr, "REFINE_MAX_FLOPS", 0.0)  # over the cost bound: skipped, and the notes say so
    _, capped = da.fit_conv2d(scheme, w, b, m, rank)
    assert capped.error == pytest.approx(unrefined.error, rel=1e-9) and "refined" not in capped.start
    assert any("not refined" in note for note in capped.notes)
