"""Winnowing: pruned input channels of Conv2D/Dense layers, producers and BatchNorm upstream shrunk."""

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.pruning import ChannelChain, magnitude_channels, prunable_layers, prune_input_channels

L = keras.layers


def _chain_model():
    return keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            L.Conv2D(10, 3, padding="same", name="conv1"),
            L.Conv2D(20, 3, padding="same", name="conv2"),
            L.Conv2D(30, 3, padding="same", name="conv3"),
            L.Conv2D(40, 3, padding="same", name="conv4"),
        ]
    )


def _kernel_shapes(model):
    return {layer.name: tuple(layer.kernel.shape) for layer in model.layers if hasattr(layer, "kernel")}


def test_four_conv_chain_halved():
    model = _chain_model()
    kept = {
        name: magnitude_channels(model.get_layer(name).get_weights()[0], n)
        for name, n in [("conv2", 5), ("conv3", 10), ("conv4", 15)]
    }
    result = prune_input_channels(model, kept)
    assert result.skipped == {}
    assert _kernel_shapes(result.model) == {
        "conv1": (3, 3, 1, 5),
        "conv2": (3, 3, 5, 10),
        "conv3": (3, 3, 10, 15),
        "conv4": (3, 3, 15, 40),
    }
    assert [layer.bias.shape[0] for layer in result.model.layers] == [5, 10, 15, 40]
    # weights are slices of the originals
    w2 = model.get_layer("conv2").get_weights()[0]
    np.testing.assert_array_equal(
        result.model.get_layer("conv2").get_weights()[0], w2[:, :, kept["conv2"]][..., kept["conv3"]]
    )
    # the original is untouched and MACs drop as the channel counts say
    assert _kernel_shapes(model)["conv2"] == (3, 3, 10, 20)
    before, after = tfc.model_cost(model), tfc.model_cost(result.model)
    hw = 16 * 16 * 9
    assert before.macs == hw * (1 * 10 + 10 * 20 + 20 * 30 + 30 * 40)
    assert after.macs == hw * (1 * 5 + 5 * 10 + 10 * 15 + 15 * 40)
    assert result.model(np.zeros((2, 16, 16, 1))).shape == (2, 16, 16, 40)
    assert "conv1" in prunable_layers(model) and isinstance(prunable_layers(model)["conv1"], str)


def _zero_dropped(model, name, kept):
    kernel, *rest = model.get_layer(name).get_weights()
    mask = np.zeros(kernel.shape[-2], bool)
    mask[kept] = True
    kernel[..., ~mask, :] = 0.0
    model.get_layer(name).set_weights([kernel, *rest])


