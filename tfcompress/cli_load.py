"""Loading the user's model on the command line: the path checked, TensorFlow imported quietly, one-line errors.

Shared by ``tfcompress inspect`` and ``tfcompress compress``; TensorFlow and Keras are imported only inside the
functions, once a command's arguments are checked.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from ._startup import import_tensorflow_quietly
from .archive import check_keras_archive
from .cli_eval import CLIError

__all__ = ["check_model_path", "load_model", "start_tensorflow", "status"]


def check_model_path(path: str) -> str:
    """``path`` if it names an existing ``.keras`` file, else a :class:`CLIError` saying what is wrong with it.

    Example:
        >>> check_model_path("missing.keras")
        Traceback (most recent call last):
        tfcompress.cli_eval.CLIError: no such file: 'missing.keras'
    """
    if not os.path.exists(path):
        raise CLIError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise CLIError(f"{path!r} is a folder; give a .keras model file (a SavedModel folder cannot be compressed)")
    if not path.endswith(".keras"):
        raise CLIError(f"{path!r} is not a .keras file; save the model with model.save('model.keras') first")
    return path


def start_tensorflow(args: argparse.Namespace) -> None:
    """Import TensorFlow now that the arguments are checked: quietly, unless --verbose."""
    import_tensorflow_quietly(verbose=args.verbose)


def status(args: argparse.Namespace, text: str) -> None:
    """One line on stderr saying what a long phase is doing (not with --quiet)."""
    if not getattr(args, "quiet", False):
        print(f"tfcompress: {text}", file=sys.stderr, flush=True)


def load_model(path: str, args: argparse.Namespace | None = None) -> Any:
    """``keras.models.load_model(path, safe_mode=True)`` with a one-line error for unreadable files."""
    import time

    import keras

    from .layers import SVDDense  # noqa: F401  (registers the decomposed layers for deserialisation)
    from .saving import load_error_message

    check_keras_archive(path)  # not a zip, truncated, or inflating past the limit: one line, before loading
    if args is not None:
        status(args, f"loading {path} ...")
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            if not (args is not None and args.verbose):  # files saved without the optimizer's state say this
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = keras.models.load_model(path, safe_mode=True)
    except Exception as err:  # keras raises many kinds for a bad file; all mean "cannot load"
        raise CLIError(f"cannot load {path!r}: {load_error_message(err, path)}") from None
    if args is not None:
        status(args, f"loaded model {model.name!r} ({len(model.layers)} layers) in {time.perf_counter() - start:.1f}s")
    return model
