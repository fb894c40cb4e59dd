"""Alternating refinement of a two-stage layer's first factor on the full patch moment (plain numpy).

A two-stage layer applies one first factor ``A`` (``d x r``) to each of its ``T`` taps, then per-tap second factors
``B_t`` (``r x N``) summed over the taps, then a bias: ``ŷ = Σ_t x_t A B_t + b``. The data-aware start
(:mod:`tfcompress.data_aware`) whitens ``A`` by the *per-tap* input moment, which ignores how neighbouring taps
correlate; it is exact for a Dense layer (one tap) but only a start for a convolution. With ``B`` and ``b`` fixed,
the output error is a convex quadratic in ``A``; its minimum solves

    ``Σ_{t,t'} S_{tt'} A B_{t'} B_tᵀ = Σ_t E[x̂_t yᵀ] B_tᵀ``

on the full patch moment ``S_{tt'} = E[x̂_t x̂_{t'}ᵀ]`` (centred, with ``E[x̂_t yᵀ]``, when the layer has a bias: the
solve is then jointly for ``A`` and the bias, which takes the means). :func:`refine_first_factor` alternates that solve (exactly,
through the ``(d*r)²`` normal equations, when ``d*r <= DIRECT_MAX``; else by preconditioned conjugate gradients
started at the current ``A``, whose every iterate is no worse than its start) with the exact least-squares refit
of ``B`` and ``b`` given ``A``. No step can raise the output error, so the result is never worse than the start;
it stops after ``iterations`` rounds or when a round gains less than ``tolerance`` (relative).

Cost per round: ``O(T² d² r²)`` to build and ``O((d r)³)`` to solve the direct system, or ``CG_STEPS`` products of
``O(T² d r (d + r))`` each; plus the refit of ``B`` (``O(T² d² r)`` for the projection, ``O((T r)³)`` for the solve).
:func:`refine_flops` estimates it; :mod:`tfcompress.data_aware` refines only under :data:`REFINE_MAX_FLOPS`.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(400, 2, 3)).cumsum(axis=1).reshape(400, 6)        # 2 correlated taps of width 3
    >>> w = rng.normal(size=(6, 4))
    >>> gram, mw = x.T @ x / 400, x.T @ x @ w / 400
    >>> start_a = np.linalg.svd(w.reshape(2, 3, 4).transpose(1, 0, 2).reshape(3, 8))[0][:, :2]
    >>> start = refit_last(gram, mw, float(np.sum(w * mw)), 2, start_a)
    >>> done = refine_first_factor(gram, mw, float(np.sum(w * mw)), 2, start_a, start[0])
    >>> bool(done.error <= start[1])
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .data_moments import expand_left, projected, solve_psd

__all__ = [
    "Refined",
    "refine_first_factor",
    "refit_last",
    "two_stage_error",
    "REFINE_ITERATIONS",
    "DIRECT_MAX",
    "CG_STEPS",
    "REFINE_MAX_FLOPS",
    "refine_flops",
    "refined_fit",
]

#: alternating rounds at most (each an exact solve for ``A`` then for ``B`` and the bias)
REFINE_ITERATIONS = 6
#: a round that lowers the output error by less than this (relative) ends the refinement
REFINE_TOLERANCE = 1e-3
#: the first factor is solved for directly (the ``(d*r)²`` normal equations) up to this many unknowns ``d*r``
DIRECT_MAX = 1024
#: preconditioned conjugate-gradient steps per round above :data:`DIRECT_MAX`
CG_STEPS = 25
#: a layer is refined only when :func:`refine_flops` (all rounds, at most) stays under this: about 10 s of one core;
#: a 3x3 convolution of 128 channels takes 1e10 at rank 20, 5e10 at rank 85; a ResNet50's 3x3x256 at rank 100
#: 2.4e11 (skipped). Most refinements stop after a few rounds, well under the estimate
REFINE_MAX_FLOPS = 5e10
#: relative ridge of the first factor's solve (only keeps it finite where the data sees nothing)
FIRST_RIDGE = 1e-10


@dataclass
class Refined:
    """The refined factors: first factor ``a`` (``d x r``), last factor ``last`` (``T*r`` tap-major rows, then the
    bias row when the moments are augmented), their output error, the start's, and the rounds taken."""

    a: np.ndarray
    last: np.ndarray
    error: float
    start_error: float
    rounds: int


