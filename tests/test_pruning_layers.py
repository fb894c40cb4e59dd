"""Channels through more layers: PReLU, normalisations, SE blocks, Rescaling/Normalization, pooling, padding,
cropping and upsampling of every rank, reshaping op nodes, and nested models (a true reason)."""

import keras
import numpy as np
import pytest

from tfcompress.pruning import apply_pruning, prune_units

L = keras.layers
RNG = np.random.default_rng(0)


def _copy(model):
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    for layer in twin.layers:
        if isinstance(layer, L.Normalization):
            layer.finalize_state()  # set_weights alone leaves it dividing by the fresh layer's mean and variance
    return twin


def _randomise(model, seed=1):
    """Non-trivial values for every weight (normalisation gamma/beta, PReLU alpha, biases)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = layer.get_weights()
        if values and not isinstance(layer, L.Normalization):
            layer.set_weights([rng.uniform(0.5, 1.5, size=w.shape).astype(w.dtype) for w in values])


def _zero_masked(model, unit, drop):
    """The original model with the dropped unit channels' consumer input weights zeroed."""
    twin = _copy(model)
    for slot in unit.consumers:
        layer = twin.get_layer(slot.layer)
        kernel, *rest = layer.get_weights()
        kernel[..., slot.index[drop], :] = 0.0
        layer.set_weights([kernel, *rest])
    return twin


