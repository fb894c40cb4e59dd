"""SeparableConv2D, Conv1D and Conv2DTranspose in whole models: costs, rewrite, greedy search, inspect, export."""

from __future__ import annotations

import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress as tfc
from tfcompress import unfoldings as uf
from tfcompress.cli import inspect_model
from tfcompress.cost import LayerGeometry, decomposed_cost, layer_geometry, max_rank, original_cost

L = keras.layers
NEW_LAYERS = {"sep": "separable_conv2d", "up": "conv2d_transpose", "c1d_a": "conv1d", "c1d_b": "conv1d"}
IGNORE_INTERPRETER_DEPRECATION = pytest.mark.filterwarnings("ignore::UserWarning:tensorflow.lite.python.interpreter")


def mixed_model(seed: int = 0) -> keras.Model:
    """Conv2D -> SeparableConv2D -> Conv2DTranspose (x2) -> a 576-long sequence -> two Conv1D -> GAP -> Dense."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.SeparableConv2D(24, 3, depth_multiplier=2, padding="same", activation="relu", name="sep")(x)
    x = L.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu", name="up")(x)  # 24 x 24 x 16
    x = L.Reshape((24 * 24, 16), name="seq")(x)
    x = L.Conv1D(32, 5, strides=4, padding="same", activation="relu", name="c1d_a")(x)  # 144 x 32
    x = L.Conv1D(32, 3, padding="causal", activation="relu", name="c1d_b")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    model = keras.Model(inp, L.Dense(10, name="fc")(x), name="mixed")
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # non-zero biases, so a wrong bias path shows
        if getattr(layer, "use_bias", False):
            layer.bias.assign(rng.normal(scale=0.1, size=layer.bias.shape).astype("float32"))
    return model


X = np.random.default_rng(1).normal(size=(4, 12, 12, 3)).astype("float32")


class Agreement:
    """Eval callback: 1 - MSE to the original model's logits on a fixed batch; records what each call saw."""

    def __init__(self, model: keras.Model, watch: tuple[str, ...] = ()) -> None:
        self.reference = np.asarray(model(X))
        self.watch = watch
        self.records: list[tuple[dict[str, np.ndarray], np.ndarray]] = []

    def __call__(self, model: keras.Model, iterations) -> float:
        out = np.asarray(model(X))
        kernels = {}
        for name in self.watch:
            layer = model.get_layer(name)
            if type(layer).__module__.startswith("keras"):  # the working copy (not the final, decomposed model)
                variable = layer.pointwise_kernel if name == "sep" else layer.kernel
                kernels[name] = keras.ops.convert_to_numpy(variable).copy()
        self.records.append((kernels, out))
        return 1.0 - float(np.mean((out - self.reference) ** 2))


def greedy(params_cls, target: float, n: int = 5):
    select = tfc.GreedySelectionParameters(target_comp_ratio=target, num_comp_ratio_candidates=n)
    return params_cls("auto", params_cls.AutoModeParams(select))


# ---------------------------------------------------------------- costs


