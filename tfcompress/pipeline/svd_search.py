"""The searches of the SVD schemes (weight SVD, spatial SVD, Tucker-2 and ``compress_scheme="auto"``): the score
table of every layer at every candidate ratio (scored by an executor), then a plan from the selector; and TAR."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import keras

from .. import decompose
from ..cost import (
    max_rank,
    round_rank,
)
from ..enums import CompressionScheme, CostMetric, Mode, RankSelectScheme
from ..latency import LatencyMeter
from ..params import AutoSchemeParameters
from ..rewrite import _source_kernel
from ..select import (
    ScoreCacheWriter,
    greedy_select,
    min_loss_select,
    tar_candidate_ranks,
    tar_indices_to_evaluate,
    tar_select,
)
from ..stats import CompressionStats
from .candidates import Candidate, auto_variants, kernel_originals, kernel_slot, relative_error
from .evaluator import Evaluator
from .executor import Executor, Job, opened, progress_bar, weight_indices
from .plans import (
    accuracy_target,
    compare_plans,
    filled_plan,
    lookup,
    match_ratio,
    nothing_saves_message,
    rank_key,
    score_plan,
    select_greedy,
)
from .scorecache import open_cache, scores_kept, settings_tag

logger = logging.getLogger("tfcompress")


def greedy_search(
    model: keras.Model,
    work: keras.Model,
    candidates: list[Candidate],
    parameters: Any,
    evaluator: Evaluator,
    stats: CompressionStats,
    total_cost: float,
    verbose: int,
    executor: Executor,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Greedy rank selection: every layer scored at every candidate rank (cached scores reused; the rest scored by
    ``executor``), then the selector's plan with the budget filled up to the target, and the two-plan check."""
    select_params = parameters.params.select_params
    ratios = select_params.candidates
    # ranks and costs per candidate ratio; candidates that save nothing are dropped
    ranks: dict[str, dict[float, Any]] = {}
    costs: dict[str, dict[float, float]] = {}
    for candidate in candidates:
        ranks[candidate.path], costs[candidate.path] = {}, {}
        for ratio in ratios:
            rank = candidate.rank_for(ratio)
            cost = candidate.cost(rank)
            if cost < candidate.original:
                ranks[candidate.path][ratio] = rank
                costs[candidate.path][ratio] = float(cost)

    path = select_params.saved_eval_scores_dict
    cache_path = None if path is None else os.fspath(path)
    scheme = CompressionScheme(stats.compress_scheme)
    data_tag = next((c.data_tag for c in candidates if c.data_tag), "")
    tag = settings_tag(scheme, CostMetric(stats.cost_metric), parameters.multiplicity, data_tag)
    digest, table = open_cache(model, cache_path, tag) if cache_path is not None else (None, {})
    if table:
        logger.info("read eval scores of %d layer(s) from %s", len(table), cache_path)

    # what still needs evaluating: one evaluation per distinct rank of a layer
    todo: dict[str, dict[Any, list[float]]] = {}
    for candidate in candidates:
        known = table.get(candidate.path, {})
        for ratio, rank in ranks[candidate.path].items():
            if not any(math.isclose(ratio, r, rel_tol=1e-6) for r in known):
                todo.setdefault(candidate.path, {}).setdefault(rank_key(rank), []).append(ratio)
    total_evals = sum(len(v) for v in todo.values())
    logger.info("greedy selection: %d layer(s), %d candidate evaluation(s)", len(candidates), total_evals)
    progbar = progress_bar(total_evals, verbose)
    slot = weight_indices(work)

    def jobs() -> Iterator[Job]:  # lazily: one layer's reconstruction at a time
        for candidate in candidates:
            index = slot[id(_source_kernel(candidate.work_layer))]
            for key, ratio_list in todo.get(candidate.path, {}).items():
                rank = ranks[candidate.path][ratio_list[0]]
                what = f"layer '{candidate.path}' at rank {rank}"
                yield Job((candidate.path, key), what, ((index, candidate.reconstructed(rank)),))
            candidate.forget_approximation()  # (the SVD stays whole: filling the budget may raise a rank later)

    done = 0
    writer = ScoreCacheWriter(cache_path, f"{digest}|{tag}") if cache_path is not None else None
    with scores_kept(writer, table, stats):
        if total_evals:
            with opened(executor, work, evaluator), contextlib.closing(executor.map(jobs())) as results:
                for job, score in results:
                    layer, key = job.key
                    row = table[layer] = table.get(layer, {})  # a stop mid-layer keeps its scores
                    for ratio in todo[layer][key]:
                        row[ratio] = score
                    done += 1
                    progbar.update(done, values=[("score", score)])
                    if writer is not None:
                        writer.save(table)  # every score, written at most every half second

    scores = {
        c.path: {ratio: lookup(table[c.path], ratio) for ratio in ranks[c.path]} for c in candidates if ranks[c.path]
    }
    stats.eval_scores = {c.path: dict(sorted(table.get(c.path, {}).items())) for c in candidates}
    if not scores:
        raise ValueError(nothing_saves_message(stats))
    scored_costs = {p: costs[p] for p in scores}
    originals = {c.path: float(c.original) for c in candidates if c.path in scores}
    by_path = {c.path: c for c in candidates}
    if select_params.target_comp_ratio is None:  # an accuracy target alone

        def plan_at(goal: float) -> tuple[tuple[dict[str, Any], dict[str, float]], float]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # goals below the most-compressed plan give that plan
                selection = greedy_select(
                    scores,
                    scored_costs,
                    originals,
                    float(total_cost),
                    goal,
                    use_monotonic_fit=select_params.use_monotonic_fit,
                )
            plan, chosen, ratio, _ = filled_plan(
                selection, scores, ranks, by_path, candidates, stats, select_params, total_cost, target=goal
            )
            return (plan, chosen), ratio

        def evaluate(entry: tuple[dict[str, Any], dict[str, float]]) -> float:
            layers = {p: (by_path[p], r) for p, r in entry[0].items()}
            return score_plan(work, layers, evaluator, "a candidate plan of the accuracy target")

        plan, chosen = accuracy_target(
            plan_at,
            evaluate,
            stats,
            select_params.max_score_drop,
            key=lambda entry: tuple(sorted((p, rank_key(r)) for p, r in entry[0].items())),
        )
        for candidate in candidates:
            if candidate.path not in plan:
                stats.skipped_layers.setdefault(candidate.path, "kept at full size by the selection")
        return plan, chosen
    selection = select_greedy(scores, scored_costs, originals, total_cost, select_params, stats)
    plan, chosen, ratio, note = filled_plan(
        selection, scores, ranks, by_path, candidates, stats, select_params, total_cost
    )
    stats.selected_comp_ratio = ratio
    if note:
        stats.notes.append(note)
    if select_params.compare_plans and selection.reached and plan:
        alternative = min_loss_select(
            scores,
            scored_costs,
            originals,
            float(total_cost),
            select_params.target_comp_ratio,
            reference_score=stats.baseline_model_accuracy,
            use_monotonic_fit=select_params.use_monotonic_fit,
        )
        if alternative.reached:
            alt = filled_plan(alternative, scores, ranks, by_path, candidates, stats, select_params, total_cost)
            plan, chosen = compare_plans((plan, chosen, ratio), alt[:3], work, by_path, evaluator, stats)
    for candidate in candidates:
        if candidate.path not in plan:
            stats.skipped_layers.setdefault(candidate.path, "kept at full size by the selection")
    return plan, chosen


