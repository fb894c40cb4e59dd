"""The benchmarks' ViT (benchmarks/vit.py) and its paths through accuracy.py and real_speed.py, on tiny inputs.

The full runs are `python benchmarks/accuracy.py --models vit` and `python benchmarks/real_speed.py --models ViT`;
here: the builder's architecture and cost, the uniform weight-SVD recipe reaching the attention projections by
path, per-model settings, one accuracy-benchmark method and the real-speed plan and layer timing on a small ViT.
"""

import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import accuracy
    import accuracy_methods
    import real_speed
    import vit

    return accuracy, accuracy_methods, real_speed, vit


def small_vit(vit, **kwargs):
    args = dict(image_size=16, channels=1, patch_size=4, hidden_dim=16, num_layers=2, num_heads=2, mlp_dim=32)
    return vit.vit(**{**args, **kwargs})


def test_vit_architecture_and_cost_by_hand(bench):
    import tfcompress as tfc

    _, _, _, vit = bench
    model = small_vit(vit)
    assert model.output_shape == (None, 10)
    assert type(model.get_layer("block2_attention")).__name__ == "MultiHeadAttention"
    assert model.get_layer("block1_mlp1").units == 32 and model.get_layer("block1_mlp2").units == 16
    cost = tfc.model_cost(model)
    assert cost.uncounted == {}  # the position embedding is an Embedding: its addition counts 0 MACs
    tokens, d, f = 16, 16, 32
    per_block = 4 * tokens * d * d + 2 * tokens * tokens * d + 2 * tokens * d * f  # projections, QK^T and AV, FFN
    assert cost.macs == tokens * 4 * 4 * d + 2 * per_block + d * 10
    assert cost.params == model.count_params()
    # a class token: one more token, read at position 0
    with_class = small_vit(vit, pool="class")
    assert with_class.get_layer("position_embedding").output.shape == (None, tokens + 1, d)
    x = np.random.default_rng(0).random((2, 16, 16, 1)).astype("float32")
    np.testing.assert_array_equal(np.asarray(tfc.rewrite_model(with_class, {})(x)), np.asarray(with_class(x)))
    with pytest.raises(ValueError, match="patch_size"):
        small_vit(vit, patch_size=5)
    with pytest.raises(ValueError, match="pool"):
        small_vit(vit, pool="max")


def test_vit_saves_and_loads(bench, tmp_path):
    import keras

    _, _, _, vit = bench
    model = small_vit(vit, pool="class")
    x = np.random.default_rng(1).random((2, 16, 16, 1)).astype("float32")
    model.save(tmp_path / "vit.keras")
    again = keras.saving.load_model(tmp_path / "vit.keras")
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(model(x)))


def test_uniform_weight_svd_reaches_attention_projections(bench):
    import tfcompress as tfc

    _, methods, _, vit = bench
    model = small_vit(vit, name="vit", classifier=methods.CLASSIFIER)
    paths = [path for path, _, _ in methods.weight_svd_layers(model)]
    assert "block1_attention/query" in paths and "block2_attention/attention_output" in paths
    assert "block1_mlp1" in paths and methods.CLASSIFIER not in paths
    assert "patch_embedding" not in methods.weight_svd_layers(model, ignore=("patch_embedding",))
    ctx = {"settings": {}, "scratch": None, "x_calib": None}
    compressed, notes = methods.weight_svd_uniform(model, None, 0.5, ctx)
    ratio = tfc.model_cost(compressed).macs / tfc.model_cost(model).macs
    assert ratio <= 0.5 and ratio == pytest.approx(notes["predicted_mac_ratio"])
    assert notes["layers"] == len(paths) and 0 < notes["per_layer_ratio"] < 0.5  # the attention products stay
    assert methods.methods_for("vit")[0] == "weight_svd_greedy" and "auto_greedy" not in methods.methods_for("vgg_cnn")