def _prune_and_check(model, x, consumer="b", tmp_path=None):
    """Prune the unit whose first consumer is ``consumer`` to every other channel and check the pruned model
    computes what the original does with the dropped channels' weights zeroed (and survives save/load)."""
    units, reasons = prune_units(model)
    unit = next((u for u in units if u.consumers[0].layer == consumer), None)
    assert unit is not None, reasons
    kept = np.arange(0, unit.channels, 2)
    drop = np.setdiff1d(np.arange(unit.channels), kept)
    new = apply_pruning(model, {unit.name: kept}, units=units)
    want = np.asarray(_zero_masked(model, unit, drop)(x, training=False))
    got = np.asarray(new(x, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    assert new.get_layer(consumer).kernel.shape[-2] == model.get_layer(consumer).kernel.shape[-2] - len(drop)
    if tmp_path is not None:
        path = tmp_path / "pruned.keras"
        new.save(path)
        back = keras.models.load_model(path)
        np.testing.assert_allclose(np.asarray(back(x, training=False)), got, rtol=1e-6, atol=1e-6)
    return unit, new


def _chain(middle, shape=(6, 6, 3), channels=6):
    """input -> Conv2D a (channels) -> middle layers -> Flatten-free consumer Dense/Conv2D b."""
    inp = keras.Input(shape)
    x = L.Conv2D(channels, 1, name="a")(inp) if len(shape) == 3 else L.Dense(channels, name="a")(inp)
    for layer in middle:
        x = layer(x)
    out = L.Conv2D(4, 1, name="b")(x) if len(x.shape) == 4 else L.Dense(4, name="b")(x)
    return keras.Model(inp, out)


def _x(model, seed=0):
    return np.random.default_rng(seed).normal(size=(2, *model.input_shape[1:])).astype(np.float32)


@pytest.mark.parametrize("shared_axes", [None, [1, 2]])
def test_prelu_per_channel_alpha_is_sliced(shared_axes, tmp_path):
    model = _chain([L.PReLU(shared_axes=shared_axes, name="p")])
    _randomise(model)
    unit, new = _prune_and_check(model, _x(model), tmp_path=tmp_path)
    assert [s.layer for s in unit.channelwise] == ["p"]
    assert new.get_layer("p").get_weights()[0].shape[-1] == 3
    # the kept alphas are the original ones at the kept channels
    np.testing.assert_array_equal(new.get_layer("p").get_weights()[0], model.get_layer("p").get_weights()[0][..., ::2])


def test_prelu_shared_over_channels_passes():
    model = _chain([L.PReLU(shared_axes=[3], name="p")])
    _randomise(model)
    unit, new = _prune_and_check(model, _x(model))
    assert unit.channelwise == ()
    assert new.get_layer("p").get_weights()[0].shape == model.get_layer("p").get_weights()[0].shape


@pytest.mark.parametrize("groups", [-1, 6])
def test_group_norm_with_one_channel_per_group_is_per_channel(groups, tmp_path):
    model = _chain([L.GroupNormalization(groups=groups, name="g")])
    _randomise(model)
    unit, new = _prune_and_check(model, _x(model), tmp_path=tmp_path)
    assert [s.layer for s in unit.channelwise] == ["g"]
    assert [w.shape for w in new.get_layer("g").get_weights()] == [(3,), (3,)]


def test_normalising_across_channels_is_a_blocker_with_its_reason():
    for layer in (L.LayerNormalization(name="n"), L.GroupNormalization(groups=2, name="n")):
        model = _chain([layer])
        units, reasons = prune_units(model)
        assert not [u for u in units if u.consumers[0].layer == "b"]
        assert "'n'" in reasons["b"] and "normalises" in reasons["b"] and "kept ones" in reasons["b"], reasons


def test_unit_norm_blocks_across_channels_and_passes_over_other_axes():
    _, reasons = prune_units(_chain([L.UnitNormalization(name="u")]))
    assert "'u' (UnitNormalization), which normalises across channels" in reasons["b"]
    model = _chain([L.UnitNormalization(axis=[1, 2], name="u")])
    _prune_and_check(model, _x(model))


def test_layer_norm_over_other_axes_passes():
    model = _chain([L.LayerNormalization(axis=[1, 2], name="n")])
    _randomise(model)
    _unit, new = _prune_and_check(model, _x(model))
    assert new.get_layer("n").get_weights()[0].shape == (6, 6)


def test_squeeze_and_excitation_reshape_and_broadcast_multiply(tmp_path):
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 3, padding="same", activation="swish", name="a")(inp)
    se = L.GlobalAveragePooling2D(name="gap")(x)
    se = L.Reshape((1, 1, 8), name="se_reshape")(se)
    se = L.Conv2D(2, 1, activation="swish", name="se_reduce")(se)
    se = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(se)
    x = L.Multiply(name="excite")([x, se])
    out = L.Conv2D(4, 1, name="b")(x)
    model = keras.Model(inp, out)
    units, _ = prune_units(model)
    unit = next(u for u in units if "b" in [s.layer for s in u.consumers])
    assert sorted(s.layer for s in unit.producers) == ["a", "se_expand"]
    assert sorted(s.layer for s in unit.consumers) == ["b", "se_reduce"]
    unit, new = _prune_and_check(model, _x(model), consumer="se_reduce", tmp_path=tmp_path)
    assert tuple(new.get_layer("se_reshape").target_shape) == (1, 1, 4)
    assert new.get_layer("se_expand").filters == 4


def test_reshape_that_changes_the_last_axis_still_blocks():
    model = _chain([L.Reshape((6, 12, 3), name="r")])
    _, reasons = prune_units(model)
    assert "'r' (Reshape), which changes what the last axis means" in reasons["b"]


@pytest.mark.parametrize("scale", [0.5, [0.5, 1.0, 2.0, 3.0, 4.0, 5.0]])
def test_rescaling_scalar_or_per_channel(scale, tmp_path):
    model = _chain([L.Rescaling(scale, offset=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], name="r")])
    _unit, new = _prune_and_check(model, _x(model), tmp_path=tmp_path)
    assert new.get_layer("r").get_config()["offset"] == [0.0, 2.0, 4.0]


def test_normalization_adapted_or_from_config(tmp_path):
    adapted = L.Normalization(name="nz")
    adapted.adapt(RNG.normal(size=(20, 6, 6, 6)).astype(np.float32) * np.arange(1, 7))
    model = _chain([adapted])
    _, new = _prune_and_check(model, _x(model), tmp_path=tmp_path)
    mean, _variance, count = new.get_layer("nz").get_weights()
    np.testing.assert_allclose(mean, model.get_layer("nz").get_weights()[0][::2])
    assert np.ndim(count) == 0
    given = L.Normalization(mean=list(range(6)), variance=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], name="nz")
    model = _chain([given])
    _unit, new = _prune_and_check(model, _x(model), tmp_path=tmp_path)
    assert new.get_layer("nz").get_config()["variance"] == [1.0, 3.0, 5.0]


def test_one_d_layers_pass_channels(tmp_path):
    model = _chain(
        [
            L.ZeroPadding1D(1),
            L.Cropping1D((0, 1)),
            L.UpSampling1D(2),
            L.MaxPooling1D(2),
            L.AveragePooling1D(1),
            L.SpatialDropout1D(0.1),
            L.GlobalAveragePooling1D(keepdims=True),
            L.GlobalMaxPooling1D(),
        ],
        shape=(5, 3),
    )
    _prune_and_check(model, _x(model), tmp_path=tmp_path)