def auto_search(
    work: keras.Model,
    candidates: list[Candidate],
    parameters: AutoSchemeParameters,
    manual_ratios: dict[str, float],
    evaluator: Evaluator,
    stats: CompressionStats,
    total_cost: float,
    verbose: int,
    executor: Executor,
    model: keras.Model | None = None,
) -> tuple[dict[str, Any], dict[str, float], list[Candidate]]:
    """``compress_scheme="auto"``: per layer and candidate ratio keep the best-scoring variant, then select.

    Every variant (see :func:`auto_variants`) of a layer is scored at the rank its scheme gives for the ratio,
    by the eval callback on the working copy (kernel swapped in place), or with ``data_free`` by minus its
    relative reconstruction error. Variants that save no cost are skipped. Auto mode then runs the greedy
    selection on the table of best scores with the costs of the winning variants; manual mode takes the best
    variant at the user's ratio. Returns the plan, the chosen ratios, and the candidates with their chosen scheme.
    With ``saved_eval_scores_dict`` (and ``model``, the user's model, for the cache's fingerprint) the scores are
    read from and written to the score cache, one row per layer and variant (``"<layer>|<scheme>"``), so a stopped
    run resumes paying only for the missing candidates.
    """
    if parameters.mode is Mode.auto and parameters.params.rank_select_scheme is not RankSelectScheme.greedy:
        raise ValueError("compress_scheme='auto' supports greedy selection and manual mode only, not TAR.")
    data_free = parameters.data_free
    if parameters.mode is Mode.manual:
        ratios_of = {c.path: [manual_ratios[c.path]] for c in candidates}
    else:
        ratios_of = {c.path: list(parameters.params.select_params.candidates) for c in candidates}
    # per layer: (ratio, variant, rank, key) of every variant that saves cost; each distinct key is scored once
    variants_of = {c.path: auto_variants(c) for c in candidates}
    entries: dict[str, list[tuple[float, Candidate, Any, tuple[str, Any]]]] = {}
    for candidate in candidates:
        rows = entries[candidate.path] = []
        for ratio in ratios_of[candidate.path]:
            for variant in variants_of[candidate.path]:
                rank = variant.rank_for(ratio)
                if variant.cost(rank) < variant.original:
                    rows.append((ratio, variant, rank, (variant.scheme, rank_key(rank))))
    seen: dict[tuple[str, tuple[str, Any]], float] = {}
    # the score cache (saved_eval_scores_dict): one row per layer and variant, "<layer>|<scheme>", ratio -> score
    cache = (
        None
        if data_free or parameters.mode is Mode.manual or model is None
        else _auto_cache(model, parameters, candidates, stats)
    )
    table: dict[str, dict[float, float]] = {}
    rows_of: dict[tuple[str, tuple[str, Any]], list[tuple[str, float]]] = {}
    for candidate in candidates:
        for ratio, variant, _, key in entries[candidate.path]:
            rows_of.setdefault((candidate.path, key), []).append((f"{candidate.path}|{variant.scheme}", ratio))
    if cache is not None:
        table = cache[2]
        for job_key, rows in rows_of.items():
            for row, ratio in rows:
                with contextlib.suppress(KeyError):  # (not cached at this ratio)
                    seen[job_key] = lookup(table.get(row, {}), ratio)
                    break
    if data_free:
        for candidate in candidates:
            for _, variant, rank, key in entries[candidate.path]:
                if (candidate.path, key) not in seen:
                    seen[candidate.path, key] = -relative_error(variant, rank)
    else:
        slot = weight_indices(work)
        # once a layer is scored, its kernel is needed again only to score whole plans (the accuracy target) or to
        # refit with data; otherwise the layer's SVD keeps just the vectors up to its highest scored rank
        select_params = None if parameters.mode is Mode.manual else parameters.params.select_params
        release_kernels = (select_params is None or select_params.target_comp_ratio is not None) and all(
            c.data_fit is None for c in candidates
        )

        total_evals = len({(c.path, e[3]) for c in candidates for e in entries[c.path]} - set(seen))
        logger.info("auto selection: %d layer(s), %d candidate evaluation(s)", len(candidates), total_evals)
        progbar = progress_bar(total_evals, verbose)

        def jobs() -> Iterator[Job]:  # lazily: one layer's reconstructions at a time
            for candidate in candidates:
                index = slot[id(_source_kernel(candidate.work_layer))]  # every variant is this one layer
                keys = {key for (path, key) in seen if path == candidate.path}  # scores read from the cache
                for _, variant, rank, key in entries[candidate.path]:
                    if key not in keys:
                        keys.add(key)
                        what = f"layer '{variant.path}' with {variant.scheme} at rank {rank}"
                        yield Job((candidate.path, key), what, ((index, variant.reconstructed(rank)),))
                for variant in variants_of[candidate.path]:
                    variant.forget_approximation()
                    if variant.scheme != candidate.scheme:
                        _drop_svd(variant)  # made for this layer's jobs only; a winner's is made again if needed
                if release_kernels:
                    _release_scored(candidate, variants_of[candidate.path], entries[candidate.path])

        writer = None if cache is None else ScoreCacheWriter(cache[0], cache[1])
        with scores_kept(writer, table, stats):
            if total_evals:
                with opened(executor, work, evaluator), contextlib.closing(executor.map(jobs())) as results:
                    for done, (job, score) in enumerate(results, start=1):
                        seen[job.key] = score
                        for row, ratio in rows_of[job.key]:  # a stop mid-layer keeps its scores
                            table.setdefault(row, {})[ratio] = score
                        progbar.update(done, values=[("score", score)])
                        if writer is not None:
                            writer.save(table)  # every score, written at most every half second
            else:
                for _ in jobs():  # nothing to score: still let each layer's SVD and kernel go as scoring would
                    pass
    best: dict[str, dict[float, tuple[float, Candidate, Any]]] = {}
    for candidate in candidates:
        variants = variants_of[candidate.path]
        row: dict[float, tuple[float, Candidate, Any]] = {}
        for ratio, variant, rank, key in entries[candidate.path]:
            score = seen[candidate.path, key]
            if ratio not in row or score > row[ratio][0]:
                row[ratio] = (score, variant, rank)
        winners = {id(v[1]) for v in row.values()}
        for variant in variants:
            variant.forget_approximation()
            # auto picks one of the scored ranks: the vectors above the highest of them are not needed again
            variant.keep_ranks_up_to(r for _, v, r, _ in entries[candidate.path] if v is variant)
            if id(variant) not in winners and variant._svd is not None:  # never chosen: its SVD is not needed again
                if candidate._svd is variant._svd:
                    candidate._svd = None
                _drop_svd(variant)
        if row:
            best[candidate.path] = row
        else:
            stats.skipped_layers.setdefault(candidate.path, "no variant saves cost at any candidate ratio")
        stats.eval_scores[candidate.path] = {r: v[0] for r, v in sorted(row.items())}
    if not best:
        raise ValueError(nothing_saves_message(stats))
    if parameters.mode is Mode.manual:
        chosen = {p: next(iter(row)) for p, row in best.items()}
    else:
        select_params = parameters.params.select_params
        tables = (
            {p: {r: v[0] for r, v in row.items()} for p, row in best.items()},
            {p: {r: float(v[1].cost(v[2])) for r, v in row.items()} for p, row in best.items()},
            {c.path: float(c.original) for c in candidates if c.path in best},
        )
        if select_params.target_comp_ratio is None:  # an accuracy target alone

            def plan_at(goal: float) -> tuple[dict[str, float], float]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # goals below the most-compressed plan give that plan
                    found = greedy_select(
                        *tables, float(total_cost), goal, use_monotonic_fit=select_params.use_monotonic_fit
                    )
                return {p: match_ratio(best[p], r) for p, r in found.ratios.items() if r < 1.0}, found.model_ratio

            def evaluate(ratios: dict[str, float]) -> float:
                layers = {p: (best[p][r][1], best[p][r][2]) for p, r in ratios.items()}
                return score_plan(work, layers, evaluator, "a candidate plan of the accuracy target")

            chosen = accuracy_target(
                plan_at, evaluate, stats, select_params.max_score_drop, key=lambda c: tuple(sorted(c.items()))
            )
        else:
            selection = select_greedy(*tables, total_cost, select_params, stats)
            chosen = {p: match_ratio(best[p], r) for p, r in selection.ratios.items() if r < 1.0}
    plan = {p: best[p][r][2] for p, r in chosen.items()}
    winners = {p: best[p][r][1] for p, r in chosen.items()}
    for candidate in candidates:
        if candidate.path not in plan:
            stats.skipped_layers.setdefault(candidate.path, "kept at full size by the selection")
    schemes = sorted({v.scheme for v in winners.values()})
    stats.notes.append(f"compress_scheme='auto' chose {', '.join(schemes) or 'nothing'}")
    return plan, dict(chosen), [winners.get(c.path, c) for c in candidates]


