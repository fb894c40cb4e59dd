"""Pruning units (dependency groups) and apply_pruning: residual groups, concat parts, gather units, real shrinking."""

import math

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.layers import ChannelGather
from tfcompress.pruning.winnow import ChannelSlot, PruneUnit, apply_pruning, kept_channels, prune_units

L = keras.layers


def _copy(model):
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


def _kept(units, keep=0.5, first=True):
    out = {}
    for unit in units:
        k = max(1, round(keep * unit.channels))
        out[unit.name] = np.arange(k) if first else np.arange(unit.channels - k, unit.channels)
    return out


def _zero_masked(model, units, kept):
    """The original model with the dropped channels' consumer input weights zeroed (same function as the pruned one)."""
    twin = _copy(model)
    by_name = {u.name: u for u in units}
    for name, keep in kept.items():
        unit = by_name[name]
        drop = np.setdiff1d(np.arange(unit.channels), keep)
        for slot in unit.consumers:
            layer = twin.get_layer(slot.layer)
            kernel, *rest = layer.get_weights()
            kernel[..., slot.index[drop], :] = 0.0
            layer.set_weights([kernel, *rest])
    return twin


def _randomise_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, size=w.shape).astype(np.float32) for w in layer.get_weights()])


def _assert_same(a, b, x, rtol=1e-4, atol=1e-5):
    ya, yb = a(x, training=False), b(x, training=False)  # eager calls: faster than predict for one batch
    for got, want in zip(keras.tree.flatten(ya), keras.tree.flatten(yb), strict=True):
        got, want = np.asarray(got), np.asarray(want)
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


def _expected_macs(model, units, kept):
    """MACs after pruning from the original per-layer MACs, scaled by the kept input/output channel fractions."""
    removed_in, removed_out = {}, {}
    by_name = {u.name: u for u in units}
    for name, keep in kept.items():
        unit = by_name[name]
        drop = np.setdiff1d(np.arange(unit.channels), keep)
        for slot in unit.consumers:
            removed_in.setdefault(slot.layer, set()).update(slot.index[drop].tolist())
        for slot in unit.producers:
            removed_out.setdefault(slot.layer, set()).update(slot.index[drop].tolist())
    macs = 0
    for name, row in tfc.model_cost(model).layers.items():
        layer = model.get_layer(name)
        if isinstance(layer, L.Conv2D | L.Dense):
            cin, cout = layer.kernel.shape[-2], layer.kernel.shape[-1]
            cin_new = cin - len(removed_in.get(name, ()))
            cout_new = cout - len(removed_out.get(name, ()))
            assert row.macs % (cin * cout) == 0
            macs += row.macs // (cin * cout) * cin_new * cout_new
        elif isinstance(layer, L.DepthwiseConv2D):
            unit_drops = set()
            for unit in units:
                for slot in unit.channelwise:
                    if slot.layer == name and unit.name in kept:
                        drop = np.setdiff1d(np.arange(unit.channels), kept[unit.name])
                        unit_drops.update(slot.index[drop].tolist())
            c = layer.kernel.shape[-2]
            macs += row.macs // c * (c - len(unit_drops))
        else:
            macs += row.macs
    return macs


# ---------------------------------------------------------------- chains


def _chain_model():
    return keras.Sequential(
        [
            keras.Input((16, 16, 1), name="img"),
            L.Conv2D(10, 3, padding="same", name="conv1"),
            L.Conv2D(20, 3, padding="same", name="conv2"),
            L.Conv2D(30, 3, padding="same", name="conv3"),
            L.Conv2D(40, 3, padding="same", name="conv4"),
        ]
    )


