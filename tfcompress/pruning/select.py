"""Which input channels of a layer to keep (plain numpy; nothing here knows Keras).

Two selectors:

- :func:`magnitude_channels`: the ``keep`` input channels whose kernel slices have
  the largest L2 norm (data-free).
- :func:`greedy_channels`: data-driven forward selection. Given sampled input patches
  grouped per channel and the original layer's outputs on them, it adds, one at a
  time, the channel that most reduces the least-squares error of reconstructing the
  outputs from the kept channels' patch columns.

Both return the kept channel indices as a sorted ``int64`` array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._checks import is_int

__all__ = ["ChannelProblem", "channel_order", "magnitude_channels", "greedy_channels", "reconstruction_error"]


def _check_keep(keep: int, channels: int, what: str) -> int:
    if isinstance(keep, bool) or not isinstance(keep, int | np.integer):
        raise TypeError(f"{what}: keep must be an int, got {keep!r}.")
    if not 1 <= int(keep) <= channels:
        raise ValueError(f"{what}: keep must be in 1..{channels} (the number of input channels), got {keep}.")
    return int(keep)


def magnitude_channels(kernel: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the ``keep`` input channels with the largest per-channel L2 kernel norm.

    ``kernel`` is a Conv2D kernel ``(kh, kw, C, N)`` or a Dense kernel ``(C, N)``; the
    input-channel axis is the second to last. Ties go to the lower index; the result
    is sorted.

    Example:
        >>> import numpy as np
        >>> magnitude_channels(np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0]]), 2)
        array([1, 2])
        >>> magnitude_channels(np.ones((3, 3, 4, 2)), 2)  # all tied: the lowest indices
        array([0, 1])
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim not in (2, 4):
        raise ValueError(f"magnitude_channels: kernel must be (kh, kw, C, N) or (C, N), got shape {kernel.shape}.")
    keep = _check_keep(keep, kernel.shape[-2], "magnitude_channels")
    moved = np.moveaxis(kernel, -2, 0).reshape(kernel.shape[-2], -1)
    norms = np.sqrt(np.sum(moved * moved, axis=1))
    order = np.argsort(-norms, kind="stable")  # stable: equal norms keep index order
    return np.sort(order[:keep]).astype(np.int64)


def _as_channel_blocks(x_cols: np.ndarray) -> np.ndarray:
    """``(samples, C)`` or ``(samples, C, k)`` -> ``(samples, C, k)`` float64."""
    x = np.asarray(x_cols, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(
            "greedy_channels: x_cols must be (samples, C) or (samples, C, k) with k = kh*kw patch columns per channel, "
            f"got shape {x.shape}."
        )
    return x


def greedy_channels(x_cols: np.ndarray, y: np.ndarray, keep: int, *, fit_intercept: bool = True) -> np.ndarray:
    """Input channels chosen by greedy forward selection for least-squares reconstruction of ``y``.

    Args:
        x_cols: sampled inputs grouped per channel: ``(samples, C, k)`` where
            ``x_cols[:, c, :]`` are channel ``c``'s ``k = kh*kw`` patch columns (any
            fixed order), or ``(samples, C)`` for a Dense layer (``k = 1``).
        y: ``(samples, N)`` (or ``(samples,)``) outputs to reconstruct, normally the
            original layer's outputs at the sampled positions.
        keep: how many channels to keep.
        fit_intercept: also fit a constant per output (the bias is re-fitted later).

    This is :func:`channel_order` on one :class:`ChannelProblem`, sorted: at each step
    the channel whose columns reduce the least-squares error of the fit the most is
    added (exact forward selection; see :func:`channel_order` for the algorithm).

    Returns:
        The kept channel indices, sorted.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(200, 4))
        >>> y = 3 * x[:, [2]] - x[:, [0]]
        >>> greedy_channels(x, y, 2)
        array([0, 2])
    """
    x = _as_channel_blocks(x_cols)
    keep = _check_keep(keep, x.shape[1], "greedy_channels")
    problem = ChannelProblem.from_samples(x, y, fit_intercept=fit_intercept)
    return np.sort(channel_order([problem], keep)).astype(np.int64)


@dataclass
class ChannelProblem:
    """One layer's least-squares reconstruction problem, reduced to Gram matrices.

    For design columns ``X`` (``samples x C*k``, channel-major: channel ``c`` owns
    columns ``c*k .. c*k+k-1``) and targets ``Y`` (``samples x N``), the error of the
    best fit from a subset of channels depends only on ``gram = X^T X`` and
    ``cross = X^T Y`` (centred when an intercept is fitted), so selection cost does
    not grow with the number of samples.

    When there are fewer samples than columns (500 sampled positions of a 3x3 conv reading 512 channels: 4,608
    columns, a 170 MB Gram matrix in float64), :meth:`from_samples` keeps the centred samples instead
    (``design`` and ``target``), and the selection runs the same algorithm in sample space: the same order, in
    O(samples x C*k) memory instead of O((C*k)^2).

    Attributes:
        gram: ``(C*k, C*k)``, or ``None`` when the problem is kept as samples.
        cross: ``(C*k, N)``, or ``None`` when the problem is kept as samples.
        k: columns per channel.
        channels: ``(n,)`` the problem's channel for each selectable (unit) channel;
            ``None`` means all ``C`` channels, in order.
        fixed: channels of the problem that are always kept (e.g. the inputs of a
            concatenation that belong to other units).
    """

    gram: np.ndarray | None
    cross: np.ndarray | None
    k: int = 1
    channels: np.ndarray | None = None
    fixed: np.ndarray | None = None
    design: np.ndarray | None = None  # (samples, C*k), centred when an intercept is fitted
    target: np.ndarray | None = None  # (samples, N), likewise

    @classmethod
    def from_samples(
        cls,
        x_cols: np.ndarray,
        y: np.ndarray,
        *,
        fit_intercept: bool = True,
        channels: np.ndarray | None = None,
        fixed: np.ndarray | None = None,
    ) -> ChannelProblem:
        """The problem for ``x_cols`` ``(samples, C, k)`` (or ``(samples, C)``) and ``y`` ``(samples, N)``.

        Example:
            >>> import numpy as np
            >>> p = ChannelProblem.from_samples(np.eye(3), np.eye(3)[:, :1], fit_intercept=False)
            >>> p.gram.shape, p.cross.shape, p.k
            ((3, 3), (3, 1), 1)
        """
        x = _as_channel_blocks(x_cols)
        samples, channels_in, k = x.shape
        target = np.asarray(y, dtype=np.float64)
        if target.ndim == 1:
            target = target[:, None]
        if target.ndim != 2 or target.shape[0] != samples:
            raise ValueError(
                f"greedy_channels: y must be (samples, N) with samples = {samples} like x_cols, got shape {target.shape}."
            )
        design = x.reshape(samples, channels_in * k)
        if fit_intercept:
            design = design - design.mean(axis=0)
            target = target - target.mean(axis=0)
        if samples < channels_in * k:  # the samples are smaller than the Gram matrix: keep them
            return cls(None, None, k, channels, fixed, design=design, target=target)
        return cls(design.T @ design, design.T @ target, k, channels, fixed)


def _inv_sqrt_basis(blocks: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Per block ``M`` (``(..., k, k)`` symmetric PSD): eigenvectors and ``1/sqrt(eigenvalue)`` (0 below ``tol``)."""
    values, vectors = np.linalg.eigh(blocks)
    scale = np.where(values > tol, 1.0 / np.sqrt(np.maximum(values, tol)), 0.0)
    return vectors, scale


