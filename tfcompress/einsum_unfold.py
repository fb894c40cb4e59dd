"""Plain-numpy unfolding of an ``EinsumDense`` kernel into an (input features) x (output features) matrix.

An ``EinsumDense`` computes ``einsum("<input>,<kernel>-><output>", x, W)``. The kernel's indices fall in two groups:
*summed* ones (in the input and the kernel, not in the output: the features it reads) and *produced* ones (in the
kernel and the output, not in the input: the features it writes). Ordering the kernel's axes as (summed...,
produced...) and reshaping gives the matrix ``M`` (prod of summed sizes, prod of produced sizes). A truncated SVD
``M ~ A @ B`` splits the layer into two contractions through a rank-``r`` bottleneck ``Z``::

    "<input>,<summed>Z-><input without summed>Z"      then      "<input without summed>Z,Z<produced>-><output>"

which is exact at full rank (``min(rows, cols)``) and, by Eckart-Young, the best rank-``r`` approximation of the
layer's linear map below it. Examples: a query projection ``"abc,cde->abde"`` (hidden, heads, head_dim) unfolds to
(hidden, heads*head_dim); an output projection ``"abcd,cde->abe"`` (heads, head_dim, hidden) to
(heads*head_dim, hidden).

Equations that do not split this way are refused with a one-line reason (:func:`einsum_problem`): a kernel index
shared with the input *and* the output (a batch dimension of the kernel), a kernel index that is neither summed nor
produced, an ellipsis in the kernel, repeated indices, an input index summed away without the kernel.

Example:
    >>> import numpy as np
    >>> kernel = np.random.default_rng(0).normal(size=(8, 2, 4))          # "abc,cde->abde"
    >>> a, b = einsum_factors(kernel, "abc,cde->abde", rank=8)             # full rank: exact
    >>> np.allclose(einsum_compose(a, b, "abc,cde->abde"), kernel)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .decompose import TruncatedSVD

__all__ = [
    "EinsumSplit",
    "einsum_split",
    "einsum_problem",
    "einsum_unfold",
    "einsum_fold",
    "einsum_factors",
    "einsum_compose",
]


@dataclass(frozen=True)
class EinsumSplit:
    """How an ``EinsumDense`` equation splits: its specs, the summed and produced kernel indices (kernel order),
    the rank letter and the two stage equations."""

    input_spec: str
    kernel_spec: str
    output_spec: str
    summed: str
    produced: str
    rank_letter: str
    first: str  # "<input>,<summed>Z-><middle>"
    second: str  # "<middle>,Z<produced>-><output>"

    @property
    def unfold_order(self) -> tuple[int, ...]:
        """The permutation of the kernel's axes that puts the summed indices first, then the produced ones."""
        return tuple(self.kernel_spec.index(c) for c in self.summed + self.produced)

    def matrix_shape(self, kernel_shape: tuple[int, ...]) -> tuple[int, int]:
        """``(prod of summed sizes, prod of produced sizes)`` for a kernel of ``kernel_shape``."""
        sizes = dict(zip(self.kernel_spec, kernel_shape, strict=True))
        return math.prod(sizes[c] for c in self.summed), math.prod(sizes[c] for c in self.produced)


def _parse(equation: str) -> tuple[str, str, str]:
    equation = str(equation).replace(" ", "")
    if equation.count("->") != 1 or equation.split("->")[0].count(",") != 1:
        raise ValueError(f"not an 'input,kernel->output' equation: {equation!r}")
    operands, output = equation.split("->")
    x, w = operands.split(",")
    return x, w, output


def einsum_split(equation: str) -> EinsumSplit:
    """The split of ``equation`` into two contractions, or a ``ValueError`` whose message is the one-line reason.

    Example:
        >>> s = einsum_split("abcd,cde->abe")
        >>> s.summed, s.produced, s.first, s.second
        ('cd', 'e', 'abcd,cdz->abz', 'abz,ze->abe')
    """
    x, w, out = _parse(equation)
    if "." in w:
        raise ValueError(f"{equation!r}: the kernel has an ellipsis")
    for spec, what in ((x, "input"), (w, "kernel"), (out, "output")):
        letters = spec.replace("...", "")
        if not letters.isalpha() and letters:
            raise ValueError(f"{equation!r}: the {what} spec {spec!r} is not letters (and one '...')")
        if len(set(letters)) != len(letters):
            raise ValueError(f"{equation!r}: the {what} spec {spec!r} repeats an index (a diagonal)")
        if spec.replace("...", "") != spec and spec.count("...") != 1:
            raise ValueError(f"{equation!r}: the {what} spec {spec!r} has more than one ellipsis")
    if ("..." in x) != ("..." in out):
        raise ValueError(f"{equation!r}: the ellipsis must be in both the input and the output")
    xs, outs = set(x.replace("...", "")), set(out.replace("...", ""))
    shared = [c for c in w if c in xs and c in outs]
    if shared:
        raise ValueError(f"{equation!r}: kernel index {shared[0]!r} is in the input and the output (a batch index)")
    stray = [c for c in w if c not in xs and c not in outs]
    if stray:
        raise ValueError(f"{equation!r}: kernel index {stray[0]!r} is neither summed nor in the output")
    dropped = [c for c in xs if c not in w and c not in outs]
    if dropped:
        raise ValueError(f"{equation!r}: input index {dropped[0]!r} is summed without the kernel")
    unknown = [c for c in outs if c not in xs and c not in w]
    if unknown:
        raise ValueError(f"{equation!r}: output index {unknown[0]!r} comes from no operand")
    summed = "".join(c for c in w if c in xs)
    produced = "".join(c for c in w if c in outs)
    if not summed or not produced:
        raise ValueError(f"{equation!r}: the kernel {'reads' if not summed else 'writes'} no feature axis")
    used = set(x) | set(w) | set(out)
    rank_letter = next(c for c in "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA" if c not in used)
    middle = "".join(c for c in x if c not in summed) + rank_letter  # an ellipsis stays where it is
    return EinsumSplit(
        x,
        w,
        out,
        summed,
        produced,
        rank_letter,
        f"{x},{summed}{rank_letter}->{middle}",
        f"{middle},{rank_letter}{produced}->{out}",
    )