def test_four_conv_chain_halved_equals_zero_masked_original():
    model = _chain_model()
    units, reasons = prune_units(model)
    assert [(u.name, u.channels) for u in units] == [("conv2", 10), ("conv3", 20), ("conv4", 30)]
    assert [[s.layer for s in u.producers] for u in units] == [["conv1"], ["conv2"], ["conv3"]]
    assert "model input" in reasons["conv1"] and list(reasons) == ["conv1"]
    kept = {
        u.name: tfc.pruning.magnitude_channels(model.get_layer(u.name).get_weights()[0], u.channels // 2) for u in units
    }
    new = apply_pruning(model, kept, units=units)
    assert [tuple(layer.kernel.shape) for layer in new.layers] == [
        (3, 3, 1, 5),
        (3, 3, 5, 10),
        (3, 3, 10, 15),
        (3, 3, 15, 40),
    ]
    assert isinstance(new, keras.Sequential) and new.name == model.name
    assert [layer.name for layer in new.layers] == [layer.name for layer in model.layers]
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype(np.float32)
    _assert_same(new, _zero_masked(model, units, kept), x)
    assert tfc.model_cost(new).macs == _expected_macs(model, units, kept) == 16 * 16 * 9 * (5 + 50 + 150 + 600)
    assert model.get_layer("conv2").kernel.shape == (3, 3, 10, 20)  # the argument is untouched


# ---------------------------------------------------------------- residual groups, concat parts


def _branchy_model():
    inp = keras.Input((12, 12, 3), name="img")
    stem = L.Conv2D(8, 3, padding="same", name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(stem)
    x = L.ReLU(name="stem_relu")(x)
    r = L.Conv2D(8, 1, activation="relu", name="res")(x)
    s = L.Add(name="add")([x, r])
    p = L.Conv2D(6, 3, padding="same", name="p")(s)
    q = L.Conv2D(4, 1, name="q")(s)
    q = L.DepthwiseConv2D(3, padding="same", name="dw")(q)
    cat = L.Concatenate(name="cat")([p, q])
    cat = L.BatchNormalization(name="cat_bn")(cat)
    cat = L.Activation("swish", name="cat_act")(cat)
    y = L.Conv2D(5, 3, name="mix")(cat)
    y = L.MaxPooling2D(name="pool")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    out = L.Dense(3, name="fc")(y)
    model = keras.Model(inp, out)
    _randomise_bn(model)
    return model


def test_concatenate_and_add_units_equal_zero_masked_original(tmp_path):
    model = _branchy_model()
    units, reasons = prune_units(model)
    by_name = {u.name: u for u in units}
    assert list(by_name) == ["res", "mix[0:6]", "mix[6:10]", "fc"]
    residual = by_name["res"]
    # res reads the group and writes into it through the Add: it is a consumer and a producer of the same unit
    assert [s.layer for s in residual.producers] == ["stem", "res"]
    assert {s.layer for s in residual.consumers} == {"res", "p", "q"}
    assert [s.layer for s in residual.channelwise] == ["stem_bn"]
    left, right = by_name["mix[0:6]"], by_name["mix[6:10]"]
    assert [s.layer for s in left.producers] == ["p"] and [s.layer for s in right.producers] == ["q"]
    np.testing.assert_array_equal(right.consumers[0].index, np.arange(6, 10))
    assert [(s.layer, s.index.tolist()) for s in right.channelwise] == [("dw", [0, 1, 2, 3]), ("cat_bn", [6, 7, 8, 9])]
    assert reasons == {"stem": "its input channels come straight from the model input 'img'"}
    kept = {"res": [1, 4, 6], "mix[0:6]": [0, 5], "mix[6:10]": [2], "fc": [0, 2, 4]}
    plan = kept_channels(model, kept, units=units)
    np.testing.assert_array_equal(plan["mix"].inputs, [0, 5, 8])
    np.testing.assert_array_equal(plan["res"].inputs, [1, 4, 6])
    np.testing.assert_array_equal(plan["res"].outputs, [1, 4, 6])
    np.testing.assert_array_equal(plan["cat_bn"].channels, [0, 5, 8])
    assert plan["mix"].outputs.tolist() == [0, 2, 4] and next(iter(plan)) == "stem"
    new = apply_pruning(model, kept, units=units)
    assert new.get_layer("stem").kernel.shape[-1] == 3 and new.get_layer("res").kernel.shape[-2:] == (3, 3)
    assert new.get_layer("mix").kernel.shape[-2] == 3 and new.get_layer("dw").kernel.shape[-2] == 1
    assert new.get_layer("cat_bn").get_weights()[0].shape == (3,)
    np.testing.assert_array_equal(
        new.get_layer("cat_bn").get_weights()[2], model.get_layer("cat_bn").get_weights()[2][[0, 5, 8]]
    )
    x = np.random.default_rng(1).normal(size=(3, 12, 12, 3)).astype(np.float32)
    _assert_same(new, _zero_masked(model, units, kept), x)
    assert tfc.model_cost(new).macs == _expected_macs(model, units, kept) < tfc.model_cost(model).macs
    path = tmp_path / "branchy.keras"
    new.save(path)
    _assert_same(keras.models.load_model(path), new, x, rtol=1e-6, atol=1e-7)


def test_producer_in_residual_group_with_two_producers():
    inp = keras.Input((6, 6, 2), name="img")
    a = L.Conv2D(4, 1, name="a")(inp)
    b = L.Conv2D(4, 1, name="b")(L.ReLU(name="r")(a))
    c = L.Conv2D(4, 1, name="c")(L.ReLU(name="r2")(b))
    s = L.Add(name="add")([a, c])
    out = L.Dense(2, name="fc")(L.GlobalMaxPooling2D(name="gmp")(s))
    model = keras.Model(inp, out)
    units, _ = prune_units(model)
    group = next(u for u in units if len(u.producers) == 2)
    assert [s.layer for s in group.producers] == ["a", "c"] and [s.layer for s in group.consumers] == ["b", "fc"]
    kept = {u.name: [0, 3] for u in units}
    new = apply_pruning(model, kept, units=units)
    assert new.get_layer("c").kernel.shape[-1] == 2 and new.get_layer("fc").kernel.shape == (2, 2)
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 2)).astype(np.float32)
    _assert_same(new, _zero_masked(model, units, kept), x)


