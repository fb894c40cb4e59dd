"""What every step of one channel-pruning run shares: the models, the units, their costs and the sampler."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ..enums import CostMetric
from ..stats import CompressionStats
from .consumers import Consumer, keep_order, plan_cost, unit_cost
from .ffn_search import FfnGroups
from .groups import PruneUnit
from .sampling import Sampler

__all__ = ["ChannelRun"]


@dataclass
class ChannelRun:
    """What every step of one channel-pruning run shares (see :mod:`tfcompress.pruning.driver`)."""

    model: keras.Model  # the user's model: read, never changed
    work: keras.Model  # the working copy: candidates and the masked plan are written into it
    parameters: Any
    metric: CostMetric
    stats: CompressionStats
    units_list: list[PruneUnit]
    units: dict[str, PruneUnit]
    layer_costs: dict[str, tuple[float, float]]
    total_cost: float
    sampler: Sampler | None = None
    order_seconds: float = 0.0
    ffn: FfnGroups | None = None  # FFN hidden units inside custom layers: groups named "<block>/ffn"

    @property
    def ffn_units(self) -> list[Any]:
        return [] if self.ffn is None else list(self.ffn.units.values())

    def is_ffn(self, name: str) -> bool:
        return self.ffn is not None and name in self.ffn

    @property
    def consumer_names(self) -> list[str]:
        """Every layer whose input channels some unit prunes, in forward order, once."""
        return list(dict.fromkeys(slot.layer for unit in self.units_list for slot in unit.consumers))

    def cost(self, pair: tuple[float, float]) -> float:
        """The number the cost metric compares."""
        return pair[0] if self.metric is CostMetric.mac else pair[1]

    def plan_cost(self, plan: dict[str, int]) -> float:
        graph = {name: keep for name, keep in plan.items() if not self.is_ffn(name)}
        macs, params = plan_cost(graph, self.units, self.model, self.layer_costs)
        if self.ffn is not None:  # FFN units touch only their own layers, which no graph group touches
            saved = self.ffn.saving(plan)
            macs, params = macs - saved[0], params - saved[1]
        return self.cost((macs, params))

    def unit_cost(self, name: str, keep: int) -> float:
        if self.is_ffn(name):
            return self.cost(self.units[name].cost(keep))
        return self.cost(unit_cost(self.units[name], keep, self.model, self.layer_costs))

    def choose(self, consumers: list[Consumer], unit: PruneUnit, keep: int) -> np.ndarray:
        """The order in which the unit's channels are kept (the first ``keep``), timed."""
        start = time.perf_counter()
        order = keep_order(consumers, unit.channels, keep, self.parameters.channel_selection)
        self.order_seconds += time.perf_counter() - start
        return order
