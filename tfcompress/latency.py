"""Measured inference latency of single layers, their decomposed candidates, and whole models.

Under ``cost_metric="latency"`` :func:`tfcompress.compress_model` hands the greedy
selector tables of *measured* seconds instead of MAC counts:

* ``original`` of a layer: the measured time of the original ``Conv2D``/``Dense`` at
  its real input shape (``layer.input.shape`` with the batch size of the options);
* ``cost`` of a candidate ratio: the measured time of the decomposed layer at the rank
  that :func:`tfcompress.rank_for_ratio` gives for that ratio under the *MAC* metric
  (the same rank ladder as ``cost_metric="mac"``); candidates that are not faster than
  the original are dropped;
* ``total``: the sum over the compressible layers of their measured time plus a
  *remainder* = whole-model time (measured once) minus that sum, clamped at 0. So the
  total is ``max(whole-model time, sum of layer times)`` and the target ratio is a
  ratio of latency.

Each measurement runs the layer (or model) on a fixed random input, ``warmup`` times
untimed, then ``repeats`` times timed, and keeps the median. ``runtime="tf"`` times a
compiled ``tf.function``; ``runtime="tflite"`` converts a one-layer Keras model with
``tf.lite.TFLiteConverter`` and times ``interpreter.invoke()``.

Measurements are cached in a JSON file (``LatencyOptions.cache_path``) keyed by the
layer's config without its name, the input shape, the runtime, the batch size and the
TensorFlow version, so a second run with the same cache times nothing at all. Whole
models are keyed by the configs of their layers (without names) in order.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ._checks import is_int
from .graph import walk_layers
from .stats import write_json_atomic

__all__ = ["LatencyOptions", "LatencyMeter", "measure_seconds", "layer_input_shape", "machine_info", "RUNTIMES"]

RUNTIMES = ("tf", "tflite")
_CACHE_FORMAT = "tfcompress-latency-cache"
_CACHE_VERSION = 1


@dataclass(frozen=True)
class LatencyOptions:
    """How latencies are measured for ``cost_metric="latency"``.

    Args:
        runtime: ``"tf"`` (compiled ``tf.function``) or ``"tflite"`` (TFLite interpreter).
        batch_size: batch dimension of the timed inputs.
        repeats: timed runs per measurement (the median is kept).
        warmup: untimed runs before timing.
        cache_path: JSON file to read measurements from and write them to (``None``: no cache).

    Example:
        >>> LatencyOptions(batch_size=8).runtime
        'tf'
        >>> LatencyOptions(runtime="onnx")
        Traceback (most recent call last):
        ...
        ValueError: LatencyOptions.runtime must be one of ('tf', 'tflite'), got 'onnx'.
    """

    runtime: str = "tf"
    batch_size: int = 1
    repeats: int = 20
    warmup: int = 3
    cache_path: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"LatencyOptions.runtime must be one of {RUNTIMES}, got {self.runtime!r}.")
        for name, low in (("batch_size", 1), ("repeats", 1), ("warmup", 0)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise ValueError(f"LatencyOptions.{name} must be an int >= {low}, got {value!r}.")
            object.__setattr__(self, name, int(value))  # (a frozen dataclass)
        if self.cache_path is not None and not isinstance(self.cache_path, str | os.PathLike):
            raise TypeError(f"LatencyOptions.cache_path must be a path or None, got {type(self.cache_path).__name__}.")


def measure_seconds(run: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median wall time in seconds of ``run()`` over ``repeats`` calls, after ``warmup`` untimed calls.

    Every measurement of this module goes through this function.

    Example:
        >>> measure_seconds(lambda: sum(range(10)), warmup=1, repeats=3) >= 0.0
        True
    """
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def _tf_version() -> str:
    import tensorflow as tf

    return str(tf.__version__)


def _strip_names(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: _strip_names(v) for k, v in sorted(config.items()) if k != "name"}
    if isinstance(config, list | tuple):
        return [_strip_names(v) for v in config]
    return config


