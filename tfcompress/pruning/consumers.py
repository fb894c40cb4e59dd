"""Channel pruning's candidates: the layers that read a channel group (consumers), which channels to keep, their
least-squares refits, the weight assignments that make the working copy compute a pruned group, and costs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from .._checks import check_finite
from ..cost import decomposed_cost, layer_geometry, layer_scheme, original_cost
from ..decompose import blas_single_thread
from ..layers import SVDDense
from ..layers.base import DecomposedConv2D
from .groups import PruneUnit
from .kinds import _is_separable
from .reconstruct import reconstruct_weights
from .select import ChannelProblem, channel_order
from .separable import channel_norms, pointwise_from_taps, pointwise_taps

if TYPE_CHECKING:
    from .sampling import Sampler

logger = logging.getLogger("tfcompress")


@dataclass
class View:
    """The input side of a prunable layer: the kernel refitted when its input channels shrink, its conv geometry
    (``kernel_size`` is ``None`` for Dense), and the bias added right after it (``None`` when the first stage of a
    decomposed layer has none). The kernel's rows are the layer's input channels, ``taps`` rows per channel (a
    ``(kh, kw, C, N)`` kernel has ``kh*kw``). A SeparableConv2D's refitted kernel is its pointwise kernel, read
    on the outputs of ``depthwise`` (its depthwise kernel, which has the conv geometry): ``depth_multiplier``
    taps per input channel."""

    kernel: Any
    kernel_size: tuple[int, int] | None
    strides: Any = 1
    padding: str = "valid"
    dilation: Any = 1
    bias: Any = None
    depthwise: Any = None

    def taps(self, kernel: np.ndarray) -> np.ndarray:
        """A value of :attr:`kernel` as ``(taps, C, N)``."""
        if self.depthwise is not None:
            return pointwise_taps(kernel, int(self.depthwise.shape[-1]))
        return kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])

    def untaps(self, taps: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The inverse of :meth:`taps`: a ``(taps, C, N)`` kernel as a value of ``shape`` for :attr:`kernel`."""
        return taps.reshape(shape) if self.depthwise is None else pointwise_from_taps(taps, shape)


def view_of(layer: Any) -> View:
    if _is_separable(layer):
        bias = layer.bias if layer.use_bias else None
        geometry = (tuple(layer.kernel_size), layer.strides, layer.padding, layer.dilation_rate)
        return View(layer.pointwise_kernel, *geometry, bias=bias, depthwise=layer.depthwise_kernel)
    if isinstance(layer, DecomposedConv2D):
        variable, strides, padding, dilation = layer._stages()[0]
        return View(variable, tuple(int(k) for k in variable.shape[:2]), strides, padding, dilation)
    if isinstance(layer, SVDDense):
        return View(layer.kernel_a, None)
    bias = layer.bias if layer.use_bias else None
    if isinstance(layer, keras.layers.Conv2D):
        return View(layer.kernel, tuple(layer.kernel_size), layer.strides, layer.padding, layer.dilation_rate, bias)
    return View(layer.kernel, None, bias=bias)


def _rank_of(layer: Any) -> Any:
    return getattr(layer, "ranks", None) or getattr(layer, "rank", None)


def layer_cost(layer: Any, removed_in: int = 0, removed_out: int = 0, full_macs: float = 0.0) -> tuple[float, float]:
    """Exact ``(macs, params)`` of ``layer`` with ``removed_in`` input and ``removed_out`` output channels gone.

    Conv2D/Dense/SeparableConv2D and the decomposed layers use the cost formulas (a SeparableConv2D with C inputs
    left: C depthwise filters and C*dm pointwise rows); per-channel layers (BatchNormalization,
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


def smallest_keep(unit: PruneUnit, model: keras.Model) -> int:
    """The fewest channels ``unit`` may keep without pushing a decomposed layer's rank past its bound."""
    for keep in range(1, unit.channels + 1):
        gone = unit.channels - keep
        if all(_rank_fits(model.get_layer(s.layer), gone, 0) for s in unit.consumers) and all(
            _rank_fits(model.get_layer(s.layer), 0, gone) for s in unit.producers
        ):
            return keep
    return unit.channels


