"""How the command line imports TensorFlow: late, and without its start-up log lines.

TensorFlow writes several lines to file descriptor 2 while it is imported (absl's
"All log messages before absl::InitializeLog() ..." and oneDNN/CPU-feature notes), some of them
whatever ``TF_CPP_MIN_LOG_LEVEL`` says. The command line imports it through
:func:`import_tensorflow_quietly`, which sets the log level for its own process, captures
descriptor 2 during the import and replays every captured line that is not one of those.
Library users are not affected: nothing here runs on ``import tfcompress``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile

__all__ = ["import_tensorflow_quietly", "is_startup_noise"]

_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    re.compile(r"^[IW]\d{4} [\d:.]+\s+\d+ \S+\.(cc|h):\d+\] "),  # absl's INFO/WARNING line format
    re.compile(r"^To enable the following instructions: .*rebuild TensorFlow"),
    re.compile(r"^oneDNN custom operations are on"),
    # a TensorFlow build with CUDA support on a machine without a GPU: harmless, and said on every start
    re.compile(r"^E\d{4} [\d:.]+\s+\d+ cuda_platform\.cc:\d+\] failed call to cuInit: "),
)


def is_startup_noise(line: str) -> bool:
    """Whether ``line`` is one of TensorFlow's start-up log lines (not an error, not ours).

    Example:
        >>> is_startup_noise("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
        True
        >>> is_startup_noise("I0000 00:00:1796474180.980888    6561 port.cc:153] oneDNN custom operations are on.")
        True
        >>> is_startup_noise("tfcompress: error: no such file: 'x.keras'")
        False
        >>> is_startup_noise("E0000 00:00:1796492939.394283   17572 cuda_platform.cc:52] failed call to cuInit: "
        ...                  "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
        True
    """
    return any(pattern.match(line) for pattern in _NOISE)


def import_tensorflow_quietly(verbose: bool = False) -> None:
    """Import TensorFlow and Keras with TensorFlow's start-up lines dropped, unless ``verbose``.

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` in this process (unless already set) before the import. Lines
    written during the import that are not start-up noise are written to stderr afterwards, and
    everything is when the import fails. A no-op when TensorFlow is already imported.

    Example:
        >>> import_tensorflow_quietly()
        >>> "tensorflow" in sys.modules
        True
    """
    if verbose or "tensorflow" in sys.modules:
        importlib.import_module("keras")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (e.g. a detached process): nothing to keep quiet
        importlib.import_module("keras")
        return
    failed = True
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            tf = importlib.import_module("tensorflow")
            importlib.import_module("keras")
            # devices are set up on first use, and a CUDA build says "failed call to cuInit" then when there is no
            # GPU: look them up here, while the start-up lines are captured
            tf.config.list_physical_devices()
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines()
            kept = lines if failed else [line for line in lines if not is_startup_noise(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
