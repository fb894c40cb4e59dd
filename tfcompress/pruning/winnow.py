"""Pruning units (dependency groups of channels) and winnowing: removing channels for real.

Pruning input channel ``c`` of a ``Conv2D``/``Dense`` only saves compute if nothing
produces it any more. Think of the channel axis of each tensor as a *space*:

- per-channel layers keep their input's space: activations (incl. ``PReLU``), dropout,
  pooling, padding, cropping and upsampling of every rank, ``Rescaling``,
  ``Normalization``/``BatchNormalization`` on the last axis, ``GroupNormalization``
  with one channel per group, ``LayerNormalization`` over other axes, DepthwiseConv2D
  with ``depth_multiplier=1``, a ``Reshape`` that keeps the last axis (the ``(1, 1, C)``
  of squeeze-and-excitation blocks), element-wise ``keras.ops`` nodes and reductions
  off the channel axis; the per-channel weights and config values of these are sliced
  (see :mod:`.kinds`);
- element-wise merges (``Add``, ``Subtract``, ``Multiply`` incl. the broadcasting one of
  SE blocks, ``Average``, ``Maximum``, ``Minimum``) join all their inputs and their
  output into one space;
- a channel-axis ``Concatenate`` makes a space that is the concatenation of its
  inputs' spaces; when a merge meets a concatenation (``x + conv(x)`` with ``x`` a concat,
  as in InceptionResNet blocks), the other inputs are cut at the same offsets, so a
  producer can hold parts of several units;
- a ``Conv2D``/``Dense``/``SeparableConv2D`` reads a space (a *consumer*) and makes a new
  one (a *producer*); a SeparableConv2D loses input channels as depthwise-kernel slices
  and the matching pointwise rows (see :mod:`.separable`).

A space with consumers that holds no model input, reaches no model output and
passes through no layer mixing channels (Flatten, a Reshape of the last axis, a
LayerNormalization across channels, a shared layer, a nested model, an unknown
layer, ...) is a :class:`PruneUnit`: dropping unit channel ``i`` removes an output
channel of every producer, a per-channel weight of every channelwise layer and an
input channel of every consumer, so shapes always match. Pruning a unit is *exact*:
the smaller model computes what the original does with the dropped channels' consumer
weights set to zero (which is how the selection scores candidates in place). That is
why a normalisation whose statistics span several channels (``LayerNormalization``
over the channel axis, ``GroupNormalization`` with several channels per group) is a
blocker, not a per-channel layer: removing channels would change the kept channels'
values, so the returned model would not be the one that was scored and refitted.

:func:`prune_units` (:mod:`.groups`) finds the units (and why the other layers have
none); :func:`apply_pruning` (:mod:`.rebuild`) builds the smaller model. With
``allow_custom_downsample_ops`` a layer whose inputs are pinned gets a *gather*
unit: a :class:`~tfcompress.layers.ChannelGather` in front of it picks the kept
channels.

This module: :func:`prune_input_channels` prunes layers by name when nothing else
reads their input channels; :func:`find_chain` and :func:`prunable_layers` describe
the simplest case, a *private chain* (one producer, per-channel layers, one consumer).

The graph is read from ``model.get_config()`` (each layer's ``inbound_nodes``) and
the new model is built with ``keras.models.clone_model`` from modified layer
configs, then given sliced copies of the weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from ..graph import check_graph_model, resolve_layers, walk_layers
from .groups import ChannelSlot, PruneUnit, _operations, _refs, prune_units
from .kinds import (
    ELEMENTWISE_ACTIVATIONS,
    _activation_name,
    _in_channels,
    _is_channel_layer,
    _is_target_type,
    _kind,
    _out_channels,
    _producer_problem,
)
from .rebuild import KeptChannels, _compile_like, _rebuild, _set_weights, apply_pruning, kept_channels

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
    if kind not in _BLOCKERS and _kind(layer, 1)[0] in ("pass", "channelwise"):
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
            produced = _out_channels(layer)
            if produced != channels:
                return f"producer '{current}' makes {produced} channels, the layer takes {channels}"
            return ChannelChain(name, current, tuple(reversed(through)))
        if type(layer).__name__ in ("Conv2D", "Dense", "SeparableConv2D"):
            return f"its channels come from '{current}', a grouped or channels_first {type(layer).__name__}"
        problem = _pass_through_problem(layer)
        if problem:
            return f"its channels cannot be winnowed: {problem}"
        up = graph.producers.get(current, [])
        if len(up) != 1:
            return f"'{current}' has {len(up)} inputs"
        through.append(current)
        current = up[0]


def _check_target(model: keras.Model, key: Any) -> tuple[str, Any] | str:
    """(top-level name, layer) of a plan entry, or the reason it is not a top-level layer."""
    refs = walk_layers(model)
    ref = resolve_layers(refs, [key], what="prune_input_channels")[key]
    if "/" in ref.path:
        return ref.path, "layers inside nested models are not pruned yet"
    if not _is_channel_layer(ref.layer):
        raise ValueError(
            f"prune_input_channels: layer '{ref.path}' is a {type(ref.layer).__name__}; only Conv2D, Dense and "
            "SeparableConv2D input channels can be pruned."
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
        return f"'{path}' is a grouped or channels_first {type(layer).__name__}, or a subclass"
    return _chain(_graph(model), path, _in_channels(layer))


def prunable_layers(model: keras.Model) -> dict[str, ChannelChain | str]:
    """For every top-level Conv2D/Dense/SeparableConv2D layer: its private :class:`ChannelChain`, or why it cannot be pruned.

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
        if _is_channel_layer(layer):
            if not _is_target_type(layer):
                out[layer.name] = f"'{layer.name}' is a grouped or channels_first {type(layer).__name__}, or a subclass"
            else:
                out[layer.name] = _chain(graph, layer.name, _in_channels(layer))
    return out


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


def prune_input_channels(model: keras.Model, kept: Mapping[Any, Sequence[int] | np.ndarray]) -> PruneResult:
    """A new model in which each named Conv2D/Dense/SeparableConv2D layer keeps only the given input channels.

    A layer can be pruned this way when its input channels belong to pruning units
    (see :func:`prune_units`) that no other layer reads: a private chain, but also a
    residual group (producers joined by an ``Add``) or the parts of a ``Concatenate``.
    Their producers lose the other output channels (Conv2D/SeparableConv2D filters and
    bias, Dense units), and so do the per-channel layers on the way (BatchNormalization,
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
                _set_weights(result.model.get_layer(layer.name), layer.get_weights())
        _compile_like(model, result.model, "prune_input_channels")
    return result
