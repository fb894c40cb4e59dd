"""Pruning units: the dependency groups of channels of a model, read from its public config.

Think of the channel axis of each tensor as a *space*. :func:`_analyse` walks the layer calls in forward order,
asks :func:`~tfcompress.pruning.kinds._kind` how channels cross each one, and joins or pins spaces in a union-find;
:func:`prune_units` turns every unpinned space that has consumers into a :class:`PruneUnit`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import keras
import numpy as np

from ..graph import check_graph_model, is_graph_model, walk_layers
from .kinds import (
    _channels,
    _in_channels,
    _input_shapes,
    _is_channel_layer,
    _kind,
    _out_channels,
    _producer_problem,
)

__all__ = ["ChannelSlot", "PruneUnit", "prune_units"]


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
    the Conv2D/Dense/SeparableConv2D layers that make the channels (they lose output
    channels), ``channelwise`` the layers on the way with per-channel weights
    (BatchNormalization, DepthwiseConv2D), ``consumers`` the Conv2D/Dense/SeparableConv2D
    layers that read the channels (they lose input channels). A ``gather`` unit has one consumer and no producers: the
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


class _Spaces:
    """Union-find over channel spaces; each base space has a size and maybe a pin reason.

    A base can be *split* into consecutive parts (when an element-wise merge meets a concatenation: the other
    input's channels must be cut where the concat's parts meet); it then stands for its parts, in order
    (:meth:`leaves`), and every base of its group is split alike, part ``i`` joined with part ``i``.
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int | None] = []
        self.pin: list[str | None] = []
        self.children: dict[int, list[int]] = {}

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
        for leaf in self.leaves([i]):
            r = self.root(leaf)
            if self.pin[r] is None:
                self.pin[r] = reason

    def leaves(self, bases: list[int]) -> list[int]:
        """``bases`` with every split base replaced by its parts, in channel order."""
        out: list[int] = []
        for base in bases:
            if base in self.children:
                out.extend(self.leaves(self.children[base]))
            else:
                out.append(base)
        return out

    def split(self, base: int, sizes: list[int]) -> None:
        """Cut the group of the unsplit ``base`` into consecutive parts of ``sizes`` channels."""
        r = self.root(base)
        members = [b for b in range(len(self.parent)) if b not in self.children and self.root(b) == r]
        first: list[int] | None = None
        for member in members:
            parts = [self.new(size, self.pin[r]) for size in sizes]
            self.children[member] = parts
            if first is None:
                first = parts
            else:
                for a, b in zip(first, parts, strict=True):
                    self.union(a, b)

    def align(self, lists: list[list[int]]) -> list[list[int]] | None:
        """The leaves of each channel axis in ``lists`` (one per merged tensor), split until all have parts of the
        same sizes at the same offsets; None when a size is unknown."""
        while True:
            lists = [self.leaves(bases) for bases in lists]
            sizes = [[self.size[self.root(b)] or self.size[b] for b in bases] for bases in lists]
            if any(size is None for row in sizes for size in row):
                return None
            if all(row == sizes[0] for row in sizes):
                return lists
            cuts = {int(c) for row in sizes for c in np.cumsum(row)}
            for bases, row in zip(lists, sizes, strict=True):
                offset = 0
                for base, size in zip(bases, row, strict=True):
                    inner = sorted(c - offset for c in cuts if offset < c < offset + size)
                    if inner:
                        self.split(base, list(np.diff([0, *inner, size]).astype(int).tolist()))
                        break
                    offset += size
                else:
                    continue
                break

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


