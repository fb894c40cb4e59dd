"""The compression methods of ``accuracy.py``: each takes ``(model, evaluate, target, ctx)`` and returns
``(compressed_model, notes)``; the whole-model MAC ratio is measured afterwards with ``tfc.model_cost``.

``ctx`` holds ``settings`` (``accuracy.settings_for``), ``scratch`` (a folder for score caches) and ``x_calib``
(calibration images for channel pruning and the data-aware factors).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

CLASSIFIER = "logits"  # the 10-way output layer: left uncompressed by every method (its MACs are negligible)

METHODS = {
    "spatial_svd_greedy": "greedy spatial SVD",
    "weight_svd_greedy": "greedy weight SVD",
    "channel_pruning": "channel pruning (greedy)",
    "svd_then_prune": "spatial SVD then channel pruning",
    "prune_then_weight_svd": "channel pruning then greedy weight SVD, data-aware factors",
    "weight_svd_uniform": "uniform weight SVD (one ratio for all layers)",
    "weight_svd_data_free": "data-free weight SVD (singular values only)",
    "spatial_svd_greedy_data_aware": "greedy spatial SVD, data-aware factors",
    "weight_svd_greedy_data_aware": "greedy weight SVD, data-aware factors",
    "weight_svd_uniform_data_aware": "uniform weight SVD, data-aware factors",
    "auto_greedy": "greedy auto (per-layer scheme)",
}

#: the methods each model is compressed with (a model not listed: every method but auto). The ViT has no layer
#: spatial SVD helps (its one convolution is the 1-channel patch embedding), and channel pruning there prunes the
#: feed-forward hidden units (Dense -> gelu -> Dense); every other layer feeds the residual stream.
MODEL_METHODS = {
    "vit": [
        "weight_svd_greedy",
        "auto_greedy",
        "channel_pruning",
        "weight_svd_uniform",
        "weight_svd_data_free",
        "weight_svd_greedy_data_aware",
        "prune_then_weight_svd",
    ],
}


def methods_for(model_name: str) -> list[str]:
    """The method names ``model_name`` is compressed with, in table order."""
    return MODEL_METHODS.get(model_name, [m for m in METHODS if m not in ("auto_greedy", "prune_then_weight_svd")])


# ---------------------------------------------------------------- methods
# Each returns (compressed_model, notes); the whole-model MAC ratio is measured afterwards with tfc.model_cost.


def _greedy(parameters_class: Any, target: float, settings: dict[str, Any], cache: str, **extra: Any) -> Any:
    """``parameters_class`` in auto mode with the greedy selection of every method here; ``extra``: its other
    keywords (the data of the data-aware factors and of channel pruning)."""
    import tfcompress as tfc

    return parameters_class(
        mode=tfc.Mode.auto,
        params=parameters_class.AutoModeParams(
            tfc.GreedySelectionParameters(
                target_comp_ratio=target,
                num_comp_ratio_candidates=settings["num_comp_ratio_candidates"],
                saved_eval_scores_dict=cache,
                allow_unreachable=True,  # the table reports the ratio reached
            ),
            modules_to_ignore=[CLASSIFIER],
        ),
        **extra,
    )


_DATA_AWARE_TIMINGS = ("data_aware_collect_seconds", "data_aware_fit_seconds", "svd_seconds")


def _notes(stats: Any, timings: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a greedy method reports: its evaluations, its score, and the ``timings`` the run recorded."""
    return {
        "num_eval_calls": stats.num_eval_calls,
        "val_accuracy": stats.compressed_model_accuracy,
        **{k: stats.timings[k] for k in timings if k in stats.timings},
    }


