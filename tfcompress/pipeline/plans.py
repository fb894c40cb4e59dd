"""From a score table to a plan of ranks: the greedy selection with its outcome recorded, the budget fill up to the
target, the plan's ratio, and the whole-model check of two plans."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import keras

from ..cost import (
    max_rank,
)
from ..enums import CostMetric
from ..errors import TargetUnreachableError, unreachable_message
from ..rewrite import _source_kernel
from ..select import (
    greedy_select,
)
from ..select.target import search_score_drop
from ..stats import CompressionStats
from .candidates import Candidate, kernel_originals, kernel_slot
from .evaluator import Evaluator

logger = logging.getLogger("tfcompress")


def select_greedy(
    scores: dict[str, dict[float, float]],
    costs: dict[str, dict[float, float]],
    originals: dict[str, float],
    total_cost: float,
    select_params: Any,
    stats: CompressionStats,
) -> Any:
    """Run :func:`greedy_select`, re-raise its warnings as compress_model's and record the outcome in ``stats``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selection = greedy_select(
            scores,
            costs,
            originals,
            float(total_cost),
            select_params.target_comp_ratio,
            use_monotonic_fit=select_params.use_monotonic_fit,
        )
    if not selection.reached and not select_params.allow_unreachable:
        raise TargetUnreachableError(
            unreachable_message(
                "compress_model",
                select_params.target_comp_ratio,
                selection.model_ratio,
                select_params.saved_eval_scores_dict,
                "every eligible layer at its smallest candidate ratio",
            ),
            target_ratio=select_params.target_comp_ratio,
            best_ratio=selection.model_ratio,
            eval_scores=stats.eval_scores or scores,
            cache_path=select_params.saved_eval_scores_dict,
        )
    for warning in caught:
        warnings.warn(f"compress_model: {warning.message}", UserWarning, stacklevel=4)
    if not selection.reached:
        stats.notes.append(selection.message)
    stats.selected_comp_ratio = selection.model_ratio
    return selection


def filled_plan(
    selection: Any,
    scores: dict[str, dict[float, float]],
    ranks: dict[str, dict[float, Any]],
    by_path: dict[str, Candidate],
    candidates: list[Candidate],
    stats: CompressionStats,
    select_params: Any,
    total_cost: float,
    target: float | None = None,
) -> tuple[dict[str, Any], dict[str, float], float, str | None]:
    """Ranks of a selection's chosen candidates, with the budget left up to the target spent on higher ranks.

    Returns the plan (path -> rank), each layer's achieved cost ratio, the plan's model ratio, and a note when the
    budget fill moved it. ``target`` (default: the parameters' target ratio) is the ratio the budget fills up to.
    """
    plan: dict[str, Any] = {}
    chosen: dict[str, float] = {}
    for path, ratio in selection.ratios.items():
        if ratio < 1.0:
            plan[path] = ranks[path][match_ratio(ranks[path], ratio)]
            chosen[path] = ratio
    note = None
    ratio = selection.model_ratio
    if selection.reached and plan and CostMetric(stats.cost_metric) is not CostMetric.latency:
        loss = {p: stats.baseline_model_accuracy - lookup(scores[p], chosen[p]) for p in plan}
        caps = {}
        for p in plan:
            higher = sorted(r for r in ranks[p] if r > chosen[p] + 1e-9)
            caps[p] = ranks[p][higher[0]] if higher else None
        before = selection.model_ratio
        goal = select_params.target_comp_ratio if target is None else target
        plan = fill_budget(plan, by_path, loss, caps, goal * total_cost, total_cost)
        after = ratio = plan_ratio(plan, candidates, total_cost)
        if after > before + 1e-12:
            note = (
                f"greedy selection gave ratio {before:.4f}; the budget left up to the target was spent on higher ranks "
                f"(most score-sensitive layers first), giving {after:.4f}"
            )
        chosen = {p: by_path[p].cost(r) / by_path[p].original for p, r in plan.items()}
    return plan, chosen, ratio, note


