"""Shared machinery of the decomposed convolution layers.

A decomposed layer is ONE Keras layer that holds its factor kernels and applies
them as a short chain of convolutions (``keras.ops.conv``), then the bias and the
activation of the layer it replaces. Keeping it one layer means a compression
plan maps layer names one to one and names stay stable through a rewrite.

:class:`DecomposedConv` is the common base for one or two spatial axes;
:class:`DecomposedConv2D` (the Conv2D decompositions) and :class:`DecomposedConv1D`
(the Conv1D ones) fix the number of axes. The separable and transposed layers
derive from :class:`DecomposedConv` directly and replace the chain of stages
(``_apply``) with their own ops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

__all__ = [
    "DecomposedConv",
    "DecomposedConv1D",
    "DecomposedConv2D",
    "check_source_conv",
    "check_source_conv2d",
    "check_source_dense",
    "source_kernel_and_bias",
]


def _ntuple(value: Any, n: int, what: str) -> tuple[int, ...]:
    count = "an int" if n == 1 else "an int or a pair of ints"
    if isinstance(value, int | np.integer):
        return (int(value),) * n
    try:
        items = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"`{what}` must be {count}, got {value!r}.") from None
    if len(items) != n:
        raise ValueError(f"`{what}` must be {count}, got {value!r}.")
    return items


def _pair(value: Any, what: str) -> tuple[int, int]:
    return _ntuple(value, 2, what)  # type: ignore[return-value]


def conv_output_length(length: int | None, kernel: int, stride: int, padding: str, dilation: int) -> int | None:
    """Spatial output length of a convolution (TensorFlow's rule; ``causal`` keeps ``ceil(length / stride)``
    like ``same``), ``None`` when unknown."""
    if length is None:
        return None
    if padding in ("same", "causal"):
        return math.ceil(length / stride)
    effective = (kernel - 1) * dilation + 1
    return max((length - effective) // stride + 1, 0)


def _describe(layer: Any) -> str:
    return f"layer '{getattr(layer, 'name', '?')}' ({type(layer).__name__})"


def check_source_conv(layer: Any, cls: type) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``layer`` is a plain, decomposable instance of the Keras conv
    class ``cls`` (``Conv2D``, ``Conv1D``, ``SeparableConv2D`` or ``Conv2DTranspose``)."""
    if not isinstance(layer, cls):
        raise TypeError(
            f"{_describe(layer)} cannot be decomposed as a {cls.__name__}: only keras.layers.{cls.__name__} is "
            "accepted here (Conv2D, Conv1D, SeparableConv2D and Conv2DTranspose each have their own decomposed "
            "layer; DepthwiseConv2D has none)."
        )
    if type(layer).call is not cls.call:
        raise ValueError(
            f"{_describe(layer)} overrides {cls.__name__}.call; its function is unknown, so it cannot be decomposed."
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


def check_source_conv2d(layer: Any) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``layer`` is a plain, decomposable ``Conv2D``."""
    check_source_conv(layer, keras.layers.Conv2D)


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
    """Build a decomposed ``layer`` whose factors are assigned right afterwards: its kernel initializers are lent
    zeros while it builds, so no random values are drawn only to be overwritten (for the large factors of e.g.
    ResNet50 that is most of the build time). The initializers are put back, so the layer's config is unchanged."""
    names = ["kernel_initializer", *getattr(layer, "_extra_initializers", ())]
    kept = {name: getattr(layer, name) for name in names}
    for name in names:
        setattr(layer, name, keras.initializers.Zeros())
    try:
        layer.build(input_shape)
    finally:
        for name, value in kept.items():
            setattr(layer, name, value)


def source_kernel_and_bias(layer: Any) -> list[np.ndarray]:
    """The ``[kernel]`` or ``[kernel, bias]`` list of a Conv/Dense layer, with any LoRA delta merged in."""
    weights = [np.asarray(ops.convert_to_numpy(layer.kernel))]
    if layer.use_bias:
        weights.append(np.asarray(ops.convert_to_numpy(layer.bias)))
    return weights


class DecomposedConv(keras.layers.Layer):
    """Base class of the decomposed convolution layers (one or two spatial axes).

    Subclasses define the factor kernels (``_factor_shapes``), how a chain of
    convolutions applies them (``_stages``, or ``_apply`` for other ops), how the
    original kernel is factorised (``_factorize``) and how the factors compose
    back (``_compose``).
    """

    scheme: str = ""
    spatial_rank: int = 2
    paddings: tuple[str, ...] = ("valid", "same")
    source_class: Any = None  # the Keras layer class this layer decomposes
    kernel_layout: str = "(kh, kw, C, N)"  # how the decomposed source kernel's axes are read, for error messages

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        where = f"{type(self).__name__} '{self.name}'"
        if int(filters) < 1:
            raise ValueError(f"{where}: `filters` must be >= 1, got {filters}.")
        n = self.spatial_rank
        self.filters = int(filters)
        self.kernel_size = _ntuple(kernel_size, n, "kernel_size")
        self.strides = _ntuple(strides, n, "strides")
        self.dilation_rate = _ntuple(dilation_rate, n, "dilation_rate")
        padding = str(padding).lower()
        if padding not in self.paddings:
            choices = " or ".join(repr(p) for p in self.paddings)
            raise ValueError(f"{where}: padding must be {choices}, got {padding!r}.")
        self.padding = padding
        data_format = data_format or keras.config.image_data_format()
        if data_format != "channels_last":
            raise ValueError(
                f"{where}: only data_format='channels_last' is supported "
                "(TensorFlow has no channels_first convolution on the CPU)."
            )
        self.data_format = data_format
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{where}: strides > 1 cannot be combined with dilation_rate > 1.")
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=n + 2)

    # ---------------------------------------------------------------- subclass hooks

    def _rank_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_rank(self, in_channels: int) -> None:
        raise NotImplementedError

    def _factor_shapes(self, in_channels: int) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def _factor_initializer(self, name: str) -> Any:
        return self.kernel_initializer

    def _stages(self) -> list[tuple[Any, tuple[int, ...], str, tuple[int, ...]]]:
        """``[(kernel_variable, strides, padding, dilation), ...]`` applied in order."""
        raise NotImplementedError

    def _apply(self, x: Any) -> Any:
        """The factor convolutions, before the bias and activation (the chain of ``_stages`` by default)."""
        for kernel, strides, padding, dilation in self._stages():
            if padding == "causal":  # Conv1D's rule: pad the past side, then a valid convolution
                left = dilation[0] * (int(kernel.shape[0]) - 1)
                x = ops.pad(x, [[0, 0], [left, 0], [0, 0]])
                padding = "valid"
            x = ops.conv(
                x, kernel, strides=strides, padding=padding, data_format="channels_last", dilation_rate=dilation
            )
        return x

    def _factorize(self, *kernels: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def _compose(self, factors: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _extra_config(self) -> dict[str, Any]:
        return {}

    # ---------------------------------------------------------------- Keras API

    def build(self, input_shape: Sequence[int | None]) -> None:
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(f"{type(self).__name__} '{self.name}': the number of input channels must be known.")
        self.in_channels = int(in_channels)
        self._check_rank(self.in_channels)
        self._factor_names = []
        for name, shape in self._factor_shapes(self.in_channels).items():
            variable = self.add_weight(name=name, shape=shape, initializer=self._factor_initializer(name))
            setattr(self, name, variable)
            self._factor_names.append(name)
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        self.input_spec = keras.layers.InputSpec(ndim=self.spatial_rank + 2, axes={-1: self.in_channels})

    def call(self, inputs: Any) -> Any:
        x = self._apply(inputs)
        if self.use_bias:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        spatial = tuple(
            conv_output_length(input_shape[1 + i], k, s, self.padding, d)
            for i, (k, s, d) in enumerate(zip(self.kernel_size, self.strides, self.dilation_rate, strict=True))
        )
        return (input_shape[0], *spatial, self.filters)

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
        config.update(self._extra_config())
        config.update(self._rank_config())
        return config

    # ---------------------------------------------------------------- decomposition

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        """Shape of the source layer's kernel that this layer approximates (``kernel_layout``)."""
        self._require_built("kernel_shape")
        return (*self.kernel_size, self.in_channels, self.filters)

    def _source_kernel_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the source layer's kernels, in ``get_weights()`` order (the bias excluded)."""
        return [self.kernel_shape]

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' must be built before {what}; call it or use from_layer()."
            )

    def set_decomposed_weights(self, source_weights: Sequence[Any]) -> None:
        """Set the factors to the optimal decomposition of the original layer's weights.

        Args:
            source_weights: the original layer's ``get_weights()``: its kernel(s), then
                its bias when it has one (for a ``Conv2D``: ``[kernel]`` or
                ``[kernel, bias]``, the kernel shaped ``(kh, kw, C, N)``).

        Example:
            >>> import keras, tfcompress as tfc
            >>> conv = keras.layers.Conv2D(8, 3)
            >>> conv.build((None, 10, 10, 4))
            >>> layer = tfc.SpatialSVDConv2D(8, 3, rank=4)
            >>> layer.build((None, 10, 10, 4))
            >>> layer.set_decomposed_weights(conv.get_weights())
        """
        self._require_built("set_decomposed_weights")
        where = f"{type(self).__name__} '{self.name}'"
        weights = list(source_weights)
        shapes = self._source_kernel_shapes()
        expected = len(shapes) + (1 if self.use_bias else 0)
        if len(weights) != expected:
            names = ["kernel"] if len(shapes) == 1 else ["depthwise_kernel", "pointwise_kernel"]
            raise ValueError(
                f"{where} (use_bias={self.use_bias}) expects {expected} source weight(s) "
                f"([{', '.join(names + (['bias'] if self.use_bias else []))}]), got {len(weights)}."
            )
        kernels = [np.asarray(w) for w in weights[: len(shapes)]]
        layouts = [self.kernel_layout] if len(shapes) == 1 else ["(kh, kw, C, depth_multiplier)", self.kernel_layout]
        for kernel, shape, layout in zip(kernels, shapes, layouts, strict=True):
            if kernel.shape != shape:
                raise ValueError(
                    f"{where}: source kernel shape {kernel.shape} does not match the layer's {shape} {layout}."
                )
        bias = np.asarray(weights[-1]) if self.use_bias else None
        if bias is not None and bias.shape != (self.filters,):  # check everything before assigning anything
            raise ValueError(f"{where}: bias shape {bias.shape} != ({self.filters},).")
        factors = self._factorize(*kernels)
        for name, value in zip(self._factor_names, factors, strict=True):
            variable = getattr(self, name)
            variable.assign(np.asarray(value, dtype=variable.dtype))
        if bias is not None:
            self.bias.assign(bias.astype(self.bias.dtype))

    def reconstructed_kernel(self) -> np.ndarray:
        """The source kernel (``kernel_shape``) that this chain of convolutions is equivalent to."""
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
    def _source_weights(cls, layer: Any) -> list[np.ndarray]:
        return source_kernel_and_bias(layer)

    @classmethod
    def _source_in_channels(cls, weights: list[np.ndarray]) -> int:
        return int(weights[0].shape[-2])

    @classmethod
    def _build_from(cls, layer: Any, **rank_kwargs: Any) -> DecomposedConv:
        check_source_conv(layer, cls.source_class)
        weights = cls._source_weights(layer)
        new = cls(**cls._init_kwargs_from(layer), **rank_kwargs)
        build_for_factors(new, (None,) * (cls.spatial_rank + 1) + (cls._source_in_channels(weights),))
        new.set_decomposed_weights(weights)
        return new


class DecomposedConv2D(DecomposedConv):
    """Base class of the decomposed ``Conv2D`` layers: a chain of 2-D convolutions."""

    spatial_rank = 2
    source_class = keras.layers.Conv2D


class DecomposedConv1D(DecomposedConv):
    """Base class of the decomposed ``Conv1D`` layers: a chain of 1-D convolutions (``causal`` padding too)."""

    spatial_rank = 1
    paddings = ("valid", "same", "causal")
    source_class = keras.layers.Conv1D
    kernel_layout = "(k, C, N)"
