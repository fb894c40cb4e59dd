"""Pruning units (dependency groups of channels) and winnowing: removing channels for real.

Pruning input channel ``c`` of a ``Conv2D``/``Dense`` only saves compute if nothing
produces it any more. Think of the channel axis of each tensor as a *space*:

- per-channel layers (activations, pooling, dropout, padding, BatchNormalization on
  the last axis, DepthwiseConv2D with ``depth_multiplier=1``) keep their input's space;
- element-wise merges (``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``,
  ``Minimum``) join all their inputs and their output into one space;
- a channel-axis ``Concatenate`` makes a space that is the concatenation of its
  inputs' spaces;
- a ``Conv2D``/``Dense`` reads a space (a *consumer*) and makes a new one (a *producer*).

A space with consumers that holds no model input, reaches no model output and
passes through no layer mixing channels (Flatten, Reshape, LayerNormalization, a
shared layer, a nested model, an unknown layer, ...) is a :class:`PruneUnit`:
dropping unit channel ``i`` removes an output channel of every producer, a
per-channel weight of every channelwise layer and an input channel of every
consumer, so shapes always match. :func:`prune_units` finds the units (and why the
other layers have none); :func:`apply_pruning` builds the smaller model. With
``allow_custom_downsample_ops`` a layer whose inputs are pinned gets a *gather*
unit: a :class:`~tfcompress.layers.ChannelGather` in front of it picks the kept
channels.

:func:`prune_input_channels` prunes layers by name when nothing else reads their
input channels; :func:`find_chain` and :func:`prunable_layers` describe the simplest
case, a *private chain* (one producer, per-channel layers, one consumer).

The graph is read from ``model.get_config()`` (each layer's ``inbound_nodes``) and
the new model is built with ``keras.models.clone_model`` from modified layer
configs, then given sliced copies of the weights.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import keras
import numpy as np

from ..graph import check_graph_model, is_graph_model, resolve_layers, walk_layers
from ..rewrite import _named_inputs

__all__ = [
    "ChannelSlot",
    "PruneUnit",
    "prune_units",
    "apply_pruning",
    "KeptChannels",
    "kept_channels",
    "PruneResult",
    "ChannelChain",
    "find_chain",
    "prunable_layers",
    "prune_input_channels",
]

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

#: why a layer type blocks a private chain (the generic reason covers the rest)
_BLOCKERS = {
    "Add": "it is summed with other branches by an Add (a dependency group: see prune_units)",
    "Subtract": "it meets other branches in a Subtract (a dependency group: see prune_units)",
    "Multiply": "it meets other branches in a Multiply (a dependency group: see prune_units)",
    "Average": "it meets other branches in an Average (a dependency group: see prune_units)",
    "Maximum": "it meets other branches in a Maximum (a dependency group: see prune_units)",
    "Minimum": "it meets other branches in a Minimum (a dependency group: see prune_units)",
    "Concatenate": "it is built by a Concatenate (channels from several producers: see prune_units)",
    "DepthwiseConv2D": "they come from a DepthwiseConv2D (a dependency group: see prune_units)",
    "SeparableConv2D": "they come from a SeparableConv2D (not winnowed yet)",
    "Flatten": "a Flatten mixes spatial positions into the feature axis",
    "Reshape": "a Reshape changes what the last axis means",
    "LayerNormalization": "a LayerNormalization normalises across channels",
    "Softmax": "a Softmax mixes channels",
}


@dataclass(frozen=True)
class ChannelChain:
    """The private path of a layer's input channels: ``producer`` -> ``through`` (in order) -> ``layer``."""

    layer: str
    producer: str
    through: tuple[str, ...] = ()


@dataclass
class PruneResult:
    """What :func:`prune_input_channels` did.

    ``model`` is the new model; ``pruned`` maps each pruned layer to its kept input
    channels and ``chains`` to the layers winnowed for it; ``skipped`` maps each
    layer left as it was to the reason.
    """

    model: keras.Model
    skipped: dict[str, str] = field(default_factory=dict)
    pruned: dict[str, np.ndarray] = field(default_factory=dict)
    chains: dict[str, ChannelChain] = field(default_factory=dict)


# ---------------------------------------------------------------- the graph, from the public config


@dataclass
class _Graph:
    layers: dict[str, Any]
    producers: dict[str, list[str]]  # one entry per input tensor (repeats kept)
    consumers: dict[str, list[str]]  # one entry per use (repeats kept)
    calls: dict[str, int]
    outputs: set[str]


def _histories(obj: Any) -> Iterator[str]:
    """Names of the layers whose tensors appear in one serialised call (args/kwargs, nested)."""
    for name, _, _ in _refs(obj):
        yield name


def _operations(model: keras.Model) -> dict[str, Any]:
    """Every node's operation by name: the layers, and in a Functional model also the Keras operations that are not
    layers (``x + 3.0``, ``x[:, 0]``, ``keras.ops.reshape``, ...), which ``model.layers`` leaves out."""
    if isinstance(model, keras.Sequential):
        return {layer.name: layer for layer in model.layers}
    return {op.name: op for op in getattr(model, "operations", model.layers)}


def _graph(model: keras.Model) -> _Graph:
    layers = _operations(model)
    producers: dict[str, list[str]] = {name: [] for name in layers}
    calls = dict.fromkeys(layers, 1)
    if isinstance(model, keras.Sequential):
        names = [layer.name for layer in model.layers]
        layers["__input__"] = None
        producers["__input__"] = []
        for prev, name in zip(["__input__", *names], names, strict=False):
            producers[name] = [prev]
        outputs = {names[-1]} if names else set()
    else:
        config = model.get_config()
        for entry in config.get("layers", []):
            nodes = entry.get("inbound_nodes", [])
            calls[entry["name"]] = max(len(nodes), 1)
            producers[entry["name"]] = [name for node in nodes for name in _histories(node)]
        outputs = {name for name in _histories(_as_history_list(config.get("output_layers", [])))}
    consumers: dict[str, list[str]] = {name: [] for name in layers}
    for name, inbound in producers.items():
        for src in inbound:
            consumers.setdefault(src, []).append(name)
    return _Graph(layers, producers, consumers, calls, outputs)


