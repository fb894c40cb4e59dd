"""Accuracy target: the cheapest plan whose whole-model score stays within a tolerance of the baseline.

The per-layer score table says how much each layer loses alone, not what the layers lose together, so candidate
plans are derived from the table by a selector at goal ratios between the most-compressed plan and 1.0 (nothing
compressed), and each is scored on the whole model by the caller. A bisection over the goal ratio finds the lowest
goal whose plan is within the tolerance: about ``log2(1 / resolution)`` whole-model evaluations, fewer when
neighbouring goals give the same plan (a plan is scored once). The whole-model score is assumed to fall as the
goal ratio falls; where it does not, the bisection still returns a plan that was verified within the tolerance.

Pure Python: the plans and the scores come from the caller's functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ScoreDropSearch", "search_score_drop"]


@dataclass
class ScoreDropSearch:
    """The outcome of :func:`search_score_drop`.

    Attributes:
        plan: the cheapest plan found within the tolerance (the nothing-compressed plan when none is).
        model_ratio: its model ratio.
        score: its whole-model score (the baseline for the nothing-compressed plan, which is not evaluated).
        evaluations: how many whole-model evaluations the search made.
        tried: ``(goal ratio, model ratio, whole-model score)`` of every distinct plan scored, in order.
        found: False when no compressed plan stays within the tolerance.

    Example:
        >>> ScoreDropSearch({}, 1.0, 0.9, 0, [], False).found
        False
    """

    plan: Any
    model_ratio: float
    score: float
    evaluations: int
    tried: list[tuple[float, float, float]] = field(default_factory=list)
    found: bool = True


def search_score_drop(
    plan_at: Callable[[float], tuple[Any, float]],
    evaluate: Callable[[Any], float],
    baseline: float,
    max_score_drop: float,
    *,
    key: Callable[[Any], Hashable] | None = None,
    resolution: float = 0.01,
    max_evaluations: int = 12,
) -> ScoreDropSearch:
    """Bisect the goal ratio for the cheapest plan whose whole-model score is ``>= baseline - max_score_drop``.

    Args:
        plan_at: ``plan_at(goal) -> (plan, model ratio)``: the selector's plan for a goal ratio in (0, 1] (for a
            goal below the most-compressed plan it returns that plan). ``plan_at(1.0)`` compresses nothing.
        evaluate: ``evaluate(plan) -> score`` on the whole model (higher is better).
        baseline: the uncompressed model's score.
        max_score_drop: the tolerated drop (>= 0).
        key: a hashable key of a plan, so equal plans are scored once (default: the plan itself, or its sorted
            items when it is a dict).
        resolution: stop when the bracket of goal ratios is narrower than this.
        max_evaluations: cap on whole-model evaluations.

    Returns:
        A :class:`ScoreDropSearch`.

    Example:
        >>> # two layers of cost 50 each; each halving costs 0.02 of score, and losses add up on the whole model
        >>> def plan_at(goal):
        ...     keep = max(0.25, goal)
        ...     plan = {"a": keep, "b": keep} if keep < 1 else {}
        ...     return plan, keep
        >>> def evaluate(plan):
        ...     return 0.9 - sum(0.04 * (1 - r) for r in plan.values())
        >>> found = search_score_drop(plan_at, evaluate, baseline=0.9, max_score_drop=0.03)
        >>> found.model_ratio, round(found.score, 4), found.evaluations
        (0.625, 0.87, 8)
    """
    drop = float(max_score_drop)
    if not math.isfinite(drop) or drop < 0:
        raise ValueError(f"max_score_drop must be a finite number >= 0, got {max_score_drop!r}")
    if not 0 < resolution < 1:
        raise ValueError(f"resolution must be in (0, 1), got {resolution!r}")
    if not isinstance(max_evaluations, int) or max_evaluations < 1:
        raise ValueError(f"max_evaluations must be an int >= 1, got {max_evaluations!r}")

    def plan_key(plan: Any) -> Hashable:
        if key is not None:
            return key(plan)
        return tuple(sorted(plan.items())) if isinstance(plan, dict) else plan

    bound = baseline - drop
    scored: dict[Hashable, float] = {}
    tried: list[tuple[float, float, float]] = []
    evaluations = 0

    def score_of(goal: float) -> tuple[Any, float, float | None]:
        """The plan at ``goal``, its ratio and its score (None when the evaluation budget is spent)."""
        nonlocal evaluations
        plan, ratio = plan_at(goal)
        k = plan_key(plan)
        if k not in scored:
            if evaluations >= max_evaluations:
                return plan, ratio, None
            scored[k] = float(evaluate(plan))
            evaluations += 1
            tried.append((goal, float(ratio), scored[k]))
        return plan, ratio, scored[k]

    nothing, nothing_ratio = plan_at(1.0)
    best = ScoreDropSearch(nothing, float(nothing_ratio), float(baseline), 0, tried, found=False)
    lowest_plan, lowest_ratio, lowest_score = score_of(1e-9)  # the most-compressed plan
    if lowest_score is not None and lowest_score >= bound:
        return ScoreDropSearch(lowest_plan, float(lowest_ratio), lowest_score, evaluations, tried)
    low, high = float(lowest_ratio), 1.0  # low: beyond the tolerance; high: within it (nothing compressed)
    while high - low > resolution:
        goal = (low + high) / 2
        plan, ratio, score = score_of(goal)
        if score is None:
            break
        if score >= bound:
            high = min(goal, max(float(ratio), low))
            if not best.found or ratio < best.model_ratio:
                best = ScoreDropSearch(plan, float(ratio), score, evaluations, tried)
        else:
            low = goal
    best.evaluations = evaluations
    return best
