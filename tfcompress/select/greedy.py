"""Greedy per-layer ratio selection by a binary search over a score threshold.

The selector sees only tables: for every layer, the eval score of the model with *only that layer* compressed at
each candidate ratio, and the compressed cost of the layer at each candidate. It never touches a model.

Ratios are compressed cost / original cost everywhere (0.3 = 30 % of the cost is left); 1.0 means "uncompressed".
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral


def is_int(value: object) -> bool:
    """An int, Python's or numpy's (``np.int64(3)``), not a bool (this package imports nothing of tfcompress)."""
    return isinstance(value, Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


__all__ = ["Selection", "greedy_select", "monotonic_fit"]

# Score-table ratios are matched to cost-table ratios within this relative tolerance, so that scores given as 0.3
# (e.g. a user's saved table) still match cost ratios computed as 0.30000000000000004.
_RATIO_REL_TOL = 1e-6


@dataclass
class Selection:
    """The outcome of :func:`greedy_select`.

    Attributes:
        ratios: chosen candidate ratio per layer of the score table (1.0 = leave the layer uncompressed). The
            ratios are the keys of ``layer_costs``.
        model_ratio: achieved compressed cost / original cost of the whole model.
        threshold: the score threshold of the plan, or ``None`` when the plan compresses nothing (the threshold lies
            above every score in the table).
        reached: whether ``model_ratio <= target_ratio + tolerance``.
        message: human-readable explanation (what was reached, or why not).

    Example:
        >>> s = Selection({"conv": 0.5}, model_ratio=0.75, threshold=0.9, reached=True, message="ok")
        >>> s.ratios["conv"], s.reached
        (0.5, True)
    """

    ratios: dict[str, float]
    model_ratio: float
    threshold: float | None
    reached: bool
    message: str


def monotonic_fit(scores: Mapping[float, float]) -> dict[float, float]:
    """Least-squares isotonic fit of a score curve: scores made non-decreasing in the ratio.

    This is the L2-optimal non-decreasing fit: among all sequences ``y`` that do not decrease as the ratio grows, it
    minimises ``sum((y[r] - scores[r]) ** 2)``. It is computed with the pool-adjacent-violators algorithm: walking
    the ratios in increasing order, any run of scores that violates the order is replaced by its mean. Noisy
    evaluations (a layer that looks *better* when compressed more) are thus smoothed before the threshold search.

    Args:
        scores: ``ratio -> score`` (higher is better) for one layer.

    Returns:
        ``ratio -> fitted score``, ordered by increasing ratio.

    Raises:
        ValueError: if a ratio or score is not a finite number.

    Example:
        >>> monotonic_fit({0.1: 0.25, 0.2: 0.75, 0.3: 0.5, 0.4: 1.0})
        {0.1: 0.25, 0.2: 0.625, 0.3: 0.625, 0.4: 1.0}
    """
    items = []
    for ratio, score in scores.items():
        ratio_f, score_f = float(ratio), float(score)
        if not math.isfinite(ratio_f):
            raise ValueError(f"monotonic_fit: ratio {ratio!r} is not a finite number")
        if not math.isfinite(score_f):
            raise ValueError(f"monotonic_fit: score {score!r} at ratio {ratio!r} is not a finite number")
        items.append((ratio_f, ratio, score_f))
    items.sort(key=lambda item: item[0])

    # Blocks of pooled points: [sum of scores, number of points, mean]. A new point is merged backwards while the
    # previous block's mean exceeds the current one (a violation of the non-decreasing order). Comparing the very
    # means that are output keeps the result exactly non-decreasing despite rounding.
    blocks: list[tuple[float, int, float]] = []
    for _, _, score in items:
        blocks.append((score, 1, score))
        while len(blocks) > 1 and blocks[-2][2] > blocks[-1][2]:
            total, count, _ = blocks.pop()
            prev_total, prev_count, _ = blocks.pop()
            total, count = prev_total + total, prev_count + count
            blocks.append((total, count, total / count))

    fitted: dict[float, float] = {}
    position = 0
    for _, count, mean in blocks:
        for _ in range(count):
            fitted[items[position][1]] = mean
            position += 1
    return fitted


@dataclass(frozen=True)
class _Layer:
    """One layer's eligible candidates (cost < original), in increasing ratio order."""

    name: str
    ratios: tuple[float, ...]
    scores: tuple[float, ...]
    costs: tuple[float, ...]
    original: float

    def choose(self, threshold: float) -> int | None:
        """Index of the smallest candidate ratio whose score is >= threshold, or None (stay uncompressed)."""
        for index, score in enumerate(self.scores):
            if score >= threshold:
                return index
        return None


