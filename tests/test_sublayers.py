"""Layers inside custom layers: addressed as ``"block/inner"`` in plans, greedy selection, manual mode and ignore
lists; replaced through a ``RewiredLayer`` that saves, loads with plain ``keras.models.load_model`` and exports."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.graph import walk_layers
from tfcompress.layers import RewiredLayer

L = keras.layers


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class Residual(L.Layer):
    """Two convolutions in a list and a Dense projection, created in __init__."""

    def __init__(self, filters: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.convs = [
            L.Conv2D(filters, 3, padding="same", name="conv_a"),
            L.Conv2D(filters, 3, padding="same", name="conv_b"),
        ]
        self.proj = L.Dense(filters, name="proj")
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        return x + self.scale * self.proj(self.convs[1](keras.ops.relu(self.convs[0](x))))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class Outer(L.Layer):
    """A custom layer holding another one and a dict of Dense layers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = Residual(8, name="res")
        self.heads = {"a": L.Dense(16, name="head_a"), "b": L.Dense(8, name="head_b")}

    def call(self, x):
        return self.heads["b"](keras.ops.relu(self.heads["a"](self.inner(x))))


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class LateBlock(L.Layer):
    """Creates its Dense in build(): replaced right after the re-created block's build."""

    def build(self, shape):
        self.fc = L.Dense(shape[-1], name="late_fc")
        self.fc.build(shape)

    def call(self, x):
        return self.fc(x)


def _model() -> keras.Model:
    keras.utils.set_random_seed(2)
    inp = keras.Input((10, 10, 8), name="img")
    x = Residual(8, name="block")(inp)
    x = Outer(name="outer")(x)
    x = LateBlock(name="late")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, L.Dense(3, name="head")(x))
    model.get_layer("block").scale.assign(0.7)
    return model


def _x(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 10, 10, 8)).astype("float32")


def test_walk_names_layers_inside_custom_layers():
    refs = {ref.path: ref for ref in walk_layers(_model(), sublayers=True)}
    assert ["block/conv_a", "block/conv_b", "block/proj"] == [p for p in refs if p.startswith("block/")]
    assert refs["block/conv_b"].attribute == "convs.1" and refs["block/conv_b"].input_shape == (None, 10, 10, 8)
    assert refs["outer/res/conv_a"].attribute == "inner.convs.0"  # a custom layer inside a custom layer
    assert refs["outer/head_a"].attribute == "heads.a" and refs["outer/head_b"].input_shape == (None, 10, 10, 16)
    assert refs["late/late_fc"].owner.name == "late"
    assert "block/conv_a" not in {ref.path for ref in walk_layers(_model())}  # only when asked


def test_rewrite_inside_custom_layers_saves_loads_and_exports(tmp_path):
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    plan = {"block/conv_a": ("weight_svd", 8), "block/proj": ("svd", 8), "outer/res/conv_b": ("spatial_svd", 24)}
    new = tfc.rewrite_model(model, plan)
    assert isinstance(new.get_layer("block"), RewiredLayer) and isinstance(new.get_layer("outer"), RewiredLayer)
    assert type(new.get_layer("block").layer.convs[0]).__name__ == "WeightSVDConv2D"
    assert type(new.get_layer("outer").layer.inner.convs[1]).__name__ == "SpatialSVDConv2D"
    x = _x()
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    # the parameter count follows the replacement (no stale copy of the replaced layer is kept)
    replaced = model.get_layer("block").convs[0].count_params() + model.get_layer("block").proj.count_params()
    twins = new.get_layer("block").layer.convs[0].count_params() + new.get_layer("block").layer.proj.count_params()
    outer_delta = (
        new.get_layer("outer").layer.inner.convs[1].count_params()
        - model.get_layer("outer").inner.convs[1].count_params()
    )
    assert new.count_params() == model.count_params() - replaced + twins + outer_delta
    path = tmp_path / "rewired.keras"
    new.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), new.predict(x, verbose=0), atol=1e-6)
    assert type(loaded.get_layer("block").layer.convs[0]).__name__ == "WeightSVDConv2D"
    import tensorflow as tf

    new.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(served.serve(x).numpy(), new.predict(x, verbose=0), atol=1e-5)