# ---------------------------------------------------------------- pinned groups and gather units


def test_pinned_reasons_model_input_output_flatten():
    inp = keras.Input((8, 8, 3), name="img")
    a = L.Conv2D(4, 3, padding="same", name="a")(inp)
    b = L.Conv2D(5, 3, padding="same", name="b")(a)
    f = L.Flatten(name="flatten")(b)
    d = L.Dense(6, name="d")(f)
    e = L.Dense(2, name="e")(d)
    model = keras.Model(inp, [e, a])
    units, reasons = prune_units(model)
    assert [u.name for u in units] == ["e"]
    assert "model input 'img'" in reasons["a"]
    assert "model output ('a')" in reasons["b"]
    assert "'flatten' (Flatten)" in reasons["d"]
    gunits, greasons = prune_units(model, allow_custom_downsample_ops=True)
    assert greasons == {}
    gather = {u.name: u for u in gunits if u.gather}
    assert {name: u.channels for name, u in gather.items()} == {"a": 3, "b": 4, "d": 320}
    assert all(len(u.consumers) == 1 and not u.producers for u in gather.values())


def test_gather_units_insert_channel_gather_and_save(tmp_path):
    inp = keras.Input((10, 10, 3), name="img")
    x = L.Conv2D(6, 3, padding="same", name="c1")(inp)
    x = L.Conv2D(4, 3, name="c2")(x)
    x = L.Flatten(name="flat")(x)
    out = L.Dense(2, name="fc")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer="adam", loss="mse")
    units, _ = prune_units(model, allow_custom_downsample_ops=True)
    assert [(u.name, u.channels, u.gather) for u in units] == [("c1", 3, True), ("c2", 6, False), ("fc", 256, True)]
    kept = {"c1": [0, 2], "c2": [1, 2, 3], "fc": np.arange(0, 256, 2)}
    new = apply_pruning(model, kept, units=units)
    assert new.get_layer("c1_gather").indices == [0, 2] and new.get_layer("fc_gather").indices == list(range(0, 256, 2))
    assert new.get_layer("c1").kernel.shape[-2] == 2 and new.get_layer("fc").kernel.shape == (128, 2)
    assert new.layers[0].name == "img" and [layer.name for layer in new.layers][1:3] == ["c1_gather", "c1"]
    assert new.compiled
    x = np.random.default_rng(3).normal(size=(2, 10, 10, 3)).astype(np.float32)
    _assert_same(new, _zero_masked(model, units, kept), x)
    cost = tfc.model_cost(new)
    assert cost.layers["c1_gather"].macs == 0 and cost.layers["c1_gather"].params == 0
    assert cost.macs == _expected_macs(model, units, kept) < tfc.model_cost(model).macs
    path = tmp_path / "gathered.keras"
    new.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("c1_gather"), ChannelGather)
    _assert_same(loaded, new, x, rtol=1e-6, atol=1e-7)


def test_gather_in_sequential_model():
    model = keras.Sequential(
        [keras.Input((6, 6, 4), name="img"), L.Conv2D(3, 1, name="c"), L.Flatten(name="flat"), L.Dense(2, name="fc")]
    )
    units, _ = prune_units(model, allow_custom_downsample_ops=True)
    assert [(u.name, u.gather) for u in units] == [("c", True), ("fc", True)]
    kept = {"c": [3, 1], "fc": [0, 5, 7]}
    new = apply_pruning(model, kept)  # units computed (gather allowed) when not given
    assert isinstance(new, keras.Sequential)
    assert [layer.name for layer in new.layers] == ["c_gather", "c", "flat", "fc_gather", "fc"]
    assert new.get_layer("c_gather").indices == [1, 3]
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 4)).astype(np.float32)
    _assert_same(new, _zero_masked(model, units, {"c": [1, 3], "fc": [0, 5, 7]}), x)