def _release_scored(candidate: Candidate, variants: list[Candidate], entries: list[tuple]) -> None:
    """After a layer's candidates are scored (``compress_scheme="auto"``): its weight-SVD factors keep only the
    vectors up to the highest scored rank, and the layer's kernel (held by the candidate, its variants and the SVD's
    matrix) is let go, so the search holds one reduced set of factors per layer rather than kernel plus factors
    (issue 19's memory bound). The final rewrite reads the kernels from the user's model."""
    for variant in variants:
        variant.keep_ranks_up_to(r for _, v, r, _ in entries if v is variant)
    held = {id(s): s for s in (candidate._svd, *(v._svd for v in variants)) if s is not None}
    for svd in held.values():
        svd.forget_matrix()
    for c in (candidate, *variants):
        c.release_kernel()


def _drop_svd(variant: Candidate) -> None:
    """Let go of ``variant``'s SVD (and the memo's entry for it); it is computed again if it is asked for."""
    if variant._svd is not None:
        decompose.forget_svd(variant._svd)
        variant._svd = None


def tar_search(
    work: keras.Model,
    candidates: list[Candidate],
    parameters: Any,
    evaluator: Evaluator,
    stats: CompressionStats,
    total_cost: float,
    verbose: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    select_params = parameters.params.select_params
    target = float(select_params.target_comp_ratio)
    n = select_params.num_rank_indices
    if any(c.scheme == "tucker" for c in candidates):
        raise ValueError("TAR rank selection needs a single rank per layer; it does not apply to Tucker-2.")
    ranks_at: dict[int, dict[str, int]] = {i: {} for i in range(1, n)}
    for candidate in candidates:
        index_ranks = tar_candidate_ranks(candidate.relative_residuals(), n)
        bound = max_rank(candidate.geometry, candidate.scheme)
        for i, rank in index_ranks.items():
            rank = round_rank(rank, candidate.multiplicity, bound)
            if candidate.cost(rank) < candidate.original:
                ranks_at[i][candidate.path] = rank
    saved_total = sum(c.original for c in candidates)
    by_path = {c.path: c for c in candidates}
    ratios = {}
    for i, plan in ranks_at.items():
        compressed = sum(by_path[p].cost(r) for p, r in plan.items())
        untouched = sum(by_path[p].original for p in by_path if p not in plan)
        ratios[i] = (total_cost - saved_total + compressed + untouched) / total_cost
    meets = tar_indices_to_evaluate(ratios, target)
    progbar = progress_bar(len(meets), verbose)
    original_kernels = kernel_originals(candidates)  # what each swapped kernel of the working copy is restored to
    scores: dict[int, float] = {}
    for done, i in enumerate(meets, start=1):
        with contextlib.ExitStack() as stack:  # every kernel is restored at the end, whatever happens
            for p, r in ranks_at[i].items():  # one layer's reconstruction in memory at a time
                stack.enter_context(kernel_slot(by_path[p].work_layer, original_kernels))(by_path[p].reconstructed(r))
                by_path[p].forget_approximation()
            scores[i] = evaluator(work, f"TAR residual index {i}/{n}")
        progbar.update(done, values=[("score", scores[i])])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        choice = tar_select(scores, ratios, target)
    for warning in caught:
        warnings.warn(f"compress_model: {warning.message}", UserWarning, stacklevel=3)
    if not choice.reached:
        stats.notes.append(choice.message)
    stats.tar_index_scores = scores
    stats.selected_comp_ratio = ratios[choice.index]
    stats.notes.append(
        f"TAR chose residual index {choice.index}/{n} (relative residual ~{choice.index / n:.2f} per layer)"
    )
    plan = dict(ranks_at[choice.index])
    chosen = {p: by_path[p].cost(r) / by_path[p].original for p, r in plan.items()}
    return plan, chosen


def latency_total(
    model: keras.Model, candidates: list[Candidate], meter: LatencyMeter, stats: CompressionStats
) -> float:
    """Whole-model latency for the selector: compressible layers measured one by one, plus the remainder.

    The remainder is the whole model measured once minus the sum of the measured
    compressible layers, clamped at 0 (so the total is the larger of the two). The
    numbers go into ``stats.timings`` (``latency_*`` keys, seconds per inference).
    """
    layers = sum(c.original for c in candidates)
    whole = meter.model(model)
    remainder = max(whole - layers, 0.0)
    stats.timings["latency_original_measured_seconds"] = whole
    stats.timings["latency_original_predicted_seconds"] = layers + remainder
    stats.timings["latency_compressible_layers_seconds"] = layers
    stats.timings["latency_remainder_seconds"] = remainder
    return layers + remainder


def _auto_cache(
    model: keras.Model, parameters: AutoSchemeParameters, candidates: list[Candidate], stats: CompressionStats
) -> tuple[str, str, dict[str, dict[float, float]]] | None:
    """``(path, fingerprint, table)`` of the auto search's score cache (None: no cache); the tag is the one
    ``compress_model`` checked the cache against before any evaluation."""
    path = parameters.params.select_params.saved_eval_scores_dict
    if path is None:
        return None
    data_tag = next((c.data_tag for c in candidates if c.data_tag), "")
    tag = settings_tag(CompressionScheme.auto, CostMetric(stats.cost_metric), parameters.multiplicity, data_tag)
    digest, table = open_cache(model, os.fspath(path), tag)
    if table:
        logger.info("read eval scores of %d layer variant(s) from %s", len(table), path)
    return os.fspath(path), f"{digest}|{tag}", table