def _as_history_list(output_layers: Any) -> Any:
    """``output_layers`` (``[name, node, index]`` triples, possibly nested) as fake serialised tensors."""
    if isinstance(output_layers, list) and len(output_layers) == 3 and isinstance(output_layers[0], str):
        return {"class_name": "__keras_tensor__", "config": {"keras_history": output_layers}}
    if isinstance(output_layers, dict):
        return [_as_history_list(v) for v in output_layers.values()]
    if isinstance(output_layers, list | tuple):
        return [_as_history_list(v) for v in output_layers]
    return []


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


def _pass_through_problem(layer: Any) -> str | None:
    """Why channels cannot flow unchanged through ``layer`` (None when they can)."""
    kind = type(layer).__name__
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"'{layer.name}' is channels_first"
    if kind == "BatchNormalization":
        rank = len(layer.input.shape)
        axes = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
        return (
            None
            if [a % rank for a in axes] == [rank - 1]
            else f"BatchNormalization '{layer.name}' is not on the channel axis"
        )
    if kind == "Activation":
        name = _activation_name(layer)
        return None if name in ELEMENTWISE_ACTIVATIONS else f"Activation '{layer.name}' ({name!r}) is not element-wise"
    if kind in _PASS_THROUGH:
        return None
    reason = _BLOCKERS.get(kind)
    if reason:
        return reason
    return f"they pass through '{layer.name}' ({kind}), which is not a known channel-preserving layer"


def _chain(graph: _Graph, name: str, channels: int) -> ChannelChain | str:
    """The private chain feeding ``name``, or the reason there is none."""
    if graph.calls.get(name, 1) != 1:
        return f"the layer is shared (called {graph.calls[name]} times)"
    inbound = graph.producers.get(name, [])
    if len(inbound) != 1:
        return f"the layer has {len(inbound)} inputs"
    through: list[str] = []
    current = inbound[0]
    while True:
        layer = graph.layers.get(current)
        if layer is None or isinstance(layer, keras.layers.InputLayer):
            where = "" if layer is None else f" '{current}'"
            return f"its input channels come straight from the model input{where}"
        if current in graph.outputs:
            return f"the output of '{current}' is also a model output"
        users = graph.consumers.get(current, [])
        if len(users) != 1:
            others = sorted(set(users) - {through[-1] if through else name})
            return f"the output of '{current}' also feeds {others} (fan-out: a dependency group, see prune_units)"
        if graph.calls.get(current, 1) != 1:
            return f"'{current}' is a shared layer"
        if _is_target_type(layer):
            problem = _producer_problem(layer)
            if problem:
                return f"producer '{current}': {problem}"
            produced = int(layer.filters if isinstance(layer, keras.layers.Conv2D) else layer.units)
            if produced != channels:
                return f"producer '{current}' makes {produced} channels, the layer takes {channels}"
            return ChannelChain(name, current, tuple(reversed(through)))
        if type(layer).__name__ in ("Conv2D", "Dense"):
            return f"its channels come from '{current}', a grouped or channels_first {type(layer).__name__}"
        problem = _pass_through_problem(layer)
        if problem:
            return f"its channels cannot be winnowed: {problem}"
        up = graph.producers.get(current, [])
        if len(up) != 1:
            return f"'{current}' has {len(up)} inputs"
        through.append(current)
        current = up[0]


def _in_channels(layer: Any) -> int:
    """Input channels of a Conv2D/Dense or of a decomposed layer (its first factor's axis -2)."""
    if _is_decomposed(layer):
        return int(layer.weights[0].shape[-2])
    return int(layer.kernel.shape[-2])


def _check_target(model: keras.Model, key: Any) -> tuple[str, Any] | str:
    """(top-level name, layer) of a plan entry, or the reason it is not a top-level layer."""
    refs = walk_layers(model)
    ref = resolve_layers(refs, [key], what="prune_input_channels")[key]
    if "/" in ref.path:
        return ref.path, "layers inside nested models are not pruned yet"
    if not isinstance(ref.layer, keras.layers.Conv2D | keras.layers.Dense):
        raise ValueError(
            f"prune_input_channels: layer '{ref.path}' is a {type(ref.layer).__name__}; only Conv2D and Dense input "
            "channels can be pruned."
        )
    return ref.path, ref.layer


def find_chain(model: keras.Model, name: str) -> ChannelChain | str:
    """The private chain that feeds the input channels of layer ``name``, or why there is none.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="a"),
        ...                       keras.layers.ReLU(name="r"), keras.layers.Conv2D(2, 3, name="b")])
        >>> find_chain(m, "b")
        ChannelChain(layer='b', producer='a', through=('r',))
        >>> find_chain(m, "a")
        'its input channels come straight from the model input'
    """
    check_graph_model(model)
    path, layer = _check_target(model, name)
    if isinstance(layer, str):
        return layer
    if not _is_target_type(layer):
        return f"'{path}' is a grouped or channels_first Conv2D, or a subclass"
    return _chain(_graph(model), path, _in_channels(layer))


def prunable_layers(model: keras.Model) -> dict[str, ChannelChain | str]:
    """For every top-level Conv2D/Dense layer: its private :class:`ChannelChain`, or why it cannot be pruned.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="a"),
        ...                       keras.layers.Conv2D(2, 3, name="b")])
        >>> {k: isinstance(v, ChannelChain) for k, v in prunable_layers(m).items()}
        {'a': False, 'b': True}
    """
    check_graph_model(model)
    graph = _graph(model)
    out: dict[str, ChannelChain | str] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            if not _is_target_type(layer):
                out[layer.name] = f"'{layer.name}' is a grouped or channels_first Conv2D, or a subclass"
            else:
                out[layer.name] = _chain(graph, layer.name, _in_channels(layer))
    return out


