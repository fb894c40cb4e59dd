"""JSON cache of the eval-score table (never pickle), written atomically.

File format::

    {
      "eval_scores": {"conv2d_1": {"0.1": 0.52, "0.2": 0.71}, ...},
      "model_fingerprint": "3f5a..."
    }

Ratio keys are ``repr(float(ratio))`` (the shortest string that reads back as the same float, so 0.1 is written
as ``"0.1"``). ``model_fingerprint`` is optional; when present and the caller passes a fingerprint, they must match.
A file may hold scores for only some layers: the caller computes the missing ones and saves the merged table.
:class:`ScoreCacheWriter` writes a run's table as the scores arrive, merged with the file's under a lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EvalScoresCacheError",
    "ScoreCacheWriter",
    "fingerprint_from_entries",
    "load_eval_scores",
    "save_eval_scores",
]

_SCORES_KEY = "eval_scores"
_FINGERPRINT_KEY = "model_fingerprint"


class EvalScoresCacheError(ValueError):
    """An eval-score cache file is unusable: corrupt, wrongly structured, or computed for another model.

    Example:
        >>> issubclass(EvalScoresCacheError, ValueError)
        True
    """


def _ratio_key(ratio: float) -> str:
    return repr(float(ratio))


def save_eval_scores(
    path: str | os.PathLike[str], scores: Mapping[str, Mapping[float, float]], fingerprint: str | None
) -> None:
    """Write the eval-score table to ``path`` as JSON, atomically.

    The table is checked and serialised first (a NaN or infinite score raises ``ValueError`` and leaves any existing
    file untouched); then it is written to a temporary file in the same directory, flushed, fsynced and moved over
    ``path`` with ``os.replace``, so a reader sees either the old file or the complete new one. Nothing else is
    created; the directory must exist.

    Args:
        path: file to write.
        scores: ``scores[layer][ratio] = score``.
        fingerprint: model fingerprint (see :func:`fingerprint_from_entries`) stored with the table, or None.

    Raises:
        ValueError: for a non-string layer name, a non-finite ratio or score, or two ratios with the same key.
        FileNotFoundError: if the directory of ``path`` does not exist.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "scores.json")
        ...     save_eval_scores(path, {"conv": {0.1: 0.5, 0.2: 0.75}}, fingerprint="abc")
        ...     load_eval_scores(path, fingerprint="abc")
        {'conv': {0.1: 0.5, 0.2: 0.75}}
    """
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ValueError(f"fingerprint must be a string or None, got {type(fingerprint).__name__}")
    if not isinstance(scores, Mapping):
        raise ValueError(f"scores must be a mapping layer name -> {{ratio: score}}, got {type(scores).__name__}")
    table: dict[str, dict[str, float]] = {}
    for layer, layer_scores in scores.items():
        if not isinstance(layer, str):
            raise ValueError(f"scores has layer name {layer!r}; layer names must be strings")
        if not isinstance(layer_scores, Mapping):
            raise ValueError(f"scores[{layer!r}] must be a mapping ratio -> score")
        points: list[tuple[float, float]] = []
        for ratio, score in layer_scores.items():
            try:
                ratio_f, score_f = float(ratio), float(score)
            except (TypeError, ValueError):
                raise ValueError(
                    f"scores[{layer!r}] has ratio {ratio!r} / score {score!r}; both must be numbers"
                ) from None
            if not math.isfinite(ratio_f):
                raise ValueError(f"scores[{layer!r}] has non-finite ratio {ratio!r}")
            if not math.isfinite(score_f):
                raise ValueError(
                    f"scores[{layer!r}][{ratio!r}] is {score!r}; only finite scores can be cached (check the eval "
                    f"callback)"
                )
            points.append((ratio_f, score_f))
        row: dict[str, float] = {}
        for ratio_f, score_f in sorted(points):
            key = _ratio_key(ratio_f)
            if key in row:
                raise ValueError(f"scores[{layer!r}] has two ratios written as {key!r}")
            row[key] = score_f
        table[layer] = row
    document: dict[str, Any] = {_SCORES_KEY: table}
    if fingerprint is not None:
        document[_FINGERPRINT_KEY] = fingerprint
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"

    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write eval scores to {str(target)!r}: directory {str(directory)!r} missing")
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, target)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable where the platform allows it (best effort)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON for a score")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def load_eval_scores(path: str | os.PathLike[str], fingerprint: str | None) -> dict[str, dict[float, float]] | None:
    """Read an eval-score table written by :func:`save_eval_scores`.

    Args:
        path: file to read.
        fingerprint: fingerprint of the current model, or None to skip the check. A file without a fingerprint is
            always accepted.

    Returns:
        ``scores[layer][ratio] = score`` with float ratios, or ``None`` if the file does not exist (compute the
        scores and save them). Layers missing from the file are simply absent.

    Raises:
        EvalScoresCacheError: (a ``ValueError``) if the file is not valid JSON (e.g. truncated), is not of the format
            above, has non-numeric ratios or scores, or was computed for a different model (fingerprint mismatch).

    Example:
        >>> load_eval_scores("/nonexistent/scores.json", fingerprint=None) is None
        True
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as error:
        raise EvalScoresCacheError(f"eval-score cache {source!r} is not UTF-8 text: {error}") from None

    def broken(what: str) -> EvalScoresCacheError:
        return EvalScoresCacheError(
            f"eval-score cache {source!r} is unusable: {what}. Delete it to recompute the scores, or pass another path."
        )

    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise broken(f"invalid JSON ({error})") from None
    if not isinstance(document, dict):
        raise broken(f"expected a JSON object at the top level, got {type(document).__name__}")
    if _SCORES_KEY not in document:
        raise broken(f"missing the {_SCORES_KEY!r} key")

    stored = document.get(_FINGERPRINT_KEY)
    if stored is not None and not isinstance(stored, str):
        raise broken(f"{_FINGERPRINT_KEY!r} must be a string, got {stored!r}")
    if fingerprint is not None and stored is not None and stored != fingerprint:
        raise EvalScoresCacheError(
            f"eval-score cache {source!r} was computed for a different model (its layers, configurations, shapes or "
            f"weights changed: fingerprint {stored[:12]}... != {fingerprint[:12]}...). Delete the file to recompute "
            f"the scores, or pass another path."
        )

    table = document[_SCORES_KEY]
    if not isinstance(table, dict):
        raise broken(f"{_SCORES_KEY!r} must be an object layer name -> {{ratio: score}}")
    scores: dict[str, dict[float, float]] = {}
    for layer, row in table.items():
        if not isinstance(row, dict):
            raise broken(f"scores of layer {layer!r} must be an object ratio -> score, got {type(row).__name__}")
        parsed: dict[float, float] = {}
        for key, value in row.items():
            try:
                ratio = float(key)
            except ValueError:
                raise broken(f"layer {layer!r} has ratio key {key!r}, which is not a number") from None
            if not math.isfinite(ratio):
                raise broken(f"layer {layer!r} has non-finite ratio key {key!r}")
            try:
                score = float(value) if not isinstance(value, bool) and isinstance(value, int | float) else math.nan
            except OverflowError:
                score = math.nan
            if not math.isfinite(score):
                raise broken(f"layer {layer!r} has score {value!r} at ratio {key!r}, which is not a finite number")
            if ratio in parsed:
                raise broken(f"layer {layer!r} has ratio {ratio!r} twice")
            parsed[ratio] = score
        scores[layer] = parsed
    return scores


