"""One layer's data-aware fitting problem and what a fit returns (plain numpy).

:class:`FitProblem` holds everything about one layer's fit that does not depend on the rank: the products of its
``[W; b]`` with the (augmented) input moments, the output error as a cheap quadratic in the last factor, the
whitening and the whitened target's singular vectors, the outputs' principal directions and the nested refits of
every rank. :class:`LowRankFit` is what a fit of :mod:`tfcompress.data_aware` returns: factors, bias, the output
error and the data-free factors' error on the same data.

Example:
    >>> import numpy as np
    >>> from tfcompress.data_moments import MomentAccumulator
    >>> acc = MomentAccumulator(3); acc.add(np.random.default_rng(0).normal(size=(100, 3)))
    >>> problem = FitProblem(np.eye(3), None, acc.moments(), taps=1)
    >>> problem.error(np.eye(3), *problem.projected(np.eye(3)))      # the kernel itself: no output error
    0.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data_moments import (
    Moments,
    NestedRefits,
    expand_left,
    per_tap,
    projected,
    ridge_for,
    solve_psd,
    whitening,
)

__all__ = ["LowRankFit", "FitProblem", "check_inputs", "ASYMMETRIC_TARGET_MAX"]


@dataclass
class LowRankFit:
    """Fitted factors, their output error on the fitting data and what the data-free factors give there.

    ``error`` and ``data_free_error`` are ``E||y - ŷ||²`` per sample (``y`` the original layer's output before the
    activation); ``reference`` is ``E||y - E y||²`` (``E||y||²`` without a bias), so ``error / reference`` is a
    relative output error. ``notes`` says when the data-free start won or the moments could not be used.
    """

    factors: tuple[np.ndarray, ...]
    bias: np.ndarray | None
    error: float
    data_free_error: float
    reference: float
    start: str = "whitened"
    notes: list[str] = field(default_factory=list)

    @property
    def relative_error(self) -> float:
        return self.error / self.reference if self.reference > 0 else 0.0

    @property
    def data_free_relative_error(self) -> float:
        return self.data_free_error / self.reference if self.reference > 0 else 0.0


def check_inputs(kernel: np.ndarray, bias: np.ndarray | None, moments: Moments) -> tuple[np.ndarray, np.ndarray | None]:
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2:
        raise ValueError(f"expected a (dim, N) kernel, got shape {kernel.shape}.")
    if kernel.shape[0] != moments.dim:
        raise ValueError(f"the kernel has {kernel.shape[0]} input rows but the moments {moments.dim} features.")
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64).reshape(kernel.shape[1])
    return kernel, bias


# ---------------------------------------------------------------- one layer's problem, the big products done once


class FitProblem:
    """One layer's fit: ``w̃ = [W; b]`` against the (augmented) moments, with the products by the ``(T*d)²``
    moments computed once. Every error is then cheap: for a last factor ``B̃`` applied to features ``Qᵀ x̂̃`` with
    ``G = Qᵀ Ŝ Q`` and ``H = Qᵀ M w̃``, ``E||y - ŷ||² = c - 2 tr(B̃ᵀ H) + tr(B̃ᵀ G B̃)``.

    Everything that does not depend on the rank (these products, the whitening, the whitened target's singular
    vectors, the outputs' principal directions) is computed once and kept here, so a selection that tries many
    ranks of one layer passes the same problem to every fit (``problem=``). Marked :attr:`shared` (as the selection
    marks it), the refits of the last factor are also made once for every rank
    (:class:`~tfcompress.data_moments.NestedRefits`: one projection by the whole basis of each start, one Cholesky
    factorisation, then a product of its own size per rank); unshared, each rank projects the moments by its own
    factors (cheaper for a single rank, as the final forward-order refit fits each layer once).
    """

    def __init__(self, kernel: np.ndarray, bias: np.ndarray | None, moments: Moments, taps: int) -> None:
        kernel, bias = check_inputs(kernel, bias, moments)
        taps = int(taps)
        if (moments.dim // taps) * taps != moments.dim:
            raise ValueError(f"{moments.dim} features are not {taps} taps of equal width.")
        self._start: tuple | None = None
        self._output_directions: np.ndarray | None = None
        self._memo: dict[str, Any] = {}
        self._refits: dict[str, NestedRefits] = {}
        #: set when the problem serves the fits of several ranks (a selection): each start's refits are then made
        #: for every rank at once (:class:`~tfcompress.data_moments.NestedRefits`); one-off fits leave it unset
        self.shared = False
        self.moments = moments
        self.taps = taps
        self.with_bias = bias is not None
        self.kernel, self.bias = kernel, bias
        self.w = kernel if bias is None else np.vstack([kernel, bias[None]])
        if moments.has_outputs:  # the original outputs are given: E[x̂̃ yᵀ] is the product below, read directly
            if moments.output_cross.shape[1] != kernel.shape[1]:  # type: ignore[union-attr]
                raise ValueError(
                    f"the moments hold {moments.output_cross.shape[1]} outputs, the kernel "  # type: ignore[union-attr]
                    f"{kernel.shape[1]}."
                )
            self.gram, self.mw, self.output_cov, mean_norm = moments.output_targets(self.with_bias)
            self.const = float(np.trace(self.output_cov))
            self.reference = self.const
            if self.with_bias:
                mean_y = np.asarray(moments.output_mean, dtype=np.float64)
                self.output_cov = self.output_cov - np.outer(mean_y, mean_y)
                self.reference -= mean_norm
        else:
            self.gram, cross, target = moments.augmented(self.with_bias)
            self.mw = cross @ self.w  # the one product by the (T*d)² moments every fit needs
            sxw = self.mw if moments.symmetric else target @ self.w
            self.const = float(np.sum(self.w * sxw))
            self.output_cov = self.w.T @ sxw  # E[y yᵀ]
            self.reference = self.const
            if self.with_bias:
                mean_y = target[-1] @ self.w
                self.output_cov = self.output_cov - np.outer(mean_y, mean_y)
                self.reference -= float(mean_y @ mean_y)
        self.reference = max(self.reference, 0.0)

    def error(self, last: np.ndarray, g: np.ndarray, h: np.ndarray) -> float:
        return max(self.const - 2 * float(np.sum(last * h)) + float(np.sum(last * (g @ last))), 0.0)

    def per_tap_cov(self) -> np.ndarray:
        """The per-tap second moment of the inputs, centred when a bias takes the mean."""
        d = self.moments.dim // self.taps
        s1 = per_tap(self.moments.gram, self.taps)
        if self.with_bias:
            means = self.moments.mean.reshape(self.taps, d)
            s1 = s1 - means.T @ means / self.taps
        return s1

    def whitened_target(self) -> np.ndarray:
        """The kernel whose whitened SVD starts the fit: ``W`` itself, or for an asymmetric fit the least-squares
        map ``Cov(x̂)⁻¹ Cov(x̂, x) W`` (ridge-regularised; ``W`` when the patch is too wide to solve cheaply)."""
        m = self.moments
        if m.symmetric or m.dim > ASYMMETRIC_TARGET_MAX:
            return self.kernel
        ridge = ridge_for(m.dim, m.count)
        if m.has_outputs:  # Cov(x̂)⁻¹ Cov(x̂, y)
            if not self.with_bias:
                return solve_psd(m.gram, m.output_cross, ridge)  # type: ignore[arg-type]
            cov = m.output_cross - np.outer(m.mean, m.output_mean)  # type: ignore[operator]
            return solve_psd(m.gram - np.outer(m.mean, m.mean), cov, ridge)
        gram_c, cross_c, _ = m.centred() if self.with_bias else m.augmented(False)
        return solve_psd(gram_c, cross_c @ self.kernel, ridge)

    def projected(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(G, H)`` for first factor ``a`` applied to every tap (the bias's constant passed through)."""
        return projected(a, self.taps, self.gram), expand_left(a, self.taps, self.mw)

    def whitened_start(
        self, unfold: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
        """``(L, vectors, why)``: the whitening of the per-tap moment and every left singular vector of the whitened
        (unfolded) target, leading first; computed once per layer, whatever the ranks asked for later."""
        if self._start is None:
            chol, why = whitening(self.per_tap_cov(), self.moments.count)
            vectors = None
            if chol is not None:
                z = chol.T @ unfold(self.whitened_target())
                vectors = np.linalg.eigh(z @ z.T)[1][:, ::-1]
            self._start = (chol, vectors, why)
        return self._start

    def refits(self, name: str, basis: Callable[[int], np.ndarray], rank: int, most: int) -> NestedRefits | None:
        """The :class:`~tfcompress.data_moments.NestedRefits` of the first-factor basis ``basis(k)`` (``(d, k)``, its
        leading ``r`` columns the rank-``r`` first factor), for ``rank``; ``None`` when the problem is not
        :attr:`shared`. Made once up to the rank at which the factors hold as many weights as the kernel (higher
        ranks save nothing: a selection does not score them), and once more up to ``most`` if a higher rank is asked
        for; this keeps the calls to ``basis`` (and the projections) to one or two per layer, whatever the number
        of candidate ranks."""
        if not self.shared:
            return None
        have = self._refits.get(name)
        if have is None or have.rank < rank:
            d, n_out = self.moments.dim // self.taps, self.kernel.shape[1]
            even = -(-self.taps * d * n_out // (d + self.taps * n_out))
            k = min(most, max(rank, even) if have is None else most)
            self._refits.pop(name, None)  # drop the old one before building the next
            self.counts[name] = self.counts.get(name, 0) + 1
            self._refits[name] = NestedRefits(basis(k), self.taps, self.gram, self.mw, self.const)
        return self._refits[name]

    @property
    def counts(self) -> dict[str, int]:
        """How many times each start's basis was projected for :meth:`refits` (what the tests count)."""
        return self._memo.setdefault("_refit_counts", {})

    def known(self, key: str) -> Any:
        """What :meth:`remembered` holds for ``key``, or ``None``."""
        return self._memo.get(key)

    def remembered(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for, the same object afterwards (e.g. the truncated SVD
        the data-free factors of every rank come from)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def whitened_basis(self, k: int) -> np.ndarray:
        """The leading ``k`` whitened first-factor columns ``L⁻ᵀ v_i`` (unit norm), after :meth:`whitened_start`."""
        assert self._start is not None and self._start[0] is not None
        chol, vectors, _ = self._start
        a = np.linalg.solve(chol.T, vectors[:, :k])
        return a / (np.linalg.norm(a, axis=0, keepdims=True) + 1e-300)

    def output_directions(self) -> np.ndarray:
        """The principal directions of the original layer's outputs, leading first (columns)."""
        if self._output_directions is None:
            self._output_directions = np.linalg.eigh((self.output_cov + self.output_cov.T) / 2)[1][:, ::-1]
        return self._output_directions


#: widest patch for which an asymmetric fit solves for its target kernel (a ``dim³`` solve) before whitening
ASYMMETRIC_TARGET_MAX = 3000