def test_rewriting_a_rewired_layer_keeps_its_replacements():
    model = _model()
    once = tfc.rewrite_model(model, {"block/conv_a": ("weight_svd", 8)})
    twice = tfc.rewrite_model(once, {"block/conv_b": ("weight_svd", 8)})
    block = twice.get_layer("block").layer
    assert [type(c).__name__ for c in block.convs] == ["WeightSVDConv2D", "WeightSVDConv2D"]
    x = _x()
    np.testing.assert_allclose(twice.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    assert tfc.model_cost(twice).layers["block"].macs > 0 and not tfc.model_cost(twice).uncounted


class Unconfigurable(L.Layer):
    """Leaves an argument out of its config: it cannot be re-created, so its sublayer cannot be replaced."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.fc = L.Dense(units, name="fc")

    def call(self, x):
        return self.fc(x)

    def get_config(self):
        return {"name": self.name}


def test_a_sublayer_created_in_build_is_replaced_saved_and_loaded(tmp_path):
    model = _model()
    x = _x()
    new = tfc.rewrite_model(model, {"late/late_fc": ("svd", 8)})
    assert type(new.get_layer("late").layer.fc).__name__ == "SVDDense"
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    assert new.count_params() == model.count_params() + (8 + 8) * 8 - 8 * 8
    new.save(tmp_path / "late.keras")
    loaded = keras.models.load_model(tmp_path / "late.keras")
    assert type(loaded.get_layer("late").layer.fc).__name__ == "SVDDense"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), new.predict(x, verbose=0))
    low = tfc.rewrite_model(model, {"late/late_fc": ("svd", 2)})
    assert tfc.model_cost(low).layers["late"].macs == 10 * 10 * (8 + 8) * 2


def test_a_layer_that_does_not_recreate_from_its_config_is_refused_with_the_reason():
    inp = keras.Input((6,))
    model = keras.Model(inp, Unconfigurable(4, name="odd")(inp))
    with pytest.raises(ValueError, match=r"'odd/fc'.*cannot be re-created from its config"):
        tfc.rewrite_model(model, {"odd/fc": ("svd", 2)})


def test_greedy_manual_and_ignore_reach_layers_inside_custom_layers(tmp_path):
    model = _model()
    x = _x(8)
    reference = model.predict(x, verbose=0)

    def fidelity(m, _):
        return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    greedy = tfc.GreedySelectionParameters(target_comp_ratio=0.6)
    params = tfc.WeightSvdParameters(
        "auto", tfc.WeightSvdParameters.AutoModeParams(greedy, modules_to_ignore=["outer/head_a"])
    )
    compressed, stats = tfc.compress_model(model, fidelity, None, "weight_svd", "mac", params, verbose=0)
    assert stats.mac_compression_ratio <= 0.6 + 1e-9
    assert {"block/conv_a", "block/conv_b", "outer/res/conv_a"} <= set(stats.eval_scores)
    assert stats.skipped_layers["outer/head_a"] == "in modules_to_ignore"
    assert "late/late_fc" in stats.eval_scores  # created in build(): eligible too
    assert any(row.name.startswith(("block/", "outer/")) for row in stats.per_layer_stats)
    path = tmp_path / "c.keras"
    compressed.save(path)
    np.testing.assert_allclose(
        keras.models.load_model(path).predict(x, verbose=0), compressed.predict(x, verbose=0), atol=1e-6
    )
    manual = tfc.WeightSvdParameters(
        "manual", tfc.WeightSvdParameters.ManualModeParams([("block/conv_b", 0.5), ("outer/res/conv_a", 0.5)])
    )
    small, manual_stats = tfc.compress_model(model, fidelity, None, "weight_svd", "mac", manual, verbose=0)
    assert [row.name for row in manual_stats.per_layer_stats] == ["block/conv_b", "outer/res/conv_a"]
    assert type(small.get_layer("block").layer.convs[1]).__name__ == "WeightSVDConv2D"


def test_inspect_lists_layers_inside_custom_layers_with_reasons():
    from tfcompress.cli_inspect import inspect_model, inspect_text

    info = inspect_model(_model())
    rows = {row["name"]: row for row in info["layers"]}
    assert rows["block/conv_a"]["inside"] == "block" and rows["block/conv_a"]["schemes"]["weight_svd"]["eligible"]
    assert rows["block/conv_a"]["macs"] == 10 * 10 * 9 * 8 * 8
    assert rows["late/late_fc"]["schemes"]["weight_svd"]["eligible"]
    text = inspect_text(info, "model.keras")
    assert "outer/res/conv_a" in text and "late/late_fc" in text


def _attention_model() -> keras.Model:
    keras.utils.set_random_seed(5)
    inp = keras.Input((12, 32))
    attended = L.MultiHeadAttention(4, 8, name="mha")(inp, inp)
    return keras.Model(inp, L.Dense(32, name="ffn")(L.LayerNormalization(name="ln")(inp + attended)))


def test_attention_projections_are_replaced_costed_saved_and_exported(tmp_path):
    from tfcompress.cli_inspect import inspect_model

    model = _attention_model()
    refs = {ref.path: ref for ref in walk_layers(model, sublayers=True)}
    assert {"mha/query", "mha/key", "mha/value", "mha/attention_output"} <= set(refs)
    assert refs["mha/query"].input_shape == (None, 12, 32)
    t, hidden, heads, dim = 12, 32, 4, 8
    products = heads * t * t * (dim + dim)  # Q·Kᵀ and A·V
    assert tfc.model_cost(model).layers["mha"].macs == 4 * t * hidden * heads * dim + products
    x = np.random.default_rng(1).normal(size=(3, 12, 32)).astype("float32")
    projections = ("mha/query", "mha/key", "mha/value", "mha/attention_output")
    full = tfc.rewrite_model(model, {p: ("svd", 32) for p in projections})
    assert isinstance(full.get_layer("mha"), RewiredLayer)
    np.testing.assert_allclose(full.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)
    # honest costs: each replaced projection at its real cost, the attention products unchanged
    assert tfc.model_cost(full).layers["mha"].macs == 4 * t * (hidden + 32) * 32 + products
    low = tfc.rewrite_model(model, {"mha/query": ("svd", 4), "mha/attention_output": ("svd", 6)})
    expected = 2 * t * hidden * heads * dim + t * (hidden + 32) * 4 + t * (32 + hidden) * 6 + products
    assert tfc.model_cost(low).layers["mha"].macs == expected
    assert low.count_params() == model.count_params() - 2 * 32 * 32 + (64 * 4) + (64 * 6)
    low.save(tmp_path / "mha.keras")
    loaded = keras.models.load_model(tmp_path / "mha.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), low.predict(x, verbose=0))
    assert type(loaded.get_layer("mha").layer.query_dense).__name__ == "SVDEinsumDense"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        low.export(str(tmp_path / "saved"), verbose=False)
        served = tf.saved_model.load(str(tmp_path / "saved"))
        np.testing.assert_allclose(served.serve(x).numpy(), low.predict(x, verbose=0), atol=1e-5)
    rows = {row["name"]: row for row in inspect_model(model)["layers"]}
    assert rows["mha/query"]["macs"] == 12 * 32 * 4 * 8 and rows["mha/query"]["schemes"]["weight_svd"]["eligible"]


@pytest.mark.slow
def test_auto_search_swaps_attention_projections_in_place(tmp_path):
    model = _attention_model()
    x = np.random.default_rng(2).normal(size=(4, 12, 32)).astype("float32")
    reference = model.predict(x, verbose=0)

    def fidelity(m, _):
        return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    greedy = tfc.GreedySelectionParameters(target_comp_ratio=0.7, num_comp_ratio_candidates=3)
    params = tfc.AutoSchemeParameters("auto", tfc.AutoSchemeParameters.AutoModeParams(greedy))
    compressed, stats = tfc.compress_model(model, fidelity, None, "auto", "mac", params, verbose=0)
    assert {"mha/query", "mha/key", "mha/value", "mha/attention_output", "ffn"} <= set(stats.eval_scores)
    assert min(stats.eval_scores["mha/query"].values()) < 0  # the candidates were really swapped in
    assert stats.mac_compression_ratio <= 0.7 + 1e-9
    compressed.save(tmp_path / "auto.keras")
    np.testing.assert_array_equal(
        keras.models.load_model(tmp_path / "auto.keras").predict(x, verbose=0), compressed.predict(x, verbose=0)
    )
