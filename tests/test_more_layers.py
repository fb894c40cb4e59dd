"""The decomposed Conv1D, SeparableConv2D and Conv2DTranspose layers: exactness, optimality, config, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfcompress import unfoldings as uf
from tfcompress.layers import SpatialSVDConv1D, SVDSeparableConv2D, WeightSVDConv1D, WeightSVDConv2DTranspose

PROPERTY = settings(max_examples=15, deadline=None, database=None)
NEW = [WeightSVDConv1D, SpatialSVDConv1D, SVDSeparableConv2D, WeightSVDConv2DTranspose]
SOURCE = {
    WeightSVDConv1D: keras.layers.Conv1D,
    SpatialSVDConv1D: keras.layers.Conv1D,
    SVDSeparableConv2D: keras.layers.SeparableConv2D,
    WeightSVDConv2DTranspose: keras.layers.Conv2DTranspose,
}
UNFOLD = {
    WeightSVDConv1D: uf.conv1d_weight_svd_unfold,
    SpatialSVDConv1D: uf.conv1d_spatial_svd_unfold,
    SVDSeparableConv2D: uf.pointwise_svd_unfold,
    WeightSVDConv2DTranspose: uf.transpose_weight_svd_unfold,
}


def randomize(layer: keras.layers.Layer, rng: np.random.Generator) -> None:
    weights = []
    for w in layer.get_weights():
        fan_in = int(np.prod(w.shape[:-1])) if w.ndim > 1 else 1
        weights.append((rng.normal(size=w.shape) / np.sqrt(fan_in)).astype(w.dtype))
    layer.set_weights(weights)


def source_kernel(layer) -> np.ndarray:
    variable = layer.pointwise_kernel if isinstance(layer, keras.layers.SeparableConv2D) else layer.kernel
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)


@st.composite
def cases(draw, cls):
    """The geometry of a source layer of ``cls``'s kind, a seed for its weights and the input's shape."""
    c, n = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    strided = draw(st.booleans())
    spec = {
        "filters": n,
        "activation": draw(st.sampled_from([None, "relu", "tanh"])),
        "use_bias": draw(st.booleans()),
    }
    if cls in (WeightSVDConv1D, SpatialSVDConv1D):
        k = draw(st.integers(1, 5))
        stride, dilation = (draw(st.integers(2, 3)), 1) if strided else (1, draw(st.integers(1, 3)))
        padding = draw(st.sampled_from(["valid", "same", "causal"]))
        shape = ((k - 1) * dilation + 1 + draw(st.integers(0, 6)), c)
    else:
        k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        stride = (draw(st.integers(2, 3)), draw(st.integers(1, 3))) if strided else (1, 1)
        dilation = (1, 1) if strided else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        padding = draw(st.sampled_from(["valid", "same"]))
        if cls is SVDSeparableConv2D:
            spec["depth_multiplier"] = draw(st.integers(1, 3))
            shape = tuple((a - 1) * d + 1 + draw(st.integers(0, 4)) for a, d in zip(k, dilation, strict=True))
        else:
            # (TF 2.21's oneDNN conv2d_transpose aborts on padding="same" with an output_padding, for the
            # original Keras layer as well: only valid padding gets one)
            if strided and padding == "valid" and draw(st.booleans()):
                spec["output_padding"] = tuple(draw(st.integers(0, s - 1)) for s in stride)
            shape = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        shape = (*shape, c)
    spec.update(kernel_size=k, strides=stride, dilation_rate=dilation, padding=padding)
    return spec, shape, draw(st.integers(0, 2**31))


def build_case(cls, case):
    """The source layer (random weights) and an input for it."""
    spec, shape, seed = case
    rng = np.random.default_rng(seed)
    layer = SOURCE[cls](**spec)
    layer.build((None, *shape))
    randomize(layer, rng)
    x = rng.normal(size=(1, *shape)).astype("float32")  # batch 1: clear of TF 2.21's oneDNN batch>1 conv bug
    return layer, x


def assert_close(got, want) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


def swapped(layer, kernel: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``layer``'s output with its decomposed kernel replaced by ``kernel`` (restored afterwards)."""
    variable = layer.pointwise_kernel if isinstance(layer, keras.layers.SeparableConv2D) else layer.kernel
    original = keras.ops.convert_to_numpy(variable)
    variable.assign(kernel.astype("float32"))
    try:
        return np.asarray(layer(x))
    finally:
        variable.assign(original)