# ---------------------------------------------------------------- dependency groups (pruning units)


@dataclass(frozen=True, eq=False)
class ChannelSlot:
    """Where the channels of a :class:`PruneUnit` sit in one layer.

    Unit channel ``i`` is channel ``index[i]`` of the layer's channel axis: the kernel's
    input axis (-2) for a consumer; the filters/units (kernel axis -1 and bias) for a
    producer; the per-channel weights for a channelwise layer (BatchNormalization
    gamma/beta/mean/variance, DepthwiseConv2D depthwise kernel axis -2 and bias).
    """

    layer: str
    index: np.ndarray

    def __repr__(self) -> str:
        n = len(self.index)
        start = int(self.index[0]) if n else 0
        if n and np.array_equal(self.index, np.arange(start, start + n)):
            return f"ChannelSlot({self.layer!r}, {start}:{start + n})"
        return f"ChannelSlot({self.layer!r}, {self.index.tolist()})"


@dataclass(frozen=True, eq=False)
class PruneUnit:
    """A set of channels that must be pruned together, and every layer that shrinks with them.

    ``name`` is the name of the unit's first consumer in forward order, or, when that
    layer is the first consumer of several units (it reads a concat),
    ``"layer[start:stop]"`` with the unit's slice of its input channels; to find the
    layer use ``consumers[0].layer``, never parse the name. Producers are
    the Conv2D/Dense layers that make the channels (they lose output channels),
    ``channelwise`` the layers on the way with per-channel weights (BatchNormalization,
    DepthwiseConv2D), ``consumers`` the Conv2D/Dense layers that read the channels (they
    lose input channels). A ``gather`` unit has one consumer and no producers: the
    upstream is left alone and a :class:`~tfcompress.layers.ChannelGather` picks the kept
    channels in front of the consumer.
    """

    name: str
    channels: int
    consumers: tuple[ChannelSlot, ...]
    producers: tuple[ChannelSlot, ...] = ()
    channelwise: tuple[ChannelSlot, ...] = ()
    gather: bool = False

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer the unit touches (producers, channelwise, consumers)."""
        return tuple(slot.layer for slot in (*self.producers, *self.channelwise, *self.consumers))


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


class _Spaces:
    """Union-find over channel spaces; each base space has a size and maybe a pin reason."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int | None] = []
        self.pin: list[str | None] = []

    def new(self, size: int | None, pin: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.pin.append(pin)
        return len(self.parent) - 1

    def root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def pin_space(self, i: int, reason: str) -> None:
        r = self.root(i)
        if self.pin[r] is None:
            self.pin[r] = reason

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        if self.size[ra] is None:
            self.size[ra] = self.size[rb]
        self.pin[ra] = self.pin[ra] or self.pin[rb]


@dataclass
class _Analysis:
    spaces: _Spaces
    order: dict[str, int]  # layer -> forward position
    consumers: dict[str, list[int]]  # Conv2D/Dense -> base spaces of its input, in channel order
    channelwise: dict[str, list[int]]  # BN/depthwise -> base spaces of its channels
    producers: dict[str, int]  # Conv2D/Dense -> base space of its output
    in_channels: dict[str, int]
    reasons: dict[str, str]  # Conv2D/Dense that can never be pruned (shared, grouped, ...)


def _refs(obj: Any) -> Iterator[tuple[str, int, int]]:
    """``(layer, node_index, tensor_index)`` of each tensor in one serialised call, in order."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            history = obj.get("config", {}).get("keras_history")
            if history is not None:
                yield str(history[0]), int(history[1]), int(history[2])
            return
        for value in obj.values():
            yield from _refs(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _refs(value)


def _output_refs(output_layers: Any) -> Iterator[tuple[str, int, int]]:
    if isinstance(output_layers, list | tuple) and len(output_layers) == 3 and isinstance(output_layers[0], str):
        yield str(output_layers[0]), int(output_layers[1]), int(output_layers[2])
    elif isinstance(output_layers, dict):
        for value in output_layers.values():
            yield from _output_refs(value)
    elif isinstance(output_layers, list | tuple):
        for value in output_layers:
            yield from _output_refs(value)


# layer, node index, input refs, extra tensors in kwargs, a constant argument that is not a scalar
_Node = tuple[str, int, list[tuple[str, int, int]], bool, bool]


def _wide_constant(obj: Any) -> bool:
    """True when a serialised call holds a constant argument with more than one value (``x * np.ones(C)``): such
    a constant is tied to the channel count, so an operation using it cannot lose channels."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return False
        if obj.get("class_name") == "__numpy__":
            return np.size(obj.get("config", {}).get("value", 0)) > 1
        return any(_wide_constant(value) for value in obj.values())
    if isinstance(obj, list | tuple):
        return any(_wide_constant(value) for value in obj)
    return False


def _nodes(model: keras.Model) -> tuple[list[_Node], dict[str, int], list[tuple[str, int, int]], dict[str, Any]]:
    """All layer calls in forward order, the number of calls per layer, the model output refs, layers by name."""
    layers = _operations(model)
    if isinstance(model, keras.Sequential):
        names = [layer.name for layer in model.layers]
        nodes: list[_Node] = [("__input__", 0, [], False, False)]
        prev = ("__input__", 0, 0)
        for name in names:
            nodes.append((name, 0, [prev], False, False))
            prev = (name, 0, 0)
        layers["__input__"] = None
        return nodes, dict.fromkeys(layers, 1), [prev], layers
    config = model.get_config()
    found: list[_Node] = []
    calls: dict[str, int] = {}
    for entry in config.get("layers", []):
        name = entry["name"]
        inbound = entry.get("inbound_nodes", [])
        calls[name] = len(inbound)
        if not inbound:
            found.append((name, 0, [], False, False))
        for k, node in enumerate(inbound):
            args = list(_refs(node.get("args", node) if isinstance(node, dict) else node))
            extra = isinstance(node, dict) and bool(list(_refs(node.get("kwargs", {}))))
            found.append((name, k, args, extra, _wide_constant(node)))
    # topological order of the calls (ties: config order)
    position = {(n[0], n[1]): i for i, n in enumerate(found)}
    waiting = {i: {(r[0], r[1]) for r in n[2] if (r[0], r[1]) in position} for i, n in enumerate(found)}
    users: dict[tuple[str, int], list[int]] = {}
    for i, deps in waiting.items():
        for dep in deps:
            users.setdefault(dep, []).append(i)
    ready = sorted(i for i, deps in waiting.items() if not deps)
    ordered: list[_Node] = []
    while ready:
        i = ready.pop(0)
        ordered.append(found[i])
        for j in users.get((found[i][0], found[i][1]), []):
            waiting[j].discard((found[i][0], found[i][1]))
            if not waiting[j]:
                ready.append(j)
                ready.sort()
    if len(ordered) != len(found):
        raise ValueError(f"model '{model.name}': its layer graph has a cycle; it cannot be pruned.")
    return ordered, calls, list(_output_refs(config.get("output_layers", []))), layers


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


def _analyse(model: keras.Model) -> _Analysis:
    nodes, calls, outputs, layers = _nodes(model)
    spaces = _Spaces()
    segs: dict[tuple[str, int, int], list[int]] = {}
    opaque: dict[str, str] = {}  # layer -> reason for spaces coming out of it
    result = _Analysis(spaces, {}, {}, {}, {}, {}, {})

    def segments(ref: tuple[str, int, int]) -> list[int]:
        if ref not in segs:  # an output of an opaque layer (or one the config does not show)
            reason = opaque.get(ref[0], f"they come out of '{ref[0]}', which is not analysed")
            segs[ref] = [spaces.new(None, reason)]
        return segs[ref]

    def pin_all(refs: list[tuple[str, int, int]], reason: str) -> None:
        for ref in refs:
            for base in segments(ref):
                spaces.pin_space(base, reason)

    for name, k, refs, extra, wide in nodes:
        layer = layers.get(name)
        result.order.setdefault(name, len(result.order))
        out = (name, k, 0)
        if layer is None or isinstance(layer, keras.layers.InputLayer):
            where = "" if layer is None else f" '{name}'"
            size = _channels(model.inputs[0]) if layer is None else _channels(layer.output)
            segs[out] = [spaces.new(size, f"its input channels come straight from the model input{where}")]
            continue
        kind, why = _kind(layer, calls.get(name, 1), len(refs))
        if wide and kind != "opaque":
            kind, why = "opaque", "which uses a constant with one value per channel"
        if kind != "opaque" and (extra or (kind not in ("merge", "concat") and len(refs) != 1)):
            kind, why = "opaque", f"which is called with {len(refs)} tensor inputs"
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense) and kind != "producer":
            result.reasons[name] = f"'{name}' ({type(layer).__name__}): {why.removeprefix('which ')}"
        if kind == "opaque":
            label = f"'{name}' ({type(layer).__name__}), {why}"
            pin_all(refs, f"they pass through {label}")
            opaque[name] = f"they come out of {label}"
            continue
        if kind == "producer":
            result.consumers[name] = list(segments(refs[0]))
            result.in_channels[name] = _in_channels(layer)
            size = _out_channels(layer)
            problem = _producer_problem(layer)
            base = spaces.new(size, None if problem is None else f"producer '{name}': {problem}")
            result.producers[name] = base
            segs[out] = [base]
        elif kind in ("channelwise", "pass"):
            segs[out] = list(segments(refs[0]))
            if kind == "channelwise":
                result.channelwise[name] = segs[out]
        elif kind == "concat":
            inputs = [segments(ref) for ref in refs]
            shapes = _input_shapes(layer)
            rank = len(shapes[0])
            if int(layer.axis) % rank != rank - 1:
                pin_all(refs, f"they are concatenated along a non-channel axis by '{name}'")
                opaque[name] = f"they come out of '{name}', a Concatenate along a non-channel axis"
                continue
            for bases, shape in zip(inputs, shapes, strict=False):
                if len(bases) == 1 and spaces.size[spaces.root(bases[0])] is None and shape[-1] is not None:
                    spaces.size[spaces.root(bases[0])] = int(shape[-1])
            segs[out] = [base for bases in inputs for base in bases]
        else:  # element-wise merge
            inputs = [segments(ref) for ref in refs]
            widths = {shape[-1] for shape in _input_shapes(layer)}
            if any(len(bases) != 1 for bases in inputs) or len(widths) != 1 or None in widths:
                reason = f"'{name}' ({type(layer).__name__}) merges concatenated channels or broadcasts over channels"
                pin_all(refs, f"they meet in {reason}")
                opaque[name] = f"they come out of {reason}"
                continue
            for bases in inputs[1:]:
                spaces.union(inputs[0][0], bases[0])
            segs[out] = [inputs[0][0]]
    for ref in outputs:
        label = ref[0] if ref[0] != "__input__" else "the model input"
        for base in segments(ref):
            spaces.pin_space(base, f"the channels also reach a model output ('{label}')")
    # a layer that sees the same unit twice (e.g. concatenating a tensor with itself) cannot be sliced
    for name, bases in (*result.consumers.items(), *result.channelwise.items()):
        roots = [spaces.root(b) for b in bases]
        for r in {r for r in roots if roots.count(r) > 1}:
            spaces.pin_space(r, f"the same channels appear twice in the input of '{name}'")
    # sizes must agree inside a space (they do in a valid model; be safe)
    for base, root in ((b, spaces.root(b)) for b in range(len(spaces.parent))):
        if spaces.size[base] is not None and spaces.size[root] not in (None, spaces.size[base]):
            spaces.pin_space(root, "the channel counts of the tensors in the group differ")
    return result