class _GramState:
    """Exact forward selection state of one problem: residual cross terms and Schur-complement blocks."""

    def __init__(self, problem: ChannelProblem) -> None:
        if problem.gram is None or problem.cross is None:
            raise ValueError("channel_order: a ChannelProblem needs gram and cross, or design and target.")
        gram = np.asarray(problem.gram, dtype=np.float64)
        cross = np.asarray(problem.cross, dtype=np.float64)
        k = int(problem.k)
        if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] % k:
            raise ValueError(f"channel_order: gram must be square with C*k rows (k={k}), got shape {gram.shape}.")
        if cross.ndim != 2 or cross.shape[0] != gram.shape[0]:
            raise ValueError(f"channel_order: cross must be (C*k, N) = ({gram.shape[0]}, N), got shape {cross.shape}.")
        self.k = k
        self.channels_in = gram.shape[0] // k
        self.gram = gram
        self.residual = cross.copy()  # X^T (I - P) Y
        blocks = gram.reshape(self.channels_in, k, self.channels_in, k)
        idx = np.arange(self.channels_in)
        self.schur = blocks[idx, :, idx, :].copy()  # (C, k, k): X_c^T (I - P) X_c
        self._rows = np.zeros((0, gram.shape[0]))  # rows w (E_{chosen, .} whitened), grown in chunks
        self.used = 0
        self.tol = 1e-10 * max(float(np.max(np.diag(gram))) if gram.size else 0.0, 1e-300)
        self.map = np.arange(self.channels_in) if problem.channels is None else np.asarray(problem.channels, np.int64)
        for c in [] if problem.fixed is None else np.asarray(problem.fixed, np.int64).tolist():
            self.add(int(c))

    def gains(self) -> np.ndarray:
        """Drop of the squared error if each problem channel were added now, ``(C,)``."""
        vectors, scale = _inv_sqrt_basis(self.schur, self.tol)
        rows = self.residual.reshape(self.channels_in, self.k, -1)
        projected = np.matmul(np.swapaxes(vectors, 1, 2), rows) * scale[:, :, None]
        return np.sum(projected * projected, axis=(1, 2))

    def add(self, channel: int) -> None:
        """Add problem channel ``channel``'s columns to the fit."""
        cols = slice(channel * self.k, (channel + 1) * self.k)
        basis = self._rows[: self.used]
        row_block = self.gram[cols, :] - basis[:, cols].T @ basis  # E_{j, .}
        vectors, scale = _inv_sqrt_basis(self.schur[channel], self.tol)
        keep = scale > 0
        whiten = (vectors[:, keep] * scale[keep]).T  # (r, k): diag(l)^{-1/2} V^T
        w = whiten @ row_block  # (r, C*k)
        self.residual -= w.T @ (whiten @ self.residual[cols])
        if self.used + len(w) > len(self._rows):  # grow geometrically: no quadratic copying
            grown = np.zeros((max(2 * len(self._rows), self.used + len(w), 8 * self.k), self._rows.shape[1]))
            grown[: self.used] = self._rows[: self.used]
            self._rows = grown
        self._rows[self.used : self.used + len(w)] = w
        self.used += len(w)
        w3 = w.reshape(len(w), self.channels_in, self.k)
        w3 = np.swapaxes(w3, 0, 1)  # (C, r, k)
        self.schur -= np.matmul(np.swapaxes(w3, 1, 2), w3)


