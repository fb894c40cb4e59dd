"""tfcompress on every Keras backend it can run on here: a model compressed and saved under one backend loads under
another with the same outputs, and TensorFlow-only features say so under the others.

Each backend runs in its own process (Keras picks its backend once, at import). The JAX cases are skipped when JAX
is not installed (``pip install -e ".[jax]"``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")

_COMPRESS = textwrap.dedent(
    """
    import sys, numpy as np, keras, tfcompress as tfc
    assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, activation="relu", name="c1")(inp)
    x = keras.ops.relu(x + 1.0)
    x = keras.layers.Conv2D(16, 3, name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="fc")(x))
    data = np.random.default_rng(1).normal(size=(8, 12, 12, 3)).astype("float32")
    reference = model.predict(data, verbose=0)
    def fidelity(m, _):
        return -float(np.mean((m.predict(data, verbose=0) - reference) ** 2))
    params = tfc.WeightSvdParameters("auto", tfc.WeightSvdParameters.AutoModeParams(
        tfc.GreedySelectionParameters(target_comp_ratio=0.6, num_comp_ratio_candidates=4)))
    small, stats = tfc.compress_model(model, fidelity, None, "weight_svd", "mac", params, verbose=0)
    assert stats.mac_compression_ratio <= 0.6 + 1e-9, stats.mac_compression_ratio
    small.save(sys.argv[2])
    np.save(sys.argv[3], data)
    np.save(sys.argv[4], small.predict(data, verbose=0))
    """
)

_LOAD = textwrap.dedent(
    """
    import sys, numpy as np, keras, tfcompress as tfc
    assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
    model = keras.models.load_model(sys.argv[2])
    np.save(sys.argv[4], model.predict(np.load(sys.argv[3]), verbose=0))
    try:
        tfc.latency.LatencyMeter()
    except ValueError as err:
        print("latency:", err)
    """
)


def _run(code: str, backend: str, *args: str) -> str:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-c", code, backend, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{backend}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@needs_jax
@pytest.mark.parametrize(("writer", "reader"), [("tensorflow", "jax"), ("jax", "tensorflow")])
def test_compressed_under_one_backend_loads_under_another(tmp_path, writer, reader):
    model, data = str(tmp_path / "small.keras"), str(tmp_path / "x.npy")
    written, read = str(tmp_path / "written.npy"), str(tmp_path / "read.npy")
    _run(_COMPRESS, writer, model, data, written)
    out = _run(_LOAD, reader, model, data, read)
    np.testing.assert_allclose(np.load(read), np.load(written), rtol=1e-4, atol=1e-5)
    if reader == "jax":
        assert "latency:" in out and "'jax' backend" in out  # TensorFlow-only: a clear error naming the backend
    else:
        assert "latency:" not in out
