"""The search pipeline shared by every scheme: scheme -> candidates -> executor -> selector -> builder.

- :mod:`.evaluator`: the user's callback wrapped and checked; the guard against a callback that changes the model.
- :mod:`.executor`: :class:`Job` (weight assignments for the working copy), the :class:`Executor` protocol and the
  default :class:`LocalExecutor` (in process, one job at a time).
- :mod:`.ray_executor`: :class:`~.ray_executor.RayExecutor` (``tfc.RayExecutor``), the same jobs on Ray actors, each
  with its own working copy (optional: ``pip install -e ".[ray]"`` in the checkout; imported only when one is created).
- :mod:`.candidates`: the SVD schemes' eligible layers and their decompositions.
- :mod:`.scorecache`: the eval-score cache of a run (fingerprint, settings tag, opening, keeping scores).
- :mod:`.plans`: from a score table to a plan (greedy selection, budget fill, two-plan check).
- :mod:`.svd_search`: the searches of the SVD schemes (greedy, ``auto``, TAR).

Channel pruning's scheme lives in :mod:`tfcompress.pruning.driver` and uses the same executor, cache and plan
helpers. :func:`tfcompress.compress_model` (in :mod:`tfcompress.compress`) is the outline of a run.

Example:
    >>> from tfcompress.pipeline import Job, LocalExecutor
    >>> LocalExecutor().evaluations
    0
"""

from .executor import Executor, Job, LocalExecutor

__all__ = ["Executor", "Job", "LocalExecutor"]
