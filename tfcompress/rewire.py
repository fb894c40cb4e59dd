"""Rewriting layers that live inside custom layers: the part of ``rewrite_model`` that builds a
:class:`~tfcompress.layers.RewiredLayer` for each custom layer whose sublayers are replaced, and fills its weights.

The custom layer is re-created from its config (fresh, unbuilt sublayers), the planned sublayers are swapped for
unbuilt decomposed twins, and the wrapper is called in the cloned graph like any layer. Afterwards every weight is
copied from the original by attribute path: twins get their factors, the other sublayers and the custom layer's own
weights their values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from .layers import RewiredLayer
from .layers.rewired_layer import replaceable
from .sublayers import attribute_sublayers, get_by_path, own_weights

__all__ = ["rewired_twin", "fill_rewired", "replacement_problem", "config_copy", "NotCopyable", "built_input_shape"]


class NotCopyable(Exception):
    """A layer that cannot be copied from its config: ``layer`` failed with ``error`` (any exception: a config
    that its class does not accept back, a ``get_config`` that raises). ``node`` is the graph-level layer whose copy
    needed it (set by the caller)."""

    def __init__(self, layer: Any, error: BaseException) -> None:
        super().__init__(f"'{layer.name}' ({type(layer).__name__}): {type(error).__name__}: {one_line(error)}")
        self.layer = layer
        self.error = error
        self.node: Any = layer


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line."""
    return " ".join(str(error).split())


def config_copy(layer: Any) -> Any:
    """``type(layer).from_config(layer.get_config())``; :class:`NotCopyable` when that fails.

    Example:
        >>> import keras
        >>> type(config_copy(keras.layers.Dense(3))).__name__
        'Dense'
    """
    try:
        return type(layer).from_config(layer.get_config())
    except Exception as err:  # any failure: the layer does not round-trip through its config
        raise NotCopyable(layer, err) from err


def _inner(owner: Any) -> Any:
    return owner.layer if isinstance(owner, RewiredLayer) else owner


def replacement_problem(owner: Any, attribute: str) -> str | None:
    """Why the sublayer at ``attribute`` of the top-level custom layer ``owner`` cannot be replaced (or ``None``)."""
    return replaceable(_inner(owner), attribute)


def rewired_twin(
    owner: Any, entries: Mapping[str, tuple[Any, Any]], make_twin: Callable[[Any, str, Any], Any]
) -> tuple[RewiredLayer, dict[str, list[np.ndarray]]]:
    """A new, unbuilt ``RewiredLayer`` for ``owner`` with ``entries`` (``{attribute: (scheme, rank)}``) replaced,
    and the weights each replacement must get once built.

    ``make_twin(sublayer, scheme, rank)`` gives the built decomposed twin of a sublayer. A ``RewiredLayer`` owner
    keeps the replacements it already has.
    """
    inner = _inner(owner)
    fresh = config_copy(inner)
    replacements: dict[str, Any] = {}
    values: dict[str, list[np.ndarray]] = {}
    shapes: dict[str, tuple] = {}
    if isinstance(owner, RewiredLayer):
        shapes.update(owner.build_shapes)
        for attribute, existing in owner.replacements.items():
            replacements[attribute] = type(existing).from_config(existing.get_config())
            values[attribute] = existing.get_weights()
    for attribute, (scheme, rank) in entries.items():
        original = get_by_path(inner, attribute)
        built = make_twin(original, scheme, rank)
        replacements[attribute] = type(built).from_config(built.get_config())
        values[attribute] = built.get_weights()
        shape = built_input_shape(built)
        if shape is not None and shape != built_input_shape(original):  # reads another shape (fewer hidden units)
            shapes[attribute] = shape
        else:
            shapes.pop(attribute, None)
    return RewiredLayer(fresh, replacements, build_shapes=shapes or None, name=owner.name), values


def built_input_shape(layer: Any) -> tuple | None:
    """The input shape ``layer`` was built for (``None`` when unknown)."""
    config = layer.get_build_config() if layer.built else None
    shape = (config or {}).get("input_shape")
    return None if shape is None else tuple(shape)


def fill_rewired(original: Any, new: Any, values: Mapping[str, list[np.ndarray]]) -> None:
    """Copy ``original``'s weights into the built ``new`` (its rewritten twin: a ``RewiredLayer``, or the layer
    itself with the replacements swapped in), replacements from ``values``."""
    _copy(_inner(original), _inner(new), values, "")


def _copy(source: Any, target: Any, values: Mapping[str, list[np.ndarray]], prefix: str) -> None:
    source_subs = dict(attribute_sublayers(source))
    target_subs = dict(attribute_sublayers(target))
    for attribute, sub in source_subs.items():
        path = prefix + attribute
        twin = target_subs.get(attribute)
        if twin is None:
            raise RuntimeError(f"rewrite_model: the rewritten '{target.name}' has no sublayer at {path!r}.")
        if path in values:
            twin.set_weights(values[path])
        elif any(key.startswith(path + ".") for key in values):
            _copy(sub, twin, values, path + ".")
        elif sub.weights:
            twin.set_weights(sub.get_weights())
    own_source = own_weights(source, list(source_subs.values()))
    own_target = own_weights(target, list(target_subs.values()))
    if len(own_source) != len(own_target):
        raise RuntimeError(f"rewrite_model: the rewritten '{target.name}' holds other weights than the original.")
    for src, dst in zip(own_source, own_target, strict=True):
        dst.assign(keras.ops.convert_to_numpy(src))