def fingerprint_from_entries(entries: Iterable[tuple[str, str, Sequence[np.ndarray]]]) -> str:
    """SHA-256 hex digest identifying a model by its layers and weights.

    Each entry is ``(layer name, layer class name, weight arrays)``; the digest covers, in order, every name, class
    name, and each array's shape, dtype and bytes (C order). Every field is length-prefixed, so different entries
    cannot collide by concatenation. The result is deterministic; changing any layer, shape or weight changes it.

    Raises:
        ValueError: for a weight array of object dtype (its bytes are not its values).

    Example:
        >>> import numpy as np
        >>> entries = [("dense", "Dense", [np.ones((2, 3), np.float32), np.zeros(3, np.float32)])]
        >>> digest = fingerprint_from_entries(entries)
        >>> len(digest), digest == fingerprint_from_entries(entries)
        (64, True)
        >>> digest == fingerprint_from_entries([("dense", "Dense", [np.ones((3, 2), np.float32), np.zeros(3)])])
        False
    """
    digest = hashlib.sha256()

    def field(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    for name, class_name, weights in entries:
        field(b"layer")
        field(str(name).encode("utf-8"))
        field(str(class_name).encode("utf-8"))
        arrays = list(weights)
        field(str(len(arrays)).encode())
        for weight in arrays:
            array = np.ascontiguousarray(np.asarray(weight))
            if array.dtype.hasobject:
                raise ValueError(f"weights of layer {name!r} have object dtype; cannot fingerprint them")
            field(repr(tuple(int(n) for n in array.shape)).encode())
            field(array.dtype.str.encode())
            field(array.tobytes())
    return digest.hexdigest()


class ScoreCacheWriter:
    """Saves a growing score table to its cache file as the scores arrive, without ever losing a score.

    :meth:`save` is called after every score: the table is written at most every :attr:`min_interval` seconds
    (0.5 by default; the scores in between stay in memory and go with the next write, or :meth:`close`), so a run
    that is killed loses at most the last half second of scores and a rerun with the same file resumes from there.
    Each write merges with what the file holds under a lock (``fcntl.flock`` on a side file ``<path>.lock``): the
    file is read again, this run's scores are added to it, and the result replaces it atomically, so two runs on one
    cache file never lose each other's scores.

    A write that fails (full disk, a folder made read-only, a network share gone) does not stop the run: the scores
    stay in memory, a warning says so once, and every later :meth:`save` tries again. :meth:`close` (at the end of
    the evaluations, also when they stop by an error or Ctrl-C) tries a last time and, if the cache still cannot
    be written, writes the table to a file in the temporary folder instead; a warning (and :attr:`message`) says
    where the scores went, so a rerun can take them with ``saved_eval_scores_dict``/``--cache``.

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> writer = ScoreCacheWriter(os.path.join(folder, "missing", "scores.json"), None)
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     writer.save({"conv": {0.5: 0.9}})  # fails: the scores stay in memory
        ...     where = writer.close()  # fails again: saved in the temporary folder instead
        False
        >>> load_eval_scores(where, None)
        {'conv': {0.5: 0.9}}
    """

    #: seconds between two writes of the file (0: write after every score)
    min_interval: float = 0.5

    def __init__(self, path: str | os.PathLike[str], fingerprint: str | None) -> None:
        self.path = os.fspath(path)
        self.fingerprint = fingerprint
        self.table: dict[str, dict[float, float]] | None = None
        self.error: OSError | None = None  # the last write's failure, None once a write succeeded
        self.message: str | None = None  # where the scores went when the cache could not be written
        self.writes = 0  # successful writes of the cache file
        self._written: dict[str, dict[float, float]] | None = None  # the table of the last successful write
        self._last_write = -math.inf

    def save(self, table: Mapping[str, Mapping[float, float]]) -> bool:
        """Keep ``table`` and write it unless the last write was less than :attr:`min_interval` seconds ago (then
        the next save or :meth:`close` writes it); ``False`` when the write failed (it is retried later)."""
        self.table = {layer: dict(row) for layer, row in table.items() if row}
        if self.error is None and time.monotonic() - self._last_write < self.min_interval:
            return True
        return self._write()

    def _write(self) -> bool:
        assert self.table is not None
        try:
            _merge_and_save(self.path, self.table, self.fingerprint)
        except OSError as err:
            if self.error is None:
                warnings.warn(
                    f"could not write the eval-score cache {self.path!r} ({err}); the scores stay in memory and the "
                    "write is tried again with the next score",
                    UserWarning,
                    stacklevel=3,
                )
            self.error = err
            return False
        self.error = None
        self.writes += 1
        self._written = {layer: dict(row) for layer, row in self.table.items()}
        self._last_write = time.monotonic()
        return True

    def close(self, table: Mapping[str, Mapping[float, float]] | None = None) -> str | None:
        """Last write, with ``table`` when given (the scores so far, e.g. of a run stopped mid-layer); if the cache
        still cannot be written, save the table elsewhere. Returns the file that holds the scores (``None`` when
        there were none, or they could not be saved anywhere)."""
        if table is not None:
            latest = {layer: dict(row) for layer, row in table.items() if row}
            if latest:
                self.table = latest
        if self.table is None:
            return None
        if self.table == self._written or self._write():
            return self.path
        base = os.path.splitext(os.path.basename(self.path))[0] or "scores"
        fallback = os.path.join(tempfile.gettempdir(), f"tfcompress-{base}-{os.getpid()}-{int(time.time())}.json")
        try:
            save_eval_scores(fallback, self.table, self.fingerprint)
        except OSError as err:
            self.message = (
                f"the eval-score cache {self.path!r} could not be written ({self.error}), nor {fallback!r} ({err}): "
                f"the scores of {len(self.table)} layer(s) are only in the returned stats (eval_scores)"
            )
            warnings.warn(self.message, UserWarning, stacklevel=2)
            return None
        self.message = (
            f"the eval-score cache {self.path!r} could not be written ({self.error}); the scores of "
            f"{len(self.table)} layer(s) were saved to {fallback!r} instead: copy it there, or pass it as "
            "saved_eval_scores_dict (--cache), to reuse them"
        )
        warnings.warn(self.message, UserWarning, stacklevel=2)
        return fallback


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``<path>.lock`` for the ``with`` block (no lock where fcntl is missing).

    The side file is left in place: removing a lock file while another process may be waiting on it would let two
    processes hold "the" lock at once."""
    try:
        import fcntl
    except ImportError:  # not on POSIX
        yield
        return
    descriptor = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _merge_and_save(path: str, table: Mapping[str, Mapping[float, float]], fingerprint: str | None) -> None:
    """Under the file's lock: read what it holds now (another run may have added scores), add ``table`` (its scores
    win where both have one), and write the result atomically. A file for another model, or unreadable, is
    replaced."""
    with _locked(path):
        try:
            stored = load_eval_scores(path, fingerprint) or {}
        except (EvalScoresCacheError, OSError):
            stored = {}
        merged = {layer: dict(row) for layer, row in stored.items()}
        for layer, row in table.items():
            merged.setdefault(layer, {}).update(row)
        save_eval_scores(path, merged, fingerprint)
