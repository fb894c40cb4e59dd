"""The eval-score cache of a run (``saved_eval_scores_dict``): the model's fingerprint, the settings tag, opening
the file before any evaluation, and keeping the scores computed so far whatever happens."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

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
    """A digest of every layer's path, class, configuration and weights: a cached score table is reused only for the
    same model (the same weights with another activation or stride are another model).

    Example:
        >>> import keras
        >>> def net(activation):
        ...     return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation=activation, name="d")])
        >>> a, b = net("relu"), net("tanh")
        >>> b.set_weights(a.get_weights())
        >>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a) == model_fingerprint(b)
        (True, False)
    """
    entries = []
    for ref in walk_layers(model):
        weights = [keras.ops.convert_to_numpy(w) for w in ref.layer.weights]
        entries.append((ref.path, f"{type(ref.layer).__name__} {_config_text(ref.layer)}", weights))
    return fingerprint_from_entries(entries)


def _config_text(layer: Any) -> str:
    """The layer's configuration as canonical JSON, without its name (the path is fingerprinted) or trainable flag
    (freezing a layer does not change what it computes). Values JSON cannot hold are named by their type, so the
    text is the same in every process; a layer without a configuration gives ``""``."""
    try:
        config = dict(layer.get_config())
    except Exception:  # a custom layer's get_config may raise anything; its weights still count
        return ""
    config.pop("name", None)
    config.pop("trainable", None)
    return json.dumps(config, sort_keys=True, default=lambda value: type(value).__qualname__)


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
