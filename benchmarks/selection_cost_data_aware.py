"""The data-aware part of ``selection_cost.py`` (``--data-aware``, issue 18): the extra time of data-aware factors.

The same greedy spatial-SVD selection of ResNet50 (224x224; 64x64 with ``--quick``) runs data-free and with
``data=``; the time is split into reading the activations, fitting, the SVDs, the callback and the final rewrite
(with the forward refit). Writes ``selection_cost_data_aware.json`` and ``.md``.

    python benchmarks/selection_cost.py --data-aware [--quick]
"""

from __future__ import annotations

import gc
import time
from typing import Any

import _common

SCHEME = "spatial_svd"


def run(quick: bool, seed: int, images: int = 2, samples: int = 2000) -> dict[str, Any]:
    """The extra time of data-aware factors: the same greedy spatial-SVD selection of ResNet50 (224x224, 64x64 in
    quick mode; MAC target 0.75) run data-free and with ``data=`` (random images: the cost does not depend on what
    they show), with the time split into reading the activations, fitting, the SVDs and the callback."""
    import keras

    import tfcompress as tfc

    keras.utils.set_random_seed(seed)
    size = 64 if quick else 224
    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3))
    x = _common.random_images((size, size, 3), images, seed)
    callback = _common.output_mse_callback(model, x)
    from tfcompress.data_fit import positions_per_input

    # as many images as the data-aware path reads (more positions per image on larger inputs)
    data = _common.random_images((size, size, 3), max(16, -(-samples // positions_per_input(model))), seed + 1)
    runs = {}
    for name, extra in (("data_free", {}), ("data_aware", {"data": data, "num_reconstruction_samples": samples})):
        params = tfc.SpatialSvdParameters(
            tfc.Mode.auto,
            tfc.SpatialSvdParameters.AutoModeParams(
                tfc.GreedySelectionParameters(
                    target_comp_ratio=0.75, num_comp_ratio_candidates=3 if quick else 10, allow_unreachable=True
                )
            ),
            **extra,
        )
        start = time.perf_counter()
        _, stats = tfc.compress_model(model, callback, None, SCHEME, "mac", params, verbose=0)
        wall = time.perf_counter() - start
        keys = (
            "total_seconds",
            "eval_callback_seconds",
            "overhead_seconds",
            "svd_seconds",
            "final_rewrite_seconds",
            "data_aware_collect_seconds",
            "data_aware_fit_seconds",
        )
        runs[name] = {
            "wall_seconds": wall,
            **{k: float(stats.timings[k]) for k in keys if k in stats.timings},
            "num_eval_calls": stats.num_eval_calls,
            "mac_ratio": stats.mac_compression_ratio,
            "score": stats.compressed_model_accuracy,
            "notes": [n for n in stats.notes if n.startswith("data-aware")][:6],
        }
        gc.collect()
    free, aware = runs["data_free"], runs["data_aware"]
    # the same extra time in a unit that does not depend on how cheap this run's callback is: evaluations of a
    # modest validation set (the data images themselves), each timed (median of 3 after a warm-up)
    validation = _common.output_mse_callback(model, data)
    validation(model, None)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        validation(model, None)
        times.append(time.perf_counter() - start)
    per_eval = sorted(times)[1]
    extra = aware["total_seconds"] - free["total_seconds"]
    return {
        "model": f"resnet50_{size}",
        "callback_images": images,
        "data_images": len(data),
        "num_reconstruction_samples": samples,
        "runs": runs,
        "extra_seconds": aware["total_seconds"] - free["total_seconds"],
        "extra_share": extra / free["total_seconds"],
        "validation_images": len(data),
        "validation_eval_seconds": per_eval,
        "extra_in_validation_evals": extra / per_eval,
        "score_data_free": free["score"],
        "score_data_aware": aware["score"],
    }


def markdown(result: dict[str, Any]) -> str:
    r = result["case"]
    free, aware = r["runs"]["data_free"], r["runs"]["data_aware"]

    def sec(run: dict[str, Any], key: str) -> str:
        return f"{run[key]:.1f}" if key in run else "-"

    keys = [
        ("total_seconds", "total"),
        ("eval_callback_seconds", "eval callback"),
        ("svd_seconds", "SVDs"),
        ("data_aware_collect_seconds", "reading activations"),
        ("data_aware_fit_seconds", "fitting"),
        ("final_rewrite_seconds", "final rewrite (with the forward refit)"),
    ]
    rows = [[label, sec(free, key), sec(aware, key)] for key, label in keys]
    read = next(
        (n.split(": ", 1)[1].split(" input(s)")[0] for n in aware.get("notes", []) if " input(s), " in n),
        str(r["data_images"]),
    )
    lines = [
        "# Selection cost of data-aware factors",
        "",
        f"Greedy spatial SVD of {r['model']} (MAC target 0.75), data-free and with `data=` ({read} random "
        f"images read, {r['num_reconstruction_samples']} sampled positions per layer); eval callback on "
        f"{r['callback_images']} images. Machine: {result['machine'].get('cores', '?')} cores"
        f"{' (quick mode)' if result['quick'] else ''}.",
        "",
        _common.md_table(["seconds", "data-free", "data-aware"], rows),
        "",
        f"Extra time of the data-aware path: {r['extra_seconds']:.1f} s ({100 * r['extra_share']:.0f}% of the "
        f"data-free run). Score (minus output MSE vs the original): {r['score_data_free']:.4g} data-free, "
        f"{r['score_data_aware']:.4g} data-aware.",
        "",
    ]
    if "extra_in_validation_evals" in r:
        lines += [
            f"The callback here sees {r['callback_images']} images, so the data-free selection is almost all library "
            f"overhead. In evaluations of a {r['validation_images']}-image validation set (one measured: "
            f"{r['validation_eval_seconds']:.2f} s, median of 3), the extra time is "
            f"{r['extra_in_validation_evals']:.0f} evaluations; the greedy selection made {free['num_eval_calls']} "
            f"evaluation calls data-free and {aware['num_eval_calls']} data-aware.",
            "",
        ]
    return "\n".join(lines)