def _layer_config(layer: Any) -> dict[str, Any]:
    return {"class_name": type(layer).__name__, "config": _strip_names(layer.get_config())}


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def layer_input_shape(layer: Any) -> tuple[int, ...]:
    """The per-sample input shape of a layer that was called in a model (without the batch dimension).

    Example:
        >>> import keras
        >>> inp = keras.Input((6, 6, 2))
        >>> conv = keras.layers.Conv2D(4, 3)
        >>> _ = keras.Model(inp, conv(inp))
        >>> layer_input_shape(conv)
        (6, 6, 2)
    """
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):
        raise ValueError(
            f"layer '{layer.name}' has no single known input, so its latency cannot be measured at its real "
            "input shape; use it in a built Functional/Sequential model."
        ) from None
    inner = shape[1:]
    if any(d is None for d in inner):
        raise ValueError(
            f"layer '{layer.name}': input shape {shape} is not fully known; give the model a fixed input size "
            "to measure latency."
        )
    return tuple(int(d) for d in inner)


def _fresh_copy(layer: Any, input_shape: tuple[int, ...]) -> Any:
    """A new layer from ``layer``'s config with its weights, so timing never touches the user's graph."""
    copy = type(layer).from_config(layer.get_config())
    copy.build(input_shape)
    if layer.built and layer.get_weights():
        copy.set_weights(layer.get_weights())
    return copy


