"""Copying a model whose layers do not copy one by one from their configs: the whole model is re-created from its
own config and becomes a :class:`~tfcompress.layers.RewiredModel`.

``rewrite_model`` copies every layer of a model from its config (``keras.models.clone_model``). Some layers do not
re-create from their configs (keras_hub 0.32: ``ViTPatchingAndEmbedding`` does not accept its own config back,
``LlamaTransformerDecoder.get_config`` raises) while the model that holds them does (a keras_hub ``Backbone``'s
config is its constructor's arguments). Such a model is re-created as a whole, the planned layers are swapped into
it, and its weights are copied from the original like those of any clone. A model that re-creates neither way
gets a one-line error naming the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from .graph import is_graph_model, walk_layers
from .layers import RewiredLayer, RewiredModel
from .rewire import NotCopyable, built_input_shape, one_line, replacement_problem
from .sublayers import get_by_path

__all__ = ["holder_of", "recreated", "rebuilt", "replaceable_in_whole", "sublayer_problem"]


def holder_of(model: keras.Model, layer: Any) -> keras.Model | None:
    """The graph model (``model`` or one nested in it) that has ``layer`` among its own layers, ``None`` if none.

    Example:
        >>> import keras
        >>> inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")], name="inner")
        >>> outer = keras.Sequential([keras.Input((3,)), inner])
        >>> holder_of(outer, inner.get_layer("fc")).name
        'inner'
    """
    stack = [model]
    while stack:
        current = stack.pop()
        for candidate in current.layers:
            if candidate is layer:
                return current
            if is_graph_model(candidate):
                stack.append(candidate)
    return None


def recreated(model: keras.Model, failure: NotCopyable, what: str = "rewrite_model") -> keras.Model:
    """A fresh ``model`` re-created from its own serialized form (weights not copied), after ``failure`` showed that
    one of its layers does not copy from its config; a ``ValueError`` naming that layer when this fails too."""
    try:
        fresh = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    except Exception as err:  # any failure: the model does not round-trip through its config either
        raise ValueError(
            f"{what}: cannot copy '{model.name}': its layer {failure} does not re-create from its config, and the "
            f"model ({type(model).__name__}) does not re-create from its own config either ({type(err).__name__}: "
            f"{one_line(err)})."
        ) from None
    if not isinstance(fresh, keras.Model) or [x.name for x in fresh.layers] != [x.name for x in model.layers]:
        raise ValueError(
            f"{what}: cannot copy '{model.name}': its layer {failure} does not re-create from its config, and the "
            "model re-created from its own config has other layers."
        )
    return fresh


def replaceable_in_whole(model: keras.Model, owner: Any, attribute: str, fresh_models: dict[int, Any]) -> bool:
    """Whether the sublayer at ``attribute`` of ``owner`` (a custom layer of ``model`` or of a model nested in it,
    which does not re-create from its own config) can be replaced in the model that holds ``owner`` re-created
    as a whole from its config. The re-created model is kept in ``fresh_models`` (``{id(holder): it}``) for the
    rewrite."""
    holder = holder_of(model, owner)
    if holder is None:
        return False
    if id(holder) not in fresh_models:
        try:
            fresh_models[id(holder)] = recreated(holder, NotCopyable(owner, RuntimeError("no config")))
        except ValueError:
            fresh_models[id(holder)] = None
    fresh = fresh_models[id(holder)]
    if fresh is None:
        return False
    inner = owner.layer if isinstance(owner, RewiredLayer) else owner
    try:
        twin = get_by_path(fresh.get_layer(owner.name), attribute)
    except (AttributeError, IndexError, KeyError, ValueError, TypeError):
        return False
    return type(twin) is type(get_by_path(inner, attribute)) and twin.built


def sublayer_problem(
    model: keras.Model, owner: Any, attribute: str, fresh_models: dict[int, Any] | None = None
) -> str | None:
    """Why the sublayer at ``attribute`` of the custom layer ``owner`` (in ``model``) cannot be replaced in a model
    that saves: ``None`` when it can, in a copy of ``owner`` or, when ``owner`` does not copy from its config, in
    its model re-created as a whole (kept in ``fresh_models``, ``{id(model): it}``, for the rewrite)."""
    problem = replacement_problem(owner, attribute)
    if problem and replaceable_in_whole(model, owner, attribute, {} if fresh_models is None else fresh_models):
        return None
    return problem


def rebuilt(
    model: keras.Model,
    fresh: keras.Model,
    targets: dict[int, tuple[str, Any]],
    inner: dict[int, tuple[Any, dict[str, tuple[str, Any]]]],
    make_twin: Callable[[Any, Any, Any], Any],
) -> tuple[RewiredModel, dict[int, dict[str, list[np.ndarray]]]]:
    """``fresh`` (``model`` re-created from its config) as a :class:`RewiredModel` with ``model``'s planned layers
    replaced by ``make_twin(layer, scheme, rank)``: ``targets`` (``{id(layer): (scheme, rank)}``) for layers of its
    graph, ``inner`` (``{id(custom layer): (it, {attribute: (scheme, rank)})}``) for layers inside its custom layers.

    Returns the new model and, for each of its custom layers with replacements, the weights each replacement holds
    (``{id(new custom layer): {attribute: weights}}``, for :func:`tfcompress.rewire.fill_rewired`); the other
    weights are still ``fresh``'s own.
    """
    replacements: dict[str, Any] = {}
    shapes: dict[str, tuple] = {}
    values_by_owner: dict[str, dict[str, list[np.ndarray]]] = {}
    for old in model.layers:
        if id(old) in targets:
            scheme, rank = targets[id(old)]
            replacements[old.name] = make_twin(old, scheme, rank)
        elif id(old) in inner:
            source = old.layer if isinstance(old, RewiredLayer) else old
            values: dict[str, list[np.ndarray]] = {}
            for attribute, (scheme, rank) in inner[id(old)][1].items():
                original = get_by_path(source, attribute)
                twin = make_twin(original, scheme, rank)
                key = f"{old.name}/{attribute}"
                replacements[key] = twin
                values[attribute] = twin.get_weights()
                shape = built_input_shape(twin)
                if shape is not None and shape != built_input_shape(original):  # reads another shape (pruned)
                    shapes[key] = shape
            values_by_owner[old.name] = values
        elif is_graph_model(old):
            planned = [r.path for r in walk_layers(old) if id(r.layer) in targets or id(r.layer) in inner]
            if planned:
                raise ValueError(
                    f"rewrite_model: '{model.name}' is re-created from its own config (some of its layers do not "
                    f"copy from theirs), and the layers {planned} of its nested model '{old.name}' cannot be "
                    "replaced there; rewrite that nested model on its own."
                )
    new = RewiredModel(fresh, replacements, build_shapes=shapes or None)
    return new, {id(new.get_layer(name)): values for name, values in values_by_owner.items()}
