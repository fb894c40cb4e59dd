"""How many threads numpy's BLAS/LAPACK may use, set for a block and restored after it.

TensorFlow keeps its own thread pools alive in the same process; a multi-threaded BLAS call on a small matrix then
fights them for the cores and can be many times slower than on one thread. The SVD code
(:mod:`tfcompress.truncated_svd`, :mod:`tfcompress.background_svd`) and the data-aware fits limit BLAS through these
helpers; nothing global is changed for longer than a block. Nothing here knows about Keras.

Example:
    >>> import numpy as np
    >>> with blas_single_thread():
    ...     float(np.linalg.svd(np.eye(3), compute_uv=False).sum())
    3.0
    >>> usable_cores() >= 1
    True
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["THREADED_WORK", "blas_controller", "blas_single_thread", "blas_threads_for", "usable_cores"]


@contextlib.contextmanager
def blas_single_thread() -> Iterator[None]:
    """Run numpy's BLAS/LAPACK on one thread inside the block (only there).

    With TensorFlow's thread pools alive in the same process, a multi-threaded
    OpenBLAS SVD of a small matrix can take 50x longer than a single-threaded one
    because the two fight over the cores. Nothing global is changed: the previous
    limits are restored on exit. Without threadpoolctl this does nothing.
    """
    controller = blas_controller()
    if controller is None:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


@functools.cache
def blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found once (numpy's is loaded with numpy).

    ``threadpool_limits(...)`` looks the libraries up anew on every use, which costs about 10 ms;
    reusing the controller makes a limit cost about 0.2 ms.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return None
    return ThreadpoolController()


THREADED_WORK = 50_000_000  # m * n * min(m, n) from which BLAS may use its threads


def blas_threads_for(work: int) -> contextlib.AbstractContextManager[None]:
    """One BLAS thread for a product of ``work`` multiply-adds below ``THREADED_WORK``, all of them above it.

    Large products gain from BLAS threads; small ones lose to TensorFlow's pools (see :func:`blas_single_thread`).
    """
    return blas_single_thread() if work < THREADED_WORK else contextlib.nullcontext()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask on Linux, else every core), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # not on Linux
        return max(os.cpu_count() or 1, 1)