def test_three_d_layers_pass_channels(tmp_path):
    model = _chain(
        [
            L.ZeroPadding3D(1),
            L.Cropping3D(1),
            L.UpSampling3D(2),
            L.MaxPooling3D(2),
            L.AveragePooling3D(1),
            L.GlobalMaxPooling3D(keepdims=True),
            L.GlobalAveragePooling3D(),
        ],
        shape=(3, 3, 3, 2),
    )
    _prune_and_check(model, _x(model), tmp_path=tmp_path)


def test_two_d_pooling_and_upsampling_pass_channels():
    model = _chain([L.UpSampling2D(2), L.Cropping2D(1), L.ZeroPadding2D(1), L.GlobalMaxPooling2D(keepdims=True)])
    _prune_and_check(model, _x(model))


def test_reduction_and_expand_dims_op_nodes_keep_channels():
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(6, 1, name="a")(inp)
    y = keras.ops.mean(x, axis=(1, 2))  # (B, C)
    y = keras.ops.expand_dims(keras.ops.expand_dims(y, 1), 1)  # (B, 1, 1, C)
    y = keras.ops.squeeze(y, axis=1)  # (B, 1, C)
    out = L.Dense(4, name="b")(y)
    model = keras.Model(inp, out)
    _prune_and_check(model, _x(model))


def test_ops_over_the_channel_axis_block_with_reason():
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(6, 1, name="a")(inp)
    y = keras.ops.sum(x, axis=3, keepdims=True)
    out = L.Conv2D(4, 1, name="b")(keras.ops.concatenate([y, y + 1.0], axis=-1))
    model = keras.Model(inp, out)
    units, reasons = prune_units(model)
    assert not units
    assert "Sum operation over the channel axis" in reasons["b"], reasons
    flat = keras.ops.squeeze(keras.ops.max(x, axis=(1, 2), keepdims=True))
    model = keras.Model(inp, L.Dense(4, name="b")(flat))
    assert "which squeezes every size-1 axis" in prune_units(model)[1]["b"]


def test_nested_model_has_a_true_reason_for_both_sides():
    inner_in = keras.Input((6, 6, 6))
    inner = keras.Model(inner_in, L.Conv2D(5, 1, name="inner_conv")(inner_in), name="block")
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(6, 1, name="a")(inp)
    out = L.Conv2D(4, 1, name="b")(inner(x))
    model = keras.Model(inp, out)
    units, reasons = prune_units(model)
    assert units == []
    assert "'block' (Functional), a nested model" in reasons["b"]
    assert "channels are not followed into or out of a nested model" in reasons["b"]
    assert reasons["block/inner_conv"].startswith("it is inside 'block' (Functional)")


def test_inception_resnet_scaled_residual_is_a_merge(tmp_path):
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(6, 1, name="a")(inp)
    r = L.Conv2D(6, 3, padding="same", name="r")(x)
    x = CustomScaleLayer(0.17, name="scaled_add")([x, r])
    out = L.Conv2D(4, 1, name="b")(L.Activation("relu")(x))
    model = keras.Model(inp, out)
    unit, _ = _prune_and_check(model, _x(model), consumer="r")
    assert sorted(s.layer for s in unit.producers) == ["a", "r"]
    assert sorted(s.layer for s in unit.consumers) == ["b", "r"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "build, size",
    [(keras.applications.EfficientNetB0, 64), (keras.applications.InceptionResNetV2, 75)],
    ids=["EfficientNetB0", "InceptionResNetV2"],
)
def test_real_models_prune_to_half_exactly_and_round_trip(build, size, tmp_path):
    import tfcompress as tfc

    model = build(weights=None, input_shape=(size, size, 3))
    _randomise_bn(model)
    units, reasons = prune_units(model)
    consumers = {s.layer for u in units for s in u.consumers}
    convs = [layer.name for layer in model.layers if type(layer) in (L.Conv2D, L.Dense)]
    assert len(consumers) == len(convs) - 1, reasons  # only the stem, which reads the image, is left
    kept = {u.name: np.arange(u.channels // 2) for u in units if u.channels > 1}
    new = apply_pruning(model, kept, units=units)
    reference = _copy(model)
    by_name = {u.name: u for u in units}
    for name, keep in kept.items():
        drop = np.setdiff1d(np.arange(by_name[name].channels), keep)
        for slot in by_name[name].consumers:
            layer = reference.get_layer(slot.layer)
            kernel, *rest = layer.get_weights()
            kernel[..., slot.index[drop], :] = 0.0
            layer.set_weights([kernel, *rest])
    x = np.random.default_rng(0).uniform(0, 255, size=(2, size, size, 3)).astype(np.float32)
    got = np.asarray(new(x, training=False))
    np.testing.assert_allclose(got, np.asarray(reference(x, training=False)), rtol=1e-3, atol=1e-5)
    ratio = tfc.model_cost(new, warn=False).macs / tfc.model_cost(model, warn=False).macs
    assert ratio < 0.4, ratio
    path = tmp_path / "pruned.keras"
    new.save(path)
    back = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(back(x, training=False)), got, rtol=1e-6, atol=1e-6)


def _randomise_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, size=w.shape).astype(np.float32) for w in layer.get_weights()])


