"""Walking a Keras model's layers with public Keras API only.

Layers are addressed by name. A layer inside a nested model (a Functional or
Sequential model used as a layer) is addressed by its plain name when that name
is unique in the whole model, and always by its path ``"outer/inner"``.
"""

from __future__ import annotations

import contextlib
import difflib
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

__all__ = [
    "LayerRef",
    "NodeCall",
    "check_graph_model",
    "is_graph_model",
    "no_candidates_detail",
    "resolve_layers",
    "walk_calls",
    "walk_layers",
]


def is_graph_model(obj: Any) -> bool:
    """True for a Sequential or Functional model (including keras.applications models)."""
    if not isinstance(obj, keras.Model):
        return False
    names = {cls.__name__ for cls in type(obj).__mro__}
    return "Sequential" in names or "Functional" in names


def _is_sequential(model: Any) -> bool:
    return "Sequential" in {cls.__name__ for cls in type(model).__mro__}


def check_graph_model(model: Any, what: str = "model") -> None:
    """Raise a clear error unless ``model`` is a built Sequential or Functional Keras model."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"`{what}` must be a keras.Model, got {type(model).__name__}.")
    if not is_graph_model(model):
        raise TypeError(
            f"`{what}` is a subclassed model ({type(model).__name__}); tfcompress rewrites Sequential and "
            "Functional models only, because a subclassed model's call() cannot be inspected. Rebuild it with "
            "the Functional API (keras.Model(inputs, outputs))."
        )
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"`{what}` ('{model.name}') is not built with known inputs; build it first, e.g. with keras.Input(...) "
            "as its first layer or model.build(input_shape)."
        )


@dataclass(frozen=True)
class LayerRef:
    """One leaf layer of a (possibly nested) model.

    ``path`` is ``"outer/inner"`` for layers of nested models and the plain name at
    top level; ``calls`` is how many times the layer runs in one forward pass of the
    whole model (shared layers and layers of shared nested models run more than once).
    """

    path: str
    layer: Any
    calls: int
    #: for a layer held inside a custom layer: the top-level custom layer that holds it, the attribute path to it
    #: there (``"convs.1"``), and the input shape it is called with (its own ``input`` is not known to Keras)
    owner: Any = None
    attribute: str | None = None
    input_shape: tuple | None = None

    @property
    def name(self) -> str:
        return self.layer.name


# Functional model -> its per-layer call counts. A Functional model's graph cannot change after it is built, and
# reading the counts from its config serializes every layer (about 0.04 s for ResNet50), so they are read once per
# model. Weak keys: nothing is kept alive.
_FUNCTIONAL_CALLS: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def _calls_per_layer(model: Any) -> dict[str, int]:
    """Number of times each direct layer of ``model`` is called, from the public config."""
    if _is_sequential(model):
        return {layer.name: 1 for layer in model.layers}  # a Sequential model can change (add/pop): not cached
    try:
        return dict(_FUNCTIONAL_CALLS[model])
    except (KeyError, TypeError):
        pass
    calls = {}
    for entry in model.get_config().get("layers", []):
        calls[entry["name"]] = max(len(entry.get("inbound_nodes", [])), 0)
    with contextlib.suppress(TypeError):  # not weak-referenceable: just not cached
        _FUNCTIONAL_CALLS[model] = dict(calls)
    return calls


def inherit_call_counts(original: Any, clone: Any) -> None:
    """Record for ``clone`` (a clone of ``original`` with the same layer names) and its nested models the call
    counts of ``original``, so that :func:`walk_layers` need not serialize the clone's config to count them.

    A clone has the same graph, so each layer runs as often as its namesake; where the names do not line up,
    nothing is recorded and the counts are read from the clone's config as usual.
    """
    if not (is_graph_model(original) and is_graph_model(clone)):
        return
    if not _is_sequential(clone):
        counts = _calls_per_layer(original)
        if set(counts) == {layer.name for layer in clone.layers}:
            with contextlib.suppress(TypeError):
                _FUNCTIONAL_CALLS[clone] = dict(counts)
    for old, new in zip(original.layers, clone.layers, strict=False):
        if old.name == new.name and is_graph_model(old):
            inherit_call_counts(old, new)


def walk_layers(model: Any, _prefix: str = "", _calls: int = 1, *, sublayers: bool = False) -> list[LayerRef]:
    """All leaf layers of ``model`` in order, descending into nested models (InputLayers skipped).

    With ``sublayers=True``, each custom layer that holds layers (a residual block, a transformer block) is followed
    by the layers it runs, named ``"block/inner"`` (descending into custom layers inside it too); their refs carry
    the holding top-level layer, the attribute path and the input shape seen when its ``call`` was traced.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc")])
        >>> [ref.path for ref in walk_layers(m)]
        ['fc']
    """
    refs: list[LayerRef] = []
    calls = _calls_per_layer(model)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        n = _calls * max(calls.get(layer.name, 1), 1)
        path = f"{_prefix}{layer.name}"
        if is_graph_model(layer):
            # layers inside its custom layers are found below, at the shapes the nested model is called with
            refs.extend(walk_layers(layer, _prefix=path + "/", _calls=n))
        else:
            refs.append(LayerRef(path, layer, n))
    if sublayers and any(_holds_layers(ref.layer) for ref in refs):
        arguments = {call.path: call for call in walk_calls(model, _prefix=_prefix, _calls=_calls)}
        expanded: list[LayerRef] = []
        for ref in refs:
            expanded.append(ref)
            call = arguments.get(ref.path)
            if call is not None and _holds_layers(ref.layer):
                expanded.extend(_inner_refs(ref.path, ref.layer, ref.layer, "", call.args, call.kwargs, ref.calls))
        refs = expanded
    return refs


def _holds_layers(layer: Any) -> bool:
    from .layers import RewiredLayer
    from .sublayers import is_container

    # MultiHeadAttention's projections are addressable too ("block/attention/query"), so plans and inspect can name
    # them; it creates them in build(), and replacing them is refused with that reason
    return isinstance(layer, RewiredLayer | keras.layers.MultiHeadAttention) or is_container(layer)


def _inner_refs(
    path: str, owner: Any, layer: Any, attribute: str, args: Any, kwargs: Any, calls: int
) -> list[LayerRef]:
    """Refs of the layers that ``layer`` (held at ``attribute`` of the top-level ``owner``) runs, in call order."""
    from .layers import RewiredLayer
    from .sublayers import attribute_sublayers, static_shape, trace_calls

    if isinstance(layer, RewiredLayer):  # a custom layer rewritten before: address what it wraps
        layer = layer.layer
    try:
        traced = trace_calls(layer, args, kwargs)
    except ValueError:
        return []  # cannot be traced: its sublayers stay unaddressable (model_cost says why)
    where = {id(sub): attr for attr, sub in attribute_sublayers(layer)}
    order: dict[int, list[Any]] = {}
    for sub, sub_args, sub_kwargs, _ in traced:
        order.setdefault(id(sub), [sub, sub_args, sub_kwargs, 0])[3] += 1
    refs: list[LayerRef] = []
    used: set[str] = set()
    for sub, sub_args, sub_kwargs, count in order.values():
        if id(sub) not in where:
            continue
        name = sub.name if sub.name not in used else where[id(sub)]
        used.add(name)
        sub_path, sub_attribute, n = f"{path}/{name}", f"{attribute}{where[id(sub)]}", calls * count
        tensors = [t for t in keras.tree.flatten((list(sub_args), sub_kwargs)) if hasattr(t, "shape")]
        shape = static_shape(tensors[0]) if tensors else None
        refs.append(LayerRef(sub_path, sub, n, owner=owner, attribute=sub_attribute, input_shape=shape))
        if _holds_layers(sub):
            refs.extend(_inner_refs(sub_path, owner, sub, sub_attribute + ".", sub_args, sub_kwargs, n))
    return refs


@dataclass(frozen=True)
class NodeCall:
    """The first call of one graph node (a leaf layer or a ``keras.ops`` operation) of a possibly nested model.

    ``args``/``kwargs`` are the call's arguments with every tensor given as a ``keras.KerasTensor`` of the real shape;
    ``outputs`` the output tensors; ``calls`` how often the node runs in one forward pass of the whole model.
    """

    path: str
    operation: Any
    calls: int
    args: tuple
    kwargs: dict
    outputs: tuple


def _deserialize_argument(value: Any) -> Any:
    if isinstance(value, dict):
        kind = value.get("class_name")
        if kind == "__keras_tensor__":
            config = value.get("config", {})
            return keras.KerasTensor(tuple(config.get("shape", ())), dtype=config.get("dtype", "float32"))
        if kind == "__numpy__":
            config = value.get("config", {})
            return np.asarray(config.get("value"), dtype=config.get("dtype"))
        return {k: _deserialize_argument(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_deserialize_argument(v) for v in value]
    return value


def _outputs(operation: Any) -> tuple:
    try:
        value = operation.output
    except (AttributeError, ValueError):
        return ()
    return tuple(t for t in keras.tree.flatten(value) if hasattr(t, "shape"))


def _traced_arguments(model: Any, call: tuple[tuple, dict] | None) -> dict[str, tuple[tuple, dict]]:
    """``{layer name: (args, kwargs)}`` of the first call of each direct layer of the graph ``model`` when it runs on
    ``call`` (its own inputs when ``None``), seen by tracing it symbolically; empty when it cannot be traced.

    For a model whose config does not list its layers' calls (a keras_hub ``Backbone``'s config is its constructor's
    arguments), and for one nested in another and called at other shapes than its own inputs' (a variable-length
    backbone called on fixed-length inputs).
    """
    from .sublayers import _recording

    args, kwargs = call if call is not None else ((model.input,), {})
    layers = [op for op in model.layers if not isinstance(op, keras.layers.InputLayer)]
    traced: list[Any] = []
    symbolic = keras.tree.map_structure(
        lambda t: keras.KerasTensor(tuple(t.shape), dtype=t.dtype) if hasattr(t, "shape") else t, (list(args), kwargs)
    )
    try:
        with _recording(layers, traced):
            keras.Operation.compute_output_spec(model, *symbolic[0], **symbolic[1])
    except Exception:  # cannot be traced: the layers' own recorded inputs are used instead
        return {}
    found: dict[str, tuple[tuple, dict]] = {}
    for layer, layer_args, layer_kwargs, _ in traced:
        if isinstance(layer, keras.layers.Layer) and layer.name not in found:
            found[layer.name] = (tuple(layer_args), dict(layer_kwargs))
    return found


def walk_calls(
    model: Any, _prefix: str = "", _calls: int = 1, _call: tuple[tuple, dict] | None = None
) -> list[NodeCall]:
    """Every node of ``model`` in order, with the arguments of its first call: the leaf layers (descending into
    nested models, InputLayers skipped) and, in Functional models, the ``keras.ops`` operation nodes.

    Example:
        >>> import keras
        >>> inp = keras.Input((4,))
        >>> m = keras.Model(inp, keras.layers.Dense(2, name="fc")(inp) * 2.0)
        >>> [(type(c.operation).__name__, c.args[0].shape) for c in walk_calls(m)]
        [('Dense', (None, 4)), ('Multiply', (None, 2))]
    """
    found: list[NodeCall] = []
    counts = _calls_per_layer(model)
    if _is_sequential(model):
        entries = [(layer, ((layer.input,), {})) for layer in model.layers]
    else:
        arguments: dict[str, tuple] = {}
        for entry in model.get_config().get("layers", []):
            nodes = entry.get("inbound_nodes") or []
            if nodes and isinstance(nodes[0], dict):
                arguments[entry["name"]] = (
                    tuple(_deserialize_argument(nodes[0].get("args", []))),
                    _deserialize_argument(nodes[0].get("kwargs", {})),
                )
        operations = getattr(model, "operations", model.layers)
        if not arguments or (_call is not None and _reshaped(model, _call)):
            arguments.update(_traced_arguments(model, _call))
        entries = [(op, arguments.get(op.name, ((getattr(op, "input", None),), {}))) for op in operations]
    for operation, (args, kwargs) in entries:
        if isinstance(operation, keras.layers.InputLayer):
            continue
        n = _calls * max(counts.get(operation.name, 1), 1)
        path = f"{_prefix}{operation.name}"
        if is_graph_model(operation):
            found.extend(walk_calls(operation, _prefix=path + "/", _calls=n, _call=(tuple(args), dict(kwargs))))
        else:
            found.append(NodeCall(path, operation, n, tuple(args), dict(kwargs), _outputs(operation)))
    return found


def _reshaped(model: Any, call: tuple[tuple, dict]) -> bool:
    """Whether a nested ``model`` is called (``call``: its args and kwargs) at other shapes than its own inputs'."""
    given = [tuple(t.shape) for t in keras.tree.flatten(call) if hasattr(t, "shape")]
    own = [tuple(t.shape) for t in keras.tree.flatten(model.input)]
    return len(given) == len(own) and any(
        len(g) != len(o) or any(a is None and b is not None for a, b in zip(o, g, strict=True))
        for g, o in zip(given, own, strict=True)
    )


