"""Removing input channels of Conv2D/Dense layers, and the matching channels upstream ("winnowing").

Pruning input channel ``c`` of a layer only saves compute if nothing produces it
any more: the producing ``Conv2D``/``Dense`` loses output channel ``c`` (its filter
and bias entry), every ``BatchNormalization`` in between loses its statistics for
``c``, and the channel-preserving layers in between (activations, pooling, dropout,
padding, ...) just see fewer channels.

This module handles the simple case, a *private chain*: the channels travel from
ONE producer to the pruned layer through whitelisted per-channel layers, and no
other layer (nor a model output) sees them. Anything else — an ``Add``,
``Concatenate`` or ``Multiply`` on the way (a dependency group whose members must
drop the same channels together), fan-out, a model input, a depthwise convolution,
a shared layer, a layer inside a nested model — makes the layer *skipped*: it is
left unpruned and :class:`PruneResult` says why. Shapes never mismatch.

The graph is read from ``model.get_config()`` (each layer's ``inbound_nodes``) and
the new model is built with ``keras.models.clone_model`` from modified layer
configs, then given sliced copies of the weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from ..graph import check_graph_model, resolve_layers, walk_layers
from ..rewrite import _named_inputs

__all__ = ["PruneResult", "ChannelChain", "find_chain", "prunable_layers", "prune_input_channels"]

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

#: why a layer type blocks a private chain (the generic reason covers the rest)
_BLOCKERS = {
    "Add": "it is summed with other branches by an Add (a dependency group; not pruned yet)",
    "Subtract": "it meets other branches in a Subtract (a dependency group; not pruned yet)",
    "Multiply": "it meets other branches in a Multiply (a dependency group; not pruned yet)",
    "Average": "it meets other branches in an Average (a dependency group; not pruned yet)",
    "Maximum": "it meets other branches in a Maximum (a dependency group; not pruned yet)",
    "Minimum": "it meets other branches in a Minimum (a dependency group; not pruned yet)",
    "Concatenate": "it is built by a Concatenate (channels from several producers; not pruned yet)",
    "DepthwiseConv2D": "they come from a DepthwiseConv2D (whose own input would have to shrink too; not pruned yet)",
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
    if isinstance(obj, dict):
        history = obj.get("config", {}).get("keras_history") if obj.get("class_name") == "__keras_tensor__" else None
        if history is not None:
            yield history[0]
            return
        for value in obj.values():
            yield from _histories(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _histories(value)


def _graph(model: keras.Model) -> _Graph:
    layers = {layer.name: layer for layer in model.layers}
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


def _is_target_type(layer: Any) -> bool:
    return type(layer) is keras.layers.Dense or (
        type(layer) is keras.layers.Conv2D and int(layer.groups) == 1 and layer.data_format == "channels_last"
    )


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
            return f"the output of '{current}' also feeds {others} (fan-out: a dependency group; not pruned yet)"
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


# ---------------------------------------------------------------- rebuilding


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
    """``layer``'s weights with input channels ``keep_in`` and output channels ``keep_out`` only."""
    if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
        kernel = weights[0]
        if keep_in is not None:
            kernel = np.take(kernel, keep_in, axis=-2)
        if keep_out is not None:
            kernel = np.take(kernel, keep_out, axis=-1)
        rest = [w if keep_out is None else np.take(w, keep_out, axis=-1) for w in weights[1:]]
        return [kernel, *rest]
    if keep_out is None:
        return weights
    # BatchNormalization: gamma, beta, moving mean, moving variance are all per channel
    return [np.take(w, keep_out, axis=-1) for w in weights]


def prune_input_channels(model: keras.Model, kept: Mapping[Any, Sequence[int] | np.ndarray]) -> PruneResult:
    """A new model in which each named Conv2D/Dense layer keeps only the given input channels.

    The producer of those channels loses the other output channels (Conv2D filters
    and bias, Dense units), and so does every BatchNormalization on the way; other
    channel-preserving layers on the way just see fewer channels. Layers whose
    input channels do not come through such a private chain are left unpruned and
    listed in ``result.skipped`` with the reason. The argument model is not modified.

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
    graph = _graph(model)
    keep_in: dict[str, np.ndarray] = {}
    keep_out: dict[str, np.ndarray] = {}
    result = PruneResult(model)
    for key, value in kept.items():
        path, layer = _check_target(model, key)
        if isinstance(layer, str):
            result.skipped[path] = layer
            continue
        indices = _kept_indices(value, _in_channels(layer), path)
        if not _is_target_type(layer):
            result.skipped[path] = "grouped or channels_first Conv2D, or a subclass of Conv2D/Dense"
            continue
        chain = _chain(graph, path, _in_channels(layer))
        if isinstance(chain, str):
            result.skipped[path] = chain
            continue
        if path in keep_in:
            raise ValueError(f"prune_input_channels: layer '{path}' is named twice.")
        keep_in[path] = indices
        result.pruned[path] = indices
        result.chains[path] = chain
        keep_out[chain.producer] = indices
        for name in chain.through:
            if graph.layers[name].weights:
                keep_out[name] = indices

    def clone_function(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name in keep_out and isinstance(layer, keras.layers.Conv2D):
            config["filters"] = len(keep_out[layer.name])
        elif layer.name in keep_out and isinstance(layer, keras.layers.Dense):
            config["units"] = len(keep_out[layer.name])
        return layer.__class__.from_config(config)

    inputs = _named_inputs(model)
    try:
        new_model = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_function)
    except (TypeError, ValueError):
        if inputs is None:
            raise
        new_model = keras.models.clone_model(model, clone_function=clone_function)
    new_layers = {layer.name: layer for layer in new_model.layers}
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            new_layers[layer.name].set_weights(
                _sliced(layer, weights, keep_in.get(layer.name), keep_out.get(layer.name))
            )
    if getattr(model, "compiled", False):
        try:
            new_model.compile_from_config(model.get_compile_config())
        except Exception as err:  # a custom loss/metric that cannot be re-created from config
            warnings.warn(
                f"prune_input_channels: could not compile the new model like the original ({err}).", stacklevel=2
            )
    result.model = new_model
    return result
