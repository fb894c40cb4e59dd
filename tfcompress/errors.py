"""Errors of tfcompress that callers may want to catch by type."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["TargetUnreachableError"]


class TargetUnreachableError(ValueError):
    """The target compression ratio cannot be reached with the eligible layers and candidate ratios.

    Raised by ``compress_model`` instead of returning a plan that misses the target (``allow_unreachable=True`` on
    :class:`~tfcompress.GreedySelectionParameters` returns the most-compressed plan instead). The scores already
    computed are not lost: they are on the error, and in the eval-score cache file when one was given.

    Attributes:
        target_ratio: the ratio asked for.
        best_ratio: the lowest ratio any plan of the score table reaches.
        eval_scores: the score table ``{layer: {ratio: score}}``.
        cache_path: the eval-score cache file holding the table, or ``None``.

    Example:
        >>> err = TargetUnreachableError("unreachable", target_ratio=0.3, best_ratio=0.41, eval_scores={"c": {0.5: 1.0}})
        >>> isinstance(err, ValueError), err.best_ratio
        (True, 0.41)
    """

    def __init__(
        self,
        message: str,
        *,
        target_ratio: float,
        best_ratio: float,
        eval_scores: Mapping[str, Mapping[float, float]],
        cache_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(message)
        self.target_ratio = float(target_ratio)
        self.best_ratio = float(best_ratio)
        self.eval_scores: dict[str, dict[float, float]] = {k: dict(v) for k, v in eval_scores.items()}
        self.cache_path = None if cache_path is None else os.fspath(cache_path)

    def __reduce__(self) -> Any:  # keep the attributes when the error crosses a process boundary
        return (
            _rebuild,
            (str(self), self.target_ratio, self.best_ratio, self.eval_scores, self.cache_path),
        )


def _rebuild(message: str, target: float, best: float, scores: Any, cache: str | None) -> TargetUnreachableError:
    return TargetUnreachableError(message, target_ratio=target, best_ratio=best, eval_scores=scores, cache_path=cache)


def unreachable_message(what: str, target: float, best: float, cache_path: Any, detail: str = "") -> str:
    """The one-line message of a :class:`TargetUnreachableError`."""
    kept = "on this error (.eval_scores)" + (f" and in {os.fspath(cache_path)!r}" if cache_path else "")
    return (
        f"{what}: the target ratio {target:.6g} cannot be reached; the best reachable ratio is {best:.6g}"
        + (f" ({detail})" if detail else "")
        + f". The score table is kept {kept}. Raise the target, add layers or candidate ratios, or pass "
        "GreedySelectionParameters(..., allow_unreachable=True) (CLI: --allow-unreachable) to get the "
        "most-compressed plan instead."
    )
