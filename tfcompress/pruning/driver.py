"""``compress_model(..., compress_scheme="channel_pruning")``: choose, refit and remove input channels.

How a run goes (the SVD schemes' principles hold: one working copy, in-place candidates):

1. :func:`tfcompress.pruning.prune_units` splits the model into *units*: channel
   groups that must lose the same channels together (one Conv2D/Dense/SeparableConv2D input, or a
   residual stage whose ``Add`` ties several layers), each named after its first
   consumer layer. Layers that cannot be pruned are listed with the reason.
2. For a unit at a candidate ratio (fraction of channels kept), the kept channels
   are chosen (greedy least squares on sampled activations, or kernel magnitude),
   each consumer's kept weights and bias are refitted by least squares to
   reproduce the original layer's outputs, and the result is evaluated **in place**:
   the consumer's kernel in the working copy gets zeros on the dropped input
   channels and the refitted weights on the kept ones, which computes exactly
   what the pruned layer will. No rebuild per candidate. Each candidate is a
   :class:`tfcompress.pipeline.Job` (those weight assignments), scored by the
   run's executor.
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

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from .._checks import check_finite
from ..cost import model_cost
from ..enums import CompressionScheme, CostMetric, Mode, RankSelectScheme
from ..errors import TargetUnreachableError, unreachable_message
from ..pipeline.evaluator import WorkGuard
from ..pipeline.executor import Executor, Job, LocalExecutor, opened, progress_bar, weight_indices
from ..pipeline.plans import accuracy_target, keep_alternative, lookup, match_ratio
from ..pipeline.scorecache import open_cache, scores_kept, settings_tag
from ..select import ScoreCacheWriter, greedy_select, min_loss_select
from ..stats import CompressionStats
from .consumers import (
    Consumer,
    consumers_of,
    keep_order,
    mask_assignments,
    plan_cost,
    refit_consumers,
    unit_cost,
    view_of,
)
from .ffn_search import FfnGroups
from .groups import PruneUnit, prune_units
from .inline import inline_for_pruning
from .outcome import final_weights, record_layers
from .ratios import auto_ratios, candidate_keeps, manual_ratios
from .rebuild import apply_pruning
from .sampling import POSITIONS_PER_IMAGE, Sampler, check_data_form, keep_count, model_inputs

__all__ = ["check_data_form", "compress_channels", "keep_count", "model_inputs"]

logger = logging.getLogger("tfcompress")


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


def compress_channels(
    model: keras.Model,
    work: keras.Model,
    parameters: Any,
    metric: CostMetric,
    evaluator: Any,
    stats: CompressionStats,
    trainer: Any,
    verbose: int,
    executor: Executor | None = None,
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
        view = view_of(model.get_layer(name))
        for what, variable in (("kernel", view.kernel), ("depthwise kernel", view.depthwise)):
            if variable is not None:  # before any data is sampled
                value = keras.ops.convert_to_numpy(variable)
                check_finite(value, f"channel pruning: the {what} of layer '{name}'", "fix the weights first")
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
    run.ffn = FfnGroups.find(model, work, parameters, stats)  # hook: FFN units inside custom layers
    run.units.update({u.name: u for u in run.ffn_units})
    ratios_of = manual_ratios(run, reasons) if manual else auto_ratios(run)
    cache = None if manual else _open_score_cache(run)

    if units_list or run.ffn is None:  # the graph's groups sample through the model's one input
        images = model_inputs(
            parameters.data, model, max(16, math.ceil(parameters.num_reconstruction_samples / POSITIONS_PER_IMAGE))
        )
        if parameters.reconstruct or parameters.channel_selection != "magnitude":
            run.sampler = Sampler(
                images, parameters.num_reconstruction_samples, parameters.seed, keep_bytes=_patch_budget(model)
            )
        stats.notes.append(
            f"channel pruning: {len(images)} input(s), {parameters.num_reconstruction_samples} sampled positions per "
            f"layer, {parameters.channel_selection} channel selection, reconstruction "
            f"{'on' if parameters.reconstruct else 'off'}"
        )
    guard = WorkGuard(work)
    logger.info("evaluating the baseline model")
    stats.baseline_model_accuracy = evaluator(work, "the baseline model")
    guard.check("when the baseline was evaluated")

    keeps = candidate_keeps(run, ratios_of, manual)
    masked = None  # the chosen plan's masked result, when the two-plan check already computed it
    if manual:
        plan = {name: next(iter(row.values())) for name, row in keeps.items() if row}
    else:
        table = _score_table(run, keeps, cache, evaluator, verbose, LocalExecutor() if executor is None else executor)
        if run.parameters.params.select_params.target_comp_ratio is None:  # an accuracy target alone
            chosen, alternative = _accuracy_plan(run, keeps, table, evaluator), None
        else:
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
    record_layers(run, {name: kept for name, kept in kept_channels.items() if not run.is_ffn(name)})
    if run.ffn is not None:
        run.ffn.record(stats, {n: f for n, f in kept_channels.items() if run.is_ffn(n)})
    stats.timings["channel_pruning_seconds"] = time.perf_counter() - start
    return compressed


#: the original model's sampled patches held between passes: this share of the weights' size (issue 19's bound)
ORIGINAL_PATCHES_SHARE = 0.1
#: ... but never less than this (small models keep all of them: one pass)
ORIGINAL_PATCHES_MIN_BYTES = 8 * 2**20


def _patch_budget(model: keras.Model) -> int:
    """How many bytes of the original model's sampled patches the sampler holds between passes."""
    weights = sum(int(np.prod(tuple(w.shape), dtype=np.int64)) * 4 for w in model.weights)
    return max(ORIGINAL_PATCHES_MIN_BYTES, int(ORIGINAL_PATCHES_SHARE * weights))


