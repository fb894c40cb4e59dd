"""``compress_model``: choose per-layer ranks for a target and return the compressed model with stats.

How a run goes:

1. The user's model is cloned ONCE into a working copy (the user's model is never
   touched, whatever happens: success, a raising callback, Ctrl-C). Meanwhile the
   SVDs of the eligible kernels run on background threads
   (:class:`tfcompress.decompose.BackgroundSVDs`); they are all done before the
   first callback.
2. The baseline score is the callback's score of the working copy.
3. Auto mode, greedy: for every eligible layer and candidate ratio ``i/N`` the
   layer's kernel in the working copy is replaced by its reconstructed low-rank
   kernel ``W_r`` (the decomposed layer computes exactly this function), the
   callback is called, and the kernel is restored. No clone, rebuild, save/reload
   or retrace per candidate; the SVD of each kernel is computed once. Candidates of
   one layer that round to the same rank are evaluated once. The score table then
   goes to :func:`tfcompress.select.greedy_select`.
   Auto mode, TAR: every layer takes, for residual index ``i``, the rank whose
   relative reconstruction residual is closest to ``i/N``; the whole model is
   evaluated at each index that meets the target, and
   :func:`tfcompress.select.tar_select` picks the index.
   Manual mode: the user's ratios are turned into ranks.
   The candidates of the greedy searches are scored by an executor
   (:mod:`tfcompress.pipeline.executor`; in process by default).
4. The plan is applied to the user's model with :func:`tfcompress.rewrite_model`
   (with a ``trainer``, one layer at a time, fine-tuning after each), the
   compressed model is evaluated, and :class:`CompressionStats` reports it all.
   The rewrite takes the SVDs computed during selection
   (:func:`tfcompress.decompose.reuse_svds`) rather than factorising again.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import keras

from . import decompose
from .cost import UncountedMacsWarning, decomposed_cost, model_cost, original_cost
from .data_stage import DataAwareRun
from .enums import CompressionScheme, CostMetric, Mode, RankSelectScheme, coerce_enum
from .graph import check_graph_model, walk_layers
from .latency import LatencyMeter, LatencyOptions
from .params import (
    AutoSchemeParameters,
    ChannelPruningParameters,
    SpatialSvdParameters,
    TuckerParameters,
    WeightSvdParameters,
    _SchemeParameters,
)
from .pipeline.candidates import Candidate, collect_candidates, factor_while_copying
from .pipeline.evaluator import Evaluator, ModelChangedError, WorkGuard
from .pipeline.executor import Executor, check_executor
from .pipeline.scorecache import open_cache, settings_tag
from .pipeline.svd_search import auto_search, greedy_search, latency_total, tar_search
from .rewrite import rewrite_model
from .stats import CompressionStats, LayerStats, run_metadata

__all__ = ["compress_model", "ModelCompressor", "ModelChangedError"]

logger = logging.getLogger("tfcompress")

_PARAMS_FOR_SCHEME = {
    CompressionScheme.weight_svd: WeightSvdParameters,
    CompressionScheme.spatial_svd: SpatialSvdParameters,
    CompressionScheme.tucker: TuckerParameters,
    CompressionScheme.auto: AutoSchemeParameters,
    CompressionScheme.channel_pruning: ChannelPruningParameters,
}


def compress_model(
    model: keras.Model,
    eval_callback: Callable[..., float],
    eval_iterations: Any,
    compress_scheme: CompressionScheme | str,
    cost_metric: CostMetric | str,
    parameters: WeightSvdParameters | SpatialSvdParameters | TuckerParameters | AutoSchemeParameters,
    trainer: Any = None,
    *,
    verbose: int = 1,
    latency_options: LatencyOptions | None = None,
    allow_uncounted_macs: bool = False,
    executor: Executor | None = None,
) -> tuple[keras.Model, CompressionStats]:
    """Compress ``model`` to a target cost ratio, choosing each layer's rank to lose as little score as possible.

    Args:
        model: a trained, built Sequential or Functional Keras model. Never modified.
        eval_callback: ``eval_callback(model, iterations) -> float``, higher is better
            (AIMET's ``(model, iterations, use_cuda)`` form works too). It must only evaluate the model it is
            given (a working copy whose kernels are swapped in place): training it, assigning weights or calling
            it with ``training=True`` (which updates BatchNormalization statistics) would corrupt every later
            score, so a digest of the copy's weights is checked after the baseline and after the search, and a
            change raises :class:`ModelChangedError`.
        eval_iterations: passed to ``eval_callback`` untouched.
        compress_scheme: ``weight_svd`` (Conv2D, Conv1D, Conv2DTranspose, SeparableConv2D's pointwise kernel
            and Dense), ``spatial_svd`` (Conv2D and Conv1D with a kernel larger than 1x1; Dense layers too when
            listed in manual mode) or
            ``tucker`` (Tucker-2 of Conv2D layers), or ``auto``: per layer and candidate ratio the best of
            weight SVD, spatial SVD and Tucker-2 (Dense: SVD), so one model can mix schemes
            (with :class:`tfcompress.params.AutoSchemeParameters`; greedy or manual mode).
        cost_metric: ``mac``, ``memory`` or ``latency``; ratios are compressed / original cost of the
            whole model. ``latency`` measures each layer, candidate and the whole model (see
            :mod:`tfcompress.latency`); the ranks tried are the same as for ``mac``.
        parameters: ``WeightSvdParameters`` / ``SpatialSvdParameters`` / ``TuckerParameters``
            in ``Mode.auto`` (greedy or TAR) or ``Mode.manual``.
        trainer: optional object with ``train_model(model, layer, train_flag=True)``, called after
            each layer is compressed (see :class:`tfcompress.FitTrainer`).
        verbose: 1 shows a progress bar over the evaluations; 0 is silent.
        latency_options: :class:`tfcompress.latency.LatencyOptions` (runtime, batch size,
            repeats, warm-up, cache file) for ``cost_metric="latency"``; defaults otherwise.
        allow_uncounted_macs: with ``cost_metric="mac"``, a model holding layers whose MACs are not known
            (``tfc.model_cost(model).uncounted``: custom layers with weights of their own, ...) is refused, since
            its MAC ratio would be computed over an undercount. ``True`` proceeds: targets and ratios then cover
            the counted layers only, and ``stats.uncounted_layers`` names the others.
        executor: where the search's candidates are scored: ``None`` (a :class:`tfcompress.LocalExecutor`, in this
            process, one at a time) or an executor such as ``tfc.RayExecutor(num_workers=4)``. The baseline, the
            whole-model checks and the compressed model are always evaluated in this process.

    Returns:
        ``(compressed_model, stats)``.

    Example:
        >>> import numpy as np, keras, tfcompress as tfc
        >>> model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(16, 3, name="c1"),
        ...     keras.layers.Conv2D(16, 3, name="c2"), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(8, 12, 12, 3)).astype("float32")
        >>> reference = model.predict(x, verbose=0)
        >>> def score(m, iterations):   # agreement with the original outputs
        ...     return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))
        >>> params = tfc.SpatialSvdParameters(tfc.Mode.auto,
        ...     tfc.SpatialSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(target_comp_ratio=0.6)))
        >>> small, stats = tfc.compress_model(model, score, None, "spatial_svd", "mac", params, verbose=0)
        >>> stats.mac_compression_ratio <= 0.61
        True
    """
    start_time = time.perf_counter()
    check_graph_model(model)
    scheme = coerce_enum(compress_scheme, CompressionScheme, "compress_scheme")
    metric = coerce_enum(cost_metric, CostMetric, "cost_metric")
    _check_arguments(scheme, parameters, trainer, latency_options)
    executor = check_executor(executor)
    meter = LatencyMeter(latency_options) if metric is CostMetric.latency else None
    evaluator = Evaluator(eval_callback, eval_iterations)
    stats = CompressionStats(
        compress_scheme=scheme.value,
        cost_metric=metric.value,
        mode=parameters.mode.value,
        **run_metadata(model, eval_callback),
    )
    original = _original_cost(model, metric, stats, allow_uncounted_macs)
    total_cost = original.metric(metric) if meter is None else 0.0  # latency: set once the candidates are known

    if scheme is CompressionScheme.channel_pruning:
        from .pruning.driver import compress_channels

        work = _working_copy(model, stats)
        compressed = compress_channels(model, work, parameters, metric, evaluator, stats, trainer, verbose, executor)
        del work
        stats = _finish(stats, evaluator, compressed, original, start_time, svd_seconds=0.0)
        return compressed, _check_score_drop(stats, parameters)

    # ---- which layers, at which ratios; a score cache that cannot be used is an error before any evaluation
    candidates, manual_ratios = collect_candidates(model, scheme, parameters, metric, meter, stats)
    data_run = DataAwareRun(model, parameters) if parameters.data_aware else None
    manual = parameters.mode is Mode.manual
    greedy = not manual and parameters.params.rank_select_scheme is RankSelectScheme.greedy
    if greedy and parameters.params.select_params.saved_eval_scores_dict is not None:
        cache = os.fspath(parameters.params.select_params.saved_eval_scores_dict)
        data_tag = "" if data_run is None else data_run.tag
        open_cache(model, cache, settings_tag(scheme, metric, parameters.multiplicity, data_tag))
    if data_run is not None and not manual:  # manual mode: nothing to select, only the final refit
        data_run.attach(model, candidates, stats)  # each layer's input moments, read when first needed
    if meter is not None:
        total_cost = latency_total(model, candidates, meter, stats)

    # ---- inside reuse_svds() the final rewrite's decomposed layers take the SVDs computed for the selection (equal
    # matrices, so the very same factors) instead of factorising again
    with decompose.reuse_svds():
        work, svd_timings = factor_while_copying(candidates, scheme, lambda: _working_copy(model, stats))
        stats.timings["svd_compute_seconds"] = svd_timings["svd_compute_seconds"]

        guard = WorkGuard(work)
        logger.info("evaluating the baseline model")
        stats.baseline_model_accuracy = evaluator(work, "the baseline model")
        guard.check("when the baseline was evaluated")

        # ---- choose ranks
        chosen_ratio: dict[str, float] = {}
        if scheme is CompressionScheme.auto:
            plan, chosen_ratio, candidates = auto_search(
                work, candidates, parameters, manual_ratios, evaluator, stats, total_cost, verbose, executor, model
            )
        elif manual:
            plan = {c.path: c.rank_for(manual_ratios[c.path]) for c in candidates}
            chosen_ratio = {c.path: manual_ratios[c.path] for c in candidates}
        elif greedy:
            plan, chosen_ratio = greedy_search(
                model, work, candidates, parameters, evaluator, stats, total_cost, verbose, executor
            )
        else:
            plan, chosen_ratio = tar_search(work, candidates, parameters, evaluator, stats, total_cost, verbose)
        for candidate in candidates:
            candidate.forget_approximation()  # (TAR and the two-plan check may have kept one per layer)
        guard.check("during the search")
        del guard
        for candidate in candidates:
            candidate.work_layer = None
            # the memo still holds the SVDs (each goes once its layer is built); without data, the kernels (views of
            # the memo's matrices) are not needed again either
            if data_run is None:
                candidate.release()
            else:
                candidate.drop_svd()
        del work  # the working copy goes before the compressed model is built (issue 19: peak memory)
        gc.collect()  # layers and their model refer to each other: only the cycle collector frees them

        # ---- apply the plan to the user's model
        with decompose.serve_remembered_svds_once():
            compressed = _build(model, candidates, plan, trainer, stats, data_run)
    for candidate in candidates:
        candidate.release()  # the SVDs and kernels are not needed for the final numbers

    # ---- final numbers
    _record_layers(stats, candidates, plan, chosen_ratio)
    if meter is not None:
        by_path = {c.path: c for c in candidates}
        predicted = total_cost - sum(by_path[p].original - by_path[p].cost(r) for p, r in plan.items())
        stats.timings["latency_compressed_predicted_seconds"] = predicted
        stats.timings["latency_compressed_measured_seconds"] = meter.model(compressed)
        stats.timings["latency_measurement_seconds"] = meter.seconds
        stats.timings["latency_measurements"] = float(meter.timings)
    svd_seconds = svd_timings["svd_wait_seconds"] + sum(c.svd_seconds for c in candidates)
    if data_run is not None:
        data_run.finish(stats)
    stats = _finish(stats, evaluator, compressed, original, start_time, svd_seconds=svd_seconds)
    return compressed, _check_score_drop(stats, parameters)


def _check_arguments(
    scheme: CompressionScheme, parameters: Any, trainer: Any, latency_options: LatencyOptions | None
) -> None:
    """TypeErrors for arguments of the wrong kind, before any work."""
    if latency_options is not None and not isinstance(latency_options, LatencyOptions):
        raise TypeError(f"`latency_options` must be LatencyOptions(...) or None, got {type(latency_options).__name__}.")
    expected = _PARAMS_FOR_SCHEME[scheme]
    if not isinstance(parameters, _SchemeParameters):
        raise TypeError(
            f"`parameters` must be {expected.__name__}(mode, params, multiplicity), got {type(parameters).__name__}."
        )
    if not isinstance(parameters, expected):
        raise TypeError(
            f"compress_scheme={scheme.value!r} needs {expected.__name__}, got {type(parameters).__name__}; "
            "the parameters class must match the scheme."
        )
    if trainer is not None and not callable(getattr(trainer, "train_model", None)):
        raise TypeError("`trainer` must have a method train_model(model, layer, train_flag=True), or be None.")


def _original_cost(model: keras.Model, metric: CostMetric, stats: CompressionStats, allow_uncounted_macs: bool) -> Any:
    """The model's cost, with the layers whose MACs are not known refused (MAC metric) or recorded."""
    original = model_cost(model, warn=False)
    if original.uncounted:
        if metric is CostMetric.mac and not allow_uncounted_macs:
            raise ValueError(
                f"compress_model: {original.uncounted_message()}, so a MAC ratio of '{model.name}' cannot be "
                "computed honestly; use cost_metric='memory' (parameters are always counted), or pass "
                "allow_uncounted_macs=True to target the counted layers' MACs only."
            )
        warnings.warn(f"compress_model: {original.uncounted_message()}.", UncountedMacsWarning, stacklevel=3)
        stats.uncounted_layers = dict(original.uncounted)
    stats.original_macs, stats.original_params = original.macs, original.params
    return original


