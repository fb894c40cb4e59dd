"""FFN hidden units inside custom layers: sampled activations, which units to keep, least-squares refits, the masked
working copy, and the smaller model (see :mod:`tfcompress.pruning.ffn` for how the units are found).

The same discipline as the graph's channel groups: the consumer's inputs (the activated hidden units) are sampled
on the user's data by hooking the consumer's call on a working copy; the kept units are chosen by greedy forward
selection (:func:`~tfcompress.pruning.select.channel_order`); the consumer's kernel and bias are refitted by least
squares (:func:`~tfcompress.pruning.reconstruct.reconstruct_weights`) to reproduce the ORIGINAL block's FFN output.
Zeroing the consumer's rows of the dropped units computes exactly what the pruned block will, so candidates are
evaluated in place; the final model replaces the producers and the consumer by smaller layers through
:class:`~tfcompress.layers.RewiredLayer`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from .._checks import check_finite
from ..decompose import blas_single_thread
from ..graph import walk_layers
from ..layers import RewiredLayer
from ..sublayers import get_by_path
from .ffn import FfnUnit, find_ffn_units, hooked_calls
from .reconstruct import reconstruct_weights
from .sampling import _first, check_data_form
from .select import ChannelProblem, channel_order

__all__ = [
    "FfnFit",
    "FfnSampler",
    "ffn_inputs",
    "fit_unit",
    "mask_values",
    "prune_ffn",
    "sublayer",
    "consumer_of",
    "smaller_model",
]


def ffn_inputs(data: Any, model: keras.Model, limit: int, what: str = "data") -> Any:
    """Up to ``limit`` model inputs from ``data``: an array, a dict of arrays (several named inputs, as keras_hub
    backbones take), ``(x, y)`` / ``(x, y, w)``, or a ``tf.data.Dataset`` of those; errors name ``what``.

    Example:
        >>> import numpy as np, keras
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> ffn_inputs((np.zeros((10, 4)), np.zeros(10)), m, 6).shape
        (6, 4)
    """
    check_data_form(data, what)
    if hasattr(data, "as_numpy_iterator"):
        elements: Iterable[Any] = data.as_numpy_iterator()
    else:
        elements = [data]
    chunks: list[Any] = []
    count = 0
    for element in elements:
        x = keras.tree.map_structure(lambda a: np.asarray(keras.ops.convert_to_numpy(a)), _first(element))
        first = keras.tree.flatten(x)[0]
        if first.ndim < 1 or first.ndim == len(keras.tree.flatten(model.inputs)[0].shape) - 1:
            x = keras.tree.map_structure(lambda a: a[None], x)  # an unbatched dataset: one example per element
        n = len(keras.tree.flatten(x)[0])
        take = min(n, limit - count)
        x = keras.tree.map_structure(lambda a, take=take: a[:take], x)
        chunks.append(x)
        count += len(keras.tree.flatten(x)[0])
        if count >= limit:
            break
    if not count:
        raise ValueError(f"{what} holds no inputs.")
    return keras.tree.map_structure(lambda *parts: np.concatenate(parts, axis=0), *chunks)


def _count(inputs: Any) -> int:
    return len(keras.tree.flatten(inputs)[0])


def sublayer(model: keras.Model, block: str, attribute: str) -> Any:
    """The sublayer at attribute path ``attribute`` of the custom layer at path ``block`` of ``model`` (inside a
    :class:`~tfcompress.layers.RewiredLayer`, the wrapped layer's)."""
    for ref in walk_layers(model):
        if ref.path == block:
            layer = ref.layer.layer if isinstance(ref.layer, RewiredLayer) else ref.layer
            return get_by_path(layer, attribute)
    raise ValueError(f"'{block}': no such layer in '{model.name}'.")


def consumer_of(model: keras.Model, unit: FfnUnit) -> Any:
    """The unit's consumer in ``model``."""
    return sublayer(model, unit.block, unit.consumer.attribute)


class FfnSampler:
    """The consumers' inputs (activated hidden units) at fixed sampled rows (tokens), the same rows for every model
    compared; the original model's are computed once and kept."""

    def __init__(self, inputs: Any, samples: int, seed: int, batch_size: int = 16) -> None:
        self.inputs = inputs
        self.samples = int(samples)
        self.seed = int(seed)
        self.batch_size = batch_size
        self._original: dict[str, np.ndarray] = {}

    def _rows(self, name: str, total: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**32))
        return np.sort(rng.choice(total, size=min(self.samples, total), replace=False))

    def original(self, work: keras.Model, units: Sequence[FfnUnit]) -> dict[str, np.ndarray]:
        """:meth:`inputs_of` on ``work`` while it still computes the original model, for every unit, once."""
        missing = [u for u in units if u.consumer.path not in self._original]
        if missing:
            self._original.update(self.inputs_of(work, missing))
        return {u.consumer.path: self._original[u.consumer.path] for u in units}

    def inputs_of(self, model: keras.Model, units: Sequence[FfnUnit]) -> dict[str, np.ndarray]:
        """``{consumer path: (P, d_ff)}``: each consumer's inputs at the sampled rows, computed on ``model`` (its
        consumers' calls are hooked while it runs, then put back)."""
        layers = {id(consumer_of(model, u)): u.consumer.path for u in units}
        seen: dict[str, list[np.ndarray]] = {path: [] for path in layers.values()}

        def record(layer: Any, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            value = np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)
            seen[layers[id(layer)]].append(value.reshape(-1, value.shape[-1]))

        total = _count(self.inputs)
        per_batch: dict[str, list[np.ndarray]] = {path: [] for path in seen}
        with hooked_calls([consumer_of(model, u) for u in units], record):
            for lo in range(0, total, self.batch_size):
                batch = keras.tree.map_structure(lambda a, lo=lo: a[lo : lo + self.batch_size], self.inputs)
                model(batch, training=False)
                for path, got in seen.items():
                    if len(got) != 1:
                        raise ValueError(f"FFN pruning: '{path}' ran {len(got)} times in one call of the model.")
                    per_batch[path].append(got.pop())
        result = {}
        for path, parts in per_batch.items():
            rows = np.concatenate(parts, axis=0)
            check_finite(rows, f"FFN pruning: the inputs of layer '{path}'", "check the model's weights and the data")
            result[path] = rows[self._rows(path, len(rows))]
        return result