def _offsets(spaces: _Spaces, bases: list[int]) -> list[tuple[int, int, int]] | None:
    """(root, offset, size) of each base in a channel axis; None when a size is unknown."""
    out, offset = [], 0
    for base in bases:
        size = spaces.size[spaces.root(base)]
        if size is None:
            size = spaces.size[base]
        if size is None:
            return None
        out.append((spaces.root(base), offset, int(size)))
        offset += int(size)
    return out


def prune_units(
    model: keras.Model, *, allow_custom_downsample_ops: bool = False
) -> tuple[list[PruneUnit], dict[str, str]]:
    """The pruning units of a built Sequential/Functional model, in forward order, and why the other layers have none.

    Channels are followed through per-channel layers (activations, pooling, dropout,
    padding, BatchNormalization, DepthwiseConv2D with ``depth_multiplier=1``, ...),
    element-wise merges (``Add``, ``Multiply``, ... join their inputs into one group, so
    a ResNet stage is one unit) and channel-axis ``Concatenate`` (a layer reading a
    concat is a consumer of each part's unit, at that part's offset). A group is
    *pinned* — it has no unit — when it holds a model input, reaches a model output,
    or passes through a layer that does not keep channels apart (Flatten, Reshape,
    LayerNormalization, a shared layer, a nested model, an unknown layer, ...).

    Args:
        model: a built Sequential or Functional model (not modified).
        allow_custom_downsample_ops: also give every Conv2D/Dense whose input channels
            are all pinned (and number more than one) its own ``gather`` unit: pruning it
            inserts a :class:`~tfcompress.layers.ChannelGather` in front of the layer.

    Returns:
        ``(units, reasons)``: the units, ordered by their first consumer, and
        ``{layer: reason}`` for every top-level Conv2D/Dense none of whose input
        channels can be pruned (a layer reading a concat of a pinned part and a
        prunable part is in a unit, not in ``reasons``; gather units remove their layer
        from ``reasons``).

    Example:
        >>> import keras
        >>> inp = keras.Input((8, 8, 3), name="img")
        >>> a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inp)
        >>> b = keras.layers.Conv2D(4, 1, name="b")(a)
        >>> s = keras.layers.Add(name="add")([a, b])
        >>> out = keras.layers.Conv2D(2, 1, name="c")(s)
        >>> units, reasons = prune_units(keras.Model(inp, out))
        >>> [(u.name, u.channels, [s.layer for s in u.producers], [s.layer for s in u.consumers]) for u in units]
        [('b', 4, ['a', 'b'], ['b', 'c'])]
        >>> reasons
        {'a': "its input channels come straight from the model input 'img'"}
    """
    check_graph_model(model)
    a = _analyse(model)
    spaces = a.spaces
    members: dict[int, dict[str, list]] = {}
    placed: dict[str, list[tuple[int, int, int]] | None] = {}
    for role, table in (("consumers", a.consumers), ("channelwise", a.channelwise)):
        for name, bases in table.items():
            placed[name] = parts = _offsets(spaces, bases)
            if parts is None:
                for base in bases:
                    spaces.pin_space(base, f"the channel count of a part of the input of '{name}' is unknown")
                continue
            for root, offset, size in parts:
                members.setdefault(root, {"consumers": [], "channelwise": [], "producers": []})[role].append(
                    ChannelSlot(name, np.arange(offset, offset + size, dtype=np.int64))
                )
    for name, base in a.producers.items():
        root = spaces.root(base)
        size = int(spaces.size[root] or 0)
        if root in members:
            members[root]["producers"].append(ChannelSlot(name, np.arange(size, dtype=np.int64)))
    units: list[PruneUnit] = []
    covered: set[str] = set()
    for root, roles in members.items():
        if spaces.pin[root] is not None or not roles["consumers"]:
            continue

        def by_order(slot: ChannelSlot) -> int:
            return a.order[slot.layer]

        consumers = tuple(sorted(roles["consumers"], key=by_order))
        covered.update(slot.layer for slot in consumers)
        units.append(
            PruneUnit(
                consumers[0].layer,
                int(spaces.size[root] or 0),
                consumers,
                tuple(sorted(roles["producers"], key=by_order)),
                tuple(sorted(roles["channelwise"], key=by_order)),
            )
        )
    reasons = dict(a.reasons)
    for name, bases in a.consumers.items():
        if name in covered or name in reasons:
            continue
        roots = [spaces.root(b) for b in bases]
        pins = [spaces.pin[r] for r in roots if spaces.pin[r]]
        reasons[name] = pins[0] if pins else "its input channels reach no prunable group"
        n = a.in_channels[name]
        if allow_custom_downsample_ops and n > 1:
            units.append(PruneUnit(name, n, (ChannelSlot(name, np.arange(n, dtype=np.int64)),), gather=True))
            del reasons[name]
    units.sort(key=lambda u: (a.order[u.consumers[0].layer], int(u.consumers[0].index[0])))
    # a layer reading a concat is the first consumer of several units: name those by their slice of its input
    firsts = [u.consumers[0].layer for u in units]
    units = [
        u
        if firsts.count(u.name) == 1
        else replace(u, name=f"{u.name}[{int(u.consumers[0].index[0])}:{int(u.consumers[0].index[-1]) + 1}]")
        for u in units
    ]
    ordered = {layer.name: None for layer in model.layers}
    return units, {name: reasons[name] for name in ordered if name in reasons}


