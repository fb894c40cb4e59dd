"""How a ``SeparableConv2D`` takes part in channel pruning (plain numpy).

A ``SeparableConv2D`` with ``C`` inputs, depth multiplier ``m`` and ``N`` filters computes
``pointwise(depthwise(x)) + bias``: a depthwise ``(kh, kw, C, m)`` kernel makes ``C*m`` intermediate channels
(input channel ``c`` makes ``c*m .. c*m+m-1``), and a ``(1, 1, C*m, N)`` pointwise kernel mixes them.

- As a *producer* it gives up output channels: pointwise-kernel columns and bias entries.
- As a *consumer* it gives up input channels: dropping input channel ``c`` removes the depthwise slice
  ``[..., c, :]`` and the ``m`` pointwise rows ``c*m .. c*m+m-1``. The separable structure is kept, so the
  least-squares refit is of the pointwise kernel (and the bias) on the depthwise outputs of the kept channels;
  channel selection works on those same depthwise outputs. Seen that way the layer is a 1x1 convolution with
  ``m`` taps per channel: its inputs are the depthwise outputs laid out ``(P, m, C)`` (tap-major, like the patch
  columns of a Conv2D) and its kernel the pointwise kernel as ``(m, C, N)``.

Zeros on the dropped channels' pointwise rows compute exactly what the layer without those channels computes,
which is how candidates are scored in the working copy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["depthwise_outputs", "pointwise_taps", "pointwise_from_taps", "slice_separable", "channel_norms"]


def depthwise_outputs(patches: np.ndarray, depthwise: np.ndarray) -> np.ndarray:
    """The depthwise outputs at sampled positions, from the input patches there.

    Args:
        patches: ``(P, kh*kw*C)`` input patches (columns ordered like ``kernel.reshape(-1, ...)``, as
            :func:`~tfcompress.pruning.extract_patches` gives them) taken with the depthwise kernel's geometry.
        depthwise: the ``(kh, kw, C, m)`` depthwise kernel.

    Returns:
        ``(P, m*C)``: column ``j*C + c`` is intermediate channel ``c*m + j`` (tap-major, like a Conv2D patch).

    Example:
        >>> import numpy as np
        >>> patches = np.array([[1.0, 2.0, 3.0, 4.0]])  # 2 taps x 2 channels
        >>> depthwise = np.ones((1, 2, 2, 1))
        >>> depthwise_outputs(patches, depthwise)  # channel 0: 1 + 3, channel 1: 2 + 4
        array([[4., 6.]])
    """
    taps = int(np.prod(depthwise.shape[:-2]))
    channels, multiplier = int(depthwise.shape[-2]), int(depthwise.shape[-1])
    x = patches.reshape(len(patches), taps, channels)
    w = np.asarray(depthwise, dtype=x.dtype).reshape(taps, channels, multiplier)
    return np.einsum("ptc,tcj->pjc", x, w).reshape(len(patches), multiplier * channels)


def pointwise_taps(kernel: np.ndarray, multiplier: int) -> np.ndarray:
    """A ``(1, 1, C*m, N)`` pointwise kernel as ``(m, C, N)`` (tap ``j`` of channel ``c`` is row ``c*m + j``).

    Example:
        >>> import numpy as np
        >>> pointwise_taps(np.arange(4.0).reshape(1, 1, 4, 1), 2)[:, :, 0]
        array([[0., 2.],
               [1., 3.]])
    """
    n = kernel.shape[-1]
    return kernel.reshape(-1, multiplier, n).transpose(1, 0, 2)


def pointwise_from_taps(taps: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`pointwise_taps`: ``(m, C, N)`` back to the pointwise kernel of ``shape``.

    Example:
        >>> import numpy as np
        >>> kernel = np.arange(12.0).reshape(1, 1, 6, 2)
        >>> bool(np.array_equal(pointwise_from_taps(pointwise_taps(kernel, 3), kernel.shape), kernel))
        True
    """
    return np.ascontiguousarray(taps.transpose(1, 0, 2)).reshape(shape)


def slice_separable(
    weights: list[np.ndarray], keep_in: np.ndarray | None, keep_out: np.ndarray | None
) -> list[np.ndarray]:
    """``[depthwise, pointwise(, bias)]`` of a ``SeparableConv2D`` with input channels ``keep_in`` and output
    channels ``keep_out`` only (``None``: all of them).

    Example:
        >>> import numpy as np
        >>> weights = [np.zeros((3, 3, 4, 2)), np.zeros((1, 1, 8, 5)), np.zeros(5)]
        >>> [w.shape for w in slice_separable(weights, np.array([0, 3]), np.array([1, 2, 4]))]
        [(3, 3, 2, 2), (1, 1, 4, 3), (3,)]
    """
    depthwise, pointwise, *bias = weights
    multiplier = int(depthwise.shape[-1])
    if keep_in is not None:
        rows = (np.asarray(keep_in)[:, None] * multiplier + np.arange(multiplier)[None, :]).ravel()
        depthwise = np.take(depthwise, keep_in, axis=-2)
        pointwise = np.take(pointwise, rows, axis=-2)
    if keep_out is not None:
        pointwise = np.take(pointwise, keep_out, axis=-1)
        bias = [np.take(b, keep_out, axis=-1) for b in bias]
    return [depthwise, pointwise, *bias]


def channel_norms(depthwise: np.ndarray, pointwise: np.ndarray) -> np.ndarray:
    """Per input channel, the squared Frobenius norm of the layer's effective ``(kh, kw, C, N)`` kernel (the
    Conv2D the separable pair equals): ``W[..., c, n] = sum_j D[..., c, j] * P[c*m + j, n]``.

    Example:
        >>> import numpy as np
        >>> depthwise = np.ones((1, 1, 2, 1)); depthwise[..., 1, 0] = 2.0
        >>> channel_norms(depthwise, np.ones((1, 1, 2, 3)))
        array([ 3., 12.])
    """
    taps = pointwise_taps(np.asarray(pointwise), int(depthwise.shape[-1]))  # (m, C, N)
    d = np.asarray(depthwise).reshape(-1, depthwise.shape[-2], depthwise.shape[-1])  # (T, C, m)
    effective = np.einsum("tcj,jcn->tcn", d, taps)
    return np.sum(effective**2, axis=(0, 2))
