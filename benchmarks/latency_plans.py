"""Does choosing ranks by measured latency give a faster model than choosing them by MACs, at the same target?

For ResNet50 and VGG16 (``weights=None``) and each batch size, ``tfc.compress_model`` (spatial SVD, greedy) is
run twice with the same data-free eval callback (minus the output MSE against the original model on a fixed
random batch): once with ``cost_metric="mac"`` and once with ``cost_metric="latency"`` and
``LatencyOptions(batch_size=...)``. The target is the same number for both: half the MACs of the compressible
layers, ``1 - 0.5 * (their share of the model's MACs)``. The original and both compressed models are then timed
side by side (interleaved runs of compiled ``tf.function``s, median after warm-up) at that batch size.

    python benchmarks/latency_plans.py --quick    # 64x64 inputs, batch 1, the 4 largest layers only
    python benchmarks/latency_plans.py            # 224x224 inputs, batch 1 and 8, every eligible layer
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
import warnings
from typing import Any

import _common
from real_speed import TFRunner, build

SCHEME = "spatial_svd"
MODELS = ("ResNet50", "VGG16")


def compress(*args: Any, **kwargs: Any) -> tuple[Any, Any, float, list[str]]:
    """``tfc.compress_model`` with its wall time and its warnings (an unreachable target is recorded, not printed)."""
    import tfcompress as tfc

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, stats = tfc.compress_model(*args, **kwargs)
    return model, stats, time.perf_counter() - start, [str(w.message) for w in caught]


def plan_summary(stats: Any, seconds: float, caught: list[str]) -> dict[str, Any]:
    return {
        "target_reached": not any("not reachable" in text for text in [*stats.notes, *caught]),
        "selection_seconds": seconds,
        "warnings": caught,
        "mac_ratio": stats.mac_compression_ratio,
        "param_ratio": stats.memory_compression_ratio,
        "selected_comp_ratio": stats.selected_comp_ratio,
        "score": stats.compressed_model_accuracy,
        "baseline_score": stats.baseline_model_accuracy,
        "layers_compressed": len(stats.per_layer_stats),
        "ranks": {s.name: s.rank for s in stats.per_layer_stats},
        "num_eval_calls": stats.num_eval_calls,
        "notes": list(stats.notes),
    }


def no_saving_summary(error: str, score: float, cache_path: str) -> dict[str, Any]:
    """The latency plan when no candidate of any layer measured faster than its layer: the original model, whose
    ``score`` the MAC plan's run already has. ``plan_summary``'s keys, and the measurements counted in the cache."""
    with open(cache_path, encoding="utf-8") as f:
        measured = len(json.load(f)["entries"])
    return {
        "target_reached": False,
        "no_layer_saves_latency": True,
        "selection_seconds": None,
        "warnings": [error],
        "mac_ratio": 1.0,
        "param_ratio": 1.0,
        "selected_comp_ratio": 1.0,
        "score": score,
        "baseline_score": score,
        "layers_compressed": 0,
        "ranks": {},
        "num_eval_calls": 0,
        "notes": ["no candidate of any layer measured faster than its layer; the latency plan is the original model"],
        "latency_measurements": measured,
    }


def run_model(name: str, settings: dict[str, Any], seed: int, cache_dir: str) -> dict[str, Any]:
    import tfcompress as tfc
    from tfcompress.latency import LatencyOptions

    size = settings["size"]
    model = build(name, size)
    cost = tfc.model_cost(model)
    eligible = _common.eligible_convs(model, SCHEME)
    eligible.sort(key=lambda layer: cost.layers[layer.name].macs, reverse=True)
    kept = eligible[: settings["max_layers"]] if settings["max_layers"] else eligible
    ignored = [layer.name for layer in eligible if layer not in kept]
    share = sum(cost.layers[layer.name].macs for layer in kept) / cost.macs
    target = round(1.0 - 0.5 * share, 3)
    callback = _common.output_mse_callback(model, _common.random_images((size, size, 3), 4, seed))

    def params() -> Any:
        return tfc.SpatialSvdParameters(
            tfc.Mode.auto,
            tfc.SpatialSvdParameters.AutoModeParams(
                tfc.GreedySelectionParameters(
                    target_comp_ratio=target,
                    num_comp_ratio_candidates=settings["num_comp_ratio_candidates"],
                    allow_unreachable=True,  # an unreachable target is recorded (target_reached), not an error
                ),
                modules_to_ignore=ignored,
            ),
        )

    print(f"latency_plans: {name} {size}x{size}: MAC plan, target {target}", flush=True)
    mac_model, mac_stats, mac_seconds, mac_warnings = compress(
        model, callback, None, SCHEME, "mac", params(), verbose=0
    )
    rows = []
    for batch in settings["batches"]:
        print(f"latency_plans: {name} {size}x{size}: latency plan, batch {batch}", flush=True)
        options = LatencyOptions(
            batch_size=batch,
            repeats=settings["latency_repeats"],
            warmup=settings["latency_warmup"],
            cache_path=os.path.join(cache_dir, f"latency_{name}_{size}_b{batch}.json"),
        )
        try:
            lat_model, lat_stats, lat_seconds, lat_warnings = compress(
                model, callback, None, SCHEME, "latency", params(), verbose=0, latency_options=options
            )
            lat_summary = plan_summary(lat_stats, lat_seconds, lat_warnings)
        except ValueError as error:
            if "saves cost" not in str(error):
                raise
            # every candidate measured slower than its layer (small layers at small inputs): the latency plan is the
            # original model; recorded as such instead of ending the run
            lat_model, lat_stats = model, None
            lat_summary = no_saving_summary(str(error), mac_stats.baseline_model_accuracy, options.cache_path)
        x = _common.random_images((size, size, 3), batch, seed + 1)
        timed = _common.interleaved_medians(
            {
                "original": TFRunner(model, x),
                "mac_plan": TFRunner(mac_model, x),
                "latency_plan": TFRunner(lat_model, x),
            },
            settings["warmup"],
            settings["repeats"],
        )
        original = timed["original"]["median_s"]
        t = lat_stats.timings if lat_stats is not None else {}
        predicted = None
        if t.get("latency_original_predicted_seconds"):
            predicted = t["latency_compressed_predicted_seconds"] / t["latency_original_predicted_seconds"]
        rows.append(
            {
                "batch_size": batch,
                "original_ms": 1000 * original,
                "mac_plan": {
                    **plan_summary(mac_stats, mac_seconds, mac_warnings),
                    "compressed_ms": 1000 * timed["mac_plan"]["median_s"],
                    "measured_speedup": original / timed["mac_plan"]["median_s"],
                },
                "latency_plan": {
                    "latency_measurements": int(t.get("latency_measurements", 0)),
                    "latency_measurement_seconds": t.get("latency_measurement_seconds", 0.0),
                    **lat_summary,
                    "compressed_ms": 1000 * timed["latency_plan"]["median_s"],
                    "measured_speedup": original / timed["latency_plan"]["median_s"],
                    "predicted_latency_ratio": predicted,
                },
                "latency_plan_vs_mac_plan_speed": timed["mac_plan"]["median_s"] / timed["latency_plan"]["median_s"],
                "runs": timed["original"]["runs"],
            }
        )
        del lat_model
        gc.collect()
    return {
        "model": name,
        "input_size": size,
        "scheme": SCHEME,
        "target_comp_ratio": target,
        "compressible_layers": len(kept),
        "compressible_mac_share": share,
        "results": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    headers = (
        "model",
        "batch",
        "target",
        "MAC plan: MAC ratio",
        "MAC plan: speed-up",
        "latency plan: MAC ratio",
        "latency plan: predicted latency ratio",
        "latency plan: speed-up",
        "latency plan vs MAC plan",
        "score MAC / latency plan",
    )
    rows = []
    for case in result["models"]:
        for r in case["results"]:
            m, lat = r["mac_plan"], r["latency_plan"]
            rows.append(
                (
                    f"{case['model']} {case['input_size']}px ({case['compressible_layers']} layers)",
                    r["batch_size"],
                    case["target_comp_ratio"],
                    f"{m['mac_ratio']:.3g}" + ("" if m["target_reached"] else " (target not reachable)"),
                    f"x{m['measured_speedup']:.2f}",
                    "no layer saves latency"
                    if lat.get("no_layer_saves_latency")
                    else f"{lat['mac_ratio']:.3g}" + ("" if lat["target_reached"] else " (target not reachable)"),
                    lat["predicted_latency_ratio"],
                    f"x{lat['measured_speedup']:.2f}",
                    f"x{r['latency_plan_vs_mac_plan_speed']:.2f}",
                    f"{m['score']:.3g} / {lat['score']:.3g}",
                )
            )
    mode = "quick" if result["quick"] else "full"
    return (
        f"## MAC-targeted vs latency-targeted plans ({mode} mode)\n\n"
        f"{SCHEME}, greedy; both plans at the same target (halve the compressible layers' MACs). Speed-up = "
        "original / compressed latency, TensorFlow on CPU, measured side by side (interleaved, median). "
        '"latency plan vs MAC plan" > 1 means the latency-targeted model is faster. Scores are minus the output '
        "MSE vs the original on a fixed random batch (higher is better). With the latency metric the target is a "
        "ratio of measured latency, and the compressible layers' share of the latency is usually smaller than their "
        "share of the MACs; when that target cannot be reached, compress_model returns its most-compressed plan "
        "(marked).\n\n" + _common.md_table(headers, rows) + "\n" + _common.md_machine(result["machine"])
    )


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)

    args = _common.parse_args(__doc__.split("\n\n")[0], extra)
    _common.quiet_tensorflow()
    if args.quick:
        settings = {
            "size": 64,
            "batches": [1],
            "max_layers": 4,
            "num_comp_ratio_candidates": 4,
            "latency_repeats": 7,
            "latency_warmup": 2,
            "warmup": 2,
            "repeats": 9,
        }
    else:
        settings = {
            "size": 224,
            "batches": [1, 8],
            "max_layers": 0,
            "num_comp_ratio_candidates": 10,
            "latency_repeats": 20,
            "latency_warmup": 3,
            "warmup": 3,
            "repeats": 15,
        }
    machine = _common.machine_info()
    models = []
    with tempfile.TemporaryDirectory() as cache_dir:  # fresh latency measurements in every run
        for name in args.models:
            models.append(run_model(name, settings, args.seed, cache_dir))
            gc.collect()
    result = {
        "benchmark": "latency_plans",
        "quick": args.quick,
        "settings": settings,
        "machine": machine,
        "models": models,
    }
    paths = _common.write_results(args.output_dir, "latency_plans", result, markdown(result))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