# ---------------------------------------------------------------- rebuilding


def _kept_unit(value: Any, unit: PruneUnit, what: str) -> np.ndarray:
    try:
        kept = np.asarray(value)
    except (TypeError, ValueError):
        kept = np.asarray([object()])
    if kept.dtype == bool and kept.shape == (unit.channels,):
        kept = np.flatnonzero(kept)
    if kept.ndim != 1 or kept.size == 0 or not np.issubdtype(kept.dtype, np.integer):
        raise ValueError(
            f"{what}: unit '{unit.name}': give the kept unit channels as a non-empty list of ints in "
            f"0..{unit.channels - 1} (at least one), got {value!r}."
        )
    if kept.min() < 0 or kept.max() >= unit.channels or len(np.unique(kept)) != kept.size:
        raise ValueError(
            f"{what}: unit '{unit.name}': kept channels must be distinct indices in 0..{unit.channels - 1}, "
            f"got {value!r}."
        )
    return np.sort(kept).astype(np.int64)


def _channelwise_count(layer: Any) -> int:
    if type(layer) is keras.layers.DepthwiseConv2D:
        return int(layer.kernel.shape[-2])
    return int(layer.get_weights()[0].shape[-1])


def _complement(total: int, removed: set[int]) -> np.ndarray | None:
    if not removed:
        return None
    return np.asarray([i for i in range(total) if i not in removed], dtype=np.int64)