def test_residual_add_of_a_concat_cuts_the_other_branch_alike(tmp_path):
    """InceptionResNet blocks: x (a concat of branches) + conv(x); the conv's outputs are cut like the concat."""
    inp = keras.Input((6, 6, 3))
    p = L.Conv2D(4, 1, name="p")(inp)
    q = L.Conv2D(2, 1, name="q")(inp)
    x = L.Concatenate(name="cat")([p, q])
    for i in range(2):
        branch = L.Conv2D(3, 1, activation="relu", name=f"branch{i}")(x)
        up = L.Conv2D(6, 1, name=f"up{i}")(L.Concatenate(name=f"mix{i}")([branch, x]))
        x = L.Activation("relu")(L.Add(name=f"add{i}")([x, up]))
    out = L.Conv2D(2, 1, name="b")(L.BatchNormalization(name="bn")(x))
    model = keras.Model(inp, out)
    units, reasons = prune_units(model)
    assert not reasons.keys() - {"p", "q"}, reasons
    by_first = {u.name: u for u in units}
    part = by_first["branch0[0:4]"]
    assert [(s.layer, s.index.tolist()) for s in part.producers] == [
        ("p", [0, 1, 2, 3]),
        ("up0", [0, 1, 2, 3]),
        ("up1", [0, 1, 2, 3]),
    ]
    assert [(s.layer, s.index.tolist()) for s in part.consumers][-1] == ("b", [0, 1, 2, 3])
    kept = {"branch0[0:4]": [0, 2], "branch0[4:6]": [1]}
    new = apply_pruning(model, kept, units=units)
    assert new.get_layer("up0").filters == 3 and new.get_layer("bn").get_weights()[0].shape == (3,)
    reference = _copy(model)
    for name, keep in kept.items():
        unit = by_first[name]
        drop = np.setdiff1d(np.arange(unit.channels), keep)
        for slot in unit.consumers:
            layer = reference.get_layer(slot.layer)
            kernel, *rest = layer.get_weights()
            kernel[..., slot.index[drop], :] = 0.0
            layer.set_weights([kernel, *rest])
    x = _x(model)
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(reference(x)), rtol=1e-4, atol=1e-5)


def test_compress_model_prunes_a_producer_cut_into_several_groups():
    """compress_model (no refit): the result equals the original with the dropped inputs zeroed, also when a
    producer (up0, up1) belongs to two groups and loses outputs in both."""
    import tfcompress as tfc

    inp = keras.Input((6, 6, 3))
    x = L.Concatenate(name="cat")([L.Conv2D(4, 1, name="p")(inp), L.Conv2D(2, 1, name="q")(inp)])
    for i in range(2):
        branch = L.Conv2D(3, 1, activation="relu", name=f"branch{i}")(x)
        up = L.Conv2D(6, 1, name=f"up{i}")(L.Concatenate(name=f"mix{i}")([branch, x]))
        x = L.Activation("relu")(L.BatchNormalization(name=f"bn{i}")(L.Add(name=f"add{i}")([x, up])))
    model = keras.Model(inp, L.Conv2D(2, 1, name="b")(x))
    data = np.random.default_rng(0).normal(size=(8, 6, 6, 3)).astype(np.float32)
    cp = tfc.ChannelPruningParameters
    params = cp(
        data, 200, False, "manual", cp.ManualModeParams([("b", 0.5)]), channel_selection="magnitude", reconstruct=False
    )
    new, stats = tfc.compress_model(model, lambda m, n: 0.0, None, "channel_pruning", "mac", params, verbose=0)
    assert new.get_layer("up0").filters == new.get_layer("up1").filters == 3  # 2 of 4 and 1 of 2 kept
    assert new.get_layer("bn1").get_weights()[0].shape == (3,)
    assert stats.mac_compression_ratio == pytest.approx(tfc.model_cost(new).macs / tfc.model_cost(model).macs)
    reference = _copy(model)
    for layer in reference.layers:  # zero the inputs each consumer lost (found by matching its kept kernel rows)
        if isinstance(layer, L.Conv2D) and layer.name not in ("p", "q"):
            kernel, bias = layer.get_weights()
            kept = new.get_layer(layer.name).get_weights()[0]
            # rows are cut to the kept outputs too (up0/up1 are producers): match a kept row's values as a subset
            rows = [i for i in range(kernel.shape[-2]) for j in range(kept.shape[-2]) if _subset(kept, j, kernel, i)]
            assert len(rows) == kept.shape[-2]
            kernel[..., np.setdiff1d(np.arange(kernel.shape[-2]), rows), :] = 0.0
            layer.set_weights([kernel, bias])
    np.testing.assert_allclose(np.asarray(new(data)), np.asarray(reference(data)), rtol=1e-4, atol=1e-5)


