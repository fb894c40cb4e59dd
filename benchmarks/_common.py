"""Shared helpers of the benchmark scripts: options, side-by-side timing, machine info, result files.

The scripts import this module by its plain name (``import _common``), which works because Python puts the
script's own folder first on ``sys.path`` when a script is run as ``python benchmarks/NAME.py``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT_DIR = os.path.join(HERE, "results")


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """``--quick`` (about a minute, used in CI), ``--output-dir`` (default ``benchmarks/results``), ``--seed``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small inputs and few candidates (about a minute)")
    parser.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        help=f"folder for the JSON and Markdown results ({DEFAULT_OUTPUT_DIR})",
    )
    parser.add_argument("--seed", type=int, default=0)
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def quiet_tensorflow() -> None:
    """Silence TensorFlow's Python logger (retracing notices are expected when models are rebuilt)."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


def machine_info() -> dict[str, Any]:
    """The toolkit's machine record (CPU, cores, versions) plus the date and the load at the start."""
    from tfcompress.latency import machine_info as toolkit_machine_info

    info = dict(toolkit_machine_info())
    info["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def interleaved_medians(
    runs: dict[str, Callable[[], Any]], warmup: int, repeats: int
) -> dict[str, dict[str, float | int]]:
    """Time several callables side by side: each round runs every callable once, in a rotating order.

    Interleaving means a burst of load from other processes hits all of them alike, so ratios of the
    medians are far steadier than ratios of runs done one after the other. Returns per name the median
    seconds, the first and third quartiles, and the number of timed runs.
    """
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    out = {}
    for name, values in times.items():
        quartiles = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
        out[name] = {
            "median_s": statistics.median(values),
            "q1_s": quartiles[0],
            "q3_s": quartiles[2],
            "runs": len(values),
        }
    return out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def write_results(output_dir: str, name: str, data: dict[str, Any], markdown: str) -> tuple[str, str]:
    """Write ``NAME.json`` (atomically, with tfcompress's writer) and ``NAME.md`` into ``output_dir``."""
    from tfcompress.atomic import write_json_atomic, write_text_atomic

    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, f"{name}.json")
    md_path = os.path.join(output_dir, f"{name}.md")
    write_json_atomic(json_path, data)
    write_text_atomic(md_path, markdown)
    return json_path, md_path


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats get 3 significant decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if value != value else f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def md_machine(info: dict[str, Any]) -> str:
    keys = ("cpu", "cores", "python", "tensorflow", "keras", "numpy", "date", "load_average_1min")
    return "Machine: " + ", ".join(f"{k} {info[k]}" for k in keys if k in info) + ".\n"


def random_images(shape: Sequence[int], n: int, seed: int = 0) -> Any:
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


def output_mse_callback(reference_model: Any, x: Any) -> Callable[[Any, Any], float]:
    """A data-free eval callback: minus the mean squared difference of the outputs from the original's on ``x``.

    It uses ``model.predict`` as a user's callback typically does (``predict`` compiles a function per model
    object, which is part of what rebuilding a model per candidate costs).
    """
    import numpy as np

    reference = reference_model.predict(x, verbose=0)

    def score(model: Any, iterations: Any) -> float:
        return -float(np.mean((model.predict(x, verbose=0) - reference) ** 2))

    return score


def eligible_convs(model: Any, scheme: str) -> list[Any]:
    """Plain ``Conv2D`` layers that ``scheme`` can decompose (kernel larger than 1x1 for spatial SVD/Tucker-2)."""
    import keras

    from tfcompress.layers.base import check_source_conv2d

    out = []
    for layer in model.layers:  # keras.applications models are flat
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        try:
            check_source_conv2d(layer)
        except (TypeError, ValueError):
            continue
        if scheme in ("spatial_svd", "tucker") and tuple(layer.kernel_size) == (1, 1):
            continue
        out.append(layer)
    return out