def test_shared_nested_self_concat_and_merged_concat_are_pinned():
    inp = keras.Input((6, 6, 2), name="img")
    a = L.Conv2D(4, 1, name="a")(inp)
    shared = L.ReLU(name="shared")
    b = L.Conv2D(4, 1, name="b")(shared(a))
    c = L.Conv2D(3, 1, name="c")(shared(b))
    inner = keras.Sequential([keras.Input((6, 6, 3)), L.ReLU(name="inner_relu")], name="inner")
    d = L.Conv2D(2, 1, name="d")(inner(c))
    twice = L.Concatenate(name="twice")([d, d])
    e = L.Conv2D(2, 1, name="e")(twice)
    g = L.Conv2D(1, 1, name="g")(e)
    h = L.Conv2D(1, 1, name="h")(e)
    mixed = L.Add(name="mixed")([L.Concatenate(name="gh")([g, h]), e])
    out = L.Conv2D(1, 1, name="out")(mixed)
    model = keras.Model(inp, out)
    units, reasons = prune_units(model)
    assert "shared layer" in reasons["b"] and "shared layer" in reasons["c"]
    assert "nested model" in reasons["d"]
    assert "twice" in reasons["e"]
    # a concat merged with a plain tensor: e's outputs are cut where the concat's parts meet (one unit per part)
    assert [(u.name, [(s.layer, s.index.tolist()) for s in u.producers]) for u in units] == [
        ("g[0:1]", [("e", [0]), ("g", [0])]),
        ("g[1:2]", [("e", [1]), ("h", [0])]),
    ]


def test_non_elementwise_producer_and_channels_first_are_pinned():
    inp = keras.Input((5, 5, 3), name="img")
    a = L.Conv2D(4, 1, activation="softmax", name="a")(inp)
    b = L.Conv2D(4, 1, name="b")(a)
    c = L.LayerNormalization(name="ln")(b)
    d = L.Conv2D(2, 1, name="d")(c)
    model = keras.Model(inp, d)
    units, reasons = prune_units(model)
    assert units == []
    assert "producer 'a'" in reasons["b"] and "element-wise" in reasons["b"]
    assert "LayerNormalization" in reasons["d"]


# ---------------------------------------------------------------- replacement weights and mistakes


def test_replacement_weights_are_used():
    model = _chain_model()
    units, _ = prune_units(model)
    kept = {"conv2": [0, 1, 2], "conv3": [0, 1]}
    rng = np.random.default_rng(5)
    kernel = rng.normal(size=(3, 3, 3, 2)).astype(np.float32)
    new = apply_pruning(model, kept, units=units, weights={"conv2": [kernel]})
    got_kernel, got_bias = new.get_layer("conv2").get_weights()
    np.testing.assert_array_equal(got_kernel, kernel)
    np.testing.assert_array_equal(got_bias, model.get_layer("conv2").get_weights()[1][:2])
    bias = rng.normal(size=(40,)).astype(np.float32)
    new = apply_pruning(model, kept, units=units, weights={"conv4": [rng.normal(size=(3, 3, 30, 40)), bias]})
    np.testing.assert_array_equal(new.get_layer("conv4").get_weights()[1], bias)


