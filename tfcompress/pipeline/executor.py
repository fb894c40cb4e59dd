"""Executors: where the candidates of a search are scored.

Every search loop (the SVD schemes' score table, ``compress_scheme="auto"``, channel pruning) does the same thing
per candidate: assign new values to a few variables of one working copy, call the user's eval callback, restore the
variables. A candidate is a :class:`Job`; an executor scores a stream of jobs against a working copy.
:class:`LocalExecutor` (the default) scores them one at a time in this process; another executor (e.g. Ray actors,
each with its own working copy) plugs in through the same :class:`Executor` protocol.

Example:
    >>> import numpy as np, keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
    >>> def evaluator(m, what):
    ...     return float(np.sum(keras.ops.convert_to_numpy(m.weights[0])))
    >>> executor = LocalExecutor()
    >>> executor.open(model, evaluator)
    >>> jobs = [Job(("dense", k), f"all weights at {k}", ((0, np.full((3, 2), k, "float32")),)) for k in (1, 2)]
    >>> [(job.key, score) for job, score in executor.map(jobs)]
    [(('dense', 1), 6.0), (('dense', 2), 12.0)]
    >>> executor.close()
    >>> executor.evaluations
    2
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import keras
import numpy as np

from ..progress import Progress

__all__ = ["Executor", "Job", "LocalExecutor", "check_executor", "opened", "progress_bar", "weight_indices"]


@dataclass(frozen=True, eq=False)
class Job:
    """One candidate to score: values for a few weights of the working copy, restored after scoring.

    ``key`` is the search loop's own key (returned with the score), ``what`` names the candidate in errors and
    progress, ``assignments`` are ``(index into work.weights, new value)`` pairs. Jobs compare by identity.

    Example:
        >>> job = Job(("conv", 4), "layer 'conv' at rank 4", ((0, np.zeros((3, 3), "float32")),))
        >>> job.key, len(job.assignments)
        (('conv', 4), 1)
    """

    key: Hashable
    what: str
    assignments: tuple[tuple[int, np.ndarray], ...]


class Executor(Protocol):
    """What :func:`tfcompress.compress_model` needs of an executor (``compress_model(..., executor=...)``).

    ``open(work, evaluator)`` receives the run's working copy (built, holding the original model's weights) and
    ``evaluator(model, what) -> float`` (wraps the user's callback and checks its result); ``map(jobs)`` yields
    ``(job, score)`` for every job, possibly out of order, pulling jobs lazily (a bounded number in flight);
    ``close()`` releases what ``open`` started. ``evaluations`` and ``eval_seconds`` count the evaluations the
    executor made and the seconds spent in them (summed over workers).
    """

    evaluations: int
    eval_seconds: float

    def open(self, work: keras.Model, evaluator: Callable[[keras.Model, str], float]) -> None: ...

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, float]]: ...

    def close(self) -> None: ...


def check_executor(executor: Any) -> Any:
    """``executor``, or a new :class:`LocalExecutor` for ``None``; a TypeError for anything that is not one.

    Example:
        >>> type(check_executor(None)).__name__
        'LocalExecutor'
    """
    if executor is None:
        return LocalExecutor()
    missing = [name for name in ("open", "map", "close") if not callable(getattr(executor, name, None))]
    if isinstance(executor, type) or missing:
        raise TypeError(
            "`executor` must be an executor instance such as tfc.LocalExecutor() or tfc.RayExecutor(...) (methods "
            f"open, map and close), or None; got {executor!r}"
            + (" (a class: call it)" if isinstance(executor, type) else f" (no {', '.join(missing)})")
            + "."
        )
    return executor


class LocalExecutor:
    """The default executor: scores jobs one at a time, in order, in place on the working copy in this process.

    Each job's values are assigned to the working copy's variables, the evaluator is called, and the variables get
    their original values back, bit for bit, from copies saved before their first assignment. A variable the next
    job assigns again is restored only at the end (consecutive candidates of one layer cost one assignment each).

    Example:
        >>> LocalExecutor().evaluations
        0
    """

    def __init__(self) -> None:
        self.evaluations = 0
        self.eval_seconds = 0.0
        self._work: keras.Model | None = None
        self._evaluator: Callable[[keras.Model, str], float] | None = None
        self._variables: list[Any] = []

    def open(self, work: keras.Model, evaluator: Callable[[keras.Model, str], float]) -> None:
        self._work = work
        self._evaluator = evaluator
        self._variables = list(work.weights)

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, float]]:
        if self._work is None or self._evaluator is None:
            raise RuntimeError("LocalExecutor.map before open(work, evaluator).")
        work, evaluator, variables = self._work, self._evaluator, self._variables
        originals: dict[int, np.ndarray] = {}  # index -> value before its first assignment (assigned now)
        try:
            for job in jobs:
                targets = {index for index, _ in job.assignments}
                for index in [i for i in originals if i not in targets]:
                    variables[index].assign(originals.pop(index))
                for index, value in job.assignments:
                    variable = variables[index]
                    if index not in originals:
                        originals[index] = keras.ops.convert_to_numpy(variable)
                    variable.assign(np.asarray(value, dtype=variable.dtype))
                start = time.perf_counter()
                try:
                    score = evaluator(work, job.what)
                finally:
                    self.eval_seconds += time.perf_counter() - start
                    self.evaluations += 1
                yield job, score
        finally:
            for index, value in originals.items():
                variables[index].assign(value)

    def close(self) -> None:
        self._work = None
        self._evaluator = None
        self._variables = []  # they would keep the working copy's weights alive after the search
        self._variables = []


@contextlib.contextmanager
def opened(executor: Any, work: keras.Model, evaluator: Any) -> Iterator[Any]:
    """``executor`` opened on ``work`` for the ``with`` block, closed at its end whatever happens. Evaluations made
    outside this process (the executor's count beyond the evaluator's own calls) are added to the evaluator's
    ``remote_calls``/``remote_seconds`` for the stats."""
    calls, seconds = getattr(evaluator, "calls", 0), getattr(evaluator, "seconds", 0.0)
    evaluations, eval_seconds = executor.evaluations, executor.eval_seconds
    executor.open(work, evaluator)
    try:
        yield executor
    finally:
        try:
            executor.close()
        finally:
            if hasattr(evaluator, "add_remote"):
                evaluator.add_remote(
                    executor.evaluations - evaluations - (getattr(evaluator, "calls", 0) - calls),
                    executor.eval_seconds - eval_seconds - (getattr(evaluator, "seconds", 0.0) - seconds),
                )


def progress_bar(total: int, verbose: int) -> Progress:
    """The progress bar over a search's ``total`` evaluations (silent for ``verbose=0``)."""
    return Progress(total, verbose=1 if verbose else 0, unit="eval")


def weight_indices(work: keras.Model) -> dict[int, int]:
    """``{id(variable): its index in work.weights}``, to name a variable in a :class:`Job`'s assignments."""
    indices: dict[int, int] = {}
    for index, variable in enumerate(work.weights):
        indices.setdefault(id(variable), index)
    return indices