def fill_budget(
    plan: dict[str, Any],
    by_path: dict[str, Candidate],
    loss: dict[str, float],
    caps: dict[str, Any],
    budget_cost: float,
    total_cost: float,
) -> dict[str, Any]:
    """Spend the cost left between the selected plan and the target on higher ranks.

    The greedy threshold search moves in steps of whole candidates, so its plan can
    land well below the target. A higher rank never makes a truncated SVD worse, so
    the leftover budget is given, ``multiplicity`` ranks at a time, to the compressed
    layer that lost the most score at its chosen candidate, first up to the rank of
    its next candidate, then beyond, as long as the model stays within the target.
    Tucker-2 layers (two ranks) are left as selected.
    """
    plan = dict(plan)
    current = total_cost - sum(by_path[p].original - by_path[p].cost(r) for p, r in plan.items())
    order = sorted((p for p in plan if not isinstance(plan[p], tuple)), key=lambda p: (-loss[p], p))
    for use_caps in (True, False):
        active = list(order)
        while active:
            progressed = False
            for p in list(active):
                candidate = by_path[p]
                rank = plan[p]
                step = candidate.multiplicity
                bound = max_rank(candidate.geometry, candidate.scheme)
                limit = bound if (not use_caps or caps.get(p) is None) else min(bound, caps[p])
                new_rank = min(rank + step, limit)
                delta = candidate.cost(new_rank) - candidate.cost(rank)
                if new_rank <= rank or current + delta > budget_cost or candidate.cost(new_rank) >= candidate.original:
                    active.remove(p)
                    continue
                plan[p] = new_rank
                current += delta
                progressed = True
                break  # most sensitive layer first: restart from the top
            if not progressed:
                break
    return plan


def plan_ratio(plan: dict[str, Any], candidates: list[Candidate], total_cost: float) -> float:
    """Whole-model cost ratio when the layers of ``plan`` are at their ranks."""
    saved = sum(c.original - c.cost(plan[c.path]) for c in candidates if c.path in plan)
    return (total_cost - saved) / total_cost


