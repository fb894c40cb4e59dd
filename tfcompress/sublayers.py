"""Layers held inside custom layers: finding them, addressing them by attribute path, and seeing them run.

A custom layer (a user's residual block, a keras_hub ``TransformerEncoder``) keeps its sublayers as attributes,
directly or in lists, tuples and dicts. Keras has no public listing of them, so they are found by looking at the
layer's attributes (:func:`attribute_sublayers`); an *attribute path* such as ``"convs.1"`` or ``"ffn"`` names where
one lives, so it can be found again in a layer re-created from its config (:func:`get_by_path`, :func:`set_by_path`).

What a sublayer is called with is only known when its owner runs: :func:`trace_calls` runs the owner's ``call`` once
symbolically (``keras.Operation.compute_output_spec``: shapes only, no data) and records each sublayer call with its
arguments and outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras

__all__ = [
    "attribute_sublayers",
    "own_weights",
    "get_by_path",
    "set_by_path",
    "trace_calls",
    "is_container",
    "TracedCall",
    "TracedOp",
    "static_shape",
]

TracedCall = tuple[Any, tuple, dict, Any]  # (sublayer or TracedOp, args, kwargs, outputs)

#: the ``keras.ops`` functions that multiply two activations, recorded when a custom layer's own code calls them
_RECORDED_OPS = ("einsum", "matmul", "dot_product_attention")


class TracedOp:
    """A ``keras.ops`` call (``einsum``, ``matmul``, ``dot_product_attention``) made by a traced layer's own code,
    not by one of its sublayers: a Q·Kᵀ or A·V product of a custom attention layer, say.

    Example:
        >>> TracedOp("einsum", "btnh,bsnh->bnts").name
        'einsum'
    """

    def __init__(self, name: str, subscripts: str | None = None) -> None:
        self.name = name
        self.subscripts = subscripts

    def __repr__(self) -> str:
        return f"TracedOp({self.name!r}, {self.subscripts!r})"


def is_container(layer: Any) -> bool:
    """True for a layer that is neither a Keras built-in nor a tfcompress layer nor a model, and holds sublayers.

    Example:
        >>> import keras
        >>> class Block(keras.layers.Layer):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = keras.layers.Dense(4)
        >>> is_container(Block()), is_container(keras.layers.Dense(4))
        (True, False)
    """
    module = type(layer).__module__
    if module.startswith(("keras.", "tfcompress.layers")) or isinstance(layer, keras.Model):
        return False
    return bool(attribute_sublayers(layer))


def attribute_sublayers(layer: Any) -> list[tuple[str, Any]]:
    """``(attribute path, sublayer)`` for each layer held by ``layer``'s attributes, in attribute order.

    The path joins attribute names, list indices and dict keys with dots (``"convs.1"``).

    Example:
        >>> import keras
        >>> class Block(keras.layers.Layer):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.convs = [keras.layers.Conv2D(4, 3), keras.layers.Conv2D(4, 3)]
        ...         self.head = keras.layers.Dense(2)
        >>> [path for path, _ in attribute_sublayers(Block())]
        ['convs.0', 'convs.1', 'head']
    """
    found: list[tuple[str, Any]] = []
    seen: set[int] = {id(layer)}

    def visit(path: str, value: Any, depth: int) -> None:
        if isinstance(value, keras.layers.Layer):
            if id(value) not in seen:
                seen.add(id(value))
                found.append((path, value))
        elif depth < 3 and isinstance(value, list | tuple):
            for i, item in enumerate(value):
                visit(f"{path}.{i}", item, depth + 1)
        elif depth < 3 and isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and "." not in key:
                    visit(f"{path}.{key}", item, depth + 1)

    for name, value in vars(layer).items():
        if name.startswith("__") or "." in name or name in _KERAS_BOOKKEEPING:
            continue
        if name.startswith("_self_") and not isinstance(value, keras.layers.Layer):
            continue  # TensorFlow's trackable bookkeeping (lists and dicts of every dependency again)
        visit(name, value, 0)
    return found


# attributes Keras keeps its own bookkeeping in (the tracker's lists hold every sublayer again); TensorFlow's
# trackable bookkeeping lives in ``_self_*`` attributes, which hold lists and dicts, never a layer itself (a layer
# there is a user's own attribute, e.g. keras_hub's ``_self_attention_layer``)
_KERAS_BOOKKEEPING = frozenset({"_layers", "_tracker", "_inbound_nodes", "_outbound_nodes"})


def _steps(path: str) -> list[str]:
    steps = path.split(".")
    if not steps or any(not s for s in steps):
        raise ValueError(f"bad attribute path {path!r}")
    return steps


def _child(value: Any, step: str) -> Any:
    if isinstance(value, list | tuple):
        return value[int(step)]
    if isinstance(value, dict):
        return value[step]
    return getattr(value, step)


def own_weights(layer: Any, subs: Sequence[Any]) -> list[Any]:
    """The weights ``layer`` holds itself, outside the sublayers ``subs``, in ``layer.weights`` order.

    Example:
        >>> import keras
        >>> class Scaled(keras.layers.Layer):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = keras.layers.Dense(2)
        ...     def build(self, shape):
        ...         self.fc.build(shape)
        ...         self.scale = self.add_weight(shape=(2,), name="scale")
        >>> block = Scaled()
        >>> block.build((None, 3))
        >>> [w.name for w in own_weights(block, [block.fc])]
        ['scale']
    """
    inner = {id(w) for sub in subs for w in sub.weights}
    return [w for w in layer.weights if id(w) not in inner]


def get_by_path(layer: Any, path: str) -> Any:
    """The object at attribute path ``path`` of ``layer`` (``"convs.1"`` is ``layer.convs[1]``).

    Example:
        >>> import keras
        >>> class Block(keras.layers.Layer):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.convs = [keras.layers.Dense(4, name="a"), keras.layers.Dense(4, name="b")]
        >>> get_by_path(Block(), "convs.1").name
        'b'
    """
    value = layer
    for step in _steps(path):
        value = _child(value, step)
    return value


def set_by_path(layer: Any, path: str, new: Any) -> None:
    """Put ``new`` at attribute path ``path`` of ``layer`` (through Keras' own attribute and list tracking)."""
    *head, last = _steps(path)
    parent = layer
    for step in head:
        parent = _child(parent, step)
    # pop + insert (not item assignment): Keras' tracked lists and dicts then stop tracking the old layer and
    # track the new one, so the owner's weights are the new layer's
    if isinstance(parent, list):
        parent.pop(int(last))
        parent.insert(int(last), new)
    elif isinstance(parent, dict):
        parent.pop(last)
        parent[last] = new
    elif isinstance(parent, tuple):
        raise ValueError(f"the sublayer at {path!r} is held in a tuple, which cannot be changed")
    else:
        setattr(parent, last, new)


_NO_OWN_CALL = object()


@contextlib.contextmanager
def patched_calls(
    layers: Sequence[Any], wrap: Callable[[Any, Callable[..., Any]], Callable[..., Any]]
) -> Iterator[None]:
    """While active, each layer's ``call`` is ``wrap(layer, its call)`` (an instance attribute, shadowing the class's
    method); afterwards, also on an error, a ``call`` the instance had of its own is put back, one it did not have
    is removed. The one place tfcompress hooks layer calls (sublayer tracing, FFN sampling, activation capture).

    Example:
        >>> import keras
        >>> dense = keras.layers.Dense(2)
        >>> seen = []
        >>> def wrap(layer, call):
        ...     return lambda *args, **kwargs: seen.append(layer.name) or call(*args, **kwargs)
        >>> with patched_calls([dense], wrap):
        ...     _ = dense(keras.ops.ones((1, 3)))
        >>> seen == [dense.name], "call" in vars(dense)
        (True, False)
    """
    patched: list[tuple[Any, Any]] = []
    try:
        for target in layers:
            own = vars(target).get("call", _NO_OWN_CALL)
            vars(target)["call"] = wrap(target, target.call)
            patched.append((target, own))
        yield
    finally:
        for target, own in reversed(patched):
            if own is _NO_OWN_CALL:
                vars(target).pop("call", None)
            else:
                vars(target)["call"] = own


@contextlib.contextmanager
def _recording(layers: Sequence[Any], calls: list[TracedCall]) -> Iterator[None]:
    """While active, each call of one of ``layers`` appends ``(layer, args, kwargs, outputs)`` to ``calls`` (the
    outermost call only, when one recorded layer calls another). Their ``call`` is put back afterwards."""
    depth = [0]

    def wrap(target: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            depth[0] += 1
            try:
                result = original(*args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                calls.append((target, args, kwargs, result))
            return result

        return recorded

    def wrap_op(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if depth[0] == 0:  # the traced layer's own code, not a sublayer's (those are counted as layers)
                subscripts = args[0] if name == "einsum" and args and isinstance(args[0], str) else None
                operands = args[1:] if subscripts is not None else args
                calls.append((TracedOp(name, subscripts), operands, kwargs, result))
            return result

        return recorded

    ops_module = keras.ops
    kept_ops = {name: getattr(ops_module, name) for name in _RECORDED_OPS if hasattr(ops_module, name)}
    with patched_calls(layers, wrap):
        try:
            for name, function in kept_ops.items():
                setattr(ops_module, name, wrap_op(name, function))
            yield
        finally:
            for name, function in kept_ops.items():
                setattr(ops_module, name, function)


def static_shape(tensor: Any) -> tuple[int | None, ...]:
    """The shape of a tensor seen while tracing, with ``None`` for every size not fixed (TensorFlow's ``None``,
    JAX's symbolic dimensions).

    Example:
        >>> static_shape(keras.KerasTensor((None, 4, 3)))
        (None, 4, 3)
    """

    def size(d: Any) -> int | None:
        if d is None:
            return None
        try:
            return int(d)
        except Exception:  # a symbolic dimension (JAX raises its own error type)
            return None

    return tuple(size(d) for d in getattr(tensor, "shape", tensor))


def _symbolic(value: Any) -> Any:
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, keras.KerasTensor):
        return keras.KerasTensor(static_shape(value), dtype=keras.backend.standardize_dtype(value.dtype))
    return value


def trace_calls(layer: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> list[TracedCall]:
    """Run ``layer.call`` once on symbolic tensors of the given shapes and return the calls of its direct sublayers,
    and the ``keras.ops`` products (:class:`TracedOp`) its own code makes.

    Raises:
        ValueError: when the call cannot be traced (the message says why).

    Example:
        >>> import keras
        >>> class Block(keras.layers.Layer):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = keras.layers.Dense(4)
        ...     def call(self, x):
        ...         return self.fc(self.fc(x))
        >>> block = Block()
        >>> [tuple(a[0].shape) for _, a, _, _ in trace_calls(block, [keras.KerasTensor((None, 4))], {})]
        [(None, 4), (None, 4)]
    """
    subs = [sub for _, sub in attribute_sublayers(layer)]
    calls: list[TracedCall] = []
    symbolic_args = keras.tree.map_structure(_symbolic, list(args))
    symbolic_kwargs = keras.tree.map_structure(_symbolic, dict(kwargs))
    with _recording(subs, calls):
        try:
            # the base Operation's spec traces call() (a layer's own may shortcut through compute_output_shape)
            keras.Operation.compute_output_spec(layer, *symbolic_args, **symbolic_kwargs)
        except Exception as err:  # any failure to trace: the caller says what cannot be known
            raise ValueError(f"its call() could not be traced ({type(err).__name__}: {err})") from None
    return calls