def test_costs_of_the_new_layers_by_hand():
    model = mixed_model()
    cost = tfc.model_cost(model)
    # SeparableConv2D 12x12, C=8, dm=2 (M=16), N=24, 3x3: Ho*Wo*(9*M + M*N)
    assert cost.layers["sep"].macs == 144 * (9 * 16 + 16 * 24)
    # Conv2DTranspose: every one of the 12x12 input pixels scatters 3x3xN per input channel
    assert cost.layers["up"].macs == 144 * 9 * 24 * 16
    # Conv1D: Lo*k*C*N
    assert cost.layers["c1d_a"].macs == 144 * 5 * 16 * 32
    assert cost.layers["c1d_b"].macs == 144 * 3 * 32 * 32
    for name, kind in NEW_LAYERS.items():
        g = layer_geometry(model.get_layer(name))
        assert g.kind == kind
        assert original_cost(g).macs == cost.layers[name].macs
        assert original_cost(g).params == cost.layers[name].params == model.get_layer(name).count_params()
    # decomposed costs at rank 4, by hand
    geometry = {name: layer_geometry(model.get_layer(name)) for name in NEW_LAYERS}
    assert decomposed_cost(geometry["sep"], "weight_svd", 4).macs == 144 * (9 * 16 + (16 + 24) * 4)
    assert decomposed_cost(geometry["up"], "weight_svd", 4).macs == 144 * 24 * 4 + 144 * 9 * 4 * 16
    assert decomposed_cost(geometry["c1d_a"], "weight_svd", 4).macs == 576 * 16 * 4 + 144 * 5 * 4 * 32
    assert decomposed_cost(geometry["c1d_a"], "spatial_svd", 4).macs == 144 * 5 * 16 * 4 + 144 * 4 * 32
    assert decomposed_cost(geometry["sep"], "weight_svd", 4).params == 9 * 16 + (16 + 24) * 4 + 24
    assert max_rank(geometry["sep"], "weight_svd") == 16
    assert max_rank(geometry["up"], "weight_svd") == 24  # min(C, kh*kw*N)
    assert max_rank(geometry["c1d_a"], "weight_svd") == 16
    assert max_rank(geometry["c1d_a"], "spatial_svd") == 32  # min(C*k, N)
    # the rewritten model's cost is the formula's (the decomposed layers report their own geometry)
    plan = {"sep": ("weight_svd", 4), "up": ("weight_svd", 4), "c1d_a": ("spatial_svd", 4), "c1d_b": ("weight_svd", 4)}
    small = tfc.model_cost(tfc.rewrite_model(model, plan))
    for name, (scheme, rank) in plan.items():
        assert small.layers[name].macs == decomposed_cost(geometry[name], scheme, rank).macs
        assert small.layers[name].params == decomposed_cost(geometry[name], scheme, rank).params


def test_geometry_costs_agree_with_the_generic_count():
    """model_cost takes the geometry formulas for decomposable layers (so it agrees with rank_for_ratio); they must
    give what the generic per-layer count (kernel sizes times output positions) gives, original and decomposed."""
    from tfcompress.cost import _geometry_macs
    from tfcompress.graph import walk_calls
    from tfcompress.layer_macs import layer_macs

    model = mixed_model()
    plan = {"sep": ("weight_svd", 4), "up": ("weight_svd", 4), "c1d_a": ("spatial_svd", 4), "c1d_b": ("weight_svd", 4)}
    seen = set()
    for m in (model, tfc.rewrite_model(model, plan)):
        for call in walk_calls(m):
            if call.path in NEW_LAYERS:
                geometry = _geometry_macs(call.operation, tuple(call.args[0].shape))
                assert geometry is not None
                if m is model:  # the generic count knows only Keras's own layers
                    assert geometry == layer_macs(call.operation, call.args, call.kwargs, call.outputs)
                seen.add((m is model, call.path))
    assert len(seen) == 8


@pytest.mark.parametrize(
    "plan",
    [
        {},
        {"sep": ("weight_svd", 4), "up": ("weight_svd", 4), "c1d_a": ("spatial_svd", 4), "c1d_b": ("weight_svd", 4)},
        {"c1d_a": ("weight_svd", 5), "c1d_b": ("spatial_svd", 7), "sep": ("svd", 16)},
    ],
    ids=["original", "decomposed", "mixed"],
)
def test_model_cost_equals_tensorflow_profiler(plan):
    """An independent count: TensorFlow's flops registry over the model's graph (2 FLOPs per MAC) agrees exactly."""
    from test_cost_honest import _tf_profiler_macs

    model = tfc.rewrite_model(mixed_model(), plan)
    assert tfc.model_cost(model).macs == _tf_profiler_macs(model, (12, 12, 3))


def test_schemes_that_do_not_apply_are_refused_by_name():
    g = LayerGeometry("conv2d_transpose", 4, 4, (3, 3), name="up")
    with pytest.raises(ValueError, match=r"'up' is a Conv2DTranspose.*'weight_svd'"):
        decomposed_cost(g, "spatial_svd", 1)
    with pytest.raises(ValueError, match=r"'c' is a Conv1D.*'weight_svd' or 'spatial_svd'"):
        max_rank(LayerGeometry("conv1d", 4, 4, (3, 1), name="c"), "tucker")
    # plain SVD of a SeparableConv2D is its weight SVD (the pointwise kernel is a matrix)
    sep = LayerGeometry("separable_conv2d", 4, 6, (3, 3), depth_multiplier=2)
    assert decomposed_cost(sep, "svd", 2) == decomposed_cost(sep, "weight_svd", 2)