@dataclass
class FfnFit:
    """One unit's kept hidden units (in the order chosen) and the consumer's refitted kernel and bias on them."""

    kept: np.ndarray
    kernel: np.ndarray  # (k, out)
    bias: np.ndarray | None


def _weights(layer: Any) -> tuple[np.ndarray, np.ndarray | None]:
    kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float64)
    bias = None if layer.bias is None else np.asarray(keras.ops.convert_to_numpy(layer.bias), dtype=np.float64)
    return kernel, bias


@blas_single_thread()
def fit_unit(
    unit: FfnUnit,
    consumer: Any,
    x: np.ndarray | None,
    x0: np.ndarray | None,
    keep: int,
    *,
    selection: str = "greedy",
    reconstruct: bool = True,
    order: np.ndarray | None = None,
) -> FfnFit:
    """Keep ``keep`` of the unit's hidden units and refit the consumer (the ORIGINAL model's layer ``consumer``).

    ``x`` are the consumer's sampled inputs on the model pruned so far, ``x0`` on the original model (``None``
    for both: magnitude selection without reconstruction). The refit reproduces the original consumer's outputs
    ``x0 @ W + b`` from the kept columns of ``x``. ``order``: the units in the order they are kept, when already
    known (:func:`keep_order` for a larger ``keep``: its prefixes are the smaller selections).
    """
    w0, b0 = _weights(consumer)
    if not 1 <= keep <= unit.channels:
        raise ValueError(f"FFN pruning: '{unit.name}' keeps {keep} hidden units, not in 1..{unit.channels}.")
    y = None if x0 is None else x0.astype(np.float64) @ w0 + (0.0 if b0 is None else b0)
    if order is None:
        order = keep_order(consumer, x, x0, keep, selection)
    kept = np.sort(np.asarray(order[:keep], dtype=np.int64))
    kernel, bias = w0[kept], b0
    if reconstruct and x is not None:
        kernel, bias = reconstruct_weights(
            x[:, kept].astype(np.float64), y, use_bias=b0 is not None, initial=(kernel, b0)
        )
    return FfnFit(kept, kernel.astype(np.float32), None if bias is None else np.asarray(bias, np.float32))


