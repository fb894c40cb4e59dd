"""TAR (tensor approximation residual) rank selection.

Instead of a ratio per layer, TAR picks one *rank index* ``i`` in ``1..N-1`` for the whole model: every layer takes
the rank whose relative approximation residual ``||W - W_r|| / ||W||`` is closest to ``i / N``. A larger index
means more residual, lower ranks and more compression. The caller evaluates the model at a few indices and
:func:`tar_select` picks the best one that meets the target ratio.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .greedy import is_int

__all__ = ["TarSelection", "tar_candidate_ranks", "tar_indices_to_evaluate", "tar_select"]

# Residual distances closer than this count as a tie (then the larger, more accurate rank wins).
_TIE_EPS = 1e-12


@dataclass
class TarSelection:
    """The outcome of :func:`tar_select`.

    Attributes:
        index: the chosen rank index.
        model_ratio: whole-model ratio (compressed cost / original cost) at that index.
        score: eval score at that index.
        reached: whether ``model_ratio <= target_ratio + tolerance``.
        message: human-readable explanation (what was reached, or why not).

    Example:
        >>> TarSelection(index=3, model_ratio=0.48, score=0.91, reached=True, message="ok").index
        3
    """

    index: int
    model_ratio: float
    score: float
    reached: bool
    message: str


def tar_candidate_ranks(relative_residuals: Sequence[float], num_rank_indices: int) -> dict[int, int]:
    """Rank per TAR index for one layer: index ``i`` -> the rank whose residual is closest to ``i / N``.

    Args:
        relative_residuals: ``r -> ||W - W_r|| / ||W||`` for ``r = 0..R``: entry 0 is 1.0, entry ``R`` is 0.0 and
            the sequence does not increase (what ``tfcompress.decompose.relative_residuals`` returns).
        num_rank_indices: ``N >= 2``; indices ``1..N-1`` are returned.

    Returns:
        ``{i: r}`` for ``i = 1..N-1`` with ``r`` in ``1..R``. On a tie in distance the larger rank (the more
        accurate one) wins. Larger ``i`` gives smaller or equal ``r``.

    Raises:
        ValueError: if the residuals are not a non-increasing sequence of at least two finite values in [0, 1], or
            ``num_rank_indices`` is not an int >= 2.

    Example:
        >>> tar_candidate_ranks([1.0, 0.7, 0.45, 0.2, 0.0], num_rank_indices=4)
        {1: 3, 2: 2, 3: 1}
    """
    if not is_int(num_rank_indices) or num_rank_indices < 2:
        raise ValueError(f"num_rank_indices must be an int >= 2, got {num_rank_indices!r}")
    try:
        residuals = [float(value) for value in relative_residuals]
    except (TypeError, ValueError):
        raise ValueError("relative_residuals must be a sequence of numbers") from None
    if len(residuals) < 2:
        raise ValueError(f"relative_residuals needs entries for ranks 0..R with R >= 1, got {len(residuals)} value(s)")
    for rank, value in enumerate(residuals):
        if not math.isfinite(value) or not -_TIE_EPS <= value <= 1.0 + 1e-9:
            raise ValueError(f"relative_residuals[{rank}] = {value!r} is not a finite value in [0, 1]")
        if rank and value > residuals[rank - 1] + 1e-9:
            raise ValueError(
                f"relative_residuals must not increase with the rank: entry {rank} ({value!r}) > entry {rank - 1} "
                f"({residuals[rank - 1]!r})"
            )

    ranks: dict[int, int] = {}
    for index in range(1, num_rank_indices):
        wanted = index / num_rank_indices
        distances = {rank: abs(residuals[rank] - wanted) for rank in range(1, len(residuals))}
        best = min(distances.values())
        ranks[index] = max(rank for rank, distance in distances.items() if distance <= best + _TIE_EPS)
    return ranks


def _check_target(target_ratio: float, tolerance: float) -> tuple[float, float]:
    try:
        target, tol = float(target_ratio), float(tolerance)
    except (TypeError, ValueError):
        raise ValueError(f"target_ratio and tolerance must be numbers, got {target_ratio!r}, {tolerance!r}") from None
    if not math.isfinite(target) or not 0.0 < target <= 1.0:
        raise ValueError(f"target_ratio must be in (0, 1], got {target_ratio!r}")
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    return target, tol


def _check_table(table: Mapping[int, float], what: str) -> dict[int, float]:
    if not isinstance(table, Mapping) or not table:
        raise ValueError(f"{what} must be a non-empty mapping rank index -> number")
    checked: dict[int, float] = {}
    for index, value in table.items():
        if not is_int(index):
            raise ValueError(f"{what} has key {index!r}; rank indices must be ints")
        index = int(index)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what}[{index}] = {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{what}[{index}] = {value!r} is not a finite number")
        checked[index] = number
    return checked


def tar_indices_to_evaluate(
    index_model_ratios: Mapping[int, float], target_ratio: float, tolerance: float = 1e-3
) -> list[int]:
    """The rank indices worth evaluating: those whose model ratio meets the target.

    Only those can be chosen by :func:`tar_select`. If none meets the target, the single index with the lowest
    model ratio (ties -> the smaller index) is returned, so the caller still evaluates the best reachable one.

    Args:
        index_model_ratios: ``index -> whole-model ratio`` at that index.
        target_ratio: wanted model ratio in (0, 1].
        tolerance: slack allowed above the target.

    Returns:
        Sorted indices.

    Example:
        >>> tar_indices_to_evaluate({1: 0.9, 2: 0.6, 3: 0.45, 4: 0.3}, target_ratio=0.5)
        [3, 4]
        >>> tar_indices_to_evaluate({1: 0.9, 2: 0.8}, target_ratio=0.5)
        [2]
    """
    target, tol = _check_target(target_ratio, tolerance)
    ratios = _check_table(index_model_ratios, "index_model_ratios")
    meeting = sorted(index for index, ratio in ratios.items() if ratio <= target + tol)
    if meeting:
        return meeting
    return [min(ratios, key=lambda index: (ratios[index], index))]


def tar_select(
    index_scores: Mapping[int, float],
    index_model_ratios: Mapping[int, float],
    target_ratio: float,
    tolerance: float = 1e-3,
) -> TarSelection:
    """Choose the TAR rank index: the best score among the indices that meet the target ratio.

    Objective: among the evaluated indices ``i`` (keys of ``index_scores``) with
    ``index_model_ratios[i] <= target_ratio + tolerance``, maximise ``index_scores[i]``; ties go to the index whose
    ratio is closest to the target (least extra compression), then to the smaller index. If no evaluated index meets
    the target, the one with the lowest model ratio is returned (ties -> higher score, then smaller index) with
    ``reached=False``, and a ``UserWarning`` gives that best reachable ratio.

    Args:
        index_scores: ``index -> eval score`` (higher is better) of the model compressed at that index.
        index_model_ratios: ``index -> whole-model ratio``; must cover every key of ``index_scores`` (extra
            entries, e.g. indices not evaluated, are ignored).
        target_ratio: wanted model ratio in (0, 1].
        tolerance: slack allowed above the target.

    Raises:
        ValueError: for a target outside (0, 1], an empty table, a non-int index, a non-finite value or an
            evaluated index without a model ratio.

    Example:
        >>> sel = tar_select({2: 0.95, 3: 0.90, 4: 0.80}, {2: 0.6, 3: 0.45, 4: 0.3}, target_ratio=0.5)
        >>> sel.index, sel.model_ratio, sel.score, sel.reached
        (3, 0.45, 0.9, True)
    """
    target, tol = _check_target(target_ratio, tolerance)
    scores = _check_table(index_scores, "index_scores")
    ratios = _check_table(index_model_ratios, "index_model_ratios")
    missing = sorted(index for index in scores if index not in ratios)
    if missing:
        raise ValueError(f"index_model_ratios has no model ratio for evaluated rank index(es) {missing}")

    meeting = [index for index in scores if ratios[index] <= target + tol]
    if meeting:
        index = min(meeting, key=lambda i: (-scores[i], abs(ratios[i] - target), i))
        message = (
            f"target ratio {target:.6g} reached: rank index {index} gives model ratio {ratios[index]:.6g} with "
            f"score {scores[index]:.6g} (best of {len(meeting)} evaluated index(es) meeting the target)."
        )
        return TarSelection(index, ratios[index], scores[index], reached=True, message=message)

    index = min(scores, key=lambda i: (ratios[i], -scores[i], i))
    message = (
        f"target ratio {target:.6g} (tolerance {tol:.3g}) is not reachable with the evaluated rank indices: the "
        f"best reachable model ratio is {ratios[index]:.6g} (index {index}, score {scores[index]:.6g}); returning "
        f"it. Use more rank indices, compress more layers or raise the target."
    )
    warnings.warn(message, UserWarning, stacklevel=2)
    return TarSelection(index, ratios[index], scores[index], reached=False, message=message)
