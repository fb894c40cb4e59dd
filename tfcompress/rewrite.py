"""``rewrite_model``: a NEW model with chosen layers replaced by their decomposed twins.

The rewrite goes through the public ``keras.models.clone_model`` (recursively, so
nested models are rewritten too, and shared layers stay shared). Layers named in
the plan become decomposed layers with the optimal factors of their weights; all
other layers are re-created from their config and get a copy of their weights.
The argument model is never modified.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from ._checks import check_finite
from .cost import KIND_CLASSES, KIND_SCHEMES, layer_kind
from .enums import CompressionScheme
from .graph import check_graph_model, inherit_call_counts, is_graph_model, resolve_layers, walk_layers
from .layers import (
    SpatialSVDConv1D,
    SpatialSVDConv2D,
    SVDDense,
    SVDEinsumDense,
    SVDSeparableConv2D,
    TuckerConv2D,
    WeightSVDConv1D,
    WeightSVDConv2D,
    WeightSVDConv2DTranspose,
)
from .layers.base import check_source_conv, check_source_dense
from .layers.svd_einsum_dense import check_source_einsum_dense
from .rewire import NotCopyable, config_copy, fill_rewired, rewired_twin
from .whole_model import holder_of, rebuilt, recreated, sublayer_problem

__all__ = ["rewrite_model", "rewrite_sublayers", "decomposed_layer", "decomposed_class", "normalize_plan"]

logger = logging.getLogger("tfcompress")

_SCHEME_NAMES = ("svd", "weight_svd", "spatial_svd", "tucker")
_NOT_FINITE = "it cannot be decomposed (the factors would be NaN or the SVD would not end): fix the weights first"


def _scheme_name(scheme: Any, what: str) -> str:
    value = getattr(scheme, "value", scheme)
    if isinstance(value, str) and value.lower() in _SCHEME_NAMES:
        return value.lower()
    raise ValueError(
        f"{what}: scheme must be one of {list(_SCHEME_NAMES)} (or a CompressionScheme decomposition member), got {scheme!r}."
    )


#: (layer kind, per-layer scheme) -> the decomposed layer class
_TWINS: dict[tuple[str, str], Any] = {
    ("dense", "svd"): SVDDense,
    ("einsum_dense", "svd"): SVDEinsumDense,
    ("conv2d", "weight_svd"): WeightSVDConv2D,
    ("conv2d", "spatial_svd"): SpatialSVDConv2D,
    ("conv2d", "tucker"): TuckerConv2D,
    ("conv1d", "weight_svd"): WeightSVDConv1D,
    ("conv1d", "spatial_svd"): SpatialSVDConv1D,
    ("separable_conv2d", "weight_svd"): SVDSeparableConv2D,
    ("conv2d_transpose", "weight_svd"): WeightSVDConv2DTranspose,
}


def _layer_scheme(layer: Any, scheme: str) -> str:
    """The per-layer scheme actually used: Dense layers are always decomposed with plain SVD, and plain SVD of a
    SeparableConv2D (its pointwise kernel is a matrix) is its weight SVD."""
    if isinstance(layer, keras.layers.Dense | keras.layers.EinsumDense) and scheme in ("weight_svd", "spatial_svd"):
        return "svd"
    if isinstance(layer, keras.layers.SeparableConv2D) and scheme == "svd":
        return "weight_svd"
    return scheme


def decomposed_class(layer: Any, scheme: str) -> Any:
    """The decomposed layer class for ``layer`` under the per-layer ``scheme``, ``None`` when there is none.

    Example:
        >>> import keras
        >>> decomposed_class(keras.layers.Conv1D(8, 3), "spatial_svd").__name__
        'SpatialSVDConv1D'
    """
    kind = layer_kind(layer)
    return None if kind is None else _TWINS.get((kind, _layer_scheme(layer, scheme)))


def _source_kernel(layer: Any) -> Any:
    """The kernel variable a decomposition factorises: the pointwise kernel of a SeparableConv2D, else ``kernel``."""
    return layer.pointwise_kernel if isinstance(layer, keras.layers.SeparableConv2D) else layer.kernel


def _check_rank_value(rank: Any, scheme: str, where: str) -> int | tuple[int, int]:
    if scheme == "tucker":
        if isinstance(rank, int | np.integer):
            rank = (int(rank), int(rank))
        try:
            pair = tuple(int(r) for r in rank)
        except TypeError:
            raise TypeError(f"{where}: a Tucker-2 rank must be a pair (r_in, r_out), got {rank!r}.") from None
        if len(pair) != 2:
            raise TypeError(f"{where}: a Tucker-2 rank must be a pair (r_in, r_out), got {rank!r}.")
        return pair  # type: ignore[return-value]
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
        raise TypeError(f"{where}: rank must be an int, got {rank!r}.")
    return int(rank)


def normalize_plan(plan: Mapping[Any, Any], scheme: Any = None) -> dict[Any, tuple[str, Any]]:
    """``{name: rank}`` + scheme, or ``{name: (scheme, rank)}`` -> ``{name: (scheme, rank)}``.

    Example:
        >>> normalize_plan({"c1": 8}, scheme="spatial_svd")
        {'c1': ('spatial_svd', 8)}
        >>> normalize_plan({"c1": ("weight_svd", 4), "fc": ("svd", 16)})
        {'c1': ('weight_svd', 4), 'fc': ('svd', 16)}
    """
    if not isinstance(plan, Mapping):
        raise TypeError(
            f"plan must be a dict {{layer_name: rank}} or {{layer_name: (scheme, rank)}}, got {type(plan).__name__}."
        )
    default = None if scheme is None else _scheme_name(scheme, "rewrite_model(scheme=...)")
    out: dict[Any, tuple[str, Any]] = {}
    for key, value in plan.items():
        where = f"plan entry {getattr(key, 'name', key)!r}"
        if (
            isinstance(value, tuple | list)
            and len(value) == 2
            and isinstance(getattr(value[0], "value", value[0]), str)
        ):
            entry_scheme = _scheme_name(value[0], where)
            rank = value[1]
        else:
            if default is None:
                raise ValueError(
                    f"{where}: no scheme given; pass scheme=... to rewrite_model or write the entry as (scheme, rank)."
                )
            entry_scheme, rank = default, value
        out[key] = (entry_scheme, _check_rank_value(rank, entry_scheme, where))
    return out


def decomposed_layer(layer: Any, scheme: str | CompressionScheme, rank: int | tuple[int, int]) -> keras.layers.Layer:
    """The built decomposed twin of ``layer`` (a Conv2D, Dense, EinsumDense, ...) with its optimal factors.

    ``weight_svd`` and ``spatial_svd`` applied to a ``Dense`` layer give an ``SVDDense`` (an ``EinsumDense``: an
    ``SVDEinsumDense``).

    Example:
        >>> import keras
        >>> dense = keras.layers.Dense(8)
        >>> dense.build((None, 16))
        >>> type(decomposed_layer(dense, "weight_svd", 4)).__name__
        'SVDDense'
    """
    scheme = _layer_scheme(layer, _scheme_name(scheme, f"layer '{layer.name}'"))
    cls = decomposed_class(layer, scheme)
    if cls is None:
        problem = _validate_entry(layer, scheme, rank) or f"{scheme} does not apply to it"
        raise ValueError(f"layer '{layer.name}' ({type(layer).__name__}) cannot be decomposed: {problem}.")
    check_finite(keras.ops.convert_to_numpy(_source_kernel(layer)), f"the kernel of layer '{layer.name}'", _NOT_FINITE)
    if cls is TuckerConv2D:
        return TuckerConv2D.from_layer(layer, ranks=rank)
    return cls.from_layer(layer, rank=int(rank))


def check_source(layer: Any, kind: str) -> None:
    """Raise TypeError/ValueError when ``layer`` (of ``layer_kind`` ``kind``) is not a layer its decomposed twin can
    be made from (a subclass, an unsupported configuration, ...), with the reason."""
    if kind == "dense":
        check_source_dense(layer)
    elif kind == "einsum_dense":
        check_source_einsum_dense(layer)
    else:
        check_source_conv(layer, KIND_CLASSES[kind])


def _validate_entry(layer: Any, scheme: str, rank: Any) -> str | None:
    """Problem with decomposing ``layer`` this way, or ``None`` when it is fine."""
    kind = layer_kind(layer)
    if kind is None:
        return (
            f"{type(layer).__name__} is not a Dense, EinsumDense, Conv1D, Conv2D, SeparableConv2D or Conv2DTranspose "
            "layer, the layers that can be decomposed"
        )
    scheme = _layer_scheme(layer, scheme)
    if (kind, scheme) not in _TWINS:
        if scheme == "tucker":
            return "Tucker-2 applies to Conv2D layers only"
        if scheme == "svd" and kind not in ("dense", "einsum_dense"):
            return f"plain SVD applies to Dense (and SeparableConv2D) layers; use {KIND_SCHEMES[kind][0]!r} here"
        allowed = " or ".join(repr(s) for s in KIND_SCHEMES[kind])
        return f"{scheme} does not apply to a {KIND_CLASSES[kind].__name__}; use {allowed}"
    try:
        check_source(layer, kind)
        kernel_shape = tuple(int(d) for d in _source_kernel(layer).shape)
        check_finite(keras.ops.convert_to_numpy(_source_kernel(layer)), "its kernel", _NOT_FINITE)
    except (TypeError, ValueError) as err:
        return str(err)
    cls = _TWINS[(kind, scheme)]
    if cls is SVDEinsumDense:
        bound: Any = cls.max_rank_for(kernel_shape, layer.equation)
    else:
        bound = min(kernel_shape) if cls is SVDDense else cls.max_rank_for(kernel_shape)
    ranks = rank if isinstance(rank, tuple) else (rank,)
    bounds = bound if isinstance(bound, tuple) else (bound,)
    if any(r < 1 or r > b for r, b in zip(ranks, bounds, strict=True)):
        return f"{scheme} rank {rank} is outside 1..{bound}"
    return None


_ZEROS = keras.initializers.Zeros()


class _OriginalValue(keras.initializers.Initializer):
    """Lent as a cloned layer's ``<weight>_initializer`` while the clone builds it: gives the original weight's value,
    so the new variable is created with it (instead of zeros overwritten by ``set_weights``). ``used_once`` tells
    whether it was asked exactly once for the right shape; if not, the layer gets ``set_weights`` as usual."""

    def __init__(self, value: np.ndarray) -> None:
        self.value: np.ndarray | None = value
        self.shape = value.shape
        self.calls = 0
        self.matched = True

    def __call__(self, shape: Any, dtype: Any = None) -> Any:
        self.calls += 1
        value, self.value = self.value, None  # the new variable keeps its own copy: no second copy of the model
        if value is not None and tuple(shape) == self.shape:
            try:
                return value if dtype is None else np.asarray(value, dtype=dtype)
            except TypeError:  # a dtype numpy does not know (bfloat16): zeros, then set_weights
                pass
        self.matched = False
        return _ZEROS(shape, dtype=dtype)

    @property
    def used_once(self) -> bool:
        return self.calls == 1 and self.matched


def _original_values(layer: Any) -> dict[str, _OriginalValue]:
    """``{"<name>_initializer": value}`` for each weight of a built-in Keras layer, when every weight has such an
    initializer attribute (Conv2D's kernel and bias, BatchNormalization's gamma, beta and moving statistics, ...);
    empty otherwise (custom layers, layers whose weights live in sublayers, ...), so they take ``set_weights``."""
    if not type(layer).__module__.startswith("keras."):
        return {}
    weights = layer.weights
    names = [str(w.name).rsplit("/", 1)[-1] for w in weights]
    if len(set(names)) != len(names):
        return {}
    attributes = vars(layer)
    if any(not isinstance(attributes.get(f"{name}_initializer"), keras.initializers.Initializer) for name in names):
        return {}
    return {
        f"{name}_initializer": _OriginalValue(value) for name, value in zip(names, layer.get_weights(), strict=True)
    }


def _clone_operation(operation: Any) -> Any:
    """A copy of a graph node that is a Keras operation but not a layer (``x + 3.0``, ``x[:, 0]``,
    ``keras.ops.reshape``, ...). Operations hold no weights; like ``clone_model``'s default, the copy is re-created
    from its config. An operation whose config does not re-create it is stateless, so the same object is used again
    (it then belongs to both graphs, as a shared layer would)."""
    try:
        return operation.__class__.from_config(operation.get_config())
    except (TypeError, ValueError, NotImplementedError, KeyError):
        return operation


def _named_inputs(model: keras.Model) -> Any:
    """New ``keras.Input`` tensors, in the structure of ``model.input``, named like its input layers.

    ``clone_model`` would otherwise name new inputs after their tensors, so an input
    layer called ``input_layer`` would come back as ``keras_tensor``.
    """
    if isinstance(model, keras.Sequential):
        return None
    by_output = {id(layer.output): layer for layer in model.layers if isinstance(layer, keras.layers.InputLayer)}
    if any(id(tensor) not in by_output for tensor in model.inputs):
        return None

    def fresh(tensor: Any) -> Any:
        return keras.Input(
            batch_shape=tuple(tensor.shape),
            dtype=tensor.dtype,
            sparse=bool(getattr(tensor, "sparse", False)),
            name=by_output[id(tensor)].name,
        )

    return keras.tree.map_structure(fresh, model.input)


def rewrite_model(
    model: keras.Model,
    plan: Mapping[Any, Any],
    scheme: Any = None,
    *,
    data: Any = None,
    num_reconstruction_samples: int = 2000,
) -> keras.Model:
    """A new model in which each layer of ``plan`` is replaced by its decomposed twin.

    Args:
        model: a built Sequential or Functional model (nested models, shared layers
            and several inputs/outputs are fine). It is not modified.
        plan: ``{layer_name: rank}`` with ``scheme``, or ``{layer_name: (scheme, rank)}``
            to mix schemes (``"svd"`` for Dense, ``"weight_svd"``, ``"spatial_svd"``,
            ``"tucker"`` with a pair of ranks). A layer of a nested model is named by
            its plain name when unique, else by ``"outer/inner"``; layer objects work too.
        scheme: the scheme for a ``{name: rank}`` plan.
        data: model inputs (an array with the batch axis first, ``(x, y)``, ``(x, y, weights)`` or a
            ``tf.data.Dataset``) to fit the factors to: the decomposed layers are then refitted in forward order
            so that each reproduces the original layer's outputs from the new model's inputs, at
            ``num_reconstruction_samples`` sampled positions per layer (see :mod:`tfcompress.data_fit`; layers
            whose inputs cannot be read keep the data-free factors). ``None``: data-free factors.

    Returns:
        A new model with the same inputs, outputs and layer names; decomposed layers
        carry the optimal factors of the original weights, all other layers a copy
        of theirs. If ``model`` was compiled, the new model is compiled the same way
        (with a fresh optimizer).

    Example:
        >>> import keras, tfcompress as tfc
        >>> model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, name="c1"),
        ...                           keras.layers.Flatten(), keras.layers.Dense(10, name="fc")])
        >>> new = tfc.rewrite_model(model, {"c1": ("spatial_svd", 4), "fc": ("svd", 8)})
        >>> [type(layer).__name__ for layer in new.layers]
        ['SpatialSVDConv2D', 'Flatten', 'SVDDense']
    """
    check_graph_model(model)
    images = None
    if data is not None:
        from .data_fit import sample_images

        images = sample_images(data, model, num_reconstruction_samples, "rewrite_model")
    entries = normalize_plan(plan, scheme)
    refs = walk_layers(model)
    try:
        resolved = resolve_layers(refs, entries.keys(), what="rewrite_model plan")
    except ValueError:  # perhaps a layer inside a custom layer ("block/ffn"): look inside them too
        resolved = resolve_layers(walk_layers(model, sublayers=True), entries.keys(), what="rewrite_model plan")
    problems = []
    targets: dict[int, tuple[str, Any]] = {}
    inner: dict[int, tuple[Any, dict[str, tuple[str, Any]]]] = {}  # id(custom layer) -> (it, {attribute: entry})
    fresh_models: dict[int, Any] = {}  # id(graph model) -> it re-created from its own config (None: it cannot be)
    for key, (entry_scheme, rank) in entries.items():
        ref = resolved[key]
        problem = _validate_entry(ref.layer, entry_scheme, rank)
        if not problem and ref.owner is not None:
            problem = sublayer_problem(model, ref.owner, ref.attribute, fresh_models)
        if problem:
            problems.append(f"'{ref.path}': {problem}")
        elif id(ref.layer) in targets and targets[id(ref.layer)] != (entry_scheme, rank):
            problems.append(f"'{ref.path}': named twice with different entries")
        else:
            targets[id(ref.layer)] = (entry_scheme, rank)
            if ref.owner is not None:
                inner.setdefault(id(ref.owner), (ref.owner, {}))[1][ref.attribute] = (entry_scheme, rank)
    if problems:
        raise ValueError("rewrite_model cannot apply the plan: " + "; ".join(problems) + ".")
    new_model = _clone_rewritten(model, refs, targets, inner, decomposed_layer, fresh_models)
    if images is not None:
        from .data_fit import refit_forward

        refit_forward(model, new_model, images, samples=num_reconstruction_samples)
    return new_model


def _clone_rewritten(
    model: keras.Model,
    refs: list[Any],
    targets: dict[int, tuple[str, Any]],
    inner: dict[int, tuple[Any, dict[str, tuple[str, Any]]]],
    make_twin: Callable[[Any, Any, Any], Any],
    fresh_models: dict[int, Any] | None = None,
) -> keras.Model:
    """The clone of ``model`` with the top-level layers of ``targets`` (``{id(layer): (scheme, rank)}``) replaced
    by ``make_twin(layer, scheme, rank)``, and each custom layer of ``inner`` (``{id(layer): (layer, {attribute:
    (scheme, rank)})}``) by a :class:`~tfcompress.layers.RewiredLayer`; every other weight copied.

    A (nested) model with a layer that does not copy from its config is re-created as a whole from its own config
    (:mod:`tfcompress.whole_model`), taken from ``fresh_models`` (``{id(model): it re-created}``) when there."""
    rewired: dict[int, dict[str, list[np.ndarray]]] = {}  # id(new RewiredLayer) -> the replacements' weights

    # The re-created layers' weights would be overwritten with copies of the originals right after the clone, so
    # drawing random initial values for them (most of a clone's variable-creation time) is wasted. While the clone
    # builds them, their initializer attributes are lent: a built-in Keras layer whose every weight ``w`` has a
    # ``w_initializer`` attribute is built straight from the original values (no second write); any other layer is
    # built with zeros and gets ``set_weights`` afterwards. The real initializers are put back, so configs are
    # unchanged.
    lent: list[tuple[Any, str, Any]] = []
    preset: dict[int, list[_OriginalValue]] = {}  # id(new layer) -> its lent values, checked after the clone

    # id(graph model) -> it re-created from its config (None: used, re-create again if needed)
    rebuild: dict[int, keras.Model | None] = {}
    memo: dict[int, Any] = {}  # id(layer) -> its copy: a layer shared between nested models stays shared

    def copy_layer(layer: Any) -> Any:
        if id(layer) in inner:
            owner, owner_entries = inner[id(layer)]
            twin, values = rewired_twin(owner, owner_entries, make_twin)
            rewired[id(twin)] = values
            return twin
        if id(layer) in targets:
            entry_scheme, rank = targets[id(layer)]
            logger.debug("rewriting %s with %s rank %s", layer.name, entry_scheme, rank)
            return make_twin(layer, entry_scheme, rank)
        new = config_copy(layer)
        if layer.weights:  # its weights will be copied: skip drawing random ones
            values = _original_values(layer)
            for attribute, value in list(vars(new).items()):
                if isinstance(value, keras.initializers.Initializer) and (
                    attribute in values or not isinstance(value, keras.initializers.Zeros)
                ):
                    lent.append((new, attribute, value))
                    setattr(new, attribute, values.get(attribute, _ZEROS))
            if values:
                preset[id(new)] = list(values.values())
        return new

    def clone_function(layer: Any) -> Any:
        if id(layer) in memo:
            return memo[id(layer)]
        if not isinstance(layer, keras.layers.Layer):
            new = _clone_operation(layer)
        elif is_graph_model(layer):
            new = copy_graph(layer, None)
        else:
            try:
                new = copy_layer(layer)
            except NotCopyable as failure:
                failure.node = layer
                raise
        memo[id(layer)] = new
        return new

    def copy_graph(graph: keras.Model, inputs: Any) -> keras.Model:
        if id(graph) in rebuild:  # its layers do not copy from their configs: the whole model is re-created
            fresh = rebuild[id(graph)] or recreated(graph, NotCopyable(graph, RuntimeError("copied twice")))
            rebuild[id(graph)] = None
            new_graph, values = rebuilt(graph, fresh, targets, inner, make_twin)
            rewired.update(values)
            return new_graph
        try:
            return keras.models.clone_model(graph, input_tensors=inputs, clone_function=clone_function)
        except (TypeError, ValueError):
            if inputs is None:
                raise
            # an input structure clone_model does not accept back: let it create the inputs itself
            # (only the input layers' names can then differ)
            return keras.models.clone_model(graph, clone_function=clone_function)

    inputs = _named_inputs(model)
    # models the plan's check already re-created whole (a custom layer with replacements does not copy from its config)
    rebuild.update({key: fresh for key, fresh in (fresh_models or {}).items() if fresh is not None})
    try:
        while True:
            try:
                new_model = copy_graph(model, inputs)
                break
            except NotCopyable as failure:
                holder = holder_of(model, failure.node)
                if holder is None or id(holder) in rebuild:
                    raise ValueError(f"rewrite_model: cannot copy the layer {failure}.") from None
                rebuild[id(holder)] = recreated(holder, failure)
                memo.clear()
                rewired.clear()
                preset.clear()
    finally:
        for layer, attribute, value in lent:
            setattr(layer, attribute, value)
    inherit_call_counts(model, new_model)  # the clone's layers run as often as the original's
    new_refs = walk_layers(new_model)
    if [r.path for r in new_refs] != [r.path for r in refs]:
        raise RuntimeError(
            "rewrite_model: the cloned model's layers do not line up with the original's (please report this)."
        )
    for old, new in zip(refs, new_refs, strict=True):
        if id(new.layer) in rewired:
            fill_rewired(old.layer, new.layer, rewired[id(new.layer)])
            continue
        if id(old.layer) in targets:
            continue
        values = preset.get(id(new.layer))
        if values and all(value.used_once for value in values):
            continue  # built from the original values already
        weights = old.layer.get_weights()
        if weights:
            new.layer.set_weights(weights)
            # preprocessing layers (an adapted Normalization) compute what they apply from their weights only in
            # finalize_state(); without it the copy would normalise with its initial statistics
            finalize = getattr(new.layer, "finalize_state", None)
            if callable(finalize):
                finalize()
    if getattr(model, "compiled", False):
        try:
            new_model.compile_from_config(model.get_compile_config())
        except Exception as err:  # a custom loss/metric that cannot be re-created from config
            warnings.warn(
                f"rewrite_model: could not compile the new model like the original ({err}); compile it yourself.",
                stacklevel=2,
            )
    return new_model


def rewrite_sublayers(
    model: keras.Model, replacements: Mapping[tuple[str, str | None], keras.layers.Layer]
) -> keras.Model:
    """A new model in which each layer named in ``replacements`` by ``(top-level layer path, attribute path inside
    it or None)`` is replaced by the given built layer, which keeps its own weights (it may read another input
    shape: a pruned feed-forward layer). ``model`` is not modified. Used by feed-forward pruning; ``rewrite_model``
    is the public way to decompose layers.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")])
        >>> twin = keras.layers.Dense(3, name="fc")
        >>> twin.build((None, 4))
        >>> new = rewrite_sublayers(model, {("fc", None): twin})
        >>> new.get_layer("fc") is twin
        True
    """
    check_graph_model(model)
    refs = walk_layers(model)
    by_path = {ref.path: ref for ref in refs}
    targets: dict[int, tuple[str, Any]] = {}
    inner: dict[int, tuple[Any, dict[str, tuple[str, Any]]]] = {}
    fresh_models: dict[int, Any] = {}
    for (path, attribute), layer in replacements.items():
        ref = by_path.get(path)
        if ref is None:
            raise ValueError(f"rewrite_sublayers: no layer '{path}' in '{model.name}'.")
        if attribute is None:
            targets[id(ref.layer)] = ("given", layer)
            continue
        problem = sublayer_problem(model, ref.layer, attribute, fresh_models)
        if problem:
            raise ValueError(f"rewrite_sublayers: '{path}' {attribute!r} cannot be replaced: {problem}.")
        inner.setdefault(id(ref.layer), (ref.layer, {}))[1][attribute] = ("given", layer)
    return _clone_rewritten(model, refs, targets, inner, lambda old, scheme, given: given, fresh_models)
