"""``RewiredLayer``: a custom layer some of whose sublayers are replaced by decomposed twins, in a form that saves."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import keras

from ..sublayers import get_by_path, set_by_path


@keras.saving.register_keras_serializable(package="tfcompress")
class RewiredLayer(keras.layers.Layer):
    """Runs a custom layer whose sublayers at the given attribute paths are replaced by other layers.

    A custom layer re-creates its sublayers from its own config when a model is loaded, so a sublayer replaced in
    place would come back as the original and the saved weights would not fit. This wrapper carries the
    replacements in its config and puts them back, before the layer is built, every time it is created: from a
    rewrite, from a ``.keras`` file, or from a config. It computes exactly what the wrapped layer computes with its
    replacements; it has no weights of its own.

    Only sublayers that the custom layer creates in ``__init__`` (so that they exist, unbuilt, right after
    ``from_config``) can be replaced this way; sublayers created in ``build()`` cannot (see
    :func:`replaceable`).

    Args:
        layer: the custom layer (an instance, or its serialized form as written by
            ``keras.saving.serialize_keras_object``); used as is, so pass a fresh, unbuilt one.
        replacements: ``{attribute path: layer}`` (instances or serialized forms), e.g. ``{"convs.1": twin}``.
        **kwargs: base layer arguments (``name``, ...); the name defaults to the wrapped layer's.

    Input and output shapes: those of the wrapped layer.

    Example:
        >>> import keras, tfcompress as tfc
        >>> class Block(keras.layers.Layer):
        ...     def __init__(self, units=8, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.units = units
        ...         self.fc = keras.layers.Dense(units)
        ...     def call(self, x):
        ...         return self.fc(x)
        ...     def get_config(self):
        ...         return {**super().get_config(), "units": self.units}
        >>> wrapped = tfc.layers.RewiredLayer(Block(name="blk"), {"fc": tfc.SVDDense(8, rank=2)})
        >>> tuple(wrapped(keras.ops.ones((3, 16))).shape), wrapped.name, type(wrapped.layer.fc).__name__
        ((3, 8), 'blk', 'SVDDense')
    """

    def __init__(self, layer: Any, replacements: Mapping[str, Any], **kwargs: Any) -> None:
        if isinstance(layer, Mapping):
            layer = keras.saving.deserialize_keras_object(dict(layer))
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"RewiredLayer: `layer` must be a Keras layer or its serialized form, got {layer!r}.")
        if not isinstance(replacements, Mapping) or not replacements:
            raise ValueError(
                f"RewiredLayer: `replacements` must be a non-empty {{attribute path: layer}} dict, got {replacements!r}."
            )
        kwargs.setdefault("name", layer.name)
        super().__init__(**kwargs)
        built: list[str] = []
        for path, new in replacements.items():
            if isinstance(new, Mapping):
                new = keras.saving.deserialize_keras_object(dict(new))
            if not isinstance(new, keras.layers.Layer):
                raise TypeError(f"RewiredLayer: the replacement at {path!r} must be a Keras layer, got {new!r}.")
            try:
                old = get_by_path(layer, path)
            except (AttributeError, IndexError, KeyError, ValueError, TypeError):
                raise ValueError(
                    f"RewiredLayer: layer '{layer.name}' ({type(layer).__name__}) has no sublayer at {path!r}."
                ) from None
            if not isinstance(old, keras.layers.Layer):
                raise ValueError(f"RewiredLayer: {path!r} of layer '{layer.name}' is not a layer.")
            if old.built:
                raise ValueError(
                    f"RewiredLayer: the sublayer {path!r} of '{layer.name}' is already built; pass a fresh layer "
                    "(e.g. type(layer).from_config(layer.get_config()))."
                )
            set_by_path(layer, path, new)
            built.append(path)
        self.layer = layer
        self._paths = tuple(built)  # the replacements live in the wrapped layer only (tracked once, saved once)

    @property
    def replacements(self) -> dict[str, Any]:
        """``{attribute path: replacing layer}``, as the wrapped layer holds them."""
        return {path: get_by_path(self.layer, path) for path in self._paths}

    def build(self, *args: Any, **kwargs: Any) -> None:
        self.built = True  # the wrapped layer builds itself (and its replacements) on its first call

    def call(self, *args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            # a replaced sublayer held as a plain attribute stays in Keras' tracking, unbuilt and unused; Keras would
            # take it for unbuilt state of the wrapped layer and warn at its first call
            warnings.filterwarnings("ignore", message=r"`build\(\)` was called on layer", category=UserWarning)
            return self.layer(*args, **kwargs)

    def compute_output_spec(self, *args: Any, **kwargs: Any) -> Any:
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        inner = keras.saving.serialize_keras_object(self.layer)
        inner.pop("build_config", None)  # built on the first call, after the replacements are back in place
        config["layer"] = inner
        config["replacements"] = {
            path: keras.saving.serialize_keras_object(new) for path, new in self.replacements.items()
        }
        return config


def replaceable(layer: Any, path: str) -> str | None:
    """Why the sublayer at ``path`` of the custom layer ``layer`` cannot be replaced in a saved model (``None`` when
    it can): the layer must re-create from its config, and the sublayer must exist right after that.

    Example:
        >>> import keras
        >>> class Late(keras.layers.Layer):
        ...     def build(self, shape):
        ...         self.fc = keras.layers.Dense(4)
        ...     def call(self, x):
        ...         return self.fc(x)
        >>> late = Late()
        >>> _ = late(keras.ops.ones((1, 3)))
        >>> replaceable(late, "fc")
        'it is created in build(), not in __init__, so a replacement could not be put back when the model loads'
    """
    try:
        fresh = type(layer).from_config(layer.get_config())
    except Exception as err:  # any failure: the layer does not round-trip through its config
        return f"'{layer.name}' ({type(layer).__name__}) cannot be re-created from its config ({type(err).__name__}: {err})"
    try:
        twin = get_by_path(fresh, path)
    except (AttributeError, IndexError, KeyError, ValueError, TypeError):
        twin = None
    original = get_by_path(layer, path)
    if not isinstance(twin, keras.layers.Layer):
        return "it is created in build(), not in __init__, so a replacement could not be put back when the model loads"
    if type(twin) is not type(original) or twin.built:
        return "the layer re-created from its config holds another layer there"
    return None