def _subset(kept, j, kernel, i):
    return bool(np.isin(kept[..., j, :].ravel(), kernel[..., i, :].ravel()).all())


@keras.saving.register_keras_serializable(package="test_pruning_layers")
class _Block(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = L.Conv2D(6, 1, name="inner")

    def call(self, x):
        return x + self.inner(x)


def test_layers_inside_a_custom_layer_have_a_true_reason():
    import tfcompress as tfc

    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(6, 1, name="a")(inp)
    model = keras.Model(inp, L.Conv2D(2, 1, name="b")(_Block(name="block")(x)))
    units, reasons = prune_units(model)
    assert units == []
    assert "'block' (_Block), which is not a known channel-preserving layer" in reasons["b"]
    assert reasons["block/inner"].startswith("it is inside the custom layer 'block' (_Block)")
    data = np.zeros((4, 6, 6, 3), np.float32)
    cp = tfc.ChannelPruningParameters
    params = cp(data, 100, False, "manual", cp.ManualModeParams([("block/inner", 0.5)]))
    with pytest.raises(ValueError, match="'block/inner': it is inside the custom layer"):
        tfc.compress_model(model, lambda m, n: 0.0, None, "channel_pruning", "mac", params, verbose=0)


def test_compress_model_prunes_through_se_block_prelu_and_group_norm(tmp_path):
    import tfcompress as tfc

    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="a")(inp)
    x = L.PReLU(shared_axes=[1, 2], name="prelu")(L.GroupNormalization(groups=-1, name="gn")(x))
    se = L.Reshape((1, 1, 8), name="se_reshape")(L.GlobalAveragePooling2D(name="gap")(x))
    se = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(L.Conv2D(4, 1, activation="relu", name="se_reduce")(se))
    x = L.Conv2D(8, 3, padding="same", name="c")(L.Multiply(name="excite")([x, se]))
    model = keras.Model(inp, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x)))
    data = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32)
    cp = tfc.ChannelPruningParameters
    params = cp(data, 300, False, "manual", cp.ManualModeParams([("c", 0.5), ("head", 0.5)]))
    new, stats = tfc.compress_model(model, lambda m, n: 0.0, None, "channel_pruning", "mac", params, verbose=0)
    assert [new.get_layer(n).filters for n in ("a", "se_expand", "c")] == [4, 4, 4]
    assert tuple(new.get_layer("se_reshape").target_shape) == (1, 1, 4)
    assert new.get_layer("prelu").get_weights()[0].shape == (1, 1, 4)
    assert stats.mac_compression_ratio == pytest.approx(tfc.model_cost(new).macs / tfc.model_cost(model).macs)
    assert stats.mac_compression_ratio < 0.5
    new.save(tmp_path / "se.keras")
    back = keras.models.load_model(tmp_path / "se.keras")
    np.testing.assert_allclose(np.asarray(back(data)), np.asarray(new(data)), rtol=1e-5, atol=1e-6)


def test_grouped_conv_reason_names_its_groups():
    model = _chain([L.Conv2D(6, 3, padding="same", groups=3, name="grouped")])
    _, reasons = prune_units(model)
    assert reasons["grouped"] == "'grouped' (Conv2D): a grouped Conv2D (groups=3), which is not winnowed"
    assert "'grouped' (Conv2D), a grouped Conv2D (groups=3)" in reasons["b"]
