"""FFN hidden units inside custom layers as channel groups of ``compress_model(..., "channel_pruning")``.

The driver (:mod:`tfcompress.pruning.driver`) treats each FFN unit (``"<block>/ffn"``) like one of the graph's
channel groups: candidates at the same ratios, scored in place (the consumer's rows of the dropped units zeroed, the
kept rows refitted), selected by the same greedy selector, applied in forward order after the graph's groups and
built by replacing the block's producers and consumer with smaller layers. :class:`FfnGroups` holds what the
driver needs for that, so the driver only asks it at a few hooks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import keras
import numpy as np

from ..pipeline.executor import Job
from .ffn import FfnUnit, ffn_candidates, find_ffn_units
from .ffn_fit import FfnFit, FfnSampler, consumer_of, ffn_inputs, fit_unit, keep_order, mask_values, smaller_model
from .outcome import pruned_layer_row

__all__ = ["FfnGroups"]

logger = logging.getLogger("tfcompress")


class FfnGroups:
    """The FFN units of a channel-pruning run, their sampled activations and their fits.

    Args:
        model: the user's model (read only).
        units: the units found (forward order).
        sampler: the consumers' sampled inputs (``None``: magnitude selection without refits).
        parameters: the run's ``ChannelPruningParameters``.
    """

    def __init__(self, model: keras.Model, units: list[FfnUnit], sampler: FfnSampler | None, parameters: Any) -> None:
        self.model = model
        self.units = {u.name: u for u in units}
        self.sampler = sampler
        self.parameters = parameters
        self.originals: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    @classmethod
    def find(cls, model: keras.Model, work: keras.Model, parameters: Any, stats: Any) -> FfnGroups | None:
        """The FFN groups of ``model`` checked on ``work`` (restored), or ``None`` when there are none; the
        layers that failed a check go to ``stats.skipped_layers`` with the reason."""
        from ..graph import walk_layers
        from ..sublayers import is_container

        if not any(is_container(ref.layer) for ref in walk_layers(model)) or not ffn_candidates(model):
            return None
        if parameters.data is None:
            stats.notes.append(
                "channel pruning: FFN hidden units inside custom layers need ChannelPruningParameters.data to be "
                "checked and sampled; none given, so they are left alone"
            )
            return None
        start = time.perf_counter()
        limit = max(16, -(-parameters.num_reconstruction_samples // 8))
        inputs = ffn_inputs(parameters.data, model, limit, "ChannelPruningParameters.data")
        try:
            units, reasons = find_ffn_units(model, work, inputs, seed=parameters.seed)
        except Exception as err:  # the blocks could not be run and checked: the graph's groups are still pruned
            stats.notes.append(
                f"channel pruning: FFN units inside custom layers were not checked ({type(err).__name__}: {err}); "
                "they are left alone"
            )
            return None
        stats.skipped_layers.update(reasons)
        if not units:
            return None
        for unit in units:  # pruned as an FFN unit: not skipped after all
            for path in unit.layers:
                stats.skipped_layers.pop(path, None)
        needs_samples = parameters.reconstruct or parameters.channel_selection != "magnitude"
        sampler = FfnSampler(inputs, parameters.num_reconstruction_samples, parameters.seed) if needs_samples else None
        groups = cls(model, units, sampler, parameters)
        if sampler is not None:
            groups.originals = sampler.original(work, units)  # work still computes the original model here
        groups.seconds = time.perf_counter() - start
        stats.notes.append(
            f"channel pruning: {len(units)} FFN unit(s) inside custom layers ({', '.join(groups.units)}), checked and "
            f"sampled on {len(keras.tree.flatten(inputs)[0])} input(s)"
        )
        return groups

    def __contains__(self, name: object) -> bool:
        return name in self.units

    def saving(self, plan: Mapping[str, int]) -> tuple[float, float]:
        """``(macs, params)`` saved by the FFN units of ``plan`` (``{unit: kept}``; other names are ignored)."""
        macs = params = 0.0
        for name, keep in plan.items():
            unit = self.units.get(name)
            if unit is not None:
                full, kept = unit.cost(unit.channels), unit.cost(keep)
                macs += full[0] - kept[0]
                params += full[1] - kept[1]
        return macs, params

    def _fit(self, current: keras.Model, unit: FfnUnit, keep: int, order: np.ndarray | None = None) -> FfnFit:
        start = time.perf_counter()
        path = unit.consumer.path
        x = None if self.sampler is None else self.sampler.inputs_of(current, [unit])[path]
        fit = fit_unit(
            unit,
            consumer_of(self.model, unit),
            x,
            self.originals.get(path),
            keep,
            selection=self.parameters.channel_selection,
            reconstruct=self.parameters.reconstruct,
            order=order,
        )
        self.seconds += time.perf_counter() - start
        return fit

    def jobs(self, work: keras.Model, name: str, keeps: list[int], slot: Mapping[int, int]) -> Iterator[Job]:
        """One :class:`Job` per kept count: the consumer's masked, refitted kernel (and bias) in ``work``, which
        computes the original model here (its sampled inputs are the original's)."""
        unit = self.units[name]
        consumer = consumer_of(self.model, unit)
        x0 = self.originals.get(unit.consumer.path)
        order = keep_order(consumer, x0, x0, max(keeps), self.parameters.channel_selection)
        target = consumer_of(work, unit)
        for keep in keeps:
            fit = fit_unit(
                unit,
                consumer,
                x0,
                x0,
                keep,
                selection=self.parameters.channel_selection,
                reconstruct=self.parameters.reconstruct,
                order=order[:keep],
            )
            kernel, bias = mask_values(unit, fit)
            assignments = [(slot[id(target.kernel)], kernel)]
            if bias is not None and target.bias is not None:
                assignments.append((slot[id(target.bias)], bias))
            yield Job(
                (name, keep), f"FFN unit '{name}' keeping {keep} of {unit.channels} hidden units", tuple(assignments)
            )

    def mask(
        self,
        work: keras.Model,
        plan: Mapping[str, int],
        originals: dict[int, tuple[Any, Any]] | None = None,
    ) -> dict[str, FfnFit]:
        """Write the FFN units of ``plan`` into ``work`` in forward order (each fitted on the inputs of the model
        masked so far); with ``originals``, each variable's value before its first assignment is recorded there."""
        fits: dict[str, FfnFit] = {}
        for name, unit in self.units.items():
            if name not in plan:
                continue
            fits[name] = fit = self._fit(work, unit, int(plan[name]))
            target = consumer_of(work, unit)
            kernel, bias = mask_values(unit, fit)
            for variable, value in ((target.kernel, kernel), (target.bias, bias)):
                if variable is None or value is None:
                    continue
                if originals is not None and id(variable) not in originals:
                    originals[id(variable)] = (variable, keras.ops.convert_to_numpy(variable))
                variable.assign(np.asarray(value, dtype=variable.dtype))
        return fits

    def build(self, model: keras.Model, fits: Mapping[str, FfnFit]) -> keras.Model:
        """``model`` (the graph-pruned model, or the user's) with the FFN units of ``fits`` made smaller."""
        return smaller_model(model, self.units, fits) if fits else model

    def record(self, stats: Any, fits: Mapping[str, FfnFit]) -> None:
        """``chosen_ratios`` and one ``LayerStats`` row per producer and consumer of each pruned unit."""
        stats.timings["ffn_seconds"] = self.seconds
        metric = 1 if stats.cost_metric == "memory" else 0
        for name, fit in fits.items():
            unit = self.units[name]
            keep = len(fit.kept)
            stats.chosen_ratios[name] = keep / unit.channels
            for part in (*unit.producers, unit.consumer):
                before = (part.macs, float(part.in_dim * part.out_dim + (part.out_dim if part.bias else 0)))
                producer = part is not unit.consumer
                share = keep / unit.channels
                params = part.in_dim * keep + (keep if part.bias else 0) if producer else keep * part.out_dim
                params += 0 if producer or not part.bias else part.out_dim
                after = (before[0] * share, float(params))
                stats.per_layer_stats.append(
                    pruned_layer_row(
                        part.path,
                        "channel_pruning",
                        [part.in_dim, part.out_dim],
                        before,
                        after,
                        metric,
                        in_channels=[part.in_dim, part.in_dim if producer else keep],
                        out_channels=[part.out_dim, keep if producer else part.out_dim],
                        group=f"{name} ({'out' if producer else 'in'})",
                    )
                )
