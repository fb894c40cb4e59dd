"""Per-layer ratios that lose the least *summed* score for a cost budget (a multiple-choice knapsack).

The threshold search of :func:`tfcompress.select.greedy_select` keeps every layer's own score above one common
threshold: it bounds the worst single-layer loss. When several layers are compressed together their losses add up
(to first order), so a plan whose *sum* of per-layer losses is smallest is often the better model, especially
when the per-layer scores are flat and noisy (a small validation set), where an equal threshold pushes every
layer to the same small loss. :func:`min_loss_select` finds that plan exactly, up to a fine discretisation of the
costs that never lets the plan exceed the budget.

Like the rest of :mod:`tfcompress.select`, it sees only tables and knows nothing of Keras.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .greedy import Selection, _finite, _prepare, is_int

__all__ = ["min_loss_select"]


def min_loss_select(
    scores: Mapping[str, Mapping[float, float]],
    layer_costs: Mapping[str, Mapping[float, float]],
    original_layer_costs: Mapping[str, float],
    total_cost: float,
    target_ratio: float,
    reference_score: float,
    use_monotonic_fit: bool = False,
    resolution: int = 4000,
) -> Selection:
    """Choose one candidate per layer (or none) minimising the summed score loss within the target's budget.

    A layer's loss at a candidate is ``max(reference_score - score, 0)``: how much the model's score fell with only
    that layer compressed (a candidate that scored above the reference loses nothing). The plan minimises
    ``sum(loss)`` subject to ``model ratio <= target_ratio``, where the model ratio counts layers outside the table at
    their original cost. This is a multiple-choice knapsack, solved by dynamic programming over the budget cut into
    ``resolution`` units (each cost rounded to the nearest unit); every plan the programme keeps carries its exact
    cost, and only plans whose exact cost fits the budget are returned, so the target is never exceeded. The result
    is optimal up to that rounding. Among plans of equal loss the one that uses more of the budget (compresses
    less) wins; ties after that go to the earlier candidate, deterministically.

    Args:
        scores, layer_costs, original_layer_costs, total_cost, use_monotonic_fit: as for
            :func:`tfcompress.select.greedy_select`.
        target_ratio: wanted model ratio, in (0, 1].
        reference_score: the uncompressed model's score (the baseline eval).
        resolution: number of budget units of the dynamic programme (>= 10).

    Returns:
        A :class:`~tfcompress.select.Selection`; ``threshold`` is ``None`` (there is none) and ``message`` states the
        summed loss. If even every layer at its smallest candidate exceeds the target, that plan is returned with
        ``reached=False``.

    Raises:
        ValueError: for bad tables (as :func:`greedy_select`), a target outside (0, 1], a non-finite reference
            score or a resolution below 10.

    Example:
        >>> scores = {"a": {0.25: 0.80, 0.5: 0.85}, "b": {0.25: 0.86, 0.5: 0.88}}
        >>> costs = {"a": {0.25: 25.0, 0.5: 50.0}, "b": {0.25: 25.0, 0.5: 50.0}}
        >>> sel = min_loss_select(scores, costs, {"a": 100.0, "b": 100.0}, 200.0, 0.375, reference_score=0.9)
        >>> sel.ratios, sel.model_ratio
        ({'a': 0.5, 'b': 0.25}, 0.375)
    """
    target = _finite(target_ratio, "target_ratio")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target_ratio must be in (0, 1], got {target_ratio!r}")
    reference = _finite(reference_score, "reference_score")
    if not is_int(resolution) or resolution < 10:
        raise ValueError(f"resolution must be an int >= 10, got {resolution!r}")
    layers, total = _prepare(scores, layer_costs, original_layer_costs, total_cost, use_monotonic_fit)

    outside = total - math.fsum(layer.original for layer in layers)
    budget = target * total - outside  # what the scored layers may cost together
    smallest = math.fsum(min((layer.original, *layer.costs)) for layer in layers)
    smallest_plan = {
        layer.name: (layer.ratios[int(np.argmin(layer.costs))] if layer.ratios else 1.0) for layer in layers
    }
    if budget < smallest * (1 - 1e-12):
        model_ratio = (outside + smallest) / total
        message = (
            f"target ratio {target:.6g} is not reachable: every layer at its smallest candidate gives model ratio "
            f"{model_ratio:.6g}; returning that plan."
        )
        return Selection(smallest_plan, model_ratio, None, reached=False, message=message)

    unit = budget / resolution if budget > 0 else 1.0
    size = resolution + len(layers) + 1  # room for the rounding; exact costs are checked at the end
    # best[w]: least summed loss of the layers so far using at most w units; used[w]: real cost of that plan
    best = np.zeros(size)
    used = np.zeros(size)
    choices = []
    for layer in layers:
        options = [(layer.original, 0.0, -1)]  # uncompressed
        options += [
            (cost, max(reference - score, 0.0), k)
            for k, (cost, score) in enumerate(zip(layer.costs, layer.scores, strict=True))
        ]
        new_best = np.full(size, np.inf)
        new_used = np.zeros(size)
        choice = np.full(size, -2, dtype=np.int32)
        for cost, loss, k in options:
            weight = round(cost / unit)
            if weight >= size:
                continue
            cand_best = np.full(size, np.inf)
            cand_used = np.zeros(size)
            cand_best[weight:] = best[: size - weight] + loss
            cand_used[weight:] = used[: size - weight] + cost
            with np.errstate(invalid="ignore"):  # inf - inf where neither plan exists
                better = (cand_best < new_best - 1e-12) | (
                    (np.abs(cand_best - new_best) <= 1e-12) & (cand_used > new_used + 1e-9)
                )
            new_best = np.where(better, cand_best, new_best)
            new_used = np.where(better, cand_used, new_used)
            choice = np.where(better, k, choice)
        best, used = new_best, new_used
        choices.append(choice)

    finite = np.isfinite(best) & (used <= budget * (1 + 1e-9) + 1e-12)
    if not finite.any():  # only the rounding can hide every fitting plan; the smallest one fits
        model_ratio = (outside + smallest) / total
        message = f"target ratio {target:.6g} reached with every layer at its smallest candidate ({model_ratio:.6g})."
        return Selection(smallest_plan, model_ratio, None, reached=True, message=message)
    # the least loss over all budgets; among equals, the plan that spends the most
    loss_min = best[finite].min()
    candidates = np.flatnonzero(finite & (best <= loss_min + 1e-12))
    w = int(candidates[np.argmax(used[candidates])])

    ratios: dict[str, float] = {}
    terms = [outside]
    for layer, choice in zip(reversed(layers), reversed(choices), strict=True):
        k = int(choice[w])
        if k == -1:
            ratios[layer.name] = 1.0
            cost = layer.original
        else:
            ratios[layer.name] = layer.ratios[k]
            cost = layer.costs[k]
        terms.append(cost)
        w -= round(cost / unit)
    ratios = {layer.name: ratios[layer.name] for layer in layers}
    model_ratio = math.fsum(terms) / total
    compressed = sum(1 for r in ratios.values() if r < 1.0)
    message = (
        f"target ratio {target:.6g} reached: model ratio {model_ratio:.6g} with the least summed score loss "
        f"{float(loss_min):.6g}, {compressed} of {len(layers)} layers compressed."
    )
    return Selection(ratios, model_ratio, None, reached=True, message=message)