def refine_flops(taps: int, d: int, r: int, n: int, iterations: int = REFINE_ITERATIONS) -> float:
    """About the floating-point operations of :func:`refine_first_factor` at most (``iterations`` rounds): per round
    the solve for ``A`` (direct, or :data:`CG_STEPS` products by the operator) and the refit of ``B``.

    Example:
        >>> f"{refine_flops(9, 128, 30, 128):.1e}"
        '1.6e+10'
    """
    t2 = float(taps) ** 2
    if d * r <= DIRECT_MAX:
        first = 2 * t2 * (d * r) ** 2 + (d * r) ** 3 / 3
    else:
        first = CG_STEPS * 2 * t2 * d * r * (d + r)
    last = 4 * t2 * d * d * r + (taps * r) ** 3 / 3 + 2 * (taps * r) ** 2 * n
    return iterations * (first + last)


def two_stage_error(
    gram: np.ndarray, mw: np.ndarray, const: float, taps: int, a: np.ndarray, last: np.ndarray
) -> float:
    """``E||y - ŷ||²`` of first factor ``a`` and last factor ``last`` on the moments (``const = E||y||²``)."""
    g, h = projected(a, taps, gram), expand_left(a, taps, mw)
    return max(const - 2 * float(np.sum(last * h)) + float(np.sum(last * (g @ last))), 0.0)


def refit_last(gram: np.ndarray, mw: np.ndarray, const: float, taps: int, a: np.ndarray) -> tuple[np.ndarray, float]:
    """``(last, error)``: the least-squares last factor (and bias row) for first factor ``a``, and its error."""
    g, h = projected(a, taps, gram), expand_left(a, taps, mw)
    last = solve_psd(g, h)
    return last, max(const - 2 * float(np.sum(last * h)) + float(np.sum(last * (g @ last))), 0.0)


