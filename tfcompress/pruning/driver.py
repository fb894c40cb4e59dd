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
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from .._checks import check_finite
from ..cost import model_cost
from ..enums import CompressionScheme, CostMetric, Mode, RankSelectScheme
from ..pipeline.evaluator import WorkGuard
from ..pipeline.executor import Executor, Job, LocalExecutor, opened, progress_bar, weight_indices
from ..pipeline.plans import accuracy_target, keep_alternative
from ..pipeline.scorecache import open_cache, scores_kept, settings_tag
from ..select import ScoreCacheWriter
from ..stats import CompressionStats
from .consumers import (
    consumers_of,
    mask_assignments,
    refit_consumers,
    view_of,
)
from .ffn_search import FfnGroups
from .groups import PruneUnit, prune_units
from .inline import inline_for_pruning
from .outcome import final_weights, record_layers
from .plan_select import Plan, fitted_plan, select_plan, selectors
from .ratios import auto_ratios, candidate_keeps, manual_ratios
from .rebuild import apply_pruning
from .run import ChannelRun
from .sampling import POSITIONS_PER_IMAGE, Sampler, check_data_form, keep_count, model_inputs

__all__ = ["check_data_form", "compress_channels", "keep_count", "model_inputs"]

logger = logging.getLogger("tfcompress")


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
    run = ChannelRun(
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
            chosen, alternative = select_plan(run, keeps, table)
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


def _open_score_cache(run: ChannelRun) -> tuple[str, str, dict[str, dict[float, float]]] | None:
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
    run: ChannelRun, keeps: dict[str, dict[float, int]], cache: Any, evaluator: Any, verbose: int, executor: Executor
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


def _compare_plans(run: ChannelRun, threshold: Plan, alternative: Plan, evaluator: Any) -> tuple[Plan, tuple | None]:
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


def _score_masked(run: ChannelRun, plan: Plan, evaluator: Any, what: str) -> tuple[float, tuple]:
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
    run: ChannelRun, keeps: dict[str, dict[float, int]], table: dict[str, dict[float, float]], evaluator: Any
) -> Plan:
    """``GreedySelectionParameters(target_comp_ratio=None, max_score_drop=d)``: the cheapest plan of the threshold
    selector, fitted by the exact cost at a goal ratio, whose whole-model score (masked into the working copy) is
    within ``d`` of the baseline."""
    scores, threshold_at, _ = selectors(run, keeps, table)

    def plan_at(goal: float) -> tuple[Plan, float]:
        fitted = fitted_plan(run, keeps, scores, threshold_at, "greedy selection", target=goal)
        return fitted, fitted.ratio

    def evaluate(plan: Plan) -> float:
        return _score_masked(run, plan, evaluator, "a candidate plan of the accuracy target")[0]

    drop = run.parameters.params.select_params.max_score_drop
    chosen = accuracy_target(
        plan_at, evaluate, run.stats, drop, key=lambda p: tuple(sorted(p.plan.items())), unit="group"
    )
    return chosen


def _prune_unit(
    run: ChannelRun, unit: PruneUnit, keep: int, current: keras.Model, removed: dict[str, set[int]]
) -> tuple:
    """Choose the unit's kept channels and refit its consumers on ``current``'s inputs against the original outputs.

    Returns ``(kept unit channels, dropped unit channels, consumers, refits)``.
    """
    consumers = consumers_of(unit, current, run.model, run.sampler, removed, run.consumer_names)
    kept = np.sort(run.choose(consumers, unit, keep))
    dropped = np.setdiff1d(np.arange(unit.channels), kept)
    return kept, dropped, consumers, refit_consumers(consumers, dropped, run.parameters.reconstruct)


def _masked_plan(
    run: ChannelRun,
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
    run: ChannelRun, ordered: list[PruneUnit], plan: dict[str, int], masked: tuple | None = None
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


def _apply_with_trainer(run: ChannelRun, ordered: list[PruneUnit], plan: dict[str, int], trainer: Any) -> tuple:
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
