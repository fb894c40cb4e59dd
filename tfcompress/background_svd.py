"""SVDs computed on background threads while the caller does other work: :class:`BackgroundSVDs`.

``compress_model`` starts the SVDs of every candidate layer here and clones its working copy meanwhile (LAPACK
releases the GIL). The workers share the cores through BLAS thread limits (:mod:`tfcompress.blas`); the results
enter the memo of :func:`tfcompress.svd_memo.reuse_svds` when they are fetched. Nothing here knows about Keras.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from ._checks import check_finite
from .blas import blas_controller, usable_cores
from .svd_memo import remembered_svd
from .truncated_svd import TruncatedSVD

__all__ = ["BackgroundSVDs"]

_BACKGROUND_MAX_WORKERS = 4


class BackgroundSVDs:
    """The SVDs of several matrices, computed on background threads while the caller does other work.

    LAPACK releases the GIL, so the SVDs run next to Python-bound work of the calling thread (``compress_model``
    clones its working copy meanwhile). The largest matrices start first; each of up to
    ``min(cores, 4, len(matrices))`` workers uses ``cores // workers`` BLAS threads, a limit that is set for the
    time the workers run and restored afterwards. Use it as a context manager: leaving the block normally waits
    for the workers, so no thread outlives it. Leaving it by an exception (Ctrl-C's ``KeyboardInterrupt``, an
    error) does not wait: what has not started is cancelled, and an SVD already inside LAPACK (which no signal
    can stop) finishes on its own daemon thread, which never keeps the interpreter from exiting. Waiting
    (:meth:`get`, :meth:`wait`) wakes up every 0.1 s, so Ctrl-C ends it at once. Inside :func:`reuse_svds`,
    :meth:`get` enters each SVD into the block's memo, so the final rewrite reuses it.

    Each matrix is copied (``copy=False``: taken as handed over, for arrays nobody else changes) and kept in
    float32 when it is float32 (see :meth:`TruncatedSVD.of`); a NaN or an infinity is refused at once, with
    ``names[i]`` in the message.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> matrices = [rng.normal(size=(200, 150)), rng.normal(size=(40, 60))]
        >>> with BackgroundSVDs(matrices) as svds:
        ...     pass  # other work here
        ...     np.allclose(svds.get(0).reconstruct(150), matrices[0])
        True
    """

    _POLL_SECONDS = 0.1  # how often waiting threads look up (so Ctrl-C is handled within this time)

    def __init__(
        self,
        matrices: Sequence[np.ndarray],
        workers: int | None = None,
        names: Sequence[str] | None = None,
        copy: bool = True,
    ) -> None:
        frozen = []
        for i, matrix in enumerate(matrices):
            # a copy: later changes to the caller's array cannot leak in (copy=False: the caller hands them over)
            matrix = np.array(matrix) if copy else np.asarray(matrix)
            if matrix.dtype != np.float32:  # float32 stays float32 (see TruncatedSVD.of), the rest becomes float64
                matrix = matrix.astype(np.float64)
            if matrix.ndim != 2:
                raise ValueError(f"BackgroundSVDs expects matrices, got shape {matrix.shape}.")
            # an infinity makes LAPACK spin for ever on a thread nobody can stop: refuse it here, by name
            check_finite(matrix, names[i] if names is not None else f"BackgroundSVDs: matrix {i}")
            matrix.flags.writeable = False
            frozen.append(matrix)
        self._matrices = frozen
        cores = usable_cores()
        if workers is None:
            workers = min(cores, _BACKGROUND_MAX_WORKERS)
        self.workers = max(1, min(int(workers), len(frozen) or 1))
        self.blas_threads = max(1, cores // self.workers)
        self._seconds = [0.0] * len(frozen)
        self._futures: list[Future[TruncatedSVD]] = []
        self._threads: list[threading.Thread] = []
        self._queue: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._limits: contextlib.ExitStack | None = None

    def __enter__(self) -> BackgroundSVDs:
        self._limits = contextlib.ExitStack()
        controller = blas_controller()
        if controller is not None:
            self._limits.enter_context(controller.limit(limits=self.blas_threads, user_api="blas"))
        self._futures = [Future() for _ in self._matrices]
        self._queue = sorted(range(len(self._matrices)), key=lambda i: -self._matrices[i].size)
        self._stop.clear()
        # daemon threads (not a ThreadPoolExecutor, whose workers the interpreter joins at exit): a computation
        # stuck in LAPACK never blocks Ctrl-C or the end of the process
        self._threads = [
            threading.Thread(target=self._worker, name=f"tfcompress-svd-{i}", daemon=True)
            for i in range(min(self.workers, len(self._queue)))
        ]
        for thread in self._threads:
            thread.start()
        return self

    def _worker(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._queue:
                    return
                index = self._queue.pop(0)
            future = self._futures[index]
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = self._work(index)
            except BaseException as err:  # handed to the caller by get()
                future.set_exception(err)
            else:
                future.set_result(result)

    def _work(self, index: int) -> TruncatedSVD:
        start = time.perf_counter()
        try:
            return TruncatedSVD._compute_kept(self._matrices[index])
        finally:
            self._seconds[index] = time.perf_counter() - start

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        self._stop.set()
        with self._lock:
            for index in self._queue:
                self._futures[index].cancel()
            self._queue = []
        threads, self._threads = self._threads, []
        limits, self._limits = self._limits, None
        if exc_type is None:
            try:
                for thread in threads:
                    while thread.is_alive():
                        thread.join(self._POLL_SECONDS)
            except BaseException:
                self._restore_limits_later(threads, limits)
                raise
            if limits is not None:
                limits.close()  # only once no worker runs BLAS any more
            return
        self._restore_limits_later(threads, limits)

    @staticmethod
    def _restore_limits_later(threads: list[threading.Thread], limits: contextlib.ExitStack | None) -> None:
        """Leave without waiting: the BLAS limits are restored once the last running worker is done (changing them
        under a running LAPACK call is not safe), by a daemon thread that dies with the process."""
        running = [t for t in threads if t.is_alive()]
        if limits is None:
            return
        if not running:
            limits.close()
            return

        def restore() -> None:
            for thread in running:
                thread.join()
            limits.close()

        threading.Thread(target=restore, name="tfcompress-svd-limits", daemon=True).start()

    def get(self, index: int) -> TruncatedSVD:
        """The SVD of matrix ``index`` (waits for it; re-raises what its computation raised)."""
        if not self._futures:
            raise RuntimeError("BackgroundSVDs.get: use the object as a context manager first.")
        future = self._futures[index]
        while True:
            try:
                svd = future.result(timeout=self._POLL_SECONDS)
                break
            except FutureTimeout:
                if not self._threads and not future.done():
                    raise RuntimeError("BackgroundSVDs.get: the block was left before this SVD was done.") from None
        return remembered_svd(self._matrices[index], lambda _matrix: svd, private=True)

    def wait(self) -> list[TruncatedSVD]:
        """Every SVD, in the order of the matrices (waits for all)."""
        return [self.get(i) for i in range(len(self._matrices))]

    @property
    def compute_seconds(self) -> float:
        """The seconds the workers spent computing, summed over the matrices (more than the wall time when
        several ran at once)."""
        return float(sum(self._seconds))