def no_candidates_detail(model: Any, reasons: dict[str, str]) -> str:
    """The end of a "no layer can be compressed" message: each layer's reason, or, when no layer even got one, the
    kinds of layers with weights that the model has instead.

    Example:
        >>> import keras
        >>> inp = keras.Input((5, 3))
        >>> no_candidates_detail(keras.Model(inp, keras.layers.LSTM(4, name="rnn")(inp)), {})
        "it has no Dense, Conv1D, Conv2D, SeparableConv2D or Conv2DTranspose layer (its layers with weights: 'rnn' (LSTM))"
    """
    if reasons:
        return "; ".join(f"{name}: {why}" for name, why in reasons.items())
    weighted = [f"'{ref.path}' ({type(ref.layer).__name__})" for ref in walk_layers(model) if ref.layer.weights]
    return (
        "it has no Dense, Conv1D, Conv2D, SeparableConv2D or Conv2DTranspose layer (its layers with weights: "
        + (", ".join(weighted[:10]) + (f" and {len(weighted) - 10} more" if len(weighted) > 10 else "") or "none")
        + ")"
    )


def resolve_layers(refs: Iterable[LayerRef], names: Iterable[Any], what: str = "plan") -> dict[Any, LayerRef]:
    """Map each name (a path, a unique plain name, or a layer object) to its ``LayerRef``.

    Unknown and ambiguous names are collected and reported together in one ``ValueError``.
    """
    refs = list(refs)
    by_path = {ref.path: ref for ref in refs}
    by_name: dict[str, list[LayerRef]] = {}
    for ref in refs:
        by_name.setdefault(ref.name, []).append(ref)
    by_id = {id(ref.layer): ref for ref in refs}
    resolved: dict[Any, LayerRef] = {}
    unknown, ambiguous = [], []
    for key in names:
        if isinstance(key, keras.layers.Layer):
            ref = by_id.get(id(key))
            if ref is None:
                unknown.append(key.name)
            else:
                resolved[key] = ref
            continue
        if not isinstance(key, str):
            raise TypeError(f"{what}: layer names must be strings or layers, got {key!r}.")
        if key in by_path:
            resolved[key] = by_path[key]
        elif len(by_name.get(key, [])) == 1:
            resolved[key] = by_name[key][0]
        elif key in by_name:
            ambiguous.append(f"'{key}' (use one of {[r.path for r in by_name[key]]})")
        else:
            unknown.append(key)
    if unknown or ambiguous:
        parts = []
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, list(by_path), n=3)
                hints.append(f"'{name}'" + (f" (did you mean {close}?)" if close else ""))
            parts.append("unknown layer name(s): " + ", ".join(hints))
        if ambiguous:
            parts.append("ambiguous layer name(s): " + ", ".join(ambiguous))
        raise ValueError(f"{what}: " + "; ".join(parts) + ".")
    return resolved
