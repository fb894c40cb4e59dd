"""Plain-numpy decomposition math: unfoldings, truncated SVD, HOSVD, reconstruction.

Nothing in this module knows about Keras. Kernels follow the TensorFlow layout:
a ``Conv2D`` kernel is ``(kh, kw, C, N)`` (input channels ``C``, filters ``N``) and a
``Dense`` kernel is ``(in, units)``.

Two unfoldings of a conv kernel are used:

* **weight SVD** reads the kernel as a ``(C, kh*kw*N)`` matrix. Its rank-``r``
  factors are a 1x1 convolution ``C -> r`` followed by a ``kh x kw`` convolution
  ``r -> N``.
* **spatial SVD** reads the kernel as a ``(C*kh, N*kw)`` matrix. Its rank-``r``
  factors are a ``kh x 1`` convolution ``C -> r`` followed by a ``1 x kw``
  convolution ``r -> N``.

By the Eckart-Young theorem the truncated SVD gives the rank-``r`` factors whose
product is closest to the kernel in Frobenius norm, and the error is exactly the
norm of the discarded singular values.

Example:
    >>> import numpy as np
    >>> kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 8))
    >>> a, b = spatial_svd_factors(kernel, rank=12)   # full rank: exact
    >>> np.allclose(spatial_svd_compose(a, b), kernel)
    True
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._checks import check_finite

__all__ = [
    "TruncatedSVD",
    "dense_svd_factors",
    "weight_svd_unfold",
    "weight_svd_fold",
    "weight_svd_factors",
    "weight_svd_compose",
    "spatial_svd_unfold",
    "spatial_svd_fold",
    "spatial_svd_factors",
    "spatial_svd_compose",
    "tucker2_factors",
    "tucker2_compose",
    "relative_residuals",
    "reuse_svds",
    "BackgroundSVDs",
]


@contextlib.contextmanager
def blas_single_thread() -> Iterator[None]:
    """Run numpy's BLAS/LAPACK on one thread inside the block (only there).

    With TensorFlow's thread pools alive in the same process, a multi-threaded
    OpenBLAS SVD of a small matrix can take 50x longer than a single-threaded one
    because the two fight over the cores. Nothing global is changed: the previous
    limits are restored on exit. Without threadpoolctl this does nothing.
    """
    controller = _blas_controller()
    if controller is None:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found once (numpy's is loaded with numpy).

    ``threadpool_limits(...)`` looks the libraries up anew on every use, which costs about 10 ms;
    reusing the controller makes a limit cost about 0.2 ms.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return None
    return ThreadpoolController()


# ---------------------------------------------------------------- scoped reuse of SVDs

# Inside ``reuse_svds()``: {(shape): [(read-only matrix, its SVD), ...]}; None outside.
_SVD_MEMO: contextvars.ContextVar[dict[tuple[int, ...], list[tuple[tuple[str, bytes], TruncatedSVD]]] | None] = (
    contextvars.ContextVar("tfcompress_svd_memo", default=None)
)


@contextlib.contextmanager
def reuse_svds() -> Iterator[None]:
    """Inside the block, :meth:`TruncatedSVD.of` does not factorise a matrix equal to one it already did.

    Matrices are compared by exact equality (shape and every value), so the SVD handed out is the very
    one a new computation would give. ``compress_model`` wraps selection and the final rewrite in this
    block: the decomposed layers then get the factors of the SVDs computed during selection instead of
    factorising every chosen layer a second time. Nothing outlives the block; an inner block shares
    the outer one's memo.

    Example:
        >>> m = np.arange(12.0).reshape(3, 4)
        >>> with reuse_svds():
        ...     TruncatedSVD.of(m) is TruncatedSVD.of(m.copy())
        True
        >>> TruncatedSVD.of(m) is TruncatedSVD.of(m)
        False
    """
    if _SVD_MEMO.get() is not None:
        yield
        return
    token = _SVD_MEMO.set({})
    try:
        yield
    finally:
        _SVD_MEMO.reset(token)


_SERVE_ONCE: contextvars.ContextVar[bool] = contextvars.ContextVar("tfcompress_svd_memo_serve_once", default=False)


@contextlib.contextmanager
def serve_remembered_svds_once() -> Iterator[None]:
    """Inside :func:`reuse_svds`, for the final rewrite: an SVD of the memo is handed out once and then forgotten,
    and a matrix the memo does not know is factorised without being remembered.

    Each chosen layer is decomposed once, so its SVD can go as soon as its layer is built: the rewrite never holds
    every layer's SVD beside the new layers' weights (issue 19's memory bound). Results are unchanged.

    Example:
        >>> m = np.arange(12.0).reshape(3, 4)
        >>> with reuse_svds():
        ...     first = TruncatedSVD.of(m)
        ...     with serve_remembered_svds_once():
        ...         served, again = TruncatedSVD.of(m), TruncatedSVD.of(m)
        >>> served is first, again is first
        (True, False)
    """
    token = _SERVE_ONCE.set(True)
    try:
        yield
    finally:
        _SERVE_ONCE.reset(token)


def forget_svd(svd: TruncatedSVD) -> None:
    """Inside :func:`reuse_svds`, drop ``svd`` from the block's memo (its memory goes once nobody else holds it).

    ``compress_model(compress_scheme="auto")`` does this for the per-layer variants that lost at every ratio.
    """
    memo = _SVD_MEMO.get()
    if memo is None:
        return
    for shape, entries in memo.items():
        memo[shape] = [(key, known) for key, known in entries if known is not svd]


def _remembered_svd(
    matrix: np.ndarray, compute: Callable[[np.ndarray], TruncatedSVD], private: bool = False
) -> TruncatedSVD:
    """``compute(matrix)``; inside :func:`reuse_svds` the SVD already computed for an equal matrix, if any.

    ``private``: ``matrix`` is a read-only array nobody else holds, so the memo keeps it without a copy.
    """
    memo = _SVD_MEMO.get()
    if memo is None:
        return compute(matrix)
    entries = memo.setdefault(matrix.shape, [])
    once = _SERVE_ONCE.get()
    key = _digest(matrix)  # equal digests: equal bytes (BLAKE2b), so the memo need not hold the matrices
    for index, (known, svd) in enumerate(entries):
        if known == key:
            if once:
                del entries[index]
            return svd
    if once:
        return compute(matrix)
    if not private:
        matrix = matrix.copy()  # the SVD's own read-only copy: later changes to the caller's array cannot leak in
        matrix.flags.writeable = False
    svd = compute(matrix)
    for array in (svd.u, svd.s, svd.vt):
        array.flags.writeable = False  # shared by every caller in the block: nobody may change it in place
    entries.append((key, svd))
    return svd


def _digest(matrix: np.ndarray) -> tuple[str, bytes]:
    """The dtype and a BLAKE2b digest of ``matrix``'s values (its shape is the memo's outer key)."""
    data = np.ascontiguousarray(matrix)
    return data.dtype.str, hashlib.blake2b(data.view(np.uint8).reshape(-1), digest_size=32).digest()


def _check_kernel(kernel: np.ndarray, ndim: int, what: str) -> np.ndarray:
    kernel = np.asarray(kernel)
    if kernel.ndim != ndim:
        raise ValueError(f"{what} expects a kernel with {ndim} dimensions, got shape {kernel.shape}.")
    if not np.issubdtype(kernel.dtype, np.floating):
        kernel = kernel.astype(np.float64)
    check_finite(kernel, f"{what}: the kernel")
    return kernel


_GRAM_MIN_SIZE = 128  # smaller matrices: the direct SVD is already fast
_GRAM_MIN_RCOND = 1e-4  # singular values below this times the largest are not taken from the Gram matrix ...
_GRAM_TAIL_SHARE = 0.125  # ... and are recomputed directly when they are at most this share of them
_GRAM_TAIL_MIN_RCOND = 1e-10  # a recomputed singular value below this times the largest: the direct SVD instead
_THREADED_WORK = 50_000_000  # m * n * min(m, n) from which BLAS may use its threads


def _blas_threads_for(work: int) -> contextlib.AbstractContextManager[None]:
    """One BLAS thread for a product of ``work`` multiply-adds below ``_THREADED_WORK``, all of them above it.

    Large products gain from BLAS threads; small ones lose to TensorFlow's pools (see :func:`blas_single_thread`).
    """
    return blas_single_thread() if work < _THREADED_WORK else contextlib.nullcontext()


@dataclass(frozen=True)
class TruncatedSVD:
    """The full SVD of a matrix, computed once and truncated at any rank.

    Computing the SVD once and slicing it is what makes it cheap to evaluate many
    candidate ranks of one layer.

    Example:
        >>> import numpy as np
        >>> m = np.arange(12.0).reshape(3, 4)
        >>> svd = TruncatedSVD.of(m)
        >>> svd.max_rank
        3
        >>> np.allclose(svd.reconstruct(svd.max_rank), m)
        True
    """

    u: np.ndarray  # (m, k)
    s: np.ndarray  # (k,) non-increasing
    vt: np.ndarray  # (k, n)
    matrix: np.ndarray | None = field(default=None, repr=False, compare=False)  # lets high ranks subtract the tail

    @classmethod
    def of(cls, matrix: np.ndarray) -> TruncatedSVD:
        """Compute the (thin) SVD of ``matrix`` in float64 for accuracy.

        Large matrices go through the eigendecomposition of their Gram matrix (about twice as fast; a few small
        singular values are recomputed directly); badly conditioned or rank-deficient ones through LAPACK's SVD.
        Either way ``u`` and ``vt`` have orthonormal columns and rows and ``s`` is non-increasing.

        A float32 matrix (a float32 kernel's) is factorised in float64 too, but ``u``, ``vt`` and the matrix are
        kept in float32 (``s`` in float64): half the memory, and float32 is all the layers built from them hold.
        """
        matrix = np.asarray(matrix)
        if matrix.dtype != np.float32:
            matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2:
            raise ValueError(f"TruncatedSVD.of expects a matrix, got shape {matrix.shape}.")
        check_finite(matrix, "TruncatedSVD.of: the matrix")  # LAPACK can spin for ever on an infinity
        return _remembered_svd(matrix, cls._compute)

    @classmethod
    def _compute(cls, matrix: np.ndarray) -> TruncatedSVD:
        m, n = matrix.shape
        with _blas_threads_for(m * n * min(m, n)):
            return cls._compute_kept(matrix)

    @classmethod
    def _compute_kept(cls, matrix: np.ndarray) -> TruncatedSVD:
        """:meth:`_compute_here` in float64; for a float32 ``matrix`` the factors are kept in float32 (see :meth:`of`)
        and the float64 copy is dropped at once."""
        if matrix.dtype == np.float64:
            return cls._compute_here(matrix)
        svd = cls._compute_here(matrix.astype(np.float64))
        return cls(svd.u.astype(np.float32), svd.s, svd.vt.astype(np.float32), matrix)

    @classmethod
    def _compute_here(cls, matrix: np.ndarray) -> TruncatedSVD:
        """The SVD with whatever BLAS threads are set (:class:`BackgroundSVDs` sets them for its workers)."""
        if min(matrix.shape) >= _GRAM_MIN_SIZE:
            svd = cls._from_gram(matrix)
            if svd is not None:
                return svd
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        return cls(u, s, vt, matrix)

    @classmethod
    def _from_gram(cls, matrix: np.ndarray) -> TruncatedSVD | None:
        """The SVD from the eigendecomposition of the smaller Gram matrix, in float64; ``None`` if ill-conditioned.

        About twice as fast as LAPACK's divide-and-conquer SVD for the square-ish matrices of conv kernels. Squaring
        the matrix squares its condition number, so the Gram route is trusted only for the singular values of at
        least ``_GRAM_MIN_RCOND`` times the largest: their singular vectors are orthonormal to about 1e-8 and the
        singular values accurate to about 1e-12 of the largest, far below float32 kernels' own rounding. A few
        smaller ones (at most ``_GRAM_TAIL_SHARE`` of them, e.g. one near-dead filter) are then recomputed without
        squaring: the matrix times the eigenvectors of the small eigenvalues (which span the right subspace) is
        projected off the leading left vectors and factorised directly, which is cheap for a thin block. Matrices
        with more small singular values, or (nearly) rank-deficient ones, get the direct SVD.
        """
        if matrix.shape[0] < matrix.shape[1]:  # wide: the SVD of the transpose, transposed back
            svd = cls._from_gram(matrix.T)
            if svd is None:
                return None
            return cls(np.ascontiguousarray(svd.vt.T), svd.s, np.ascontiguousarray(svd.u.T), matrix)
        eigenvalues, vectors = np.linalg.eigh(matrix.T @ matrix)
        eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]  # non-increasing
        if not eigenvalues[0] > 0:  # zero or NaN
            return None
        k = eigenvalues.shape[0]
        head = int(np.count_nonzero(eigenvalues >= _GRAM_MIN_RCOND**2 * eigenvalues[0]))
        if k - head > _GRAM_TAIL_SHARE * k:
            return None
        s = np.sqrt(eigenvalues[:head])
        u = (matrix @ vectors[:, :head]) / s
        if head == k:
            return cls(u, s, np.ascontiguousarray(vectors.T), matrix)
        block = matrix @ vectors[:, head:]  # = (left tail vectors) (tail values) (a rotation), up to rounding
        block -= u @ (u.T @ block)  # the part along the leading left vectors is rounding only: remove it
        tail_u, tail_s, rotation = np.linalg.svd(block, full_matrices=False)
        if not tail_s[-1] >= _GRAM_TAIL_MIN_RCOND * s[0]:  # (nearly) rank-deficient: the direct SVD is safer
            return None
        u = np.hstack([u, tail_u])
        s = np.concatenate([s, tail_s])
        v = np.hstack([vectors[:, :head], vectors[:, head:] @ rotation.T])
        order = np.argsort(-s, kind="stable")  # rounding at the boundary must not break the order
        return cls(np.ascontiguousarray(u[:, order]), s[order], np.ascontiguousarray(v[:, order].T), matrix)

    @property
    def max_rank(self) -> int:
        """The number of singular values, ``min(m, n)``."""
        return int(self.s.shape[0])

    @property
    def kept_rank(self) -> int:
        """How many singular vectors are held: ``max_rank`` unless :meth:`keep_leading` dropped the others."""
        return int(self.u.shape[1])

    def keep_leading(self, rank: int) -> None:
        """Hold only the leading ``rank`` singular vectors (all singular values stay), to free memory.

        ``compress_model`` calls this once a layer's candidates are scored: later uses (the selected plan, the
        final layers) need no rank above the highest candidate's. Nothing is lost: a higher rank asked for later is
        served by factorising the matrix again (so the matrix must be held). Results are unchanged either way.

        Example:
            >>> svd = TruncatedSVD.of(np.arange(20.0).reshape(4, 5) ** 2)
            >>> before = svd.reconstruct(4)
            >>> svd.keep_leading(2)
            >>> svd.kept_rank, svd.max_rank, bool(np.allclose(svd.reconstruct(4), before))
            (2, 4, True)
        """
        rank = self._check_rank(rank)
        if rank >= self.kept_rank or self.matrix is None:
            return
        self.__dict__.pop("_float32", None)  # its products are full-size; made again, truncated, if asked for
        object.__setattr__(self, "u", _read_only(np.array(self.u[:, :rank])))
        object.__setattr__(self, "vt", _read_only(np.array(self.vt[:rank])))

    def forget_matrix(self) -> None:
        """Let go of the matrix (after :meth:`keep_leading`, when no higher rank will be asked for): ranks up to
        :attr:`kept_rank` are still served, from the held vectors; a higher one raises."""
        self.__dict__.pop("_float32", None)
        object.__setattr__(self, "matrix", None)

    def _vectors_for(self, rank: int) -> None:
        """Make sure the singular vectors up to ``rank`` are held (after :meth:`keep_leading`: factorise again)."""
        if rank > self.kept_rank:
            if self.matrix is None:
                raise ValueError(
                    f"rank {rank} is above the {self.kept_rank} singular vectors kept, and the matrix was let go"
                )
            full = type(self)._compute(self.matrix)
            self.__dict__.pop("_float32", None)
            object.__setattr__(self, "u", _read_only(full.u))
            object.__setattr__(self, "vt", _read_only(full.vt))
            object.__setattr__(self, "s", _read_only(full.s))

    def _check_rank(self, rank: int) -> int:
        rank = int(rank)
        if not 1 <= rank <= self.max_rank:
            raise ValueError(f"rank must be between 1 and {self.max_rank}, got {rank}.")
        return rank

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """Balanced factors ``(left (m, r), right (r, n))`` whose product is the best rank-r approximation.

        The singular values are split as square roots between the two factors so
        that both have comparable scale (good for float32 and for fine-tuning).
        """
        rank = self._check_rank(rank)
        self._vectors_for(rank)
        root = np.sqrt(self.s[:rank])
        return self.u[:, :rank] * root, root[:, None] * self.vt[:rank]

    @functools.cached_property
    def _float32(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        us = (self.u * self.s[: self.kept_rank]).astype(np.float32)
        vt = np.asarray(self.vt, dtype=np.float32)  # no copy when the factors are float32 already
        matrix = None if self.matrix is None else np.asarray(self.matrix, dtype=np.float32)
        return us, vt, matrix, None

    def _scaled(self, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(u * s, vt, matrix)`` in float32 (computed once) or float64: what reconstructions multiply."""
        if np.dtype(dtype) == np.float32:
            us, vt, matrix, _ = self._float32
            return us, vt, matrix
        return self.u * self.s[: self.kept_rank], self.vt, self.matrix

    def reconstruct(self, rank: int, dtype: Any = np.float64) -> np.ndarray:
        """The best rank-``rank`` approximation of the matrix.

        With ``dtype=np.float32`` the product is computed in float32 (twice as fast,
        plenty for float32 kernels). Ranks above half the maximum are computed as the
        matrix minus its discarded tail, which is the cheaper product.
        """
        rank = self._check_rank(rank)
        self._vectors_for(rank)
        tail = self.max_rank - rank
        us, vt, matrix = self._scaled(dtype)
        whole = self.kept_rank == self.max_rank  # the tail's vectors are held
        work = us.shape[0] * vt.shape[1] * min(rank, tail if matrix is not None and whole else rank)
        with _blas_threads_for(work):
            if matrix is not None and whole and tail < rank:
                return matrix - us[:, rank:] @ vt[rank:]
            return us[:, :rank] @ vt[:rank]

    def extend(self, previous: np.ndarray, previous_rank: int, rank: int) -> np.ndarray:
        """``reconstruct(rank)`` from ``previous = reconstruct(previous_rank)`` (same dtype), for ``rank >=
        previous_rank``: only the singular triplets in between are added, into a new array.

        Candidate ranks of one layer are evaluated in increasing order, so each costs the rank step rather than the
        whole rank (float32: equal to a direct reconstruction up to float32 rounding).

        Example:
            >>> svd = TruncatedSVD.of(np.arange(12.0).reshape(3, 4) ** 2)
            >>> np.allclose(svd.extend(svd.reconstruct(1), 1, 3), svd.reconstruct(3))
            True
        """
        previous_rank, rank = self._check_rank(previous_rank), self._check_rank(rank)
        if rank < previous_rank:
            raise ValueError(f"extend: rank {rank} is below the previous rank {previous_rank}.")
        self._vectors_for(rank)
        us, vt, _ = self._scaled(previous.dtype)
        with _blas_threads_for(us.shape[0] * vt.shape[1] * (rank - previous_rank)):
            return previous + us[:, previous_rank:rank] @ vt[previous_rank:rank]

    def residual(self, rank: int) -> float:
        """Frobenius norm of ``matrix - reconstruct(rank)``: the norm of the discarded singular values."""
        rank = self._check_rank(rank)
        return float(np.sqrt(np.sum(self.s[rank:] ** 2)))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _usable_cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # not on Linux
        return max(os.cpu_count() or 1, 1)


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
        cores = _usable_cores()
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
        controller = _blas_controller()
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
        return _remembered_svd(self._matrices[index], lambda _matrix: svd, private=True)

    def wait(self) -> list[TruncatedSVD]:
        """Every SVD, in the order of the matrices (waits for all)."""
        return [self.get(i) for i in range(len(self._matrices))]

    @property
    def compute_seconds(self) -> float:
        """The seconds the workers spent computing, summed over the matrices (more than the wall time when
        several ran at once)."""
        return float(sum(self._seconds))


