"""Peak memory of ``compress_model`` per scheme, against the model's own footprint (issue 19's memory bound).

Each measurement is a fresh process (the OS's own accounting: Linux ``VmHWM``, the peak resident set size,
reset right after TensorFlow and tfcompress are imported, so import-time peaks do not count):

* ``footprint``: the model built, one working copy made (``tfc.rewrite_model(model, {})``, what
  ``compress_model`` clones too) and the eval callback run twice on each: what any compression run needs.
* one process per scheme: the model built and ``tfc.compress_model`` run (greedy, MAC target 0.5).

``extra_over_weights`` = (scheme's peak - footprint peak) / the model's float32 weight bytes: how many copies of
the weights the toolkit itself holds at its peak. The goal is at most 4.

    python benchmarks/memory.py --quick    # ResNet50 at 64x64, weight_svd and spatial_svd, 3 candidates
    python benchmarks/memory.py            # ResNet50 at 96x96, every scheme, 4 candidates
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import _common

PROBE = r"""
import json, os, resource, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras, tensorflow as tf
import tfcompress as tfc

what, size, candidates, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def status_mb(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


out = {"after_import_mb": status_mb("VmRSS")}
try:  # reset the high-water mark to the current size (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    out["peak_reset"] = True
except OSError:
    out["peak_reset"] = False
keras.utils.set_random_seed(seed)
model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3))
out["weights_mb"] = sum(int(np.prod(w.shape)) * 4 for w in model.weights) / 2**20
x = np.random.default_rng(seed).standard_normal((2, size, size, 3)).astype("float32")
reference = np.asarray(model(x, training=False))


def score(m, iterations):
    return -float(np.mean((np.asarray(m(x, training=False)) - reference) ** 2))


if what == "footprint":
    work = tfc.rewrite_model(model, {})
    for m in (model, work, model, work):
        score(m, None)
else:
    select = tfc.GreedySelectionParameters(0.5, num_comp_ratio_candidates=candidates, allow_unreachable=True)
    classes = {"weight_svd": tfc.WeightSvdParameters, "spatial_svd": tfc.SpatialSvdParameters,
               "tucker": tfc.TuckerParameters, "auto": tfc.AutoSchemeParameters}
    if what == "channel_pruning":
        params = tfc.ChannelPruningParameters(
            np.random.default_rng(1).standard_normal((8, size, size, 3)).astype("float32"), 500, False,
            tfc.Mode.auto, tfc.ChannelPruningParameters.AutoModeParams(select))
    else:
        cls = classes[what]
        params = cls(tfc.Mode.auto, cls.AutoModeParams(select))
    _, stats = tfc.compress_model(model, score, None, what, "mac", params, verbose=0)
    out["num_eval_calls"] = stats.num_eval_calls
    out["mac_compression_ratio"] = stats.mac_compression_ratio
out["peak_mb"] = status_mb("VmHWM")
print(json.dumps(out))
"""

SCHEMES = ("weight_svd", "spatial_svd", "tucker", "auto", "channel_pruning")


def measure(what: str, size: int, candidates: int, seed: int) -> dict:
    """One fresh process: its peak RSS (MB above the imports) and the model's weight size."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, what, str(size), str(candidates), str(seed)],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {what} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["peak_above_import_mb"] = result["peak_mb"] - result["after_import_mb"]
    return result


def run(size: int, candidates: int, schemes: list[str], seed: int) -> dict:
    footprint = measure("footprint", size, candidates, seed)
    weights = footprint["weights_mb"]
    rows = []
    for scheme in schemes:
        result = measure(scheme, size, candidates, seed)
        extra = result["peak_above_import_mb"] - footprint["peak_above_import_mb"]
        rows.append(
            {
                "scheme": scheme,
                "peak_above_import_mb": round(result["peak_above_import_mb"], 1),
                "extra_over_footprint_mb": round(extra, 1),
                "extra_over_weights": round(extra / weights, 2),
                "num_eval_calls": result.get("num_eval_calls"),
                "mac_compression_ratio": result.get("mac_compression_ratio"),
            }
        )
        print(
            f"{scheme:<16} peak {result['peak_above_import_mb']:.0f} MB, extra {extra:.0f} MB = "
            f"{extra / weights:.2f} x weights",
            flush=True,
        )
    return {
        "model": "ResNet50",
        "input_size": size,
        "weights_mb": round(weights, 1),
        "footprint_peak_above_import_mb": round(footprint["peak_above_import_mb"], 1),
        "peak_reset": footprint["peak_reset"],
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"# Peak memory of compress_model: ResNet50 at {result['input_size']}x{result['input_size']}",
        "",
        f"Weights {result['weights_mb']:.0f} MB (float32); the model's own footprint (built, one working copy, "
        f"the callback run) peaks at {result['footprint_peak_above_import_mb']:.0f} MB above the imports. "
        "Extra = a scheme's peak minus that footprint; goal: at most 4x the weights.",
        "",
        "| scheme | peak above imports (MB) | extra (MB) | extra / weights | evaluations |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['scheme']} | {row['peak_above_import_mb']:.0f} | {row['extra_over_footprint_mb']:.0f} | "
            f"{row['extra_over_weights']:.2f} | {row['num_eval_calls']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    def extra(parser):
        parser.add_argument("--schemes", nargs="+", choices=SCHEMES, default=None)

    args = _common.parse_args(__doc__.splitlines()[0], extra)
    size, candidates = (64, 3) if args.quick else (96, 4)
    schemes = args.schemes or (["weight_svd", "spatial_svd"] if args.quick else list(SCHEMES))
    result = {
        "benchmark": "memory",
        "quick": args.quick,
        "settings": {"quick": args.quick, "input_size": size, "candidates": candidates},
    }
    result.update(run(size, candidates, schemes, args.seed))
    result["machine"] = _common.machine_info()
    name = "memory_quick" if args.quick else "memory"
    _common.write_results(args.output_dir, name, result, markdown(result))


if __name__ == "__main__":
    main()