@dataclass
class Consumer:
    """One consumer layer of a unit: its sampled inputs, its original outputs there, and its weights."""

    name: str
    index: np.ndarray  # unit channel -> input channel
    kernel_size: tuple[int, int] | None  # None for Dense
    taps: int
    channels_in: int
    x: np.ndarray  # (P, C, taps) inputs on the current model, channel-major
    y: np.ndarray  # (P, N) the ORIGINAL layer's outputs on the ORIGINAL model's inputs
    kernel: np.ndarray  # current kernel, (taps, C, N), float32
    bias: np.ndarray | None
    removed: set[int]  # input channels already removed by earlier units
    norms: np.ndarray  # (C,) squared norm of each input channel's weights (magnitude selection)

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

    def full_kernel(self, kept: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """The ``(taps, C, N)`` kernel with ``kernel`` on the kept inputs and zeros on the others."""
        full = np.zeros((self.taps, self.channels_in, kernel.shape[-1]), dtype=np.float32)
        full[:, kept, :] = kernel
        return full


def consumers_of(
    unit: PruneUnit,
    current: keras.Model,
    original: keras.Model,
    sampler: Sampler | None,
    removed: dict[str, set[int]],
    every: list[str] | None = None,
    current_is_original: bool = False,
) -> list[Consumer]:
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
        view, source = view_of(current.get_layer(slot.layer)), view_of(original.get_layer(slot.layer))
        w0 = source.taps(np.asarray(keras.ops.convert_to_numpy(source.kernel), dtype=np.float64))
        check_finite(w0, f"channel pruning: the kernel of layer '{slot.layer}'", "fix the weights first")
        if before[slot.layer] is None:
            before[slot.layer] = now[slot.layer] = np.zeros((0, w0[..., 0].size))
        y = before[slot.layer].astype(np.float64) @ w0.reshape(-1, w0.shape[-1])
        if source.bias is not None:
            y = y + np.asarray(keras.ops.convert_to_numpy(source.bias), dtype=np.float64)
        # float32, the values the layer holds (exact): a float64 copy of every consumer's kernel doubled its size
        kernel = view.taps(np.asarray(keras.ops.convert_to_numpy(view.kernel), dtype=np.float32))
        bias = None if view.bias is None else np.asarray(keras.ops.convert_to_numpy(view.bias), dtype=np.float64)
        taps, channels_in = kernel.shape[0], kernel.shape[1]
        x = now[slot.layer].reshape(len(y), taps, channels_in).transpose(0, 2, 1)
        result.append(
            Consumer(
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
                norms=_channel_norms(view, kernel.astype(np.float64)),
            )
        )
    return result


def _channel_norms(view: View, kernel: np.ndarray) -> np.ndarray:
    """Per input channel, the squared norm of the layer's weights on it (a SeparableConv2D: of the effective
    kernel, depthwise times pointwise); ``kernel`` is ``view.kernel``'s value as ``(taps, C, N)``."""
    if view.depthwise is None:
        return np.sum(kernel**2, axis=(0, 2))
    return channel_norms(keras.ops.convert_to_numpy(view.depthwise), view.untaps(kernel, tuple(view.kernel.shape)))


@blas_single_thread()
def keep_order(consumers: list[Consumer], n: int, keep: int, selection: str) -> np.ndarray:
    """The unit's channels in the order they are kept (the first ``keep`` of them)."""
    if selection == "magnitude":
        score = np.zeros(n)
        for c in consumers:
            score += c.norms[c.index] / max(float(np.sum(c.norms)), 1e-300)
        return np.argsort(-score, kind="stable")[:keep]
    problems = []
    for c in consumers:
        selectable = set(c.index.tolist())
        fixed = np.array([i for i in range(c.channels_in) if i not in selectable and i not in c.removed], np.int64)
        problems.append(
            ChannelProblem.from_samples(c.x, c.y, fit_intercept=c.bias is not None, channels=c.index, fixed=fixed)
        )
    return channel_order(problems, keep)


def unit_cost(
    unit: PruneUnit, keep: int, model: keras.Model, layer_costs: dict[str, tuple[float, float]]
) -> tuple[float, float]:
    """``(macs, params)`` of the unit's layers when the unit keeps ``keep`` of its channels (other units unpruned)."""
    return plan_cost({unit.name: keep}, {unit.name: unit}, model, layer_costs, only=set(unit.layers))


def plan_cost(
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
            m, p = layer_cost(
                model.get_layer(name), removed_in.get(name, 0) + gathered.get(name, 0), removed_out.get(name, 0), m
            )
        macs += m
        params += p
    return macs, params


@blas_single_thread()
def refit_consumers(consumers: list[Consumer], dropped: np.ndarray, reconstruct: bool) -> dict[str, tuple]:
    """``{consumer: (kept inputs, kept-input kernel (taps, k, N), bias)}`` when the unit drops ``dropped``."""
    fitted = {}
    for c in consumers:
        kept = c.kept_inputs(dropped)
        kernel, bias = c.refit(kept, reconstruct)
        # kept in float32, what the layers hold: a plan's refits of every consumer live until the model is built
        fitted[c.name] = (kept, kernel.astype(np.float32), None if bias is None else np.asarray(bias, np.float32))
    return fitted


def mask_assignments(work: keras.Model, consumers: list[Consumer], fitted: dict[str, tuple]) -> list:
    """Variable assignments that make ``work`` compute the pruned unit (zeros on the dropped inputs)."""
    out = []
    for c in consumers:
        view = view_of(work.get_layer(c.name))
        kept, kernel, bias = fitted[c.name]
        out.append((view.kernel, view.untaps(c.full_kernel(kept, kernel), tuple(view.kernel.shape))))
        if bias is not None and view.bias is not None:
            out.append((view.bias, bias))
    return out
