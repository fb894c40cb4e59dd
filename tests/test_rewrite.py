"""Tests of ``tfcompress.rewrite_model``: a new model with chosen layers replaced by decomposed twins."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.cost import decomposed_cost, layer_geometry, max_rank, model_cost, original_cost, rank_for_ratio
from tfcompress.graph import walk_layers
from tfcompress.layers import SpatialSVDConv2D, SVDDense, TuckerConv2D, WeightSVDConv2D


def randomize_batchnorm(model: keras.Model, seed: int) -> None:
    """Give every BatchNormalization non-trivial statistics, so a weight copy that is lost shows in the outputs."""
    rng = np.random.default_rng(seed)
    for ref in walk_layers(model):
        if isinstance(ref.layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = ref.layer.get_weights()
            ref.layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0, 0.1, beta.shape).astype("float32"),
                    rng.normal(0, 0.1, mean.shape).astype("float32"),
                    rng.uniform(0.5, 1.5, var.shape).astype("float32"),
                ]
            )


def snapshot(model: keras.Model) -> list[tuple[str, list[bytes]]]:
    return [(ref.path, [w.tobytes() for w in ref.layer.get_weights()]) for ref in walk_layers(model)]


def non_input_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def images(shape: tuple[int, ...], batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


def small_cnn(kind: str) -> keras.Model:
    """16x16x3 -> c1 (3x3, 8) -> c2 (3x3 stride 2, 16) -> bn -> gap -> fc (10)."""
    keras.utils.set_random_seed(1)
    layers = [
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        keras.layers.Conv2D(16, 3, strides=2, padding="same", name="c2"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(10, name="fc"),
    ]
    if kind == "sequential":
        model = keras.Sequential([keras.Input((16, 16, 3)), *layers], name="seq")
    else:
        inp = keras.Input((16, 16, 3), name="image")
        x = inp
        for layer in layers:
            x = layer(x)
        model = keras.Model(inp, x, name="func")
    randomize_batchnorm(model, seed=2)
    return model


# ---------------------------------------------------------------- Sequential and Functional


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_rewrite_small_model(kind):
    model = small_cnn(kind)
    x = images((16, 16, 3))
    before_out = np.asarray(model(x))
    before_layers = list(model.layers)
    before_weights = snapshot(model)

    new = tfc.rewrite_model(model, {"c2": 4, "fc": 2}, scheme=tfc.CompressionScheme.spatial_svd)

    assert type(new) is type(model) and new is not model and new.name == model.name
    assert non_input_names(new) == non_input_names(model)
    assert [(ref.path, ref.calls) for ref in walk_layers(new)] == [(ref.path, ref.calls) for ref in walk_layers(model)]
    assert [tuple(t.shape) for t in new.inputs] == [tuple(t.shape) for t in model.inputs]
    c2, fc = new.get_layer("c2"), new.get_layer("fc")
    assert type(c2) is SpatialSVDConv2D and c2.rank == 4
    assert (c2.strides, c2.padding, c2.filters) == ((2, 2), "same", 16)
    assert type(fc) is SVDDense and fc.rank == 2  # a Dense layer is always split with plain SVD
    for name in ("c1", "bn"):
        old_w, new_w = model.get_layer(name).get_weights(), new.get_layer(name).get_weights()
        assert new.get_layer(name) is not model.get_layer(name)
        assert len(old_w) == len(new_w) and all(np.array_equal(a, b) for a, b in zip(old_w, new_w, strict=True))

    # the argument is untouched: same layer objects, byte-identical weights, same outputs
    assert all(a is b for a, b in zip(model.layers, before_layers, strict=True))
    assert snapshot(model) == before_weights
    np.testing.assert_array_equal(np.asarray(model(x)), before_out)

    # MACs by hand: c2 8*8*9*8*16 -> 8*16*3*8*4 + 8*8*3*4*16; fc 16*10 -> (16+10)*2
    old_cost, new_cost = model_cost(model), model_cost(new)
    assert old_cost.macs - new_cost.macs == (73728 - 24576) + (160 - 52)
    assert new_cost.params == new.count_params()
    assert old_cost.params - new_cost.params == (3 * 3 * 8 * 16 - (3 * 8 * 4 + 3 * 4 * 16)) + (160 - 52)
    assert new(x).shape == (2, 10)

    # at full rank the function is unchanged
    full = tfc.rewrite_model(model, {"c2": 24, "fc": 10}, scheme="spatial_svd")
    np.testing.assert_allclose(np.asarray(full(x)), before_out, atol=1e-5, rtol=1e-5)
    assert not np.allclose(np.asarray(new(x)), before_out, atol=1e-3)  # the low rank really is an approximation


def test_plan_by_layer_object_and_empty_plan():
    model = small_cnn("functional")
    x = images((16, 16, 3))
    new = tfc.rewrite_model(model, {model.get_layer("c1"): ("weight_svd", 3)})
    assert type(new.get_layer("c1")) is WeightSVDConv2D and new.get_layer("c1").rank == 3
    same = tfc.rewrite_model(model, {})
    assert all(type(a) is type(b) for a, b in zip(model.layers, same.layers, strict=True))
    np.testing.assert_array_equal(np.asarray(same(x)), np.asarray(model(x)))
    assert not any(a is b for a, b in zip(model.layers[1:], same.layers[1:], strict=True))


def test_copied_layers_keep_their_initializers_and_weights():
    # the clone builds copied layers with zero initial values (their weights are overwritten anyway); their own
    # initializers must be back afterwards: same config, same classes, and a fresh layer from config draws them
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(
        4, 3, kernel_initializer="he_normal", bias_initializer=keras.initializers.Constant(0.3), name="c"
    )(inp)
    x = keras.layers.BatchNormalization(gamma_initializer="random_uniform", name="bn")(x)
    out = keras.layers.Dense(3, name="fc")(keras.layers.Flatten(name="flat")(x))
    model = keras.Model(inp, out)
    model.get_layer("bn").set_weights([w + 0.5 for w in model.get_layer("bn").get_weights()])
    new = tfc.rewrite_model(model, {"fc": ("svd", 2)})
    assert new.get_layer("c").get_config() == model.get_layer("c").get_config()
    assert new.get_layer("bn").get_config() == model.get_layer("bn").get_config()
    assert type(new.get_layer("c").kernel_initializer).__name__ == "HeNormal"
    assert type(new.get_layer("bn").gamma_initializer).__name__ == "RandomUniform"
    for name in ("c", "bn"):
        for a, b in zip(new.get_layer(name).get_weights(), model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    # rebuilt from the rewritten config, the layer is initialised as the user asked
    again = keras.layers.Conv2D.from_config(new.get_layer("c").get_config())
    again.build((None, 6, 6, 2))
    np.testing.assert_allclose(again.bias.numpy(), 0.3)
    assert float(np.std(again.kernel.numpy())) > 0


class _Scaled(keras.layers.Layer):
    """A custom layer with a weight whose initializer attribute follows the built-in naming: it still takes
    ``set_weights`` (only built-in Keras layers are built straight from the original values)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scale_initializer = keras.initializers.Ones()

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer=self.scale_initializer)

    def call(self, x):
        return x * self.scale


