"""Channel pruning through nested models: inline_nested_models (the flat twin of a model) and compress_model on
transfer-learning shaped models (a base model nested in a Sequential or Functional head)."""

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.pruning.inline import inline_nested_models

L = keras.layers
CP = tfc.ChannelPruningParameters


def _same_outputs(a, b, x):
    out_a, out_b = a(x), b(x)
    out_a = out_a if isinstance(out_a, list | tuple) else [out_a]
    out_b = out_b if isinstance(out_b, list | tuple) else [out_b]
    for p, q in zip(out_a, out_b, strict=True):
        np.testing.assert_allclose(np.asarray(p), np.asarray(q), rtol=1e-5, atol=1e-5)


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_functional_nested_with_two_outputs_and_a_name_clash():
    inner_in = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inner_in)
    h2 = L.Conv2D(5, 3, padding="same", name="c2")(h)
    base = keras.Model(inner_in, [h2, h], name="base")
    inp = keras.Input((8, 8, 3))
    a, b = base(L.Conv2D(3, 1, name="pre")(inp))
    out = L.Dense(2, name="c1")(L.GlobalAveragePooling2D()(L.Concatenate()([a, b])))  # same name as base/c1
    model = keras.Model(inp, out)
    config = model.get_config()
    inlined = inline_nested_models(model)
    assert inlined.inlined == ["base"] and inlined.kept == {}
    names = [layer.name for layer in inlined.model.layers]
    assert "base" not in names and "c2" in names and "base_c1" in names and names.count("c1") == 1
    assert inlined.paths["base_c1"] == "base/c1" and inlined.paths["c1"] == "c1" and inlined.paths["c2"] == "base/c2"
    assert inlined.flat_name("base/c1") == "base_c1" and inlined.flat_name(base.get_layer("c2")) == "c2"
    _same_outputs(inlined.model, model, _rand(2, 8, 8, 3))
    assert model.get_config() == config  # the argument is untouched


def test_sequential_head_on_a_keras_application_base():
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35)
    model = keras.Sequential([keras.Input((32, 32, 3)), base, L.GlobalAveragePooling2D(), L.Dense(3)])
    inlined = inline_nested_models(model)
    assert inlined.inlined == [base.name]
    assert len(inlined.model.layers) == len(base.layers) + 2  # base's input layer replaced by the outer one
    _same_outputs(inlined.model, model, _rand(2, 32, 32, 3))
    assert tfc.model_cost(inlined.model).macs == tfc.model_cost(model).macs


def test_nested_twice_and_sequential_without_input_layer():
    seq = keras.Sequential([L.Conv2D(4, 3), L.ReLU()], name="seq")
    mid_in = keras.Input((8, 8, 3))
    mid = keras.Model(mid_in, seq(mid_in), name="mid")
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(mid(inp))))
    inlined = inline_nested_models(model)
    assert inlined.inlined == ["mid", "mid/seq"]
    conv = next(name for name, path in inlined.paths.items() if path.startswith("mid/seq/conv2d"))
    assert isinstance(inlined.model.get_layer(conv), L.Conv2D)
    _same_outputs(inlined.model, model, _rand(2, 8, 8, 3))


def test_dict_inputs_are_matched_by_key():
    a_in, b_in = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    inner = keras.Model({"a": a_in, "b": b_in}, L.Dense(3)(L.Concatenate()([b_in, a_in])), name="inner")
    xa, xb = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([xa, xb], inner({"a": L.Dense(4)(xa), "b": xb}))
    inlined = inline_nested_models(model)
    assert inlined.inlined == ["inner"]
    _same_outputs(inlined.model, model, [_rand(2, 4), _rand(2, 4, seed=1)])


