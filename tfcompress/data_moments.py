"""Moments of a layer's input vectors, and the linear algebra the data-aware fits do on them (plain numpy).

:class:`MomentAccumulator` streams batches of input vectors into their first and second moments (float64,
``O(dim²)`` numbers whatever the number of samples); :class:`Moments` holds them (paired with a reference model's
inputs for the asymmetric fits). :func:`output_error` is a linear layer's output error from the moments alone;
:func:`whitening`, :func:`solve_psd`, :func:`per_tap` and :func:`projected` are the regularised solves and
products :mod:`tfcompress.data_aware` builds its fits from.

Example:
    >>> acc = MomentAccumulator(2)
    >>> acc.add(np.array([[1.0, 0.0], [0.0, 2.0]]))
    >>> m = acc.moments()
    >>> output_error(m, np.eye(2), None, np.zeros((2, 2)), None)       # E||x||²
    2.5
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Moments",
    "MomentAccumulator",
    "output_error",
    "solve_psd",
    "whitening",
    "per_tap",
    "projected",
    "expand_left",
    "ridge_for",
    "tril_inverse",
    "NestedRefits",
    "WHITENING_RIDGE",
    "SHRINKAGE",
    "REFIT_RIDGE",
]

#: relative ridge added to a moment before it is whitened by or solved with: ``λ · tr(S)/d · I`` with
#: ``λ = max(WHITENING_RIDGE, SHRINKAGE * d / samples)``: negligible when the samples far outnumber the features,
#: a shrinkage towards white inputs when they do not (a moment estimated from few samples must not steer the
#: factors into directions the samples barely saw: they would not generalise)
WHITENING_RIDGE = 1e-6
SHRINKAGE = 1e-2
#: relative ridge of the least-squares refits (tiny: only keeps the solve finite where the data sees nothing)
REFIT_RIDGE = 1e-12
#: the same for :class:`NestedRefits`, whose Cholesky factorisation needs a positive definite matrix: 1e-12 failed on
#: most ResNet50 layers (zero padding and ReLU make the patch moment singular) and cost a second factorisation
NESTED_RIDGE = 1e-10


# ---------------------------------------------------------------- moments


@dataclass(frozen=True)
class Moments:
    """First and second moments of a layer's input vectors (float64), the only thing the fits need.

    ``mean = E[x̂]`` and ``gram = E[x̂ x̂ᵀ]`` of the inputs the fitted layer will see. For an asymmetric fit,
    what the fitted layer must reproduce is given one of two ways:

    * by the original layer's INPUTS at the same positions: ``target_mean = E[x]``, ``cross = E[x̂ xᵀ]`` and
      ``target_gram = E[x xᵀ]`` (the original kernel then gives the outputs);
    * by the original layer's OUTPUTS there (before its activation): ``output_mean = E[y]``,
      ``output_cross = E[x̂ yᵀ]`` (``dim x N``) and ``output_gram = E[y yᵀ]``: ``O(dim·N)`` numbers instead of
      ``O(dim²)``, and what :func:`~tfcompress.data_fit.refit_forward` reads (the outputs of the original model's
      layers can be read for several layers in one pass and kept, their inputs could not).

    Neither: the same inputs, ``x = x̂`` (a symmetric fit).
    """

    count: int
    mean: np.ndarray
    gram: np.ndarray
    target_mean: np.ndarray | None = None
    cross: np.ndarray | None = None
    target_gram: np.ndarray | None = None
    output_mean: np.ndarray | None = None
    output_cross: np.ndarray | None = None
    output_gram: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def symmetric(self) -> bool:
        return self.cross is None and self.output_cross is None

    @property
    def has_outputs(self) -> bool:
        """Whether the target is given by the original layer's outputs (``output_*``)."""
        return self.output_cross is not None

    def permuted(self, order: np.ndarray) -> Moments:
        """The moments of ``x[order]`` (reorders the features, e.g. patch columns into another tap layout)."""
        order = np.asarray(order)

        def square(m: np.ndarray | None) -> np.ndarray | None:
            return None if m is None else m[np.ix_(order, order)]

        return Moments(
            self.count,
            self.mean[order],
            square(self.gram),
            None if self.target_mean is None else self.target_mean[order],
            square(self.cross),
            square(self.target_gram),
            self.output_mean,
            None if self.output_cross is None else self.output_cross[order],
            self.output_gram,
        )

    def augmented(self, with_bias: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(Ŝ, M, S)``: the second moments of ``[x̂, 1]``, ``[x̂, 1]`` with ``[x, 1]``, and ``[x, 1]``;
        without a bias the plain ``E[x̂ x̂ᵀ]``, ``E[x̂ xᵀ]``, ``E[x xᵀ]``. Not for moments with output targets
        (:meth:`output_targets` gives theirs)."""
        if self.has_outputs:
            raise ValueError("Moments.augmented: these moments give the original outputs: use output_targets().")
        mean_x = self.mean if self.target_mean is None else self.target_mean
        cross = self.gram if self.cross is None else self.cross
        target = self.gram if self.target_gram is None else self.target_gram
        if not with_bias:
            return self.gram, cross, target
        if self.symmetric and self.target_gram is None:  # one (dim+1)² copy, not three of the same values
            same = _augment(self.gram, self.mean, self.mean)
            return same, same, same
        return (
            _augment(self.gram, self.mean, self.mean),
            _augment(cross, self.mean, mean_x),
            _augment(target, mean_x, mean_x),
        )

    def output_targets(self, with_bias: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """``(Ŝ, E[x̂̃ yᵀ], E[y yᵀ], |E y|²)`` for output targets: the (augmented, with ``[x̂, 1]`` when
        ``with_bias``) input moment, the inputs' cross moment with the original outputs ``y``, their second
        moment and the squared norm of their mean."""
        if not self.has_outputs:
            raise ValueError("Moments.output_targets: these moments hold no original outputs.")
        mean_y = np.asarray(self.output_mean, dtype=np.float64)
        if not with_bias:
            return self.gram, self.output_cross, self.output_gram, float(mean_y @ mean_y)  # type: ignore[return-value]
        cross = np.vstack([self.output_cross, mean_y[None]])  # type: ignore[list-item]
        gram = _augment(self.gram, self.mean, self.mean)
        return gram, cross, self.output_gram, float(mean_y @ mean_y)  # type: ignore[return-value]

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(Cov x̂, Cov(x̂, x), Cov x)``: what is left of the second moments once a bias takes the means."""
        if self.has_outputs:
            raise ValueError("Moments.centred: these moments give the original outputs, not their inputs.")
        mean_x = self.mean if self.target_mean is None else self.target_mean
        gram = self.gram - np.outer(self.mean, self.mean)
        if self.symmetric:
            return gram, gram, gram
        return (
            gram,
            self.cross - np.outer(self.mean, mean_x),
            self.target_gram - np.outer(mean_x, mean_x),
        )


def _augment(m: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The second moment ``m`` of ``[u, v]`` extended to ``[u, 1]`` and ``[v, 1]``: the means ``left = E[u]`` and
    ``right = E[v]`` as the last column and row, 1 in the corner."""
    out = np.empty((m.shape[0] + 1, m.shape[1] + 1))
    out[:-1, :-1] = m
    out[:-1, -1] = left
    out[-1, :-1] = right
    out[-1, -1] = 1.0
    return out


class MomentAccumulator:
    """Streaming sums of ``x̂``, ``x̂ x̂ᵀ`` (paired: and ``x``, ``x̂ xᵀ``, ``x xᵀ``; with ``outputs``: and ``y``,
    ``x̂ yᵀ``, ``y yᵀ``) in float64.

    Only ``O(dim²)`` numbers (``O(dim·outputs)`` for the outputs) are kept however many batches are added.

    Args:
        dim: the width of the input rows.
        paired: each batch comes with the original layer's inputs at the same positions (``targets``).
        outputs: the number of the original layer's outputs that come with each batch (``outputs=`` of
            :meth:`add`); 0 for none. Not together with ``paired``.

    Example:
        >>> acc = MomentAccumulator(2)
        >>> acc.add(np.array([[1.0, 0.0], [0.0, 2.0]]))
        >>> acc.moments().gram.tolist()
        [[0.5, 0.0], [0.0, 2.0]]
        >>> acc = MomentAccumulator(2, outputs=1)
        >>> acc.add(np.array([[1.0, 0.0], [0.0, 2.0]]), outputs=np.array([[3.0], [1.0]]))
        >>> acc.moments().output_cross.tolist()
        [[1.5], [1.0]]
    """

    def __init__(self, dim: int, paired: bool = False, outputs: int = 0) -> None:
        self.dim = int(dim)
        self.paired = bool(paired)
        self.outputs = int(outputs)
        if self.outputs < 0 or (self.paired and self.outputs):
            raise ValueError(
                f"MomentAccumulator: outputs must be >= 0 and not given with paired=True, got outputs={outputs!r}."
            )
        self.count = 0
        self._sum = np.zeros(self.dim)
        self._gram = np.zeros((self.dim, self.dim))
        if self.paired:
            self._target_sum = np.zeros(self.dim)
            self._cross = np.zeros((self.dim, self.dim))
            self._target_gram = np.zeros((self.dim, self.dim))
        if self.outputs:
            self._out_sum = np.zeros(self.outputs)
            self._out_cross = np.zeros((self.dim, self.outputs))
            self._out_gram = np.zeros((self.outputs, self.outputs))

    def add(self, inputs: np.ndarray, targets: np.ndarray | None = None, outputs: np.ndarray | None = None) -> None:
        """Add rows ``inputs`` (``(P, dim)``: what the fitted layer sees) and, paired, the matching ``targets``
        (what the original layer saw at the same positions) or, with ``outputs``, the original layer's outputs
        there (``(P, outputs)``)."""
        x = np.asarray(inputs, dtype=np.float64).reshape(-1, self.dim)
        if self.paired != (targets is not None):
            raise ValueError(
                f"MomentAccumulator.add: give targets exactly when the accumulator is paired (paired={self.paired})."
            )
        if bool(self.outputs) != (outputs is not None):
            raise ValueError(
                "MomentAccumulator.add: give outputs exactly when the accumulator was made for them "
                f"(outputs={self.outputs})."
            )
        if not np.isfinite(x).all():
            raise ValueError("MomentAccumulator.add: the inputs hold NaN or infinity.")
        y = None
        if outputs is not None:
            y = np.asarray(outputs, dtype=np.float64)
            if y.shape != (x.shape[0], self.outputs):
                raise ValueError(
                    f"MomentAccumulator.add: outputs {y.shape} do not match {x.shape[0]} rows of {self.outputs}."
                )
            if not np.isfinite(y).all():
                raise ValueError("MomentAccumulator.add: the outputs hold NaN or infinity.")
        self.count += x.shape[0]
        self._sum += x.sum(axis=0)
        self._gram += x.T @ x
        if targets is not None:
            t = np.asarray(targets, dtype=np.float64).reshape(-1, self.dim)
            if t.shape != x.shape:
                raise ValueError(f"MomentAccumulator.add: targets {t.shape} do not match inputs {x.shape}.")
            if not np.isfinite(t).all():
                raise ValueError("MomentAccumulator.add: the targets hold NaN or infinity.")
            self._target_sum += t.sum(axis=0)
            self._cross += x.T @ t
            self._target_gram += t.T @ t
        if y is not None:
            self._out_sum += y.sum(axis=0)
            self._out_cross += x.T @ y
            self._out_gram += y.T @ y

    def moments(self) -> Moments:
        """The means and second moments so far."""
        if not self.count:
            raise ValueError("MomentAccumulator.moments: no samples were added.")
        n = float(self.count)
        gram = (self._gram + self._gram.T) / (2 * n)
        if self.outputs:
            return Moments(
                self.count,
                self._sum / n,
                gram,
                output_mean=self._out_sum / n,
                output_cross=self._out_cross / n,
                output_gram=(self._out_gram + self._out_gram.T) / (2 * n),
            )
        if not self.paired:
            return Moments(self.count, self._sum / n, gram)
        return Moments(
            self.count,
            self._sum / n,
            gram,
            self._target_sum / n,
            self._cross / n,
            (self._target_gram + self._target_gram.T) / (2 * n),
        )


# ---------------------------------------------------------------- algebra on moments


def solve_psd(g: np.ndarray, h: np.ndarray, ridge: float = REFIT_RIDGE) -> np.ndarray:
    """``(g + ridge·tr(g)/n·I)⁻¹ h`` for a symmetric positive semi-definite ``g`` (the default tiny ridge only
    keeps it finite; a pseudo-inverse where even that fails)."""
    n = g.shape[0]
    scale = float(np.trace(g)) / max(n, 1)
    if not scale > 0:
        return np.zeros((n, h.shape[1]))
    try:
        out = np.linalg.solve(g + ridge * scale * np.eye(n), h)
        if np.isfinite(out).all():
            return out
        raise np.linalg.LinAlgError("non-finite solution")
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(g)
        keep = w > 1e-12 * max(float(w[-1]), 0.0)
        inv = np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)
        return v @ (inv[:, None] * (v.T @ h))


def expand_left(a: np.ndarray, taps: int, rows: np.ndarray) -> np.ndarray:
    """``Qᵀ rows`` for ``Q = blockdiag(I_taps ⊗ a, I_extra)``: each tap block of ``rows`` (``d`` rows) becomes
    ``aᵀ`` times it (``r`` rows); rows after the ``taps*d`` patch rows (the bias's constant) pass through."""
    d, r = a.shape
    head = rows[: taps * d]
    out = np.matmul(a.T, head.reshape(taps, d, -1)).reshape(taps * r, -1)  # batched over taps: BLAS
    return np.vstack([out, rows[taps * d :]]) if rows.shape[0] > taps * d else out


def projected(a: np.ndarray, taps: int, gram: np.ndarray) -> np.ndarray:
    """``Qᵀ gram Q`` (see :func:`expand_left`)."""
    return expand_left(a, taps, expand_left(a, taps, gram).T).T


def output_error(
    moments: Moments, kernel: np.ndarray, bias: np.ndarray | None, fitted: np.ndarray, fitted_bias: np.ndarray | None
) -> float:
    """``E||x W + b - (x̂ P + b')||²`` from the moments alone (``kernel``, ``fitted``: ``(dim, N)``); for moments
    with output targets ``E||y - (x̂ P + b')||²`` (the given outputs ``y`` replace ``x W + b``).

    Example:
        >>> m = Moments(1, np.zeros(2), np.eye(2))
        >>> output_error(m, np.eye(2), None, np.zeros((2, 2)), None)
        2.0
    """
    with_bias = bias is not None or fitted_bias is not None
    n_out = kernel.shape[1]
    p = (
        fitted
        if not with_bias
        else np.vstack([fitted, np.zeros((1, n_out)) if fitted_bias is None else fitted_bias[None]])
    )
    if moments.has_outputs:  # the original outputs are given: ``kernel`` and ``bias`` are not needed
        gram, out_cross, out_gram, _ = moments.output_targets(with_bias)
        value = np.trace(out_gram) - 2 * np.sum(p * out_cross) + np.sum(p * (gram @ p))
        return max(float(value), 0.0)
    w = kernel if not with_bias else np.vstack([kernel, np.zeros((1, n_out)) if bias is None else bias[None]])
    gram, cross, target = moments.augmented(with_bias)
    value = np.sum(w * (target @ w)) - 2 * np.sum(p * (cross @ w)) + np.sum(p * (gram @ p))
    return max(float(value), 0.0)


def ridge_for(dim: int, count: int) -> float:
    return max(WHITENING_RIDGE, SHRINKAGE * dim / max(count, 1))


def whitening(gram: np.ndarray, count: int) -> tuple[np.ndarray | None, str | None]:
    """``L`` with ``gram + λ tr/d I = L Lᵀ`` (Cholesky; an eigendecomposition when that fails), or
    ``(None, why)`` when the inputs carry nothing to whiten by."""
    d = gram.shape[0]
    scale = float(np.trace(gram)) / max(d, 1)
    if not np.isfinite(scale) or scale <= 0:
        return None, "the layer's sampled inputs are all zero (or constant): data-free factors kept"
    ridge = ridge_for(d, count)
    regular = gram + ridge * scale * np.eye(d)
    try:
        return np.linalg.cholesky(regular), None
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(regular)
        w = np.maximum(w, ridge * scale)
        return v * np.sqrt(w), "the input moment is not positive definite: whitened through its eigendecomposition"


def per_tap(gram: np.ndarray, taps: int) -> np.ndarray:
    """``mean_t gram[t, t]``: the second moment of one tap's vector (the diagonal blocks averaged)."""
    d = gram.shape[0] // taps
    blocks = gram[: taps * d, : taps * d].reshape(taps, d, taps, d)
    return sum(blocks[t, :, t, :] for t in range(taps)) / taps


def tril_inverse(lower: np.ndarray) -> np.ndarray:
    """The inverse of a lower-triangular matrix with a nonzero diagonal, itself lower-triangular: by halves
    (``[[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [-D⁻¹ C A⁻¹, D⁻¹]]``), so nearly all the work is matrix products (about
    ``n³/3`` flops, a third of a general inverse; numpy has no triangular solve).

    Example:
        >>> m = np.array([[2.0, 0.0], [1.0, 4.0]])
        >>> tril_inverse(m) @ m
        array([[1., 0.],
               [0., 1.]])
    """
    n = lower.shape[0]
    if n <= 128:
        return np.tril(np.linalg.inv(lower))
    half = n // 2
    top = tril_inverse(lower[:half, :half])
    bottom = tril_inverse(lower[half:, half:])
    out = np.zeros_like(lower)
    out[:half, :half] = top
    out[half:, half:] = bottom
    out[half:, :half] = -(bottom @ (lower[half:, :half] @ top))
    return out


class NestedRefits:
    """The least-squares last factor for every leading prefix of one first-factor basis, from one factorisation.

    A two-stage layer whose first factor is ``a[:, :r]`` (applied to each of ``taps`` taps; rows of ``gram`` after
    the ``taps*d`` patch rows, the bias's constant, passed through) refits its last factor from
    ``G_r = Q_rᵀ gram Q_r`` and ``H_r = Q_rᵀ mw``. Ordered rank-major (the constant first, then tap by tap within
    each rank component), ``G_r`` and ``H_r`` are the leading block and rows of the full basis's ``G`` and ``H``;
    the Cholesky factor of a leading block is the leading block of the Cholesky factor, and so is the inverse of
    a triangular matrix. One projection, one Cholesky and one inverse per basis therefore serve every rank: rank
    ``r``'s refit is then a product of its own size (``B_r = L_r⁻ᵀ Y_r`` with ``Y = L⁻¹ H``) and its output error
    ``const - ||Y_r||²`` (less the tiny ridge's share). Without it every candidate rank of a selection projected
    the ``(taps*d)²`` moment again and solved its own system.

    ``const`` is ``E||y||²`` (augmented): the error of an all-zero layer. The ridge is :data:`NESTED_RIDGE` relative,
    raised by factors of 100 only when the Cholesky factorisation fails (a singular ``G`` from dead inputs).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(200, 4)); w = rng.normal(size=(4, 3))
        >>> gram, mw = x.T @ x / 200, x.T @ x @ w / 200
        >>> nested = NestedRefits(np.eye(4), 1, gram, mw, float(np.sum(w * mw)))
        >>> last, error = nested.solve(4)
        >>> bool(np.allclose(last, w)), round(error, 9)
        (True, 0.0)
    """

    def __init__(self, a: np.ndarray, taps: int, gram: np.ndarray, mw: np.ndarray, const: float) -> None:
        d, k = a.shape
        self.taps, self.rank, self.const = int(taps), int(k), float(const)
        self.a = a
        self.extra = gram.shape[0] - self.taps * d
        order = self._order(k)
        g = projected(a, self.taps, gram)[np.ix_(order, order)]
        self.h = expand_left(a, self.taps, mw)[order]
        n = g.shape[0]
        scale = float(np.trace(g)) / max(n, 1)
        self.ridge = 0.0
        self.g = g
        if not scale > 0:  # nothing to fit to: every refit is zero
            self.inverse = np.zeros_like(g)
            self.y = np.zeros_like(self.h)
            return
        relative = NESTED_RIDGE
        while True:
            try:
                chol = np.linalg.cholesky(g + relative * scale * np.eye(n))
                break
            except np.linalg.LinAlgError:
                if relative >= 1e-4:
                    raise
                relative *= 100
        self.ridge = relative * scale
        self.inverse = tril_inverse(chol)
        del chol
        self.y = self.inverse @ self.h

    def basis(self, r: int) -> np.ndarray:
        """The rank-``r`` first factor: the basis's leading ``r`` columns."""
        return self.a[:, : int(r)]

    def _order(self, k: int) -> np.ndarray:
        """Rank-major position -> tap-major row (``t*k + i``; the extra rows after ``taps*k``)."""
        patch = np.arange(self.taps * k).reshape(self.taps, k).T.ravel()
        return np.concatenate([self.taps * k + np.arange(self.extra), patch]).astype(np.intp)

    def _to_tap_major(self, r: int) -> np.ndarray:
        """Rank-major position of each tap-major row of rank ``r``."""
        return np.argsort(self._order(r))

    def size(self, r: int) -> int:
        return self.extra + self.taps * int(r)

    def solve(self, r: int) -> tuple[np.ndarray, float]:
        """``(last, error)``: the refitted last factor at rank ``r`` (tap-major rows, the extra rows last) and its
        output error on the moments."""
        n = self.size(r)
        y = self.y[:n]
        last = self.inverse[:n, :n].T @ y
        error = self.const - float(np.sum(y * y)) - self.ridge * float(np.sum(last * last))
        return last[self._to_tap_major(r)], max(error, 0.0)

    def error(self, r: int, last: np.ndarray) -> float:
        """The output error of a given last factor (tap-major rows, as :meth:`solve` gives) at rank ``r``."""
        n = self.size(r)
        b = last[self._order(r)]
        value = self.const - 2 * float(np.sum(b * self.h[:n])) + float(np.sum(b * (self.g[:n, :n] @ b)))
        return max(value, 0.0)

    def solve_for(self, r: int, rhs: np.ndarray) -> np.ndarray:
        """``G_r⁻¹ rhs`` (tap-major rows, as :meth:`blocks` orders them; with the ridge) by the kept inverse."""
        n = self.size(r)
        inverse = self.inverse[:n, :n]
        out = inverse.T @ (inverse @ rhs[self._order(r)])
        return out[self._to_tap_major(r)]

    def blocks(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """``(G_r, H_r)`` in tap-major order (the projections :func:`projected` and :func:`expand_left` give)."""
        n = self.size(r)
        back = self._to_tap_major(r)
        return self.g[:n, :n][np.ix_(back, back)], self.h[:n][back]