def test_copied_weights_survive_for_many_layer_kinds(monkeypatch):
    # copied layers are built from the original values where the weight/initializer names allow it (built-in
    # layers), and with zeros plus set_weights otherwise: either way every weight comes back bit for bit
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="c")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.BatchNormalization(scale=False, center=True, name="bn_noscale")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.SeparableConv2D(4, 3, padding="same", name="sep")(x)
    x = keras.layers.PReLU(name="prelu")(x)
    x = keras.layers.GroupNormalization(groups=2, name="gn")(x)
    x = _Scaled(name="custom")(x)
    x = keras.layers.Reshape((64, 4), name="seq")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.Conv1D(5, 3, name="c1d")(x)
    x = keras.layers.LSTM(3, name="lstm")(x)
    out = keras.layers.Dense(2, name="fc")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # no weight may equal what a fresh layer would start with
        layer.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in layer.get_weights()])
    calls = []
    set_weights = keras.layers.Layer.set_weights

    def counted(layer, weights):
        calls.append(layer.name)
        return set_weights(layer, weights)

    monkeypatch.setattr(keras.layers.Layer, "set_weights", counted)
    new = tfc.rewrite_model(model, {})
    assert snapshot(new) == snapshot(model)
    x = images((8, 8, 3))
    np.testing.assert_array_equal(np.asarray(new(x)), np.asarray(model(x)))
    # built-in layers with <weight>_initializer attributes take no second write; the others do
    assert {"c", "bn", "bn_noscale", "prelu", "gn", "ln", "c1d", "fc"}.isdisjoint(calls)
    assert {"custom", "lstm"} <= set(calls)
    for name in ("bn", "bn_noscale", "gn", "custom"):
        assert new.get_layer(name).get_config() == model.get_layer(name).get_config()


