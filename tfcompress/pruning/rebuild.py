"""Winnowing: the smaller model of a pruning plan, rebuilt from modified layer configs with sliced weights.

:func:`apply_pruning` maps ``{unit: kept channels}`` to kept input/output/per-channel indices per layer
(:func:`_plan`), rebuilds the model with ``keras.models.clone_model`` (producers narrowed, configs that name a
channel count rewritten, ChannelGather layers inserted) and sets sliced copies of the weights.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ..graph import check_graph_model
from ..rewrite import _named_inputs
from .groups import PruneUnit, prune_units
from .kinds import (
    _channelwise_count,
    _in_channels,
    _is_decomposed,
    _is_separable,
    _is_target_type,
    _kernels,
    _narrow_config,
    _out_channels,
    _slice_channelwise,
)
from .separable import slice_separable

__all__ = ["KeptChannels", "apply_pruning", "kept_channels"]

# ---------------------------------------------------------------- rebuilding


def _kept_unit(value: Any, unit: PruneUnit, what: str) -> np.ndarray:
    try:
        kept = np.asarray(value)
    except (TypeError, ValueError):
        kept = np.asarray([object()])
    if kept.dtype == bool and kept.shape == (unit.channels,):
        kept = np.flatnonzero(kept)
    if kept.ndim != 1 or kept.size == 0 or not np.issubdtype(kept.dtype, np.integer):
        raise ValueError(
            f"{what}: unit '{unit.name}': give the kept unit channels as a non-empty list of ints in "
            f"0..{unit.channels - 1} (at least one), got {value!r}."
        )
    if kept.min() < 0 or kept.max() >= unit.channels or len(np.unique(kept)) != kept.size:
        raise ValueError(
            f"{what}: unit '{unit.name}': kept channels must be distinct indices in 0..{unit.channels - 1}, "
            f"got {value!r}."
        )
    return np.sort(kept).astype(np.int64)


def _complement(total: int, removed: set[int]) -> np.ndarray | None:
    if not removed:
        return None
    return np.asarray([i for i in range(total) if i not in removed], dtype=np.int64)


def _slice_weights(
    layer: Any,
    weights: list[np.ndarray],
    keep_in: np.ndarray | None,
    keep_out: np.ndarray | None,
    keep_cw: np.ndarray | None,
) -> list[np.ndarray]:
    if _is_target_type(layer) or (
        isinstance(layer, keras.layers.Conv2D | keras.layers.Dense) and type(layer) is not keras.layers.DepthwiseConv2D
    ):
        return _sliced(layer, weights, keep_in, keep_out)
    if keep_cw is None:
        return weights
    return _slice_channelwise(layer, weights, keep_cw)


def _set_weights(layer: Any, values: list[np.ndarray]) -> None:
    """``layer.set_weights(values)``, then let an adapted ``Normalization`` recompute the mean and variance it
    divides by from its (new) state variables, as loading a saved model does; ``set_weights`` alone leaves it
    using the old ones."""
    layer.set_weights(values)
    if isinstance(layer, keras.layers.Normalization):
        layer.finalize_state()


def _compile_like(model: keras.Model, new_model: keras.Model, what: str) -> None:
    if getattr(model, "compiled", False):
        try:
            new_model.compile_from_config(model.get_compile_config())
        except Exception as err:  # a custom loss/metric that cannot be re-created from config
            warnings.warn(f"{what}: could not compile the new model like the original ({err}).", stacklevel=3)


def _rebuild(
    model: keras.Model,
    keep_out: Mapping[str, np.ndarray],
    gathers: Mapping[str, np.ndarray],
    keep_cw: Mapping[str, np.ndarray] | None = None,
) -> keras.Model:
    """A re-created ``model`` (fresh weights) with producers narrowed, per-channel configs (GroupNormalization's
    groups, Reshape's target shape, Rescaling/Normalization constants) cut to their kept channels ``keep_cw`` and
    ChannelGather layers inserted."""
    keep_cw = keep_cw or {}
    from ..layers import ChannelGather

    def clone_function(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name in keep_out:
            config["filters" if "filters" in config else "units"] = len(keep_out[layer.name])
        if layer.name in keep_cw:
            config = _narrow_config(layer, config, keep_cw[layer.name])
        return layer.__class__.from_config(config)

    def gather_layer(name: str) -> Any:
        return ChannelGather([int(i) for i in gathers[name]], name=f"{name}_gather")

    if isinstance(model, keras.Sequential):
        first = model.get_config()["layers"][0]
        new_layers: list[Any] = []
        if first.get("class_name") == "InputLayer":
            cfg = first["config"]
            new_layers.append(
                keras.Input(batch_shape=tuple(cfg["batch_shape"]), dtype=cfg.get("dtype"), name=cfg["name"])
            )
        for layer in model.layers:
            if layer.name in gathers:
                new_layers.append(gather_layer(layer.name))
            new_layers.append(clone_function(layer))
        return keras.Sequential(new_layers, name=model.name, trainable=model.trainable)

    def call_function(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer.name in gathers:
            return layer(gather_layer(layer.name)(args[0]), *args[1:], **kwargs)
        return layer(*args, **kwargs)

    inputs = _named_inputs(model)
    extra = {"call_function": call_function} if gathers else {}
    try:
        return keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_function, **extra)
    except (TypeError, ValueError):
        if inputs is None:
            raise
        return keras.models.clone_model(model, clone_function=clone_function, **extra)


def _plan(
    model: keras.Model, kept: Mapping[str, Any], units: Sequence[PruneUnit] | None, what: str
) -> tuple[
    Sequence[PruneUnit], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]
]:
    """(units, kept inputs, kept outputs, kept channelwise channels, gather indices) per changed layer."""
    check_graph_model(model)
    if not isinstance(kept, Mapping):
        raise TypeError(f"{what}: kept must be a dict {{unit name: kept channels}}, got {type(kept).__name__}.")
    if units is None:
        units, _ = prune_units(model, allow_custom_downsample_ops=True)
    by_name = {unit.name: unit for unit in units}
    unknown = [name for name in kept if name not in by_name]
    if unknown:
        hints = [
            f"'{name}'"
            + (
                f" (did you mean {close}?)"
                if (close := difflib.get_close_matches(str(name), list(by_name), n=3))
                else ""
            )
            for name in unknown
        ]
        raise ValueError(
            f"{what}: unknown pruning unit(s) {', '.join(hints)}; unit names come from prune_units(model) "
            f"(known: {sorted(by_name)[:10]}{' ...' if len(by_name) > 10 else ''})."
        )
    removed_in: dict[str, set[int]] = {}
    removed_out: dict[str, set[int]] = {}
    removed_cw: dict[str, set[int]] = {}
    gathers: dict[str, np.ndarray] = {}
    for name, value in kept.items():
        unit = by_name[name]
        keep = _kept_unit(value, unit, what)
        drop = np.setdiff1d(np.arange(unit.channels), keep)
        if unit.gather:
            gathers[unit.consumers[0].layer] = unit.consumers[0].index[keep]
        for slots, table in (
            (unit.consumers, removed_in),
            (unit.producers, removed_out),
            (unit.channelwise, removed_cw),
        ):
            for slot in slots:
                table.setdefault(slot.layer, set()).update(int(i) for i in slot.index[drop])
    existing = {layer.name for layer in model.layers}
    for name in gathers:
        if f"{name}_gather" in existing:
            raise ValueError(
                f"{what}: unit '{name}' needs a ChannelGather layer named '{name}_gather', but the model already "
                "has a layer of that name; rename it first."
            )
    layers = {layer.name: layer for layer in model.layers}
    missing = sorted((set(removed_in) | set(removed_out) | set(removed_cw)) - set(layers))
    if missing:
        raise ValueError(
            f"{what}: the units name layers {missing} that are not in model '{model.name}'; "
            "pass units computed by prune_units(model) for this model."
        )
    keep_in = {n: _complement(_in_channels(layers[n]), r) for n, r in removed_in.items()}
    keep_out = {n: _complement(_out_channels(layers[n]), r) for n, r in removed_out.items()}
    keep_cw = {n: _complement(_channelwise_count(layers[n]), r) for n, r in removed_cw.items()}
    keep_in = {n: v for n, v in keep_in.items() if v is not None}
    keep_out = {n: v for n, v in keep_out.items() if v is not None}
    keep_cw = {n: v for n, v in keep_cw.items() if v is not None}
    return units, keep_in, keep_out, keep_cw, gathers


@dataclass(frozen=True, eq=False)
class KeptChannels:
    """The channels one layer keeps after :func:`apply_pruning` (``None``: all of them).

    ``inputs``: kernel input channels (consumers); ``outputs``: filters/units
    (producers); ``channels``: per-channel weights (BatchNormalization, DepthwiseConv2D).
    """

    inputs: np.ndarray | None = None
    outputs: np.ndarray | None = None
    channels: np.ndarray | None = None


def kept_channels(
    model: keras.Model, kept: Mapping[str, Sequence[int] | np.ndarray], *, units: Sequence[PruneUnit] | None = None
) -> dict[str, KeptChannels]:
    """What :func:`apply_pruning` with the same arguments keeps of each layer it changes.

    Use it to shape replacement weights: a consumer's ``inputs`` are its kept input
    channels (the complement of the removals of all its units), and its ``outputs``
    the kept output channels when it is also a producer of a pruned unit.

    Example:
        >>> import keras
        >>> inp = keras.Input((6, 6, 2))
        >>> a = keras.layers.Conv2D(3, 1, name="a")(inp)
        >>> b = keras.layers.Conv2D(2, 1, name="b")(inp)
        >>> out = keras.layers.Conv2D(1, 1, name="c")(keras.layers.Concatenate()([a, b]))
        >>> m = keras.Model(inp, out)
        >>> [u.name for u in prune_units(m)[0]]
        ['c[0:3]', 'c[3:5]']
        >>> kept_channels(m, {"c[0:3]": [1], "c[3:5]": [0]})["c"].inputs
        array([1, 3])
    """
    units, keep_in, keep_out, keep_cw, _ = _plan(model, kept, units, "kept_channels")
    names = [layer.name for layer in model.layers if layer.name in {*keep_in, *keep_out, *keep_cw}]
    return {n: KeptChannels(keep_in.get(n), keep_out.get(n), keep_cw.get(n)) for n in names}


def apply_pruning(
    model: keras.Model,
    kept: Mapping[str, Sequence[int] | np.ndarray],
    *,
    units: Sequence[PruneUnit] | None = None,
    weights: Mapping[str, list[np.ndarray]] | None = None,
) -> keras.Model:
    """A NEW model in which each pruning unit keeps only the given channels (the argument is not modified).

    Producers lose the other output channels, channelwise layers the matching
    per-channel weights and consumers the matching input channels; a consumer in
    several units (e.g. reading a concat) keeps the complement of all removals. For a
    ``gather`` unit a ``ChannelGather`` named ``f"{consumer}_gather"`` is inserted in
    front of the consumer and the upstream is unchanged. Units not named keep all
    their channels. Layer and input names stay the same; a compiled model comes back
    compiled the same way.

    Args:
        model: a built Sequential or Functional model.
        kept: ``{unit name: kept unit channels}`` (distinct ints in ``0..channels-1``,
            at least one; or a boolean mask of length ``channels``).
        units: the units from :func:`prune_units` (default: computed here, with
            gather units allowed).
        weights: optional ``{consumer name: [kernel, bias] or [kernel]}`` replacing a
            consumer's weights, already shaped for its kept inputs (and its kept
            outputs when it is also a producer of a pruned unit), e.g. least-squares
            reconstructed kernels. With ``[kernel]`` only, the (sliced) bias is kept.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3, name="a"),
        ...                       keras.layers.BatchNormalization(name="bn"), keras.layers.Conv2D(2, 3, name="b")])
        >>> units, _ = prune_units(m)
        >>> [(u.name, u.channels) for u in units]
        [('b', 6)]
        >>> new = apply_pruning(m, {"b": [0, 2, 5]}, units=units)
        >>> [tuple(w.shape) for w in new.get_layer("b").get_weights()], new.get_layer("bn").get_weights()[0].shape
        ([(3, 3, 3, 2), (2,)], (3,))
    """
    units, keep_in, keep_out, keep_cw, gathers = _plan(model, kept, units, "apply_pruning")
    new_weights: dict[str, list[np.ndarray]] = {}
    for layer in model.layers:
        original = layer.get_weights()
        if original:
            new_weights[layer.name] = _slice_weights(
                layer, original, keep_in.get(layer.name), keep_out.get(layer.name), keep_cw.get(layer.name)
            )
    consumers = {slot.layer for unit in units for slot in unit.consumers}
    for name, given in (weights or {}).items():
        if name not in consumers:
            raise ValueError(
                f"apply_pruning: replacement weights given for '{name}', which is not a consumer of any pruning unit; "
                "only consumers' weights can be replaced."
            )
        expected = new_weights[name]
        given = [np.asarray(w) for w in given]
        if len(given) == 1 and len(expected) == 2:
            given = [given[0], expected[1]]
        shapes = [tuple(w.shape) for w in given]
        want = [tuple(w.shape) for w in expected]
        if shapes != want:
            raise ValueError(
                f"apply_pruning: replacement weights for '{name}' have shapes {shapes}; after pruning the layer needs "
                f"{want} ([kernel, bias] or [kernel])."
            )
        new_weights[name] = given
    new_model = _rebuild(model, keep_out, gathers, keep_cw)
    for name, values in new_weights.items():
        _set_weights(new_model.get_layer(name), values)
    _compile_like(model, new_model, "apply_pruning")
    return new_model


def _sliced(layer: Any, weights: list[np.ndarray], keep_in: np.ndarray | None, keep_out: np.ndarray | None) -> list:
    """``layer``'s weights with input channels ``keep_in`` and output channels ``keep_out`` only.

    Conv2D/Dense: the kernel's axes -2 and -1 and the bias. A decomposed layer: its first factor's input axis
    and its last factor's output axis (and the bias); the factors in between are untouched. A SeparableConv2D:
    see :func:`~tfcompress.pruning.separable.slice_separable`.
    """
    if _is_separable(layer):
        return slice_separable(weights, keep_in, keep_out)
    if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense) or _is_decomposed(layer):
        out = list(weights)
        kernels = _kernels(out, layer)
        if keep_in is not None:
            out[0] = np.take(out[0], keep_in, axis=-2)
        if keep_out is not None:
            out[kernels - 1] = np.take(out[kernels - 1], keep_out, axis=-1)
            out[kernels:] = [np.take(w, keep_out, axis=-1) for w in out[kernels:]]
        return out
    if keep_out is None:
        return weights
    # BatchNormalization: gamma, beta, moving mean, moving variance are all per channel
    return [np.take(w, keep_out, axis=-1) for w in weights]
