"""Models whose layers do not copy from their configs but which re-create as a whole from their own (the keras_hub
backbones' case): ``rewrite_model`` re-creates the whole model, swaps the decomposed layers in, and the result
(a ``RewiredModel``) saves and loads; a model that re-creates neither way gets a one-line error naming the layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.graph import walk_layers
from tfcompress.layers import RewiredModel


@keras.saving.register_keras_serializable(package="tests_whole_model")
class Stubborn(keras.layers.Layer):
    """Holds a Dense; its config carries a derived value its constructor refuses (as keras_hub's ViT patching)."""

    def __init__(self, units: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.fc = keras.layers.Dense(units, activation="relu", name="fc")

    def call(self, x):
        return self.fc(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "twice": 2 * self.units}


@keras.saving.register_keras_serializable(package="tests_whole_model")
class Net(keras.Model):
    """A functional model whose config is its constructor's arguments (as a keras_hub Backbone)."""

    def __init__(self, units: int = 32, **kwargs):
        inputs = keras.Input((3, 16), name="x")
        h = Stubborn(units, name="block")(inputs)
        outputs = keras.layers.Dense(4, name="head")(keras.layers.Flatten(name="flat")(h))
        super().__init__(inputs, outputs, **kwargs)
        self.units = units

    def get_config(self):
        return {"name": self.name, "units": self.units}


def _net() -> tuple[Net, np.ndarray]:
    keras.utils.set_random_seed(0)
    return Net(name="net"), np.random.default_rng(0).normal(size=(8, 3, 16)).astype("float32")


def test_a_model_whose_layer_config_fails_is_rebuilt_whole_and_saves(tmp_path) -> None:
    model, x = _net()
    before = [w.copy() for w in model.get_weights()]
    reference = np.asarray(model(x))
    full = tfc.rewrite_model(model, {"block/fc": ("svd", 16), "head": ("svd", 4)})  # full rank: same outputs
    assert isinstance(full, RewiredModel) and [layer.name for layer in full.layers] == [
        layer.name for layer in model.layers
    ]
    assert sorted(full.replacements) == ["block/fc", "head"]
    assert type(full.get_layer("block").fc).__name__ == "SVDDense"
    np.testing.assert_allclose(np.asarray(full(x)), reference, atol=1e-5)
    for a, b in zip(before, model.get_weights(), strict=True):  # the user's model is untouched
        np.testing.assert_array_equal(a, b)

    # rewritten again: the first replacements stay, the new one goes on top; lower ranks really change the outputs
    low = tfc.rewrite_model(tfc.rewrite_model(model, {"head": ("svd", 2)}), {"block/fc": ("svd", 1)})
    assert sorted(low.replacements) == ["block/fc", "head"] and low.get_layer("block").fc.rank == 1
    assert tfc.model_cost(low).macs == 3 * (16 + 32) * 1 + 96 * 2 + 2 * 4
    assert np.abs(np.asarray(low(x)) - reference).max() > 1e-3

    path = str(tmp_path / "low.keras")
    low.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, RewiredModel) and loaded.get_layer("block").fc.rank == 1
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(low(x)))


def test_compress_model_searches_inside_the_rebuilt_model() -> None:
    model, x = _net()
    reference = np.asarray(model(x))

    def score(m: keras.Model, iterations: int) -> float:
        return -float(np.mean((np.asarray(m(x)) - reference) ** 2))

    params = tfc.WeightSvdParameters(
        "auto", tfc.WeightSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(0.6, num_comp_ratio_candidates=3))
    )
    compressed, stats = tfc.compress_model(model, score, 1, "weight_svd", "mac", params, verbose=0)
    assert isinstance(compressed, RewiredModel) and "block/fc" in stats.eval_scores
    assert stats.mac_compression_ratio <= 0.6 + 1e-9
    np.testing.assert_array_equal(np.asarray(model(x)), reference)


def test_a_model_that_recreates_neither_way_gets_one_line_naming_the_layer() -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3, 16))
    plain = keras.Model(inputs, keras.layers.Dense(2, name="head")(Stubborn(name="block")(inputs)), name="plain")
    with pytest.raises(ValueError, match=r"'block' \(Stubborn\).*twice") as err:
        tfc.rewrite_model(plain, {"head": ("svd", 1)})
    assert "\n" not in str(err.value) and "'plain'" in str(err.value)


@keras.saving.register_keras_serializable(package="tests_whole_model")
class AnyLength(keras.Model):
    """Takes sequences of any length (as the keras_hub backbones); its config is its constructor's arguments."""

    def __init__(self, units: int = 32, **kwargs):
        inputs = keras.Input((None, 16), name="x")
        super().__init__(inputs, Stubborn(units, name="block")(inputs), **kwargs)
        self.units = units

    def get_config(self):
        return {"name": self.name, "units": self.units}


def test_a_variable_length_model_nested_at_a_fixed_length_is_costed_there_and_rebuilt(tmp_path) -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 16))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(AnyLength(name="inner")(inputs)))
    cost = tfc.model_cost(model)  # the inner model's own input has no length; it runs at 5 here
    assert cost.macs == 5 * 16 * 32 + 5 * 32 * 2 and not cost.uncounted
    paths = [ref.path for ref in walk_layers(model, sublayers=True)]
    assert paths == ["inner/block", "inner/block/fc", "head"]  # each once, at the shapes it runs with
    x = np.random.default_rng(0).normal(size=(4, 5, 16)).astype("float32")
    low = tfc.rewrite_model(model, {"inner/block/fc": ("svd", 2)})
    assert isinstance(low.get_layer("inner"), RewiredModel)
    assert tfc.model_cost(low).macs == 5 * 2 * (16 + 32) + 5 * 32 * 2
    path = str(tmp_path / "low.keras")
    low.save(path)
    np.testing.assert_array_equal(np.asarray(keras.models.load_model(path)(x)), np.asarray(low(x)))