def einsum_problem(equation: str) -> str | None:
    """Why ``equation`` cannot be split into two contractions (one line), ``None`` when it can.

    Example:
        >>> einsum_problem("abc,cd->abd") is None, einsum_problem("abc,bcd->abd")
        (True, "'abc,bcd->abd': kernel index 'b' is in the input and the output (a batch index)")
    """
    try:
        einsum_split(equation)
    except ValueError as err:
        return str(err)
    return None


def _kernel(kernel: np.ndarray, split: EinsumSplit) -> np.ndarray:
    kernel = np.asarray(kernel)
    if kernel.ndim != len(split.kernel_spec):
        raise ValueError(
            f"kernel of shape {kernel.shape} does not fit the kernel spec {split.kernel_spec!r} of the equation."
        )
    if not np.issubdtype(kernel.dtype, np.floating):
        kernel = kernel.astype(np.float64)
    return kernel


def einsum_unfold(kernel: np.ndarray, equation: str) -> np.ndarray:
    """The (input features) x (output features) matrix of an ``EinsumDense`` kernel.

    Example:
        >>> einsum_unfold(np.zeros((2, 3, 5)), "abcd,cde->abe").shape
        (6, 5)
    """
    split = einsum_split(equation)
    kernel = _kernel(kernel, split)
    return kernel.transpose(split.unfold_order).reshape(split.matrix_shape(kernel.shape))


def einsum_fold(matrix: np.ndarray, equation: str, kernel_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`einsum_unfold`: the kernel of shape ``kernel_shape`` whose unfolding is ``matrix``.

    Example:
        >>> k = np.arange(24.0).reshape(4, 2, 3)
        >>> np.array_equal(einsum_fold(einsum_unfold(k, "abc,cde->abde"), "abc,cde->abde", k.shape), k)
        True
    """
    split = einsum_split(equation)
    kernel_shape = tuple(int(d) for d in kernel_shape)
    order = split.unfold_order
    permuted = np.asarray(matrix).reshape(tuple(kernel_shape[i] for i in order))
    return permuted.transpose(np.argsort(order))


def einsum_factors(
    kernel: np.ndarray, equation: str, rank: int, svd: TruncatedSVD | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The rank-``rank`` factors of an ``EinsumDense`` kernel: ``A`` shaped (summed sizes..., r) for the first
    contraction and ``B`` shaped (r, produced sizes...) for the second.

    Example:
        >>> a, b = einsum_factors(np.ones((8, 2, 4)), "abc,cde->abde", 3)
        >>> a.shape, b.shape
        ((8, 3), (3, 2, 4))
    """
    split = einsum_split(equation)
    kernel = _kernel(kernel, split)
    sizes = dict(zip(split.kernel_spec, kernel.shape, strict=True))
    if svd is None:
        svd = TruncatedSVD.of(einsum_unfold(kernel, equation))
    left, right = svd.factors(int(rank))
    r = left.shape[1]
    return (
        left.reshape(*(sizes[c] for c in split.summed), r),
        right.reshape(r, *(sizes[c] for c in split.produced)),
    )


def einsum_compose(first: np.ndarray, second: np.ndarray, equation: str) -> np.ndarray:
    """The kernel equivalent to the two factors (their product, folded back to the kernel spec's axis order).

    Example:
        >>> a, b = np.ones((8, 3)), np.ones((3, 2, 4))
        >>> einsum_compose(a, b, "abc,cde->abde").shape
        (8, 2, 4)
    """
    split = einsum_split(equation)
    first, second = np.asarray(first), np.asarray(second)
    r = first.shape[-1]
    matrix = first.reshape(-1, r) @ second.reshape(r, -1)
    sizes = dict(zip(split.summed, first.shape[:-1], strict=True))
    sizes.update(zip(split.produced, second.shape[1:], strict=True))
    return einsum_fold(matrix, equation, tuple(sizes[c] for c in split.kernel_spec))