def _open_score_cache(run: _Run) -> tuple[str, str, dict[str, dict[float, float]]] | None:
    """``(path, fingerprint, table)`` of the score cache, checked before any evaluation (None: no cache)."""
    path = run.parameters.params.select_params.saved_eval_scores_dict
    if path is None:
        return None
    p = run.parameters
    tag = settings_tag(CompressionScheme.channel_pruning, run.metric, p.multiplicity) + (
        f"/{p.channel_selection}/r{int(p.reconstruct)}/s{p.num_reconstruction_samples}"
    )
    digest, table = open_cache(run.model, os.fspath(path), tag)
    if table:
        logger.info("read eval scores of %d channel group(s) from %s", len(table), path)
    return os.fspath(path), f"{digest}|{tag}", table


def _score_table(
    run: _Run, keeps: dict[str, dict[float, int]], cache: Any, evaluator: Any, verbose: int, executor: Executor
) -> dict[str, dict[float, float]]:
    """Evaluate each unit alone at each candidate, in place in the working copy, by ``executor`` (cached scores are
    reused). The jobs are made lazily, one unit's refits at a time."""
    table = {name: dict(row) for name, row in cache[2].items()} if cache else {}
    todo = {
        name: sorted(
            {k for r, k in row.items() if not any(math.isclose(r, t, rel_tol=1e-6) for t in table.get(name, {}))}
        )
        for name, row in keeps.items()
    }
    total_evals = sum(len(v) for v in todo.values())
    logger.info("channel pruning: %d group(s), %d candidate evaluation(s)", len(keeps), total_evals)
    progbar = progress_bar(total_evals, verbose)
    slot = weight_indices(run.work)

    def jobs() -> Iterator[Job]:
        for name, pending in todo.items():
            if not pending:
                continue
            if run.is_ffn(name):  # hook: an FFN unit's candidates (its consumer's masked refits)
                yield from run.ffn.jobs(run.work, name, pending, slot)  # type: ignore[union-attr]
                continue
            unit = run.units[name]
            consumers = consumers_of(
                unit, run.work, run.model, run.sampler, {}, run.consumer_names, current_is_original=True
            )
            order = run.choose(consumers, unit, max(pending))
            for k in pending:
                dropped = np.setdiff1d(np.arange(unit.channels), order[:k])
                refits = refit_consumers(consumers, dropped, run.parameters.reconstruct)
                assignments = tuple((slot[id(v)], value) for v, value in mask_assignments(run.work, consumers, refits))
                yield Job((name, k), f"channel group '{name}' keeping {k} of {unit.channels} channels", assignments)

    done = 0
    writer = ScoreCacheWriter(cache[0], cache[1]) if cache else None
    with scores_kept(writer, table, run.stats):
        if total_evals:
            with opened(executor, run.work, evaluator), contextlib.closing(executor.map(jobs())) as results:
                for job, score in results:
                    name, k = job.key
                    row = table[name] = table.get(name, {})  # a stop mid-group keeps its scores
                    row.update({ratio: score for ratio, kept in keeps[name].items() if kept == k})
                    done += 1
                    progbar.update(done, values=[("score", score)])
                    if writer is not None:
                        writer.save(table)  # every score, written at most every half second
    run.stats.eval_scores = {name: dict(sorted(table.get(name, {}).items())) for name in keeps}
    return table


@dataclass
class _Plan:
    """A selected plan ``{unit: channels kept}``, its exact model ratio and the notes of how it was fitted."""

    plan: dict[str, int]
    ratio: float
    notes: list[str] = field(default_factory=list)


