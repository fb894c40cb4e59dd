"""Shared machinery of the decomposed convolution layers.

A decomposed layer is ONE Keras layer that holds its factor kernels and applies
them as a short chain of convolutions (``keras.ops.conv``), then the bias and the
activation of the layer it replaces. Keeping it one layer means a compression
plan maps layer names one to one and names stay stable through a rewrite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

__all__ = ["DecomposedConv2D", "check_source_conv2d", "check_source_dense", "source_kernel_and_bias"]


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        return int(value), int(value)
    try:
        items = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"`{what}` must be an int or a pair of ints, got {value!r}.") from None
    if len(items) != 2:
        raise ValueError(f"`{what}` must be an int or a pair of ints, got {value!r}.")
    return items  # type: ignore[return-value]


def conv_output_length(length: int | None, kernel: int, stride: int, padding: str, dilation: int) -> int | None:
    """Spatial output length of a convolution (TensorFlow's rule), ``None`` when unknown."""
    if length is None:
        return None
    if padding == "same":
        return math.ceil(length / stride)
    effective = (kernel - 1) * dilation + 1
    return max((length - effective) // stride + 1, 0)


def _describe(layer: Any) -> str:
    return f"layer '{getattr(layer, 'name', '?')}' ({type(layer).__name__})"


def check_source_conv2d(layer: Any) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``layer`` is a plain, decomposable ``Conv2D``."""
    if not isinstance(layer, keras.layers.Conv2D):
        raise TypeError(
            f"{_describe(layer)} cannot be decomposed as a Conv2D: only keras.layers.Conv2D is supported "
            "(DepthwiseConv2D, SeparableConv2D, Conv2DTranspose and Conv1D are not)."
        )
    if type(layer).call is not keras.layers.Conv2D.call:
        raise ValueError(
            f"{_describe(layer)} overrides Conv2D.call; its function is unknown, so it cannot be decomposed."
        )
    if getattr(layer, "groups", 1) != 1:
        raise ValueError(f"{_describe(layer)} has groups={layer.groups}; grouped convolutions cannot be decomposed.")
    if layer.data_format != "channels_last":
        raise ValueError(
            f"{_describe(layer)} uses data_format='channels_first', which TensorFlow cannot run on the CPU; "
            "rebuild the model with channels_last before compressing it."
        )
    if getattr(layer, "quantization_mode", None):
        raise ValueError(f"{_describe(layer)} is quantized; decompose the float model, then quantize.")
    if not layer.built:
        raise ValueError(f"{_describe(layer)} is not built; build or call the model first.")


def check_source_dense(layer: Any) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``layer`` is a plain, decomposable ``Dense``."""
    if not isinstance(layer, keras.layers.Dense):
        raise TypeError(f"{_describe(layer)} cannot be decomposed with SVD: only keras.layers.Dense is supported.")
    if type(layer).call is not keras.layers.Dense.call:
        raise ValueError(
            f"{_describe(layer)} overrides Dense.call; its function is unknown, so it cannot be decomposed."
        )
    if getattr(layer, "quantization_mode", None):
        raise ValueError(f"{_describe(layer)} is quantized; decompose the float model, then quantize.")
    if not layer.built:
        raise ValueError(f"{_describe(layer)} is not built; build or call the model first.")


def build_for_factors(layer: Any, input_shape: Sequence[int | None]) -> None:
    """Build a decomposed ``layer`` whose factors are assigned right afterwards: its kernel initializer is lent
    zeros while it builds, so no random values are drawn only to be overwritten (for the large factors of e.g.
    ResNet50 that is most of the build time). The initializer is put back, so the layer's config is unchanged."""
    kept = layer.kernel_initializer
    layer.kernel_initializer = keras.initializers.Zeros()
    try:
        layer.build(input_shape)
    finally:
        layer.kernel_initializer = kept


def source_kernel_and_bias(layer: Any) -> list[np.ndarray]:
    """The ``[kernel]`` or ``[kernel, bias]`` list of a Conv2D/Dense, with any LoRA delta merged in."""
    weights = [np.asarray(ops.convert_to_numpy(layer.kernel))]
    if layer.use_bias:
        weights.append(np.asarray(ops.convert_to_numpy(layer.bias)))
    return weights


class DecomposedConv2D(keras.layers.Layer):
    """Base class of the decomposed ``Conv2D`` layers.

    Subclasses define the factor kernels (``_factor_shapes``), how a chain of
    convolutions applies them (``_stages``), how the original kernel is factorised
    (``_factorize``) and how the factors compose back (``_compose``).
    """

    scheme: str = ""

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = (1, 1),
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = (1, 1),
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if int(filters) < 1:
            raise ValueError(f"{type(self).__name__} '{self.name}': `filters` must be >= 1, got {filters}.")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        padding = str(padding).lower()
        if padding not in ("valid", "same"):
            raise ValueError(
                f"{type(self).__name__} '{self.name}': padding must be 'valid' or 'same', got {padding!r}."
            )
        self.padding = padding
        data_format = data_format or keras.config.image_data_format()
        if data_format != "channels_last":
            raise ValueError(
                f"{type(self).__name__} '{self.name}': only data_format='channels_last' is supported "
                "(TensorFlow has no channels_first convolution on the CPU)."
            )
        self.data_format = data_format
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                f"{type(self).__name__} '{self.name}': strides > 1 cannot be combined with dilation_rate > 1."
            )
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    # ---------------------------------------------------------------- subclass hooks

    def _rank_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_rank(self, in_channels: int) -> None:
        raise NotImplementedError

    def _factor_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def _stages(self) -> list[tuple[Any, tuple[int, int], str, tuple[int, int]]]:
        """``[(kernel_variable, strides, padding, dilation), ...]`` applied in order."""
        raise NotImplementedError

    def _factorize(self, kernel: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def _compose(self, factors: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    # ---------------------------------------------------------------- Keras API

    def build(self, input_shape: Sequence[int | None]) -> None:
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(f"{type(self).__name__} '{self.name}': the number of input channels must be known.")
        self.in_channels = int(in_channels)
        self._check_rank(self.in_channels)
        self._factor_names = []
        for name, shape in self._factor_shapes(self.in_channels).items():
            setattr(self, name, self.add_weight(name=name, shape=shape, initializer=self.kernel_initializer))
            self._factor_names.append(name)
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: self.in_channels})

    def call(self, inputs: Any) -> Any:
        x = inputs
        for kernel, strides, padding, dilation in self._stages():
            x = ops.conv(
                x, kernel, strides=strides, padding=padding, data_format="channels_last", dilation_rate=dilation
            )
        if self.use_bias:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        rows = conv_output_length(
            input_shape[1], self.kernel_size[0], self.strides[0], self.padding, self.dilation_rate[0]
        )
        cols = conv_output_length(
            input_shape[2], self.kernel_size[1], self.strides[1], self.padding, self.dilation_rate[1]
        )
        return (input_shape[0], rows, cols, self.filters)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        config.update(self._rank_config())
        return config

    # ---------------------------------------------------------------- decomposition

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """Shape ``(kh, kw, C, N)`` of the ``Conv2D`` kernel this layer approximates."""
        self._require_built("kernel_shape")
        return (*self.kernel_size, self.in_channels, self.filters)

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' must be built before {what}; call it or use from_layer()."
            )

    def set_decomposed_weights(self, source_weights: Sequence[Any]) -> None:
        """Set the factors to the optimal decomposition of an original ``Conv2D``'s weights.

        Args:
            source_weights: the original layer's ``get_weights()``: ``[kernel]`` or
                ``[kernel, bias]``, the kernel shaped ``(kh, kw, C, N)``.

        Example:
            >>> import keras, tfcompress as tfc
            >>> conv = keras.layers.Conv2D(8, 3)
            >>> conv.build((None, 10, 10, 4))
            >>> layer = tfc.SpatialSVDConv2D(8, 3, rank=4)
            >>> layer.build((None, 10, 10, 4))
            >>> layer.set_decomposed_weights(conv.get_weights())
        """
        self._require_built("set_decomposed_weights")
        weights = list(source_weights)
        expected = 2 if self.use_bias else 1
        if len(weights) != expected:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' (use_bias={self.use_bias}) expects {expected} source weight(s) "
                f"([kernel{', bias' if self.use_bias else ''}]), got {len(weights)}."
            )
        kernel = np.asarray(weights[0])
        if kernel.shape != self.kernel_shape:
            raise ValueError(
                f"{type(self).__name__} '{self.name}': source kernel shape {kernel.shape} does not match "
                f"the layer's {self.kernel_shape} (kh, kw, C, N)."
            )
        bias = np.asarray(weights[1]) if self.use_bias else None
        if bias is not None and bias.shape != (self.filters,):  # check everything before assigning anything
            raise ValueError(f"{type(self).__name__} '{self.name}': bias shape {bias.shape} != ({self.filters},).")
        factors = self._factorize(kernel)
        for name, value in zip(self._factor_names, factors, strict=True):
            variable = getattr(self, name)
            variable.assign(np.asarray(value, dtype=variable.dtype))
        if bias is not None:
            self.bias.assign(bias.astype(self.bias.dtype))

    def reconstructed_kernel(self) -> np.ndarray:
        """The ``(kh, kw, C, N)`` kernel that this chain of convolutions is equivalent to."""
        self._require_built("reconstructed_kernel")
        return self._compose([ops.convert_to_numpy(getattr(self, name)) for name in self._factor_names])

    @classmethod
    def _init_kwargs_from(cls, layer: Any) -> dict[str, Any]:
        return {
            "filters": layer.filters,
            "kernel_size": layer.kernel_size,
            "strides": layer.strides,
            "padding": layer.padding,
            "data_format": layer.data_format,
            "dilation_rate": layer.dilation_rate,
            "activation": keras.activations.serialize(layer.activation),
            "use_bias": layer.use_bias,
            "kernel_initializer": keras.initializers.serialize(layer.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(layer.bias_initializer),
            "name": layer.name,
            "dtype": layer.dtype_policy,
            "trainable": layer.trainable,
        }

    @classmethod
    def _build_from(cls, layer: Any, **rank_kwargs: Any) -> DecomposedConv2D:
        check_source_conv2d(layer)
        weights = source_kernel_and_bias(layer)
        new = cls(**cls._init_kwargs_from(layer), **rank_kwargs)
        build_for_factors(new, (None, None, None, weights[0].shape[2]))
        new.set_decomposed_weights(weights)
        return new
