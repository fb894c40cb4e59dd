"""The eval-score cache of a run (``saved_eval_scores_dict``): the model's fingerprint, the settings tag, opening
the file before any evaluation, and keeping the scores computed so far whatever happens."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import keras

from ..enums import CompressionScheme, CostMetric
from ..graph import walk_layers
from ..outputs import check_writable_file, remove_stale_temp_files
from ..select import (
    EvalScoresCacheError,
    ScoreCacheWriter,
    fingerprint_from_entries,
    load_eval_scores,
)
from ..stats import CompressionStats

logger = logging.getLogger("tfcompress")


def model_fingerprint(model: keras.Model) -> str:
    entries = []
    for ref in walk_layers(model):
        weights = [keras.ops.convert_to_numpy(w) for w in ref.layer.weights]
        entries.append((ref.path, type(ref.layer).__name__, weights))
    return fingerprint_from_entries(entries)


def settings_tag(scheme: CompressionScheme, metric: CostMetric, multiplicity: int, data_tag: str = "") -> str:
    """The settings a score table depends on besides the model; ``data_tag``: the data-aware run's data (scores of
    data-aware candidates are not those of data-free ones)."""
    tag = f"{scheme.value}/{metric.value}/m{multiplicity}"
    return f"{tag}/{data_tag}" if data_tag else tag


def load_cache(path: str, model_digest: str, tag: str) -> dict[str, dict[float, float]] | None:
    """Load the score table; a mismatch is explained as a different model or different settings."""
    try:
        return load_eval_scores(path, f"{model_digest}|{tag}")
    except EvalScoresCacheError as err:
        if "different model" not in str(err):
            raise
        import json

        with open(path, encoding="utf-8") as handle:
            stored = str(json.load(handle).get("model_fingerprint", ""))
        stored_digest, _, stored_tag = stored.partition("|")
        if stored_digest == model_digest and stored_tag != tag:
            raise EvalScoresCacheError(
                f"eval-score cache {path!r} was computed with other settings (scheme/cost metric/multiplicity "
                f"{stored_tag!r}, this run uses {tag!r}); the scores would not match the ranks. Delete the file or pass "
                "another path."
            ) from None
        raise


def open_cache(model: keras.Model, cache_path: str, tag: str) -> tuple[str, dict[str, dict[float, float]]]:
    """Fingerprint the model and read the score table (empty when the file does not exist yet).

    Before any evaluation: the path must be a file that can be written (a probe file is created in its folder), and
    temporary files that a killed run left beside it are removed."""
    folder = os.path.dirname(os.path.abspath(cache_path))
    if not os.path.isdir(folder):
        raise ValueError(f"saved_eval_scores_dict: the folder {folder!r} does not exist; create it first.")
    remove_stale_temp_files(folder, [os.path.basename(cache_path)])
    check_writable_file(cache_path, "saved_eval_scores_dict")
    digest = model_fingerprint(model)
    return digest, load_cache(cache_path, digest, tag) or {}


@contextlib.contextmanager
def scores_kept(
    writer: ScoreCacheWriter | None, table: dict[str, dict[float, float]], stats: CompressionStats
) -> Iterator[None]:
    """Around the evaluations that fill ``table``: at the end, also by an error or Ctrl-C, the scores computed so
    far (a stopped layer's too) are written to the cache, or where :class:`ScoreCacheWriter` can put them, and a
    note says where they went when that was not the cache."""
    try:
        yield
    finally:
        if writer is not None:
            writer.close(table)
            if writer.message:
                stats.notes.append(writer.message)