def compare_plans(
    threshold: tuple[dict[str, Any], dict[str, float], float],
    alternative: tuple[dict[str, Any], dict[str, float], float],
    work: keras.Model,
    by_path: dict[str, Candidate],
    evaluator: Evaluator,
    stats: CompressionStats,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Evaluate the threshold plan and the least-summed-loss plan on the whole model; keep the better one.

    Each plan is ``(path -> rank, path -> cost ratio, model ratio)``. The threshold search keeps every layer's own
    score above one level, which bounds the worst layer but lets small losses pile up across many layers;
    :func:`~tfcompress.select.knapsack.min_loss_select` minimises their sum instead. Which is better for the combined
    model is an empirical question, so both are scored (all their kernels swapped into the working copy at once, no
    rebuild): two more evaluations, none when the two plans agree. Ties keep the threshold plan.
    """
    plan, chosen, ratio = threshold
    alt_plan, alt_chosen, alt_ratio = alternative
    if not alt_plan or {p: rank_key(r) for p, r in alt_plan.items()} == {p: rank_key(r) for p, r in plan.items()}:
        return plan, chosen
    originals = kernel_originals(list(by_path.values()))
    paths = list(dict.fromkeys([*plan, *alt_plan]))
    with contextlib.ExitStack() as stack:  # every kernel is restored at the end, whatever happens
        put = {p: stack.enter_context(kernel_slot(by_path[p].work_layer, originals)) for p in paths}
        for path, rank in plan.items():
            put[path](by_path[path].reconstructed(rank))
            by_path[path].forget_approximation()  # in the variable now: one layer's arrays at a time
        threshold_score = evaluator(work, "the threshold plan")
        # from the threshold plan to the other: only the layers whose kernel differs are assigned again
        for path in paths:
            if path in alt_plan and (path not in plan or rank_key(alt_plan[path]) != rank_key(plan[path])):
                put[path](by_path[path].reconstructed(alt_plan[path]))
                by_path[path].forget_approximation()
            elif path not in alt_plan:
                put[path](originals[id(_source_kernel(by_path[path].work_layer))])
        alt_score = evaluator(work, "the least-summed-loss plan")
    if keep_alternative(stats, (threshold_score, ratio), (alt_score, alt_ratio), "layer"):
        return alt_plan, alt_chosen
    return plan, chosen


def keep_alternative(
    stats: CompressionStats, threshold: tuple[float, float], alternative: tuple[float, float], unit: str
) -> bool:
    """The decision of the two-plan check from each plan's ``(score, model ratio)``: the least-summed-loss plan
    only if it scores strictly higher (ties keep the threshold plan). Records both scores, a note, and the kept
    plan's ratio in ``stats``."""
    keep_alt = alternative[0] > threshold[0]
    stats.plan_scores = {"threshold": threshold[0], "min_summed_loss": alternative[0]}
    stats.notes.append(
        f"whole-model check of two plans: score threshold {threshold[0]:.4f} (ratio {threshold[1]:.4f}), least "
        f"summed per-{unit} loss {alternative[0]:.4f} (ratio {alternative[1]:.4f}); kept the "
        + ("least-summed-loss plan" if keep_alt else "threshold plan")
    )
    if keep_alt:
        stats.selected_comp_ratio = alternative[1]
    return keep_alt


def nothing_saves_message(stats: CompressionStats) -> str:
    """The error when no candidate of any layer is cheaper than its layer, with what to try for the cost metric."""
    message = "compress_model: no candidate ratio of any layer saves cost; nothing to select."
    if stats.cost_metric == CostMetric.latency.value:
        message += (
            " With cost_metric='latency' every candidate measured slower than its original layer (small layers at"
            " small inputs or batch sizes often are); try cost_metric='mac', larger inputs or batch_size, or more"
            " LatencyOptions.repeats if the machine is busy."
        )
    return message


def rank_key(rank: Any) -> Any:
    return tuple(rank) if isinstance(rank, list | tuple) else int(rank)


def match_ratio(table: dict[float, Any], ratio: float) -> float:
    for key in table:
        if math.isclose(key, ratio, rel_tol=1e-6):
            return key
    raise KeyError(ratio)


def lookup(row: dict[float, float], ratio: float) -> float:
    return row[match_ratio(row, ratio)]


def score_plan(work: keras.Model, layers: dict[str, tuple[Candidate, Any]], evaluator: Evaluator, what: str) -> float:
    """The whole-model score of a plan ``{path: (candidate, rank)}``: every kernel swapped into the working copy at
    once (one layer's reconstruction in memory at a time), scored, and restored whatever happens."""
    originals = kernel_originals([candidate for candidate, _ in layers.values()])
    with contextlib.ExitStack() as stack:
        for candidate, rank in layers.values():
            stack.enter_context(kernel_slot(candidate.work_layer, originals))(candidate.reconstructed(rank))
            candidate.forget_approximation()
        return evaluator(work, what)


def accuracy_target(
    plan_at: Callable[[float], tuple[Any, float]],
    evaluate: Callable[[Any], float],
    stats: CompressionStats,
    max_score_drop: float,
    key: Callable[[Any], Any],
    unit: str = "layer",
) -> Any:
    """``GreedySelectionParameters(target_comp_ratio=None, max_score_drop=d)``: the cheapest plan the selector gives
    whose whole-model score is within ``d`` of the baseline (:func:`tfcompress.select.target.search_score_drop`).

    Records every plan scored in ``stats.plan_scores`` (``"accuracy search N: ratio R"``), their number in
    ``stats.whole_model_evaluations``, the chosen ratio and a note; warns when no compressed plan is within the
    tolerance (the plan then compresses nothing). Returns the chosen plan.
    """
    baseline = float(stats.baseline_model_accuracy)
    found = search_score_drop(plan_at, evaluate, baseline, max_score_drop, key=key)
    for i, (_, ratio, score) in enumerate(found.tried, start=1):
        stats.plan_scores[f"accuracy search {i}: ratio {ratio:.4f}"] = score
    stats.whole_model_evaluations = found.evaluations
    stats.max_score_drop = float(max_score_drop)
    stats.selected_comp_ratio = found.model_ratio
    if found.found:
        stats.notes.append(
            f"accuracy target: the cheapest plan found within max_score_drop={max_score_drop:g} of the baseline "
            f"{baseline:.4f} has ratio {found.model_ratio:.4f} and scores {found.score:.4f} on the whole model "
            f"({found.evaluations} whole-model evaluation(s) of candidate plans)"
        )
    else:
        message = (
            f"accuracy target: no compressed plan stays within max_score_drop={max_score_drop:g} of the baseline "
            f"{baseline:.4f} ({found.evaluations} whole-model evaluation(s)); every {unit} is kept at full size"
        )
        stats.notes.append(message)
        warnings.warn(f"compress_model: {message}.", UserWarning, stacklevel=4)
    return found.plan
