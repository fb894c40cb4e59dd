"""How channels cross one layer or operation: the per-layer rules behind :func:`~tfcompress.pruning.prune_units`.

:func:`_kind` sorts every node of a model's graph into one of

- ``producer``: a Conv2D/Dense/SeparableConv2D (or a tfcompress decomposed layer) that reads one channel space and
  makes a new one;
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
    "SpatialDropout1D",
    "SpatialDropout3D",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
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


def _is_separable(layer: Any) -> bool:
    """A plain ``keras.layers.SeparableConv2D`` (not a subclass): see :mod:`.separable`."""
    return type(layer) is keras.layers.SeparableConv2D


def _is_channel_layer(layer: Any) -> bool:
    """A layer of a class whose input channels channel pruning can remove (Conv2D, Dense, SeparableConv2D, and
    their subclasses, which are refused with a reason); DepthwiseConv2D is per-channel, not one of them."""
    return isinstance(layer, keras.layers.Conv2D | keras.layers.Dense | keras.layers.SeparableConv2D)


def _is_target_type(layer: Any) -> bool:
    return (
        type(layer) is keras.layers.Dense
        or (type(layer) is keras.layers.Conv2D and int(layer.groups) == 1 and layer.data_format == "channels_last")
        or (_is_separable(layer) and layer.data_format == "channels_last")
        or (_is_decomposed(layer) and getattr(layer, "data_format", "channels_last") == "channels_last")
    )


def _kernels(weights: list[np.ndarray], layer: Any) -> int:
    """How many of ``layer``'s weights are kernels (the rest, at most one, is the bias)."""
    return len(weights) - (1 if getattr(layer, "use_bias", False) else 0)


def _out_channels(layer: Any) -> int:
    return int(layer.filters if hasattr(layer, "filters") else layer.units)


def _producer_problem(layer: Any) -> str | None:
    """Why a Conv2D/Dense/SeparableConv2D ``layer`` cannot give up output channels (None when it can)."""
    if _activation_name(layer) not in ELEMENTWISE_ACTIVATIONS:
        return f"its activation {layer.get_config().get('activation')!r} is not element-wise"
    return None


def _in_channels(layer: Any) -> int:
    """Input channels of a Conv2D/Dense, of a SeparableConv2D (its depthwise kernel's axis -2) or of a decomposed
    layer (its first factor's axis -2)."""
    if _is_decomposed(layer):
        return int(layer.weights[0].shape[-2])
    if _is_separable(layer):
        return int(layer.depthwise_kernel.shape[-2])
    return int(layer.kernel.shape[-2])


#: element-wise merges: all inputs and the output share one channel space
_MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")