def _operations(model: keras.Model) -> dict[str, Any]:
    """Every node's operation by name: the layers, and in a Functional model also the Keras operations that are not
    layers (``x + 3.0``, ``x[:, 0]``, ``keras.ops.reshape``, ...), which ``model.layers`` leaves out."""
    if isinstance(model, keras.Sequential):
        return {layer.name: layer for layer in model.layers}
    return {op.name: op for op in getattr(model, "operations", model.layers)}


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
        return spaces.leaves(segs[ref])

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
        if _is_channel_layer(layer) and kind != "producer":
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
            if len(widths) != 1 or None in widths:
                reason = f"'{name}' ({type(layer).__name__}) broadcasts over channels"
            elif any(len(bases) != 1 for bases in inputs):  # a concat meets another tensor: cut it alike
                aligned = spaces.align(inputs)
                reason = f"'{name}' ({type(layer).__name__}) merges channel groups of unknown size"
                inputs = aligned or inputs
            if len(widths) != 1 or None in widths or any(len(bases) != len(inputs[0]) for bases in inputs):
                pin_all(refs, f"they meet in {reason}")
                opaque[name] = f"they come out of {reason}"
                continue
            for bases in inputs[1:]:
                for a, b in zip(inputs[0], bases, strict=True):
                    spaces.union(a, b)
            segs[out] = list(inputs[0])
    for ref in outputs:
        label = ref[0] if ref[0] != "__input__" else "the model input"
        for base in segments(ref):
            spaces.pin_space(base, f"the channels also reach a model output ('{label}')")
    # a layer that sees the same unit twice (e.g. concatenating a tensor with itself) cannot be sliced
    for name, bases in (*result.consumers.items(), *result.channelwise.items()):
        roots = [spaces.root(b) for b in spaces.leaves(bases)]
        for r in {r for r in roots if roots.count(r) > 1}:
            spaces.pin_space(r, f"the same channels appear twice in the input of '{name}'")
    # sizes must agree inside a space (they do in a valid model; be safe)
    for base, root in ((b, spaces.root(b)) for b in range(len(spaces.parent)) if b not in spaces.children):
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

    Channels are followed through per-channel layers (activations incl. PReLU, pooling,
    padding, cropping, upsampling, dropout, BatchNormalization, Normalization, Rescaling,
    GroupNormalization with one channel per group, DepthwiseConv2D with
    ``depth_multiplier=1``, the SE-block Reshape to ``(1, 1, C)``, ...), element-wise
    merges (``Add``, ``Multiply``, ... join their inputs into one group, so a ResNet
    stage is one unit) and channel-axis ``Concatenate`` (a layer reading a concat is a
    consumer of each part's unit, at that part's offset; a merge of a concat with
    another tensor cuts that tensor's producers at the same offsets, so they can be
    producers of several units). A group is *pinned* — it has
    no unit — when it holds a model input, reaches a model output, or passes through a
    layer that does not keep channels apart (Flatten, a Reshape of the last axis, a
    LayerNormalization across channels, a shared layer, a nested model, an unknown
    layer, ...); the reason names that layer.

    Args:
        model: a built Sequential or Functional model (not modified).
        allow_custom_downsample_ops: also give every Conv2D/Dense whose input channels
            are all pinned (and number more than one) its own ``gather`` unit: pruning it
            inserts a :class:`~tfcompress.layers.ChannelGather` in front of the layer.

    Returns:
        ``(units, reasons)``: the units, ordered by their first consumer, and
        ``{layer: reason}`` for every top-level Conv2D/Dense/SeparableConv2D none of whose input
        channels can be pruned, and (by path, ``"outer/inner"``) every such layer
        inside a nested model (a layer reading a concat of a pinned part and a
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
            placed[name] = parts = _offsets(spaces, spaces.leaves(bases))
            if parts is None:
                for base in bases:
                    spaces.pin_space(base, f"the channel count of a part of the input of '{name}' is unknown")
                continue
            for root, offset, size in parts:
                members.setdefault(root, {"consumers": [], "channelwise": [], "producers": []})[role].append(
                    ChannelSlot(name, np.arange(offset, offset + size, dtype=np.int64))
                )
    for name, base in a.producers.items():  # a producer whose output was cut (see _Spaces.split) is in each part
        for root, offset, size in _offsets(spaces, spaces.leaves([base])) or []:
            if root in members:
                members[root]["producers"].append(ChannelSlot(name, np.arange(offset, offset + size, dtype=np.int64)))
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
        roots = [spaces.root(b) for b in spaces.leaves(bases)]
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
    return units, {**{name: reasons[name] for name in ordered if name in reasons}, **_inner_reasons(model)}


def _inner_reasons(model: keras.Model) -> dict[str, str]:
    """Why each Conv2D/Dense/SeparableConv2D inside a nested model or a custom layer is not pruned, by its path."""
    out: dict[str, str] = {}
    for ref in walk_layers(model, sublayers=True):
        if "/" not in ref.path or not _is_channel_layer(ref.layer):
            continue
        top = ref.path.split("/", 1)[0]
        holder = model.get_layer(top)
        if ref.owner is not None and not is_graph_model(holder):
            out[ref.path] = (
                f"it is inside the custom layer '{top}' ({type(holder).__name__}), which creates its own sublayers: "
                "channel pruning rebuilds the outer graph only, and channels are not followed through a custom layer"
            )
        else:
            out[ref.path] = (
                f"it is inside '{top}' ({type(holder).__name__}): channel pruning rebuilds the outer graph only, so "
                "layers of nested models are not pruned (call the nested model's layers directly in the outer model "
                "to prune them)"
            )
    return out