def _greedy_decomposition(
    scheme: str, model: Any, evaluate: Any, target: float, ctx: dict[str, Any], data_aware: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Greedy ``scheme`` (``"spatial_svd"``, ``"weight_svd"`` or ``"auto"``) to ``target``. ``data_aware`` (issue
    18): the same selection, every candidate's factors fitted to the layer's sampled inputs (``ctx["x_calib"]``),
    the final model refitted in forward order; the notes add the data-aware timings."""
    import tfcompress as tfc

    parameters_class = {
        "spatial_svd": tfc.SpatialSvdParameters,
        "weight_svd": tfc.WeightSvdParameters,
        "auto": tfc.AutoSchemeParameters,
    }[scheme]
    settings = ctx["settings"]
    data = {}
    if data_aware:
        data = {"data": ctx["x_calib"], "num_reconstruction_samples": settings["num_reconstruction_samples"]}
    suffix = "_data_aware" if data_aware else ""
    cache = os.path.join(ctx["scratch"], f"{model.name}_{scheme}{suffix}_scores.json")
    params = _greedy(parameters_class, target, settings, cache, **data)
    compressed, stats = tfc.compress_model(model, evaluate, None, scheme, "mac", params, verbose=0)
    return compressed, _notes(stats, _DATA_AWARE_TIMINGS if data_aware else ())


def spatial_svd_greedy(model: Any, evaluate: Any, target: float, ctx: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return _greedy_decomposition("spatial_svd", model, evaluate, target, ctx)


def weight_svd_greedy(model: Any, evaluate: Any, target: float, ctx: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return _greedy_decomposition("weight_svd", model, evaluate, target, ctx)


def auto_greedy(model: Any, evaluate: Any, target: float, ctx: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``compress_scheme="auto"``: per layer and candidate ratio the best-scoring of weight SVD, spatial SVD and
    Tucker-2 (Dense/EinsumDense: SVD), greedy selection as for the single schemes."""
    return _greedy_decomposition("auto", model, evaluate, target, ctx)


def spatial_svd_greedy_data_aware(
    model: Any, evaluate: Any, target: float, ctx: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    return _greedy_decomposition("spatial_svd", model, evaluate, target, ctx, data_aware=True)


def weight_svd_greedy_data_aware(
    model: Any, evaluate: Any, target: float, ctx: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    return _greedy_decomposition("weight_svd", model, evaluate, target, ctx, data_aware=True)


def weight_svd_uniform_data_aware(
    model: Any, evaluate: Any, target: float, ctx: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The uniform plan of ``weight_svd_uniform`` (the same ranks), its factors fitted to the data in forward
    order by ``rewrite_model(..., data=...)``: the effect of the factors alone, with no selection."""
    import tfcompress as tfc

    ratio, _ = uniform_ratio_for(model, target)
    plan = uniform_ranks(model, ratio)
    samples = ctx["settings"]["num_reconstruction_samples"]
    start = time.perf_counter()
    compressed = tfc.rewrite_model(model, plan, "weight_svd", data=ctx["x_calib"], num_reconstruction_samples=samples)
    return compressed, {"per_layer_ratio": ratio, "refit_seconds": time.perf_counter() - start}


def channel_pruning(model: Any, evaluate: Any, target: float, ctx: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import tfcompress as tfc

    settings = ctx["settings"]
    cache = os.path.join(ctx["scratch"], f"{model.name}_channel_pruning_scores.json")
    params = _greedy(
        tfc.ChannelPruningParameters,
        target,
        settings,
        cache,
        data=ctx["x_calib"],
        num_reconstruction_samples=settings["num_reconstruction_samples"],
        allow_custom_downsample_ops=False,
    )
    compressed, stats = tfc.compress_model(model, evaluate, None, "channel_pruning", "mac", params, verbose=0)
    return compressed, _notes(stats)


def svd_then_prune(model: Any, evaluate: Any, target: float, ctx: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import tfcompress as tfc

    settings = ctx["settings"]
    ssvd = max(settings["svd_then_prune_ssvd_ratio"], target)  # one spatial-SVD ratio: half the search time
    compressed, result = tfc.svd_then_prune(
        model,
        evaluate,
        None,
        data=ctx["x_calib"],
        target_comp_ratio=target,
        ssvd_ratios=[ssvd],
        num_reconstruction_samples=settings["num_reconstruction_samples"],
        num_comp_ratio_candidates=settings["num_comp_ratio_candidates"],
        modules_to_ignore=[CLASSIFIER],
        verbose=0,
    )
    step = result.steps[result.chosen]
    return compressed, {
        "ssvd_ratio": step.ssvd_ratio,
        "prune_ratio": step.prune_ratio,
        "val_accuracy_after_ssvd": step.ssvd_score,
        "val_accuracy": step.score,
    }


#: the MAC ratio ``prune_then_weight_svd`` prunes to first when the target is below it (a target at or above it:
#: half-way from 1 to the target), so every target below it shares one pruned model and its weight-SVD score cache
PRUNE_FIRST_RATIO = 0.7


def prune_then_weight_svd(model: Any, evaluate: Any, target: float, ctx: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Two ``compress_model`` runs: greedy channel pruning to ``PRUNE_FIRST_RATIO`` of the MACs (on a transformer:
    the feed-forward hidden units, the only prunable channels), then greedy data-aware weight SVD of the pruned
    model to the rest of the target (``target`` over the ratio pruning reached). For models whose prunable
    channels alone cannot reach the target; nothing here depends on the model."""
    import tfcompress as tfc

    first = PRUNE_FIRST_RATIO if target < PRUNE_FIRST_RATIO else (1 + target) / 2
    pruned, prune_notes = channel_pruning(model, evaluate, first, ctx)
    macs = tfc.model_cost(model, warn=False).macs
    reached = tfc.model_cost(pruned, warn=False).macs / macs
    notes = {
        "prune_target": first,
        "prune_mac_ratio": reached,
        "val_accuracy_after_prune": prune_notes["val_accuracy"],
        "num_eval_calls_prune": prune_notes["num_eval_calls"],
    }
    if reached <= target:
        return pruned, {**notes, "val_accuracy": prune_notes["val_accuracy"]}
    settings = ctx["settings"]
    data = {"data": ctx["x_calib"], "num_reconstruction_samples": settings["num_reconstruction_samples"]}
    cache = os.path.join(ctx["scratch"], f"{model.name}_pruned_{first:.4f}_weight_svd_data_aware_scores.json")
    params = _greedy(tfc.WeightSvdParameters, target / reached, settings, cache, **data)
    compressed, stats = tfc.compress_model(pruned, evaluate, None, "weight_svd", "mac", params, verbose=0)
    return compressed, {**notes, **_notes(stats, _DATA_AWARE_TIMINGS)}


def weight_svd_layers(model: Any, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``(path, layer, geometry)`` of the Conv2D/Dense/EinsumDense layers (not the classifier, nor the paths in
    ``ignore``; inside MultiHeadAttention too, by path) whose rank-1 weight SVD is cheaper than the layer itself."""
    import keras

    from tfcompress.cost import decomposed_cost, layer_geometry, original_cost
    from tfcompress.graph import walk_layers

    kinds = keras.layers.Conv2D | keras.layers.Dense | keras.layers.EinsumDense
    out = []
    for ref in walk_layers(model, sublayers=True):
        if ref.path == CLASSIFIER or ref.path in ignore or not isinstance(ref.layer, kinds):
            continue
        geometry = layer_geometry(ref.layer, input_shape=ref.input_shape)
        if decomposed_cost(geometry, "weight_svd", 1).macs < original_cost(geometry).macs:
            out.append((ref.path, ref.layer, geometry))
    return out


def uniform_ranks(model: Any, ratio: float, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every eligible layer's (``weight_svd_layers``) largest weight-SVD rank within ``ratio`` of its MACs, by path."""
    from tfcompress.cost import _rank_for_ratio

    return {
        path: _rank_for_ratio(geometry, ratio, "weight_svd", "mac")
        for path, _, geometry in weight_svd_layers(model, ignore)
    }


def uniform_ratio_for(model: Any, target: float, ignore: tuple[str, ...] = ()) -> tuple[float, float]:
    """Bisect the one per-layer ratio ``r`` whose whole-model MAC ratio is the largest not above ``target``.

    Costs come from tfcompress's formulas (the rank for ``r`` then the decomposed layer's MACs), so no model is
    built during the search. Returns ``(r, predicted model MAC ratio)``.
    """
    import tfcompress as tfc
    from tfcompress.cost import _rank_for_ratio, decomposed_cost, original_cost

    total = tfc.model_cost(model, warn=False).macs
    layers = [geometry for _, _, geometry in weight_svd_layers(model, ignore)]

    def model_ratio(r: float) -> float:
        saved = 0
        for geometry in layers:
            rank = _rank_for_ratio(geometry, r, "weight_svd", "mac")
            saved += original_cost(geometry).macs - decomposed_cost(geometry, "weight_svd", rank).macs
        return (total - saved) / total

    low, high = 1e-4, 1.0  # model_ratio is non-decreasing in r
    if model_ratio(low) > target:
        return low, model_ratio(low)
    for _ in range(40):
        mid = (low + high) / 2
        if model_ratio(mid) <= target:
            low = mid
        else:
            high = mid
    return low, model_ratio(low)


def weight_svd_uniform(model: Any, evaluate: Any, target: float, ctx: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import tfcompress as tfc

    ratio, predicted = uniform_ratio_for(model, target)
    pairs = [(path, ratio) for path, _, _ in weight_svd_layers(model)]
    params = tfc.WeightSvdParameters(tfc.Mode.manual, tfc.WeightSvdParameters.ManualModeParams(pairs))

    def no_eval(m: Any, iterations: Any) -> float:
        return 0.0

    compressed, _ = tfc.compress_model(model, no_eval, None, "weight_svd", "mac", params, verbose=0)
    return compressed, {"per_layer_ratio": ratio, "layers": len(pairs), "predicted_mac_ratio": predicted}


def weight_svd_data_free(model: Any, evaluate: Any, target: float, ctx: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """TAR selection with a constant score: every layer keeps the rank whose relative reconstruction error
    ``||W - W_r|| / ||W||`` (the discarded share of singular-value energy, square-rooted) is closest to one common
    level ``i/N``; with equal scores TAR takes the level whose model ratio is closest to the target without
    exceeding it. The weights' singular values alone decide; no data, no evaluation."""
    import tfcompress as tfc

    def constant(m: Any, iterations: Any) -> float:
        return 0.0

    params = tfc.WeightSvdParameters(
        tfc.Mode.auto,
        tfc.WeightSvdParameters.AutoModeParams(
            tfc.TarRankSelectionParameters(ctx["settings"]["tar_num_rank_indices"], target_comp_ratio=target),
            modules_to_ignore=[CLASSIFIER],
        ),
    )
    compressed, stats = tfc.compress_model(model, constant, None, "weight_svd", "mac", params, verbose=0)
    level = next((n for n in stats.notes if n.startswith("TAR chose")), None)
    return compressed, {"tar_choice": level}


def available_methods() -> dict[str, Callable[..., Any] | None]:
    """Method name -> function, or None when this version of tfcompress does not have it."""
    import tfcompress as tfc

    return {
        "spatial_svd_greedy": spatial_svd_greedy,
        "weight_svd_greedy": weight_svd_greedy,
        "channel_pruning": channel_pruning if hasattr(tfc, "ChannelPruningParameters") else None,
        "svd_then_prune": svd_then_prune if hasattr(tfc, "svd_then_prune") else None,
        "prune_then_weight_svd": prune_then_weight_svd if hasattr(tfc, "ChannelPruningParameters") else None,
        "weight_svd_uniform": weight_svd_uniform,
        "weight_svd_data_free": weight_svd_data_free,
        "spatial_svd_greedy_data_aware": spatial_svd_greedy_data_aware,
        "weight_svd_greedy_data_aware": weight_svd_greedy_data_aware,
        "weight_svd_uniform_data_aware": weight_svd_uniform_data_aware,
        "auto_greedy": auto_greedy,
    }
