"""Rank/ratio selection from tables of eval scores and costs (pure numpy + stdlib, no Keras).

- :mod:`.greedy`: :func:`greedy_select` (per-layer ratios by a score-threshold binary search), :func:`monotonic_fit`.
- :mod:`.knapsack`: :func:`min_loss_select` (per-layer ratios with the least summed score loss for a budget).
- :mod:`.tar`: TAR rank-index selection, :func:`tar_candidate_ranks`, :func:`tar_select`.
- :mod:`.cache`: the eval-score table as atomically written JSON.

Example:
    >>> from tfcompress.select import monotonic_fit
    >>> monotonic_fit({0.25: 1.0, 0.5: 0.5})
    {0.25: 0.75, 0.5: 0.75}
"""

from tfcompress.select.cache import (
    EvalScoresCacheError,
    ScoreCacheWriter,
    fingerprint_from_entries,
    load_eval_scores,
    save_eval_scores,
)
from tfcompress.select.greedy import Selection, greedy_select, monotonic_fit
from tfcompress.select.knapsack import min_loss_select
from tfcompress.select.tar import TarSelection, tar_candidate_ranks, tar_indices_to_evaluate, tar_select

__all__ = [
    "EvalScoresCacheError",
    "ScoreCacheWriter",
    "Selection",
    "TarSelection",
    "fingerprint_from_entries",
    "greedy_select",
    "load_eval_scores",
    "min_loss_select",
    "monotonic_fit",
    "save_eval_scores",
    "tar_candidate_ranks",
    "tar_indices_to_evaluate",
    "tar_select",
]
