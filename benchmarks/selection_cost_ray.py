"""The Ray part of ``selection_cost.py``: the eval-table phase on ``tfc.RayExecutor`` with 1, 2 and 4 workers against
the in-process ``LocalExecutor``.

One greedy ``compress_model`` run on the digits CNN (spatial SVD, MAC target 0.5) records the jobs its score table
sends to the executor (each a reconstructed kernel for one layer at one rank). Those same jobs are then scored by
every executor, for two callbacks in turn:

- **waiting**: ``time.sleep(0.2)`` and the accuracy on 32 digits (one direct call of the model), the shape of a callback that waits for a remote
  accelerator or service: its cost is latency, not this machine's CPU, so more workers should divide it;
- **CPU-bound**: the test accuracy with ``model.predict`` on the 594 held-out digits, repeated (about 0.2 s of
  arithmetic on this machine), which more workers can only speed up as far as there are idle cores.

For each callback, the local executor and the three Ray executors are opened together (each Ray worker loads its own
working copy and the callback once: ``startup_seconds``), then timed in interleaved rounds (each round maps the jobs
through every executor once, in rotating order); the tables are medians over the rounds. ``speedup_vs_local`` = the
local median / that executor's. ``overhead_per_candidate_ms`` = (wall time x workers - the seconds spent in the
callback, summed over the workers) / jobs: what scoring a candidate costs beyond the callback (assigning and restoring
the kernel; for Ray also the transfer of the kernel, the remote call, and any wait for an idle core).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import _common

WORKERS = (1, 2, 4)
SLEEP_SECONDS = 0.2
TARGET = 0.5
SCHEME = "spatial_svd"


class RecordingExecutor:
    """A ``LocalExecutor`` that keeps every job it scores (to replay the same table on other executors)."""

    def __init__(self) -> None:
        from tfcompress.pipeline.executor import LocalExecutor

        self.inner = LocalExecutor()
        self.jobs: list[Any] = []

    @property
    def evaluations(self) -> int:
        return self.inner.evaluations

    @property
    def eval_seconds(self) -> float:
        return self.inner.eval_seconds

    def open(self, work: Any, evaluator: Any) -> None:
        self.work = work
        self.inner.open(work, evaluator)

    def map(self, jobs: Any) -> Any:
        for job, score in self.inner.map(jobs):
            self.jobs.append(job)
            yield job, score

    def close(self) -> None:
        self.inner.close()


def waiting_callback(x: Any, y: Any) -> Any:
    import keras
    import numpy as np

    x, y = x[:32], y[:32]

    def waiting(model: Any, iterations: Any) -> float:
        time.sleep(SLEEP_SECONDS)  # the remote accelerator's latency
        predicted = keras.ops.convert_to_numpy(model(x, training=False))  # a tiny evaluation: one direct call
        return float(np.mean(predicted.argmax(1) == y))

    return waiting


def cpu_callback(x: Any, y: Any, repeats: int) -> Any:
    import numpy as np

    xs, ys = np.concatenate([x] * repeats), np.concatenate([y] * repeats)

    def cpu_bound(model: Any, iterations: Any) -> float:
        return float(np.mean(model.predict(xs, verbose=0, batch_size=256).argmax(1) == ys))

    return cpu_bound


def _map_all(executor: Any, jobs: list[Any]) -> tuple[float, dict[Any, float], int, float]:
    """One pass of ``jobs`` through an opened executor: (wall seconds, scores, evaluations, callback seconds)."""
    evaluations, seconds = executor.evaluations, executor.eval_seconds
    start = time.perf_counter()
    scores = {job.key: score for job, score in executor.map(iter(jobs))}
    wall = time.perf_counter() - start
    return wall, scores, executor.evaluations - evaluations, executor.eval_seconds - seconds


def _time_callback(
    name: str, callback: Any, work: Any, jobs: list[Any], rounds: int, workers_tried: tuple[int, ...]
) -> dict[str, Any]:
    import tfcompress as tfc
    from tfcompress.pipeline.evaluator import Evaluator
    from tfcompress.pipeline.executor import LocalExecutor

    executors: dict[str, tuple[Any, int]] = {"local": (LocalExecutor(), 1)}
    startup: dict[str, float] = {"local": 0.0}
    try:
        for workers in workers_tried:
            executors[f"ray_{workers}"] = (tfc.RayExecutor(num_workers=workers), workers)
        for key, (executor, _) in executors.items():
            start = time.perf_counter()
            executor.open(work, Evaluator(callback, None))
            startup[key] = time.perf_counter() - start
            print(f"  {name}: {key} opened in {startup[key]:.1f} s", flush=True)
        walls: dict[str, list[float]] = {key: [] for key in executors}
        per_call: dict[str, list[float]] = {key: [] for key in executors}
        overheads: dict[str, list[float]] = {key: [] for key in executors}
        tables: dict[str, dict[Any, float]] = {}
        keys = list(executors)
        _map_all(executors["local"][0], jobs[:2])  # warm-up: the local predict function is traced once
        for round_index in range(rounds):
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                executor, workers = executors[key]
                wall, scores, evaluations, seconds = _map_all(executor, jobs)
                assert evaluations == len(jobs), (key, evaluations)
                walls[key].append(wall)
                per_call[key].append(seconds / evaluations)
                overheads[key].append((wall * workers - seconds) / evaluations)
                tables.setdefault(key, scores)
        local = _common.median(walls["local"])
        rows = {}
        for key, (_, workers) in executors.items():
            wall = _common.median(walls[key])
            rows[key] = {
                "workers": workers,
                "startup_seconds": startup[key],
                "wall_seconds_median": wall,
                "wall_seconds_all": walls[key],
                "callback_seconds_per_call_median": _common.median(per_call[key]),
                "overhead_per_candidate_ms": 1000 * _common.median(overheads[key]),
                "speedup_vs_local": local / wall,
                "speedup_per_worker": local / wall / workers,
                "same_table_as_local": tables[key] == tables["local"],
            }
        return {"callback": name, "rounds": rounds, "executors": rows}
    finally:
        for executor, _ in executors.values():
            executor.close()


def run(quick: bool, seed: int) -> dict[str, Any]:
    """Record the digits CNN's table jobs, then time them on every executor with both callbacks."""
    try:
        import ray
    except ImportError:
        return {"skipped": 'Ray is not installed (pip install -e ".[ray]").'}
    import keras

    import tfcompress as tfc
    from tfcompress.demo import digits_cnn, digits_data
    from tfcompress.pipeline.ray_executor import quiet_worker_setup_hook

    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test = digits_data(seed)
    model = digits_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    recorder = RecordingExecutor()
    params = tfc.SpatialSvdParameters(
        tfc.Mode.auto,
        tfc.SpatialSvdParameters.AutoModeParams(
            tfc.GreedySelectionParameters(
                target_comp_ratio=TARGET, num_comp_ratio_candidates=5 if quick else 10, allow_unreachable=True
            )
        ),
    )
    tfc.compress_model(
        model, cpu_callback(x_test, y_test, 1), None, SCHEME, "mac", params, verbose=0, executor=recorder
    )
    jobs, work = recorder.jobs, recorder.work

    # how many repeats of the test set make the CPU-bound callback take about SLEEP_SECONDS here
    one = cpu_callback(x_test, y_test, 1)
    one(work, None)
    start = time.perf_counter()
    one(work, None)
    repeats = max(1, round(SLEEP_SECONDS / max(time.perf_counter() - start, 1e-3)))

    # one Ray instance for all executors: a logical CPU per worker of all of them (the machine has fewer cores)
    workers = WORKERS[:2] if quick else WORKERS
    ray.init(
        num_cpus=sum(workers),
        include_dashboard=False,
        logging_level="error",
        runtime_env={"worker_process_setup_hook": quiet_worker_setup_hook()},
    )
    try:
        rounds = 1 if quick else 5
        results = [
            _time_callback("waiting", waiting_callback(x_test, y_test), work, jobs, rounds, workers),
            _time_callback("cpu_bound", cpu_callback(x_test, y_test, repeats), work, jobs, rounds, workers),
        ]
    finally:
        ray.shutdown()
    return {
        "model": "digits_cnn",
        "scheme": SCHEME,
        "target_comp_ratio": TARGET,
        "jobs": len(jobs),
        "sleep_seconds": SLEEP_SECONDS,
        "cpu_callback_test_set_repeats": repeats,
        "cores": os.cpu_count(),
        "callbacks": results,
    }


