"""Channel pruning's plan selection: from the score table of the units' candidates to a plan ``{unit: channels
kept}`` that meets the target by the exact cost (the goal tightened when units interact, the budget left up to the
target given back as channels). It only sees scores and costs, through the run's cost functions."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import TargetUnreachableError, unreachable_message
from ..pipeline.plans import lookup, match_ratio
from ..select import greedy_select, min_loss_select
from .run import ChannelRun

__all__ = ["Plan", "fill_budget", "fitted_plan", "ratio_of", "select_plan", "selectors"]


@dataclass
class Plan:
    """A selected plan ``{unit: channels kept}``, its exact model ratio and the notes of how it was fitted."""

    plan: dict[str, int]
    ratio: float
    notes: list[str] = field(default_factory=list)


def selectors(
    run: ChannelRun, keeps: dict[str, dict[float, int]], table: dict[str, dict[float, float]]
) -> tuple[dict[str, dict[float, float]], Callable[[float], Any], Callable[[float], Any]]:
    """The score table of the candidates, and the threshold and least-summed-loss selectors at a goal ratio."""
    stats = run.stats
    select_params = run.parameters.params.select_params
    scores = {name: {r: lookup(table[name], r) for r in keeps[name]} for name in keeps if keeps[name]}
    if not scores:
        raise ValueError("compress_model: no candidate ratio of any channel group saves cost; nothing to select.")
    costs = {name: {r: run.unit_cost(name, k) for r, k in keeps[name].items()} for name in scores}
    originals = {name: run.unit_cost(name, run.units[name].channels) for name in scores}
    total = run.total_cost
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

    return scores, threshold_at, min_loss_at


def select_plan(
    run: ChannelRun, keeps: dict[str, dict[float, int]], table: dict[str, dict[float, float]]
) -> tuple[Plan, Plan | None]:
    """Greedy selection on the score table, made to fit the target by the exact cost, then the leftover budget
    spent on more channels. With ``compare_plans``, also the plan of least summed per-unit loss, fitted the same
    way (``None`` when it is not needed: switched off, the same plan, or it does not meet the target).
    Plans are ``{unit: channels kept}``."""
    stats = run.stats
    select_params = run.parameters.params.select_params
    target = float(select_params.target_comp_ratio)
    scores, threshold_at, min_loss_at = selectors(run, keeps, table)
    chosen = fitted_plan(run, keeps, scores, threshold_at, "greedy selection")
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
    alternative = fitted_plan(run, keeps, scores, min_loss_at, "the least-summed-loss selection")
    if not alternative.plan or alternative.ratio > target + 1e-3 or alternative.plan == chosen.plan:
        return chosen, None
    return chosen, alternative


def fitted_plan(
    run: ChannelRun,
    keeps: dict[str, dict[float, int]],
    scores: dict[str, dict[float, float]],
    select_at: Callable[[float], Any],
    what: str,
    target: float | None = None,
) -> Plan:
    """``select_at(goal)``'s plan made to fit the target by the exact cost (the goal tightened when units interact),
    then the budget left up to the target spent on more channels. ``target`` defaults to the parameters' ratio."""
    stats = run.stats
    if target is None:
        target = float(run.parameters.params.select_params.target_comp_ratio)
    total = run.total_cost
    notes: list[str] = []

    def plan_for(goal: float) -> tuple[dict[str, int], float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            selection = select_at(goal)
        chosen = {n: keeps[n][match_ratio(keeps[n], r)] for n, r in selection.ratios.items() if r < 1.0}
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
        loss = {n: stats.baseline_model_accuracy - lookup(scores[n], ratio_of(keeps[n], k)) for n, k in plan.items()}
        filled = fill_budget(run, plan, keeps, loss, target * total)
        filled_ratio = run.plan_cost(filled) / total
        if filled_ratio > ratio + 1e-9:
            notes.append(
                f"{what} gave ratio {ratio:.4f}; the budget left up to the target was spent on more "
                f"channels (most score-sensitive groups first), giving {filled_ratio:.4f}"
            )
        plan, ratio = filled, filled_ratio
    return Plan(plan, ratio, notes)


def ratio_of(row: dict[float, int], keep: int) -> float:
    """The candidate ratio of ``row`` (ratio -> keep) that gives ``keep`` channels."""
    return next(r for r, k in row.items() if k == keep)


def fill_budget(
    run: ChannelRun, plan: dict[str, int], keeps: dict[str, dict[float, int]], loss: dict[str, float], budget: float
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
