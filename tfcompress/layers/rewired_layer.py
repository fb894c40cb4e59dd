"""``RewiredLayer``: a custom layer some of whose sublayers are replaced by decomposed twins, in a form that saves."""

from __future__ import annotations

import functools
import inspect
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

    A sublayer the custom layer creates in ``__init__`` is replaced before the layer builds. One it creates in
    ``build()`` (MultiHeadAttention's projections, a keras_hub ``TransformerEncoder``'s feed-forward layers) does
    not exist yet then: it is replaced right after the layer's own ``build()`` has run, by the replacement built
    for the input shape the original sublayer was built with, or for the one in ``build_shapes`` (a pruned
    feed-forward output layer reads fewer hidden units than the original). Either way the wrapped layer's weights are its
    replacements' weights, so ``.keras`` files save and load them through Keras' own object tree.

    Args:
        layer: the custom layer (an instance, or its serialized form as written by
            ``keras.saving.serialize_keras_object``); used as is, so pass a fresh, unbuilt one.
        replacements: ``{attribute path: layer}`` (instances or serialized forms), e.g. ``{"convs.1": twin}``.
        build_shapes: ``{attribute path: input shape}`` for replacements that the wrapped layer builds itself
            (in its ``build()``) and that read another input shape than the original sublayer; ``None``: none.
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

    def __init__(
        self, layer: Any, replacements: Mapping[str, Any], build_shapes: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if isinstance(layer, Mapping):
            layer = keras.saving.deserialize_keras_object(dict(layer))
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"RewiredLayer: `layer` must be a Keras layer or its serialized form, got {layer!r}.")
        if not isinstance(replacements, Mapping) or not replacements:
            raise ValueError(
                f"RewiredLayer: `replacements` must be a non-empty {{attribute path: layer}} dict, got {replacements!r}."
            )
        shapes = {str(k): tuple(v) for k, v in dict(build_shapes or {}).items()}
        if set(shapes) - set(replacements):
            raise ValueError(
                f"RewiredLayer: `build_shapes` names paths that are not replaced: {sorted(set(shapes) - set(replacements))}."
            )
        kwargs.setdefault("name", layer.name)
        super().__init__(**kwargs)
        built: list[str] = []
        late: dict[str, Any] = {}
        for path, new in replacements.items():
            if isinstance(new, Mapping):
                new = keras.saving.deserialize_keras_object(dict(new))
            if not isinstance(new, keras.layers.Layer):
                raise TypeError(f"RewiredLayer: the replacement at {path!r} must be a Keras layer, got {new!r}.")
            try:
                old = get_by_path(layer, path)
            except (AttributeError, IndexError, KeyError, ValueError, TypeError):
                old = None
            if old is None and not layer.built and _builds_sublayers(layer):
                late[path] = new  # created by the layer's build(): replaced right after it
                built.append(path)
                continue
            if old is None:
                raise ValueError(
                    f"RewiredLayer: layer '{layer.name}' ({type(layer).__name__}) has no sublayer at {path!r}."
                )
            if not isinstance(old, keras.layers.Layer):
                raise ValueError(f"RewiredLayer: {path!r} of layer '{layer.name}' is not a layer.")
            if old.built and layer.built:  # a layer that builds itself from its config (keras_hub's decoder)
                swap_built(layer, path, new, shapes.get(path))
            elif old.built:
                raise ValueError(
                    f"RewiredLayer: the sublayer {path!r} of '{layer.name}' is already built; pass a fresh layer "
                    "(e.g. type(layer).from_config(layer.get_config()))."
                )
            else:
                set_by_path(layer, path, new)
            built.append(path)
        self.layer = layer
        self._paths = tuple(built)  # the replacements live in the wrapped layer only (tracked once, saved once)
        self._build_shapes = shapes
        self._late = late  # emptied once they are in place; a plain dict attribute would be tracked: see below
        if late:
            _replace_after_build(layer, late, shapes)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in (
            "_late",
            "_build_shapes",
        ):  # pending replacements are not this layer's sublayers (Keras must not track them)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def replacements(self) -> dict[str, Any]:
        """``{attribute path: replacing layer}``, as the wrapped layer holds them (or will, once built)."""
        return {path: self._late[path] if path in self._late else get_by_path(self.layer, path) for path in self._paths}

    def build(self, *args: Any, **kwargs: Any) -> None:
        self.built = True  # the wrapped layer builds itself (and its replacements) on its first call

    def call(self, *args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            # a replaced sublayer held as a plain attribute stays in Keras' tracking, unbuilt and unused; Keras would
            # take it for unbuilt state of the wrapped layer and warn at its first call
            warnings.filterwarnings("ignore", message=r"`build\(\)` was called on layer", category=UserWarning)
            return self.layer(*args, **kwargs)

    def compute_output_spec(self, *args: Any, **kwargs: Any) -> Any:
        if not self.layer.built and (
            self._late or _builds_sublayers(self.layer)
        ):  # build it now (late replacements go in right after): a layer whose own
            # compute_output_shape answers without building (Gemma's decoder block) would otherwise stay unbuilt
            _build_for_call(self.layer, args, kwargs)
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        inner = keras.saving.serialize_keras_object(self.layer)
        inner.pop("build_config", None)  # built on the first call, after the replacements are back in place
        config["layer"] = inner
        config["replacements"] = {path: _unbuilt(new) for path, new in self.replacements.items()}
        if self._build_shapes:  # only when given: configs of SVD rewrites stay as they were
            config["build_shapes"] = {path: list(shape) for path, shape in self._build_shapes.items()}
        return config

    @property
    def build_shapes(self) -> dict[str, tuple]:
        """``{attribute path: input shape}`` given for replacements that read another shape than the original."""
        return dict(self._build_shapes)


def _unbuilt(layer: Any) -> dict[str, Any]:
    """``layer`` serialized without its build config: it is built where it is put back (by the owner's ``build()``,
    its first call, or right after the owner's build), never twice."""
    config = keras.saving.serialize_keras_object(layer)
    config.pop("build_config", None)
    return config


def _builds_sublayers(layer: Any) -> bool:
    """Whether ``layer`` has a ``build()`` of its own (where it may create sublayers)."""
    return type(layer).build is not keras.layers.Layer.build


def _holder(owner: Any, path: str) -> Any:
    """The layer whose attribute (or list/dict attribute) holds the object at ``path``."""
    holder = owner
    steps = path.split(".")
    value = owner
    for step in steps[:-1]:
        value = get_by_path(value, step)
        if isinstance(value, keras.layers.Layer):
            holder = value
    return holder


def swap_built(owner: Any, path: str, new: Any, shape: Any = None) -> None:
    """Put ``new`` at ``path`` of the built ``owner`` in place of the built sublayer there: ``new`` is built for
    ``shape`` (default: the input shape the old one was built with), and the holding layer tracks ``new`` instead of the old one (its weights,
    its parameter count and its saved state become ``new``'s).

    Keras locks a built layer's tracked state; like Keras' own ``quantize()``, the lock is lifted for the swap.
    """
    old = get_by_path(owner, path)
    if not isinstance(old, keras.layers.Layer):
        raise ValueError(f"RewiredLayer: {path!r} of layer '{owner.name}' is not a layer once it is built.")
    if not new.built and shape is not None:
        new.build(tuple(shape))
    if not new.built:
        config = old.get_build_config()
        if not config:
            raise ValueError(f"RewiredLayer: the sublayer {path!r} of '{owner.name}' was not built by its owner.")
        new.build_from_config(config)
    holder = _holder(owner, path)
    tracker = holder._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        set_by_path(owner, path, new)
        tracker.untrack(old)
    finally:
        if locked:
            tracker.lock()


def _replace_after_build(layer: Any, late: dict[str, Any], shapes: Mapping[str, tuple]) -> None:
    """Make ``layer``'s build (Keras' wrapper, an instance attribute) put the ``late`` replacements in place as soon
    as it has run (built for ``shapes[path]`` where given), and empty ``late``."""
    build = layer.build

    @functools.wraps(build)  # Keras reads build()'s signature to pass the input shapes
    def build_then_replace(*args: Any, **kwargs: Any) -> None:
        build(*args, **kwargs)
        for path, new in list(late.items()):
            swap_built(layer, path, new, shapes.get(path))
            del late[path]

    object.__setattr__(layer, "build", build_then_replace)


def _build_for_call(layer: Any, args: tuple, kwargs: dict[str, Any]) -> None:
    """Build ``layer`` for a call on ``args``/``kwargs`` the way Keras' ``__call__`` does: a one-argument ``build``
    gets the first tensor's shape, a longer one ``<name>_shape`` for each tensor argument ``<name>`` of ``call``."""
    try:
        bound = inspect.signature(layer.call).bind(*args, **kwargs).arguments
    except TypeError as err:
        raise ValueError(f"RewiredLayer: cannot build '{layer.name}' for this call ({err}).") from None
    shapes = {f"{name}_shape": tuple(value.shape) for name, value in bound.items() if hasattr(value, "shape")}
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in inspect.signature(layer.build).parameters.values() if p.kind in kinds]
    if len(names) == 1:
        layer.build(next(iter(shapes.values()), None))
    else:
        layer.build(**{name: shapes[name] for name in names if name in shapes})


def replaceable(layer: Any, path: str) -> str | None:
    """Why the sublayer at ``path`` of the custom layer ``layer`` cannot be replaced in a saved model (``None`` when
    it can): the layer must re-create from its config, and the sublayer must exist right after that or, when the
    layer creates it in its own ``build()``, once the re-created layer is built.

    Example:
        >>> import keras
        >>> class Late(keras.layers.Layer):
        ...     def build(self, shape):
        ...         self.fc = keras.layers.Dense(4)
        ...     def call(self, x):
        ...         return self.fc(x)
        >>> late = Late()
        >>> _ = late(keras.ops.ones((1, 3)))
        >>> replaceable(late, "fc") is None
        True
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
        if layer.built and _builds_sublayers(layer) and isinstance(original, keras.layers.Layer) and original.built:
            return None  # created in build(): replaced right after the re-created layer's build
        return "it is not there when the layer is re-created from its config (nor created by its build())"
    if type(twin) is not type(original) or (twin.built and not fresh.built):
        return "the layer re-created from its config holds another layer there"
    return None