@blas_single_thread()
def keep_order(consumer: Any, x: np.ndarray | None, x0: np.ndarray | None, keep: int, selection: str) -> np.ndarray:
    """The first ``keep`` hidden units in the order they are kept: greedy forward selection for the least-squares
    fit of the original consumer's outputs (``x0 @ W + b``) from ``x``, or the largest consumer rows (``"magnitude"``,
    or no samples)."""
    w0, b0 = _weights(consumer)
    if selection == "magnitude" or x is None or x0 is None:
        return np.argsort(-np.sum(w0**2, axis=1), kind="stable")[:keep]
    y = x0.astype(np.float64) @ w0 + (0.0 if b0 is None else b0)
    problem = ChannelProblem.from_samples(x.astype(np.float64), y, fit_intercept=b0 is not None)
    return channel_order([problem], keep)


def mask_values(unit: FfnUnit, fit: FfnFit) -> tuple[np.ndarray, np.ndarray | None]:
    """The consumer's full ``(d_ff, out)`` kernel with the refit on the kept rows and zeros on the others, and its
    bias: written into a working copy, it computes exactly what the pruned block will."""
    full = np.zeros((unit.channels, fit.kernel.shape[1]), dtype=np.float32)
    full[fit.kept] = fit.kernel
    return full, fit.bias


def _smaller(layer: Any, keep: int, side: str) -> Any:
    """A fresh, built copy of the Dense/EinsumDense ``layer`` with ``keep`` outputs (``side="out"``, a producer)
    or inputs (``side="in"``, the consumer)."""
    config = layer.get_config()
    shape = tuple(layer.get_build_config()["input_shape"])
    if side == "out":
        if isinstance(layer, keras.layers.EinsumDense):
            output = config["output_shape"]
            config["output_shape"] = [*output[:-1], keep] if isinstance(output, list | tuple) else keep
        else:
            config["units"] = keep
    else:
        shape = (*shape[:-1], keep)
    new = type(layer).from_config(config)
    new.build(shape)
    return new


def smaller_model(model: keras.Model, units: Mapping[str, FfnUnit], fits: Mapping[str, FfnFit]) -> keras.Model:
    """A new ``model`` in which each unit of ``fits`` keeps its kept hidden units: smaller producers (kept
    columns) and consumer (refitted rows), through :func:`tfcompress.rewrite.rewrite_sublayers`."""
    from ..rewrite import rewrite_sublayers

    replacements = {}
    for name, fit in fits.items():
        unit = units[name]
        for part in unit.producers:
            old = sublayer(model, unit.block, part.attribute)
            kernel, bias = _weights(old)
            new = _smaller(old, len(fit.kept), "out")
            new.set_weights([kernel[:, fit.kept]] + ([] if bias is None else [bias[fit.kept]]))
            replacements[unit.block, part.attribute] = new
        old = consumer_of(model, unit)
        new = _smaller(old, len(fit.kept), "in")
        new.set_weights([fit.kernel] + ([] if fit.bias is None else [fit.bias]))
        replacements[unit.block, unit.consumer.attribute] = new
    return rewrite_sublayers(model, replacements)


def _working_copy(model: keras.Model) -> keras.Model:
    """A copy of ``model`` to sample activations on (as ``rewrite_model`` copies: a model whose layers do not copy
    from their configs is re-created from its own)."""
    from ..rewrite import rewrite_model

    return rewrite_model(model, {})