@pytest.mark.parametrize("name", list(NEW_LAYERS))
@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_rank_for_ratio_is_the_largest_rank_within_the_budget(name, ratio):
    model = mixed_model()
    layer = model.get_layer(name)
    g = layer_geometry(layer)
    for scheme in ("weight_svd", "spatial_svd") if g.kind == "conv1d" else ("weight_svd",):
        rank = tfc.rank_for_ratio(layer, ratio, scheme, "mac")
        budget = ratio * original_cost(g).macs
        assert rank == 1 or decomposed_cost(g, scheme, rank).macs <= budget
        assert rank == max_rank(g, scheme) or decomposed_cost(g, scheme, rank + 1).macs > budget


# ---------------------------------------------------------------- rewrite


def test_full_rank_rewrite_leaves_the_logits_unchanged_and_low_rank_changes_them():
    model = mixed_model()
    want = np.asarray(model(X))
    full = {"sep": 16, "up": 24, "c1d_a": 16, "c1d_b": 32}
    new = tfc.rewrite_model(model, full, scheme="weight_svd")
    assert [type(new.get_layer(n)).__name__ for n in NEW_LAYERS] == [
        "SVDSeparableConv2D",
        "WeightSVDConv2DTranspose",
        "WeightSVDConv1D",
        "WeightSVDConv1D",
    ]
    np.testing.assert_allclose(np.asarray(new(X)), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    spatial = tfc.rewrite_model(model, {"c1d_a": 32, "c1d_b": 32}, scheme="spatial_svd")
    assert type(spatial.get_layer("c1d_b")).__name__ == "SpatialSVDConv1D"
    np.testing.assert_allclose(np.asarray(spatial(X)), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    low = tfc.rewrite_model(model, {n: 2 for n in NEW_LAYERS}, scheme="weight_svd")
    assert not np.allclose(np.asarray(low(X)), want, atol=1e-3)
    # the argument model is untouched
    assert [type(model.get_layer(n)) for n in NEW_LAYERS] == [
        L.SeparableConv2D,
        L.Conv2DTranspose,
        L.Conv1D,
        L.Conv1D,
    ]


def test_rewrite_refuses_schemes_that_do_not_apply():
    model = mixed_model()
    with pytest.raises(ValueError, match=r"'sep'.*spatial_svd does not apply to a SeparableConv2D"):
        tfc.rewrite_model(model, {"sep": 2}, scheme="spatial_svd")
    with pytest.raises(ValueError, match=r"'up'.*spatial_svd does not apply to a Conv2DTranspose"):
        tfc.rewrite_model(model, {"up": 2}, scheme="spatial_svd")
    with pytest.raises(ValueError, match=r"'c1d_a'.*Tucker-2 applies to Conv2D layers only"):
        tfc.rewrite_model(model, {"c1d_a": ("tucker", (2, 2))})
    with pytest.raises(ValueError, match=r"'c1d_b'.*weight_svd rank 33 is outside 1\.\.32"):
        tfc.rewrite_model(model, {"c1d_b": 33}, scheme="weight_svd")
    assert type(tfc.rewrite_model(model, {"sep": ("svd", 3)}).get_layer("sep")).__name__ == "SVDSeparableConv2D"


# ---------------------------------------------------------------- greedy search


def test_greedy_weight_svd_takes_the_new_layers_and_each_candidate_is_the_decomposed_layer():
    model = mixed_model()
    callback = Agreement(model, watch=tuple(NEW_LAYERS))
    compressed, stats = tfc.compress_model(
        model, callback, None, "weight_svd", "mac", greedy(tfc.WeightSvdParameters, 0.5), verbose=0
    )
    # every new layer was a candidate (left out only when the selection kept it whole) and some were split
    for name in NEW_LAYERS:
        assert stats.skipped_layers.get(name, "kept at full size by the selection") == (
            "kept at full size by the selection"
        )
    chosen = {row.name: row for row in stats.per_layer_stats}
    assert set(NEW_LAYERS) & set(chosen)
    for name, row in chosen.items():
        assert list(callback_kernel(model, name).shape) == row.original_shape  # a SeparableConv2D: its pointwise
        assert type(compressed.get_layer(name)) is not type(model.get_layer(name))
    ratio = tfc.model_cost(compressed).macs / tfc.model_cost(model).macs
    assert ratio <= 0.5 and stats.mac_compression_ratio == pytest.approx(ratio, abs=1e-4)
    # in-place candidates: the working copy with one layer's reconstructed kernel computes what the decomposed
    # layer at that rank computes (checked on one candidate per new layer: its lowest rank)
    reference = {name: keras.ops.convert_to_numpy(callback_kernel(model, name)) for name in NEW_LAYERS}
    checked = set()
    for kernels, out in callback.records:
        changed = [n for n, k in kernels.items() if not np.array_equal(k, reference[n])]
        if len(changed) != 1 or changed[0] in checked:
            continue
        (name,) = changed
        kind = NEW_LAYERS[name]
        rank = int(np.linalg.matrix_rank(uf.unfold(kind, "weight_svd", kernels[name].astype(np.float64)), tol=1e-4))
        decomposed = tfc.rewrite_model(model, {name: ("weight_svd", rank)})
        np.testing.assert_allclose(np.asarray(decomposed(X)), out, rtol=1e-4, atol=1e-4 * np.abs(out).max())
        checked.add(name)
    assert checked == set(NEW_LAYERS)


def callback_kernel(model: keras.Model, name: str):
    layer = model.get_layer(name)
    return layer.pointwise_kernel if name == "sep" else layer.kernel


def test_greedy_spatial_svd_takes_conv1d_and_says_why_not_the_others():
    model = mixed_model()
    compressed, stats = tfc.compress_model(
        model, Agreement(model), None, "spatial_svd", "mac", greedy(tfc.SpatialSvdParameters, 0.7), verbose=0
    )
    assert "spatial_svd does not apply to the pointwise kernel of a SeparableConv2D" in stats.skipped_layers["sep"]
    assert "spatial_svd does not apply to a Conv2DTranspose" in stats.skipped_layers["up"]
    assert {"c1d_a", "c1d_b"} <= {row.name for row in stats.per_layer_stats}
    assert type(compressed.get_layer("c1d_a")).__name__ == "SpatialSVDConv1D"
    assert tfc.model_cost(compressed).macs <= 0.7 * tfc.model_cost(model).macs


def test_auto_scheme_variants_per_kind():
    from tfcompress.enums import CostMetric
    from tfcompress.pipeline.candidates import Candidate as _Candidate
    from tfcompress.pipeline.candidates import auto_variants as _auto_variants

    model = mixed_model()
    variants = {}
    for name in ("conv", *NEW_LAYERS):
        layer = model.get_layer(name)
        candidate = _Candidate(
            ref=None,
            work_layer=None,
            scheme="weight_svd",
            geometry=layer_geometry(layer),
            kernel=np.zeros(1),
            metric=CostMetric.mac,
            multiplicity=1,
        )
        variants[name] = [v.scheme for v in _auto_variants(candidate)]
    assert variants == {
        "conv": ["weight_svd", "spatial_svd", "tucker"],
        "sep": ["weight_svd"],
        "up": ["weight_svd"],
        "c1d_a": ["weight_svd", "spatial_svd"],
        "c1d_b": ["weight_svd", "spatial_svd"],
    }
    # and a whole auto run (data-free choice per layer) compresses every new layer
    params = tfc.AutoSchemeParameters(
        "manual", tfc.AutoSchemeParameters.ManualModeParams({n: 0.5 for n in NEW_LAYERS}), data_free=True
    )
    compressed, stats = tfc.compress_model(model, Agreement(model), None, "auto", "mac", params, verbose=0)
    assert np.isfinite(np.asarray(compressed(X))).all()
    assert {row.name for row in stats.per_layer_stats} == set(NEW_LAYERS)
    assert {row.scheme for row in stats.per_layer_stats if row.name in ("sep", "up")} == {"weight_svd"}
    for row in stats.per_layer_stats:
        assert row.macs_after <= 0.5 * row.macs_before


# ---------------------------------------------------------------- inspect


def test_inspect_lists_the_new_layers_with_their_max_ranks():
    info = inspect_model(mixed_model())
    rows = {row["name"]: row for row in info["layers"]}
    assert rows["sep"]["schemes"]["weight_svd"] == {
        "eligible": True,
        "manual_only": False,
        "max_rank": 16,
        "reason": None,
    }
    assert rows["up"]["schemes"]["weight_svd"]["max_rank"] == 24
    assert rows["c1d_a"]["schemes"]["spatial_svd"]["max_rank"] == 32
    assert "does not apply" in rows["sep"]["schemes"]["spatial_svd"]["reason"]
    assert rows["c1d_b"]["schemes"]["tucker"]["reason"] == "Tucker-2 applies to Conv2D layers only"


# ---------------------------------------------------------------- save, export, TFLite


@pytest.fixture(scope="module")
def low_rank_model():
    model = mixed_model()
    plan = {"sep": ("weight_svd", 5), "up": ("weight_svd", 6), "c1d_a": ("spatial_svd", 7), "c1d_b": ("weight_svd", 9)}
    new = tfc.rewrite_model(model, plan)
    return new, np.asarray(new(X))


def test_keras_file_round_trip(low_rank_model, tmp_path):
    model, y = low_rank_model
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    for name in NEW_LAYERS:
        assert type(loaded.get_layer(name)) is type(model.get_layer(name))
        assert loaded.get_layer(name).get_config() == model.get_layer(name).get_config()
    np.testing.assert_array_equal(np.asarray(loaded(X)), y)


def test_saved_model_export(low_rank_model, tmp_path):
    model, y = low_rank_model
    model.export(str(tmp_path / "saved"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))  # (kept referenced: its variables must stay alive)
    out = reloaded.serve(tf.constant(X))
    np.testing.assert_allclose(np.asarray(out), y, rtol=1e-5, atol=1e-5 * np.abs(y).max())


@IGNORE_INTERPRETER_DEPRECATION
def test_tflite_conversion(low_rank_model, tmp_path, monkeypatch):
    model, y = low_rank_model
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model.export(str(tmp_path / "saved"), verbose=False)
    flatbuffer = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved")).convert()
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], X.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], X)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]), y, rtol=1e-4, atol=1e-4 * np.abs(y).max())