def _check_score_drop(stats: CompressionStats, parameters: Any) -> CompressionStats:
    """With both ``target_comp_ratio`` and ``max_score_drop``: a ValueError naming the drop when the compressed
    model's score fell by more than the bound (the accuracy target alone was verified by its search)."""
    select_params = None if parameters.mode is Mode.manual else parameters.params.select_params
    bound = getattr(select_params, "max_score_drop", None)
    if bound is None:
        return stats
    stats.max_score_drop = bound
    drop = stats.baseline_model_accuracy - stats.compressed_model_accuracy
    if select_params.target_comp_ratio is not None and drop > bound:
        error = ValueError(
            f"compress_model: at target ratio {select_params.target_comp_ratio} the compressed model's score dropped "
            f"by {drop:.6g} ({stats.baseline_model_accuracy:.6g} -> {stats.compressed_model_accuracy:.6g}), more than "
            f"max_score_drop={bound:g}. Raise target_comp_ratio, or pass target_comp_ratio=None to get the cheapest "
            "plan within max_score_drop."
        )
        error.stats = stats  # type: ignore[attr-defined]
        raise error
    return stats


def _build(
    model: keras.Model,
    candidates: list[Candidate],
    plan: dict[str, Any],
    trainer: Any,
    stats: CompressionStats,
    data_run: DataAwareRun | None = None,
) -> keras.Model:
    """The plan applied to the user's model (with a ``trainer``: one layer at a time, fine-tuning after each); with
    data, each decomposed layer refitted in forward order to the original layer's outputs."""
    rewrite_start = time.perf_counter()
    trainer_seconds = 0.0
    by_path = {c.path: c for c in candidates}
    forward = [c.path for c in candidates if c.path in plan]
    if trainer is None:
        compressed = rewrite_model(model, {p: (by_path[p].scheme, plan[p]) for p in forward})
        if data_run is not None:
            data_run.refit(model, compressed, forward, stats)
    else:
        compressed = model
        for path in forward:
            compressed = rewrite_model(compressed, {path: (by_path[path].scheme, plan[path])})
            if data_run is not None:
                data_run.refit(model, compressed, [path], stats)
            target_layer = {r.path: r.layer for r in walk_layers(compressed, sublayers=True)}[path]
            logger.info("fine-tuning after compressing %s", path)
            train_start = time.perf_counter()
            trainer.train_model(compressed, target_layer, train_flag=True)
            trainer_seconds += time.perf_counter() - train_start
        if not forward:
            compressed = rewrite_model(model, {})
    stats.timings["final_rewrite_seconds"] = time.perf_counter() - rewrite_start - trainer_seconds
    if trainer is not None:
        stats.timings["trainer_seconds"] = trainer_seconds
    return compressed


