"""The SVD of one matrix, computed once and truncated at any rank: :class:`TruncatedSVD`.

Every SVD scheme scores many candidate ranks of one layer; factorising the unfolded kernel once and slicing the
factors is what makes that cheap. Large matrices go through the eigendecomposition of their Gram matrix (about
twice as fast as LAPACK's SVD, with a direct fallback where that is not accurate), reconstructions pick their BLAS
threads by size (:mod:`tfcompress.blas`), and inside :func:`tfcompress.svd_memo.reuse_svds` an equal matrix gets the
SVD already computed. The unfoldings and factor kernels built on it are in :mod:`tfcompress.decompose`. Nothing here
knows about Keras.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._checks import check_finite
from .blas import blas_threads_for
from .svd_memo import remembered_svd

__all__ = ["TruncatedSVD"]


_GRAM_MIN_SIZE = 128  # smaller matrices: the direct SVD is already fast
_GRAM_MIN_RCOND = 1e-4  # singular values below this times the largest are not taken from the Gram matrix ...
_GRAM_TAIL_SHARE = 0.125  # ... and are recomputed directly when they are at most this share of them
_GRAM_TAIL_MIN_RCOND = 1e-10  # a recomputed singular value below this times the largest: the direct SVD instead


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
        return remembered_svd(matrix, cls._compute)

    @classmethod
    def _compute(cls, matrix: np.ndarray) -> TruncatedSVD:
        m, n = matrix.shape
        with blas_threads_for(m * n * min(m, n)):
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
        """The SVD with whatever BLAS threads are set (:class:`~tfcompress.background_svd.BackgroundSVDs` sets them for its workers)."""
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
        with blas_threads_for(work):
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
        with blas_threads_for(us.shape[0] * vt.shape[1] * (rank - previous_rank)):
            return previous + us[:, previous_rank:rank] @ vt[previous_rank:rank]

    def residual(self, rank: int) -> float:
        """Frobenius norm of ``matrix - reconstruct(rank)``: the norm of the discarded singular values."""
        rank = self._check_rank(rank)
        return float(np.sqrt(np.sum(self.s[rank:] ** 2)))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
