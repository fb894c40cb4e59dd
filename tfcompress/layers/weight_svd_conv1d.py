"""``WeightSVDConv1D``: a ``Conv1D`` split as a 1-wide conv ``C -> r`` and a ``k``-wide conv ``r -> N``."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from .. import unfoldings
from .base import DecomposedConv1D

__all__ = ["WeightSVDConv1D"]


@keras.saving.register_keras_serializable(package="tfcompress")
class WeightSVDConv1D(DecomposedConv1D):
    """Weight-SVD decomposition of a ``Conv1D``: ``x -> conv_k(conv_1(x, A: C -> r), B: r -> N) + bias``.

    The ``(k, C, N)`` kernel is unfolded as a ``(C, k*N)`` matrix and replaced by its
    best rank-``r`` approximation, applied as a 1-wide convolution ``C -> r`` (stride 1,
    no bias) followed by a ``k``-wide convolution ``r -> N`` with the original strides,
    padding (``valid``, ``same`` or ``causal``), dilation, bias and activation. It is
    the weight SVD of the ``Conv1D`` read as a ``k x 1`` ``Conv2D``.

    Args:
        filters: ``N``, the output channels.
        kernel_size: ``k``.
        rank: ``r``, at most ``min(C, k*N)``; at that rank the output equals the original's.
        **kwargs: ``strides``, ``padding``, ``dilation_rate``, ``activation``, ``use_bias``,
            the initializers and the usual layer arguments, as in ``keras.layers.Conv1D``.

    Shapes: input ``(batch, L, C)``, output ``(batch, L_out, N)`` like the original layer;
    factor kernels ``kernel_a (1, C, r)`` and ``kernel_b (k, r, N)``.

    Example:
        >>> import keras, tfcompress as tfc
        >>> conv = keras.layers.Conv1D(32, 5, padding="causal")
        >>> conv.build((None, 40, 24))
        >>> layer = tfc.WeightSVDConv1D.from_layer(conv, rank=8)
        >>> tuple(layer(keras.ops.zeros((1, 40, 24))).shape)
        (1, 40, 32)
    """

    scheme = "weight_svd"

    def __init__(self, filters: int, kernel_size: Any, rank: int, **kwargs: Any) -> None:
        super().__init__(filters, kernel_size, **kwargs)
        if int(rank) < 1:
            raise ValueError(f"WeightSVDConv1D '{self.name}': rank must be >= 1, got {rank}.")
        self.rank = int(rank)

    @staticmethod
    def max_rank_for(kernel_shape: tuple[int, int, int]) -> int:
        """Largest meaningful rank for a ``(k, C, N)`` kernel: ``min(C, k*N)``."""
        k, c, n = kernel_shape
        return min(c, k * n)

    def _rank_config(self) -> dict[str, Any]:
        return {"rank": self.rank}

    def _check_rank(self, in_channels: int) -> None:
        bound = self.max_rank_for((*self.kernel_size, in_channels, self.filters))
        if self.rank > bound:
            raise ValueError(
                f"WeightSVDConv1D '{self.name}': rank {self.rank} exceeds the maximum rank {bound} "
                f"(min(C, k*N) with C={in_channels})."
            )

    def _factor_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        return {"kernel_a": (1, in_channels, self.rank), "kernel_b": (*self.kernel_size, self.rank, self.filters)}

    def _stages(self) -> list:
        return [
            (self.kernel_a, (1,), "valid", (1,)),
            (self.kernel_b, self.strides, self.padding, self.dilation_rate),
        ]

    def _factorize(self, kernel: np.ndarray) -> list[np.ndarray]:
        return list(unfoldings.conv1d_weight_svd_factors(kernel, self.rank))

    def _compose(self, factors: list[np.ndarray]) -> np.ndarray:
        return unfoldings.conv1d_weight_svd_compose(*factors)

    @classmethod
    def from_layer(cls, layer: keras.layers.Conv1D, rank: int) -> WeightSVDConv1D:
        """A built ``WeightSVDConv1D`` with the optimal rank-``rank`` factors of ``layer``.

        Example:
            >>> import keras, tfcompress as tfc
            >>> conv = keras.layers.Conv1D(16, 3, name="c1")
            >>> conv.build((None, 20, 4))
            >>> tfc.WeightSVDConv1D.from_layer(conv, rank=4).name
            'c1'
        """
        return cls._build_from(layer, rank=rank)
