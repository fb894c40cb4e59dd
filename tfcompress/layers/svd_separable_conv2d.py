"""``SVDSeparableConv2D``: a ``SeparableConv2D`` whose pointwise kernel is split as ``C*dm -> r -> N``."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from .. import unfoldings
from .base import DecomposedConv

__all__ = ["SVDSeparableConv2D"]


@keras.saving.register_keras_serializable(package="tfcompress")
class SVDSeparableConv2D(DecomposedConv):
    """Low-rank ``SeparableConv2D``: ``x -> conv_1x1(separable(x, D, A: C*dm -> r), B: r -> N) + bias``.

    The depthwise ``kh x kw`` kernel ``D`` (``(kh, kw, C, dm)``) is kept as it is; the
    pointwise ``(1, 1, C*dm, N)`` kernel is a ``(C*dm, N)`` matrix, replaced by its best
    rank-``r`` approximation ``A @ B``. The layer runs the original separable op with
    ``A`` as its pointwise kernel (same strides, padding, dilation), then a 1x1
    convolution with ``B``, the bias and the activation.

    Args:
        filters: ``N``, the output channels.
        kernel_size: ``(kh, kw)`` of the depthwise kernel.
        rank: ``r``, at most ``min(C*dm, N)``; at that rank the output equals the original's.
        depth_multiplier: ``dm``, as in ``keras.layers.SeparableConv2D``.
        depthwise_initializer: initializer of the depthwise kernel (``kernel_initializer``
            is that of the pointwise factors).
        **kwargs: ``strides``, ``padding``, ``dilation_rate``, ``activation``, ``use_bias``,
            ``kernel_initializer``, ``bias_initializer`` and the usual layer arguments.

    Shapes: input ``(batch, H, W, C)``, output ``(batch, Ho, Wo, N)`` like the original layer;
    weights ``depthwise_kernel (kh, kw, C, dm)``, ``kernel_a (1, 1, C*dm, r)``, ``kernel_b (1, 1, r, N)``.

    Example:
        >>> import keras, tfcompress as tfc
        >>> conv = keras.layers.SeparableConv2D(64, 3, padding="same")
        >>> conv.build((None, 16, 16, 32))
        >>> layer = tfc.SVDSeparableConv2D.from_layer(conv, rank=8)
        >>> tuple(layer(keras.ops.zeros((1, 16, 16, 32))).shape)
        (1, 16, 16, 64)
    """

    scheme = "weight_svd"
    source_class = keras.layers.SeparableConv2D
    kernel_layout = "(1, 1, C*depth_multiplier, N)"
    _extra_initializers = ("depthwise_initializer",)

    def __init__(
        self,
        filters: int,
        kernel_size: Any,
        rank: int,
        depth_multiplier: int = 1,
        depthwise_initializer: Any = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(filters, kernel_size, **kwargs)
        if int(rank) < 1:
            raise ValueError(f"SVDSeparableConv2D '{self.name}': rank must be >= 1, got {rank}.")
        if int(depth_multiplier) < 1:
            raise ValueError(
                f"SVDSeparableConv2D '{self.name}': depth_multiplier must be >= 1, got {depth_multiplier}."
            )
        self.rank = int(rank)
        self.depth_multiplier = int(depth_multiplier)
        self.depthwise_initializer = keras.initializers.get(depthwise_initializer)

    @staticmethod
    def max_rank_for(kernel_shape: tuple[int, int, int, int]) -> int:
        """Largest meaningful rank for a ``(1, 1, C*dm, N)`` pointwise kernel: ``min(C*dm, N)``."""
        return min(kernel_shape[2], kernel_shape[3])

    def _rank_config(self) -> dict[str, Any]:
        return {"rank": self.rank}

    def _extra_config(self) -> dict[str, Any]:
        return {
            "depth_multiplier": self.depth_multiplier,
            "depthwise_initializer": keras.initializers.serialize(self.depthwise_initializer),
        }

    def _check_rank(self, in_channels: int) -> None:
        bound = min(in_channels * self.depth_multiplier, self.filters)
        if self.rank > bound:
            raise ValueError(
                f"SVDSeparableConv2D '{self.name}': rank {self.rank} exceeds the maximum rank {bound} "
                f"(min(C*depth_multiplier, N) with C={in_channels})."
            )

    def _factor_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        mid = in_channels * self.depth_multiplier
        return {
            "depthwise_kernel": (*self.kernel_size, in_channels, self.depth_multiplier),
            "kernel_a": (1, 1, mid, self.rank),
            "kernel_b": (1, 1, self.rank, self.filters),
        }

    def _factor_initializer(self, name: str) -> Any:
        return self.depthwise_initializer if name == "depthwise_kernel" else self.kernel_initializer

    def _apply(self, x: Any) -> Any:
        x = ops.separable_conv(
            x,
            self.depthwise_kernel,
            self.kernel_a,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
            dilation_rate=self.dilation_rate,
        )
        return ops.conv(x, self.kernel_b, strides=1, padding="valid", data_format="channels_last")

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """Shape ``(1, 1, C*dm, N)`` of the pointwise kernel this layer approximates."""
        self._require_built("kernel_shape")
        return (1, 1, self.in_channels * self.depth_multiplier, self.filters)

    def _source_kernel_shapes(self) -> list[tuple[int, ...]]:
        depthwise = (*self.kernel_size, self.in_channels, self.depth_multiplier)
        return [depthwise, self.kernel_shape]

    def _factorize(self, depthwise: np.ndarray, pointwise: np.ndarray) -> list[np.ndarray]:
        return [depthwise, *unfoldings.pointwise_svd_factors(pointwise, self.rank)]

    def _compose(self, factors: list[np.ndarray]) -> np.ndarray:
        return unfoldings.pointwise_svd_compose(factors[1], factors[2])

    def reconstructed_kernel(self) -> np.ndarray:
        """The ``(1, 1, C*dm, N)`` pointwise kernel ``A @ B`` (the depthwise kernel is the original's)."""
        return super().reconstructed_kernel()

    @classmethod
    def _init_kwargs_from(cls, layer: Any) -> dict[str, Any]:
        return {
            "filters": layer.filters,
            "kernel_size": layer.kernel_size,
            "strides": layer.strides,
            "padding": layer.padding,
            "data_format": layer.data_format,
            "dilation_rate": layer.dilation_rate,
            "depth_multiplier": layer.depth_multiplier,
            "activation": keras.activations.serialize(layer.activation),
            "use_bias": layer.use_bias,
            "depthwise_initializer": keras.initializers.serialize(layer.depthwise_initializer),
            "kernel_initializer": keras.initializers.serialize(layer.pointwise_initializer),
            "bias_initializer": keras.initializers.serialize(layer.bias_initializer),
            "name": layer.name,
            "dtype": layer.dtype_policy,
            "trainable": layer.trainable,
        }

    @classmethod
    def _source_weights(cls, layer: Any) -> list[np.ndarray]:
        weights = [np.asarray(ops.convert_to_numpy(layer.depthwise_kernel))]
        weights.append(np.asarray(ops.convert_to_numpy(layer.pointwise_kernel)))
        if layer.use_bias:
            weights.append(np.asarray(ops.convert_to_numpy(layer.bias)))
        return weights

    @classmethod
    def from_layer(cls, layer: keras.layers.SeparableConv2D, rank: int) -> SVDSeparableConv2D:
        """A built ``SVDSeparableConv2D``: ``layer``'s depthwise kernel and the optimal rank-``rank`` factors of
        its pointwise kernel.

        Example:
            >>> import keras, tfcompress as tfc
            >>> conv = keras.layers.SeparableConv2D(16, 3, depth_multiplier=2, name="sep")
            >>> conv.build((None, 8, 8, 4))
            >>> tfc.SVDSeparableConv2D.from_layer(conv, rank=4).kernel_shape
            (1, 1, 8, 16)
        """
        return cls._build_from(layer, rank=rank)