class LatencyMeter:
    """Measures (or reads from the cache) the latency of layers, candidates and whole models.

    ``timings`` counts the measurements actually performed (not cache hits).

    Example:
        >>> import keras
        >>> inp = keras.Input((8, 8, 4))
        >>> conv = keras.layers.Conv2D(8, 3, name="c")
        >>> model = keras.Model(inp, conv(inp))
        >>> meter = LatencyMeter(LatencyOptions(repeats=2, warmup=1))
        >>> meter.layer(conv) > 0 and meter.candidate(conv, "spatial_svd", 2) > 0
        True
        >>> meter.timings
        2
    """

    def __init__(self, options: LatencyOptions | None = None) -> None:
        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise ValueError(
                f"cost_metric='latency' times layers with TensorFlow (runtime 'tf' or 'tflite'), but Keras runs on "
                f"the {backend!r} backend here; set KERAS_BACKEND=tensorflow, or use cost_metric='mac' or 'memory'."
            )
        self.options = options or LatencyOptions()
        self.timings = 0
        self.seconds = 0.0
        self._path = None if self.options.cache_path is None else os.fspath(self.options.cache_path)
        self._entries: dict[str, float] = self._load() if self._path else {}
        self._tf = _tf_version()

    # ---------------------------------------------------------------- cache

    def _load(self) -> dict[str, float]:
        path = self._path
        assert path is not None
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ValueError(f"latency cache_path: the folder {folder!r} does not exist; create it first.")
        if not os.path.exists(path):
            return {}
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"latency cache {path!r} is not valid JSON ({err}); delete it or pass another cache_path."
            ) from None
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT or not isinstance(entries, dict):
            raise ValueError(
                f"latency cache {path!r} is not a tfcompress latency cache; delete it or pass another cache_path."
            )
        out = {}
        for key, value in entries.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"latency cache {path!r}: entry {key!r} has an invalid time {value!r}.")
            out[str(key)] = float(value)
        return out

    def _save(self) -> None:
        if self._path is not None:
            write_json_atomic(
                self._path, {"format": _CACHE_FORMAT, "version": _CACHE_VERSION, "entries": dict(self._entries)}
            )

    def _context(self, input_shape: Sequence[int]) -> dict[str, Any]:
        return {
            "input_shape": [self.options.batch_size, *[int(d) for d in input_shape]],
            "runtime": self.options.runtime,
            "batch_size": self.options.batch_size,
            "tf": self._tf,
        }

    def layer_key(self, layer: Any, input_shape: Sequence[int] | None = None) -> str:
        """Cache key of the original ``layer`` at its input shape."""
        shape = tuple(input_shape) if input_shape is not None else layer_input_shape(layer)
        return "layer:" + _digest({"layer": _layer_config(layer), **self._context(shape)})

    def candidate_key(self, layer: Any, scheme: str, rank: Any, input_shape: Sequence[int] | None = None) -> str:
        """Cache key of ``layer`` decomposed with ``scheme`` at ``rank``."""
        shape = tuple(input_shape) if input_shape is not None else layer_input_shape(layer)
        rank = [int(r) for r in rank] if isinstance(rank, list | tuple) else int(rank)
        payload = {"layer": _layer_config(layer), "scheme": str(scheme), "rank": rank, **self._context(shape)}
        return "candidate:" + _digest(payload)

    def model_key(self, model: keras.Model) -> str:
        """Cache key of a whole model: its layers' configs (without names) in order, and its input shapes."""
        layers = [_layer_config(ref.layer) for ref in walk_layers(model)]
        shapes = [[int(d) for d in tuple(t.shape)[1:]] for t in model.inputs]
        return "model:" + _digest({"layers": layers, **self._context([len(shapes)]), "inputs": shapes})

    def _cached(self, key: str, measure: Callable[[], float]) -> float:
        if key in self._entries:
            return self._entries[key]
        start = time.perf_counter()
        value = float(measure())
        self.seconds += time.perf_counter() - start
        self.timings += 1
        self._entries[key] = value
        self._save()
        return value

    # ---------------------------------------------------------------- what is measured

    def layer(self, layer: Any, input_shape: Sequence[int] | None = None) -> float:
        """Seconds per inference of the original ``layer`` at its real input shape."""
        shape = tuple(input_shape) if input_shape is not None else layer_input_shape(layer)
        full = (self.options.batch_size, *shape)
        return self._cached(self.layer_key(layer, shape), lambda: self._time_layer(_fresh_copy(layer, full), full))

    def candidate(self, layer: Any, scheme: str, rank: Any, input_shape: Sequence[int] | None = None) -> float:
        """Seconds per inference of ``layer`` decomposed with ``scheme`` at ``rank`` (built by ``decomposed_layer``)."""
        from .rewrite import decomposed_layer

        shape = tuple(input_shape) if input_shape is not None else layer_input_shape(layer)
        full = (self.options.batch_size, *shape)

        def measure() -> float:
            return self._time_layer(decomposed_layer(layer, scheme, rank), full)

        return self._cached(self.candidate_key(layer, scheme, rank, shape), measure)

    def model(self, model: keras.Model) -> float:
        """Seconds per inference of the whole ``model`` (single input) at the options' batch size."""
        if len(model.inputs) != 1:
            raise ValueError(f"latency of model '{model.name}': only single-input models can be timed.")
        shape = tuple(int(d) for d in tuple(model.inputs[0].shape)[1:])
        full = (self.options.batch_size, *shape)
        return self._cached(self.model_key(model), lambda: self._time_callable_model(model, full))

    # ---------------------------------------------------------------- runtimes

    def _input(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.random.default_rng(0).standard_normal(shape).astype("float32")

    def _time_layer(self, layer: Any, shape: tuple[int, ...]) -> float:
        if self.options.runtime == "tflite":
            inp = keras.Input(batch_shape=shape)
            return self._time_tflite(keras.Model(inp, layer(inp)), shape)
        return self._time_tf(layer, shape)

    def _time_callable_model(self, model: keras.Model, shape: tuple[int, ...]) -> float:
        if self.options.runtime == "tflite":
            return self._time_tflite(model, shape)
        return self._time_tf(model, shape)

    def _time_tf(self, fn: Any, shape: tuple[int, ...]) -> float:
        import tensorflow as tf

        x = tf.constant(self._input(shape))
        compiled = tf.function(lambda t: fn(t, training=False) if isinstance(fn, keras.Model) else fn(t))

        def run() -> None:
            out = compiled(x)
            _ = out.numpy() if hasattr(out, "numpy") else out

        run()  # trace once outside the timed runs
        return measure_seconds(run, self.options.warmup, self.options.repeats)

    def _time_tflite(self, model: keras.Model, shape: tuple[int, ...]) -> float:
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        flatbuffer = converter.convert()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=os.cpu_count())
        details = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(details["index"], list(shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(details["index"], self._input(shape))
        return measure_seconds(interpreter.invoke, self.options.warmup, self.options.repeats)


def machine_info() -> dict[str, Any]:
    """CPU, cores and library versions, for benchmark records.

    Example:
        >>> sorted(machine_info())[:3]
        ['cores', 'cpu', 'keras']
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": _tf_version(),
    }
