"""``SpatialSVDConv2D``: a ``Conv2D`` split as a ``kh x 1`` conv ``C -> r`` and a ``1 x kw`` conv ``r -> N``."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from .. import decompose
from .base import DecomposedConv2D

__all__ = ["SpatialSVDConv2D"]


@keras.saving.register_keras_serializable(package="tfcompress")
class SpatialSVDConv2D(DecomposedConv2D):
    """Spatial-SVD decomposition of a ``Conv2D``.

    The ``(kh, kw, C, N)`` kernel is unfolded as a ``(C*kh, N*kw)`` matrix and
    replaced by its best rank-``r`` approximation, applied as a vertical
    ``kh x 1`` convolution ``C -> r`` (stride ``(sh, 1)``, dilation ``(dh, 1)``)
    followed by a horizontal ``1 x kw`` convolution ``r -> N`` (stride ``(1, sw)``,
    dilation ``(1, dw)``) with the bias and activation. TensorFlow's padding is
    separable per axis, so ``valid`` and ``same`` give the original output shape.
    The rank is at most ``min(C*kh, N*kw)``.

    Example:
        >>> import keras, tfcompress as tfc
        >>> conv = keras.layers.Conv2D(32, 5, strides=2, padding="same")
        >>> conv.build((None, 28, 28, 16))
        >>> layer = tfc.SpatialSVDConv2D.from_layer(conv, rank=12)
        >>> tuple(layer(keras.ops.zeros((1, 28, 28, 16))).shape)
        (1, 14, 14, 32)
    """

    scheme = "spatial_svd"

    def __init__(self, filters: int, kernel_size: Any, rank: int, **kwargs: Any) -> None:
        super().__init__(filters, kernel_size, **kwargs)
        if int(rank) < 1:
            raise ValueError(f"SpatialSVDConv2D '{self.name}': rank must be >= 1, got {rank}.")
        self.rank = int(rank)

    @staticmethod
    def max_rank_for(kernel_shape: tuple[int, int, int, int]) -> int:
        """Largest meaningful rank for a ``(kh, kw, C, N)`` kernel: ``min(C*kh, N*kw)``."""
        kh, kw, c, n = kernel_shape
        return min(c * kh, n * kw)

    def _rank_config(self) -> dict[str, Any]:
        return {"rank": self.rank}

    def _check_rank(self, in_channels: int) -> None:
        bound = self.max_rank_for((*self.kernel_size, in_channels, self.filters))
        if self.rank > bound:
            raise ValueError(
                f"SpatialSVDConv2D '{self.name}': rank {self.rank} exceeds the maximum rank {bound} "
                f"(min(C*kh, N*kw) with C={in_channels})."
            )

    def _factor_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        kh, kw = self.kernel_size
        return {"kernel_v": (kh, 1, in_channels, self.rank), "kernel_h": (1, kw, self.rank, self.filters)}

    def _stages(self) -> list:
        (sh, sw), (dh, dw) = self.strides, self.dilation_rate
        return [
            (self.kernel_v, (sh, 1), self.padding, (dh, 1)),
            (self.kernel_h, (1, sw), self.padding, (1, dw)),
        ]

    def _factorize(self, kernel: np.ndarray) -> list[np.ndarray]:
        return list(decompose.spatial_svd_factors(kernel, self.rank))

    def _compose(self, factors: list[np.ndarray]) -> np.ndarray:
        return decompose.spatial_svd_compose(*factors)

    @classmethod
    def from_layer(cls, layer: keras.layers.Conv2D, rank: int) -> SpatialSVDConv2D:
        """A built ``SpatialSVDConv2D`` with the optimal rank-``rank`` factors of ``layer``.

        Example:
            >>> import keras, tfcompress as tfc
            >>> conv = keras.layers.Conv2D(16, 3, name="c1")
            >>> conv.build((None, 8, 8, 4))
            >>> tfc.SpatialSVDConv2D.from_layer(conv, rank=6).rank
            6
        """
        return cls._build_from(layer, rank=rank)
