"""Scoring candidates on Ray actors: :class:`RayExecutor` (``compress_model(..., executor=tfc.RayExecutor(...))``).

Each actor loads its own working copy from the run's ``.keras`` bytes (sent once through the object store), keeps
the run's evaluator (the user's callback, pickled by cloudpickle), and scores the jobs it is sent: assign the job's
values by weight index, evaluate, restore the saved originals bit for bit. The driver keeps at most two jobs per
actor in flight and pulls jobs lazily, so a search that computes SVDs as it goes never holds more than that many
reconstructed kernels. An actor that dies has its jobs sent to a fresh one; a job that fails on two different
actors raises. Errors raised by the callback itself (a TypeError for a bad return value, ModelChangedError, ...)
propagate unchanged.

Ray is optional (in the tfcompress checkout: ``pip install -e ".[ray]"``); it is imported when a :class:`RayExecutor` is created, never
by ``import tfcompress``.

Example:
    >>> import keras, tfcompress as tfc
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, name="conv"),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    >>> def evaluate(model, iterations):  # a module-level function: the workers import or unpickle it
    ...     return 1.0
    >>> with tfc.RayExecutor(num_workers=2) as executor:  # doctest: +SKIP
    ...     compressed, stats = tfc.compress_model(model, evaluate, None, "weight_svd", "mac",
    ...         tfc.WeightSvdParameters("auto", tfc.WeightSvdParameters.AutoModeParams(
    ...             tfc.GreedySelectionParameters(target_comp_ratio=0.8))), executor=executor)
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from .executor import Job

__all__ = ["RayExecutor", "quiet_worker_setup_hook"]

logger = logging.getLogger("tfcompress")

INSTALL_HINT = 'pip install "ray>=2.9" (or, in the tfcompress checkout: pip install -e ".[ray]")'
JOBS_PER_WORKER = 2  # in flight per actor: one evaluating, the next one's values already on its node
MAX_ATTEMPTS = 2  # a job that fails on this many different actors raises


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"RayExecutor needs Ray, which is not installed: {INSTALL_HINT}") from error
    return ray


def _weight_layout(model: keras.Model) -> list[tuple[str, tuple[int, ...], str, str]]:
    """(name, shape, dtype, digest of the values) of every weight, in ``model.weights`` order: a job's weight indices
    refer to it. The name is the variable path's last two steps ("conv1/kernel"): the steps before depend on the
    name scopes the model was built under (a model built here says "digits_cnn/conv1/kernel", "outer/inner/c1/kernel";
    the same model loaded from its file "conv1/kernel", "c1/kernel"). The digest tells apart weights whose names and
    shapes agree."""
    out = []
    for variable in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest = hashlib.blake2b(value.reshape(-1).view(np.uint8), digest_size=8).hexdigest()
        name = "/".join(str(getattr(variable, "path", variable.name)).split("/")[-2:])
        out.append((name, tuple(int(d) for d in value.shape), value.dtype.str, digest))
    return out


def _layout_mismatch(sent: list[tuple], loaded: list[tuple]) -> str | None:
    """Why a reloaded working copy's weights do not line up with the driver's (None when they do)."""
    if len(sent) != len(loaded):
        return f"the driver's working copy has {len(sent)} weights, the reloaded one {len(loaded)}"
    for index, (a, b) in enumerate(zip(sent, loaded, strict=True)):
        if a[:3] != b[:3]:
            return f"weight {index} is {a[0]} {a[1]} {a[2]} on the driver but {b[0]} {b[1]} {b[2]} when reloaded"
        if a[3] != b[3]:
            return f"weight {index} ({a[0]} {a[1]}) holds other values when reloaded"
    return None


def _custom_objects(model: keras.Model) -> dict[str, Any]:
    """``{registered name: class}`` of the model's layer classes that Keras resolves by registration (classes a
    worker may not have imported: a custom layer defined in the user's script). Keras' own are left out."""
    found: dict[str, Any] = {}
    seen: set[int] = set()

    def walk(layer: Any) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        cls = type(layer)
        if not cls.__module__.startswith(("keras.", "tf_keras.")):
            found[keras.saving.get_registered_name(cls)] = cls
        if isinstance(layer, keras.Model):  # Functional/Sequential children
            for sub in layer.layers:
                walk(sub)
        for value in vars(layer).values():  # sublayers held as attributes (custom layers, nested models)
            if isinstance(value, keras.layers.Layer):
                walk(value)
            elif isinstance(value, list | tuple):
                for item in value:
                    if isinstance(item, keras.layers.Layer):
                        walk(item)

    walk(model)
    return found


def _model_bytes(model: keras.Model) -> bytes:
    """The model as ``.keras`` bytes (weights and config; no optimizer state)."""
    from ..atomic import save_model_atomic

    folder = tempfile.mkdtemp(prefix="tfcompress-ray-")
    try:
        path = os.path.join(folder, "work.keras")
        save_model_atomic(model, path)
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _worker_env() -> dict[str, str]:
    """Environment of the actors: the driver's import path (so tfcompress and the user's modules import), its Keras
    backend, quiet TensorFlow logs and one thread per pool (each actor is one CPU's worth of work)."""
    paths = [p for p in [os.getcwd(), *sys.path] if p and os.path.isdir(p)]
    env = {
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
        "KERAS_BACKEND": keras.backend.backend(),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_NUM_INTRAOP_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    return env


def _quiet_tensorflow_import() -> None:
    """Run in each Ray worker process before anything else (``worker_process_setup_hook``): import TensorFlow with
    its start-up log lines dropped (see :mod:`tfcompress._startup`), which ``TF_CPP_MIN_LOG_LEVEL`` does not stop.

    It loads ``_startup.py`` by its file, so the ``tfcompress`` package (which imports TensorFlow) is not imported
    before the quiet import. Sent to the workers by value (see :func:`quiet_worker_setup_hook`)."""
    import importlib.util
    import os
    import sys

    spec = importlib.util.find_spec("tfcompress")
    if spec is None or not spec.submodule_search_locations:
        return
    path = os.path.join(next(iter(spec.submodule_search_locations)), "_startup.py")
    startup_spec = importlib.util.spec_from_file_location("_tfcompress_worker_startup", path)
    if startup_spec is None or startup_spec.loader is None:
        return
    module = importlib.util.module_from_spec(startup_spec)
    startup_spec.loader.exec_module(module)
    module.import_tensorflow_quietly()
    # TensorFlow looks for GPUs on its first use and logs "failed call to cuInit" on a machine without CUDA
    import tempfile

    import tensorflow as tf

    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            tf.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines()
    kept = [line for line in lines if "cuInit" not in line and not module.is_startup_noise(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr, flush=True)


def quiet_worker_setup_hook() -> Callable[[], None]:
    """A ``worker_process_setup_hook`` for ``ray.init`` that imports TensorFlow quietly in every Ray worker process.

    :class:`RayExecutor` passes it when it starts or connects to Ray itself; when you call ``ray.init`` yourself,
    pass it too to keep TensorFlow's start-up lines out of the driver's output. It is
    :func:`_quiet_tensorflow_import` as a function of no importable module, so that cloudpickle sends it by value
    (by reference, unpickling it would import the tfcompress package, and TensorFlow with its log lines, first).

    Example:
        >>> import ray  # doctest: +SKIP
        >>> ray.init(num_cpus=4, runtime_env={"worker_process_setup_hook": quiet_worker_setup_hook()})  # doctest: +SKIP
    """
    function = _quiet_tensorflow_import
    copy = types.FunctionType(function.__code__, {"__builtins__": __builtins__}, function.__name__)
    copy.__module__ = "_tfcompress_ray_setup"
    return copy


class _Worker:
    """One actor's state: its working copy, the saved originals of assigned weights, the evaluator."""

    def __init__(self, model_bytes: bytes, layout: list[tuple], evaluator: Any, custom_objects: dict) -> None:
        self.error: BaseException | None = None  # raised by ready() and score(): the driver re-raises it as is
        try:
            self._load(model_bytes, layout, custom_objects)
        except Exception as error:
            self.error = error
        self.evaluator = evaluator
        self.calls = 0
        self.seconds = 0.0

    def _load(self, model_bytes: bytes, layout: list[tuple], custom_objects: dict) -> None:
        import tfcompress  # noqa: F401  (registers tfcompress's layers with Keras)

        from .evaluator import WorkGuard

        folder = tempfile.mkdtemp(prefix="tfcompress-ray-worker-")
        try:
            path = os.path.join(folder, "work.keras")
            with open(path, "wb") as handle:
                handle.write(model_bytes)
            # our own bytes, written by the driver a moment ago: Lambda layers must load too
            self.model = keras.saving.load_model(path, custom_objects=custom_objects, compile=False, safe_mode=False)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        problem = _layout_mismatch(layout, _weight_layout(self.model))
        if problem:
            raise ValueError(
                f"RayExecutor: the working copy reloaded from its .keras bytes does not list its weights in the same "
                f"order ({problem}); jobs address weights by index, so this model cannot be scored on Ray workers."
            )
        self.variables = list(self.model.weights)
        self.guard = WorkGuard(self.model)

    def ready(self) -> int:
        if self.error is not None:
            raise self.error
        return os.getpid()

    def score(self, assignments: tuple[tuple[int, np.ndarray], ...], what: str) -> tuple[float, float]:
        if self.error is not None:
            raise self.error
        originals: dict[int, np.ndarray] = {}
        try:
            for index, value in assignments:
                variable = self.variables[index]
                if index not in originals:
                    originals[index] = keras.ops.convert_to_numpy(variable)
                variable.assign(np.asarray(value, dtype=variable.dtype))
            start = time.perf_counter()
            try:
                return self.evaluator(self.model, what), time.perf_counter() - start
            finally:
                self.calls += 1
                self.seconds += time.perf_counter() - start
        finally:
            for index, value in originals.items():
                self.variables[index].assign(value)

    def check(self, when: str) -> None:
        self.guard.check(when)


@dataclass
class _Slot:
    """One actor of the pool, and the jobs it has in flight."""

    actor: Any
    generation: int  # a replaced actor's slot gets a new generation: "a different worker"
    in_flight: set = field(default_factory=set)


@dataclass
class _Pending:
    job: Job
    values: Any  # the ObjectRef of the job's assignments (put once; resubmissions reuse it)
    failed_on: set = field(default_factory=set)  # (slot index, generation) of actors that died on it


class RayExecutor:
    """Scores a search's candidates on Ray actors, each with its own working copy (``executor=`` of
    :func:`tfcompress.compress_model`).

    Args:
        num_workers: actors to start (each reserves one CPU); ``None``: the Ray cluster's CPUs (at least 1).
        address: ``None`` starts a local Ray instance with ``num_workers`` CPUs unless Ray is already initialised
            in this process; ``"auto"`` or ``"ray://host:10001"`` connects to an existing cluster.
        runtime_env: extra Ray runtime environment for the actors (e.g. ``{"working_dir": "."}`` on a cluster
            whose nodes do not share this machine's files); its ``env_vars`` are added to the defaults
            (the driver's ``sys.path`` as ``PYTHONPATH``, its ``KERAS_BACKEND``, one TensorFlow thread per pool).

    The eval callback runs on the actors: it must be importable there or picklable by cloudpickle (a function
    defined in a script or notebook is pickled by value), and any files it reads must exist on every node.
    ``close()`` (or the end of a ``with`` block) kills the actors, and shuts Ray down if this executor started it.

    Example:
        >>> executor = RayExecutor(num_workers=2)  # doctest: +SKIP
        >>> compressed, stats = tfc.compress_model(..., executor=executor)  # doctest: +SKIP
        >>> executor.evaluations, round(executor.eval_seconds, 1)  # doctest: +SKIP
        (30, 12.5)
    """

    def __init__(
        self, num_workers: int | None = None, address: str | None = None, *, runtime_env: dict | None = None
    ) -> None:
        self._ray = _import_ray()
        if num_workers is not None and (
            isinstance(num_workers, bool) or not isinstance(num_workers, int | np.integer) or num_workers < 1
        ):
            raise ValueError(f"RayExecutor: num_workers must be a positive integer or None, got {num_workers!r}.")
        if address is not None and not isinstance(address, str):
            raise TypeError(
                f"RayExecutor: address must be a string such as 'auto' or 'ray://host:10001' or None, got {address!r}."
            )
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise TypeError(f"RayExecutor: runtime_env must be a dict or None, got {runtime_env!r}.")
        self.num_workers = None if num_workers is None else int(num_workers)
        self.address = address
        self.runtime_env = dict(runtime_env or {})
        self.evaluations = 0
        self.eval_seconds = 0.0
        self.restarts = 0  # actors replaced after dying
        self._started_ray = False
        self._slots: list[_Slot] = []
        self._make_actor: Callable[[], Any] | None = None
        self._generation = 0

    def __repr__(self) -> str:
        return f"RayExecutor(num_workers={self.num_workers!r}, address={self.address!r})"

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ open / close

    def open(self, work: keras.Model, evaluator: Callable[[keras.Model, str], float]) -> None:
        ray = self._ray
        if self._slots:
            raise RuntimeError("RayExecutor.open: already open; close() it first.")
        if not ray.is_initialized():
            # the job-wide hook quiets TensorFlow's import in every worker (a per-actor runtime_env must be JSON)
            quiet = {
                "include_dashboard": False,
                "logging_level": logging.ERROR,
                "runtime_env": {"worker_process_setup_hook": quiet_worker_setup_hook()},
            }
            if self.address is None:
                ray.init(num_cpus=self.num_workers, **quiet)
            else:
                ray.init(address=self.address, **quiet)
            self._started_ray = True
        workers = self.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        cpus = ray.cluster_resources().get("CPU", 0)
        if workers > cpus:
            logger.warning("RayExecutor: %d workers asked for, the Ray cluster has %s CPUs", workers, cpus)
        env = dict(self.runtime_env)
        env["env_vars"] = {**_worker_env(), **dict(env.get("env_vars") or {})}
        model_ref = ray.put(_model_bytes(work))
        layout = _weight_layout(work)
        evaluator_ref = ray.put(evaluator)
        custom = _custom_objects(work)
        remote_class = ray.remote(_Worker).options(
            num_cpus=1, max_restarts=0, max_task_retries=0, runtime_env=env, name=None
        )
        self._make_actor = lambda: remote_class.remote(model_ref, layout, evaluator_ref, custom)
        try:
            for _ in range(workers):
                self._slots.append(_Slot(self._make_actor(), self._next_generation()))
            self._get([slot.actor.ready.remote() for slot in self._slots])  # load errors surface here
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        ray = self._ray
        for slot in self._slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:  # already dead
                pass
        self._slots = []
        self._make_actor = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    # ------------------------------------------------------------ scoring

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, float]]:
        if not self._slots:
            raise RuntimeError("RayExecutor.map before open(work, evaluator).")
        ray = self._ray
        source = iter(jobs)
        exhausted = False
        waiting: list[_Pending] = []  # jobs to (re)submit
        running: dict[Any, tuple[_Pending, int]] = {}  # ObjectRef -> (job, slot index)
        capacity = JOBS_PER_WORKER * len(self._slots)
        try:
            while True:
                while not exhausted and len(running) + len(waiting) < capacity:
                    try:
                        job = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    waiting.append(_Pending(job, ray.put(job.assignments)))
                while waiting and len(running) < capacity:
                    pending = waiting.pop(0)
                    index = self._pick_slot(pending)
                    slot = self._slots[index]
                    ref = slot.actor.score.remote(pending.values, pending.job.what)
                    slot.in_flight.add(ref)
                    running[ref] = (pending, index)
                if not running:
                    break
                (ref,), _ = ray.wait(list(running), num_returns=1)
                pending, index = running.pop(ref)
                slot = self._slots[index]
                slot.in_flight.discard(ref)
                try:
                    score, seconds = self._get(ref)
                except ray.exceptions.RayActorError as error:
                    self._worker_died(index, pending, error, running, waiting)
                    continue
                self.evaluations += 1
                self.eval_seconds += float(seconds)
                yield pending.job, float(score)
            self._get([slot.actor.check.remote("after the search on a Ray worker") for slot in self._slots])
        finally:
            for ref in running:
                try:
                    ray.cancel(ref, force=False)
                except Exception:
                    pass

    def _get(self, refs: Any) -> Any:
        """``ray.get(refs)``, with an error raised in an actor method (the callback's TypeError, ModelChangedError,
        a load error) re-raised as the original exception rather than Ray's wrapper."""
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def _pick_slot(self, pending: _Pending) -> int:
        """The actor with the fewest jobs in flight, preferring one the job has not already died on."""
        order = sorted(range(len(self._slots)), key=lambda i: len(self._slots[i].in_flight))
        for index in order:
            if (index, self._slots[index].generation) not in pending.failed_on:
                return index
        return order[0]

    def _worker_died(
        self,
        index: int,
        pending: _Pending,
        error: BaseException,
        running: dict[Any, tuple[_Pending, int]],
        waiting: list[_Pending],
    ) -> None:
        """Replace the dead actor of slot ``index``; its jobs go back to the queue (or raise after two deaths)."""
        slot = self._slots[index]
        pending.failed_on.add((index, slot.generation))
        lost = [pending]
        for ref in list(slot.in_flight):  # the actor's other jobs died with it
            other, _ = running.pop(ref)
            other.failed_on.add((index, slot.generation))
            lost.append(other)
        slot.in_flight.clear()
        for job in lost:
            if len(job.failed_on) >= MAX_ATTEMPTS:
                raise RuntimeError(
                    f"RayExecutor: scoring {job.job.what} failed on {len(job.failed_on)} different workers "
                    f"(each died while evaluating it); last error: {type(error).__name__}: {error}"
                ) from error
        self.restarts += 1
        if self.restarts > 2 * len(self._slots) + 2:
            raise RuntimeError(f"RayExecutor: workers died {self.restarts} times; giving up. Last error: {error}")
        logger.warning(
            "RayExecutor: a worker died while scoring %s (%s); starting a new one and retrying %d job(s)",
            pending.job.what,
            type(error).__name__,
            len(lost),
        )
        try:
            self._ray.kill(slot.actor, no_restart=True)
        except Exception:
            pass
        self._slots[index] = _Slot(self._make_actor(), self._next_generation())
        waiting[:0] = lost
