"""``model_cost`` counts every layer that does arithmetic, or says it cannot: hand counts for attention, recurrent,
einsum and custom layers, TensorFlow's own graph profiler for keras.applications, and the refusal of a MAC target
over an undercount."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.cost import UncountedMacsWarning
from tfcompress.layer_macs import einsum_macs

L = keras.layers


def _costs(model: keras.Model) -> dict[str, int]:
    return {path: row.macs for path, row in tfc.model_cost(model).layers.items()}


def _attention_block(t: int = 12, d: int = 32, heads: int = 4, key_dim: int = 8, ffn: int = 64) -> keras.Model:
    inp = keras.Input((t, d))
    a = L.MultiHeadAttention(heads, key_dim, name="mha")(inp, inp)
    x = L.LayerNormalization(name="ln")(inp + a)
    f = L.Dense(ffn, activation="relu", name="ffn1")(x)
    return keras.Model(inp, L.Dense(d, name="ffn2")(f))


def test_multi_head_attention_counts_projections_and_products():
    t, d, h, k, ffn = 12, 32, 4, 8, 64
    costs = _costs(_attention_block(t, d, h, k, ffn))
    assert costs["mha"] == 4 * t * d * h * k + h * t * t * k * 2  # q, k, v, out projections; QK^T and AV
    assert costs["ffn1"] == costs["ffn2"] == t * d * ffn
    assert costs["ln"] == 0


def test_cross_attention_with_other_lengths_and_value_dim():
    q_in, kv_in = keras.Input((5, 16)), keras.Input((9, 24))
    mha = L.MultiHeadAttention(2, 6, value_dim=10, name="mha")
    model = keras.Model([q_in, kv_in], mha(q_in, kv_in))
    want = 5 * 16 * 2 * 6 + 9 * 24 * 2 * 6 + 9 * 24 * 2 * 10 + 5 * 2 * 10 * 16 + 2 * 5 * 9 * (6 + 10)
    assert _costs(model)["mha"] == want


def test_recurrent_layers_count_every_step():
    inp = keras.Input((7, 5))
    x = L.LSTM(4, return_sequences=True, name="lstm")(inp)
    x = L.GRU(3, return_sequences=True, name="gru")(x)
    x = L.Bidirectional(L.SimpleRNN(2), name="bi")(x)
    costs = _costs(keras.Model(inp, x))
    assert costs["lstm"] == 7 * 4 * (5 * 4 + 4 * 4)
    assert costs["gru"] == 7 * 3 * (4 * 3 + 3 * 3)
    assert costs["bi"] == 2 * 7 * (3 * 2 + 2 * 2)


def test_einsum_dense_and_op_node_products():
    q, k = keras.Input((6, 16)), keras.Input((9, 16))
    scores = keras.ops.matmul(q, keras.ops.transpose(k, (0, 2, 1)))
    mixed = keras.ops.einsum("bqk,bkd->bqd", keras.ops.softmax(scores), k)
    out = L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 4), bias_axes="de", name="ed")(mixed)
    costs = tfc.model_cost(keras.Model([q, k], out))
    by_class = {row.class_name: row.macs for row in costs.layers.values()}
    assert by_class == {"Matmul": 6 * 9 * 16, "Einsum": 6 * 9 * 16, "EinsumDense": 6 * 16 * 8}
    assert costs.macs == sum(by_class.values()) and not costs.uncounted


def test_einsum_macs_formula():
    assert einsum_macs("ab,bc->ac", [(1, 7), (7, 3)]) == 21
    assert einsum_macs("...b,bc->...c", [(1, 4, 5, 7), (7, 3)]) == 4 * 5 * 7 * 3
    assert einsum_macs("bqhd,bkhd->bhqk", [(1, 6, 2, 8), (1, 9, 2, 8)]) == 6 * 9 * 2 * 8


def test_other_convolutions():
    inp1 = keras.Input((20, 4))
    c1 = L.Conv1D(6, 3, name="c1")(inp1)
    s1 = L.SeparableConv1D(5, 3, depth_multiplier=2, name="s1")(c1)
    inp3 = keras.Input((6, 6, 6, 2))
    c3 = L.Conv3D(3, 3, name="c3")(inp3)
    inp2 = keras.Input((5, 5, 4))
    t2 = L.Conv2DTranspose(3, 3, strides=2, name="t2")(inp2)
    g2 = L.Conv2D(6, 3, groups=2, name="g2")(L.Conv2D(4, 1, name="p2")(inp2))
    costs = _costs(keras.Model([inp1, inp3, inp2], [s1, c3, t2, g2]))
    assert costs["c1"] == 18 * 3 * 4 * 6
    assert costs["s1"] == 16 * (3 * 6 * 2 + 12 * 5)
    assert costs["c3"] == 4**3 * 27 * 2 * 3
    assert costs["t2"] == 25 * 9 * 4 * 3  # each input position scatters through the whole kernel
    assert costs["g2"] == 9 * 9 * 2 * 6  # grouped: each filter sees 2 of the 4 channels


def test_time_distributed_and_embedding():
    inp = keras.Input((5, 3))
    td = L.TimeDistributed(L.Dense(4), name="td")(inp)
    ids = keras.Input((7,), dtype="int32")
    emb = L.Embedding(50, 8, name="emb")(ids)
    costs = tfc.model_cost(keras.Model([inp, ids], [td, emb]))
    assert costs.layers["td"].macs == 5 * 3 * 4
    assert costs.layers["emb"].macs == 0 and costs.layers["emb"].params == 400


class _Residual(L.Layer):
    """A user's residual block: two convolutions held as attributes."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.convs = [L.Conv2D(filters, 3, padding="same"), L.Conv2D(filters, 3, padding="same")]

    def call(self, x):
        return x + self.convs[1](keras.ops.relu(self.convs[0](x)))

    def compute_output_shape(self, shape):
        return shape


