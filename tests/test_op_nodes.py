"""Functional graphs whose nodes include Keras operations that are not layers (``x + 3.0``, ``x * y``, ``x[:, 0]``,
``keras.ops.reshape``, ...): every entry point must clone them, and channel pruning must follow channels through the
element-wise ones and name the others truthfully."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.pruning import apply_pruning, prune_units

L = keras.layers


def _op_model() -> keras.Model:
    """Two convs joined through op nodes of every common kind, then a Dense head."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((10, 10, 3), name="img")
    x = L.Conv2D(8, 3, name="c1")(inp)
    x = keras.ops.relu(x + 3.0) * 0.5  # Add / Relu / Multiply with scalars
    y = keras.ops.reshape(x, (-1, 8, 8, 8))
    z = L.Conv2D(16, 3, name="c2")(y * x)  # Multiply of two tensors
    z = z[:, 1:, :, :]  # GetItem
    z = keras.ops.mean(z, axis=1)
    z = keras.ops.concatenate([z, keras.ops.square(z)], axis=-1)
    out = L.Dense(5, name="fc")(z)
    return keras.Model(inp, out, name="ops")


def _x(shape: tuple[int, ...], n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def test_rewrite_full_rank_keeps_outputs_and_op_nodes(tmp_path):
    model = _op_model()
    before = [w.copy() for w in model.get_weights()]
    ops_before = [type(op).__name__ for op in model.operations]
    plan = {"c1": ("weight_svd", 3), "c2": ("spatial_svd", 24), "fc": ("svd", 5)}
    new = tfc.rewrite_model(model, plan)
    assert [type(op).__name__ for op in new.operations if not isinstance(op, L.Layer)] == [
        name for op, name in zip(model.operations, ops_before, strict=True) if not isinstance(op, L.Layer)
    ]
    assert type(new.get_layer("c2")).__name__ == "SpatialSVDConv2D"
    x = _x((10, 10, 3))
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)
    for got, want in zip(model.get_weights(), before, strict=True):  # the argument is untouched
        np.testing.assert_array_equal(got, want)
    path = tmp_path / "ops.keras"
    new.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), new.predict(x, verbose=0), atol=1e-6)
    import tensorflow as tf

    new.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(served.serve(x).numpy(), new.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("scheme", ["spatial_svd", "weight_svd", "tucker"])
def test_compress_model_through_op_nodes(scheme):
    model = _op_model()
    x = _x((10, 10, 3), n=16)
    reference = model.predict(x, verbose=0)

    def fidelity(m, _):
        return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    cls = {"spatial_svd": tfc.SpatialSvdParameters, "weight_svd": tfc.WeightSvdParameters}.get(
        scheme, tfc.TuckerParameters
    )
    params = cls("auto", cls.AutoModeParams(tfc.GreedySelectionParameters(target_comp_ratio=0.7)))
    compressed, stats = tfc.compress_model(model, fidelity, None, scheme, "mac", params, verbose=0)
    assert stats.mac_compression_ratio <= 0.7 + 1e-9
    assert tfc.model_cost(compressed).macs < tfc.model_cost(model).macs
    assert any(type(layer).__name__ != "Conv2D" for layer in compressed.layers if layer.name in ("c1", "c2"))


def _elementwise_ops_model() -> keras.Model:
    """c1 -> (x + 3) -> relu op -> x * 0.5 -> c2, and a residual pair joined by an Add op node."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 3), name="img")
    a = L.Conv2D(6, 3, padding="same", name="c1")(inp)
    a = keras.ops.relu(a + 3.0) * 0.5
    b = L.Conv2D(8, 3, padding="same", name="c2")(a)
    c = L.Conv2D(8, 1, name="c3")(b)
    s = keras.ops.maximum(b + c, 0.0)  # Add op of two tensors: one group {c2, c3 outputs}
    d = L.Conv2D(4, 3, padding="same", name="c4")(s)
    out = L.Dense(3, name="fc")(L.GlobalAveragePooling2D(name="gap")(d))
    return keras.Model(inp, out)


def test_channel_pruning_follows_elementwise_op_nodes():
    model = _elementwise_ops_model()
    units, reasons = prune_units(model)
    by_consumers = {tuple(slot.layer for slot in unit.consumers): unit for unit in units}
    assert ("c2",) in by_consumers  # c1 -> add/relu/multiply ops -> c2 is one private unit
    assert {"c3", "c4"} in [set(names) for names in by_consumers]  # the Add op joins the c2 and c3 outputs
    unit = by_consumers[("c2",)]
    kept = {unit.name: [0, 2, 3, 5]}
    pruned = apply_pruning(model, kept, units=units)
    assert pruned.get_layer("c1").kernel.shape[-1] == 4 and pruned.get_layer("c2").kernel.shape[-2] == 4
    # the pruned model computes the original with c2's dropped inputs zeroed (the ops are element-wise)
    kernel, bias = model.get_layer("c2").get_weights()
    dropped = [1, 4]
    masked = tfc.rewrite_model(model, {})
    kernel = kernel.copy()
    kernel[:, :, dropped, :] = 0.0
    masked.get_layer("c2").set_weights([kernel, bias])
    x = _x((8, 8, 3))
    np.testing.assert_allclose(pruned.predict(x, verbose=0), masked.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    assert "c1" in reasons and "model input" in reasons["c1"]


def test_op_nodes_that_mix_channels_get_a_true_reason():
    inp = keras.Input((8, 8, 3), name="img")
    a = L.Conv2D(6, 3, name="c1")(inp)
    b = L.Conv2D(6, 3, name="c2")(keras.ops.reshape(a, (-1, 6, 6, 6)))
    c = L.Conv2D(4, 1, name="c3")(b * np.linspace(0.5, 1.5, 6).astype("float32"))  # a constant per channel
    model = keras.Model(inp, L.Flatten(name="flat")(c))
    _, reasons = prune_units(model)
    assert "Reshape" in reasons["c2"] and "keras.ops" in reasons["c2"]
    assert "constant with one value per channel" in reasons["c3"]
    assert "model input" not in reasons["c2"] and "model input" not in reasons["c3"]


def test_channel_pruning_compress_model_with_op_nodes():
    model = _elementwise_ops_model()
    x = _x((8, 8, 3), n=64)
    reference = model.predict(x, verbose=0)

    def fidelity(m, _):
        return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    params = tfc.ChannelPruningParameters(
        data=x,
        num_reconstruction_samples=200,
        allow_custom_downsample_ops=False,
        mode="auto",
        params=tfc.ChannelPruningParameters.AutoModeParams(tfc.GreedySelectionParameters(target_comp_ratio=0.7)),
    )
    pruned, stats = tfc.compress_model(model, fidelity, None, "channel_pruning", "mac", params, verbose=0)
    assert stats.mac_compression_ratio <= 0.7 + 1e-9
    assert pruned.get_layer("c1").kernel.shape[-1] < 6 or pruned.get_layer("c2").kernel.shape[-1] < 8


@pytest.mark.slow
def test_mobilenet_v3_small_rewrites_and_prunes(tmp_path):
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(64, 64, 3), include_preprocessing=False)
    assert any(not isinstance(op, L.Layer) for op in model.operations)  # hard-sigmoid is x + 3.0 ...
    convs = [layer for layer in model.layers if type(layer) is L.Conv2D and layer.kernel_size != (1, 1)]
    plan = {
        layer.name: ("weight_svd", tfc.cost.max_rank(tfc.cost.layer_geometry(layer), "weight_svd")) for layer in convs
    }
    new = tfc.rewrite_model(model, plan)
    x = _x((64, 64, 3), n=2)
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-3, atol=1e-4)
    units, _ = prune_units(model)
    assert units, "MobileNetV3Small has prunable channel groups"
    kept = {unit.name: list(range(max(1, unit.channels // 2))) for unit in units[:5]}
    pruned = apply_pruning(model, kept, units=units)
    assert tfc.model_cost(pruned).macs < tfc.model_cost(model).macs
    path = tmp_path / "m.keras"
    pruned.save(path)
    np.testing.assert_allclose(
        keras.models.load_model(path).predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5
    )