def test_original_value_initializer_falls_back_on_surprises():
    from tfcompress.rewrite import _OriginalValue

    value = np.arange(6, dtype="float32").reshape(2, 3)
    lent = _OriginalValue(value)
    np.testing.assert_array_equal(lent((2, 3), dtype="float32"), value)
    assert lent.used_once and lent.value is None  # the new variable has its copy; the lent one is let go
    lent((2, 3), dtype="float32")  # asked twice: the layer must take set_weights instead
    assert not lent.used_once
    other = _OriginalValue(value)
    np.testing.assert_array_equal(np.asarray(other((3, 2), dtype="float32")), np.zeros((3, 2)))
    assert not other.used_once


def test_mixed_plan_with_all_schemes():
    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 6))
    x = keras.layers.Conv2D(8, 3, padding="same", name="w")(inp)
    x = keras.layers.Conv2D(10, (3, 5), padding="same", name="s")(x)
    x = keras.layers.Conv2D(12, 3, strides=2, name="t")(x)
    x = keras.layers.Flatten(name="flat")(x)
    out = keras.layers.Dense(9, activation="tanh", name="fc")(x)
    model = keras.Model(inp, out)
    plan = {
        "w": ("weight_svd", 3),
        "s": (tfc.CompressionScheme.spatial_svd, 5),
        "t": ("tucker", (4, 6)),
        "fc": ("svd", 7),
    }
    new = tfc.rewrite_model(model, plan)
    got = {ref.path: (type(ref.layer), ref.layer.rank) for ref in walk_layers(new) if ref.path in plan}
    assert got == {
        "w": (WeightSVDConv2D, 3),
        "s": (SpatialSVDConv2D, 5),
        "t": (TuckerConv2D, (4, 6)),
        "fc": (SVDDense, 7),
    }
    assert new.get_layer("fc").activation is keras.activations.tanh
    expected_drop = sum(
        original_cost(layer_geometry(model.get_layer(n))).macs
        - decomposed_cost(layer_geometry(model.get_layer(n)), s, r).macs
        for n, (s, r) in plan.items()
    )
    assert model_cost(model).macs - model_cost(new).macs == expected_drop > 0
    # full ranks: (C, N) for Tucker, C for weight SVD, min(C*kh, N*kw) for spatial SVD
    full_plan = {"w": ("weight_svd", 6), "s": ("spatial_svd", 24), "t": ("tucker", (10, 12)), "fc": ("svd", 9)}
    full = tfc.rewrite_model(model, full_plan)
    x = images((12, 12, 6))
    np.testing.assert_allclose(np.asarray(full(x)), np.asarray(model(x)), atol=1e-5)


# ---------------------------------------------------------------- graph shapes: multi-io, shared, nested


def test_multi_input_multi_output():
    keras.utils.set_random_seed(4)
    img = keras.Input((12, 12, 3), name="img")
    meta = keras.Input((6,), name="meta")
    a = keras.layers.Conv2D(8, 3, name="conv_a")(img)
    a = keras.layers.GlobalAveragePooling2D(name="gap")(a)
    b = keras.layers.Dense(12, activation="relu", name="fc_b")(meta)
    joined = keras.layers.Concatenate(name="cat")([a, b])
    out1 = keras.layers.Dense(5, name="head1")(joined)
    out2 = keras.layers.Dense(3, name="head2")(b)
    model = keras.Model([img, meta], [out1, out2], name="two_heads")
    inputs = [images((12, 12, 3)), images((6,), seed=1)]

    full = tfc.rewrite_model(
        model, {"conv_a": ("weight_svd", 3), "fc_b": ("svd", 6), "head1": ("svd", 5), "head2": ("svd", 3)}
    )
    assert [t.name for t in full.inputs] == ["img", "meta"]
    assert full.output_names == model.output_names
    for got, want in zip(full(inputs), model(inputs), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)

    low = tfc.rewrite_model(model, {"conv_a": 2, "fc_b": 2}, scheme="weight_svd")
    assert [type(low.get_layer(n)).__name__ for n in ("conv_a", "fc_b", "head1")] == [
        "WeightSVDConv2D",
        "SVDDense",
        "Dense",
    ]
    out1, out2 = low(inputs)
    assert out1.shape == (2, 5) and out2.shape == (2, 3)
    # head2 only sees fc_b: the approximation shows there, and head1's own weights were copied
    np.testing.assert_array_equal(low.get_layer("head1").get_weights()[0], model.get_layer("head1").get_weights()[0])


