"""How channels cross one layer or operation: the per-layer rules behind :func:`~tfcompress.pruning.prune_units`.

:func:`_kind` sorts every node of a model's graph into one of

- ``producer``: a Conv2D/Dense (or a tfcompress decomposed layer) that reads one channel space and makes a new one;
- ``channelwise``: a layer that keeps its input's channels apart and holds per-channel weights or config values
  (BatchNormalization, DepthwiseConv2D, ...), sliced with the channels;
- ``pass``: a layer that keeps channels apart and holds nothing per channel (activations, pooling, padding, ...);
- ``merge``: an element-wise merge (Add, Multiply, ...): its inputs and output are one space;
- ``concat``: a channel-axis concatenation;
- ``opaque``: anything else, with the true reason why the channels cannot be followed through it.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from ..graph import is_graph_model

#: activations that act on each value separately (so they commute with dropping channels)
ELEMENTWISE_ACTIVATIONS = frozenset(
    {
        "linear",
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "silu",
        "swish",
        "hard_silu",
        "hard_swish",
        "sigmoid",
        "hard_sigmoid",
        "log_sigmoid",
        "tanh",
        "hard_tanh",
        "softplus",
        "softsign",
        "mish",
        "exponential",
    }
)

#: layers that keep channels separate and carry no per-channel weights (when channels-last)
_PASS_THROUGH = (
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "ZeroPadding2D",
    "Cropping2D",
    "UpSampling2D",
)

#: ``keras.ops`` operations (class names) that act on each value separately; as graph nodes they keep channels
_ELEMENTWISE_UNARY_OPS = frozenset(
    {
        "Abs",
        "Absolute",
        "Ceil",
        "Celu",
        "Clip",
        "Cos",
        "Cosh",
        "Elu",
        "Erf",
        "Exp",
        "Expm1",
        "Floor",
        "Gelu",
        "HardSigmoid",
        "HardSilu",
        "HardTanh",
        "LeakyRelu",
        "Log",
        "Log1p",
        "LogSigmoid",
        "Mish",
        "Negative",
        "Relu",
        "Relu6",
        "Round",
        "Rsqrt",
        "Selu",
        "Sigmoid",
        "Sign",
        "Silu",
        "Sin",
        "Sinh",
        "SoftPlus",
        "Softplus",
        "SoftSign",
        "Softsign",
        "Sqrt",
        "Square",
        "Tanh",
        "Tan",
        "Cast",
        "Reciprocal",
        "NanToNum",
    }
)
#: ``keras.ops`` binary operations that combine two tensors (or a tensor and a scalar) value by value
_ELEMENTWISE_BINARY_OPS = frozenset(
    {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power", "Mod", "FloorDivide"}
)

# ---------------------------------------------------------------- which layers qualify


def _activation_name(layer: Any) -> str | None:
    value = layer.get_config().get("activation", "linear")
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        inner = value.get("config", value)
        return inner if isinstance(inner, str) else None
    return None


def _is_decomposed(layer: Any) -> bool:
    """A tfcompress decomposed layer: its first factor reads the input channels, its last factor makes the outputs."""
    from ..layers import SVDDense
    from ..layers.base import DecomposedConv2D

    return isinstance(layer, DecomposedConv2D | SVDDense)


def _is_target_type(layer: Any) -> bool:
    return (
        type(layer) is keras.layers.Dense
        or (type(layer) is keras.layers.Conv2D and int(layer.groups) == 1 and layer.data_format == "channels_last")
        or (_is_decomposed(layer) and getattr(layer, "data_format", "channels_last") == "channels_last")
    )


def _kernels(weights: list[np.ndarray], layer: Any) -> int:
    """How many of ``layer``'s weights are kernels (the rest, at most one, is the bias)."""
    return len(weights) - (1 if getattr(layer, "use_bias", False) else 0)


def _out_channels(layer: Any) -> int:
    return int(layer.filters if hasattr(layer, "filters") else layer.units)


def _producer_problem(layer: Any) -> str | None:
    """Why a Conv2D/Dense ``layer`` cannot give up output channels (None when it can)."""
    if _activation_name(layer) not in ELEMENTWISE_ACTIVATIONS:
        return f"its activation {layer.get_config().get('activation')!r} is not element-wise"
    return None