class _OwnWeights(L.Layer):
    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 4))

    def call(self, x):
        return keras.ops.matmul(x, self.w)


def test_custom_layers_count_through_their_sublayers_or_say_why_not():
    inp = keras.Input((10, 10, 8))
    x = _Residual(8, name="block")(inp)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, _OwnWeights(name="own")(x))
    with pytest.warns(UncountedMacsWarning, match="'own'.*weights of its own"):
        cost = tfc.model_cost(model)
    assert cost.layers["block"].macs == 2 * 10 * 10 * 9 * 8 * 8
    assert list(cost.uncounted) == ["own"]
    assert cost.macs == cost.layers["block"].macs  # the uncounted layer is left out, and said so
    assert cost.to_dict()["uncounted"] == cost.uncounted


def test_compress_model_refuses_a_mac_target_over_an_undercount():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, name="c1")(inp)
    x = L.Conv2D(16, 3, name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, _OwnWeights(name="own")(x))
    data = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    reference = model.predict(data, verbose=0)

    def fidelity(m, _):
        return -float(np.mean((m.predict(data, verbose=0) - reference) ** 2))

    params = tfc.WeightSvdParameters("auto", tfc.WeightSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(0.6)))
    with pytest.raises(ValueError, match=r"'own'.*allow_uncounted_macs=True"):
        tfc.compress_model(model, fidelity, None, "weight_svd", "mac", params, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncountedMacsWarning)
        _, stats = tfc.compress_model(
            model, fidelity, None, "weight_svd", "mac", params, verbose=0, allow_uncounted_macs=True
        )
        assert stats.uncounted_layers.keys() == {"own"}
        assert stats.mac_compression_ratio <= 0.6 + 1e-9
        _, by_params = tfc.compress_model(model, fidelity, None, "weight_svd", "memory", params, verbose=0)
    assert by_params.memory_compression_ratio <= 0.6 + 1e-9  # parameters are always counted: no refusal


def test_attention_model_ratio_is_over_the_true_total():
    """Compressing only the FFN of an attention block must report the ratio over all MACs, attention included."""
    model = _attention_block()
    cost = tfc.model_cost(model)
    plan = {"ffn1": ("svd", 4), "ffn2": ("svd", 4)}
    small = tfc.rewrite_model(model, plan)
    ratio = tfc.model_cost(small).macs / cost.macs
    ffn_before = cost.layers["ffn1"].macs + cost.layers["ffn2"].macs
    ffn_after = 12 * (32 + 64) * 4 * 2
    assert math.isclose(ratio, (cost.macs - ffn_before + ffn_after) / cost.macs)
    assert ratio > 0.5  # attention holds more than half of this block's MACs


def _tf_profiler_macs(model: keras.Model, shape: tuple[int, ...]) -> float:
    """MACs of convolutions and matrix products in the model's TensorFlow graph, from TF's own flops registry."""
    import tensorflow as tf

    function = tf.function(lambda x: model(x, training=False))
    graph = function.get_concrete_function(tf.TensorSpec((1, *shape), tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    options["account_type_regexes"] = [
        "Conv2D",
        "Conv3D",
        "DepthwiseConv2dNative",
        "MatMul",
        "BatchMatMul.*",
        "Conv2DBackpropInput",
    ]
    info = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options)
    return info.total_float_ops / 2  # the registry counts 2 FLOPs per multiply-accumulate


_FAMILIES = {
    "MobileNetV3Small": 64,
    "ResNet50": 64,
    "VGG16": 64,
    "EfficientNetB0": 64,
    "Xception": 71,
    "InceptionV3": 75,
    "MobileNetV2": 64,
    "DenseNet121": 64,
    "EfficientNetV2B0": 64,
    "MobileNet": 64,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_FAMILIES))
def test_keras_applications_match_tensorflow_profiler(name):
    size = _FAMILIES[name]
    extra = {"include_preprocessing": False} if "MobileNetV3" in name else {}
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), **extra)
    cost = tfc.model_cost(model)
    assert not cost.uncounted
    assert cost.macs == pytest.approx(_tf_profiler_macs(model, (size, size, 3)), rel=0.02)


@pytest.mark.slow
def test_convnext_matches_tensorflow_profiler_plus_its_grouped_convolutions():
    """ConvNeXt's 7x7 depthwise convolutions are grouped Conv2D layers, which TensorFlow runs outside the graph the
    profiler sees on CPU; they are added by hand (H*W*49*C each)."""
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(64, 64, 3))
    cost = tfc.model_cost(model)
    assert not cost.uncounted  # LayerScale is per-channel
    grouped = [layer for layer in model.layers if type(layer) is L.Conv2D and layer.groups > 1]
    assert grouped
    by_hand = sum(math.prod(layer.output.shape[1:3]) * 49 * layer.filters for layer in grouped)
    assert sum(cost.layers[layer.name].macs for layer in grouped) == by_hand
    assert cost.macs - by_hand == pytest.approx(_tf_profiler_macs(model, (64, 64, 3)), rel=0.02)


def test_inspect_names_uncounted_layers():
    from tfcompress.cli_inspect import inspect_model, inspect_text

    inp = keras.Input((6,))
    model = keras.Model(inp, _OwnWeights(name="own")(L.Dense(6, name="fc")(inp)))
    info = inspect_model(model)
    assert list(info["uncounted"]) == ["own"]
    text = inspect_text(info, "m.keras")
    assert "MACs not counted" in text and "own: a custom layer (_OwnWeights)" in text and "--allow-uncounted" in text
