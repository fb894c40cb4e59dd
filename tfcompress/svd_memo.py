"""Scoped reuse of SVDs: inside :func:`reuse_svds`, a matrix equal to one already factorised gets the same SVD.

``compress_model`` factorises every candidate layer's unfolded kernel while it scores ratios; the final rewrite
needs the SVDs of the chosen layers again. The memo here (a context variable, so nothing outlives the block and
threads of other runs do not see it) hands those SVDs out instead of computing them twice. Matrices are keyed by
shape, dtype and a BLAKE2b digest of their bytes, so an SVD is reused only for an exactly equal matrix.
:meth:`tfcompress.truncated_svd.TruncatedSVD.of` and :meth:`tfcompress.background_svd.BackgroundSVDs.get` go
through :func:`remembered_svd`. Nothing here knows about Keras.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .truncated_svd import TruncatedSVD

__all__ = ["forget_svd", "remembered_svd", "reuse_svds", "serve_remembered_svds_once"]


# Inside ``reuse_svds()``: {shape: [((dtype, digest of the values), its SVD), ...]}; None outside.
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
        >>> from tfcompress.truncated_svd import TruncatedSVD
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
        >>> from tfcompress.truncated_svd import TruncatedSVD
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


def remembered_svd(
    matrix: np.ndarray, compute: Callable[[np.ndarray], TruncatedSVD], private: bool = False
) -> TruncatedSVD:
    """``compute(matrix)``; inside :func:`reuse_svds` the SVD already computed for an equal matrix, if any.

    ``private``: ``matrix`` is a read-only array nobody else holds, so the memo keeps it without a copy.

    Example:
        >>> from tfcompress.truncated_svd import TruncatedSVD
        >>> m = np.eye(3)
        >>> with reuse_svds():
        ...     remembered_svd(m, TruncatedSVD._compute) is remembered_svd(m.copy(), TruncatedSVD._compute)
        True
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