def markdown(result: dict[str, Any]) -> str:
    """The Ray section of ``selection_cost.md``."""
    if "skipped" in result:
        return f"### Candidates on Ray workers\n\nNot measured: {result['skipped']}\n"
    lines = [
        "### Candidates on Ray workers\n",
        f"The {result['jobs']} candidate jobs of one greedy {result['scheme']} table of the digits CNN (MAC target "
        f"{result['target_comp_ratio']}), scored by the in-process executor and by `tfc.RayExecutor` with "
        + ", ".join(str(r["workers"]) for k, r in result["callbacks"][0]["executors"].items() if k != "local")
        + " workers, in interleaved rounds (medians over "
        f"{result['callbacks'][0]['rounds']}). Waiting callback: `time.sleep({result['sleep_seconds']})` + accuracy "
        f"on 32 digits (one direct model call); CPU-bound: accuracy on the held-out digits repeated {result['cpu_callback_test_set_repeats']} "
        "times. Overhead per candidate = (wall x workers - callback seconds summed over workers) / jobs. Start-up = "
        "opening the executor (each Ray worker imports TensorFlow and loads its own working copy), paid once per "
        "run.\n",
    ]
    headers = (
        "callback",
        "executor",
        "table phase s",
        "speed-up vs local",
        "per worker",
        "callback ms/call",
        "overhead ms/candidate",
        "start-up s",
        "same table",
    )
    rows = []
    for entry in result["callbacks"]:
        for key, r in entry["executors"].items():
            rows.append(
                (
                    entry["callback"],
                    "local" if key == "local" else f"Ray, {r['workers']} worker(s)",
                    f"{r['wall_seconds_median']:.2f}",
                    f"x{r['speedup_vs_local']:.2f}",
                    f"{r['speedup_per_worker']:.2f}",
                    f"{1000 * r['callback_seconds_per_call_median']:.0f}",
                    f"{r['overhead_per_candidate_ms']:.1f}",
                    f"{r['startup_seconds']:.1f}",
                    "yes" if r["same_table_as_local"] else "NO",
                )
            )
    lines.append(_common.md_table(headers, rows))
    waiting = result["callbacks"][0]["executors"]
    most = max((r for k, r in waiting.items() if k != "local"), key=lambda r: r["workers"])
    met = [str(r["workers"]) for k, r in waiting.items() if k != "local" and r["speedup_per_worker"] >= 0.8]
    lines.append(
        f"Goal, at least 0.8 x workers faster than local on the waiting callback: met with "
        f"{', '.join(met) if met else 'no'} worker count(s) (x{most['speedup_vs_local']:.2f} with {most['workers']}). "
        f"This machine has {result['cores']} cores shared with other processes: the waiting callback's sleep needs no "
        "core, so its workers overlap; the CPU-bound callback cannot run faster than the idle cores allow (4 workers "
        "on 2 cores share them), and each Ray worker runs TensorFlow on one thread where the local executor uses all "
        "cores, so its numbers say what Ray costs here, not what a cluster of idle machines would gain.\n"
    )
    if "machine" in result:
        lines.append("Ray part: " + _common.md_machine(result["machine"]))
    return "\n".join(lines)


def markdown_alone(result: dict[str, Any]) -> str:
    """``selection_cost.md`` with the Ray section only (``--only-ray`` without an earlier run)."""
    mode = "quick" if result["quick"] else "full"
    return (
        f"## Selection cost ({mode} mode)\n\n" + markdown(result["ray"]) + "\n" + _common.md_machine(result["machine"])
    )


def earlier_result(output_dir: str, quick: bool) -> dict[str, Any] | None:
    """The results of an earlier ``selection_cost.py`` run of the same mode in ``output_dir`` (to add the Ray part
    to them with ``--only-ray``), or None."""
    path = os.path.join(output_dir, "selection_cost.json")
    try:
        with open(path, encoding="utf-8") as handle:
            earlier = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(earlier, dict) or earlier.get("quick") != quick or not earlier.get("cases"):
        return None
    return earlier