#: why channels cannot pass some well-known layers (the generic reason covers the rest)
_OPAQUE_WHY = {
    "Flatten": "which mixes spatial positions into the feature axis",
    "Reshape": "which changes what the last axis means",
    "Permute": "which moves the channel axis",
    "Softmax": "which mixes channels",
    "Conv2DTranspose": "which is not winnowed (channel pruning shrinks Conv2D/Dense/SeparableConv2D layers only)",
    "Conv1D": "which is not winnowed (channel pruning shrinks Conv2D/Dense/SeparableConv2D layers only)",
    "Conv3D": "which is not winnowed (channel pruning shrinks Conv2D/Dense/SeparableConv2D layers only)",
    "Conv1DTranspose": "which is not winnowed (channel pruning shrinks Conv2D/Dense/SeparableConv2D layers only)",
    "Conv3DTranspose": "which is not winnowed (channel pruning shrinks Conv2D/Dense/SeparableConv2D layers only)",
    "EinsumDense": "which is not winnowed (channel pruning shrinks Conv2D/Dense/SeparableConv2D layers only)",
    "SVDSeparableConv2D": (
        "an SVD-decomposed SeparableConv2D, which channel pruning does not winnow (its pointwise kernel is two "
        "factors; prune the SeparableConv2D before decomposing it)"
    ),
    "WeightSVDConv1D": "a decomposed layer of a kind channel pruning does not winnow",
    "SpatialSVDConv1D": "a decomposed layer of a kind channel pruning does not winnow",
    "WeightSVDConv2DTranspose": "a decomposed layer of a kind channel pruning does not winnow",
    "SVDEinsumDense": "a decomposed layer of a kind channel pruning does not winnow",
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
        return "opaque", (
            f"a nested model ({kind}): channels are not followed into or out of a nested model, and the layers "
            "inside it are not pruned (call its layers directly in the outer model to prune them)"
        )
    if calls > 1:
        return "opaque", f"a shared layer (called {calls} times)"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "opaque", "which is channels_first"
    if _is_target_type(layer):
        return "producer", None
    if _is_channel_layer(layer):
        if isinstance(layer, keras.layers.Conv2D) and int(getattr(layer, "groups", 1)) != 1:
            return "opaque", f"a grouped Conv2D (groups={layer.groups}), which is not winnowed"
        base = next(
            c for c in (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.Dense) if isinstance(layer, c)
        )
        return "opaque", f"a subclass of {base.__name__}, which is not winnowed"
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
    special = _SPECIAL.get(type(layer).__name__)
    if special is not None and type(layer) is getattr(keras.layers, kind, None):
        return special(layer)
    if type(layer) is keras.layers.Concatenate:
        return "concat", None
    if kind in _MERGES and type(layer) is getattr(keras.layers, kind):
        return "merge", None
    if _is_scaled_residual(layer):
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
    if kind in _REDUCTION_OPS | {"ExpandDims", "Squeeze"} and tensors == 1:
        return _axis_op_kind(op, label)
    return "opaque", f"{label}, which may mix or reshape channels"


#: ``keras.ops`` reductions: over axes that leave the channel axis alone they keep channels apart
_REDUCTION_OPS = frozenset({"Mean", "Max", "Min", "Sum", "Amax", "Amin", "Prod", "Var", "Std"})


def _axes(value: Any) -> list[int] | None:
    if value is None:
        return None
    return [int(a) for a in value] if isinstance(value, list | tuple) else [int(value)]


def _axis_op_kind(op: Any, label: str) -> tuple[str, str | None]:
    """A reduction, ``expand_dims`` or ``squeeze`` node keeps channels when its axes leave the channel axis alone."""
    try:
        rank_in, rank_out = len(op.input.shape), len(op.output.shape)
    except (AttributeError, TypeError, ValueError):
        return "opaque", f"{label} whose input rank is unknown"
    kind = type(op).__name__
    axes = _axes(getattr(op, "axis", None))
    if axes is None:
        what = "squeezes every size-1 axis" if kind == "Squeeze" else "reduces over every axis"
        return "opaque", f"{label}, which {what} (the channel axis included)"
    rank = rank_out if kind == "ExpandDims" else rank_in
    if any(a % rank == rank - 1 for a in axes):
        return "opaque", f"{label} over the channel axis"
    return "pass", None


# ---------------------------------------------------------------- layers that need a closer look


def _channel_axis_only(axes: Any, rank: int) -> bool | None:
    """True: the axes are just the channel axis; False: they leave it alone; None: they mix it with others."""
    found = {int(a) % rank for a in (_axes(axes) or [])}
    if rank - 1 not in found:
        return False
    return True if found == {rank - 1} else None


def _prelu_kind(layer: Any) -> tuple[str, str | None]:
    """PReLU: per-channel alpha (sliced) unless the channel axis is shared, then nothing per channel."""
    alpha = layer.alpha.shape
    if len(alpha) == 0 or alpha[-1] == 1:
        return "pass", None
    return "channelwise", None


def _layer_norm_kind(layer: Any) -> tuple[str, str | None]:
    """LayerNormalization: pass-through when it normalises over other axes only (its gamma/beta then hold no
    per-channel values); across the channel axis it is a blocker, see :data:`NORMALISES_ACROSS_CHANNELS`."""
    rank = len(_input_shapes(layer)[0])
    if _channel_axis_only(layer.axis, rank) is False:
        return "pass", None
    return "opaque", NORMALISES_ACROSS_CHANNELS


#: Why a LayerNormalization over the channel axis (or a GroupNormalization with several channels per group)
#: blocks its channels. Removing a channel changes the mean and variance, so every KEPT channel's value changes
#: too: pruning is no longer exact when the consumers' dropped inputs have zero weight. The selection scores
#: candidates exactly that way (zeros in the working copy) and refits the consumers on those masked inputs, so
#: letting the channels through would make the chosen plan's scores and least-squares fits describe a model
#: other than the one returned. Blocked, with this reason, until the selection can evaluate renormalised inputs.
NORMALISES_ACROSS_CHANNELS = (
    "which normalises across channels: removing some changes the mean and variance seen by the kept ones, so "
    "the pruned model would not be the one the selection scored"
)


def _group_norm_kind(layer: Any) -> tuple[str, str | None]:
    """GroupNormalization with one channel per group (``groups=-1`` or ``groups == channels``) is per-channel:
    gamma/beta are sliced and ``groups`` rewritten; with several channels per group it is a blocker."""
    shape = _input_shapes(layer)[0]
    rank = len(shape)
    if int(layer.axis) % rank != rank - 1:
        return "opaque", "which does not normalise over the channel axis"
    channels = shape[-1]
    if int(layer.groups) not in (-1, channels):
        return "opaque", (
            f"which normalises groups of {channels // int(layer.groups)} channels together: removing some changes "
            "the statistics seen by the kept ones, so the pruned model would not be the one the selection scored"
        )
    return "channelwise", None


def _per_channel_values(value: Any, channels: int | None) -> bool | None:
    """A Rescaling/Normalization constant: True when it has one value per channel, False when it is the same for
    every channel, None when it has another shape."""
    if value is None:
        return False
    shape = np.shape(value)
    if len(shape) == 0 or shape[-1] == 1:
        return False
    return True if shape[-1] == channels else None


def _rescaling_kind(layer: Any) -> tuple[str, str | None]:
    """Rescaling: a scalar scale/offset passes channels; one value per channel is sliced in the config."""
    channels = _input_shapes(layer)[0][-1]
    found = [_per_channel_values(layer.scale, channels), _per_channel_values(layer.offset, channels)]
    if None in found:
        return "opaque", "whose scale or offset has a shape that is neither scalar nor per channel"
    return ("channelwise", None) if any(found) else ("pass", None)


def _normalization_kind(layer: Any) -> tuple[str, str | None]:
    """Normalization over the channel axis: per-channel mean/variance (weights or config) are sliced."""
    rank = len(_input_shapes(layer)[0])
    only = _channel_axis_only(layer.axis, rank)
    if not layer.axis:  # one mean and variance for everything
        return "pass", None
    if only is True:
        return "channelwise", None
    return "opaque", "which keeps statistics per position as well as per channel (its axis is not just the channels)"


def _reshape_kind(layer: Any) -> tuple[str, str | None]:
    """Reshape keeping the last axis (``(C,)`` to ``(1, 1, C)`` in squeeze-and-excitation blocks): each position's
    channel vector stays contiguous, so channel ``c`` stays channel ``c``; ``target_shape`` is rewritten."""
    before, after = _input_shapes(layer)[0][-1], tuple(layer.output.shape)[-1]
    target = list(layer.target_shape)
    if before is None or before != after or target[-1] not in (before, -1):
        return "opaque", "which changes what the last axis means"
    return "channelwise", None


def _unit_norm_kind(layer: Any) -> tuple[str, str | None]:
    """UnitNormalization: over other axes it keeps channels apart; over the channel axis it rescales the kept
    channels by a norm that includes the removed ones."""
    if _channel_axis_only(layer.axis, len(_input_shapes(layer)[0])) is False:
        return "pass", None
    return "opaque", "which normalises across channels (removing channels would rescale the kept ones)"


_SPECIAL = {
    "PReLU": _prelu_kind,
    "UnitNormalization": _unit_norm_kind,
    "LayerNormalization": _layer_norm_kind,
    "GroupNormalization": _group_norm_kind,
    "Rescaling": _rescaling_kind,
    "Normalization": _normalization_kind,
    "Reshape": _reshape_kind,
}


def _narrow_config(layer: Any, config: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """``layer``'s config for its kept channels ``keep`` (a per-channel layer that names a channel count or holds
    per-channel constants in its config); other layers' configs are returned as they are."""
    kind = type(layer).__name__
    count = len(keep)
    config = dict(config)
    if kind == "GroupNormalization" and int(config.get("groups", -1)) != -1:
        config["groups"] = count
    elif kind == "Reshape" and list(config["target_shape"])[-1] != -1:
        config["target_shape"] = (*tuple(config["target_shape"])[:-1], count)
    elif kind in ("Rescaling", "Normalization"):
        channels = _input_shapes(layer)[0][-1]
        for key in ("scale", "offset", "mean", "variance"):
            if key in config and _per_channel_values(config[key], channels):
                config[key] = np.take(np.asarray(config[key]), keep, axis=-1).tolist()
    return config


def _slice_channelwise(layer: Any, weights: list[np.ndarray], keep: np.ndarray) -> list[np.ndarray]:
    """The per-channel weights of a channelwise ``layer`` for its kept channels ``keep``."""
    if type(layer) is keras.layers.DepthwiseConv2D:
        kernel, *rest = weights
        return [np.take(kernel, keep, axis=-2), *(np.take(w, keep, axis=-1) for w in rest)]
    channels = _input_shapes(layer)[0][-1]
    # Normalization's sample count is a scalar; everything else here is per channel along its last axis
    return [np.take(w, keep, axis=-1) if np.ndim(w) and w.shape[-1] == channels else w for w in weights]


def _channelwise_count(layer: Any) -> int:
    """How many channels a channelwise layer sees (its input's last axis)."""
    return int(_input_shapes(layer)[0][-1])


def _is_scaled_residual(layer: Any) -> bool:
    """InceptionResNetV2's ``CustomScaleLayer`` (``inputs[0] + inputs[1] * scale``, a scalar ``scale``): an
    element-wise merge of its two inputs. Recognised by its class and module, since keras.applications defines it."""
    return (
        type(layer).__name__ == "CustomScaleLayer"
        and type(layer).__module__.endswith("applications.inception_resnet_v2")
        and np.size(getattr(layer, "scale", None)) == 1
    )


def _pass_through_types() -> tuple[type, ...]:
    return tuple(getattr(keras.layers, name) for name in _PASS_THROUGH if hasattr(keras.layers, name))