def relative_residuals(singular_values: np.ndarray) -> np.ndarray:
    """``r -> ||W - W_r|| / ||W||`` for ``r = 0..k`` given the singular values of ``W``.

    Entry ``r`` is the relative Frobenius error of the best rank-``r`` approximation,
    so entry 0 is 1 (for a non-zero matrix) and entry ``k`` is 0.

    Example:
        >>> relative_residuals(np.array([3.0, 4.0])).round(3).tolist()
        [1.0, 0.8, 0.0]
    """
    s2 = np.asarray(singular_values, dtype=np.float64) ** 2
    total = s2.sum()
    tail = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])
    if total == 0:
        return np.zeros_like(tail)
    return np.sqrt(np.maximum(tail, 0.0) / total)


# ---------------------------------------------------------------- dense


def dense_svd_factors(kernel: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-``r`` factors ``A (in, r)``, ``B (r, units)`` of a dense kernel, ``A @ B ~ kernel``.

    Example:
        >>> a, b = dense_svd_factors(np.eye(4), 2)
        >>> a.shape, b.shape
        ((4, 2), (2, 4))
    """
    kernel = _check_kernel(kernel, 2, "dense_svd_factors")
    return TruncatedSVD.of(kernel).factors(rank)


# ---------------------------------------------------------------- weight SVD


def weight_svd_unfold(kernel: np.ndarray) -> np.ndarray:
    """Unfold a ``(kh, kw, C, N)`` kernel as the ``(C, kh*kw*N)`` matrix of weight SVD."""
    kernel = _check_kernel(kernel, 4, "weight_svd_unfold")
    kh, kw, c, n = kernel.shape
    return kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * n)


def weight_svd_fold(matrix: np.ndarray, kernel_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`weight_svd_unfold`."""
    kh, kw, c, n = kernel_shape
    return np.asarray(matrix).reshape(c, kh, kw, n).transpose(1, 2, 0, 3)


def weight_svd_factors(kernel: np.ndarray, rank: int, svd: TruncatedSVD | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weight-SVD factors: a ``(1, 1, C, r)`` kernel and a ``(kh, kw, r, N)`` kernel.

    Convolving with the first (stride 1) and then the second (the original strides,
    padding and dilation) equals convolving with the best rank-``r`` approximation
    of the ``(C, kh*kw*N)`` unfolding.
    """
    kernel = _check_kernel(kernel, 4, "weight_svd_factors")
    kh, kw, c, n = kernel.shape
    svd = svd or TruncatedSVD.of(weight_svd_unfold(kernel))
    left, right = svd.factors(rank)
    first = left.reshape(1, 1, c, rank)
    second = right.reshape(rank, kh, kw, n).transpose(1, 2, 0, 3)
    return first, second


def weight_svd_compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The ``(kh, kw, C, N)`` kernel equivalent to the two weight-SVD factor kernels."""
    first = np.asarray(first)[0, 0]  # (C, r)
    return first @ np.asarray(second)  # (C, r) @ (kh, kw, r, N) -> (kh, kw, C, N)


# ---------------------------------------------------------------- spatial SVD


def spatial_svd_unfold(kernel: np.ndarray) -> np.ndarray:
    """Unfold a ``(kh, kw, C, N)`` kernel as the ``(C*kh, N*kw)`` matrix of spatial SVD."""
    kernel = _check_kernel(kernel, 4, "spatial_svd_unfold")
    kh, kw, c, n = kernel.shape
    return kernel.transpose(2, 0, 3, 1).reshape(c * kh, n * kw)


def spatial_svd_fold(matrix: np.ndarray, kernel_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`spatial_svd_unfold`."""
    kh, kw, c, n = kernel_shape
    return np.asarray(matrix).reshape(c, kh, n, kw).transpose(1, 3, 0, 2)


def spatial_svd_factors(
    kernel: np.ndarray, rank: int, svd: TruncatedSVD | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Spatial-SVD factors: a ``(kh, 1, C, r)`` kernel and a ``(1, kw, r, N)`` kernel."""
    kernel = _check_kernel(kernel, 4, "spatial_svd_factors")
    kh, kw, c, n = kernel.shape
    svd = svd or TruncatedSVD.of(spatial_svd_unfold(kernel))
    left, right = svd.factors(rank)  # (C*kh, r), (r, N*kw)
    first = left.reshape(c, kh, rank).transpose(1, 0, 2)[:, None]  # (kh, 1, C, r)
    second = right.reshape(rank, n, kw).transpose(2, 0, 1)[None]  # (1, kw, r, N)
    return first, second


def spatial_svd_compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The ``(kh, kw, C, N)`` kernel equivalent to the two spatial-SVD factor kernels."""
    vertical = np.asarray(first)[:, 0]  # (kh, C, r)
    horizontal = np.asarray(second)[0]  # (kw, r, N)
    return vertical[:, None] @ horizontal[None]  # (kh, 1, C, r) @ (1, kw, r, N) -> (kh, kw, C, N)


# ---------------------------------------------------------------- Tucker-2


def _leading_left_vectors(matrix: np.ndarray, rank: int) -> np.ndarray:
    """``rank`` orthonormal columns spanning the leading left singular subspace of ``matrix``.

    When ``rank`` exceeds the number of columns of ``matrix`` (e.g. a 1x1 conv with N > C), the thin SVD has too
    few vectors; they are completed to an orthonormal basis so the factor shapes always match ``rank``.
    """
    m, n = matrix.shape
    if m <= n and rank <= m:
        # the eigenvectors of the small (m, m) Gram matrix: only the left vectors are needed, so neither the right
        # ones (as large as the matrix) nor LAPACK's SVD workspace are made (issue 19: Tucker's scoring peak). The
        # leading subspace is what counts here (Tucker projects onto it), and its Gram eigenvectors match the SVD's
        # to rounding for the well-separated leading values; a cluster straddling the rank gives an equally good
        # basis.
        _, vectors = np.linalg.eigh(matrix @ matrix.T)
        return np.ascontiguousarray(vectors[:, ::-1][:, :rank])
    u = np.linalg.svd(matrix, full_matrices=False)[0]
    if u.shape[1] < rank:
        u = np.linalg.svd(u, full_matrices=True)[0]  # (m, m); its first columns span the same space as u
    return u[:, :rank]


def tucker2_factors(
    kernel: np.ndarray, ranks: tuple[int, int], hooi_iterations: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tucker-2 factors of a ``(kh, kw, C, N)`` kernel over its two channel modes.

    Returns ``(u_in (1, 1, C, r_in), core (kh, kw, r_in, r_out), u_out (1, 1, r_out, N))``.
    The factor matrices come from the HOSVD (leading left singular vectors of the
    mode-C and mode-N unfoldings); ``hooi_iterations`` > 0 refines them by
    higher-order orthogonal iteration, which never increases the error.
    """
    kernel = _check_kernel(kernel, 4, "tucker2_factors")
    _, _, c, n = kernel.shape
    r_in, r_out = (int(r) for r in ranks)
    if not (1 <= r_in <= c and 1 <= r_out <= n):
        raise ValueError(f"Tucker-2 ranks must be within (1..{c}, 1..{n}), got {ranks}.")
    with blas_single_thread():
        return _tucker2(kernel.astype(np.float64), r_in, r_out, int(hooi_iterations))


def _project_in(kernel: np.ndarray, u_in: np.ndarray) -> np.ndarray:
    """Contract the C mode of a (kh, kw, C, N) kernel with u_in (C, r): (kh, kw, r, N)."""
    return u_in.T @ kernel


def _tucker2(k64: np.ndarray, r_in: int, r_out: int, hooi_iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, _, c, n = k64.shape
    u_in = _leading_left_vectors(k64.transpose(2, 0, 1, 3).reshape(c, -1), r_in)  # mode-C unfolding
    u_out = _leading_left_vectors(k64.transpose(3, 0, 1, 2).reshape(n, -1), r_out)  # mode-N unfolding
    for _ in range(hooi_iterations):
        proj_n = k64 @ u_out  # (kh, kw, C, r_out)
        u_in = _leading_left_vectors(proj_n.transpose(2, 0, 1, 3).reshape(c, -1), r_in)
        proj_c = _project_in(k64, u_in)  # (kh, kw, r_in, N)
        u_out = _leading_left_vectors(proj_c.transpose(3, 0, 1, 2).reshape(n, -1), r_out)
    core = _project_in(k64, u_in) @ u_out  # matrix products (BLAS), fast for large C and N
    return u_in[None, None], core, u_out.T[None, None]


def tucker2_compose(u_in: np.ndarray, core: np.ndarray, u_out: np.ndarray) -> np.ndarray:
    """The ``(kh, kw, C, N)`` kernel equivalent to the three Tucker-2 factor kernels."""
    expanded = np.asarray(core) @ np.asarray(u_out)[0, 0]  # (kh, kw, r_in, N)
    return np.asarray(u_in)[0, 0] @ expanded