def _slice_weights(
    layer: Any,
    weights: list[np.ndarray],
    keep_in: np.ndarray | None,
    keep_out: np.ndarray | None,
    keep_cw: np.ndarray | None,
) -> list[np.ndarray]:
    if _is_target_type(layer) or (
        isinstance(layer, keras.layers.Conv2D | keras.layers.Dense) and type(layer) is not keras.layers.DepthwiseConv2D
    ):
        return _sliced(layer, weights, keep_in, keep_out)
    if keep_cw is None:
        return weights
    if type(layer) is keras.layers.DepthwiseConv2D:
        kernel, *rest = weights
        return [np.take(kernel, keep_cw, axis=-2), *(np.take(w, keep_cw, axis=-1) for w in rest)]
    return [np.take(w, keep_cw, axis=-1) for w in weights]


def _compile_like(model: keras.Model, new_model: keras.Model, what: str) -> None:
    if getattr(model, "compiled", False):
        try:
            new_model.compile_from_config(model.get_compile_config())
        except Exception as err:  # a custom loss/metric that cannot be re-created from config
            warnings.warn(f"{what}: could not compile the new model like the original ({err}).", stacklevel=3)


def _rebuild(model: keras.Model, keep_out: Mapping[str, np.ndarray], gathers: Mapping[str, np.ndarray]) -> keras.Model:
    """A re-created ``model`` (fresh weights) with producers narrowed and ChannelGather layers inserted."""
    from ..layers import ChannelGather

    def clone_function(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name in keep_out:
            config["filters" if "filters" in config else "units"] = len(keep_out[layer.name])
        return layer.__class__.from_config(config)

    def gather_layer(name: str) -> Any:
        return ChannelGather([int(i) for i in gathers[name]], name=f"{name}_gather")

    if isinstance(model, keras.Sequential):
        first = model.get_config()["layers"][0]
        new_layers: list[Any] = []
        if first.get("class_name") == "InputLayer":
            cfg = first["config"]
            new_layers.append(
                keras.Input(batch_shape=tuple(cfg["batch_shape"]), dtype=cfg.get("dtype"), name=cfg["name"])
            )
        for layer in model.layers:
            if layer.name in gathers:
                new_layers.append(gather_layer(layer.name))
            new_layers.append(clone_function(layer))
        return keras.Sequential(new_layers, name=model.name, trainable=model.trainable)

    def call_function(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer.name in gathers:
            return layer(gather_layer(layer.name)(args[0]), *args[1:], **kwargs)
        return layer(*args, **kwargs)

    inputs = _named_inputs(model)
    extra = {"call_function": call_function} if gathers else {}
    try:
        return keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_function, **extra)
    except (TypeError, ValueError):
        if inputs is None:
            raise
        return keras.models.clone_model(model, clone_function=clone_function, **extra)


def _plan(
    model: keras.Model, kept: Mapping[str, Any], units: Sequence[PruneUnit] | None, what: str
) -> tuple[
    Sequence[PruneUnit], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]
]:
    """(units, kept inputs, kept outputs, kept channelwise channels, gather indices) per changed layer."""
    check_graph_model(model)
    if not isinstance(kept, Mapping):
        raise TypeError(f"{what}: kept must be a dict {{unit name: kept channels}}, got {type(kept).__name__}.")
    if units is None:
        units, _ = prune_units(model, allow_custom_downsample_ops=True)
    by_name = {unit.name: unit for unit in units}
    unknown = [name for name in kept if name not in by_name]
    if unknown:
        hints = [
            f"'{name}'"
            + (
                f" (did you mean {close}?)"
                if (close := difflib.get_close_matches(str(name), list(by_name), n=3))
                else ""
            )
            for name in unknown
        ]
        raise ValueError(
            f"{what}: unknown pruning unit(s) {', '.join(hints)}; unit names come from prune_units(model) "
            f"(known: {sorted(by_name)[:10]}{' ...' if len(by_name) > 10 else ''})."
        )
    removed_in: dict[str, set[int]] = {}
    removed_out: dict[str, set[int]] = {}
    removed_cw: dict[str, set[int]] = {}
    gathers: dict[str, np.ndarray] = {}
    for name, value in kept.items():
        unit = by_name[name]
        keep = _kept_unit(value, unit, what)
        drop = np.setdiff1d(np.arange(unit.channels), keep)
        if unit.gather:
            gathers[unit.consumers[0].layer] = unit.consumers[0].index[keep]
        for slots, table in (
            (unit.consumers, removed_in),
            (unit.producers, removed_out),
            (unit.channelwise, removed_cw),
        ):
            for slot in slots:
                table.setdefault(slot.layer, set()).update(int(i) for i in slot.index[drop])
    existing = {layer.name for layer in model.layers}
    for name in gathers:
        if f"{name}_gather" in existing:
            raise ValueError(
                f"{what}: unit '{name}' needs a ChannelGather layer named '{name}_gather', but the model already "
                "has a layer of that name; rename it first."
            )
    layers = {layer.name: layer for layer in model.layers}
    missing = sorted((set(removed_in) | set(removed_out) | set(removed_cw)) - set(layers))
    if missing:
        raise ValueError(
            f"{what}: the units name layers {missing} that are not in model '{model.name}'; "
            "pass units computed by prune_units(model) for this model."
        )
    keep_in = {n: _complement(_in_channels(layers[n]), r) for n, r in removed_in.items()}
    keep_out = {n: _complement(_out_channels(layers[n]), r) for n, r in removed_out.items()}
    keep_cw = {n: _complement(_channelwise_count(layers[n]), r) for n, r in removed_cw.items()}
    keep_in = {n: v for n, v in keep_in.items() if v is not None}
    keep_out = {n: v for n, v in keep_out.items() if v is not None}
    keep_cw = {n: v for n, v in keep_cw.items() if v is not None}
    return units, keep_in, keep_out, keep_cw, gathers