class _SampleState(_GramState):
    """The same forward selection as :class:`_GramState`, on the samples: ``(I - P) X`` is kept instead of the
    Gram matrix, for problems with fewer samples than columns (O(samples x C*k) memory, not O((C*k)^2))."""

    def __init__(self, problem: ChannelProblem) -> None:
        x = np.array(problem.design, dtype=np.float64)  # a copy: it is projected in place
        y = np.asarray(problem.target, dtype=np.float64)
        k = int(problem.k)
        if x.ndim != 2 or x.shape[1] % k or y.ndim != 2 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"channel_order: design must be (samples, C*k) (k={k}) and target (samples, N), got shapes "
                f"{x.shape} and {y.shape}."
            )
        self.k = k
        self.channels_in = x.shape[1] // k
        self.x = x  # (I - P) X
        self.residual = x.T @ y  # X^T (I - P) Y
        blocks = x.reshape(len(x), self.channels_in, k)
        self.schur = np.einsum("sci,scj->cij", blocks, blocks)  # (C, k, k)
        diagonal = np.einsum("sc,sc->c", x, x)
        self.tol = 1e-10 * max(float(np.max(diagonal)) if diagonal.size else 0.0, 1e-300)
        self.map = np.arange(self.channels_in) if problem.channels is None else np.asarray(problem.channels, np.int64)
        for c in [] if problem.fixed is None else np.asarray(problem.fixed, np.int64).tolist():
            self.add(int(c))

    def add(self, channel: int) -> None:
        """Add problem channel ``channel``'s columns to the fit."""
        cols = slice(channel * self.k, (channel + 1) * self.k)
        vectors, scale = _inv_sqrt_basis(self.schur[channel], self.tol)
        keep = scale > 0
        whiten = (vectors[:, keep] * scale[keep]).T  # (r, k)
        q = self.x[:, cols] @ whiten.T  # (samples, r): orthonormal new directions
        w = q.T @ self.x  # (r, C*k): the rows _GramState builds from the Gram matrix
        self.residual -= w.T @ (whiten @ self.residual[cols])
        self.x -= q @ w
        w3 = np.swapaxes(w.reshape(len(w), self.channels_in, self.k), 0, 1)  # (C, r, k)
        self.schur -= np.matmul(np.swapaxes(w3, 1, 2), w3)