def prune_ffn(
    model: keras.Model,
    ratios: Mapping[str, float] | float,
    data: Any,
    *,
    selection: str = "greedy",
    reconstruct: bool = True,
    num_reconstruction_samples: int = 2000,
    seed: int = 0,
    multiplicity: int = 1,
) -> tuple[keras.Model, dict[str, Any]]:
    """Prune the FFN hidden units inside the custom layers of ``model`` (the user's model is not modified).

    Args:
        model: a built functional model whose custom layers (transformer blocks) hold FFNs.
        ratios: the fraction of hidden units kept, one for every unit found, or ``{unit name or block path:
            ratio}`` (unit names are ``"<block>/ffn"``).
        data: model inputs (array, dict of arrays, ``(x, y)`` or ``tf.data.Dataset``) to sample activations on.
        selection: ``"greedy"`` (least squares on sampled activations) or ``"magnitude"`` (consumer row norms).
        reconstruct: refit the consumer by least squares (else its kept rows are kept as they are).
        num_reconstruction_samples: sampled token rows per unit.
        seed: fixes the sampled rows and the checks.
        multiplicity: kept units are rounded to a multiple of this.

    Returns:
        ``(pruned model, report)``; the report holds ``units`` (``{name: (kept, of)}``) and ``skipped``
        (``{path: reason}`` for FFN-like layers that failed a check).

    Example:
        >>> import keras, numpy as np
        >>> class Block(keras.layers.Layer):
        ...     def __init__(self, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.up = keras.layers.Dense(16, activation="gelu")
        ...         self.down = keras.layers.Dense(4)
        ...     def call(self, x):
        ...         return x + self.down(self.up(x))
        >>> x = keras.Input((3, 4))
        >>> model = keras.Model(x, Block(name="blk")(x))
        >>> pruned, report = prune_ffn(model, 0.5, np.random.default_rng(0).normal(size=(32, 3, 4)))
        >>> report["units"], tuple(pruned.get_layer("blk").layer.up.kernel.shape)
        ({'blk/ffn': (8, 16)}, (4, 8))
    """
    from .sampling import keep_count

    inputs = ffn_inputs(data, model, max(16, -(-num_reconstruction_samples // 8)))
    work = _working_copy(model)
    units, skipped = find_ffn_units(model, work, inputs, seed=seed)
    by_name = {u.name: u for u in units}
    if isinstance(ratios, Mapping):
        plan = {}
        for key, ratio in ratios.items():
            unit = by_name.get(key) or by_name.get(f"{key}/ffn")
            if unit is None:
                detail = skipped.get(key, f"no FFN unit named '{key}' (found: {sorted(by_name) or 'none'})")
                raise ValueError(f"prune_ffn: {detail}.")
            plan[unit.name] = ratio
    else:
        plan = {u.name: float(ratios) for u in units}
    if not plan:
        raise ValueError(f"prune_ffn: no prunable FFN found in '{model.name}'; skipped: {skipped or 'none'}.")
    sampler = (
        None if selection == "magnitude" and not reconstruct else FfnSampler(inputs, num_reconstruction_samples, seed)
    )
    ordered = [u for u in units if u.name in plan]
    originals = sampler.original(work, ordered) if sampler else {}
    fits: dict[str, FfnFit] = {}
    for unit in ordered:  # forward order: each unit is refitted on the inputs of the model pruned so far
        keep = keep_count(plan[unit.name], unit.channels, multiplicity)
        x = sampler.inputs_of(work, [unit])[unit.consumer.path] if sampler else None
        x0 = originals.get(unit.consumer.path)
        fits[unit.name] = fit_unit(
            unit, consumer_of(model, unit), x, x0, keep, selection=selection, reconstruct=reconstruct
        )
        consumer = consumer_of(work, unit)
        kernel, bias = mask_values(unit, fits[unit.name])
        consumer.kernel.assign(kernel)
        if bias is not None:
            consumer.bias.assign(bias)
    pruned = smaller_model(model, by_name, fits)
    report = {"units": {n: (len(f.kept), by_name[n].channels) for n, f in fits.items()}, "skipped": skipped}
    return pruned, report
