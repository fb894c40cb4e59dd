"""Atomic file writes: a temporary file in the target's folder, then one rename.

A reader sees either the old file or the complete new one, never a half-written
file, and nothing is left behind when writing fails. A process killed while
writing leaves its temporary file (named after its PID); the next command-line
run removes it (:mod:`tfcompress.outputs`).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

__all__ = ["save_model_atomic", "temp_prefix", "write_json_atomic", "write_text_atomic"]


def temp_prefix(path: str | os.PathLike) -> str:
    """The name start of a temporary file for ``path``: ``.NAME.tmp-PID-`` (the PID lets the next run tell a
    killed writer's leftovers from a live one's; see :func:`tfcompress.outputs.remove_stale_temp_files`).

    Example:
        >>> temp_prefix("out/stats.json") == f".stats.json.tmp-{os.getpid()}-"
        True
    """
    return f".{os.path.basename(os.fspath(path))}.tmp-{os.getpid()}-"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temp file in the same folder, fsync, rename.

    The file gets the mode of the file it replaces, or the usual ``rw-r--r--``.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.txt")
        >>> write_text_atomic(p, "hello")
        >>> open(p).read()
        'hello'
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=folder)
    try:
        # mkstemp creates 0600 files; give the result the target's mode, or the usual rw-r--r--
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (NaN and infinity are refused before anything is written).

    Example:
        >>> import tempfile, os, json
        >>> p = os.path.join(tempfile.mkdtemp(), "x.json")
        >>> write_json_atomic(p, {"a": 1})
        >>> json.load(open(p))
        {'a': 1}
    """
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False))


def save_model_atomic(model: Any, path: str | os.PathLike, include_optimizer: bool = False) -> None:
    """``model.save`` to a temporary ``.keras`` file next to ``path``, then rename it over ``path``.

    By default the optimizer's state (its slot variables, often as large as the weights again) is
    left out; the compile configuration is kept, so the loaded model is compiled with a fresh
    optimizer of the same kind (Keras says so with a "Skipping variable loading for optimizer"
    warning). ``include_optimizer=True`` keeps the state, to resume training where it stopped.
    While the file is written, ``model.optimizer`` is set aside and then put back.

    Example:
        >>> import keras, tempfile, os, zipfile
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> model.compile(optimizer="adam", loss="mse")
        >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
        >>> save_model_atomic(model, path)
        >>> keras.models.load_model(path).compiled, model.optimizer is not None
        (True, True)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}.keras")
    optimizer = getattr(model, "optimizer", None)
    try:
        if optimizer is not None and not include_optimizer:
            model.optimizer = None
        try:
            model.save(tmp)
        finally:
            if optimizer is not None and not include_optimizer:
                model.optimizer = optimizer
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
