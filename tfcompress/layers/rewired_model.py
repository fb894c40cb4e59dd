"""``RewiredModel``: a model re-created from its own config with some of its layers replaced, in a form that saves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from ..sublayers import get_by_path
from .rewired_layer import _unbuilt, swap_built


@keras.saving.register_keras_serializable(package="tfcompress")
class RewiredModel(keras.Model):
    """A functional model re-created from its own config, with the layers named in ``replacements`` swapped in.

    Some models' layers cannot be copied one by one from their configs, while the model as a whole re-creates from
    its own: a keras_hub ``Backbone``'s config is its constructor's arguments (keras_hub 0.32's
    ``ViTPatchingAndEmbedding`` does not accept its own config back, ``LlamaTransformerDecoder.get_config``
    raises). ``rewrite_model`` then re-creates the whole model and swaps the decomposed layers into it. This model
    carries the original model's config and the replacements, so ``.keras`` files and configs re-create it the
    same way: the model from its config, then the replacements put back in place. It has the original model's
    inputs, outputs and layer names; its own weights are its layers' weights.

    Args:
        model: the model to rewire (an instance, or its serialized form as written by
            ``keras.saving.serialize_keras_object``); used as is, so pass a fresh one. A ``RewiredModel`` keeps
            its replacements and gets the new ones on top.
        replacements: ``{key: layer}`` (instances or serialized forms). The key is a top-level layer's name, or
            ``"<top-level layer>/<attribute path>"`` for a sublayer held inside a (built) custom layer, e.g.
            ``"encoder/blocks.0.ffn"``.
        build_shapes: ``{key: input shape}`` for sublayer replacements that read another input shape than the
            original (a pruned feed-forward output layer); ``None``: none.
        **kwargs: base model arguments (``name``, ``trainable``); the name defaults to the model's.

    Example:
        >>> import keras, tfcompress as tfc
        >>> inputs = keras.Input((4,))
        >>> base = keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs), name="base")
        >>> rewired = tfc.layers.RewiredModel(base, {"fc": tfc.SVDDense(3, rank=2, name="fc")})
        >>> type(rewired.get_layer("fc")).__name__, rewired.name
        ('SVDDense', 'base')
    """

    def __init__(
        self, model: Any, replacements: Mapping[str, Any], build_shapes: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if isinstance(model, Mapping):
            model = keras.saving.deserialize_keras_object(dict(model))
        if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
            raise TypeError(f"RewiredModel: `model` must be a built functional Keras model, got {model!r}.")
        if not isinstance(replacements, Mapping):
            raise TypeError(f"RewiredModel: `replacements` must be a {{key: layer}} dict, got {replacements!r}.")
        shapes = {str(k): tuple(v) for k, v in dict(build_shapes or {}).items()}
        if set(shapes) - set(replacements):
            raise ValueError(
                f"RewiredModel: `build_shapes` names keys that are not replaced: {sorted(set(shapes) - set(replacements))}."
            )
        if isinstance(model, RewiredModel):  # rewired again: its replacements stay, the new ones go on top
            source, keys, shapes = model._source, [*model._keys], {**model._build_shapes, **shapes}
        else:
            source, keys = keras.saving.serialize_keras_object(model), []  # the model's own config, before the swaps
        top: dict[str, Any] = {}
        for key, new in replacements.items():
            if isinstance(new, Mapping):
                new = keras.saving.deserialize_keras_object(dict(new))
            if not isinstance(new, keras.layers.Layer):
                raise TypeError(f"RewiredModel: the replacement for {key!r} must be a Keras layer, got {new!r}.")
            name, _, attribute = str(key).partition("/")
            try:
                holder = model.get_layer(name)
            except ValueError:
                raise ValueError(f"RewiredModel: model '{model.name}' has no layer '{name}' (key {key!r}).") from None
            if attribute:
                if not holder.built:
                    raise ValueError(f"RewiredModel: layer '{name}' of '{model.name}' is not built.")
                swap_built(holder, attribute, new, shapes.get(key))
            else:
                top[name] = new
            if key not in keys:
                keys.append(str(key))
        if top:  # a layer of the graph itself: the graph is run again through the replacement
            graph = keras.models.clone_model(model, clone_function=lambda layer: top.get(layer.name, layer))
            inputs, outputs = graph.input, graph.output
        else:
            inputs, outputs = model.input, model.output
        kwargs.setdefault("name", model.name)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        # plain attributes, not tracked: the layers are tracked through the graph
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_keys", tuple(keys))
        object.__setattr__(self, "_build_shapes", shapes)

    @property
    def replacements(self) -> dict[str, Any]:
        """``{key: replacing layer}`` as this model holds them (earlier rewirings included)."""
        out = {}
        for key in self._keys:
            name, _, attribute = key.partition("/")
            layer = self.get_layer(name)
            out[key] = get_by_path(layer, attribute) if attribute else layer
        return out

    @property
    def build_shapes(self) -> dict[str, tuple]:
        """``{key: input shape}`` given for replacements that read another shape than the original."""
        return dict(self._build_shapes)

    @property
    def source_config(self) -> dict[str, Any]:
        """The serialized form of the model this one was re-created from (before any replacement)."""
        return dict(self._source)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.name, "trainable": self.trainable, "model": self._source}
        config["replacements"] = {key: _unbuilt(layer) for key, layer in self.replacements.items()}
        if self._build_shapes:
            config["build_shapes"] = {key: list(shape) for key, shape in self._build_shapes.items()}
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> RewiredModel:
        return cls(**config)
