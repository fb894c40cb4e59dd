"""The .keras files tfcompress writes (no optimizer state by default) and the error for a file naming unknown classes."""

from __future__ import annotations

import io
import json
import pathlib
import sys
import zipfile

import h5py
import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.atomic import save_model_atomic
from tfcompress.cli import main
from tfcompress.saving import load_error_message, registered_names


def _optimizer_variables(path: pathlib.Path) -> int:
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights:
        found: list[str] = []
        weights.visit(lambda name: found.append(name) if name.startswith("optimizer/vars/") else None)
        return len(found)


@pytest.fixture(scope="module")
def trained() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, name="d1"), keras.layers.Dense(4, name="d2")])
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    model.fit(np.ones((8, 16)), np.zeros((8, 4)), epochs=1, verbose=0)
    return model


def test_saved_without_optimizer_state_by_default(trained: keras.Model, tmp_path: pathlib.Path) -> None:
    save_model_atomic(trained, tmp_path / "lean.keras")
    save_model_atomic(trained, tmp_path / "full.keras", include_optimizer=True)
    assert _optimizer_variables(tmp_path / "lean.keras") == 0
    assert _optimizer_variables(tmp_path / "full.keras") > 0
    assert (tmp_path / "lean.keras").stat().st_size < (tmp_path / "full.keras").stat().st_size
    assert trained.optimizer is not None and trained.optimizer.iterations.numpy() == 1  # the model is unchanged
    loaded = keras.models.load_model(tmp_path / "lean.keras")
    assert loaded.compiled and loaded.loss == "mse"  # the compile configuration is kept
    x = np.linspace(0, 1, 32, dtype="float32").reshape(2, 16)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), trained.predict(x, verbose=0), rtol=1e-6)


def test_a_compressed_model_saved_by_the_cli_has_no_optimizer_state(trained: keras.Model, tmp_path) -> None:
    trained.save(tmp_path / "model.keras")
    argv = ["compress", str(tmp_path / "model.keras"), "--manual", "d1=0.5", "--no-report", "-q"]
    assert main([*argv, "-o", str(tmp_path / "out")]) == 0
    assert _optimizer_variables(tmp_path / "out" / "compressed.keras") == 0
    assert "tfcompress>SVDDense" in registered_names(str(tmp_path / "out" / "compressed.keras"))


def _with_unknown_class(source: pathlib.Path, target: pathlib.Path) -> None:
    """A copy of a compressed model whose SVDDense is renamed to a class no tfcompress version defines."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(json.loads(data)).replace("SVDDense", "FutureDense").encode()
            new.writestr(item, data)


def test_loading_unknown_tfcompress_classes_says_what_to_do(
    trained: keras.Model, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    compressed = tfc.rewrite_model(trained, {"d1": ("svd", 4)})
    save_model_atomic(compressed, tmp_path / "c.keras")
    _with_unknown_class(tmp_path / "c.keras", tmp_path / "future.keras")
    assert main(["inspect", str(tmp_path / "future.keras")]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("tfcompress: error: cannot load")
    assert "tfcompress layers (FutureDense)" in error and "does not define" in error
    assert len(error) < 400  # not Keras's kilobytes of layer config
    with pytest.raises(TypeError) as raised:
        keras.models.load_model(tmp_path / "future.keras")
    monkeypatch.delitem(sys.modules, "tfcompress.layers")  # as if tfcompress had not been imported
    message = load_error_message(raised.value, str(tmp_path / "future.keras"))
    assert "import tfcompress first" in message and "Full object config" not in message