def _in_channels(layer: Any) -> int:
    """Input channels of a Conv2D/Dense or of a decomposed layer (its first factor's axis -2)."""
    if _is_decomposed(layer):
        return int(layer.weights[0].shape[-2])
    return int(layer.kernel.shape[-2])


#: element-wise merges: all inputs and the output share one channel space
_MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")

#: why channels cannot pass some well-known layers (the generic reason covers the rest)
_OPAQUE_WHY = {
    "Flatten": "which mixes spatial positions into the feature axis",
    "Reshape": "which changes what the last axis means",
    "Permute": "which moves the channel axis",
    "LayerNormalization": "which normalises across channels",
    "GroupNormalization": "which normalises groups of channels",
    "UnitNormalization": "which normalises across channels",
    "Softmax": "which mixes channels",
    "SeparableConv2D": "which is not winnowed",
    "Conv2DTranspose": "which is not winnowed",
    "Lambda": "whose function is unknown",
}


def _channels(tensor: Any) -> int | None:
    dim = tensor.shape[-1] if len(tensor.shape) else None
    return None if dim is None else int(dim)


def _input_shapes(layer: Any) -> list[tuple]:
    value = layer.input
    tensors = value if isinstance(value, list | tuple) else [value]
    return [tuple(t.shape) for t in tensors]


def _kind(layer: Any, calls: int, tensors: int = 1) -> tuple[str, str | None]:
    """How channels cross ``layer``: (kind, why-not) with kind in producer/channelwise/pass/merge/concat/opaque."""
    kind = type(layer).__name__
    if not isinstance(layer, keras.layers.Layer):
        return _operation_kind(layer, calls, tensors)
    if is_graph_model(layer) or isinstance(layer, keras.Model):
        return "opaque", "a nested model, whose layers are not pruned"
    if calls > 1:
        return "opaque", f"a shared layer (called {calls} times)"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "opaque", "which is channels_first"
    if _is_target_type(layer):
        return "producer", None
    if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
        return "opaque", "a grouped Conv2D or a subclass, which is not winnowed"
    if type(layer) is keras.layers.BatchNormalization:
        shape = _input_shapes(layer)[0]
        axes = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
        if [int(a) % len(shape) for a in axes] != [len(shape) - 1]:
            return "opaque", "which is not on the channel axis"
        return "channelwise", None
    if type(layer) is keras.layers.DepthwiseConv2D:
        if int(layer.depth_multiplier) != 1:
            return "opaque", f"whose depth_multiplier is {layer.depth_multiplier} (not 1), so it is not winnowed"
        if _activation_name(layer) not in ELEMENTWISE_ACTIVATIONS:
            return "opaque", "whose activation is not element-wise"
        return "channelwise", None
    if type(layer) is keras.layers.Activation:
        name = _activation_name(layer)
        return (
            ("pass", None)
            if name in ELEMENTWISE_ACTIVATIONS
            else ("opaque", f"whose activation {name!r} mixes channels")
        )
    if type(layer) is keras.layers.Dropout and layer.noise_shape is not None:
        last = list(layer.noise_shape)[-1]
        if last not in (None, 1):
            return "opaque", "whose noise_shape names the channel count"
    if type(layer) in _pass_through_types():
        return "pass", None
    if type(layer) is keras.layers.Concatenate:
        return "concat", None
    if kind in _MERGES and type(layer) is getattr(keras.layers, kind):
        return "merge", None
    return "opaque", _OPAQUE_WHY.get(kind, "which is not a known channel-preserving layer")


def _operation_kind(op: Any, calls: int, tensors: int) -> tuple[str, str | None]:
    """How channels cross a Keras operation node that is not a layer (``x + 3.0``, ``keras.ops.relu(x)``)."""
    kind = type(op).__name__
    label = f"a keras.ops {kind} operation"
    if calls > 1:
        return "opaque", f"{label} called {calls} times"
    if kind in _ELEMENTWISE_BINARY_OPS:
        # with one tensor the other operand is a scalar (checked by the caller); with several they meet element-wise
        return ("pass", None) if tensors == 1 else ("merge", None)
    if kind in _ELEMENTWISE_UNARY_OPS:
        return "pass", None
    if kind == "Concatenate" and isinstance(getattr(op, "axis", None), int):
        return "concat", None
    return "opaque", f"{label}, which may mix or reshape channels"


def _pass_through_types() -> tuple[type, ...]:
    return tuple(getattr(keras.layers, name) for name in _PASS_THROUGH if hasattr(keras.layers, name))
