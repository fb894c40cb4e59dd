"""The eval side of ``tfcompress compress``: the user's ``--eval`` function, the ``--data`` arrays, the data-free score.

Also the command line's error types: :class:`CLIError` (a user mistake, one line on stderr) and the marker for
errors raised inside the user's own eval function (whose traceback is printed).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import zipfile
from collections.abc import Callable
from typing import Any

__all__ = ["CLIError", "DATA_FREE_WARNING", "load_eval_function", "output_agreement_eval"]

DATA_FREE_WARNING = (
    "tfcompress: warning: no --eval function given, so layers are ranked by how closely the compressed model's "
    "outputs match the original's on {source} (score = minus the relative mean squared difference). This is a "
    "weaker choice than a real eval function (e.g. accuracy on held-out data): pass --eval module:function."
)


class CLIError(Exception):
    """A user mistake on the command line: reported as one line on stderr, exit code 1.

    Example:
        >>> str(CLIError("no such file: 'x.keras'"))
        "no such file: 'x.keras'"
    """


class _EvalFunctionError(Exception):
    """The user's --eval function raised: its traceback is the useful part, so it is printed."""


def load_eval_function(spec: str) -> Callable[..., Any]:
    """Resolve ``module:function`` (or ``path/to/file.py:function``) to the function.

    The current folder is searched first, like ``python -m`` does. A missing
    module or function raises :class:`CLIError`.

    Example:
        >>> load_eval_function("math:hypot")(3, 4)
        5.0
        >>> load_eval_function("math:nope")
        Traceback (most recent call last):
        ...
        tfcompress.cli_eval.CLIError: --eval math:nope: module 'math' has no attribute 'nope' (it has: ...)
    """
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise CLIError(f"--eval must be MODULE:FUNCTION (e.g. my_eval:accuracy), got {spec!r}")
    if module_name.endswith(".py"):
        if not os.path.isfile(module_name):
            raise CLIError(f"--eval {spec}: no such file: {module_name!r}")
        name = "tfcompress_eval_" + os.path.splitext(os.path.basename(module_name))[0]
        module_spec = importlib.util.spec_from_file_location(name, module_name)
        if module_spec is None or module_spec.loader is None:
            raise CLIError(f"--eval {spec}: cannot import {module_name!r}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        loader = module_spec.loader
        _import_user_module(spec, module_name, lambda: loader.exec_module(module))
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = _import_user_module(spec, module_name, lambda: importlib.import_module(module_name))
    function = getattr(module, attribute, None)
    if function is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        shown = ", ".join(public[:12]) + (", ..." if len(public) > 12 else "")
        raise CLIError(f"--eval {spec}: module {module_name!r} has no attribute {attribute!r} (it has: {shown})")
    if not callable(function):
        raise CLIError(f"--eval {spec}: {attribute!r} is a {type(function).__name__}, not a function")
    return function


def _import_user_module(spec: str, module_name: str, do_import: Callable[[], Any]) -> Any:
    """Import errors are one-line user mistakes; anything else raised by the module's own code keeps its traceback."""
    try:
        return do_import()
    except ImportError as err:
        raise CLIError(f"--eval {spec}: cannot import module {module_name!r}: {err}") from None
    except Exception as err:
        raise _EvalFunctionError(
            f"importing the --eval module {module_name!r} raised {type(err).__name__}: {err}"
        ) from err


def _wrap_user_function(function: Callable[..., Any], spec: str) -> Callable[..., Any]:
    """Mark exceptions raised inside the user's function so main() shows their traceback."""

    @functools.wraps(function)  # compress_model reads the user's signature through __wrapped__
    def wrapped(*args: Any) -> Any:
        try:
            return function(*args)
        except Exception as err:
            raise _EvalFunctionError(f"the --eval function {spec} raised {type(err).__name__}: {err}") from err

    return wrapped


def _warn_on_first_call(function: Callable[..., float], message: str) -> Callable[..., float]:
    """Print ``message`` on stderr when compress_model first calls ``function``: after it has checked its arguments."""
    warned = False

    @functools.wraps(function)
    def wrapped(model: Any, iterations: Any = None) -> float:
        nonlocal warned
        if not warned:
            warned = True
            print(message, file=sys.stderr, flush=True)
        return function(model, iterations)

    return wrapped


def _load_npz(path: str) -> dict[str, Any]:
    """``--data``: an ``.npz`` archive as ``{array name: array}``, or one ``.npy`` array as ``{"x": array}`` (model
    inputs); never unpickled."""
    import numpy as np

    if not os.path.isfile(path):
        raise CLIError(f"--data: no such file: {path!r}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            is_npy = handle.read(6) == b"\x93NUMPY"
        if not is_npy:
            raise CLIError(
                f"--data {path!r} is not an .npz archive or an .npy array; write one with "
                "np.savez('data.npz', x=..., y=...) or np.save('x.npy', x)"
            )
        try:
            return {"x": np.load(path, allow_pickle=False)}
        except (OSError, ValueError) as err:
            message = " ".join(str(err).split())
            raise CLIError(f"--data {path!r} is not a readable .npy array (np.save, no pickles): {message}") from None
    from .archive import check_keras_archive

    check_keras_archive(path, what=".npz data file")  # sizes checked before anything is inflated
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as err:
        message = " ".join(str(err).split())
        raise CLIError(f"--data {path!r} is not a readable .npz file (np.savez, no pickles): {message}") from None


def output_agreement_eval(model: Any, inputs: Any = None, seed: int = 0, batch_size: int = 32) -> Callable[..., float]:
    """A data-free eval callback: minus the relative MSE between a model's outputs and ``model``'s.

    The reference outputs are computed once, on ``inputs`` (an array or a list of arrays,
    one per model input) or on a standard-normal batch of ``batch_size`` samples drawn with
    ``seed`` in the model's input shape. A perfect copy scores 0; worse copies score lower.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> score = output_agreement_eval(model)
        >>> score(model, None)
        0.0
    """
    import numpy as np

    if inputs is None:
        rng = np.random.default_rng(seed)
        batches = []
        for tensor in model.inputs:
            shape = tuple(tensor.shape)[1:]
            if any(d is None for d in shape):
                raise CLIError(
                    f"the model's input shape {tuple(tensor.shape)} has unknown dimensions, so a random batch "
                    "cannot be made; pass --data FILE.npz with an array 'x', or --eval"
                )
            batches.append(rng.standard_normal((batch_size, *shape)).astype(tensor.dtype or "float32"))
        inputs = batches[0] if len(batches) == 1 else batches

    def _outputs(m: Any) -> list[Any]:
        out = m.predict(inputs, batch_size=256, verbose=0)
        items = out if isinstance(out, list | tuple) else list(out.values()) if isinstance(out, dict) else [out]
        return [np.asarray(o, dtype=np.float64) for o in items]

    reference = _outputs(model)
    scales = [max(float(np.mean(r**2)), 1e-12) for r in reference]

    def output_agreement(m: Any, iterations: Any = None) -> float:
        outputs = _outputs(m)
        error = sum(float(np.mean((o - r) ** 2)) / s for o, r, s in zip(outputs, reference, scales, strict=True))
        return 0.0 - error  # 0.0 for a perfect copy (not -0.0)

    return output_agreement