def test_user_mistakes_raise_with_names():
    model = _chain_model()
    units, _ = prune_units(model)
    with pytest.raises(ValueError, match=r"conv9.*prune_units"):
        apply_pruning(model, {"conv9": [0]}, units=units)
    with pytest.raises(ValueError, match=r"conv2.*0\.\.9"):
        apply_pruning(model, {"conv2": [0, 10]}, units=units)
    with pytest.raises(ValueError, match=r"conv2.*0\.\.9"):
        apply_pruning(model, {"conv2": [-1, 3]}, units=units)
    with pytest.raises(ValueError, match=r"conv2.*at least one"):
        apply_pruning(model, {"conv2": []}, units=units)
    with pytest.raises(ValueError, match=r"conv2.*distinct"):
        apply_pruning(model, {"conv2": [1, 1]}, units=units)
    with pytest.raises(ValueError, match=r"conv2.*\(3, 3, 2, 20\)"):
        apply_pruning(model, {"conv2": [0, 1]}, units=units, weights={"conv2": [np.zeros((3, 3, 10, 20))]})
    with pytest.raises(ValueError, match=r"conv1.*not a consumer"):
        apply_pruning(model, {"conv2": [0, 1]}, units=units, weights={"conv1": [np.zeros((3, 3, 1, 2))]})
    with pytest.raises(TypeError, match="kept"):
        apply_pruning(model, [("conv2", [0])], units=units)
    with pytest.raises(ValueError, match="prune_units"):
        apply_pruning(model, {"x": [0]}, units=[PruneUnit("x", 2, (ChannelSlot("nope", np.arange(2)),))])


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_channel_gather_layer_validation_config_and_tflite():
    for bad in ([], [1, 1], [-1], [0.5], "ab", [True, False]):
        with pytest.raises(ValueError, match="ChannelGather"):
            ChannelGather(bad)
    layer = ChannelGather(np.array([2, 0]), name="g")
    assert layer.get_config()["indices"] == [2, 0] and ChannelGather.from_config(layer.get_config()).indices == [2, 0]
    with pytest.raises(ValueError, match=r"'g'.*0\.\.1"):
        layer(np.zeros((1, 2), np.float32))
    import tensorflow as tf

    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, L.Conv2D(2, 1)(ChannelGather([2, 0])(inp)))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    blob = converter.convert()
    interpreter = tf.lite.Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    x = np.random.default_rng(6).normal(size=(1, 4, 4, 3)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(y, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- real architectures


@pytest.mark.slow
def test_resnet50_residual_groups_pruned_to_07(tmp_path):
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    units, reasons = prune_units(model)
    assert list(reasons) == ["conv1_conv"]
    assert len(units) == 1 + 16 * 2 + 4
    stage = next(u for u in units if any(s.layer == "conv2_block1_0_conv" for s in u.producers))
    assert {s.layer for s in stage.producers} == {
        "conv2_block1_0_conv",
        "conv2_block1_3_conv",
        "conv2_block2_3_conv",
        "conv2_block3_3_conv",
    }
    assert {s.layer for s in stage.consumers} == {
        "conv2_block2_1_conv",
        "conv2_block3_1_conv",
        "conv3_block1_0_conv",
        "conv3_block1_1_conv",
    }
    assert stage.name == stage.consumers[0].layer == "conv2_block2_1_conv"
    assert "conv2_block1_0_bn" in {s.layer for s in stage.channelwise} and stage.channels == 256
    last = next(u for u in units if any(s.layer == "conv5_block3_3_conv" for s in u.producers))
    assert [s.layer for s in last.consumers] == [
        "conv5_block2_1_conv",
        "conv5_block3_1_conv",
        "predictions",
    ] and last.channels == 2048
    kept = {}
    for unit in units:
        kernel = model.get_layer(unit.consumers[0].layer).get_weights()[0]
        scores = np.abs(np.take(kernel, unit.consumers[0].index, axis=-2)).sum(axis=(*range(kernel.ndim - 2), -1))
        kept[unit.name] = np.sort(np.argsort(-scores)[: round(0.7 * unit.channels)])
    new = apply_pruning(model, kept, units=units)
    assert new.get_layer("conv2_block3_3_conv").kernel.shape[-1] == round(0.7 * 256)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    _assert_same(new, _zero_masked(model, units, kept), x, rtol=1e-3, atol=1e-5)
    before, after = tfc.model_cost(model).macs, tfc.model_cost(new).macs
    assert after == _expected_macs(model, units, kept)
    assert 0.45 * before < after < 0.55 * before  # almost every conv keeps ~0.7 of its inputs and of its outputs
    path = tmp_path / "resnet_pruned.keras"
    new.save(path)
    _assert_same(keras.models.load_model(path), new, x, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_mobilenet_v2_all_units_pruned():
    model = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), alpha=0.35, classes=10)
    units, reasons = prune_units(model)
    assert list(reasons) == ["Conv1"]
    expand = next(u for u in units if any(s.layer == "block_1_expand" for s in u.producers))
    assert [s.layer for s in expand.channelwise] == ["block_1_expand_BN", "block_1_depthwise", "block_1_depthwise_BN"]
    assert [s.layer for s in expand.consumers] == ["block_1_project"]
    kept = {u.name: np.arange(max(1, round(0.7 * u.channels))) for u in units}
    new = apply_pruning(model, kept, units=units)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    _assert_same(new, _zero_masked(model, units, kept), x, rtol=1e-3, atol=1e-5)
    assert tfc.model_cost(new).macs == _expected_macs(model, units, kept) < 0.6 * tfc.model_cost(model).macs
    assert math.isclose(new.count_params() / model.count_params(), 0.5, abs_tol=0.1)
