"""The outcome of a channel-pruning run: each refitted layer's final weights for the smaller model, and one
``LayerStats`` row per changed layer."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

from ..cost import layer_geometry
from ..stats import LayerStats
from .consumers import layer_cost, view_of
from .groups import PruneUnit
from .kinds import _out_channels

logger = logging.getLogger("tfcompress")


def record_layers(run: Any, kept_channels: dict[str, np.ndarray]) -> None:
    """One ``LayerStats`` row per changed layer (``run`` is the driver's run record), in model order, with its own
    MACs/params before and after, its input and output channels, and the channel group(s) it belongs to;
    ``chosen_ratios`` keeps each group's kept share."""
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
        after = layer_cost(layer, removed_in.get(layer_name, 0), removed_out.get(layer_name, 0), before[0])
        try:
            geometry = layer_geometry(layer)
            channels_in, channels_out = geometry.in_channels, geometry.out_channels
            shape = [int(d) for d in view_of(layer).kernel.shape]
            kept_in = channels_in - removed_in.get(layer_name, 0)
        except TypeError:  # a per-channel layer (BatchNormalization, DepthwiseConv2D): its inputs are its outputs
            channels_in = channels_out = int(layer.output.shape[-1])
            shape = [channels_out]
            kept_in = channels_in - removed_out.get(layer_name, 0)
        stats.per_layer_stats.append(
            pruned_layer_row(
                layer_name,
                "channel_pruning" + ("+gather" if layer_name in gathered else ""),
                shape,
                before,
                after,
                metric,
                in_channels=[channels_in, kept_in],
                out_channels=[channels_out, channels_out - removed_out.get(layer_name, 0)],
                group=", ".join(groups[layer_name]),
            )
        )
        why = stats.skipped_layers.pop(layer_name, None)
        if why:  # its own inputs were not pruned, but the layer changed: the reason goes with its row
            stats.per_layer_stats[-1].group += f"; own inputs kept: {why}"


def final_weights(
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
    for name, (kept, kernel, bias) in fitted.items():
        layer = model.get_layer(name)
        view = view_of(layer)
        weights = [np.asarray(w) for w in layer.get_weights()]
        has_bias = bool(layer.use_bias)
        lead = tuple(view.kernel.shape[:-2])
        if view.depthwise is None:
            weights[0] = view.untaps(kernel, (*lead, kernel.shape[1], kernel.shape[2]))
        else:  # a SeparableConv2D: the depthwise kernel's kept inputs, the refitted pointwise kernel
            weights[0] = np.take(weights[0], kept, axis=-2)
            weights[1] = view.untaps(kernel, (*lead, kernel.shape[0] * kernel.shape[1], kernel.shape[2]))
        if bias is not None and view.bias is not None:
            weights[-1] = np.asarray(bias)
        if name in out_keep:
            last = len(weights) - 2 if has_bias else len(weights) - 1
            weights[last] = np.take(weights[last], out_keep[name], axis=-1)
            if has_bias:
                weights[-1] = np.take(weights[-1], out_keep[name], axis=-1)
        result[name] = [np.asarray(w, dtype=np.float32) for w in weights]
    return result


def pruned_layer_row(
    name: str,
    scheme: str,
    shape: list[int],
    before: tuple[float, float],
    after: tuple[float, float],
    metric: int,
    *,
    in_channels: list[int],
    out_channels: list[int],
    group: str,
) -> LayerStats:
    """The per-layer stats row of a pruned layer: ``before``/``after`` are ``(MACs, params)``, ``metric`` indexes
    them (0: MACs, 1: params) for the row's ratio."""
    return LayerStats(
        name=name,
        scheme=scheme,
        original_shape=shape,
        rank=None,
        ratio=after[metric] / before[metric] if before[metric] else 1.0,
        macs_before=round(before[0]),
        macs_after=round(after[0]),
        params_before=round(before[1]),
        params_after=round(after[1]),
        in_channels=in_channels,
        out_channels=out_channels,
        group=group,
    )
