"""Saving and exporting models that contain decomposed layers: .keras, SavedModel and TFLite."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.layers import SpatialSVDConv2D, SVDDense, TuckerConv2D, WeightSVDConv2D

DECOMPOSED = (WeightSVDConv2D, SpatialSVDConv2D, TuckerConv2D, SVDDense)
# tf.lite.Interpreter warns that it moves to ai_edge_litert; it is still what TF 2.21 ships.
IGNORE_INTERPRETER_DEPRECATION = pytest.mark.filterwarnings("ignore::UserWarning:tensorflow.lite.python.interpreter")


def _randomize(layer: keras.layers.Layer, rng: np.random.Generator) -> None:
    weights = []
    for w in layer.get_weights():
        fan_in = int(np.prod(w.shape[:-1])) if w.ndim > 1 else 1
        weights.append((rng.normal(size=w.shape) / np.sqrt(fan_in)).astype(w.dtype))
    layer.set_weights(weights)


def _original_model() -> keras.Model:
    """Input 16x16x3 -> Conv2D -> BN -> ReLU -> Conv2D -> ReLU -> Conv2D -> GlobalAvgPool -> Dense."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(12, (3, 2), strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Conv2D(16, 3, dilation_rate=(1, 2), name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(5, name="fc")(x)
    model = keras.Model(inputs, outputs, name="original")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
            _randomize(layer, rng)
    bn = model.get_layer("bn")  # non-trivial inference statistics
    bn.set_weights(
        [
            rng.uniform(0.5, 1.5, 8).astype("float32"),
            rng.normal(size=8).astype("float32"),
            rng.normal(size=8).astype("float32"),
            rng.uniform(0.5, 1.5, 8).astype("float32"),
        ]
    )
    return model


def _decomposed_model(original: keras.Model) -> keras.Model:
    """The same graph with all four decomposed layer types, built by hand (no tfcompress.rewrite)."""
    conv1 = WeightSVDConv2D.from_layer(original.get_layer("conv1"), rank=2)
    conv2 = SpatialSVDConv2D.from_layer(original.get_layer("conv2"), rank=6)
    conv3 = TuckerConv2D.from_layer(original.get_layer("conv3"), ranks=(6, 8))
    fc = SVDDense.from_layer(original.get_layer("fc"), rank=3)
    bn = keras.layers.BatchNormalization.from_config(original.get_layer("bn").get_config())

    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.ReLU(name="relu")(bn(conv1(inputs)))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(conv3(conv2(x)))
    model = keras.Model(inputs, fc(x), name="decomposed")
    bn.set_weights(original.get_layer("bn").get_weights())
    return model


@pytest.fixture(scope="module")
def model_and_data():
    original = _original_model()
    model = _decomposed_model(original)
    x = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype("float32")
    y = np.asarray(model(x, training=False))
    # sanity: the decomposition changed the function (low ranks), but the model is still the original's shape
    assert y.shape == (4, 5)
    assert not np.allclose(y, np.asarray(original(x, training=False)), atol=1e-3)
    return model, x, y


def _assert_same_decomposed_layers(loaded: keras.Model, model: keras.Model) -> None:
    for cls in DECOMPOSED:
        (want,) = [layer for layer in model.layers if isinstance(layer, cls)]
        got = loaded.get_layer(want.name)
        assert type(got) is cls
        assert got.get_config() == want.get_config()


def test_keras_file_round_trip_in_process(model_and_data, tmp_path):
    model, x, y = model_and_data
    path = tmp_path / "decomposed.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the layers are registered
    _assert_same_decomposed_layers(loaded, model)
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), y)


@pytest.mark.slow
def test_keras_file_loads_in_a_fresh_process(model_and_data, tmp_path):
    model, x, y = model_and_data
    model.save(tmp_path / "decomposed.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    script = textwrap.dedent(
        """
        import sys
        import keras
        import numpy as np

        try:  # without tfcompress the custom layers are unknown
            keras.models.load_model("decomposed.keras")
        except Exception as error:
            print("without import:", type(error).__name__)
        else:
            sys.exit("loading worked without importing tfcompress")

        import tfcompress.layers  # registers the layers

        model = keras.models.load_model("decomposed.keras")
        x, y = np.load("x.npy"), np.load("y.npy")
        out = np.asarray(model(x, training=False))
        print("max abs diff", float(np.abs(out - y).max()))
        np.testing.assert_allclose(out, y, rtol=1e-6, atol=1e-6)
        print("OK")
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "without import:" in result.stdout and result.stdout.rstrip().endswith("OK"), result.stdout


def test_saved_model_export(model_and_data, tmp_path):
    model, x, y = model_and_data
    model.export(str(tmp_path / "saved_model"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    out = reloaded.serve(tf.constant(x))
    np.testing.assert_allclose(np.asarray(out), y, rtol=1e-6, atol=1e-6)


def _run_tflite(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


@IGNORE_INTERPRETER_DEPRECATION
def test_tflite_from_keras_model(model_and_data, tmp_path, monkeypatch):
    """TF 2.21 + Keras 3.15: TFLiteConverter.from_keras_model works (it exports a temporary SavedModel)."""
    model, x, y = model_and_data
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # keep the converter's temporary files in tmp_path
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    np.testing.assert_allclose(_run_tflite(flatbuffer, x), y, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(y).max()))


@IGNORE_INTERPRETER_DEPRECATION
def test_tflite_from_saved_model(model_and_data, tmp_path, monkeypatch):
    model, x, y = model_and_data
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model.export(str(tmp_path / "saved_model"), verbose=False)
    flatbuffer = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved_model")).convert()
    (tmp_path / "model.tflite").write_bytes(flatbuffer)
    np.testing.assert_allclose(_run_tflite(flatbuffer, x), y, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(y).max()))