def _centred(gram: np.ndarray, mw: np.ndarray, taps: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(S, E[x̂ yᵀ])`` of the patch, centred when the moments are augmented (a bias then takes the means: solving
    for ``A`` on the centred moments is the joint least squares in ``A`` and the bias)."""
    s, target = gram[: taps * d, : taps * d], mw[: taps * d]
    if gram.shape[0] > taps * d:
        mean = gram[: taps * d, taps * d]
        s = s - np.outer(mean, mean)
        target = target - np.outer(mean, mw[taps * d])
    return s, target


def _rhs(target: np.ndarray, taps: int, d: int, b: np.ndarray) -> np.ndarray:
    """``Σ_t E[x̂_t yᵀ] B_tᵀ`` (``d x r``) for ``b`` the ``(T, r, N)`` second factors."""
    return np.einsum("tdn,trn->dr", target.reshape(taps, d, -1), b, optimize=True)


def _pairs(b: np.ndarray) -> np.ndarray:
    """``P[t, j, s, l] = (B_t B_sᵀ)[j, l]`` for ``b`` the ``(T, r, N)`` second factors."""
    return np.einsum("tjn,sln->tjsl", b, b, optimize=True)


def _operator(s: np.ndarray, taps: int, pairs: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``Σ_{t,t'} S_{tt'} A B_{t'} B_tᵀ`` (``pairs`` from :func:`_pairs`), through the ``T² (d x r)`` blocks
    ``S_{tt'} A`` (``O(T² d r (d + r))``, cheaper than through the ``N`` outputs when ``r < N``)."""
    d, r = a.shape
    u = np.matmul(s.reshape(taps * d, taps, d).transpose(1, 0, 2), a).reshape(taps, taps, d, r)  # [t', t]: S_tt' A
    return np.einsum("stij,sjtq->iq", u, pairs, optimize=True)


def _solve_direct(s: np.ndarray, taps: int, pairs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """The exact ``A`` from the ``(d*r)²`` normal equations ``K vec(A) = vec(rhs)`` (row-major ``vec``)."""
    d, r = rhs.shape
    s4 = s.reshape(taps, d, taps, d)
    k = np.einsum("tisk,tjsl->ijkl", s4, pairs, optimize=True).reshape(d * r, d * r)
    k = (k + k.T) / 2
    return solve_psd(k, rhs.reshape(d * r, 1), FIRST_RIDGE).reshape(d, r)


def _solve_cg(s: np.ndarray, taps: int, pairs: np.ndarray, rhs: np.ndarray, a: np.ndarray, steps: int) -> np.ndarray:
    """``A`` by conjugate gradients from the current ``a``, preconditioned by the per-tap Kronecker approximation
    ``S̄ A C`` (``S̄ = mean_t S_tt``, ``C = Σ_t B_t B_tᵀ``): exact when the taps are uncorrelated and alike."""
    d = a.shape[0]
    blocks = s.reshape(taps, d, taps, d)
    s_bar = sum(blocks[t, :, t, :] for t in range(taps)) / taps
    c = sum(pairs[t, :, t, :] for t in range(taps))

    def inverse_of(m: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh((m + m.T) / 2)
        floor = max(float(w[-1]), 0.0) * 1e-8 + 1e-300
        return (v / np.maximum(w, floor)) @ v.T

    s_inv, c_inv = inverse_of(s_bar), inverse_of(c)
    residual = rhs - _operator(s, taps, pairs, a)
    z = s_inv @ residual @ c_inv
    p = z.copy()
    rz = float(np.sum(residual * z))
    stop = 1e-10 * rz  # the preconditioned residual down by 1e5: far below what the moments' sampling can tell apart
    for _ in range(steps):
        if not rz > max(stop, 1e-300):
            break
        kp = _operator(s, taps, pairs, p)
        curvature = float(np.sum(p * kp))
        if not curvature > 0:
            break
        alpha = rz / curvature
        a = a + alpha * p
        residual = residual - alpha * kp
        z = s_inv @ residual @ c_inv
        rz_next = float(np.sum(residual * z))
        p = z + (rz_next / rz) * p
        rz = rz_next
    return a


def refine_first_factor(
    gram: np.ndarray,
    mw: np.ndarray,
    const: float,
    taps: int,
    a: np.ndarray,
    last: np.ndarray,
    iterations: int = REFINE_ITERATIONS,
    tolerance: float = REFINE_TOLERANCE,
) -> Refined:
    """Alternate the exact solve for the first factor (the second factors and bias fixed) with the least-squares
    refit of the second factors and bias (the first fixed), from ``(a, last)``; see the module docs.

    ``gram`` (``T*d`` square, or ``T*d + 1`` augmented by the constant feature when ``last`` ends with a bias row),
    ``mw = E[x̂̃ yᵀ]`` and ``const = E||y||²`` as in :class:`tfcompress.data_aware.FitProblem`. ``last``: ``T*r``
    tap-major rows (then the bias row). The result's error is never above the start's.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> x = rng.normal(size=(300, 4)); w = rng.normal(size=(4, 3))
        >>> gram, mw = x.T @ x / 300, x.T @ x @ w / 300
        >>> a = np.linalg.qr(rng.normal(size=(4, 3)))[0]                    # any full-rank start: exact at r = 3
        >>> out = refine_first_factor(gram, mw, float(np.sum(w * mw)), 1, a, refit_last(gram, mw, 0.0, 1, a)[0])
        >>> round(out.error, 9)
        0.0
    """
    taps = int(taps)
    d, r = a.shape
    n = mw.shape[1]
    s, target = _centred(gram, mw, taps, d)
    best_a, best_last = a, last
    best = start = two_stage_error(gram, mw, const, taps, a, last)
    rounds = 0
    for _ in range(int(iterations)):
        b = best_last[: taps * r].reshape(taps, r, n)
        rhs, pairs = _rhs(target, taps, d, b), _pairs(b)
        if d * r <= DIRECT_MAX:
            new_a = _solve_direct(s, taps, pairs, rhs)
        else:
            new_a = _solve_cg(s, taps, pairs, rhs, best_a, CG_STEPS)
        norms = np.linalg.norm(new_a, axis=0)
        if not np.isfinite(new_a).all() or not (norms > 0).all():
            break
        new_a = new_a / norms  # the scale moves to the refitted second factors
        new_last, error = refit_last(gram, mw, const, taps, new_a)
        if not np.isfinite(error) or error >= best:
            break
        gain = (best - error) / max(best, 1e-300)
        best_a, best_last, best = new_a, new_last, error
        rounds += 1
        if gain < tolerance:
            break
    return Refined(best_a, best_last, best, start, rounds)


def refined_fit(problem: Any, best: tuple, notes: list[str]) -> tuple:
    """``best`` (``(error, start, first factor, last factor)`` of a :class:`~tfcompress.data_aware.FitProblem`
    ``problem``) after :func:`refine_first_factor` when the layer has more than one tap (one tap: the whitened start
    is already optimal) and the refinement costs at most :data:`REFINE_MAX_FLOPS`; a note in ``notes`` says what it
    gained, or why it was skipped."""
    if problem.taps == 1 or best[0] <= 0:
        return best
    d, r = best[2].shape
    flops = refine_flops(problem.taps, d, r, problem.kernel.shape[1])
    if flops > REFINE_MAX_FLOPS:
        notes.append(f"first factor not refined: about {flops:.2g} flops (> {REFINE_MAX_FLOPS:.2g})")
        return best
    out = refine_first_factor(problem.gram, problem.mw, problem.const, problem.taps, best[2], best[3])
    if out.rounds == 0 or not out.error < best[0]:
        return best
    if problem.reference > 0:
        notes.append(
            f"first factor refined on the full patch moment ({out.rounds} round(s)): relative output error "
            f"{best[0] / problem.reference:.4g} -> {out.error / problem.reference:.4g}"
        )
    return (out.error, f"{best[1]}, refined", out.a, out.last)