# ---------------------------------------------------------------- a real architecture


@pytest.mark.slow
def test_xception_full_rank_rewrite_and_greedy_weight_svd_to_half_the_macs():
    model = keras.applications.Xception(weights=None, input_shape=(71, 71, 3), classes=10)
    x = np.random.default_rng(0).normal(size=(2, 71, 71, 3)).astype("float32")
    want = np.asarray(model(x, training=False))
    separable = [layer for layer in model.layers if isinstance(layer, L.SeparableConv2D)]
    assert len(separable) == 34
    full = tfc.rewrite_model(
        model, {layer.name: min(layer.pointwise_kernel.shape[2:]) for layer in separable}, scheme="weight_svd"
    )
    got = np.asarray(full(x, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())

    reference = want

    def score(m, iterations):
        return -float(np.mean((np.asarray(m(x, training=False)) - reference) ** 2))

    compressed, stats = tfc.compress_model(
        model, score, None, "weight_svd", "mac", greedy(tfc.WeightSvdParameters, 0.5, n=4), verbose=0
    )
    assert stats.mac_compression_ratio <= 0.5
    assert tfc.model_cost(compressed).macs <= 0.5 * tfc.model_cost(model).macs
    assert sum(isinstance(layer, tfc.SVDSeparableConv2D) for layer in compressed.layers) >= 20


# ---------------------------------------------------------------- inside a custom layer


@keras.saving.register_keras_serializable(package="tfcompress_tests_more_layers")
class ConvBlock(L.Layer):
    """A custom layer holding the three new kinds of convolution."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sep = L.SeparableConv2D(12, 3, padding="same", depth_multiplier=2, name="sep")
        self.up = L.Conv2DTranspose(6, 3, strides=2, padding="same", name="up")
        self.seq = L.Conv1D(8, 3, padding="causal", name="seq")

    def call(self, x):
        y = self.up(keras.ops.relu(self.sep(x)))
        return self.seq(keras.ops.reshape(y, (-1, 16 * 16, 6)))


def test_new_layers_inside_a_custom_layer_rewrite_save_and_load(tmp_path):
    inp = keras.Input((8, 8, 4))
    model = keras.Model(inp, ConvBlock(name="block")(inp))
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    want = np.asarray(model(x))
    full = tfc.rewrite_model(model, {"block/sep": 8, "block/up": 12, "block/seq": 6}, scheme="weight_svd")
    np.testing.assert_allclose(np.asarray(full(x)), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    low = tfc.rewrite_model(model, {"block/sep": ("svd", 3), "block/seq": ("spatial_svd", 4)})
    y = np.asarray(low(x))
    assert not np.allclose(y, want, atol=1e-3)
    low.save(tmp_path / "block.keras")
    np.testing.assert_array_equal(np.asarray(keras.models.load_model(tmp_path / "block.keras")(x)), y)
