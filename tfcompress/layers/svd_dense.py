"""``SVDDense``: a ``Dense`` layer split as ``in -> r -> units``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from .. import decompose
from .base import build_for_factors, check_source_dense, source_kernel_and_bias

__all__ = ["SVDDense", "dense_rank_for_ratio"]


def dense_rank_for_ratio(in_features: int, units: int, ratio: float) -> int:
    """``int(in * units * ratio / (in + units))``, at least 1: ratio 1.0 is the break-even rank.

    Example:
        >>> dense_rank_for_ratio(64, 10, 0.5)
        4
    """
    ratio = float(ratio)
    if not ratio > 0:
        raise ValueError(f"ratio must be > 0, got {ratio}.")
    return max(1, int(in_features * units * ratio / (in_features + units)))


@keras.saving.register_keras_serializable(package="tfcompress")
class SVDDense(keras.layers.Layer):
    """Low-rank ``Dense``: ``x -> x @ A (in x r) @ B (r x units) + bias``, then the activation.

    Give exactly one of ``rank`` and ``ratio``; a ratio is turned into a rank when
    the layer is built, as ``int(in * units * ratio / (in + units))`` (ratio 1.0 is
    the rank at which the factors cost as much as the full kernel). The rank is at
    most ``min(in, units)``.

    Example:
        >>> import keras, tfcompress as tfc
        >>> dense = keras.layers.Dense(10, activation="softmax")
        >>> dense.build((None, 64))
        >>> layer = tfc.SVDDense.from_layer(dense, rank=4)
        >>> tuple(layer(keras.ops.zeros((2, 64))).shape)
        (2, 10)
    """

    scheme = "svd"

    def __init__(
        self,
        units: int,
        rank: int | None = None,
        ratio: float | None = None,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (rank is None) == (ratio is None):
            raise ValueError(
                f"SVDDense '{self.name}': give exactly one of `rank` and `ratio` (got rank={rank}, ratio={ratio})."
            )
        if rank is not None and int(rank) < 1:
            raise ValueError(f"SVDDense '{self.name}': rank must be >= 1, got {rank}.")
        if ratio is not None and not float(ratio) > 0:
            raise ValueError(f"SVDDense '{self.name}': ratio must be > 0, got {ratio}.")
        if int(units) < 1:
            raise ValueError(f"SVDDense '{self.name}': units must be >= 1, got {units}.")
        self.units = int(units)
        self.rank = None if rank is None else int(rank)
        self.ratio = None if ratio is None else float(ratio)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    @staticmethod
    def max_rank_for(kernel_shape: tuple[int, int]) -> int:
        """Largest meaningful rank for an ``(in, units)`` kernel: ``min(in, units)``."""
        return min(kernel_shape)

    def build(self, input_shape: Sequence[int | None]) -> None:
        in_features = input_shape[-1]
        if in_features is None:
            raise ValueError(f"SVDDense '{self.name}': the last input dimension must be known.")
        self.in_features = int(in_features)
        if self.rank is None:
            self.rank = dense_rank_for_ratio(self.in_features, self.units, self.ratio)
        bound = min(self.in_features, self.units)
        if self.rank > bound:
            raise ValueError(
                f"SVDDense '{self.name}': rank {self.rank} exceeds the maximum rank {bound} (min(in={self.in_features}, "
                f"units={self.units}))."
            )
        self.kernel_a = self.add_weight(
            name="kernel_a", shape=(self.in_features, self.rank), initializer=self.kernel_initializer
        )
        self.kernel_b = self.add_weight(
            name="kernel_b", shape=(self.rank, self.units), initializer=self.kernel_initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: self.in_features})

    def call(self, inputs: Any) -> Any:
        x = ops.matmul(ops.matmul(inputs, self.kernel_a), self.kernel_b)
        if self.use_bias:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                # once built, the ratio has become a rank: store that, so loading is exact
                "rank": self.rank,
                "ratio": None if self.rank is not None else self.ratio,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config

    @property
    def kernel_shape(self) -> tuple[int, int]:
        """Shape ``(in, units)`` of the ``Dense`` kernel this layer approximates."""
        if not self.built:
            raise ValueError(f"SVDDense '{self.name}' must be built first; call it or use from_layer().")
        return (self.in_features, self.units)

    def set_decomposed_weights(self, source_weights: Sequence[Any]) -> None:
        """Set ``A``, ``B`` (and bias) to the truncated SVD of an original ``Dense``'s ``[kernel(, bias)]``.

        Example:
            >>> import keras, tfcompress as tfc
            >>> dense = keras.layers.Dense(8)
            >>> dense.build((None, 16))
            >>> layer = tfc.SVDDense(8, rank=8)
            >>> layer.build((None, 16))
            >>> layer.set_decomposed_weights(dense.get_weights())
        """
        if not self.built:
            raise ValueError(
                f"SVDDense '{self.name}' must be built before set_decomposed_weights; call it or use from_layer()."
            )
        weights = list(source_weights)
        expected = 2 if self.use_bias else 1
        if len(weights) != expected:
            raise ValueError(
                f"SVDDense '{self.name}' (use_bias={self.use_bias}) expects {expected} source weight(s), got {len(weights)}."
            )
        kernel = np.asarray(weights[0])
        if kernel.shape != self.kernel_shape:
            raise ValueError(
                f"SVDDense '{self.name}': source kernel shape {kernel.shape} != {self.kernel_shape} (in, units)."
            )
        bias = np.asarray(weights[1]) if self.use_bias else None
        if bias is not None and bias.shape != (self.units,):  # check everything before assigning anything
            raise ValueError(f"SVDDense '{self.name}': bias shape {bias.shape} != ({self.units},).")
        a, b = decompose.dense_svd_factors(kernel, self.rank)
        self.kernel_a.assign(a.astype(self.kernel_a.dtype))
        self.kernel_b.assign(b.astype(self.kernel_b.dtype))
        if bias is not None:
            self.bias.assign(bias.astype(self.bias.dtype))

    def reconstructed_kernel(self) -> np.ndarray:
        """The ``(in, units)`` kernel ``A @ B``."""
        _ = self.kernel_shape  # raises a ValueError naming the layer when it is not built
        return ops.convert_to_numpy(self.kernel_a) @ ops.convert_to_numpy(self.kernel_b)

    @classmethod
    def from_layer(cls, layer: keras.layers.Dense, rank: int) -> SVDDense:
        """A built ``SVDDense`` with the optimal rank-``rank`` factors of ``layer``.

        Example:
            >>> import keras, tfcompress as tfc
            >>> dense = keras.layers.Dense(32, name="fc")
            >>> dense.build((None, 128))
            >>> tfc.SVDDense.from_layer(dense, rank=8).rank
            8
        """
        check_source_dense(layer)
        weights = source_kernel_and_bias(layer)
        new = cls(
            layer.units,
            rank=rank,
            activation=keras.activations.serialize(layer.activation),
            use_bias=layer.use_bias,
            kernel_initializer=keras.initializers.serialize(layer.kernel_initializer),
            bias_initializer=keras.initializers.serialize(layer.bias_initializer),
            name=layer.name,
            dtype=layer.dtype_policy,
            trainable=layer.trainable,
        )
        build_for_factors(new, (None, weights[0].shape[0]))
        new.set_decomposed_weights(weights)
        return new