def test_vit_settings_are_a_prefix_of_the_shared_split(bench):
    accuracy, _, _, _ = bench
    full = accuracy.settings_for(False)
    settings, overrides = accuracy.model_settings("vit", full, quick=False)
    assert overrides["train_images"] == 20000 and settings["validation_images"] == 1000
    assert (
        settings["targets"] == full["targets"] and settings["finetune_learning_rate"] == full["finetune_learning_rate"]
    )
    assert accuracy.model_settings("vit", accuracy.settings_for(True), quick=True)[1] == {}
    assert accuracy.model_settings("vgg_cnn", full, quick=False) == (full, {})
    data = {k: np.arange(30000) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
    cut = accuracy.model_data(data, settings)
    assert len(cut["x_train"]) == 20000 and len(cut["x_val"]) == 1000 and len(cut["x_test"]) == 30000


def test_real_speed_vit_plan_and_layer_timing(bench):
    import tfcompress as tfc

    _, _, real_speed, vit = bench
    model = vit.vit(
        image_size=32, channels=1, patch_size=8, hidden_dim=32, num_layers=1, num_heads=2, mlp_dim=128,
        pool="class", name="ViT",
    )  # fmt: skip
    plan = real_speed.uniform_plan(model, "weight_svd", 0.5)
    assert "patch_embedding" not in plan and plan["block1_attention/query"][0] == "weight_svd"
    small = tfc.rewrite_model(model, plan)
    assert tfc.model_cost(small).macs <= 0.5 * tfc.model_cost(model).macs
    # the rewired attention is timed as itself, at its real input shape (17 tokens: 16 patches and the class token)
    alone, shape = real_speed._alone(small.get_layer("block1_attention"))
    assert shape == (17, 32)
    assert type(alone.layers[-1]).__name__ == "RewiredLayer"  # the compressed projections, not a fresh MHA
    x = np.random.default_rng(2).random((1, 17, 32)).astype("float32")
    assert tuple(alone(x).shape) == (1, 17, 32)


def test_goals_count_only_rows_that_reached_the_target(bench, monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import accuracy_report

    def row(method, target, ratio, after):
        return {
            "method": method, "target": target, "status": "ok", "mac_ratio": ratio,
            "test_accuracy_before_ft": after - 0.05, "test_accuracy_after_ft": after, "delta_after_ft": after - 0.8,
        }  # fmt: skip

    case = {
        "model": "vit",
        "baseline": {"test_accuracy": 0.8},
        "results": [row("channel_pruning", 0.5, 0.625, 0.8), row("weight_svd_greedy", 0.5, 0.5, 0.78)],
    }
    entry = accuracy_report.goals([case])["within_1_point_at_0.5_after_ft"]["vit"]
    assert entry["holds"] is False and entry["best_method"] == "weight_svd_greedy"
    assert entry["methods_not_reaching_target"] == ["channel_pruning"]
    case["results"][0]["mac_ratio"] = 0.503  # within the tolerance of a measured ratio
    assert accuracy_report.goals([case])["within_1_point_at_0.5_after_ft"]["vit"]["methods_within"] == [
        "channel_pruning"
    ]


@pytest.mark.slow
def test_real_speed_quick_vit(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "real_speed.py"),
            "--quick",
            "--models",
            "ViT",
            "--output-dir",
            str(out),
        ],
        cwd=tmp_path,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "real_speed.json").read_text())
    (case,) = data["models"]
    assert case["model"] == "ViT" and case["tflite"] is True  # SVDEinsumDense converts to TFLite
    assert [r["scheme"] for r in case["results"]] == ["weight_svd", "channel_pruning"]
    for row in case["results"]:
        assert 0.45 < row["mac_ratio"] <= 0.5
        for key in ("tf_b1", "tf_b8", "tflite_b1", "tflite_b8"):
            assert row[key]["speedup"] > 0
        layers = {r["layer"] for r in row["layer_breakdown"]["layers"]}
        assert "block1_mlp1" in layers
    assert "block1_attention" in {r["layer"] for r in case["results"][0]["layer_breakdown"]["layers"]}
    assert "ViT (`vit.py`" in (out / "real_speed.md").read_text()


@pytest.mark.slow  # about 3 s alone, 7 s on the shared cores
def test_prune_then_weight_svd_reaches_the_target(bench, tmp_path):
    """The combined method: FFN units pruned first (to PRUNE_FIRST_RATIO), then greedy data-aware weight SVD of the
    pruned model to the rest of the target; the two steps' ratios multiply to the model's, the input model is kept."""
    import tfcompress as tfc

    accuracy, methods, _, vit = bench
    model = small_vit(vit, num_layers=1, name="vit", classifier=methods.CLASSIFIER)
    weights = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(3).random((32, 16, 16, 1)).astype("float32")
    reference = np.asarray(model(x))

    def score(m, iterations):
        return -float(np.mean((np.asarray(m(x)) - reference) ** 2))

    settings = {**accuracy.settings_for(True), "num_comp_ratio_candidates": 3, "num_reconstruction_samples": 100}
    ctx = {"settings": settings, "scratch": str(tmp_path), "x_calib": x[:16]}
    compressed, notes = methods.prune_then_weight_svd(model, score, 0.5, ctx)
    ratio = tfc.model_cost(compressed).macs / tfc.model_cost(model).macs
    assert ratio <= 0.5 + 1e-9 and ratio > 0.4
    assert notes["prune_target"] == methods.PRUNE_FIRST_RATIO and 0.5 < notes["prune_mac_ratio"] < 1
    assert compressed.get_layer("block1_mlp1").units < 32  # hidden units pruned
    kinds = {type(layer).__name__ for layer in compressed.layers}
    assert kinds & {"SVDDense", "RewiredLayer"}  # then weight SVD of the pruned model
    assert notes["num_eval_calls"] > 0 and "data_aware_fit_seconds" in notes
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights, strict=True))
    assert "prune_then_weight_svd" in methods.methods_for("vit")
    assert "prune_then_weight_svd" not in methods.methods_for("vgg_cnn")
