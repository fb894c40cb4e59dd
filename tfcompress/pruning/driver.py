"""``compress_model(..., compress_scheme="channel_pruning")``: choose, refit and remove input channels.

How a run goes (the SVD schemes' principles hold: one working copy, in-place candidates):

1. :func:`tfcompress.pruning.prune_units` splits the model into *units*: channel
   groups that must lose the same channels together (one Conv2D/Dense input, or a
   residual stage whose ``Add`` ties several layers), each named after its first
   consumer layer. Layers that cannot be pruned are listed with the reason.
2. For a unit at a candidate ratio (fraction of channels kept), the kept channels
   are chosen (greedy least squares on sampled activations, or kernel magnitude),
   each consumer's kept weights and bias are refitted by least squares to
   reproduce the original layer's outputs, and the result is evaluated **in place**:
   the consumer's kernel in the working copy gets zeros on the dropped input
   channels and the refitted weights on the kept ones, which computes exactly
   what the pruned layer will. No rebuild per candidate.
3. Greedy selection (the same selector and score cache as the SVD schemes) picks a
   ratio per unit; unit costs are estimated one unit at a time, so the plan's true
   cost (a layer pruned on both sides shrinks by the product) is computed exactly
   and the target tightened until the plan fits.
4. The plan is applied in forward order: each unit's channels are chosen and its
   consumers refitted on the inputs of the model pruned so far, against the
   original model's outputs. The masked working copy is then winnowed into a
   really smaller model by :func:`tfcompress.pruning.apply_pruning`.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import keras
import numpy as np

from .._checks import check_finite
from ..compress import (
    _keep_alternative,
    _lookup,
    _match,
    _open_cache,
    _progress,
    _scores_kept,
    _settings_tag,
    _WorkGuard,
)
from ..cost import decomposed_cost, layer_geometry, layer_scheme, model_cost, original_cost
from ..decompose import blas_single_thread
from ..enums import CompressionScheme, CostMetric, Mode, RankSelectScheme
from ..errors import TargetUnreachableError, unreachable_message
from ..graph import no_candidates_detail, resolve_layers, walk_layers
from ..layers import SVDDense
from ..layers.base import DecomposedConv2D
from ..select import ScoreCacheWriter, greedy_select, min_loss_select
from ..stats import CompressionStats, LayerStats
from .groups import PruneUnit, prune_units
from .inline import inline_for_pruning
from .kinds import _out_channels
from .rebuild import apply_pruning
from .reconstruct import conv_output_size, extract_patches, reconstruct_weights, sample_positions
from .select import ChannelProblem, channel_order

__all__ = ["check_data_form", "compress_channels", "keep_count", "model_inputs"]

logger = logging.getLogger("tfcompress")

#: about this many sampled output positions are taken per image
POSITIONS_PER_IMAGE = 8


def keep_count(ratio: float, channels: int, multiplicity: int = 1) -> int:
    """Channels kept at ``ratio`` (fraction kept): rounded to a multiple of ``multiplicity``, within 1..channels.

    Example:
        >>> keep_count(0.5, 10), keep_count(0.5, 10, multiplicity=4), keep_count(0.01, 10)
        (5, 4, 1)
    """
    m = int(multiplicity)
    keep = m * round(ratio * channels / m)
    if keep < 1:
        keep = m if m <= channels else 1
    return int(min(keep, channels))


# ---------------------------------------------------------------- data


def _first(element: Any) -> Any:
    """The inputs of one dataset element: ``x`` of ``(x, y)`` / ``(x, y, w)``."""
    if isinstance(element, tuple) and len(element) in (2, 3) and not isinstance(element[0], dict):
        return element[0]
    return element


def check_data_form(data: Any) -> None:
    """Refuse the forms of ``ChannelPruningParameters.data`` that could be read two ways.

    A list (``[a, b]``: two input arrays, or inputs and labels?) and a tuple of other than 2 or 3 items are
    refused; a tuple is ``(x, y)`` or ``(x, y, sample_weights)``, and only ``x`` is used.

    Example:
        >>> import numpy as np
        >>> check_data_form((np.zeros((4, 2)), np.zeros(4)))
        >>> check_data_form([np.zeros((4, 2)), np.zeros((4, 2))])
        Traceback (most recent call last):
        ...
        TypeError: ChannelPruningParameters.data: a list is ambiguous (several input arrays, or inputs and labels?); pass the model inputs as one array (batch axis first), a tuple (x, y) or (x, y, sample_weights), or a tf.data.Dataset.
    """
    if isinstance(data, list):
        raise TypeError(
            "ChannelPruningParameters.data: a list is ambiguous (several input arrays, or inputs and labels?); pass "
            "the model inputs as one array (batch axis first), a tuple (x, y) or (x, y, sample_weights), or a "
            "tf.data.Dataset."
        )
    if isinstance(data, tuple) and len(data) not in (2, 3):
        raise TypeError(
            f"ChannelPruningParameters.data: a tuple must be (x, y) or (x, y, sample_weights), got {len(data)} "
            "items; pass the model inputs as one array (batch axis first) or a tf.data.Dataset."
        )


def model_inputs(data: Any, model: keras.Model, limit: int) -> np.ndarray:
    """Up to ``limit`` model inputs from ``data`` (array, tensor, ``(x, y)`` tuple or ``tf.data.Dataset``).

    Example:
        >>> import numpy as np, keras
        >>> m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3)])
        >>> model_inputs((np.zeros((10, 4, 4, 1)), np.zeros(10)), m, 6).shape
        (6, 4, 4, 1)
    """
    if len(model.inputs) != 1:
        raise ValueError(
            f"channel pruning: model '{model.name}' has {len(model.inputs)} inputs; only single-input models are "
            "supported for now."
        )
    check_data_form(data)
    expected = tuple(model.inputs[0].shape)
    chunks: list[np.ndarray] = []
    count = 0
    if hasattr(data, "as_numpy_iterator") or hasattr(data, "element_spec"):
        iterator: Iterable[Any] = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data
    else:
        iterator = [data]
    for element in iterator:
        x = np.asarray(keras.ops.convert_to_numpy(_first(element)), dtype=np.float32)
        if x.ndim == len(expected) - 1:
            x = x[None]  # an unbatched dataset: one example per element
        if x.ndim != len(expected) or any(
            e is not None and e != s for e, s in zip(expected[1:], x.shape[1:], strict=False)
        ):
            raise ValueError(
                f"ChannelPruningParameters.data: inputs of shape {x.shape} do not fit the model input {expected}; give "
                "model inputs with the batch axis first (labels, if any, as the second element of a tuple)."
            )
        chunks.append(x[: limit - count])
        count += len(chunks[-1])
        if count >= limit:
            break
    if not count:
        raise ValueError("ChannelPruningParameters.data holds no inputs.")
    inputs = np.concatenate(chunks, axis=0)
    check_finite(
        inputs,
        f"ChannelPruningParameters.data (the first {len(inputs)} model inputs)",
        "the least-squares refit cannot use them: fix or drop those samples",
    )
    return inputs


class _Sampler:
    """Consumer-layer inputs at fixed sampled positions (the same positions for every model compared)."""

    def __init__(self, images: np.ndarray, samples: int, seed: int, batch_size: int = 32) -> None:
        self.images = images
        self.samples = samples
        self.seed = seed
        self.batch_size = batch_size
        self._positions: dict[tuple[str, tuple], np.ndarray] = {}
        self._original: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    def _positions_for(self, name: str, batch: int, out_hw: tuple[int, int]) -> np.ndarray:
        key = (name, (batch, *out_hw))
        if key not in self._positions:
            seed = (self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**32)
            self._positions[key] = sample_positions(batch, out_hw, self.samples, seed=seed)
        return self._positions[key]

    def original_patches(self, model: keras.Model, names: list[str], every: list[str]) -> dict[str, np.ndarray]:
        """:meth:`patches` of the ORIGINAL model, computed once for all layers in ``every`` (one pass) and kept."""
        if any(name not in self._original for name in names):
            missing = [name for name in every if name not in self._original]
            self._original.update(self.patches(model, missing))
        return {name: self._original[name] for name in names}

    def patches(self, model: keras.Model, names: list[str]) -> dict[str, np.ndarray]:
        """``{name: (P, cols)}``: each layer's input patches (Conv2D, columns like ``kernel.reshape(-1, N)``)
        or input rows (Dense) at the sampled positions, computed on ``model``."""
        start = time.perf_counter()
        layers = [model.get_layer(n) for n in names]
        views = [_view(layer) for layer in layers]
        feature = keras.Model(model.inputs[0], [layer.input for layer in layers])
        total = len(self.images)
        result: dict[str, np.ndarray] = {}
        # batch by batch, each layer's patches are taken from its input maps right away: the maps of all layers
        # and all images are never held at once (they are many times the weights' size)
        for lo in range(0, total, self.batch_size):
            outs = feature(self.images[lo : lo + self.batch_size], training=False)
            outs = list(outs) if isinstance(outs, list | tuple) else [outs]
            for i, (name, view) in enumerate(zip(names, views, strict=True)):
                x = np.asarray(keras.ops.convert_to_numpy(outs[i]), dtype=np.float32)
                outs[i] = None
                check_finite(
                    x,
                    f"channel pruning: the inputs of layer '{name}' (computed from ChannelPruningParameters.data)",
                    "the layers before it give NaN or infinity on these inputs: check the model's weights and the data",
                )
                if view.kernel_size is not None:
                    out_hw = conv_output_size(x.shape[1:3], view.kernel_size, view.strides, view.padding, view.dilation)
                    positions = self._positions_for(name, total, out_hw)
                    here = (positions[:, 0] >= lo) & (positions[:, 0] < lo + len(x))
                    patches = extract_patches(
                        x,
                        view.kernel_size,
                        view.strides,
                        view.padding,
                        view.dilation,
                        positions[here] - np.array([lo, 0, 0]),
                    )
                else:
                    per_image = int(np.prod(x.shape[1:-1], dtype=np.int64))
                    pick = self._positions_for(name, 1, (1, total * per_image))[:, 2]
                    here = (pick >= lo * per_image) & (pick < (lo + len(x)) * per_image)
                    patches = x.reshape(-1, x.shape[-1])[pick[here] - lo * per_image]
                if name not in result:
                    result[name] = np.empty((len(here), patches.shape[1]), dtype=patches.dtype)
                result[name][here] = patches
                del x, patches
        self.seconds += time.perf_counter() - start
        return result


# ---------------------------------------------------------------- what a layer looks like to the pruner


@dataclass
class _View:
    """The input side of a prunable layer: the kernel whose axis -2 is the layer's input channels, its conv
    geometry (``kernel_size`` is ``None`` for Dense), and the bias added right after it (``None`` when the first
    stage of a decomposed layer has none)."""

    kernel: Any
    kernel_size: tuple[int, int] | None
    strides: Any = 1
    padding: str = "valid"
    dilation: Any = 1
    bias: Any = None


def _view(layer: Any) -> _View:
    if isinstance(layer, DecomposedConv2D):
        variable, strides, padding, dilation = layer._stages()[0]
        return _View(variable, tuple(int(k) for k in variable.shape[:2]), strides, padding, dilation)
    if isinstance(layer, SVDDense):
        return _View(layer.kernel_a, None)
    bias = layer.bias if layer.use_bias else None
    if isinstance(layer, keras.layers.Conv2D):
        return _View(layer.kernel, tuple(layer.kernel_size), layer.strides, layer.padding, layer.dilation_rate, bias)
    return _View(layer.kernel, None, bias=bias)


def _rank_of(layer: Any) -> Any:
    return getattr(layer, "ranks", None) or getattr(layer, "rank", None)


def _layer_cost(layer: Any, removed_in: int = 0, removed_out: int = 0, full_macs: float = 0.0) -> tuple[float, float]:
    """Exact ``(macs, params)`` of ``layer`` with ``removed_in`` input and ``removed_out`` output channels gone.

    Conv2D/Dense and the decomposed layers use the cost formulas; per-channel layers (BatchNormalization,
    DepthwiseConv2D) shrink their ``full_macs`` (the layer's MACs at full size, from ``model_cost``) and parameters
    in proportion to their channels (``removed_out``).
    """
    try:
        geometry = layer_geometry(layer)
    except TypeError:
        row_macs = full_macs
        channels = int(layer.output.shape[-1])
        share = (channels - removed_out) / channels
        return row_macs * share, layer.count_params() * share
    smaller = replace(
        geometry, in_channels=geometry.in_channels - removed_in, out_channels=geometry.out_channels - removed_out
    )
    scheme = layer_scheme(layer)
    cost = original_cost(smaller) if scheme is None else decomposed_cost(smaller, scheme, _rank_of(layer))
    return float(cost.macs), float(cost.params)


def _rank_fits(layer: Any, removed_in: int, removed_out: int) -> bool:
    """Whether a decomposed layer's rank stays within its bound once it has that many fewer channels."""
    if layer_scheme(layer) is None:
        return True
    g = layer_geometry(layer)
    c, n = g.in_channels - removed_in, g.out_channels - removed_out
    if c < 1 or n < 1:
        return False
    shape = (c, n) if g.kind == "dense" else (*g.kernel_size, c, n)
    bound, rank = type(layer).max_rank_for(shape), _rank_of(layer)
    if isinstance(rank, tuple | list):
        return all(int(r) <= int(b) for r, b in zip(rank, bound, strict=True))
    return int(rank) <= int(bound)


def _smallest_keep(unit: PruneUnit, model: keras.Model) -> int:
    """The fewest channels ``unit`` may keep without pushing a decomposed layer's rank past its bound."""
    for keep in range(1, unit.channels + 1):
        gone = unit.channels - keep
        if all(_rank_fits(model.get_layer(s.layer), gone, 0) for s in unit.consumers) and all(
            _rank_fits(model.get_layer(s.layer), 0, gone) for s in unit.producers
        ):
            return keep
    return unit.channels


# ---------------------------------------------------------------- one unit


@dataclass
class _Consumer:
    """One consumer layer of a unit: its sampled inputs, its original outputs there, and its weights."""

    name: str
    index: np.ndarray  # unit channel -> input channel
    kernel_size: tuple[int, int] | None  # None for Dense
    taps: int
    channels_in: int
    x: np.ndarray  # (P, C, taps) inputs on the current model, channel-major
    y: np.ndarray  # (P, N) the ORIGINAL layer's outputs on the ORIGINAL model's inputs
    kernel: np.ndarray  # current kernel, (taps, C, N)
    bias: np.ndarray | None
    removed: set[int]  # input channels already removed by earlier units

    def kept_inputs(self, dropped: np.ndarray) -> np.ndarray:
        gone = self.removed | {int(c) for c in self.index[dropped]}
        return np.array([c for c in range(self.channels_in) if c not in gone], dtype=np.int64)

    def refit(self, kept: np.ndarray, reconstruct: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Kept-input kernel ``(taps, k, N)`` and bias: refitted by least squares, or just sliced."""
        sliced = self.kernel[:, kept, :]
        if not reconstruct:
            return sliced, self.bias
        design = self.x[:, kept, :].transpose(0, 2, 1).reshape(len(self.x), -1)  # columns (tap, channel)
        kernel, bias = reconstruct_weights(
            design, self.y, use_bias=self.bias is not None, initial=(sliced.reshape(-1, sliced.shape[-1]), self.bias)
        )
        return kernel.reshape(sliced.shape), bias

    def full_kernel(self, kept: np.ndarray, kernel: np.ndarray, shape: tuple) -> np.ndarray:
        """The layer-shaped kernel with ``kernel`` on the kept inputs and zeros on the others."""
        full = np.zeros((self.taps, self.channels_in, kernel.shape[-1]), dtype=np.float32)
        full[:, kept, :] = kernel
        return full.reshape(shape)


def _kernel_taps(kernel: np.ndarray) -> np.ndarray:
    """A Conv2D ``(kh, kw, C, N)`` or Dense ``(C, N)`` kernel as ``(taps, C, N)``."""
    return kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])


def _consumers(
    unit: PruneUnit,
    current: keras.Model,
    original: keras.Model,
    sampler: _Sampler | None,
    removed: dict[str, set[int]],
    every: list[str] | None = None,
    current_is_original: bool = False,
) -> list[_Consumer]:
    """The unit's consumers with inputs sampled on ``current`` and target outputs from ``original``
    (``sampler=None``: no data is needed, for magnitude selection without reconstruction). The original model's
    patches are computed once, for all layers in ``every`` (default: this unit's consumers)."""
    names = [slot.layer for slot in unit.consumers]
    if sampler is None:
        now = before = {n: None for n in names}
    else:
        before = sampler.original_patches(original, names, every or names)
        now = before if current_is_original else sampler.patches(current, names)
    result = []
    for slot in unit.consumers:
        view, source = _view(current.get_layer(slot.layer)), _view(original.get_layer(slot.layer))
        w0 = np.asarray(keras.ops.convert_to_numpy(source.kernel), dtype=np.float64)
        check_finite(w0, f"channel pruning: the kernel of layer '{slot.layer}'", "fix the weights first")
        if before[slot.layer] is None:
            before[slot.layer] = now[slot.layer] = np.zeros((0, w0[..., 0].size))
        y = before[slot.layer].astype(np.float64) @ w0.reshape(-1, w0.shape[-1])
        if source.bias is not None:
            y = y + np.asarray(keras.ops.convert_to_numpy(source.bias), dtype=np.float64)
        kernel = _kernel_taps(np.asarray(keras.ops.convert_to_numpy(view.kernel), dtype=np.float64))
        bias = None if view.bias is None else np.asarray(keras.ops.convert_to_numpy(view.bias), dtype=np.float64)
        taps, channels_in = kernel.shape[0], kernel.shape[1]
        x = now[slot.layer].reshape(len(y), taps, channels_in).transpose(0, 2, 1)
        result.append(
            _Consumer(
                name=slot.layer,
                index=np.asarray(slot.index, dtype=np.int64),
                kernel_size=view.kernel_size,
                taps=taps,
                channels_in=channels_in,
                x=x.astype(np.float64),
                y=y,
                kernel=kernel,
                bias=bias,
                removed=set(removed.get(slot.layer, set())),
            )
        )
    return result


@blas_single_thread()
def _order(consumers: list[_Consumer], n: int, keep: int, selection: str) -> np.ndarray:
    """The unit's channels in the order they are kept (the first ``keep`` of them)."""
    if selection == "magnitude":
        score = np.zeros(n)
        for c in consumers:
            per_channel = np.sum(c.kernel[:, c.index, :] ** 2, axis=(0, 2))
            score += per_channel / max(float(np.sum(c.kernel**2)), 1e-300)
        return np.argsort(-score, kind="stable")[:keep]
    problems = []
    for c in consumers:
        selectable = set(c.index.tolist())
        fixed = np.array([i for i in range(c.channels_in) if i not in selectable and i not in c.removed], np.int64)
        problems.append(
            ChannelProblem.from_samples(c.x, c.y, fit_intercept=c.bias is not None, channels=c.index, fixed=fixed)
        )
    return channel_order(problems, keep)


def _unit_cost(
    unit: PruneUnit, keep: int, model: keras.Model, layer_costs: dict[str, tuple[float, float]]
) -> tuple[float, float]:
    """``(macs, params)`` of the unit's layers when the unit keeps ``keep`` of its channels (other units unpruned)."""
    return _plan_cost({unit.name: keep}, {unit.name: unit}, model, layer_costs, only=set(unit.layers))


def _plan_cost(
    plan: dict[str, int],
    units: dict[str, PruneUnit],
    model: keras.Model,
    layer_costs: dict[str, tuple[float, float]],
    only: set[str] | None = None,
) -> tuple[float, float]:
    """Exact ``(macs, params)`` when each unit of ``plan`` keeps that many channels: of the whole model, or of the
    layers in ``only``. A layer pruned on both sides shrinks by both (the product for a Conv2D/Dense)."""
    removed_in: dict[str, int] = {}
    removed_out: dict[str, int] = {}
    for name, keep in plan.items():
        unit = units[name]
        gone = unit.channels - keep
        for slot in unit.consumers:
            removed_in[slot.layer] = removed_in.get(slot.layer, 0) + (0 if unit.gather else gone)
        for slot in (*unit.producers, *unit.channelwise):
            removed_out[slot.layer] = removed_out.get(slot.layer, 0) + gone
    gathered = {s.layer: units[n].channels - k for n, k in plan.items() if units[n].gather for s in units[n].consumers}
    macs = params = 0.0
    for name, (m, p) in layer_costs.items():
        if only is not None and name not in only:
            continue
        if name in removed_in or name in removed_out or name in gathered:
            m, p = _layer_cost(
                model.get_layer(name), removed_in.get(name, 0) + gathered.get(name, 0), removed_out.get(name, 0), m
            )
        macs += m
        params += p
    return macs, params


# ---------------------------------------------------------------- in-place swaps


class _Swap:
    """Assign kernels/biases of layers in place and restore them on exit."""

    def __init__(self, assignments: list[tuple[Any, np.ndarray]]) -> None:
        self.assignments = assignments
        self.saved: list[tuple[Any, np.ndarray]] = []

    def __enter__(self) -> _Swap:
        for variable, value in self.assignments:
            self.saved.append((variable, keras.ops.convert_to_numpy(variable)))
            variable.assign(np.asarray(value, dtype=variable.dtype))
        return self

    def __exit__(self, *exc: Any) -> None:
        for variable, value in reversed(self.saved):
            variable.assign(value)


@blas_single_thread()
def _refits(consumers: list[_Consumer], dropped: np.ndarray, reconstruct: bool) -> dict[str, tuple]:
    """``{consumer: (kept inputs, kept-input kernel (taps, k, N), bias)}`` when the unit drops ``dropped``."""
    fitted = {}
    for c in consumers:
        kept = c.kept_inputs(dropped)
        kernel, bias = c.refit(kept, reconstruct)
        fitted[c.name] = (kept, kernel, bias)
    return fitted


def _assignments(work: keras.Model, consumers: list[_Consumer], fitted: dict[str, tuple]) -> list:
    """Variable assignments that make ``work`` compute the pruned unit (zeros on the dropped inputs)."""
    out = []
    for c in consumers:
        view = _view(work.get_layer(c.name))
        kept, kernel, bias = fitted[c.name]
        out.append((view.kernel, c.full_kernel(kept, kernel, tuple(view.kernel.shape))))
        if bias is not None and view.bias is not None:
            out.append((view.bias, bias))
    return out


# ---------------------------------------------------------------- the main job


@dataclass
class _Run:
    """What every step of one channel-pruning run shares."""

    model: keras.Model  # the user's model: read, never changed
    work: keras.Model  # the working copy: candidates and the masked plan are written into it
    parameters: Any
    metric: CostMetric
    stats: CompressionStats
    units_list: list[PruneUnit]
    units: dict[str, PruneUnit]
    layer_costs: dict[str, tuple[float, float]]
    total_cost: float
    sampler: _Sampler | None = None
    order_seconds: float = 0.0

    @property
    def consumer_names(self) -> list[str]:
        """Every layer whose input channels some unit prunes, in forward order, once."""
        return list(dict.fromkeys(slot.layer for unit in self.units_list for slot in unit.consumers))

    def cost(self, pair: tuple[float, float]) -> float:
        """The number the cost metric compares."""
        return pair[0] if self.metric is CostMetric.mac else pair[1]

    def plan_cost(self, plan: dict[str, int]) -> float:
        return self.cost(_plan_cost(plan, self.units, self.model, self.layer_costs))

    def unit_cost(self, name: str, keep: int) -> float:
        return self.cost(_unit_cost(self.units[name], keep, self.model, self.layer_costs))

    def choose(self, consumers: list[_Consumer], unit: PruneUnit, keep: int) -> np.ndarray:
        """The order in which the unit's channels are kept (the first ``keep``), timed."""
        start = time.perf_counter()
        order = _order(consumers, unit.channels, keep, self.parameters.channel_selection)
        self.order_seconds += time.perf_counter() - start
        return order


def compress_channels(
    model: keras.Model,
    work: keras.Model,
    parameters: Any,
    metric: CostMetric,
    evaluator: Any,
    stats: CompressionStats,
    trainer: Any,
    verbose: int,
) -> keras.Model:
    """The channel-pruning path of :func:`tfcompress.compress_model`.

    Checks everything that can be checked first, then evaluates the baseline on ``work`` (the working copy, same
    layer names as ``model``), selects, and returns the pruned model; fills ``stats``.
    """
    if metric is CostMetric.latency:
        raise ValueError("compress_scheme='channel_pruning' supports cost_metric 'mac' and 'memory', not 'latency'.")
    manual = parameters.mode is Mode.manual
    if not manual and parameters.params.rank_select_scheme is not RankSelectScheme.greedy:
        raise ValueError(
            "compress_scheme='channel_pruning' uses greedy selection (GreedySelectionParameters) or manual mode; TAR "
            "needs singular values and does not apply to channel pruning."
        )
    start = time.perf_counter()
    model, work, parameters, note = inline_for_pruning(model, work, parameters)  # nested models become one graph
    if note:
        stats.notes.append(note)
    units_list, reasons = prune_units(model, allow_custom_downsample_ops=parameters.allow_custom_downsample_ops)
    stats.skipped_layers.update(reasons)
    for name in dict.fromkeys(slot.layer for unit in units_list for slot in unit.consumers):
        kernel = keras.ops.convert_to_numpy(_view(model.get_layer(name)).kernel)  # before any data is sampled
        check_finite(kernel, f"channel pruning: the kernel of layer '{name}'", "fix the weights first")
    original = model_cost(model, warn=False)
    run = _Run(
        model,
        work,
        parameters,
        metric,
        stats,
        units_list,
        {u.name: u for u in units_list},
        {path: (float(row.macs), float(row.params)) for path, row in original.layers.items()},
        float(original.metric(metric)),
    )
    ratios_of = _manual_ratios(run, reasons) if manual else _auto_ratios(run)
    cache = None if manual else _open_score_cache(run)

    images = model_inputs(
        parameters.data, model, max(16, math.ceil(parameters.num_reconstruction_samples / POSITIONS_PER_IMAGE))
    )
    if parameters.reconstruct or parameters.channel_selection != "magnitude":
        run.sampler = _Sampler(images, parameters.num_reconstruction_samples, parameters.seed)
    stats.notes.append(
        f"channel pruning: {len(images)} input(s), {parameters.num_reconstruction_samples} sampled positions per layer, "
        f"{parameters.channel_selection} channel selection, reconstruction {'on' if parameters.reconstruct else 'off'}"
    )
    guard = _WorkGuard(work)
    logger.info("evaluating the baseline model")
    stats.baseline_model_accuracy = evaluator(work, "the baseline model")
    guard.check("when the baseline was evaluated")

    keeps = _candidate_keeps(run, ratios_of, manual)
    masked = None  # the chosen plan's masked result, when the two-plan check already computed it
    if manual:
        plan = {name: next(iter(row.values())) for name, row in keeps.items() if row}
    else:
        table = _score_table(run, keeps, cache, evaluator, verbose)
        chosen, alternative = _select(run, keeps, table)
        if alternative is not None:
            chosen, masked = _compare_plans(run, chosen, alternative, evaluator)
        plan = chosen.plan
    guard.check("during the search")
    del guard
    for name in ratios_of:
        if name not in plan:
            stats.skipped_layers.setdefault(name, "kept at full size by the selection")

    ordered = [u for u in units_list if u.name in plan]
    if trainer is None:
        compressed, kept_channels = _apply_masked(run, ordered, plan, masked)
    else:
        compressed, kept_channels = _apply_with_trainer(run, ordered, plan, trainer)
    _record(run, kept_channels)
    stats.timings["channel_pruning_seconds"] = time.perf_counter() - start
    return compressed


def _manual_ratios(run: _Run, reasons: dict[str, str]) -> dict[str, list[float]]:
    """``{unit: [ratio]}`` from ManualModeParams; each named layer's units (a concat reader has several)."""
    consumer_units: dict[str, list[str]] = {}
    for u in run.units_list:
        for slot in u.consumers:
            consumer_units.setdefault(slot.layer, []).append(u.name)
    top = {r.path for r in walk_layers(run.model, sublayers=True)}
    ratios_of: dict[str, list[float]] = {}
    problems = []
    for layer, ratio in run.parameters.params.list_of_module_comp_ratio_pairs:
        name = getattr(layer, "name", layer)
        if not isinstance(name, str) or name not in top:
            problems.append(f"'{name}': no such layer in '{run.model.name}'")
        elif name in consumer_units:
            for unit_name in consumer_units[name]:
                if unit_name in ratios_of:
                    problems.append(f"'{name}': its channel group '{unit_name}' is listed twice")
                ratios_of[unit_name] = [ratio]
        elif name in reasons:
            problems.append(f"'{name}': {reasons[name]}")
        else:
            problems.append(
                f"'{name}': not a Conv2D/Dense layer whose input channels can be pruned (name the layer whose INPUT "
                "channels should shrink)"
            )
    if problems:
        raise ValueError("ManualModeParams cannot be applied: " + "; ".join(problems) + ".")
    return ratios_of


def _auto_ratios(run: _Run) -> dict[str, list[float]]:
    """``{unit: candidate ratios}`` for every unit not touched by ``modules_to_ignore``."""
    auto = run.parameters.params
    run.stats.rank_select_scheme = auto.rank_select_scheme.value
    run.stats.target_comp_ratio = auto.target_comp_ratio
    refs = resolve_layers(walk_layers(run.model, sublayers=True), auto.modules_to_ignore, what="modules_to_ignore")
    ignored = {ref.path for ref in refs.values()}
    ratios_of: dict[str, list[float]] = {}
    for u in run.units_list:
        members = {s.layer for s in u.consumers}
        if members & ignored:
            for layer in members:
                run.stats.skipped_layers[layer] = (
                    "in modules_to_ignore"
                    if layer in ignored
                    else f"its channel group '{u.name}' has a layer in modules_to_ignore"
                )
        elif u.channels < 2:
            run.stats.skipped_layers.setdefault(u.name, "a single channel cannot be pruned")
        else:
            ratios_of[u.name] = list(auto.select_params.candidates)
    if not ratios_of:
        raise ValueError(
            f"compress_model: no layer of '{run.model.name}' can be channel-pruned: "
            + no_candidates_detail(run.model, run.stats.skipped_layers)
        )
    return ratios_of


def _open_score_cache(run: _Run) -> tuple[str, str, dict[str, dict[float, float]]] | None:
    """``(path, fingerprint, table)`` of the score cache, checked before any evaluation (None: no cache)."""
    path = run.parameters.params.select_params.saved_eval_scores_dict
    if path is None:
        return None
    p = run.parameters
    tag = _settings_tag(CompressionScheme.channel_pruning, run.metric, p.multiplicity) + (
        f"/{p.channel_selection}/r{int(p.reconstruct)}/s{p.num_reconstruction_samples}"
    )
    digest, table = _open_cache(run.model, os.fspath(path), tag)
    if table:
        logger.info("read eval scores of %d channel group(s) from %s", len(table), path)
    return os.fspath(path), f"{digest}|{tag}", table


def _candidate_keeps(run: _Run, ratios_of: dict[str, list[float]], manual: bool) -> dict[str, dict[float, int]]:
    """``{unit: {ratio: channels kept}}``: rounded to the multiplicity; candidates that keep everything, or fewer
    channels than a decomposed layer's rank allows, are dropped (manual mode: raised to the smallest allowed)."""
    keeps: dict[str, dict[float, int]] = {}
    for name, ratios in ratios_of.items():
        n = run.units[name].channels
        smallest = _smallest_keep(run.units[name], run.model)
        keeps[name] = {}
        for ratio in ratios:
            k = keep_count(ratio, n, run.parameters.multiplicity)
            if k < smallest:
                if not manual:
                    continue
                run.stats.notes.append(
                    f"channel group '{name}' keeps {smallest} channels, not {k}: fewer would push the rank of a "
                    "decomposed layer in it past its bound"
                )
                k = smallest
            if manual or k < n:
                keeps[name][ratio] = k
    return keeps


def _score_table(
    run: _Run, keeps: dict[str, dict[float, int]], cache: Any, evaluator: Any, verbose: int
) -> dict[str, dict[float, float]]:
    """Evaluate each unit alone at each candidate, in place in the working copy (cached scores are reused)."""
    table = dict(cache[2]) if cache else {}
    todo = {
        name: sorted(
            {k for r, k in row.items() if not any(math.isclose(r, t, rel_tol=1e-6) for t in table.get(name, {}))}
        )
        for name, row in keeps.items()
    }
    total_evals = sum(len(v) for v in todo.values())
    logger.info("channel pruning: %d group(s), %d candidate evaluation(s)", len(keeps), total_evals)
    progbar = _progress(total_evals, verbose)
    done = 0
    writer = ScoreCacheWriter(cache[0], cache[1]) if cache else None
    with _scores_kept(writer, table, run.stats):
        for name, pending in todo.items():
            if not pending:
                continue
            unit = run.units[name]
            consumers = _consumers(
                unit, run.work, run.model, run.sampler, {}, run.consumer_names, current_is_original=True
            )
            order = run.choose(consumers, unit, max(pending))
            row = table[name] = dict(table.get(name, {}))  # a stop mid-group keeps its scores
            for k in pending:
                dropped = np.setdiff1d(np.arange(unit.channels), order[:k])
                refits = _refits(consumers, dropped, run.parameters.reconstruct)
                with _Swap(_assignments(run.work, consumers, refits)):
                    score = evaluator(run.work, f"channel group '{name}' keeping {k} of {unit.channels} channels")
                row.update({ratio: score for ratio, kept in keeps[name].items() if kept == k})
                done += 1
                progbar.update(done, values=[("score", score)])
            if writer is not None:
                writer.save(table)
    run.stats.eval_scores = {name: dict(sorted(table.get(name, {}).items())) for name in keeps}
    return table


@dataclass
class _Plan:
    """A selected plan ``{unit: channels kept}``, its exact model ratio and the notes of how it was fitted."""

    plan: dict[str, int]
    ratio: float
    notes: list[str] = field(default_factory=list)


def _select(
    run: _Run, keeps: dict[str, dict[float, int]], table: dict[str, dict[float, float]]
) -> tuple[_Plan, _Plan | None]:
    """Greedy selection on the score table, made to fit the target by the exact cost, then the leftover budget
    spent on more channels. With ``compare_plans``, also the plan of least summed per-unit loss, fitted the same
    way (``None`` when it is not needed: switched off, the same plan, or it does not meet the target).
    Plans are ``{unit: channels kept}``."""
    stats = run.stats
    select_params = run.parameters.params.select_params
    scores = {name: {r: _lookup(table[name], r) for r in keeps[name]} for name in keeps if keeps[name]}
    if not scores:
        raise ValueError("compress_model: no candidate ratio of any channel group saves cost; nothing to select.")
    costs = {name: {r: run.unit_cost(name, k) for r, k in keeps[name].items()} for name in scores}
    originals = {name: run.unit_cost(name, run.units[name].channels) for name in scores}
    target, total = float(select_params.target_comp_ratio), run.total_cost
    # A layer can belong to two units (its input group and its output group), so the units' own costs may add up
    # to more than the model. The selectors only compare savings: pad the total by the overlap, and move the goal
    # so that the same savings meet it.
    overlap = max(sum(originals.values()) - total, 0.0)

    def padded(goal: float) -> float:
        return (goal * total + overlap) / (total + overlap)

    def threshold_at(goal: float) -> Any:
        return greedy_select(
            scores, costs, originals, total + overlap, padded(goal), use_monotonic_fit=select_params.use_monotonic_fit
        )

    def min_loss_at(goal: float) -> Any:
        return min_loss_select(
            scores,
            costs,
            originals,
            total + overlap,
            padded(goal),
            reference_score=stats.baseline_model_accuracy,
            use_monotonic_fit=select_params.use_monotonic_fit,
        )

    chosen = _fitted_plan(run, keeps, scores, threshold_at, "greedy selection")
    if chosen.ratio > target + 1e-3 and not select_params.allow_unreachable:
        raise TargetUnreachableError(
            unreachable_message(
                "compress_model",
                target,
                chosen.ratio,
                select_params.saved_eval_scores_dict,
                "every channel group at its smallest candidate ratio",
            ),
            target_ratio=target,
            best_ratio=chosen.ratio,
            eval_scores=scores,
            cache_path=select_params.saved_eval_scores_dict,
        )
    stats.notes.extend(chosen.notes)
    stats.selected_comp_ratio = chosen.ratio
    if not (select_params.compare_plans and chosen.plan and chosen.ratio <= target + 1e-3):
        return chosen, None
    alternative = _fitted_plan(run, keeps, scores, min_loss_at, "the least-summed-loss selection")
    if not alternative.plan or alternative.ratio > target + 1e-3 or alternative.plan == chosen.plan:
        return chosen, None
    return chosen, alternative


def _fitted_plan(
    run: _Run,
    keeps: dict[str, dict[float, int]],
    scores: dict[str, dict[float, float]],
    select_at: Callable[[float], Any],
    what: str,
) -> _Plan:
    """``select_at(goal)``'s plan made to fit the target by the exact cost (the goal tightened when units interact),
    then the budget left up to the target spent on more channels."""
    stats = run.stats
    target, total = float(run.parameters.params.select_params.target_comp_ratio), run.total_cost
    notes: list[str] = []

    def plan_for(goal: float) -> tuple[dict[str, int], float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            selection = select_at(goal)
        chosen = {n: keeps[n][_match(keeps[n], r)] for n, r in selection.ratios.items() if r < 1.0}
        return chosen, run.plan_cost(chosen) / total

    plan, ratio = plan_for(target)
    if ratio > target + 1e-3:
        # unit costs were estimated one unit at a time; tighten the goal until the exact cost fits
        lo, hi, best = 0.0, target, None
        for _ in range(30):
            mid = (lo + hi) / 2
            found = plan_for(max(mid, 1e-6))
            if found[1] <= target + 1e-3:
                best, lo = found, mid
            else:
                hi = mid
        if best is not None:
            plan, ratio = best
            notes.append(
                f"{what}: the selector's goal was tightened to {lo:.4f} so that the exact cost of the plan "
                f"({ratio:.4f}) meets the target {target}"
            )
    if ratio > target + 1e-3:
        notes.append(f"{what}: target {target} not reached: the smallest plan found costs {ratio:.4f}")
    elif plan:
        # the selection moves in whole candidates: spend what is left up to the target on more channels
        loss = {n: stats.baseline_model_accuracy - _lookup(scores[n], _ratio_of(keeps[n], k)) for n, k in plan.items()}
        filled = _fill_budget(run, plan, keeps, loss, target * total)
        filled_ratio = run.plan_cost(filled) / total
        if filled_ratio > ratio + 1e-9:
            notes.append(
                f"{what} gave ratio {ratio:.4f}; the budget left up to the target was spent on more "
                f"channels (most score-sensitive groups first), giving {filled_ratio:.4f}"
            )
        plan, ratio = filled, filled_ratio
    return _Plan(plan, ratio, notes)


def _compare_plans(run: _Run, threshold: _Plan, alternative: _Plan, evaluator: Any) -> tuple[_Plan, tuple]:
    """Score the threshold plan and the least-summed-loss plan on the whole model; keep the better one.

    Each plan is written into the working copy as masks (every unit refitted in forward order, as the final model
    will be), scored, and the working copy restored. Returns the kept plan and its masked result (kept channels and
    refits), which the final model is then built from, so the winner is not refitted a second time. Ties keep the
    threshold plan."""
    outcomes = []
    for label, candidate in (("threshold", threshold), ("least-summed-loss", alternative)):
        ordered = [u for u in run.units_list if u.name in candidate.plan]
        originals: dict[int, tuple[Any, np.ndarray]] = {}
        try:
            masked = _masked_plan(run, ordered, candidate.plan, originals)
            score = evaluator(run.work, f"the {label} plan")
        finally:
            for variable, value in originals.values():
                variable.assign(value)
        outcomes.append((score, masked))
    (threshold_score, threshold_masked), (alt_score, alt_masked) = outcomes
    scored = (threshold_score, threshold.ratio), (alt_score, alternative.ratio)
    if _keep_alternative(run.stats, *scored, "group"):
        run.stats.notes.extend(alternative.notes)
        return alternative, alt_masked
    return threshold, threshold_masked


def _prune_unit(run: _Run, unit: PruneUnit, keep: int, current: keras.Model, removed: dict[str, set[int]]) -> tuple:
    """Choose the unit's kept channels and refit its consumers on ``current``'s inputs against the original outputs.

    Returns ``(kept unit channels, dropped unit channels, consumers, refits)``.
    """
    consumers = _consumers(unit, current, run.model, run.sampler, removed, run.consumer_names)
    kept = np.sort(run.choose(consumers, unit, keep))
    dropped = np.setdiff1d(np.arange(unit.channels), kept)
    return kept, dropped, consumers, _refits(consumers, dropped, run.parameters.reconstruct)


def _masked_plan(
    run: _Run,
    ordered: list[PruneUnit],
    plan: dict[str, int],
    originals: dict[int, tuple[Any, np.ndarray]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """Write the plan in forward order into the working copy as masks (zeros on dropped inputs, refitted weights),
    so each unit is refitted on the inputs of the model pruned so far. Returns ``(kept channels, refits)``. With
    ``originals``, each variable's value before its first assignment is recorded there (to restore the copy)."""
    kept_channels: dict[str, np.ndarray] = {}
    fitted: dict[str, tuple] = {}
    removed: dict[str, set[int]] = {}
    for unit in ordered:
        kept, dropped, consumers, refits = _prune_unit(run, unit, plan[unit.name], run.work, removed)
        for variable, value in _assignments(run.work, consumers, refits):
            if originals is not None and id(variable) not in originals:
                originals[id(variable)] = (variable, keras.ops.convert_to_numpy(variable))
            variable.assign(np.asarray(value, dtype=variable.dtype))
        fitted.update(refits)
        for c in consumers:
            removed.setdefault(c.name, set()).update(int(i) for i in c.index[dropped])
        kept_channels[unit.name] = kept
    return kept_channels, fitted


def _apply_masked(
    run: _Run, ordered: list[PruneUnit], plan: dict[str, int], masked: tuple | None = None
) -> tuple[keras.Model, dict]:
    """The pruned model of the plan: masked in the working copy (or ``masked``, the result of an earlier
    :func:`_masked_plan` of this plan), then winnowed once."""
    kept_channels, fitted = masked if masked is not None else _masked_plan(run, ordered, plan)
    weights = _final_weights(fitted, run.model, run.units, kept_channels)
    return apply_pruning(run.model, kept_channels, units=run.units_list, weights=weights), kept_channels


def _apply_with_trainer(run: _Run, ordered: list[PruneUnit], plan: dict[str, int], trainer: Any) -> tuple:
    """Apply the plan one unit at a time, rebuilding the smaller model and fine-tuning it after each unit."""
    compressed = run.model
    kept_channels: dict[str, np.ndarray] = {}
    allow = run.parameters.allow_custom_downsample_ops
    for planned in ordered:
        current_units = {u.name: u for u in prune_units(compressed, allow_custom_downsample_ops=allow)[0]}
        unit = current_units.get(planned.name)
        if unit is None:
            run.stats.notes.append(
                f"channel group '{planned.name}' could not be found after pruning earlier groups; left as is"
            )
            continue
        kept, _, _, refits = _prune_unit(run, unit, plan[unit.name], compressed, {})
        weights = _final_weights(refits, compressed, current_units, {unit.name: kept})
        compressed = apply_pruning(compressed, {unit.name: kept}, units=list(current_units.values()), weights=weights)
        kept_channels[unit.name] = kept
        logger.info("fine-tuning after pruning %s", unit.name)
        trainer.train_model(compressed, compressed.get_layer(unit.consumers[0].layer), train_flag=True)
    return compressed, kept_channels


def _record(run: _Run, kept_channels: dict[str, np.ndarray]) -> None:
    """One ``LayerStats`` row per changed layer, in model order, with its own MACs/params before and after, its input
    and output channels, and the channel group(s) it belongs to; ``chosen_ratios`` keeps each group's kept share."""
    stats = run.stats
    stats.timings["channel_selection_seconds"] = run.order_seconds
    stats.timings["activation_sampling_seconds"] = 0.0 if run.sampler is None else run.sampler.seconds
    removed_in: dict[str, int] = {}
    removed_out: dict[str, int] = {}
    groups: dict[str, list[str]] = {}
    gathered: set[str] = set()
    for name, kept in kept_channels.items():
        unit = run.units[name]
        gone = unit.channels - len(kept)
        stats.chosen_ratios[name] = len(kept) / unit.channels
        for slot in unit.consumers:
            removed_in[slot.layer] = removed_in.get(slot.layer, 0) + gone
            groups.setdefault(slot.layer, []).append(f"{name} (in)")
            if unit.gather:
                gathered.add(slot.layer)
        for slot in (*unit.producers, *unit.channelwise):
            removed_out[slot.layer] = removed_out.get(slot.layer, 0) + gone
            groups.setdefault(slot.layer, []).append(f"{name} (out)")
    metric = 1 if stats.cost_metric == "memory" else 0
    for layer_name, before in run.layer_costs.items():  # model order
        if layer_name not in groups:
            continue
        layer = run.model.get_layer(layer_name)
        after = _layer_cost(layer, removed_in.get(layer_name, 0), removed_out.get(layer_name, 0), before[0])
        try:
            geometry = layer_geometry(layer)
            channels_in, channels_out = geometry.in_channels, geometry.out_channels
            shape = [int(d) for d in _view(layer).kernel.shape]
            kept_in = channels_in - removed_in.get(layer_name, 0)
        except TypeError:  # a per-channel layer (BatchNormalization, DepthwiseConv2D): its inputs are its outputs
            channels_in = channels_out = int(layer.output.shape[-1])
            shape = [channels_out]
            kept_in = channels_in - removed_out.get(layer_name, 0)
        stats.per_layer_stats.append(
            LayerStats(
                name=layer_name,
                scheme="channel_pruning" + ("+gather" if layer_name in gathered else ""),
                original_shape=shape,
                rank=None,
                ratio=after[metric] / before[metric] if before[metric] else 1.0,
                macs_before=round(before[0]),
                macs_after=round(after[0]),
                params_before=round(before[1]),
                params_after=round(after[1]),
                in_channels=[channels_in, kept_in],
                out_channels=[channels_out, channels_out - removed_out.get(layer_name, 0)],
                group=", ".join(groups[layer_name]),
            )
        )
        why = stats.skipped_layers.pop(layer_name, None)
        if why:  # its own inputs were not pruned, but the layer changed: the reason goes with its row
            stats.per_layer_stats[-1].group += f"; own inputs kept: {why}"


def _ratio_of(row: dict[float, int], keep: int) -> float:
    """The candidate ratio of ``row`` (ratio -> keep) that gives ``keep`` channels."""
    return next(r for r, k in row.items() if k == keep)


def _fill_budget(
    run: _Run, plan: dict[str, int], keeps: dict[str, dict[float, int]], loss: dict[str, float], budget: float
) -> dict[str, int]:
    """Give channels back, ``multiplicity`` at a time, while the exact cost stays within ``budget``.

    The unit that lost the most score at its chosen candidate goes first, first up to its next candidate's keep,
    then (second pass) beyond, up to all its channels (then it is not pruned at all).
    """
    plan = dict(plan)
    order = sorted(plan, key=lambda n: (-loss[n], n))
    for capped in (True, False):
        active = list(order)
        while active:
            progressed = False
            for name in list(active):
                if name not in plan:
                    active.remove(name)
                    continue
                keep, channels = plan[name], run.units[name].channels
                higher = sorted(k for k in keeps[name].values() if k > keep)
                limit = higher[0] if capped and higher else channels
                new = min(keep + run.parameters.multiplicity, limit, channels)
                trial = dict(plan)
                if new >= channels:
                    del trial[name]
                else:
                    trial[name] = new
                if new <= keep or run.plan_cost(trial) > budget:
                    active.remove(name)
                    continue
                plan = trial
                progressed = True
                break  # most sensitive first: start again from the top
            if not progressed:
                break
    return plan


def _final_weights(
    fitted: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    model: keras.Model,
    units: dict[str, PruneUnit],
    kept_channels: dict[str, np.ndarray],
) -> dict[str, list[np.ndarray]]:
    """Each refitted consumer's full weight list for ``apply_pruning``: the refitted input-side kernel (and bias),
    the other factors of a decomposed layer as they are, and the output side cut to the kept outputs where the
    layer is also a producer of a pruned unit."""
    removed_out: dict[str, set[int]] = {}  # a producer can be in several units (each holding part of its outputs)
    for name, kept in kept_channels.items():
        dropped = np.setdiff1d(np.arange(units[name].channels), kept)
        for slot in units[name].producers:
            removed_out.setdefault(slot.layer, set()).update(int(i) for i in np.asarray(slot.index)[dropped])
    out_keep = {
        name: np.setdiff1d(np.arange(_out_channels(model.get_layer(name))), sorted(gone))
        for name, gone in removed_out.items()
        if gone
    }
    result = {}
    for name, (_, kernel, bias) in fitted.items():
        layer = model.get_layer(name)
        view = _view(layer)
        weights = [np.asarray(w) for w in layer.get_weights()]
        has_bias = bool(layer.use_bias)
        first = kernel.reshape((*tuple(view.kernel.shape[:-2]), kernel.shape[1], kernel.shape[2]))
        weights[0] = first
        if bias is not None and view.bias is not None:
            weights[-1] = np.asarray(bias)
        if name in out_keep:
            last = len(weights) - 2 if has_bias else len(weights) - 1
            weights[last] = np.take(weights[last], out_keep[name], axis=-1)
            if has_bias:
                weights[-1] = np.take(weights[-1], out_keep[name], axis=-1)
        result[name] = [np.asarray(w, dtype=np.float32) for w in weights]
    return result