def _selectors(
    run: _Run, keeps: dict[str, dict[float, int]], table: dict[str, dict[float, float]]
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


def _select(
    run: _Run, keeps: dict[str, dict[float, int]], table: dict[str, dict[float, float]]
) -> tuple[_Plan, _Plan | None]:
    """Greedy selection on the score table, made to fit the target by the exact cost, then the leftover budget
    spent on more channels. With ``compare_plans``, also the plan of least summed per-unit loss, fitted the same
    way (``None`` when it is not needed: switched off, the same plan, or it does not meet the target).
    Plans are ``{unit: channels kept}``."""
    stats = run.stats
    select_params = run.parameters.params.select_params
    target = float(select_params.target_comp_ratio)
    scores, threshold_at, min_loss_at = _selectors(run, keeps, table)
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
    target: float | None = None,
) -> _Plan:
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
        loss = {n: stats.baseline_model_accuracy - lookup(scores[n], _ratio_of(keeps[n], k)) for n, k in plan.items()}
        filled = _fill_budget(run, plan, keeps, loss, target * total)
        filled_ratio = run.plan_cost(filled) / total
        if filled_ratio > ratio + 1e-9:
            notes.append(
                f"{what} gave ratio {ratio:.4f}; the budget left up to the target was spent on more "
                f"channels (most score-sensitive groups first), giving {filled_ratio:.4f}"
            )
        plan, ratio = filled, filled_ratio
    return _Plan(plan, ratio, notes)


def _compare_plans(run: _Run, threshold: _Plan, alternative: _Plan, evaluator: Any) -> tuple[_Plan, tuple | None]:
    """Score the threshold plan and the least-summed-loss plan on the whole model; keep the better one.

    Each plan is written into the working copy as masks (every unit refitted in forward order, as the final model
    will be), scored, and the working copy restored. Returns the kept plan and, when the least-summed-loss plan
    wins, its masked result (kept channels and refits), which the final model is then built from (``None``: the
    threshold plan won and is refitted as the model is built). Ties keep the threshold plan."""
    # the threshold plan's refits are let go once it is scored: holding both plans' refits at once cost about 0.4x
    # the weights (issue 19); when it wins, it is refitted once more as the final model is built
    threshold_score = _score_masked(run, threshold, evaluator, "the threshold plan")[0]
    alt_score, alt_masked = _score_masked(run, alternative, evaluator, "the least-summed-loss plan")
    scored = (threshold_score, threshold.ratio), (alt_score, alternative.ratio)
    if keep_alternative(run.stats, *scored, "group"):
        run.stats.notes.extend(alternative.notes)
        return alternative, alt_masked
    return threshold, None


def _score_masked(run: _Run, plan: _Plan, evaluator: Any, what: str) -> tuple[float, tuple]:
    """The whole-model score of ``plan`` masked into the working copy (restored afterwards, whatever happens), and
    the masked result (kept channels and refits)."""
    ordered = [u for u in run.units_list if u.name in plan.plan]
    # the working copy equals the model here: a masked variable is restored from the model's own variable (no copy
    # of every consumer's kernel is held meanwhile; issue 19's memory bound)
    pairs = zip(run.work.weights, run.model.weights, strict=False)
    source_of = {id(w): v for w, v in pairs} if len(run.work.weights) == len(run.model.weights) else {}
    originals: dict[int, tuple[Any, Any]] = {}
    try:
        masked = _masked_plan(run, ordered, plan.plan, originals, source_of)
        score = evaluator(run.work, what)
    finally:
        for variable, value in originals.values():
            variable.assign(value)
    return score, masked


def _accuracy_plan(
    run: _Run, keeps: dict[str, dict[float, int]], table: dict[str, dict[float, float]], evaluator: Any
) -> _Plan:
    """``GreedySelectionParameters(target_comp_ratio=None, max_score_drop=d)``: the cheapest plan of the threshold
    selector, fitted by the exact cost at a goal ratio, whose whole-model score (masked into the working copy) is
    within ``d`` of the baseline."""
    scores, threshold_at, _ = _selectors(run, keeps, table)

    def plan_at(goal: float) -> tuple[_Plan, float]:
        fitted = _fitted_plan(run, keeps, scores, threshold_at, "greedy selection", target=goal)
        return fitted, fitted.ratio

    def evaluate(plan: _Plan) -> float:
        return _score_masked(run, plan, evaluator, "a candidate plan of the accuracy target")[0]

    drop = run.parameters.params.select_params.max_score_drop
    chosen = accuracy_target(
        plan_at, evaluate, run.stats, drop, key=lambda p: tuple(sorted(p.plan.items())), unit="group"
    )
    return chosen


