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

import numpy as np

__all__ = ["magnitude_channels", "greedy_channels", "reconstruction_error"]


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


def _orthonormal_range(z: np.ndarray, scale: float) -> np.ndarray:
    """An orthonormal basis (columns) of the column space of ``z``, dropping directions below ``scale``'s noise."""
    if z.shape[1] == 0:
        return z
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    tol = max(z.shape) * np.finfo(np.float64).eps * max(scale, float(s[0]) if s.size else 0.0)
    return u[:, s > tol]


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

    Algorithm (exact forward selection, order-recursive least squares): keep an
    orthonormal basis ``Q`` of the columns chosen so far (starting with the ones
    column when ``fit_intercept``) and the residual ``R = y - Q Q^T y``. For every
    channel ``c`` not yet kept, orthogonalise its columns against ``Q``
    (``Z = X_c - Q Q^T X_c``), take an orthonormal basis ``U`` of ``Z`` (SVD,
    numerically null directions dropped) and score the drop of the squared
    least-squares error that adding ``c`` would give, ``||U^T R||_F^2``. Keep the
    channel with the largest drop (ties: lower index), append ``U`` to ``Q``,
    update ``R``, and repeat ``keep`` times. After each step ``||R||_F^2`` equals the
    error of ``lstsq`` on all kept channels' columns. Cost: ``keep * C`` small SVDs.

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
    samples, channels, _ = x.shape
    r = np.asarray(y, dtype=np.float64)
    if r.ndim == 1:
        r = r[:, None]
    if r.ndim != 2 or r.shape[0] != samples:
        raise ValueError(
            f"greedy_channels: y must be (samples, N) with samples = {samples} like x_cols, got shape {r.shape}."
        )
    keep = _check_keep(keep, channels, "greedy_channels")
    scale = float(np.abs(x).max()) * np.sqrt(samples) if x.size else 0.0
    q = np.ones((samples, 1)) / np.sqrt(samples) if fit_intercept else np.zeros((samples, 0))
    r = r - q @ (q.T @ r)
    chosen: list[int] = []
    for _ in range(keep):
        best, best_gain, best_basis = -1, -1.0, None
        for c in range(channels):
            if c in chosen:
                continue
            block = x[:, c, :]
            basis = _orthonormal_range(block - q @ (q.T @ block), scale)
            gain = float(np.sum((basis.T @ r) ** 2))
            if gain > best_gain:
                best, best_gain, best_basis = c, gain, basis
        assert best_basis is not None
        chosen.append(best)
        q = np.concatenate([q, best_basis], axis=1)
        r = r - best_basis @ (best_basis.T @ r)
    return np.array(sorted(chosen), dtype=np.int64)


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
