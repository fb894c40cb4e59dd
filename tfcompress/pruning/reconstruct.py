"""Patches at chosen output positions, and least-squares refitting of pruned weights (plain numpy).

Channel pruning with reconstruction: run the PRUNED model up to the layer's input,
gather the kept channels' input patches at sampled output positions
(:func:`extract_patches`), and fit the kept weights and the bias so that the layer
reproduces the ORIGINAL layer's outputs there (:func:`reconstruct_weights`).

Patch columns are ordered like ``kernel.reshape(kh * kw * C, N)`` (row ``i``, column
``j``, channel ``c`` -> ``(i * kw + j) * C + c``), so ``patches @ kernel.reshape(-1, N)
+ bias`` is the convolution's output at those positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["conv_output_size", "all_positions", "sample_positions", "extract_patches", "reconstruct_weights"]


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        return int(value), int(value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{what} must be a positive int or a pair of them, got {value!r}.")
    return pair  # type: ignore[return-value]


def _padding(padding: str) -> str:
    mode = str(padding).lower()
    if mode not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}.")
    return mode


def _axis_geometry(size: int, k: int, s: int, d: int, padding: str) -> tuple[int, int]:
    """(output size, padding before) along one axis, with TensorFlow's rule (SAME: before = total // 2)."""
    span = (k - 1) * d + 1
    if padding == "valid":
        return max((size - span) // s + 1, 0), 0
    out = -(-size // s)
    total = max((out - 1) * s + span - size, 0)
    return out, total // 2


def conv_output_size(
    input_hw: Sequence[int],
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str = "valid",
    dilation: int | Sequence[int] = 1,
) -> tuple[int, int]:
    """Output height and width of a 2-D convolution.

    Example:
        >>> conv_output_size((7, 8), 3, 2, "same"), conv_output_size((7, 8), 3, 2, "valid")
        ((4, 4), (3, 3))
    """
    (kh, kw), (sh, sw), (dh, dw) = (
        _pair(kernel_size, "kernel_size"),
        _pair(strides, "strides"),
        _pair(dilation, "dilation"),
    )
    mode = _padding(padding)
    return _axis_geometry(int(input_hw[0]), kh, sh, dh, mode)[0], _axis_geometry(int(input_hw[1]), kw, sw, dw, mode)[0]


def all_positions(batch: int, out_hw: Sequence[int]) -> np.ndarray:
    """Every output position as rows ``(b, row, col)``.

    Example:
        >>> all_positions(1, (1, 2)).tolist()
        [[0, 0, 0], [0, 0, 1]]
    """
    b, r, c = np.meshgrid(np.arange(batch), np.arange(out_hw[0]), np.arange(out_hw[1]), indexing="ij")
    return np.stack([b.ravel(), r.ravel(), c.ravel()], axis=1).astype(np.int64)


def sample_positions(batch: int, out_hw: Sequence[int], count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct output positions ``(b, row, col)`` drawn uniformly (all of them if fewer exist).

    Example:
        >>> sample_positions(2, (3, 3), 5).shape
        (5, 3)
    """
    positions = all_positions(batch, out_hw)
    if count >= len(positions):
        return positions
    rng = np.random.default_rng(seed)
    return positions[np.sort(rng.choice(len(positions), size=int(count), replace=False))]


def extract_patches(
    inputs: np.ndarray,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str = "valid",
    dilation: int | Sequence[int] = 1,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """The ``kh*kw*C`` input patch of a Conv2D at each output position.

    Args:
        inputs: ``(B, H, W, C)`` channels-last inputs of the layer.
        kernel_size, strides, dilation: ints or pairs, as in ``keras.layers.Conv2D``.
        padding: ``"valid"`` or ``"same"`` (TensorFlow's rule: the extra pad row or
            column goes to the bottom/right, i.e. top/left get ``total // 2``).
        positions: ``(P, 3)`` integer rows ``(batch, out_row, out_col)``; ``None`` for
            every output position in ``(b, row, col)`` order.

    Returns:
        ``(P, kh*kw*C)`` patches, columns ordered like ``kernel.reshape(-1, N)``.

    Example:
        >>> import numpy as np
        >>> x = np.arange(9.0).reshape(1, 3, 3, 1)
        >>> extract_patches(x, 2, positions=np.array([[0, 1, 1]]))
        array([[4., 5., 7., 8.]])
        >>> extract_patches(x, 3, padding="same", positions=np.array([[0, 0, 0]]))
        array([[0., 0., 0., 0., 0., 1., 0., 3., 4.]])
    """
    x = np.asarray(inputs)
    if x.ndim != 4:
        raise ValueError(f"extract_patches: inputs must be (B, H, W, C), got shape {x.shape}.")
    (kh, kw), (sh, sw), (dh, dw) = (
        _pair(kernel_size, "kernel_size"),
        _pair(strides, "strides"),
        _pair(dilation, "dilation"),
    )
    mode = _padding(padding)
    batch, h, w, channels = x.shape
    out_h, top = _axis_geometry(h, kh, sh, dh, mode)
    out_w, left = _axis_geometry(w, kw, sw, dw, mode)
    if positions is None:
        positions = all_positions(batch, (out_h, out_w))
    pos = np.asarray(positions, dtype=np.int64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"extract_patches: positions must be (P, 3) rows (batch, row, col), got shape {pos.shape}.")
    upper = np.array([batch, out_h, out_w])
    if len(pos) and ((pos < 0).any() or (pos >= upper).any()):
        raise ValueError(
            f"extract_patches: positions must lie in batch 0..{batch - 1}, rows 0..{out_h - 1}, cols 0..{out_w - 1}."
        )
    # pad enough on every side that all taps index inside the padded array
    bottom = max((out_h - 1) * sh + (kh - 1) * dh + 1 - h - top, 0)
    right = max((out_w - 1) * sw + (kw - 1) * dw + 1 - w - left, 0)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    rows = pos[:, 1:2] * sh + np.arange(kh)[None, :] * dh  # (P, kh), in padded coordinates
    cols = pos[:, 2:3] * sw + np.arange(kw)[None, :] * dw  # (P, kw)
    patches = padded[pos[:, 0, None, None], rows[:, :, None], cols[:, None, :], :]  # (P, kh, kw, C)
    return patches.reshape(len(pos), kh * kw * channels)


def reconstruct_weights(
    patches: np.ndarray,
    targets: np.ndarray,
    kernel_size: int | Sequence[int] | None = None,
    *,
    use_bias: bool = True,
    initial: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Least-squares kernel (and bias) mapping ``patches`` to ``targets``.

    Solves ``min ||[patches, 1] @ [W; b] - targets||`` with ``np.linalg.lstsq``. When
    the data does not determine the solution (fewer samples than columns, dead or
    duplicated inputs), the minimum-norm solution is taken; with ``initial`` (the
    kept rows of the original kernel and the original bias) it is the solution
    *closest to the original weights*, so under-determined directions keep their
    trained values instead of being zeroed.

    Args:
        patches: ``(samples, kh*kw*k)`` kept-channel input patches from the pruned
            model (columns as in :func:`extract_patches`), or ``(samples, k)`` for Dense.
        targets: ``(samples, N)`` outputs of the original layer (pre-activation).
        kernel_size: ``(kh, kw)`` to get a Conv2D kernel ``(kh, kw, k, N)``; ``None``
            for a Dense kernel ``(k, N)``.
        use_bias: fit a bias too (else it is ``None`` and no constant is fitted).
        initial: ``(kernel, bias)`` to stay closest to: the kernel shaped like the result
            (``(kh, kw, k, N)`` or ``(k, N)``) or flat ``(kh*kw*k, N)``, the bias ``(N,)``
            or ``None``.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(50, 3))
        >>> w, b = np.array([[1.0], [-2.0], [0.5]]), np.array([0.25])
        >>> kernel, bias = reconstruct_weights(x, x @ w + b)
        >>> np.allclose(kernel, w), np.allclose(bias, b)
        (True, True)
    """
    x = np.asarray(patches, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"reconstruct_weights: patches (samples, cols) and targets (samples, N) must share samples, got {x.shape} "
            f"and {y.shape}."
        )
    cols = x.shape[1]
    if kernel_size is not None:
        kh, kw = _pair(kernel_size, "kernel_size")
        if cols % (kh * kw):
            raise ValueError(f"reconstruct_weights: {cols} patch columns are not a multiple of kh*kw = {kh * kw}.")
    design = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1) if use_bias else x
    start = np.zeros((design.shape[1], y.shape[1]))
    if initial is not None:
        kernel0 = np.asarray(initial[0], dtype=np.float64).reshape(-1, y.shape[1]) if initial[0] is not None else None
        if kernel0 is None or kernel0.shape[0] != cols:
            raise ValueError(
                f"reconstruct_weights: the initial kernel must have {cols} rows of {y.shape[1]} outputs like the "
                f"patches, got {None if kernel0 is None else kernel0.shape}."
            )
        start[:cols] = kernel0
        if use_bias and initial[1] is not None:
            start[cols] = np.asarray(initial[1], dtype=np.float64).reshape(y.shape[1])
    delta, *_ = np.linalg.lstsq(design, y - design @ start, rcond=None)
    coef = start + delta
    kernel = coef[:cols]
    bias = coef[cols] if use_bias else None
    if kernel_size is not None:
        kernel = kernel.reshape(kh, kw, cols // (kh * kw), y.shape[1])
    return kernel, bias