def _prune_unit(run: _Run, unit: PruneUnit, keep: int, current: keras.Model, removed: dict[str, set[int]]) -> tuple:
    """Choose the unit's kept channels and refit its consumers on ``current``'s inputs against the original outputs.

    Returns ``(kept unit channels, dropped unit channels, consumers, refits)``.
    """
    consumers = consumers_of(unit, current, run.model, run.sampler, removed, run.consumer_names)
    kept = np.sort(run.choose(consumers, unit, keep))
    dropped = np.setdiff1d(np.arange(unit.channels), kept)
    return kept, dropped, consumers, refit_consumers(consumers, dropped, run.parameters.reconstruct)


def _masked_plan(
    run: _Run,
    ordered: list[PruneUnit],
    plan: dict[str, int],
    originals: dict[int, tuple[Any, Any]] | None = None,
    source_of: dict[int, Any] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """Write the plan in forward order into the working copy as masks (zeros on dropped inputs, refitted weights),
    so each unit is refitted on the inputs of the model pruned so far. Returns ``(kept channels, refits)``. With
    ``originals``, each variable's value before its first assignment is recorded there (to restore the copy): the
    variable of ``source_of`` (working-copy variable id -> the model's variable holding the same value) when
    given, else a copy."""
    kept_channels: dict[str, np.ndarray] = {}
    fitted: dict[str, tuple] = {}
    removed: dict[str, set[int]] = {}
    for unit in ordered:
        kept, dropped, consumers, refits = _prune_unit(run, unit, plan[unit.name], run.work, removed)
        for variable, value in mask_assignments(run.work, consumers, refits):
            if originals is not None and id(variable) not in originals:
                source = None if source_of is None else source_of.get(id(variable))
                if source is None or tuple(source.shape) != tuple(variable.shape):
                    source = keras.ops.convert_to_numpy(variable)
                originals[id(variable)] = (variable, source)
            variable.assign(np.asarray(value, dtype=variable.dtype))
        fitted.update(refits)
        for c in consumers:
            removed.setdefault(c.name, set()).update(int(i) for i in c.index[dropped])
        kept_channels[unit.name] = kept
    if run.ffn is not None:  # hook: FFN units after the graph's groups (each refitted on the model masked so far)
        kept_channels.update(run.ffn.mask(run.work, plan, originals))  # type: ignore[arg-type]
    return kept_channels, fitted


def _apply_masked(
    run: _Run, ordered: list[PruneUnit], plan: dict[str, int], masked: tuple | None = None
) -> tuple[keras.Model, dict]:
    """The pruned model of the plan: masked in the working copy (or ``masked``, the result of an earlier
    :func:`_masked_plan` of this plan), then winnowed once."""
    kept_channels, fitted = masked if masked is not None else _masked_plan(run, ordered, plan)
    graph = {name: kept for name, kept in kept_channels.items() if not run.is_ffn(name)}
    ffn = {name: fit for name, fit in kept_channels.items() if run.is_ffn(name)}
    if graph or not ffn:
        weights = final_weights(fitted, run.model, run.units, graph)
        compressed = apply_pruning(run.model, graph, units=run.units_list, weights=weights)
    else:
        compressed = run.model
    if ffn:  # hook: the FFN units' smaller layers, inside their blocks
        compressed = run.ffn.build(compressed, ffn)  # type: ignore[union-attr]
    return compressed, kept_channels


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
        weights = final_weights(refits, compressed, current_units, {unit.name: kept})
        compressed = apply_pruning(compressed, {unit.name: kept}, units=list(current_units.values()), weights=weights)
        kept_channels[unit.name] = kept
        logger.info("fine-tuning after pruning %s", unit.name)
        trainer.train_model(compressed, compressed.get_layer(unit.consumers[0].layer), train_flag=True)
    ffn_plan = {name: keep for name, keep in plan.items() if run.is_ffn(name)}
    if ffn_plan:  # hook: the FFN units, fitted on a copy of the model pruned so far, then one fine-tuning
        copy = keras.models.clone_model(compressed)
        copy.set_weights(compressed.get_weights())
        fits = run.ffn.mask(copy, ffn_plan)  # type: ignore[union-attr]
        compressed = run.ffn.build(compressed, fits)  # type: ignore[union-attr]
        kept_channels.update(fits)
        block = compressed.get_layer(run.units[next(iter(ffn_plan))].block)
        logger.info("fine-tuning after pruning the FFN units")
        trainer.train_model(compressed, block, train_flag=True)
    return compressed, kept_channels


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
