"""``WeightSVDConv2DTranspose``: a ``Conv2DTranspose`` split as a 1x1 conv ``C -> r`` and a transposed
``kh x kw`` conv ``r -> N``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from .. import unfoldings
from .base import DecomposedConv, _pair

__all__ = ["WeightSVDConv2DTranspose", "conv_transpose_output_length"]


def conv_transpose_output_length(
    length: int | None, kernel: int, stride: int, padding: str, output_padding: int | None, dilation: int
) -> int | None:
    """Spatial output length of a transposed convolution (the rule of ``keras.layers.Conv2DTranspose``).

    Example:
        >>> conv_transpose_output_length(7, 3, 2, "same", None, 1), conv_transpose_output_length(7, 3, 2, "valid", None, 1)
        (14, 15)
    """
    if length is None:
        return None
    effective = (kernel - 1) * dilation + 1
    if padding == "valid":
        extra = max(effective, stride) - effective if output_padding is None else output_padding
        return (length - 1) * stride + effective + extra
    if output_padding is None:
        return length * stride
    return (length - 1) * stride + effective % 2 + output_padding


@keras.saving.register_keras_serializable(package="tfcompress")
class WeightSVDConv2DTranspose(DecomposedConv):
    """Weight-SVD decomposition of a ``Conv2DTranspose``: ``x -> conv_transpose(conv_1x1(x, A: C -> r), B: r -> N)``.

    Keras stores the transposed kernel as ``(kh, kw, N, C)``. It is unfolded as a
    ``(C, kh*kw*N)`` matrix and replaced by its best rank-``r`` approximation, applied
    as a 1x1 convolution ``C -> r`` at the input resolution followed by the transposed
    ``kh x kw`` convolution ``r -> N`` with the original strides, padding,
    output padding, dilation, bias and activation (a transposed convolution is linear
    in its input channels, so mixing them first is exact).

    Args:
        filters: ``N``, the output channels.
        kernel_size: ``(kh, kw)``.
        rank: ``r``, at most ``min(C, kh*kw*N)``; at that rank the output equals the original's.
        output_padding: ``None`` or an int or pair, as in ``keras.layers.Conv2DTranspose``.
        **kwargs: ``strides``, ``padding``, ``dilation_rate``, ``activation``, ``use_bias``,
            the initializers and the usual layer arguments.

    Shapes: input ``(batch, H, W, C)``, output ``(batch, Ho, Wo, N)`` like the original layer;
    factor kernels ``kernel_a (1, 1, C, r)`` and ``kernel_b (kh, kw, N, r)``.

    Example:
        >>> import keras, tfcompress as tfc
        >>> conv = keras.layers.Conv2DTranspose(16, 3, strides=2, padding="same")
        >>> conv.build((None, 8, 8, 32))
        >>> layer = tfc.WeightSVDConv2DTranspose.from_layer(conv, rank=8)
        >>> tuple(layer(keras.ops.zeros((1, 8, 8, 32))).shape)
        (1, 16, 16, 16)
    """

    scheme = "weight_svd"
    source_class = keras.layers.Conv2DTranspose
    kernel_layout = "(kh, kw, N, C)"

    def __init__(self, filters: int, kernel_size: Any, rank: int, output_padding: Any = None, **kwargs: Any) -> None:
        super().__init__(filters, kernel_size, **kwargs)
        if int(rank) < 1:
            raise ValueError(f"WeightSVDConv2DTranspose '{self.name}': rank must be >= 1, got {rank}.")
        self.rank = int(rank)
        self.output_padding = None if output_padding is None else _pair(output_padding, "output_padding")
        if self.output_padding is not None and any(
            p >= s for p, s in zip(self.output_padding, self.strides, strict=True)
        ):
            raise ValueError(
                f"WeightSVDConv2DTranspose '{self.name}': output_padding {self.output_padding} must be smaller "
                f"than the strides {self.strides}."
            )

    @staticmethod
    def max_rank_for(kernel_shape: tuple[int, int, int, int]) -> int:
        """Largest meaningful rank for a ``(kh, kw, N, C)`` transposed kernel: ``min(C, kh*kw*N)``."""
        kh, kw, n, c = kernel_shape
        return min(c, kh * kw * n)

    def _rank_config(self) -> dict[str, Any]:
        return {"rank": self.rank}

    def _extra_config(self) -> dict[str, Any]:
        return {"output_padding": self.output_padding}

    def _check_rank(self, in_channels: int) -> None:
        bound = self.max_rank_for((*self.kernel_size, self.filters, in_channels))
        if self.rank > bound:
            raise ValueError(
                f"WeightSVDConv2DTranspose '{self.name}': rank {self.rank} exceeds the maximum rank {bound} "
                f"(min(C, kh*kw*N) with C={in_channels})."
            )

    def _factor_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        return {"kernel_a": (1, 1, in_channels, self.rank), "kernel_b": (*self.kernel_size, self.filters, self.rank)}

    def _apply(self, x: Any) -> Any:
        x = ops.conv(x, self.kernel_a, strides=1, padding="valid", data_format="channels_last")
        return ops.conv_transpose(
            x,
            self.kernel_b,
            strides=self.strides,
            padding=self.padding,
            output_padding=self.output_padding,
            data_format="channels_last",
            dilation_rate=self.dilation_rate,
        )

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        paddings = self.output_padding or (None, None)
        spatial = tuple(
            conv_transpose_output_length(input_shape[1 + i], k, s, self.padding, p, d)
            for i, (k, s, p, d) in enumerate(
                zip(self.kernel_size, self.strides, paddings, self.dilation_rate, strict=True)
            )
        )
        return (input_shape[0], *spatial, self.filters)

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """Shape ``(kh, kw, N, C)`` of the ``Conv2DTranspose`` kernel this layer approximates."""
        self._require_built("kernel_shape")
        return (*self.kernel_size, self.filters, self.in_channels)

    def _factorize(self, kernel: np.ndarray) -> list[np.ndarray]:
        return list(unfoldings.transpose_weight_svd_factors(kernel, self.rank))

    def _compose(self, factors: list[np.ndarray]) -> np.ndarray:
        return unfoldings.transpose_weight_svd_compose(*factors)

    @classmethod
    def _init_kwargs_from(cls, layer: Any) -> dict[str, Any]:
        return {**super()._init_kwargs_from(layer), "output_padding": layer.output_padding}

    @classmethod
    def _source_in_channels(cls, weights: list[np.ndarray]) -> int:
        return int(weights[0].shape[-1])

    @classmethod
    def from_layer(cls, layer: keras.layers.Conv2DTranspose, rank: int) -> WeightSVDConv2DTranspose:
        """A built ``WeightSVDConv2DTranspose`` with the optimal rank-``rank`` factors of ``layer``.

        Example:
            >>> import keras, tfcompress as tfc
            >>> conv = keras.layers.Conv2DTranspose(8, 3, strides=2, name="up")
            >>> conv.build((None, 4, 4, 16))
            >>> tfc.WeightSVDConv2DTranspose.from_layer(conv, rank=4).kernel_shape
            (3, 3, 8, 16)
        """
        return cls._build_from(layer, rank=rank)