@pytest.mark.parametrize("cls", NEW, ids=lambda c: c.__name__)
@PROPERTY
@given(data=st.data())
def test_full_rank_equals_the_original_and_low_rank_is_the_reconstructed_kernel(cls, data):
    layer, x = build_case(cls, data.draw(cases(cls)))
    matrix = UNFOLD[cls](source_kernel(layer))
    full = min(matrix.shape)
    want = np.asarray(layer(x))
    exact = cls.from_layer(layer, rank=full)
    assert_close(exact(x), want)
    assert exact.compute_output_shape(x.shape) == want.shape
    # below full rank: the layer computes exactly the original layer with the reconstructed kernel swapped in
    # (the greedy search's in-place candidate), and that kernel is the Eckart-Young optimum
    rank = data.draw(st.integers(1, full))
    low = cls.from_layer(layer, rank=rank)
    kernel = low.reconstructed_kernel()
    assert kernel.shape == source_kernel(layer).shape == low.kernel_shape
    assert_close(low(x), swapped(layer, kernel, x))
    s = np.linalg.svd(matrix, compute_uv=False)
    np.testing.assert_allclose(
        np.linalg.norm(source_kernel(layer) - kernel), np.sqrt(np.sum(s[rank:] ** 2)), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("cls", NEW, ids=lambda c: c.__name__)
def test_config_round_trip_and_from_layer_keeps_the_configuration(cls):
    rng = np.random.default_rng(3)
    if cls in (WeightSVDConv1D, SpatialSVDConv1D):
        src = keras.layers.Conv1D(6, 3, strides=2, padding="same", activation="relu", name="src")
        shape = (11, 4)
    elif cls is SVDSeparableConv2D:
        src = keras.layers.SeparableConv2D(6, 3, depth_multiplier=2, padding="same", activation="relu", name="src")
        shape = (7, 7, 4)
    else:
        src = keras.layers.Conv2DTranspose(6, 3, strides=2, output_padding=1, activation="relu", name="src")
        shape = (5, 5, 4)
    src.build((None, *shape))
    randomize(src, rng)
    layer = cls.from_layer(src, rank=2)
    config = layer.get_config()
    assert config["name"] == "src" and config["rank"] == 2 and config["activation"] == "relu"
    for key in ("filters", "kernel_size", "strides", "padding", "dilation_rate", "use_bias"):
        assert tuple(np.atleast_1d(config[key])) == tuple(np.atleast_1d(src.get_config()[key])), key
    if cls is SVDSeparableConv2D:
        assert config["depth_multiplier"] == 2
    if cls is WeightSVDConv2DTranspose:
        assert tuple(config["output_padding"]) == (1, 1)
    clone = cls.from_config(config)
    x = rng.normal(size=(2, *shape)).astype("float32")
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(layer(x)))
    assert clone.get_config() == config


def test_separable_keeps_the_depthwise_kernel_and_splits_the_pointwise_one():
    src = keras.layers.SeparableConv2D(8, 3, depth_multiplier=2, name="sep")
    src.build((None, 6, 6, 3))
    randomize(src, np.random.default_rng(0))
    layer = SVDSeparableConv2D.from_layer(src, rank=4)
    assert [w.shape for w in layer.weights] == [(3, 3, 3, 2), (1, 1, 6, 4), (1, 1, 4, 8), (8,)]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.depthwise_kernel), src.get_weights()[0])
    assert layer.max_rank_for(layer.kernel_shape) == 6


def test_transpose_kernel_layout_and_rank_bound():
    src = keras.layers.Conv2DTranspose(5, (3, 2), strides=2, name="up")
    src.build((None, 4, 4, 7))
    layer = WeightSVDConv2DTranspose.from_layer(src, rank=7)
    assert layer.kernel_shape == (3, 2, 5, 7) == tuple(src.kernel.shape)
    assert [tuple(w.shape) for w in layer.weights[:2]] == [(1, 1, 7, 7), (3, 2, 5, 7)]
    assert WeightSVDConv2DTranspose.max_rank_for((3, 2, 5, 7)) == 7
    assert WeightSVDConv2DTranspose.max_rank_for((1, 1, 2, 7)) == 2


@pytest.mark.parametrize("cls", NEW, ids=lambda c: c.__name__)
def test_errors_name_the_layer(cls):
    source = SOURCE[cls]
    if source is keras.layers.Conv1D:
        src, shape = source(4, 3, name="too_big"), (None, 9, 3)
    else:
        src, shape = source(4, 3, name="too_big"), (None, 6, 6, 3)
    src.build(shape)
    with pytest.raises(ValueError, match=r"too_big.*exceeds the maximum rank"):
        cls.from_layer(src, rank=100)
    with pytest.raises(ValueError, match=r"rank must be >= 1, got 0"):
        cls(4, 3, rank=0, name="zero")
    with pytest.raises(ValueError, match=r"'pad'.*padding must be.*'full'"):
        cls(4, 3, rank=1, padding="full", name="pad")
    wrong = keras.layers.Dense(4, name="not_a_conv")
    wrong.build((None, 3))
    with pytest.raises(TypeError, match=rf"not_a_conv.*{source.__name__}"):
        cls.from_layer(wrong, rank=1)
    unbuilt = source(4, 3, name="never_built")
    with pytest.raises(ValueError, match=r"never_built.*not built"):
        cls.from_layer(unbuilt, rank=1)
    fresh = cls(4, 3, rank=1, name="fresh")
    with pytest.raises(ValueError, match=r"fresh.*built"):
        fresh.set_decomposed_weights(src.get_weights())
    fresh.build(shape)
    with pytest.raises(ValueError, match=r"fresh.*expects"):
        fresh.set_decomposed_weights(src.get_weights()[:-1])
    bad = [np.zeros((*np.asarray(w).shape[:-1], 9)) for w in src.get_weights()]
    with pytest.raises(ValueError, match=r"fresh.*does not match"):
        fresh.set_decomposed_weights(bad)


