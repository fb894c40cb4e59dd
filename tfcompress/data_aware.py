"""Data-aware low-rank factors: fitted to a layer's real inputs instead of to its kernel alone (plain numpy).

A linear layer maps an input vector ``x`` to ``y = x W + b``. The truncated SVD of ``W`` minimises the kernel
error ``||W - A B||``; what matters is the *output* error on the inputs the layer really sees,
``E ||x W + b - (x A B + b')||²``. With the input second moment ``S = E[x xᵀ]`` (``S = L Lᵀ``) that error is
``||Lᵀ (W - A B)||²`` (for centred inputs; the bias ``b'`` takes the mean), so the best rank-``r`` factors are
``A = L⁻ᵀ U_r``, ``B = Σ_r V_rᵀ`` from the SVD of the *whitened* kernel ``Lᵀ W = U Σ Vᵀ`` (Zhang et al. 2016;
ASVD / SVD-LLM for linear layers). With white inputs (``S ∝ I``) this is the plain truncated SVD.

**Which ``x``, per scheme** (``T`` taps of width ``d``; the full patch is ``T*d`` wide, tap-major):

============  ==============================  ================================  =================================
scheme        the first factor sees           per-tap vector (``d``)           taps (``T``)
============  ==============================  ================================  =================================
SVD (Dense)   the input features              ``in``                            1
weight SVD    each pixel's channel vector     ``C`` (1x1 stage ``C -> r``)      ``kh*kw`` (the ``kh x kw`` stage)
spatial SVD   each ``kh x 1`` patch           ``C*kh`` (row ``c*kh + i``)       ``kw`` (the ``1 x kw`` stage)
Tucker-2      each pixel's channel vector     ``C`` (1x1 ``C -> r1``)           ``kh*kw`` (the core)
============  ==============================  ================================  =================================

**Exact or approximate.** A convolution's output at one position is ``y = Σ_t x_t W_t`` over its taps, so the
output error of ``W_t - A B_t`` is ``Σ_{t,t'} tr((W_t - A B_t)ᵀ S_{tt'} (W_{t'} - A B_{t'}))`` with the *patch*
second moment ``S_{tt'} = E[x_tᵀ x_{t'}]``. The closed form above uses one per-tap moment
``S_1 = mean_t S_{tt}``: it is exact when neighbouring taps are uncorrelated (then the cross blocks vanish and
every diagonal block is ``S_1``), and for Dense layers (one tap); on real images neighbouring pixels are strongly
correlated, so for convolutions it is only the starting point. The second factor (``B``, with the bias) is then
refitted by least squares on the full patch moment, which is exact for the given first factor: its output error
is the smallest any second factor can give. One-off fits (the final forward-order refit) then alternate exact
solves for the first factor on the full patch moment and refits of the second (:mod:`tfcompress.data_refine`:
a few rounds, bounded in cost; weight and spatial SVD), which lowers the output error further; a selection's many
ranks per layer skip it (its cost times the candidates). The fitted factors are compared with the data-free ones (their
second factor refitted too, and as they are) on the same moments and the lowest output error wins, so the
result is never worse than the data-free factors on the fitting data; when the data-free start wins, or the
moments are unusable (all-zero inputs, non-finite values), :attr:`LowRankFit.notes` says so.

**Asymmetric fits.** For the final model each layer is fitted to reproduce the ORIGINAL layer's output from the
COMPRESSED model's inputs ``x̂``: the moments are then ``E[x̂ x̂ᵀ]`` and ``E[x̂ xᵀ]`` (:class:`Moments` with
``cross``), and the target kernel of the closed form becomes ``E[x̂ x̂ᵀ]⁻¹ E[x̂ xᵀ] W``; errors of the layers
before are then absorbed instead of accumulated. The original layer's outputs ``y = x W + b`` may be given in
place of its inputs (``output_cross = E[x̂ yᵀ]``, ...): the same fit, from ``O(dim·N)`` numbers.

Moments are ``O((T*d)²)`` per layer and accumulated batch by batch (:class:`MomentAccumulator`): the samples
themselves are never kept.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 8))         # inputs in a 3-dim subspace
    >>> w = rng.normal(size=(8, 6))
    >>> acc = MomentAccumulator(8)
    >>> acc.add(x)
    >>> fit = fit_dense(w, None, acc.moments(), rank=3)
    >>> a, b = fit.factors
    >>> bool(np.allclose(x @ a @ b, x @ w))                              # exact at the subspace's rank
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from . import decompose
from .data_moments import (
    MomentAccumulator,
    Moments,
    output_error,
    solve_psd,
)
from .data_problem import FitProblem, LowRankFit
from .data_refine import refined_fit

__all__ = [
    "Moments",
    "MomentAccumulator",
    "LowRankFit",
    "fit_two_stage",
    "fit_tucker",
    "fit_dense",
    "fit_conv2d",
    "conv2d_problem",
    "FitProblem",
    "spatial_order",
    "output_error",
]

# ---------------------------------------------------------------- results and shared algebra


def _balance(a: np.ndarray, second: np.ndarray, taps: int) -> tuple[np.ndarray, np.ndarray]:
    """Rescale each rank component so the first factor's column and the second factor's rows have equal norms
    (the product is unchanged; float32 and fine-tuning like comparable scales)."""
    r = a.shape[1]
    col = np.linalg.norm(a, axis=0)
    row = np.linalg.norm(second.reshape(taps, r, -1).transpose(1, 0, 2).reshape(r, -1), axis=1)
    s = np.where((col > 0) & (row > 0), np.sqrt(row / np.where(col > 0, col, 1.0)), 1.0)
    second = (second.reshape(taps, r, -1) / s[None, :, None]).reshape(taps * r, -1)
    return a * s, second


def _prefix_scale(a: np.ndarray, basis: np.ndarray) -> np.ndarray | None:
    """``c`` with ``a == basis * c`` (each column of ``a`` a multiple of the basis column; ``basis`` orthonormal
    columns), or ``None`` when ``a`` is not of that form."""
    if a.shape != basis.shape:
        return None
    c = np.einsum("ij,ij->j", basis, a)
    tolerance = 1e-9 * max(float(np.abs(a).max(initial=0.0)), 1e-300)
    return c if np.allclose(a, basis * c, rtol=0.0, atol=tolerance) else None


def _left_vectors(svd: decompose.TruncatedSVD, k: int) -> np.ndarray:
    """The leading ``k`` left singular vectors (float64): the data-free first factors' columns, unscaled."""
    svd.factors(k)  # makes sure they are held
    return np.asarray(svd.u[:, :k], dtype=np.float64)