def _state(problem: ChannelProblem) -> _GramState:
    return _SampleState(problem) if problem.gram is None and problem.design is not None else _GramState(problem)


def channel_order(problems: Sequence[ChannelProblem], keep: int, *, max_steps: int = 256) -> np.ndarray:
    """The first ``keep`` channels picked by greedy forward selection, in the order picked.

    All problems share the ``n`` selectable channels (a channel group read by several
    layers: each layer is one problem, and ``problems[p].channels`` says which of its
    input channels each selectable channel is). At every step the channel with the
    largest total drop of squared reconstruction error over all problems is added
    (ties: lower index), so the order's prefixes are the greedy selections for every
    ``keep`` at once.

    Algorithm, per problem, in Gram space (no samples needed): keep the residual cross
    terms ``R = X^T (I - P) Y`` and the Schur blocks ``M_c = X_c^T (I - P) X_c`` where
    ``P`` projects onto the columns chosen so far. Adding channel ``c`` lowers the
    squared error by ``tr(R_c^T M_c^+ R_c)``. After choosing ``j``, with
    ``M_j = V diag(l) V^T``, the new whitened directions ``w = diag(l)^{-1/2} V^T E_{j,.}``
    (``E = X^T (I - P) X``, rebuilt for the row block ``j`` from the stored ``w`` rows)
    update ``R -= w^T diag(l)^{-1/2} V^T R_j`` and ``M_c -= w_c^T w_c``. Numerically
    null directions (eigenvalues below ``1e-10`` of the largest diagonal entry) are
    dropped, so dead or duplicated channels gain nothing.

    The selection is exact for ``keep <= max_steps``. Beyond that, each step adds the
    ``ceil(keep / max_steps)`` channels with the largest gains at once (then updates),
    so a group of thousands of channels costs at most ``max_steps`` gain evaluations.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(100, 3))
        >>> p = ChannelProblem.from_samples(x, x[:, [2]] + 0.1 * x[:, [0]])
        >>> channel_order([p], 2).tolist()
        [2, 0]
    """
    if not problems:
        raise ValueError("channel_order: give at least one ChannelProblem.")
    states = [_state(p) for p in problems]
    n = len(states[0].map)
    if any(len(s.map) != n for s in states):
        raise ValueError("channel_order: every problem must map the same number of selectable channels.")
    keep = _check_keep(keep, n, "channel_order")
    if not is_int(max_steps) or max_steps < 1:
        raise ValueError(f"channel_order: max_steps must be an int >= 1, got {max_steps!r}.")
    batch = -(-keep // max_steps)
    chosen: list[int] = []
    available = np.ones(n, dtype=bool)
    while len(chosen) < keep:
        total = np.zeros(n)
        for state in states:
            total += state.gains()[state.map]
        total = np.where(available, total, -np.inf)
        # largest gains first; ties go to the lower index (stable sort of the negated gains)
        picks = np.argsort(-total, kind="stable")[: min(batch, keep - len(chosen))]
        for best in picks.tolist():
            chosen.append(best)
            available[best] = False
            for state in states:
                state.add(int(state.map[best]))
    return np.array(chosen, dtype=np.int64)


def reconstruction_error(x_cols: np.ndarray, y: np.ndarray, kept: np.ndarray, *, fit_intercept: bool = True) -> float:
    """Squared Frobenius error of the least-squares fit of ``y`` from the kept channels' columns.

    Example:
        >>> import numpy as np
        >>> x = np.eye(3)
        >>> float(round(reconstruction_error(x, x[:, [1]], [1], fit_intercept=False), 12))
        0.0
    """
    x = _as_channel_blocks(x_cols)
    target = np.asarray(y, dtype=np.float64)
    if target.ndim == 1:
        target = target[:, None]
    cols = x[:, np.asarray(kept, dtype=np.int64), :].reshape(x.shape[0], -1)
    if fit_intercept:
        cols = np.concatenate([cols, np.ones((x.shape[0], 1))], axis=1)
    coef, *_ = np.linalg.lstsq(cols, target, rcond=None)
    return float(np.sum((target - cols @ coef) ** 2))