@dataclass(frozen=True, eq=False)
class KeptChannels:
    """The channels one layer keeps after :func:`apply_pruning` (``None``: all of them).

    ``inputs``: kernel input channels (consumers); ``outputs``: filters/units
    (producers); ``channels``: per-channel weights (BatchNormalization, DepthwiseConv2D).
    """

    inputs: np.ndarray | None = None
    outputs: np.ndarray | None = None
    channels: np.ndarray | None = None


def kept_channels(
    model: keras.Model, kept: Mapping[str, Sequence[int] | np.ndarray], *, units: Sequence[PruneUnit] | None = None
) -> dict[str, KeptChannels]:
    """What :func:`apply_pruning` with the same arguments keeps of each layer it changes.

    Use it to shape replacement weights: a consumer's ``inputs`` are its kept input
    channels (the complement of the removals of all its units), and its ``outputs``
    the kept output channels when it is also a producer of a pruned unit.

    Example:
        >>> import keras
        >>> inp = keras.Input((6, 6, 2))
        >>> a = keras.layers.Conv2D(3, 1, name="a")(inp)
        >>> b = keras.layers.Conv2D(2, 1, name="b")(inp)
        >>> out = keras.layers.Conv2D(1, 1, name="c")(keras.layers.Concatenate()([a, b]))
        >>> m = keras.Model(inp, out)
        >>> [u.name for u in prune_units(m)[0]]
        ['c[0:3]', 'c[3:5]']
        >>> kept_channels(m, {"c[0:3]": [1], "c[3:5]": [0]})["c"].inputs
        array([1, 3])
    """
    units, keep_in, keep_out, keep_cw, _ = _plan(model, kept, units, "kept_channels")
    names = [layer.name for layer in model.layers if layer.name in {*keep_in, *keep_out, *keep_cw}]
    return {n: KeptChannels(keep_in.get(n), keep_out.get(n), keep_cw.get(n)) for n in names}


def apply_pruning(
    model: keras.Model,
    kept: Mapping[str, Sequence[int] | np.ndarray],
    *,
    units: Sequence[PruneUnit] | None = None,
    weights: Mapping[str, list[np.ndarray]] | None = None,
) -> keras.Model:
    """A NEW model in which each pruning unit keeps only the given channels (the argument is not modified).

    Producers lose the other output channels, channelwise layers the matching
    per-channel weights and consumers the matching input channels; a consumer in
    several units (e.g. reading a concat) keeps the complement of all removals. For a
    ``gather`` unit a ``ChannelGather`` named ``f"{consumer}_gather"`` is inserted in
    front of the consumer and the upstream is unchanged. Units not named keep all
    their channels. Layer and input names stay the same; a compiled model comes back
    compiled the same way.

    Args:
        model: a built Sequential or Functional model.
        kept: ``{unit name: kept unit channels}`` (distinct ints in ``0..channels-1``,
            at least one; or a boolean mask of length ``channels``).
        units: the units from :func:`prune_units` (default: computed here, with
            gather units allowed).
        weights: optional ``{consumer name: [kernel, bias] or [kernel]}`` replacing a
            consumer's weights, already shaped for its kept inputs (and its kept
            outputs when it is also a producer of a pruned unit), e.g. least-squares
            reconstructed kernels. With ``[kernel]`` only, the (sliced) bias is kept.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3, name="a"),
        ...                       keras.layers.BatchNormalization(name="bn"), keras.layers.Conv2D(2, 3, name="b")])
        >>> units, _ = prune_units(m)
        >>> [(u.name, u.channels) for u in units]
        [('b', 6)]
        >>> new = apply_pruning(m, {"b": [0, 2, 5]}, units=units)
        >>> [tuple(w.shape) for w in new.get_layer("b").get_weights()], new.get_layer("bn").get_weights()[0].shape
        ([(3, 3, 3, 2), (2,)], (3,))
    """
    units, keep_in, keep_out, keep_cw, gathers = _plan(model, kept, units, "apply_pruning")
    new_weights: dict[str, list[np.ndarray]] = {}
    for layer in model.layers:
        original = layer.get_weights()
        if original:
            new_weights[layer.name] = _slice_weights(
                layer, original, keep_in.get(layer.name), keep_out.get(layer.name), keep_cw.get(layer.name)
            )
    consumers = {slot.layer for unit in units for slot in unit.consumers}
    for name, given in (weights or {}).items():
        if name not in consumers:
            raise ValueError(
                f"apply_pruning: replacement weights given for '{name}', which is not a consumer of any pruning unit; "
                "only consumers' weights can be replaced."
            )
        expected = new_weights[name]
        given = [np.asarray(w) for w in given]
        if len(given) == 1 and len(expected) == 2:
            given = [given[0], expected[1]]
        shapes = [tuple(w.shape) for w in given]
        want = [tuple(w.shape) for w in expected]
        if shapes != want:
            raise ValueError(
                f"apply_pruning: replacement weights for '{name}' have shapes {shapes}; after pruning the layer needs "
                f"{want} ([kernel, bias] or [kernel])."
            )
        new_weights[name] = given
    new_model = _rebuild(model, keep_out, gathers)
    for name, values in new_weights.items():
        new_model.get_layer(name).set_weights(values)
    _compile_like(model, new_model, "apply_pruning")
    return new_model