def test_shared_nested_model_and_flat_models_are_left_alone():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, L.Dense(4)(inner_in), name="shared")
    x1, x2 = keras.Input((4,)), keras.Input((4,))
    assert inline_nested_models(keras.Model([x1, x2], L.Add()([inner(x1), inner(x2)]))) is None
    x = keras.Input((4,))
    assert inline_nested_models(keras.Model(x, L.Dense(2)(x))) is None


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def transfer():
    """A trained digits CNN whose convolutions live in a nested 'base' model (the transfer-learning shape)."""
    from tfcompress.demo import digits_data

    x_train, y_train, x_test, y_test = digits_data(seed=0)
    keras.utils.set_random_seed(0)
    base = keras.Sequential(
        [
            keras.Input(x_train.shape[1:]),
            L.Conv2D(24, 3, padding="same", activation="relu", name="conv1"),
            L.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            L.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
        ],
        name="base",
    )
    model = keras.Sequential([keras.Input(x_train.shape[1:]), base, L.GlobalAveragePooling2D(), L.Dense(10)])
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, epochs=12, batch_size=32, verbose=0)

    def accuracy(m, iterations):
        return float(np.mean(np.argmax(m.predict(x_test, verbose=0, batch_size=1024), -1) == y_test))

    return model, accuracy, x_train, x_test


def _params(data, select, ignore=()):
    return CP(data, 500, False, "auto", CP.AutoModeParams(select, modules_to_ignore=list(ignore)))


@pytest.mark.slow
def test_layers_inside_a_nested_base_are_pruned(transfer, tmp_path):
    model, accuracy, x_train, x_test = transfer
    weights = [w.copy() for w in model.get_weights()]
    small, stats = tfc.compress_model(
        model, accuracy, None, "channel_pruning", "mac", _params(x_train, tfc.GreedySelectionParameters(0.6)), verbose=0
    )
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights, strict=True))
    assert stats.mac_compression_ratio <= 0.6 + 1e-3
    assert stats.mac_compression_ratio == pytest.approx(tfc.model_cost(small).macs / tfc.model_cost(model).macs)
    assert any("inlined the nested model(s) 'base'" in note for note in stats.notes)
    assert small.compiled  # compiled like the user's model
    shrunk = {layer.name for layer in small.layers if isinstance(layer, L.Conv2D) and layer.kernel.shape[-2] < 24}
    assert shrunk & {"conv2", "conv3"}  # layers that lived inside 'base' lost input channels
    assert stats.compressed_model_accuracy > stats.baseline_model_accuracy - 0.15
    path = tmp_path / "small.keras"
    small.save(path)
    _same_outputs(keras.models.load_model(path), small, x_test[:16])


@pytest.mark.slow
def test_paths_into_the_nested_base_name_layers_in_ignore_and_manual_mode(transfer):
    model, accuracy, x_train, _ = transfer
    ignored = tfc.GreedySelectionParameters(0.8, num_comp_ratio_candidates=4)
    small, _ = tfc.compress_model(
        model, accuracy, None, "channel_pruning", "mac", _params(x_train, ignored, ["base/conv3"]), verbose=0
    )
    assert small.get_layer("conv3").kernel.shape[-2] == 32  # its input channels are left alone
    assert small.get_layer("conv2").filters == 32
    manual = CP(x_train, 500, False, "manual", CP.ManualModeParams([("base/conv2", 0.5)]))
    small, _ = tfc.compress_model(model, accuracy, None, "channel_pruning", "mac", manual, verbose=0)
    assert small.get_layer("conv2").kernel.shape[-2] == 12
    assert small.get_layer("conv1").filters == 12


def test_inspect_reports_layers_inside_a_nested_base_by_path():
    from tfcompress.cli_inspect import _pruning_info

    base = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(6, 3, activation="relu", name="c1"), L.Conv2D(6, 3, name="c2")], name="base"
    )
    model = keras.Sequential([keras.Input((8, 8, 3)), base, L.Flatten(), L.Dense(2, name="head")])
    info = _pruning_info(model)
    assert info["prunable"] == ["base/c2"]
    assert "model input" in info["reasons"]["base/c1"]