def test_shared_conv_replaced_once_and_still_shared():
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 4))
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")
    mid = keras.layers.Conv2D(4, 1, name="mid")
    model = keras.Model(inp, shared(mid(shared(inp))))
    x = images((8, 8, 4))

    new = tfc.rewrite_model(model, {"shared": ("spatial_svd", 12)})  # full rank: min(4*3, 4*3)
    decomposed = [layer for layer in new.layers if layer.name == "shared"]
    assert len(decomposed) == 1 and type(decomposed[0]) is SpatialSVDConv2D
    assert model_cost(new).layers["shared"].calls == 2
    # one copy of the factors only: the shared layer's parameters are counted once
    assert new.count_params() == decomposed[0].count_params() + new.get_layer("mid").count_params()
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(model(x)), atol=1e-5)

    # both call sites run the same layer object: a new bias set on it moves the output of both calls
    low = tfc.rewrite_model(model, {"shared": ("spatial_svd", 2)})
    layer, mid_layer = low.get_layer("shared"), low.get_layer("mid")
    weights = layer.get_weights()
    weights[-1] = np.array([0.5, -1.0, 2.0, 0.25], dtype="float32")
    layer.set_weights(weights)
    np.testing.assert_allclose(np.asarray(low(x)), np.asarray(layer(mid_layer(layer(x)))), atol=1e-5)
    expected = model_cost(model).macs - 2 * (8 * 8 * 9 * 4 * 4 - (8 * 8 * 3 * 4 * 2 + 8 * 8 * 3 * 2 * 4))
    assert model_cost(low).macs == expected


@pytest.mark.parametrize("name", ["ic", "block/ic"])
@pytest.mark.parametrize("inner_kind", ["sequential", "functional"])
def test_nested_model_layer_by_plain_name_and_path(name, inner_kind):
    keras.utils.set_random_seed(6)
    if inner_kind == "sequential":
        inner = keras.Sequential(
            [keras.Input((10, 10, 3)), keras.layers.Conv2D(6, 3, name="ic"), keras.layers.ReLU(name="act")],
            name="block",
        )
    else:
        i = keras.Input((10, 10, 3))
        inner = keras.Model(i, keras.layers.ReLU(name="act")(keras.layers.Conv2D(6, 3, name="ic")(i)), name="block")
    inp = keras.Input((10, 10, 3))
    x = keras.layers.Add(name="add")([inner(inp), inner(inp)])
    out = keras.layers.Dense(4, name="fc")(keras.layers.Flatten(name="flat")(x))
    model = keras.Model(inp, out)
    inner_layer = inner.get_layer("ic")
    before = snapshot(model)

    new = tfc.rewrite_model(model, {name: ("weight_svd", 3)})  # full rank: C = 3
    new_inner = new.get_layer("block")
    assert new_inner is not inner and type(new_inner) is type(inner)
    assert type(new_inner.get_layer("ic")) is WeightSVDConv2D and new_inner.get_layer("ic").rank == 3
    assert [r.path for r in walk_layers(new)] == ["block/ic", "block/act", "add", "flat", "fc"]
    assert model_cost(new).layers["block/ic"].calls == 2
    assert inner.get_layer("ic") is inner_layer and type(inner_layer) is keras.layers.Conv2D
    assert snapshot(model) == before
    x = images((10, 10, 3))
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(model(x)), atol=1e-5)


def test_ambiguous_plain_name_lists_paths():
    a = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv")], name="a")
    b = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(4, 3, name="conv")], name="b")
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, b(a(inp)))
    with pytest.raises(ValueError, match="ambiguous") as info:
        tfc.rewrite_model(model, {"conv": 2}, scheme="weight_svd")
    assert "'a/conv'" in str(info.value) and "'b/conv'" in str(info.value)
    new = tfc.rewrite_model(model, {"b/conv": 2}, scheme="weight_svd")
    assert type(new.get_layer("a").get_layer("conv")) is keras.layers.Conv2D
    assert type(new.get_layer("b").get_layer("conv")) is WeightSVDConv2D


# ---------------------------------------------------------------- errors


def test_subclassed_model_is_rejected():
    class MyNet(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3, name="conv")

        def call(self, x):
            return self.conv(x)

    net = MyNet()
    net(images((8, 8, 3)))
    with pytest.raises(TypeError, match=r"MyNet.*Functional"):
        tfc.rewrite_model(net, {"conv": 2}, scheme="weight_svd")