def _start_note(options: list[tuple], best: tuple) -> list[str]:
    """A note when the data-free start fitted the data clearly better than the whitened one."""
    whitened = [o[0] for o in options if o[1] == "whitened"]
    if best[1] == "whitened" or not whitened or best[0] >= whitened[0] * (1 - 1e-6) - 1e-12:
        return []
    return [f"the {best[1]} factors fit the data better than the whitened ones: kept"]


# ---------------------------------------------------------------- two stages: (I_T ⊗ A) then B


def fit_two_stage(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    moments: Moments,
    taps: int,
    rank: int,
    data_free: tuple[np.ndarray, np.ndarray] | None = None,
    problem: FitProblem | None = None,
    refine: bool | None = None,
) -> LowRankFit:
    """Rank-``rank`` factors ``a (d, r)``, ``second (taps*r, N)`` of ``kernel (taps*d, N)`` (tap-major rows)
    minimising the output error on ``moments`` (of the ``taps*d``-wide input patches).

    The layer they describe applies ``a`` to each tap's ``d``-vector, then the per-tap blocks of ``second`` summed
    over the taps, then the bias. ``data_free``: the data-free ``(a, second)`` to compare with (default: from the
    truncated SVD of the ``(d, taps*N)`` unfolding). ``problem``: the layer's :class:`FitProblem` for these
    ``kernel``, ``bias``, ``moments`` and ``taps``, shared by the fits of several ranks (built when not given).
    ``refine``: refine the first factor on the full patch moment (:mod:`tfcompress.data_refine`, a few exact
    alternating solves; convolutions only); default: for one-off fits (the final forward-order refit), not for a
    :attr:`FitProblem.shared` problem (a selection's many ranks).

    Example:
        >>> rng = np.random.default_rng(1)
        >>> acc = MomentAccumulator(4); acc.add(rng.normal(size=(300, 4)))
        >>> fit = fit_two_stage(rng.normal(size=(4, 3)), np.zeros(3), acc.moments(), taps=1, rank=2)
        >>> fit.error <= fit.data_free_error
        True
    """
    if problem is None:
        problem = FitProblem(kernel, bias, moments, taps)
    kernel, bias, taps = problem.kernel, problem.bias, problem.taps
    d = moments.dim // taps
    n_out = kernel.shape[1]
    rank = int(rank)
    if not 1 <= rank <= min(d, taps * n_out):
        raise ValueError(f"rank must be between 1 and {min(d, taps * n_out)}, got {rank}.")

    def unfold(flat: np.ndarray) -> np.ndarray:  # (taps*d, N) -> (d, taps*N)
        return flat.reshape(taps, d, n_out).transpose(1, 0, 2).reshape(d, taps * n_out)

    if data_free is None:
        svd = problem.remembered("svd", lambda: decompose.TruncatedSVD.of(unfold(kernel)))
        left, right = svd.factors(rank)
        data_free = (left, right.reshape(rank, taps, n_out).transpose(1, 0, 2).reshape(taps * rank, n_out))
    a0, second0 = (np.asarray(f, dtype=np.float64) for f in data_free)

    def split(last: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return (last[:-1], last[-1]) if problem.with_bias else (last, None)

    last0 = second0 if bias is None else np.vstack([second0, bias[None]])
    most = min(d, taps * n_out)
    options: list[tuple[float, str, np.ndarray, np.ndarray]] = []
    svd, scale = problem.known("svd"), None
    if problem.shared and svd is not None and svd.u.shape[0] == d and svd.max_rank == most:
        nested0 = problem.refits("data-free", lambda k: _left_vectors(svd, k), rank, most)
        scale = _prefix_scale(a0, nested0.basis(rank))  # type: ignore[union-attr]
    if scale is not None:
        u = nested0.basis(rank)  # type: ignore[union-attr]
        rows = np.concatenate([np.tile(scale, taps), np.ones(last0.shape[0] - taps * rank)])
        options.append((nested0.error(rank, last0 * rows[:, None]), "data-free", a0, last0))  # type: ignore[union-attr]
        refit0, refit_error = nested0.solve(rank)  # type: ignore[union-attr]
        options.append((refit_error, "data-free, refitted", u, refit0))
    else:
        g0, h0 = problem.projected(a0)
        options.append((problem.error(last0, g0, h0), "data-free", a0, last0))
        refit0 = solve_psd(g0, h0)
        options.append((problem.error(refit0, g0, h0), "data-free, refitted", a0, refit0))
    error0 = options[0][0]
    notes: list[str] = []
    chol, vectors, why = problem.whitened_start(unfold)
    if why:
        notes.append(why)
    if chol is not None:
        nested = problem.refits("whitened", lambda k: problem.whitened_basis(k), rank, most)
        if nested is not None:
            a = nested.basis(rank)
            last, error = nested.solve(rank)
        else:
            a = np.linalg.solve(chol.T, vectors[:, :rank])
            g, h = problem.projected(a)
            last = solve_psd(g, h)
            error = problem.error(last, g, h)
        options.append((error, "whitened", a, last))
    best = min(options, key=lambda o: (o[0], o[1] != "whitened"))
    notes += _start_note(options, best)
    if refine is None:
        refine = not problem.shared
    if refine:
        best = refined_fit(problem, best, notes)
    second, new_bias = split(best[3])
    a, second = _balance(best[2], second, taps)
    return LowRankFit((a, second), new_bias, best[0], error0, problem.reference, best[1], notes)


# ---------------------------------------------------------------- Tucker-2: (I_T ⊗ U_in) K U_out


def fit_tucker(
    kernel: np.ndarray,
    bias: np.ndarray | None,
    moments: Moments,
    taps: int,
    ranks: tuple[int, int],
    data_free: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    problem: FitProblem | None = None,
) -> LowRankFit:
    """Tucker-2 factors ``u_in (C, r1)``, ``core (taps*r1, r2)``, ``u_out (r2, N)`` of ``kernel (taps*C, N)``
    minimising the output error on ``moments``.

    The input mode is whitened by the per-pixel channel moment (as for weight SVD); the output mode is the
    principal subspace of the original layer's outputs (the output error is measured in output space, so the
    best ``r2``-dim output subspace is the outputs' leading principal one); the core is the exact least-squares
    fit given both (a constant in the core's outputs is the same as one more output bias); ``u_out`` and the bias
    are then refitted given the core. ``data_free``: the HOSVD factors in the same layout to compare with (they
    are also tried with a refitted core). ``problem``: as for :func:`fit_two_stage`.

    Example:
        >>> rng = np.random.default_rng(2)
        >>> acc = MomentAccumulator(9 * 3); acc.add(rng.normal(size=(400, 27)))
        >>> k = rng.normal(size=(27, 5))
        >>> fit = fit_tucker(k, None, acc.moments(), taps=9, ranks=(2, 3))
        >>> [f.shape for f in fit.factors]
        [(3, 2), (18, 3), (3, 5)]
    """
    if problem is None:
        problem = FitProblem(kernel, bias, moments, taps)
    kernel, bias, taps = problem.kernel, problem.bias, problem.taps
    c = moments.dim // taps
    n_out = kernel.shape[1]
    r_in, r_out = (int(r) for r in ranks)
    if not (1 <= r_in <= c and 1 <= r_out <= n_out):
        raise ValueError(f"Tucker-2 ranks must be within (1..{c}, 1..{n_out}), got {ranks}.")
    if data_free is None:
        k4 = kernel.reshape(taps, 1, c, n_out)
        u_in0, core0, u_out0 = decompose.tucker2_factors(k4, (r_in, r_out))
        data_free = (u_in0[0, 0], core0.reshape(taps * r_in, r_out), u_out0[0, 0])
    u_in0, core0, u_out0 = (np.asarray(f, dtype=np.float64) for f in data_free)
    extra = 1 if problem.with_bias else 0

    def through_core(core: np.ndarray, g: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(G, H)`` of the features after the core (the constant passed through)."""
        k = np.zeros((core.shape[0] + extra, r_out + extra))
        k[: core.shape[0], :r_out] = core
        if extra:
            k[-1, -1] = 1.0
        return k.T @ g @ k, k.T @ h

    def last_of(u_out: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        return u_out if not extra else np.vstack([u_out, b[None]])

    g0, h0 = problem.projected(u_in0)
    error0 = problem.error(last_of(u_out0, bias), *through_core(core0, g0, h0))
    options = [(error0, "data-free", u_in0, core0, last_of(u_out0, bias))]
    notes: list[str] = []
    chol, _vectors, why = problem.whitened_start(
        lambda t: t.reshape(taps, c, n_out).transpose(1, 0, 2).reshape(c, taps * n_out)
    )
    if why:
        notes.append(why)
    starts = [("data-free, refitted", u_in0, u_out0, g0, h0)]
    nested = None
    if chol is not None:
        eigvec = problem.output_directions()[:, :r_out]
        nested = problem.refits("whitened", problem.whitened_basis, r_in, c)
        if nested is None:
            u_in = problem.whitened_basis(r_in)
            starts.insert(0, ("whitened", u_in, eigvec.T, *problem.projected(u_in)))
        else:
            starts.insert(0, ("whitened", nested.basis(r_in), eigvec.T, *nested.blocks(r_in)))
    for name, u_in, u_out, g, h in starts:
        if name == "whitened" and nested is not None:
            core = nested.solve_for(r_in, h @ u_out.T)[: taps * r_in]
        else:
            core = solve_psd(g, h @ u_out.T)[: taps * r_in]  # u_out has orthonormal rows
        gk, hk = through_core(core, g, h)
        last = solve_psd(gk, hk)
        options.append((problem.error(last, gk, hk), name, u_in, core, last))
    best = min(options, key=lambda o: (o[0], o[1] != "whitened"))
    notes += _start_note(options, best)
    u_out, new_bias = (best[4][:-1], best[4][-1]) if extra else (best[4], None)
    return LowRankFit((best[2], best[3], u_out), new_bias, best[0], error0, problem.reference, best[1], notes)


# ---------------------------------------------------------------- layer kernels


def fit_dense(
    kernel: np.ndarray, bias: np.ndarray | None, moments: Moments, rank: int, problem: FitProblem | None = None
) -> LowRankFit:
    """Data-aware SVD of a Dense ``(in, units)`` kernel: factors ``(in, r)``, ``(r, units)`` (see module docs).
    ``problem``: ``FitProblem(kernel, bias, moments, 1)``, shared by the fits of several ranks.

    Example:
        >>> acc = MomentAccumulator(3); acc.add(np.eye(3) * [1.0, 1.0, 0.0])
        >>> fit = fit_dense(np.eye(3), None, acc.moments(), rank=2)
        >>> round(fit.error, 12)
        0.0
    """
    return fit_two_stage(kernel, bias, moments, taps=1, rank=rank, problem=problem)


def spatial_order(kh: int, kw: int, c: int) -> np.ndarray:
    """The permutation taking patch columns ``(i*kw + j)*C + c`` (as ``extract_patches`` lays them out) to the
    spatial-SVD layout: tap ``j`` major, then ``c*kh + i`` (the rows of the ``(C*kh, N*kw)`` unfolding).

    Example:
        >>> spatial_order(2, 1, 2).tolist()     # (i, c): (0,0) (0,1) (1,0) (1,1) -> c*2 + i
        [0, 2, 1, 3]
    """
    return np.arange(kh * kw * c).reshape(kh, kw, c).transpose(1, 2, 0).ravel()


def conv2d_problem(scheme: str, kernel: np.ndarray, bias: np.ndarray | None, moments: Moments) -> FitProblem:
    """The :class:`FitProblem` of a ``(kh, kw, C, N)`` Conv2D kernel for ``scheme`` (the patch columns reordered
    for spatial SVD), to share between :func:`fit_conv2d` calls at several ranks.

    Example:
        >>> acc = MomentAccumulator(8); acc.add(np.random.default_rng(0).normal(size=(50, 8)))
        >>> conv2d_problem("weight_svd", np.ones((2, 2, 2, 3)), None, acc.moments()).taps
        4
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"fit_conv2d expects a (kh, kw, C, N) kernel, got shape {kernel.shape}.")
    kh, kw, c, n = kernel.shape
    if moments.dim != kh * kw * c:
        raise ValueError(f"fit_conv2d: the moments have {moments.dim} features, the kernel's patches {kh * kw * c}.")
    if scheme in ("weight_svd", "tucker"):
        return FitProblem(kernel.reshape(-1, n), bias, moments, kh * kw)
    if scheme == "spatial_svd":
        flat = kernel.transpose(1, 2, 0, 3).reshape(kw * c * kh, n)  # rows (j, c, i)
        return FitProblem(flat, bias, moments.permuted(spatial_order(kh, kw, c)), kw)
    raise ValueError(f"fit_conv2d: scheme must be 'weight_svd', 'spatial_svd' or 'tucker', got {scheme!r}.")


def fit_conv2d(
    scheme: str,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    moments: Moments,
    rank: int | Sequence[int],
    problem: FitProblem | None = None,
    refine: bool | None = None,
) -> tuple[list[np.ndarray], LowRankFit]:
    """Data-aware factor kernels of a ``(kh, kw, C, N)`` Conv2D kernel for ``scheme`` (``"weight_svd"``,
    ``"spatial_svd"`` or ``"tucker"``), from the moments of its ``kh*kw*C`` input patches (columns as
    ``kernel.reshape(-1, N)``, i.e. as :func:`tfcompress.pruning.reconstruct.extract_patches` gives them).

    Returns the factor kernels in the decomposed layer's order (as :mod:`tfcompress.decompose` gives them) and
    the fit (its ``bias`` replaces the layer's bias). ``problem``: :func:`conv2d_problem` of the same arguments,
    shared by the fits of several ranks (built when not given). ``refine``: as for :func:`fit_two_stage` (weight
    and spatial SVD; Tucker-2 is not refined).

    Example:
        >>> rng = np.random.default_rng(3)
        >>> k = rng.normal(size=(3, 3, 4, 6))
        >>> acc = MomentAccumulator(36); acc.add(rng.normal(size=(200, 36)))
        >>> kernels, fit = fit_conv2d("spatial_svd", k, None, acc.moments(), 4)
        >>> [x.shape for x in kernels]
        [(3, 1, 4, 4), (1, 3, 4, 6)]
    """
    if problem is None:
        problem = conv2d_problem(scheme, kernel, bias, moments)
    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw, c, n = kernel.shape
    if scheme == "weight_svd":
        svd = problem.remembered("svd", lambda: decompose.TruncatedSVD.of(decompose.weight_svd_unfold(kernel)))
        a0, b0 = decompose.weight_svd_factors(kernel, int(rank), svd)
        start = (a0[0, 0], b0.reshape(kh * kw * int(rank), n))
        fit = fit_two_stage(problem.kernel, bias, problem.moments, kh * kw, int(rank), start, problem, refine)
        a, second = fit.factors
        return [a[None, None], second.reshape(kh, kw, -1, n)], fit
    if scheme == "spatial_svd":
        r = int(rank)
        svd = problem.remembered("svd", lambda: decompose.TruncatedSVD.of(decompose.spatial_svd_unfold(kernel)))
        v0, h0 = decompose.spatial_svd_factors(kernel, r, svd)
        start = (v0[:, 0].transpose(1, 0, 2).reshape(c * kh, r), h0[0].reshape(kw * r, n))
        fit = fit_two_stage(problem.kernel, bias, problem.moments, kw, r, start, problem, refine)
        a, second = fit.factors
        return [a.reshape(c, kh, r).transpose(1, 0, 2)[:, None], second.reshape(kw, r, n)[None]], fit
    r_in, r_out = (int(x) for x in rank)  # type: ignore[union-attr]
    u_in0, core0, u_out0 = decompose.tucker2_factors(kernel, (r_in, r_out), hooi_iterations=2)
    start3 = (u_in0[0, 0], core0.reshape(kh * kw * r_in, r_out), u_out0[0, 0])
    fit = fit_tucker(problem.kernel, bias, problem.moments, kh * kw, (r_in, r_out), start3, problem)
    u_in, core, u_out = fit.factors
    return [u_in[None, None], core.reshape(kh, kw, r_in, r_out), u_out[None, None]], fit


def with_notes(fit: LowRankFit, *notes: str) -> LowRankFit:
    """A copy of ``fit`` with more notes."""
    return replace(fit, notes=[*fit.notes, *notes])