def _kept_indices(value: Any, channels: int, name: str) -> np.ndarray:
    try:
        kept = np.asarray(value)
    except (TypeError, ValueError):
        kept = np.asarray([])
    if kept.dtype == bool and kept.shape == (channels,):
        kept = np.flatnonzero(kept)
    if kept.ndim != 1 or kept.size == 0 or not np.issubdtype(kept.dtype, np.integer):
        raise ValueError(
            f"prune_input_channels: layer '{name}': give the kept input channels as a non-empty list of ints "
            f"(or a boolean mask of length {channels}), got {value!r}."
        )
    if kept.min() < 0 or kept.max() >= channels or len(np.unique(kept)) != kept.size:
        raise ValueError(
            f"prune_input_channels: layer '{name}': kept channels must be distinct indices in 0..{channels - 1}, "
            f"got {value!r}."
        )
    return np.sort(kept).astype(np.int64)


def _sliced(layer: Any, weights: list[np.ndarray], keep_in: np.ndarray | None, keep_out: np.ndarray | None) -> list:
    """``layer``'s weights with input channels ``keep_in`` and output channels ``keep_out`` only.

    Conv2D/Dense: the kernel's axes -2 and -1 and the bias. A decomposed layer: its first factor's input axis
    and its last factor's output axis (and the bias); the factors in between are untouched.
    """
    if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense) or _is_decomposed(layer):
        out = list(weights)
        kernels = _kernels(out, layer)
        if keep_in is not None:
            out[0] = np.take(out[0], keep_in, axis=-2)
        if keep_out is not None:
            out[kernels - 1] = np.take(out[kernels - 1], keep_out, axis=-1)
            out[kernels:] = [np.take(w, keep_out, axis=-1) for w in out[kernels:]]
        return out
    if keep_out is None:
        return weights
    # BatchNormalization: gamma, beta, moving mean, moving variance are all per channel
    return [np.take(w, keep_out, axis=-1) for w in weights]


def prune_input_channels(model: keras.Model, kept: Mapping[Any, Sequence[int] | np.ndarray]) -> PruneResult:
    """A new model in which each named Conv2D/Dense layer keeps only the given input channels.

    A layer can be pruned this way when its input channels belong to pruning units
    (see :func:`prune_units`) that no other layer reads: a private chain, but also a
    residual group (producers joined by an ``Add``) or the parts of a ``Concatenate``.
    Their producers lose the other output channels (Conv2D filters and bias, Dense
    units), and so do the per-channel layers on the way (BatchNormalization,
    DepthwiseConv2D). Other layers are left unpruned and listed in ``result.skipped``
    with the reason (use :func:`apply_pruning` to prune a unit with several consumers).
    The argument model is not modified.

    Args:
        model: a built Sequential or Functional model.
        kept: ``{layer_name: kept input channel indices}`` (or a boolean mask).

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="a"),
        ...                       keras.layers.Conv2D(2, 3, name="b")])
        >>> result = prune_input_channels(m, {"b": [0, 3]})
        >>> [tuple(layer.kernel.shape) for layer in result.model.layers], result.skipped
        ([(3, 3, 1, 2), (3, 3, 2, 2)], {})
    """
    check_graph_model(model)
    if not isinstance(kept, Mapping):
        raise TypeError(
            f"prune_input_channels: kept must be a dict {{layer_name: indices}}, got {type(kept).__name__}."
        )
    units, reasons = prune_units(model)
    graph = _graph(model)
    of_layer: dict[str, list[PruneUnit]] = {}
    for unit in units:
        for slot in unit.consumers:
            of_layer.setdefault(slot.layer, []).append(unit)
    plan: dict[str, np.ndarray] = {}
    result = PruneResult(model)
    for key, value in kept.items():
        path, layer = _check_target(model, key)
        if isinstance(layer, str):
            result.skipped[path] = layer
            continue
        channels = _in_channels(layer)
        indices = _kept_indices(value, channels, path)
        if path in reasons:
            result.skipped[path] = reasons[path]
            continue
        mine = of_layer.get(path, [])
        others = sorted({s.layer for u in mine for s in u.consumers} - {path})
        if others:
            result.skipped[path] = (
                f"its input channels are also read by {others} (a dependency group: prune it with prune_units and "
                "apply_pruning)"
            )
            continue
        slots = [next(s for s in u.consumers if s.layer == path) for u in mine]
        if sum(len(s.index) for s in slots) != channels:
            result.skipped[path] = "part of its input channels cannot be winnowed (they come from a pinned group)"
            continue
        if path in result.pruned:
            raise ValueError(f"prune_input_channels: layer '{path}' is named twice.")
        for unit, slot in zip(mine, slots, strict=True):
            keep = np.flatnonzero(np.isin(slot.index, indices))
            if keep.size == 0:
                raise ValueError(
                    f"prune_input_channels: layer '{path}': keep at least one of its input channels "
                    f"{int(slot.index[0])}..{int(slot.index[-1])} (they come from unit '{unit.name}')."
                )
            plan[unit.name] = keep
        result.pruned[path] = indices
        chain = _chain(graph, path, channels)
        if isinstance(chain, ChannelChain):
            result.chains[path] = chain
    if plan:
        result.model = apply_pruning(model, plan, units=units)
    else:
        result.model = _rebuild(model, {}, {})
        for layer in model.layers:
            if layer.get_weights():
                result.model.get_layer(layer.name).set_weights(layer.get_weights())
        _compile_like(model, result.model, "prune_input_channels")
    return result