def _record_layers(
    stats: CompressionStats, candidates: list[Candidate], plan: dict[str, Any], chosen_ratio: dict[str, float]
) -> None:
    """One :class:`LayerStats` row per decomposed layer."""
    for candidate in candidates:
        if candidate.path not in plan:
            continue
        rank = plan[candidate.path]
        before, after = original_cost(candidate.geometry), decomposed_cost(candidate.geometry, candidate.scheme, rank)
        calls = candidate.ref.calls
        stats.per_layer_stats.append(
            LayerStats(
                name=candidate.path,
                scheme=candidate.scheme,
                original_shape=list(candidate.kernel.shape),
                rank=list(rank) if isinstance(rank, tuple) else int(rank),
                ratio=float(chosen_ratio[candidate.path]),
                macs_before=before.macs * calls,
                macs_after=after.macs * calls,
                params_before=before.params,
                params_after=after.params,
            )
        )


def _working_copy(model: keras.Model, stats: CompressionStats) -> keras.Model:
    """The clone whose kernels the selection swaps in place (timed as ``working_copy_seconds``)."""
    logger.info(
        "making one working copy of %s (%d layers) for the candidate evaluations", model.name, len(model.layers)
    )
    start = time.perf_counter()
    work = rewrite_model(model, {})
    stats.timings["working_copy_seconds"] = time.perf_counter() - start
    return work