def test_conv1d_rejects_what_it_cannot_compute():
    grouped = keras.layers.Conv1D(4, 3, groups=2, name="grouped")
    grouped.build((None, 9, 4))
    with pytest.raises(ValueError, match=r"grouped.*groups=2"):
        WeightSVDConv1D.from_layer(grouped, rank=1)
    with pytest.raises(ValueError, match="strides > 1 cannot be combined"):
        SpatialSVDConv1D(4, 3, rank=1, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match=r"output_padding \(2, 2\) must be smaller"):
        WeightSVDConv2DTranspose(4, 3, rank=1, strides=2, output_padding=2)


def _source_for(cls, dtype):
    if cls in (WeightSVDConv1D, SpatialSVDConv1D):
        src, shape = keras.layers.Conv1D(6, 3, padding="causal", dtype=dtype), (9, 4)
    elif cls is SVDSeparableConv2D:
        src, shape = keras.layers.SeparableConv2D(6, 3, depth_multiplier=2, padding="same", dtype=dtype), (7, 7, 4)
    else:
        src, shape = keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same", dtype=dtype), (5, 5, 4)
    src.build((None, *shape))
    randomize(src, np.random.default_rng(0))
    return src, np.random.default_rng(1).normal(size=(2, *shape))


@pytest.mark.parametrize("cls", NEW, ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", ["float64", "mixed_float16"])
def test_from_layer_keeps_the_dtype_policy(cls, dtype):
    if dtype == "float64" and keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            pytest.skip("JAX computes in float32 unless JAX_ENABLE_X64=1")
    src, x = _source_for(cls, dtype)
    x = x if dtype == "float64" else x.astype("float32")
    full = min(UNFOLD[cls](source_kernel(src)).shape)
    layer = cls.from_layer(src, rank=full)
    assert layer.dtype_policy.name == dtype
    assert all(w.dtype == ("float64" if dtype == "float64" else "float32") for w in layer.weights)
    got, want = layer(x), src(x)
    assert keras.backend.standardize_dtype(got.dtype) == ("float64" if dtype == "float64" else "float16")
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    tolerance = 1e-10 if dtype == "float64" else 2e-2 * max(1.0, np.abs(want).max())
    np.testing.assert_allclose(got, want, atol=tolerance)


@keras.saving.register_keras_serializable(package="tests_more_layers")
class CountingInitializer(keras.initializers.GlorotUniform):
    """Glorot uniform that counts its calls (serializable, so a config with it can be re-created)."""

    calls = 0

    def __call__(self, shape, dtype=None):
        CountingInitializer.calls += 1
        return super().__call__(shape, dtype)


@pytest.mark.parametrize("cls", NEW, ids=lambda c: c.__name__)
def test_from_layer_draws_no_random_factors_and_keeps_the_initializers(cls):
    if cls is SVDSeparableConv2D:
        init = {"depthwise_initializer": CountingInitializer(seed=1), "pointwise_initializer": CountingInitializer(2)}
        src, shape = keras.layers.SeparableConv2D(6, 3, **init), (None, 7, 7, 4)
    elif cls is WeightSVDConv2DTranspose:
        src, shape = keras.layers.Conv2DTranspose(6, 3, kernel_initializer=CountingInitializer(1)), (None, 5, 5, 4)
    else:
        src, shape = keras.layers.Conv1D(6, 3, kernel_initializer=CountingInitializer(1)), (None, 9, 4)
    src.build(shape)
    CountingInitializer.calls = 0
    layer = cls.from_layer(src, rank=2)
    assert CountingInitializer.calls == 0  # the factors come from the source at once: no random draw first
    config = layer.get_config()
    if cls is SVDSeparableConv2D:
        assert config["depthwise_initializer"] == keras.initializers.serialize(src.depthwise_initializer)
        assert config["kernel_initializer"] == keras.initializers.serialize(src.pointwise_initializer)
    else:
        assert config["kernel_initializer"] == keras.initializers.serialize(src.kernel_initializer)
    again = cls.from_config(config)
    again.build(shape)
    assert CountingInitializer.calls == len(layer.weights) - 1  # a plain build draws every factor (not the bias)
    assert len(again.weights) == len(layer.weights)
