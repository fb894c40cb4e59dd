"""``WeightSVDConv2D``: a ``Conv2D`` split as a 1x1 conv ``C -> r`` and a ``kh x kw`` conv ``r -> N``."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from .. import decompose
from .base import DecomposedConv2D

__all__ = ["WeightSVDConv2D"]


@keras.saving.register_keras_serializable(package="tfcompress")
class WeightSVDConv2D(DecomposedConv2D):
    """Weight-SVD decomposition of a ``Conv2D``.

    The ``(kh, kw, C, N)`` kernel is unfolded as a ``(C, kh*kw*N)`` matrix and
    replaced by its best rank-``r`` approximation, applied as a 1x1 convolution
    ``C -> r`` (stride 1, no bias) followed by a ``kh x kw`` convolution ``r -> N``
    with the original strides, padding, dilation, bias and activation.
    The rank is at most ``min(C, kh*kw*N)``.

    Example:
        >>> import keras, tfcompress as tfc
        >>> conv = keras.layers.Conv2D(32, 3, padding="same")
        >>> conv.build((None, 16, 16, 24))
        >>> layer = tfc.WeightSVDConv2D.from_layer(conv, rank=8)
        >>> tuple(layer(keras.ops.zeros((1, 16, 16, 24))).shape)
        (1, 16, 16, 32)
    """

    scheme = "weight_svd"

    def __init__(self, filters: int, kernel_size: Any, rank: int, **kwargs: Any) -> None:
        super().__init__(filters, kernel_size, **kwargs)
        if int(rank) < 1:
            raise ValueError(f"WeightSVDConv2D '{self.name}': rank must be >= 1, got {rank}.")
        self.rank = int(rank)

    @staticmethod
    def max_rank_for(kernel_shape: tuple[int, int, int, int]) -> int:
        """Largest meaningful rank for a ``(kh, kw, C, N)`` kernel: ``min(C, kh*kw*N)``."""
        kh, kw, c, n = kernel_shape
        return min(c, kh * kw * n)

    def _rank_config(self) -> dict[str, Any]:
        return {"rank": self.rank}

    def _check_rank(self, in_channels: int) -> None:
        bound = self.max_rank_for((*self.kernel_size, in_channels, self.filters))
        if self.rank > bound:
            raise ValueError(
                f"WeightSVDConv2D '{self.name}': rank {self.rank} exceeds the maximum rank {bound} "
                f"(min(C, kh*kw*N) with C={in_channels})."
            )

    def _factor_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        kh, kw = self.kernel_size
        return {"kernel_a": (1, 1, in_channels, self.rank), "kernel_b": (kh, kw, self.rank, self.filters)}

    def _stages(self) -> list:
        return [
            (self.kernel_a, (1, 1), "valid", (1, 1)),
            (self.kernel_b, self.strides, self.padding, self.dilation_rate),
        ]

    def _factorize(self, kernel: np.ndarray) -> list[np.ndarray]:
        return list(decompose.weight_svd_factors(kernel, self.rank))

    def _compose(self, factors: list[np.ndarray]) -> np.ndarray:
        return decompose.weight_svd_compose(*factors)

    @classmethod
    def from_layer(cls, layer: keras.layers.Conv2D, rank: int) -> WeightSVDConv2D:
        """A built ``WeightSVDConv2D`` with the optimal rank-``rank`` factors of ``layer``.

        Example:
            >>> import keras, tfcompress as tfc
            >>> conv = keras.layers.Conv2D(16, 3, name="c1")
            >>> conv.build((None, 8, 8, 4))
            >>> tfc.WeightSVDConv2D.from_layer(conv, rank=4).name
            'c1'
        """
        return cls._build_from(layer, rank=rank)