def _finish(
    stats: CompressionStats,
    evaluator: Evaluator,
    compressed: keras.Model,
    original: Any,
    start_time: float,
    svd_seconds: float,
) -> CompressionStats:
    """Evaluate the compressed model and fill in the whole-model numbers and timings."""
    stats.compressed_model_accuracy = evaluator(compressed, "the compressed model")
    final = model_cost(compressed, warn=False)
    stats.compressed_macs, stats.compressed_params = final.macs, final.params
    stats.mac_compression_ratio = final.macs / original.macs if original.macs else 1.0
    stats.memory_compression_ratio = final.params / original.params if original.params else 1.0
    total = time.perf_counter() - start_time
    trainer_seconds = stats.timings.get("trainer_seconds", 0.0)  # the user's fine-tuning is not toolkit overhead
    stats.timings.update(
        {
            "total_seconds": total,
            "eval_callback_seconds": evaluator.total_seconds,
            "overhead_seconds": max(total - evaluator.total_seconds - trainer_seconds, 0.0),
            "svd_seconds": svd_seconds,
        }
    )
    stats.num_eval_calls = evaluator.total_calls
    stats.put_in_model_order(original.layers)  # layers as they come in the model, whatever step recorded them
    logger.info(
        "compressed %s: MAC ratio %.4f, memory ratio %.4f, score %.4f -> %.4f",
        compressed.name,
        stats.mac_compression_ratio,
        stats.memory_compression_ratio,
        stats.baseline_model_accuracy,
        stats.compressed_model_accuracy,
    )
    return stats


class ModelCompressor:
    """AIMET-style entry point: ``ModelCompressor.compress_model`` is :func:`compress_model`.

    Example:
        >>> import tfcompress as tfc
        >>> tfc.ModelCompressor.compress_model is tfc.compress_model
        True
    """

    compress_model = staticmethod(compress_model)
