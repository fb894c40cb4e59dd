"""``SpatialSVDConv1D``: a ``Conv1D`` split as a ``k``-wide conv ``C -> r`` and a 1-wide conv ``r -> N``."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from .. import unfoldings
from .base import DecomposedConv1D

__all__ = ["SpatialSVDConv1D"]


@keras.saving.register_keras_serializable(package="tfcompress")
class SpatialSVDConv1D(DecomposedConv1D):
    """Spatial-SVD decomposition of a ``Conv1D``: ``x -> conv_1(conv_k(x, A: C -> r), B: r -> N) + bias``.

    A ``Conv1D`` is a ``Conv2D`` with a ``k x 1`` kernel; its spatial SVD (``kh x 1``
    then ``1 x kw`` with ``kw = 1``) unfolds the ``(k, C, N)`` kernel as a ``(C*k, N)``
    matrix and applies the best rank-``r`` approximation as a ``k``-wide convolution
    ``C -> r`` with the original strides, padding (``valid``, ``same`` or ``causal``)
    and dilation, followed by a 1-wide convolution ``r -> N`` with the bias and
    activation. With one spatial axis there is no second axis to give half of the
    kernel to, so this is the mirror image of :class:`WeightSVDConv1D` (spatial taps
    first instead of last); it pays off when ``N`` is large against ``C*k``. See
    :mod:`tfcompress.unfoldings` for why the taps themselves are not split.

    Args:
        filters: ``N``, the output channels.
        kernel_size: ``k``.
        rank: ``r``, at most ``min(C*k, N)``; at that rank the output equals the original's.
        **kwargs: ``strides``, ``padding``, ``dilation_rate``, ``activation``, ``use_bias``,
            the initializers and the usual layer arguments, as in ``keras.layers.Conv1D``.

    Shapes: input ``(batch, L, C)``, output ``(batch, L_out, N)`` like the original layer;
    factor kernels ``kernel_a (k, C, r)`` and ``kernel_b (1, r, N)``.

    Example:
        >>> import keras, tfcompress as tfc
        >>> conv = keras.layers.Conv1D(64, 3, strides=2, padding="same")
        >>> conv.build((None, 40, 8))
        >>> layer = tfc.SpatialSVDConv1D.from_layer(conv, rank=12)
        >>> tuple(layer(keras.ops.zeros((1, 40, 8))).shape)
        (1, 20, 64)
    """

    scheme = "spatial_svd"

    def __init__(self, filters: int, kernel_size: Any, rank: int, **kwargs: Any) -> None:
        super().__init__(filters, kernel_size, **kwargs)
        if int(rank) < 1:
            raise ValueError(f"SpatialSVDConv1D '{self.name}': rank must be >= 1, got {rank}.")
        self.rank = int(rank)

    @staticmethod
    def max_rank_for(kernel_shape: tuple[int, int, int]) -> int:
        """Largest meaningful rank for a ``(k, C, N)`` kernel: ``min(C*k, N)``."""
        k, c, n = kernel_shape
        return min(c * k, n)

    def _rank_config(self) -> dict[str, Any]:
        return {"rank": self.rank}

    def _check_rank(self, in_channels: int) -> None:
        bound = self.max_rank_for((*self.kernel_size, in_channels, self.filters))
        if self.rank > bound:
            raise ValueError(
                f"SpatialSVDConv1D '{self.name}': rank {self.rank} exceeds the maximum rank {bound} "
                f"(min(C*k, N) with C={in_channels})."
            )

    def _factor_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        return {"kernel_a": (*self.kernel_size, in_channels, self.rank), "kernel_b": (1, self.rank, self.filters)}

    def _stages(self) -> list:
        return [
            (self.kernel_a, self.strides, self.padding, self.dilation_rate),
            (self.kernel_b, (1,), "valid", (1,)),
        ]

    def _factorize(self, kernel: np.ndarray) -> list[np.ndarray]:
        return list(unfoldings.conv1d_spatial_svd_factors(kernel, self.rank))

    def _compose(self, factors: list[np.ndarray]) -> np.ndarray:
        return unfoldings.conv1d_spatial_svd_compose(*factors)

    @classmethod
    def from_layer(cls, layer: keras.layers.Conv1D, rank: int) -> SpatialSVDConv1D:
        """A built ``SpatialSVDConv1D`` with the optimal rank-``rank`` factors of ``layer``.

        Example:
            >>> import keras, tfcompress as tfc
            >>> conv = keras.layers.Conv1D(16, 3, name="c1")
            >>> conv.build((None, 20, 4))
            >>> tfc.SpatialSVDConv1D.from_layer(conv, rank=6).rank
            6
        """
        return cls._build_from(layer, rank=rank)