def test_bn_relu_pool_chain_exact_when_dropped_channels_unused():
    inp = keras.Input((12, 12, 3), name="img")
    x = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Dropout(0.3, name="drop")(x)
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="c2")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = L.Activation("swish", name="act")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(4, name="fc")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    for bn in ("bn1", "bn2"):  # non-trivial statistics, so slicing mistakes would show
        layer = model.get_layer(bn)
        layer.set_weights([rng.uniform(0.5, 2, size=w.shape) for w in layer.get_weights()])
    kept = {"c2": [0, 2, 3, 7], "fc": [1, 4, 5]}
    for name, indices in kept.items():
        _zero_dropped(model, name, indices)
    result = prune_input_channels(model, kept)
    assert result.skipped == {}
    assert result.chains["c2"] == ChannelChain("c2", "c1", ("bn1", "r1", "pool", "drop"))
    new = result.model
    assert [layer.name for layer in new.layers] == [layer.name for layer in model.layers]
    assert new.get_layer("c1").kernel.shape[-1] == 4 and new.get_layer("c2").kernel.shape[-2:] == (4, 3)
    assert [w.shape for w in new.get_layer("bn1").get_weights()] == [(4,)] * 4
    np.testing.assert_array_equal(
        new.get_layer("bn2").get_weights()[2], model.get_layer("bn2").get_weights()[2][[1, 4, 5]]
    )
    assert new.get_layer("fc").kernel.shape == (3, 4)
    x = rng.normal(size=(3, 12, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    assert tfc.model_cost(new).macs < tfc.model_cost(model).macs


def test_residual_add_groups_and_concatenate_parts():
    inp = keras.Input((10, 10, 4), name="img")
    a = L.Conv2D(8, 3, padding="same", name="a")(inp)
    b = L.Conv2D(8, 1, name="b")(a)
    s = L.Add(name="add")([a, b])
    c = L.Conv2D(6, 3, padding="same", name="c")(s)
    d = L.Conv2D(5, 1, name="d")(c)
    e = L.Conv2D(3, 1, name="e")(c)
    cat = L.Concatenate(name="cat")([d, e])
    f = L.Conv2D(7, 3, name="f")(cat)
    g = L.Conv2D(2, 1, name="g")(f)
    model = keras.Model(inp, [g, L.Flatten(name="flat")(f)])
    plan = {"b": [0, 1, 2], "c": [0, 1], "d": [0, 1, 2], "f": [0, 1, 2, 5], "g": [0, 1, 2], "a": [0, 1]}
    result = prune_input_channels(model, plan)
    assert "['c']" in result.skipped["b"]  # a and b are summed by the Add: one group read by b and c
    assert "['b']" in result.skipped["c"]
    assert "['e']" in result.skipped["d"]  # c feeds d and e
    assert "Flatten" in result.skipped["g"]  # f also feeds the Flatten of the second output
    assert "model input" in result.skipped["a"]
    assert list(result.pruned) == ["f"]  # the two parts of the Concatenate are private to f
    new = result.model
    assert new.get_layer("d").kernel.shape[-1] == 3 and new.get_layer("e").kernel.shape[-1] == 1
    assert new.get_layer("f").kernel.shape[-2] == 4
    _zero_dropped(model, "f", plan["f"])
    x = np.random.default_rng(0).normal(size=(2, 10, 10, 4)).astype(np.float32)
    for got, want in zip(new.predict(x, verbose=0), model.predict(x, verbose=0), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fan_out_versus_model_output_reasons():
    inp = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 1, name="a")(inp)
    b = L.Conv2D(3, 1, name="b")(a)
    model = keras.Model(inp, [a, b])
    result = prune_input_channels(model, {"b": [0, 1]})
    assert "model output" in result.skipped["b"]


def test_dense_after_flatten_is_skipped_and_softmax_producer_blocks():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            L.Conv2D(4, 3, name="c"),
            L.Flatten(name="flat"),
            L.Dense(8, activation="softmax", name="d1"),
            L.Dense(2, name="d2"),
        ]
    )
    result = prune_input_channels(model, {"d1": [0, 1, 2], "d2": [0, 1]})
    assert "Flatten" in result.skipped["d1"]
    assert "element-wise" in result.skipped["d2"]


def test_user_mistakes_raise():
    model = _chain_model()
    with pytest.raises(ValueError, match="conv9"):
        prune_input_channels(model, {"conv9": [0]})
    with pytest.raises(ValueError, match=r"conv2.*0\.\.9"):
        prune_input_channels(model, {"conv2": [0, 10]})
    with pytest.raises(ValueError, match="conv2"):
        prune_input_channels(model, {"conv2": []})
    with pytest.raises(ValueError, match="distinct"):
        prune_input_channels(model, {"conv2": [1, 1]})
    bn_model = keras.Sequential([keras.Input((4, 4, 2)), L.Conv2D(3, 1), L.BatchNormalization(name="bn")])
    with pytest.raises(ValueError, match=r"bn.*Conv2D, Dense and SeparableConv2D"):
        prune_input_channels(bn_model, {"bn": [0]})


def test_boolean_mask_and_save_load(tmp_path):
    model = _chain_model()
    mask = np.zeros(20, bool)
    mask[::3] = True
    result = prune_input_channels(model, {"conv3": mask})
    np.testing.assert_array_equal(result.pruned["conv3"], np.arange(0, 20, 3))
    path = tmp_path / "pruned.keras"
    result.model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), result.model.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.slow
def test_resnet50_prunable_layers_at_keep_07(tmp_path):
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    chains = prunable_layers(model)
    prunable = {name for name, chain in chains.items() if isinstance(chain, ChannelChain)}
    # inside each bottleneck the 3x3 and the last 1x1 conv have private chains; block inputs meet an Add
    assert len(prunable) == 32 and all(name.endswith(("_2_conv", "_3_conv")) for name in prunable)
    assert "Add" in chains["conv2_block2_1_conv"] or "fan-out" in chains["conv2_block2_1_conv"]
    kept = {}
    for name in prunable:
        kernel = model.get_layer(name).get_weights()[0]
        kept[name] = magnitude_channels(kernel, max(1, round(0.7 * kernel.shape[-2])))
    result = prune_input_channels(model, kept)
    assert result.skipped == {} and set(result.pruned) == prunable
    before, after = tfc.model_cost(model), tfc.model_cost(result.model)
    assert after.macs < 0.75 * before.macs
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    y = result.model.predict(x, verbose=0)
    path = tmp_path / "resnet_pruned.keras"
    result.model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(x, verbose=0), y, rtol=1e-5, atol=1e-6)
