"""The eval side of a run: the user's callback wrapped and checked (:class:`Evaluator`), and the guard that catches a
callback changing the working copy it is given (:class:`WorkGuard`, :class:`ModelChangedError`)."""

from __future__ import annotations

import hashlib
import inspect
import math
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

__all__ = ["Evaluator", "ModelChangedError", "WorkGuard"]


class Evaluator:
    """Calls the user's callback, checks its result, and times it.

    Picklable (by cloudpickle, for executors that evaluate in other processes): it holds the callback, the
    iterations and its counters only. ``calls``/``seconds`` count the evaluations made in this process;
    ``remote_calls``/``remote_seconds`` those an executor made elsewhere (see :func:`add_remote`).

    Example:
        >>> evaluator = Evaluator(lambda model, iterations: 0.5, None)
        >>> evaluator(None, "the baseline model"), evaluator.calls
        (0.5, 1)
    """

    def __init__(self, callback: Callable[..., Any], iterations: Any) -> None:
        if not callable(callback):
            raise TypeError(f"eval_callback must be callable as eval_callback(model, iterations), got {callback!r}.")
        self.callback = callback
        self.iterations = iterations
        self.extra_args = self._extra_args(callback)
        self.seconds = 0.0
        self.calls = 0
        self.remote_calls = 0
        self.remote_seconds = 0.0

    @staticmethod
    def _extra_args(callback: Callable[..., Any]) -> tuple:
        """AIMET's callbacks take (model, iterations, use_cuda): pass use_cuda=False to those."""
        try:
            signature = inspect.signature(callback)
        except (TypeError, ValueError):
            return ()
        params = list(signature.parameters.values())
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            return ()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        required = [p for p in positional if p.default is p.empty]
        if len(required) >= 3:
            return (False,)
        if len(positional) < 2:
            raise TypeError(
                "eval_callback must accept (model, iterations) (or AIMET's (model, iterations, use_cuda)); "
                f"its signature is {signature}."
            )
        return ()

    def add_remote(self, calls: int, seconds: float) -> None:
        """Count evaluations an executor made outside this process (for the stats)."""
        self.remote_calls += max(int(calls), 0)
        self.remote_seconds += max(float(seconds), 0.0)

    @property
    def total_calls(self) -> int:
        return self.calls + self.remote_calls

    @property
    def total_seconds(self) -> float:
        return self.seconds + self.remote_seconds

    def __call__(self, model: keras.Model, what: str) -> float:
        start = time.perf_counter()
        try:
            value = self.callback(model, self.iterations, *self.extra_args)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
        try:
            if isinstance(value, str | bytes | bool | np.bool_):
                raise TypeError(value)
            score = float(np.asarray(value).reshape(()))
        except (TypeError, ValueError):
            raise TypeError(
                f"eval_callback must return a number (higher is better); for {what} it returned {value!r}."
            ) from None
        if not math.isfinite(score):
            raise ValueError(f"eval_callback returned {score} for {what}; scores must be finite numbers.")
        return score


class ModelChangedError(ValueError):
    """The eval callback changed the working copy it was given (trained it, edited a weight, ...).

    Example:
        >>> issubclass(ModelChangedError, ValueError)
        True
    """


class WorkGuard:
    """A digest of every weight of the working copy, taken before the first evaluation, so that a callback that
    trains or edits the model it is given is caught instead of silently corrupting every later score.

    Each candidate only swaps one kernel in and restores it bit for bit, so between evaluations the weights must be
    exactly the ones taken here. Checking costs one read and hash of the weights (about 0.2 s for ResNet50's 100
    MB); it is done after the baseline (most such callbacks change the model on every call) and after the search.
    """

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.digests = self._digests()

    def _digests(self) -> list[tuple[str, bytes]]:
        out = []
        for variable in self.model.weights:
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
            digest = hashlib.blake2b(value.reshape(-1).view(np.uint8), digest_size=16)  # no copy of the bytes
            digest.update(repr((value.shape, value.dtype.str)).encode())
            out.append((str(getattr(variable, "path", variable.name)), digest.digest()))
        return out

    def check(self, when: str) -> None:
        now = self._digests()
        if [name for name, _ in now] != [name for name, _ in self.digests]:
            changed = ["(weights were added or removed)"]
        else:
            changed = [name for (name, old), (_, new) in zip(self.digests, now, strict=True) if old != new]
        if changed:
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise ModelChangedError(
                f"eval_callback changed the model it was given ({when}: {len(changed)} weight(s) differ, {shown}); "
                "every later score would be wrong. The callback must only evaluate the model: no fit/train step, "
                "no assign or set_weights, no training=True call that updates BatchNormalization statistics (copy "
                "the model first if it must change)."
            )