def _finite(value: object, what: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return number


def _match_cost_key(layer: str, ratio: float, costs: Mapping[float, float]) -> float:
    """The key of ``costs`` equal to ``ratio`` (within _RATIO_REL_TOL)."""
    if ratio in costs:
        return ratio
    close = [key for key in costs if math.isclose(float(key), ratio, rel_tol=_RATIO_REL_TOL, abs_tol=1e-12)]
    if len(close) != 1:
        known = sorted(float(key) for key in costs)
        raise ValueError(
            f"layer_costs[{layer!r}] has no cost for candidate ratio {ratio!r} of scores[{layer!r}] "
            f"(cost ratios: {known}); give a cost for every scored ratio"
        )
    return close[0]


def _prepare(
    scores: Mapping[str, Mapping[float, float]],
    layer_costs: Mapping[str, Mapping[float, float]],
    original_layer_costs: Mapping[str, float],
    total_cost: float,
    use_monotonic_fit: bool,
) -> tuple[list[_Layer], float]:
    """Validate the tables and build the per-layer candidate lists."""
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("scores must be a non-empty mapping layer name -> {ratio: score}")
    total = _finite(total_cost, "total_cost")
    if total <= 0:
        raise ValueError(f"total_cost must be > 0, got {total_cost!r}")

    layers: list[_Layer] = []
    for name, table in scores.items():
        if not isinstance(table, Mapping) or not table:
            raise ValueError(f"scores[{name!r}] must be a non-empty mapping ratio -> score")
        if name not in layer_costs:
            raise ValueError(f"layer {name!r} is in scores but missing from layer_costs")
        if name not in original_layer_costs:
            raise ValueError(f"layer {name!r} is in scores but missing from original_layer_costs")
        original = _finite(original_layer_costs[name], f"original_layer_costs[{name!r}]")
        if original < 0:
            raise ValueError(f"original_layer_costs[{name!r}] must be >= 0, got {original!r}")
        costs = layer_costs[name]

        # Canonical ratio = the cost table's key; score is checked and optionally fitted.
        points: dict[float, float] = {}
        for ratio, score in table.items():
            ratio_f = _finite(ratio, f"scores[{name!r}] ratio")
            if not 0.0 < ratio_f < 1.0:
                raise ValueError(f"scores[{name!r}] has candidate ratio {ratio!r}; candidate ratios must be in (0, 1)")
            score_f = _finite(score, f"scores[{name!r}][{ratio!r}]")
            key = _match_cost_key(name, ratio_f, costs)
            if key in points:
                raise ValueError(f"scores[{name!r}] has two ratios matching cost ratio {key!r}")
            points[key] = score_f
        if use_monotonic_fit:
            points = monotonic_fit(points)

        eligible = []
        for key in sorted(points, key=float):
            cost = _finite(costs[key], f"layer_costs[{name!r}][{key!r}]")
            if cost < 0:
                raise ValueError(f"layer_costs[{name!r}][{key!r}] must be >= 0, got {cost!r}")
            if cost < original:  # a candidate that saves nothing is never chosen
                eligible.append((float(key), points[key], cost))
        layers.append(
            _Layer(
                name=name,
                ratios=tuple(item[0] for item in eligible),
                scores=tuple(item[1] for item in eligible),
                costs=tuple(item[2] for item in eligible),
                original=original,
            )
        )

    covered = math.fsum(layer.original for layer in layers)
    if covered > total * (1 + 1e-9):
        raise ValueError(
            f"total_cost ({total!r}) is smaller than the sum of original_layer_costs of the scored layers "
            f"({covered!r}); total_cost must be the cost of the whole original model"
        )
    return layers, total


def _plan(layers: list[_Layer], total: float, threshold: float) -> tuple[dict[str, float], float, int]:
    """Ratios per layer, model ratio and number of compressed layers for one threshold."""
    ratios: dict[str, float] = {}
    terms = [total]
    compressed = 0
    for layer in layers:
        index = layer.choose(threshold)
        if index is None:
            ratios[layer.name] = 1.0
        else:
            ratios[layer.name] = layer.ratios[index]
            terms.append(layer.costs[index] - layer.original)
            compressed += 1
    return ratios, math.fsum(terms) / total, compressed


def greedy_select(
    scores: Mapping[str, Mapping[float, float]],
    layer_costs: Mapping[str, Mapping[float, float]],
    original_layer_costs: Mapping[str, float],
    total_cost: float,
    target_ratio: float,
    tolerance: float = 1e-3,
    use_monotonic_fit: bool = False,
    max_iterations: int = 100,
) -> Selection:
    """Choose a compression ratio per layer so the whole model meets ``target_ratio``, losing the least score.

    For a score threshold ``t`` every layer takes the *smallest* candidate ratio whose score is ``>= t`` (the most
    compression that keeps the layer's score at least ``t``), or stays uncompressed (1.0) if no candidate qualifies.
    The model ratio of that plan is::

        (total_cost - sum(original cost of compressed layers) + sum(chosen compressed costs)) / total_cost

    Layers outside the table count at their original cost. The plan only changes when ``t`` crosses a score in the
    table, so the search runs over the sorted distinct scores (plus "above every score", which compresses nothing);
    the lowest score is the "every layer at its smallest candidate" end. A binary search finds the **highest
    threshold whose model ratio is <= target_ratio + tolerance**: that plan meets the target while keeping every
    layer's score as high as possible. The model ratio is a step function of the threshold, so the achieved ratio
    may lie below the target by more than ``tolerance`` when no plan lands closer; ``message`` says so.

    Candidates whose compressed cost is ``>=`` the layer's original cost save nothing and are never chosen. If the
    compressed costs of a layer do not grow with the ratio (so the model ratio is not monotonic in the threshold),
    every threshold is tried instead of a binary search; the rule for the final choice is the same. Everything is
    deterministic: candidates are visited in increasing ratio and thresholds in increasing score.

    Args:
        scores: ``scores[layer][ratio]``: eval score (higher is better) with only ``layer`` compressed at candidate
            ``ratio`` in (0, 1).
        layer_costs: ``layer_costs[layer][ratio]``: compressed cost of the layer at that candidate (after rank
            rounding). Scored ratios are matched to these keys within a relative 1e-6, and the chosen ratios
            returned are these keys.
        original_layer_costs: uncompressed cost per layer.
        total_cost: cost of the whole original model, including layers not in the table.
        target_ratio: wanted model ratio, in (0, 1].
        tolerance: slack allowed above the target.
        use_monotonic_fit: replace each layer's scores by :func:`monotonic_fit` first (then ``threshold`` is a
            fitted score).
        max_iterations: cap on binary-search steps (about log2 of the number of distinct scores are needed); if
            hit, the best plan found that meets the target is returned and ``message`` says the search stopped.

    Returns:
        A :class:`Selection`. If even the most-compressed plan has a model ratio above ``target_ratio + tolerance``,
        that plan is returned with ``reached=False`` and a ``UserWarning`` giving the best reachable ratio.

    Raises:
        ValueError: for a target outside (0, 1], an empty table, a layer missing from the cost tables, a
            non-finite score or cost, or a ratio outside (0, 1); the message names the layer or argument.

    Example:
        >>> scores = {"a": {0.25: 0.9, 0.5: 0.95}, "b": {0.25: 0.6, 0.5: 0.9}}
        >>> costs = {"a": {0.25: 25.0, 0.5: 50.0}, "b": {0.25: 25.0, 0.5: 50.0}}
        >>> sel = greedy_select(scores, costs, {"a": 100.0, "b": 100.0}, total_cost=200.0, target_ratio=0.4)
        >>> sel.ratios, sel.model_ratio, sel.threshold, sel.reached
        ({'a': 0.25, 'b': 0.5}, 0.375, 0.9, True)
    """
    target = _finite(target_ratio, "target_ratio")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target_ratio must be in (0, 1], got {target_ratio!r}")
    tol = _finite(tolerance, "tolerance")
    if tol < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    if not is_int(max_iterations) or max_iterations < 1:
        raise ValueError(f"max_iterations must be an int >= 1, got {max_iterations!r}")

    layers, total = _prepare(scores, layer_costs, original_layer_costs, total_cost, use_monotonic_fit)
    thresholds = sorted({score for layer in layers for score in layer.scores})
    thresholds.append(math.inf)  # above every score: nothing compressed
    limit = target + tol
    evaluated: dict[int, tuple[dict[str, float], float, int]] = {}

    def evaluate(index: int) -> tuple[dict[str, float], float, int]:
        if index not in evaluated:
            evaluated[index] = _plan(layers, total, thresholds[index])
        return evaluated[index]

    monotone = all(a <= b for layer in layers for a, b in itertools.pairwise(layer.costs))
    stopped_early = False

    def last_at_most(bound: float) -> int | None:
        """Highest threshold index whose model ratio is <= bound (None if there is none)."""
        nonlocal stopped_early
        if not monotone:  # try every threshold
            matching = [index for index in range(len(thresholds)) if evaluate(index)[1] <= bound]
            return matching[-1] if matching else None
        # The model ratio is non-decreasing in the threshold: the indices within the bound are a prefix.
        if evaluate(0)[1] > bound:
            return None
        low, high, steps = 0, len(thresholds), 0  # low: within the bound; high: beyond it (or past the end)
        while high - low > 1:
            if steps >= max_iterations:
                stopped_early = True
                break
            middle = (low + high) // 2
            if evaluate(middle)[1] <= bound:
                low = middle
            else:
                high = middle
            steps += 1
        return low

    best = last_at_most(limit)
    if best is None:
        # Unreachable: return the most-compressed plan (lowest model ratio; ties -> highest threshold).
        lowest_ratio = min(evaluate(index)[1] for index in range(len(thresholds))) if not monotone else evaluate(0)[1]
        lowest = last_at_most(lowest_ratio)
        assert lowest is not None
        ratios, model_ratio, compressed = evaluate(lowest)
        outside = (total - math.fsum(layer.original for layer in layers)) / total
        stuck = [layer.name for layer in layers if not layer.ratios]
        message = (
            f"target ratio {target:.6g} (tolerance {tol:.3g}) is not reachable: the best reachable model ratio is "
            f"{model_ratio:.6g} (the most-compressed plan); returning that plan. "
            f"Layers outside the score table keep {outside:.1%} of the model cost uncompressed"
        )
        if stuck:
            message += f"; no candidate of {stuck} saves any cost"
        message += ". To go further, add layers, use smaller candidate ratios or raise the target."
        warnings.warn(message, UserWarning, stacklevel=2)
        return Selection(ratios, model_ratio, _threshold(thresholds[lowest]), reached=False, message=message)

    ratios, model_ratio, compressed = evaluate(best)
    threshold = _threshold(thresholds[best])
    if compressed == 0:
        message = f"target ratio {target:.6g} reached without compressing any layer (model ratio {model_ratio:.6g})."
    else:
        message = (
            f"target ratio {target:.6g} reached: model ratio {model_ratio:.6g} at score threshold {threshold:.6g}, "
            f"{compressed} of {len(layers)} layers compressed."
        )
    if stopped_early:
        message += (
            f" The binary search stopped after max_iterations={max_iterations} steps; a higher threshold may also "
            f"meet the target."
        )
    elif model_ratio < target - tol and best + 1 < len(thresholds):
        next_ratio = evaluate(best + 1)[1]
        message += (
            f" The model ratio is a step function of the threshold: the next higher threshold gives "
            f"{next_ratio:.6g} > target + tolerance, so this plan compresses more than asked."
        )
    return Selection(ratios, model_ratio, threshold, reached=True, message=message)


def _threshold(value: float) -> float | None:
    return None if math.isinf(value) else value