def test_unknown_names_are_all_listed_with_hint():
    model = small_cnn("functional")
    with pytest.raises(ValueError) as info:
        tfc.rewrite_model(model, {"c1x": 2, "nothing_like_it": 3, "c2": 2}, scheme="weight_svd")
    message = str(info.value)
    assert "unknown layer name(s): 'c1x'" in message and "'nothing_like_it'" in message
    assert "did you mean ['c1'" in message


def test_unsupported_layers_are_named_together():
    inp = keras.Input((8, 8, 4))
    x = keras.layers.DepthwiseConv2D(3, name="dw")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(4, 3, groups=2, name="grouped")(x)
    x = keras.layers.SeparableConv2D(4, 1, name="sep")(x)
    model = keras.Model(inp, x)
    with pytest.raises(ValueError) as info:
        # (a SeparableConv2D decomposes, but not above the rank min(C*dm, N) = 4 of its pointwise kernel)
        tfc.rewrite_model(model, {"dw": 2, "bn": 2, "grouped": 2, "sep": 9}, scheme="weight_svd")
    message = str(info.value)
    for name in ("'dw'", "'bn'", "'grouped'", "'sep'"):
        assert name in message
    assert "groups=2" in message
    assert "'sep': weight_svd rank 9 is outside 1..4" in message


def test_rank_out_of_range_and_bad_ranks():
    model = small_cnn("sequential")
    for rank in (0, 25):  # spatial SVD of c2: 1..min(8*3, 16*3)
        with pytest.raises(ValueError, match=r"'c2'.*1\.\.24"):
            tfc.rewrite_model(model, {"c2": rank}, scheme="spatial_svd")
    with pytest.raises(ValueError, match=r"'fc'.*1\.\.10"):
        tfc.rewrite_model(model, {"fc": ("svd", 11)})
    with pytest.raises(ValueError, match=r"'c1'.*\(3, 8\)"):
        tfc.rewrite_model(model, {"c1": ("tucker", (4, 8))})
    with pytest.raises(ValueError, match=r"'fc'.*Tucker"):
        tfc.rewrite_model(model, {"fc": ("tucker", (2, 2))})
    with pytest.raises(TypeError, match=r"'c1'.*int"):
        tfc.rewrite_model(model, {"c1": 2.0}, scheme="weight_svd")
    with pytest.raises(TypeError, match=r"'c1'.*pair"):
        tfc.rewrite_model(model, {"c1": ("tucker", (1, 2, 3))})


def test_plan_without_scheme_and_bad_scheme():
    model = small_cnn("sequential")
    with pytest.raises(ValueError, match=r"'c1'.*scheme"):
        tfc.rewrite_model(model, {"c1": 4})
    with pytest.raises(ValueError, match="scheme"):
        tfc.rewrite_model(model, {"c1": 4}, scheme="channel_pruning")
    with pytest.raises(ValueError, match=r"'c1'.*scheme"):
        tfc.rewrite_model(model, {"c1": ("cp", 4)})
    with pytest.raises(TypeError, match="plan"):
        tfc.rewrite_model(model, [("c1", 4)], scheme="weight_svd")


# ---------------------------------------------------------------- compiled models


def test_compiled_model_gets_compiled_copy_with_fresh_optimizer():
    model = small_cnn("functional")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before = snapshot(model)
    new = tfc.rewrite_model(model, {"c2": 4}, scheme="weight_svd")
    assert new.compiled and new.optimizer is not model.optimizer
    assert type(new.optimizer) is keras.optimizers.Adam
    assert float(new.optimizer.learning_rate) == pytest.approx(1e-2)
    assert new.loss == "sparse_categorical_crossentropy"

    rng = np.random.default_rng(0)
    x, y = images((16, 16, 3), batch=8), rng.integers(0, 10, size=8)
    factors = [w.copy() for w in new.get_layer("c2").get_weights()]
    history = new.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "accuracy" in history.history
    assert any(
        not np.array_equal(a, b) for a, b in zip(factors, new.get_layer("c2").get_weights(), strict=True)
    )  # the factors train
    assert int(model.optimizer.iterations) == 0 and snapshot(model) == before

    uncompiled = tfc.rewrite_model(small_cnn("functional"), {"c2": 4}, scheme="weight_svd")
    assert not uncompiled.compiled


