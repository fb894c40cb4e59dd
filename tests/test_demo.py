"""The demo command: trains, compresses to the target, fine-tunes, and writes every promised file."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress as tfc
from tfcompress.cli import main
from tfcompress.demo import digits_data


@pytest.mark.slow
def test_demo_writes_model_savedmodel_stats_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--epochs", "3", "--finetune-epochs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "MAC ratio" in printed and str(out) in printed

    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["mac_ratio"] - 0.5) <= 0.02
    assert 0.0 <= summary["finetuned_accuracy"] <= 1.0
    stats = tfc.CompressionStats.from_json(out / "stats.json")
    assert stats.per_layer_stats, "the demo compressed no layer"

    html = (out / "report.html").read_text()
    for row in stats.per_layer_stats:
        assert row.name in html

    x = digits_data()[2][:4]
    model = keras.models.load_model(out / "compressed.keras")
    assert any(type(layer).__name__ == "SpatialSVDConv2D" for layer in model.layers)
    served = tf.saved_model.load(str(out / "saved_model"))
    np.testing.assert_allclose(served.serve(x).numpy(), model.predict(x, verbose=0), atol=1e-5)
    assert not list(out.glob("*.tmp*")), "temporary files left behind"