# ---------------------------------------------------------------- real architectures


def check_application(model: keras.Model, shape: tuple[int, int, int], plan_layers: dict[str, str]) -> None:
    """Rewrite ``{name: scheme}`` at ratio 0.5 and at full rank; check types, names, MACs and outputs."""
    randomize_batchnorm(model, seed=7)
    x = images(shape, batch=2, seed=8)
    before = snapshot(model)
    plan = {
        name: (scheme, rank_for_ratio(model.get_layer(name), 0.5, scheme, "mac"))
        for name, scheme in plan_layers.items()
    }
    new = tfc.rewrite_model(model, plan)
    assert [layer.name for layer in new.layers] == [layer.name for layer in model.layers]  # inputs too
    assert new.name == model.name
    predicted_drop = predicted_param_drop = 0
    for name, (scheme, rank) in plan.items():
        layer = new.get_layer(name)
        assert layer.scheme == ("svd" if isinstance(model.get_layer(name), keras.layers.Dense) else scheme)
        assert layer.rank == rank
        g = layer_geometry(model.get_layer(name))
        predicted_drop += original_cost(g).macs - decomposed_cost(g, scheme, rank).macs
        predicted_param_drop += original_cost(g).params - decomposed_cost(g, scheme, rank).params
        assert decomposed_cost(g, scheme, rank).macs <= 0.5 * original_cost(g).macs
    old_cost, new_cost = model_cost(model), model_cost(new)
    assert old_cost.macs - new_cost.macs == predicted_drop > 0
    assert model.count_params() - new.count_params() == predicted_param_drop
    out = np.asarray(new(x))
    assert out.shape == (2, 10) and np.all(np.isfinite(out))

    full_plan = {
        name: (scheme, max_rank(layer_geometry(model.get_layer(name)), scheme)) for name, scheme in plan_layers.items()
    }
    full = tfc.rewrite_model(model, full_plan)
    # compare the rewritten layers' own outputs inside the graph, and the model outputs
    names = list(plan_layers)
    probe_old = keras.Model(model.input, [model.get_layer(n).output for n in names] + [model.output])
    probe_new = keras.Model(full.input, [full.get_layer(n).output for n in names] + [full.output])
    for name, want, got in zip([*names, "output"], probe_old(x), probe_new(x), strict=True):
        want, got = np.asarray(want), np.asarray(got)
        scale = float(np.abs(want).max())
        assert scale > 0, name
        np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0, err_msg=name)
    assert snapshot(model) == before


@pytest.mark.slow
def test_resnet50_rewrite():
    # only small kernels go through Tucker-2 and no 4096x4096 Dense through SVD: both take minutes in numpy
    keras.utils.set_random_seed(10)
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None)
    plan = {
        "conv2_block1_2_conv": "spatial_svd",
        "conv2_block2_2_conv": "tucker",
        "conv3_block1_2_conv": "weight_svd",
        "conv4_block2_2_conv": "spatial_svd",
        "conv5_block3_2_conv": "weight_svd",
        "predictions": "svd",
    }
    check_application(model, (64, 64, 3), plan)


@pytest.mark.slow
def test_vgg16_rewrite():
    keras.utils.set_random_seed(11)
    model = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    plan = {
        "block1_conv2": "spatial_svd",
        "block2_conv1": "spatial_svd",
        "block3_conv2": "weight_svd",
        "block5_conv1": "weight_svd",
        "fc1": "svd",
        "predictions": "svd",
    }
    check_application(model, (32, 32, 3), plan)


@pytest.mark.slow
def test_mobilenetv2_rewrite():
    keras.utils.set_random_seed(12)
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None
    )
    # the only plain 3x3 Conv2D is the stem; the rest are 1x1 expansions/projections around depthwise convs
    plan = {
        "Conv1": "spatial_svd",
        "block_1_expand": "weight_svd",
        "block_3_project": "weight_svd",
        "Conv_1": "weight_svd",
        "predictions": "svd",
    }
    check_application(model, (32, 32, 3), plan)


def test_adapted_normalization_keeps_its_statistics():
    """An adapted Normalization divides by statistics it derives from its weights in finalize_state(); a copy that
    only got set_weights would normalise with the initial (0, 1) ones."""
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(32, 4)).astype("float32")
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x)
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2, name="fc")(norm(inp)))
    for new in (tfc.rewrite_model(model, {}), tfc.rewrite_model(model, {"fc": ("svd", 2)})):
        np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
