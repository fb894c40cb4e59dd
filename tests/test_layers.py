"""Tests of the decomposed Keras layers in ``tfcompress.layers``."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tfcompress import decompose as dc
from tfcompress.layers import SpatialSVDConv2D, SVDDense, TuckerConv2D, WeightSVDConv2D

# database=None: hypothesis must not write a .hypothesis directory into the working tree.
PROPERTY = settings(max_examples=20, deadline=None, database=None)

CONV_CLASSES = [WeightSVDConv2D, SpatialSVDConv2D, TuckerConv2D]
UNFOLD = {WeightSVDConv2D: dc.weight_svd_unfold, SpatialSVDConv2D: dc.spatial_svd_unfold}
FACTOR_NAMES = {
    WeightSVDConv2D: ["kernel_a", "kernel_b"],
    SpatialSVDConv2D: ["kernel_v", "kernel_h"],
    TuckerConv2D: ["kernel_in", "kernel_core", "kernel_out"],
}


# ---------------------------------------------------------------- helpers


def randomize(layer: keras.layers.Layer, rng: np.random.Generator) -> None:
    """Give every weight of ``layer`` random values of a scale that keeps outputs O(1)."""
    weights = []
    for w in layer.get_weights():
        fan_in = int(np.prod(w.shape[:-1])) if w.ndim > 1 else 1
        weights.append((rng.normal(size=w.shape) / np.sqrt(fan_in)).astype(w.dtype))
    layer.set_weights(weights)


def make_conv(in_channels: int, *args, seed: int = 0, **kwargs) -> keras.layers.Conv2D:
    conv = keras.layers.Conv2D(*args, **kwargs)
    conv.build((None, None, None, in_channels))
    randomize(conv, np.random.default_rng(seed))
    return conv


def make_dense(in_features: int, *args, seed: int = 0, **kwargs) -> keras.layers.Dense:
    dense = keras.layers.Dense(*args, **kwargs)
    dense.build((None, in_features))
    randomize(dense, np.random.default_rng(seed))
    return dense


def decompose_layer(cls, layer, rank):
    if cls is TuckerConv2D:
        return cls.from_layer(layer, ranks=rank)
    return cls.from_layer(layer, rank=rank)


def conv_with_kernel(conv: keras.layers.Conv2D, kernel: np.ndarray) -> keras.layers.Conv2D:
    """A copy of ``conv`` (same config and bias) whose kernel is ``kernel``."""
    config = conv.get_config()
    config["name"] = conv.name + "_ref"
    clone = keras.layers.Conv2D.from_config(config)
    clone.build((None, None, None, kernel.shape[2]))
    clone.set_weights([kernel.astype("float32"), *conv.get_weights()[1:]])
    return clone


def assert_outputs_close(got, want, atol: float = 1e-4) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol * scale)


def fro(a) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64).ravel()))


def hits_tf_conv_bug(cls, in_channels: int, strides: tuple[int, int], out_width: int, rank=None) -> bool:
    """Whether a convolution of the comparison runs into a TensorFlow (not tfcompress) bug.

    TF 2.21's oneDNN float32 ``conv2d`` on the CPU returns wrong values for a batch > 1 when the
    convolution has ONE input channel, strides ``(1, s > 1)`` and a one-column output (checked against
    float64, which does not use oneDNN, and with ``TF_ENABLE_ONEDNN_OPTS=0``). ``cls=None`` asks about the
    original ``Conv2D``, otherwise about the stages of the decomposed layer; the strided stage of each
    produces the final output width. See ``test_known_tf_onednn_conv_bug``.
    """
    row_stride, col_stride = strides
    if out_width != 1:
        return False
    if cls is None:
        return in_channels == 1 and row_stride == 1 and col_stride > 1
    if cls is SpatialSVDConv2D:  # the horizontal stage has `rank` inputs and strides (1, sw)
        return rank == 1 and col_stride > 1
    first_rank = rank[0] if cls is TuckerConv2D else rank  # inputs of the strided (second) stage
    return first_rank == 1 and row_stride == 1 and col_stride > 1


@st.composite
def conv_cases(draw):
    """A Conv2D configuration and an input large enough for it (strides and dilation are never combined)."""
    kernel_size = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    if draw(st.booleans()):
        strides, dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))), (1, 1)
    else:
        strides, dilation = (1, 1), (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    size = tuple((k - 1) * d + 1 + draw(st.integers(0, 5)) for k, d in zip(kernel_size, dilation, strict=True))
    return {
        "in_channels": draw(st.integers(1, 6)),
        "filters": draw(st.integers(1, 6)),
        "kernel_size": kernel_size,
        "strides": strides,
        "dilation_rate": dilation,
        "padding": draw(st.sampled_from(["valid", "same"])),
        "activation": draw(st.sampled_from([None, "relu", "tanh"])),
        "use_bias": draw(st.booleans()),
        "size": size,
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def build_case(case):
    case = dict(case)
    in_channels, size, seed = case.pop("in_channels"), case.pop("size"), case.pop("seed")
    filters = case.pop("filters")
    conv = make_conv(in_channels, filters, seed=seed, **case)
    x = np.random.default_rng(seed + 1).normal(size=(2, *size, in_channels)).astype("float32")
    return conv, x


# ---------------------------------------------------------------- full-rank equivalence


@PROPERTY
@given(case=conv_cases())
def test_full_rank_conv_layers_equal_the_original(case):
    conv, x = build_case(case)
    out_width = conv.compute_output_shape(x.shape)[2]
    assume(not hits_tf_conv_bug(None, case["in_channels"], case["strides"], out_width))
    want = np.asarray(conv(x))
    kernel_shape = tuple(conv.kernel.shape)
    for cls in CONV_CLASSES:
        rank = cls.max_rank_for(kernel_shape)
        if hits_tf_conv_bug(cls, case["in_channels"], case["strides"], out_width, rank):
            continue
        layer = decompose_layer(cls, conv, rank)
        got = np.asarray(layer(x))
        assert got.shape == want.shape, (cls.__name__, got.shape, want.shape)
        assert tuple(layer.compute_output_shape(x.shape)) == want.shape
        assert_outputs_close(got, want)
        np.testing.assert_allclose(layer.reconstructed_kernel(), conv.get_weights()[0], atol=1e-5)


@PROPERTY
@given(
    in_features=st.integers(1, 12),
    units=st.integers(1, 12),
    seq=st.sampled_from([None, 1, 3]),
    activation=st.sampled_from([None, "relu", "sigmoid"]),
    use_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_full_rank_svd_dense_equals_the_original(in_features, units, seq, activation, use_bias, seed):
    dense = make_dense(in_features, units, activation=activation, use_bias=use_bias, seed=seed)
    shape = (2, in_features) if seq is None else (2, seq, in_features)
    x = np.random.default_rng(seed + 1).normal(size=shape).astype("float32")
    layer = SVDDense.from_layer(dense, rank=SVDDense.max_rank_for((in_features, units)))
    want = np.asarray(dense(x))
    got = np.asarray(layer(x))
    assert got.shape == want.shape
    assert tuple(layer.compute_output_shape(x.shape)) == want.shape
    assert_outputs_close(got, want)


def test_compute_output_shape_with_unknown_dimensions():
    conv = make_conv(4, 6, (3, 2), strides=(2, 1), padding="same")
    for cls in CONV_CLASSES:
        layer = decompose_layer(cls, conv, (2, 3) if cls is TuckerConv2D else 2)
        symbolic = layer(keras.Input((None, None, 4)))
        assert tuple(symbolic.shape) == (None, None, None, 6)
        assert layer.compute_output_shape((None, 11, None, 4)) == (None, 6, None, 6)


def test_full_rank_tucker_of_an_expanding_1x1_conv():
    """N > kh*kw*C: the thin SVD of the mode-N unfolding has fewer than N vectors (regression test)."""
    conv = make_conv(3, 8, 1, seed=3)
    layer = TuckerConv2D.from_layer(conv, ranks=(3, 8))
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype("float32")
    assert_outputs_close(layer(x), conv(x))


# ---------------------------------------------------------------- low rank: optimal and the same function


@PROPERTY
@given(case=conv_cases(), fractions=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_low_rank_layers_compute_their_reconstructed_kernel(case, fractions):
    conv, x = build_case(case)
    out_width = conv.compute_output_shape(x.shape)[2]
    assume(not hits_tf_conv_bug(None, case["in_channels"], case["strides"], out_width))
    kernel = conv.get_weights()[0].astype(np.float64)
    c = kernel.shape[2]
    for cls in CONV_CLASSES:
        bound = cls.max_rank_for(kernel.shape)
        if cls is TuckerConv2D:
            rank = tuple(1 + int(f * (b - 1)) for f, b in zip(fractions, bound, strict=True))
        else:
            rank = 1 + int(fractions[0] * (bound - 1))
        layer = decompose_layer(cls, conv, rank)
        approx = layer.reconstructed_kernel()
        assert approx.shape == kernel.shape

        # the error is the optimal one of the scheme's own unfolding
        if cls is TuckerConv2D:
            expected = fro(kernel - dc.tucker2_compose(*dc.tucker2_factors(kernel, rank, layer.hooi_iterations)))
        else:
            expected = dc.TruncatedSVD.of(UNFOLD[cls](kernel)).residual(rank)
        np.testing.assert_allclose(fro(kernel - approx), expected, rtol=1e-4, atol=1e-5 * fro(kernel))

        # the layer computes exactly the Conv2D with the reconstructed kernel ("same function")
        if hits_tf_conv_bug(cls, c, conv.strides, out_width, rank):
            continue
        reference = conv_with_kernel(conv, approx)
        assert_outputs_close(layer(x), reference(x))


@pytest.mark.xfail(
    reason="TensorFlow 2.21 oneDNN conv2d bug, not tfcompress (see hits_tf_conv_bug)",
    raises=AssertionError,
    strict=False,
)
@pytest.mark.parametrize("cls", CONV_CLASSES)
def test_known_tf_onednn_conv_bug(cls):
    """Rank 1, strides (1, 2), one output column: the strided stage has one input channel; TF gets it wrong."""
    conv = make_conv(3, 4, 3, strides=(1, 2), seed=5)
    layer = decompose_layer(cls, conv, (1, 2) if cls is TuckerConv2D else 1)
    x = np.random.default_rng(0).normal(size=(4, 9, 3, 3)).astype("float32")
    assert hits_tf_conv_bug(cls, 3, conv.strides, conv.compute_output_shape(x.shape)[2], layer.rank)
    reference = conv_with_kernel(conv, layer.reconstructed_kernel())
    # one example at a time is fine: the bug needs a batch > 1
    one_by_one = np.concatenate([np.asarray(layer(x[i : i + 1])) for i in range(len(x))])
    assert_outputs_close(one_by_one, reference(x))
    assert_outputs_close(layer(x), reference(x))  # fails while TensorFlow has the bug


@pytest.mark.parametrize("cls", [WeightSVDConv2D, SpatialSVDConv2D])
def test_layer_uses_the_right_unfolding(cls):
    """The two SVD schemes give clearly different errors on a non-square kernel; each matches its own."""
    conv = make_conv(6, 5, (3, 2), seed=11)
    kernel = conv.get_weights()[0].astype(np.float64)
    errors = {k: dc.TruncatedSVD.of(unfold(kernel)).residual(2) for k, unfold in UNFOLD.items()}
    assert abs(errors[WeightSVDConv2D] - errors[SpatialSVDConv2D]) > 0.05 * fro(kernel)
    layer = cls.from_layer(conv, rank=2)
    assert fro(kernel - layer.reconstructed_kernel()) == pytest.approx(errors[cls], rel=1e-4)


@PROPERTY
@given(
    in_features=st.integers(1, 12),
    units=st.integers(1, 12),
    rank_fraction=st.floats(0, 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_low_rank_svd_dense(in_features, units, rank_fraction, seed):
    dense = make_dense(in_features, units, activation="relu", seed=seed)
    rank = 1 + int(rank_fraction * (min(in_features, units) - 1))
    layer = SVDDense.from_layer(dense, rank=rank)
    kernel = dense.get_weights()[0].astype(np.float64)
    approx = layer.reconstructed_kernel()
    expected = dc.TruncatedSVD.of(kernel).residual(rank)
    np.testing.assert_allclose(fro(kernel - approx), expected, rtol=1e-4, atol=1e-5 * fro(kernel))
    reference = make_dense(in_features, units, activation="relu")
    reference.set_weights([approx.astype("float32"), dense.get_weights()[1]])
    x = np.random.default_rng(seed + 1).normal(size=(3, 2, in_features)).astype("float32")
    assert_outputs_close(layer(x), reference(x))


# ---------------------------------------------------------------- configs and serialization


@pytest.mark.parametrize(
    ("cls", "key", "rank"),
    [(WeightSVDConv2D, "rank", 2), (SpatialSVDConv2D, "rank", 3), (TuckerConv2D, "ranks", (2, 3))],
)
def test_conv_config_round_trip(cls, key, rank):
    conv = make_conv(4, 5, (3, 2), strides=(2, 1), padding="same", activation="relu", use_bias=False, name="cfg")
    layer = decompose_layer(cls, conv, rank)
    config = layer.get_config()
    assert (tuple(config[key]) if key == "ranks" else config[key]) == rank
    if cls is TuckerConv2D:
        assert config["hooi_iterations"] == layer.hooi_iterations
    for name in ("filters", "kernel_size", "strides", "padding", "dilation_rate", "use_bias"):
        assert tuple(np.atleast_1d(config[name])) == tuple(np.atleast_1d(getattr(conv, name))), name
    assert config["name"] == "cfg"

    clone = cls.from_config(config)
    assert clone.get_config() == config
    x = np.random.default_rng(0).normal(size=(1, 7, 6, 4)).astype("float32")
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x), layer(x))

    # through Keras' registered (JSON) serialization, as in a .keras file
    assert keras.saving.get_registered_name(cls) == f"tfcompress>{cls.__name__}"
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(keras.saving.serialize_keras_object(layer))))
    assert type(revived) is cls
    assert revived.get_config() == config


def test_svd_dense_config_round_trip():
    dense = make_dense(16, 6, activation="tanh", name="fc")
    layer = SVDDense.from_layer(dense, rank=3)
    config = layer.get_config()
    assert config["rank"] == 3 and config["ratio"] is None and config["units"] == 6
    clone = SVDDense.from_config(config)
    assert clone.get_config() == config
    clone.build((None, 16))
    clone.set_weights(layer.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 16)).astype("float32")
    np.testing.assert_array_equal(clone(x), layer(x))
    assert keras.saving.get_registered_name(SVDDense) == "tfcompress>SVDDense"


@pytest.mark.parametrize(("in_features", "units", "ratio"), [(64, 10, 0.5), (64, 10, 1.0), (7, 300, 0.3), (5, 5, 0.01)])
def test_svd_dense_ratio_convention(in_features, units, ratio):
    layer = SVDDense(units, ratio=ratio)
    unbuilt = layer.get_config()
    assert unbuilt["rank"] is None and unbuilt["ratio"] == ratio
    layer.build((None, in_features))
    expected = max(1, int(in_features * units * ratio / (in_features + units)))
    assert layer.rank == expected
    assert layer.kernel_a.shape == (in_features, expected)
    built = layer.get_config()  # the resolved rank is stored, so reloading is exact
    assert built["rank"] == expected and built["ratio"] is None
    assert SVDDense.from_config(built).rank == expected


def test_svd_dense_ratio_example_value():
    layer = SVDDense(10, ratio=0.5)
    layer.build((None, 64))
    assert layer.rank == 4  # int(64 * 10 * 0.5 / 74) = int(4.32)


@pytest.mark.parametrize("kwargs", [{}, {"rank": 2, "ratio": 0.5}])
def test_svd_dense_needs_exactly_one_of_rank_and_ratio(kwargs):
    with pytest.raises(ValueError, match="exactly one of"):
        SVDDense(4, name="fc_both", **kwargs)


# ---------------------------------------------------------------- user mistakes


@pytest.mark.parametrize("cls", [*CONV_CLASSES, SVDDense])
def test_rank_below_one(cls):
    source = make_dense(8, 6, name="tiny_rank") if cls is SVDDense else make_conv(4, 6, 3, name="tiny_rank")
    for bad in [0, (0, 2)] if cls is TuckerConv2D else [0, -3]:
        with pytest.raises(ValueError, match="tiny_rank"):
            decompose_layer(cls, source, bad)


@pytest.mark.parametrize("cls", [*CONV_CLASSES, SVDDense])
def test_rank_above_maximum_names_the_layer(cls):
    if cls is SVDDense:
        source, too_big = make_dense(8, 6, name="big_rank"), 7
    else:
        source = make_conv(4, 6, (3, 2), name="big_rank")
        bound = cls.max_rank_for(tuple(source.kernel.shape))
        too_big = (bound[0] + 1, bound[1]) if cls is TuckerConv2D else bound + 1
    with pytest.raises(ValueError, match=r"big_rank.*exceed"):
        decompose_layer(cls, source, too_big)
    if cls is TuckerConv2D:
        with pytest.raises(ValueError, match="big_rank"):
            decompose_layer(cls, source, (4, 7))


def test_max_rank_bounds():
    assert WeightSVDConv2D.max_rank_for((3, 2, 5, 7)) == 5
    assert WeightSVDConv2D.max_rank_for((1, 1, 50, 7)) == 7
    assert SpatialSVDConv2D.max_rank_for((3, 2, 5, 7)) == 14
    assert SpatialSVDConv2D.max_rank_for((3, 2, 1, 7)) == 3
    assert TuckerConv2D.max_rank_for((3, 2, 5, 7)) == (5, 7)
    assert SVDDense.max_rank_for((9, 4)) == 4


@pytest.mark.parametrize("cls", CONV_CLASSES)
def test_unsupported_source_layers(cls):
    rank = (1, 1) if cls is TuckerConv2D else 1
    grouped = keras.layers.Conv2D(4, 3, groups=2, name="grouped")
    grouped.build((None, 8, 8, 4))
    with pytest.raises(ValueError, match="grouped"):
        decompose_layer(cls, grouped, rank)

    channels_first = keras.layers.Conv2D(4, 3, data_format="channels_first", name="chw")
    channels_first.build((None, 3, 8, 8))
    with pytest.raises(ValueError, match="chw"):
        decompose_layer(cls, channels_first, rank)

    unbuilt = keras.layers.Conv2D(4, 3, name="never_built")
    with pytest.raises(ValueError, match=r"never_built.*not built"):
        decompose_layer(cls, unbuilt, rank)

    others = [
        (keras.layers.DepthwiseConv2D(3, name="depthwise"), (None, 8, 8, 4)),
        (keras.layers.SeparableConv2D(4, 3, name="separable"), (None, 8, 8, 4)),
        (keras.layers.Conv1D(4, 3, name="conv1d"), (None, 8, 4)),
        (keras.layers.Conv2DTranspose(4, 3, name="transposed"), (None, 8, 8, 4)),
        (keras.layers.Dense(4, name="dense_in_conv"), (None, 4)),
    ]
    for layer, shape in others:
        layer.build(shape)
        with pytest.raises(TypeError, match=layer.name):
            decompose_layer(cls, layer, rank)


def test_unsupported_sources_for_svd_dense():
    conv = make_conv(4, 4, 1, name="conv_in_dense")
    with pytest.raises(TypeError, match="conv_in_dense"):
        SVDDense.from_layer(conv, rank=1)
    with pytest.raises(ValueError, match=r"unbuilt_fc.*not built"):
        SVDDense.from_layer(keras.layers.Dense(4, name="unbuilt_fc"), rank=1)


@pytest.mark.parametrize("cls", CONV_CLASSES)
def test_channels_first_layer_cannot_be_constructed(cls):
    rank = {"ranks": (1, 1)} if cls is TuckerConv2D else {"rank": 1}
    with pytest.raises(ValueError, match="direct_chw"):
        cls(4, 3, data_format="channels_first", name="direct_chw", **rank)


@pytest.mark.parametrize("cls", [*CONV_CLASSES, SVDDense])
def test_set_decomposed_weights_rejects_wrong_weights(cls):
    if cls is SVDDense:
        source, other = make_dense(8, 6, name="setw"), make_dense(9, 6)
    else:
        source, other = make_conv(4, 6, (3, 2), name="setw"), make_conv(4, 6, (2, 3))
    layer = decompose_layer(cls, source, (2, 2) if cls is TuckerConv2D else 2)
    before = layer.get_weights()
    kernel, bias = source.get_weights()
    bad_calls = [
        [kernel],  # bias missing
        [kernel, bias, bias],  # one too many
        [other.get_weights()[0], bias],  # wrong kernel shape
        [kernel, bias[:-1]],  # wrong bias shape
        [kernel[..., None], bias],  # wrong kernel rank
    ]
    for weights in bad_calls:
        with pytest.raises(ValueError, match="setw"):
            layer.set_decomposed_weights(weights)
        # a rejected call changes nothing
        for got, want in zip(layer.get_weights(), before, strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cls", [*CONV_CLASSES, SVDDense])
def test_unbuilt_decomposed_layer_says_so(cls):
    if cls is SVDDense:
        layer, source = SVDDense(6, rank=2, name="fresh"), make_dense(8, 6)
    else:
        rank = {"ranks": (2, 2)} if cls is TuckerConv2D else {"rank": 2}
        layer, source = cls(6, 3, name="fresh", **rank), make_conv(4, 6, 3)
    with pytest.raises(ValueError, match=r"fresh.*built"):
        layer.set_decomposed_weights(source.get_weights())
    with pytest.raises(ValueError, match=r"fresh.*built"):
        layer.reconstructed_kernel()


# ---------------------------------------------------------------- what from_layer preserves


@pytest.mark.parametrize("cls", CONV_CLASSES)
@pytest.mark.parametrize(
    "options",
    [
        {"strides": (2, 3), "padding": "same", "activation": "relu", "use_bias": False},
        {"dilation_rate": (2, 1), "padding": "valid", "activation": "tanh", "use_bias": True},
    ],
)
def test_from_layer_preserves_the_conv_configuration(cls, options):
    conv = make_conv(4, 6, (3, 2), name="keep_me", trainable=False, **options)
    layer = decompose_layer(cls, conv, (2, 3) if cls is TuckerConv2D else 2)
    assert layer.name == "keep_me"
    assert layer.filters == 6 and layer.kernel_size == (3, 2)
    assert layer.strides == conv.strides and layer.padding == conv.padding
    assert layer.dilation_rate == conv.dilation_rate
    assert keras.activations.serialize(layer.activation) == keras.activations.serialize(conv.activation)
    assert layer.use_bias == conv.use_bias
    assert (layer.bias is None) == (not conv.use_bias)
    assert len(layer.weights) == len(FACTOR_NAMES[cls]) + int(conv.use_bias)
    assert layer.trainable is False and layer.trainable_weights == []
    assert layer.dtype_policy.name == "float32"


def test_from_layer_preserves_the_dense_configuration():
    dense = make_dense(8, 6, activation="softmax", use_bias=False, name="head", trainable=False)
    layer = SVDDense.from_layer(dense, rank=3)
    assert layer.name == "head" and layer.units == 6 and layer.rank == 3
    assert keras.activations.serialize(layer.activation) == keras.activations.serialize(dense.activation)
    assert layer.use_bias is False and layer.bias is None and len(layer.weights) == 2
    assert layer.trainable is False and layer.trainable_weights == []


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class CountingInitializer(keras.initializers.GlorotUniform):
    """Glorot uniform that counts its calls (a serializable custom initializer)."""

    calls = 0

    def __call__(self, shape, dtype=None):
        CountingInitializer.calls += 1
        return super().__call__(shape, dtype)


@pytest.mark.parametrize("cls", [*CONV_CLASSES, SVDDense])
def test_from_layer_draws_no_random_factors_and_keeps_the_initializer(cls):
    if cls is SVDDense:
        source = make_dense(8, 6, kernel_initializer=CountingInitializer(seed=3))
        rank = 3
    else:
        source = make_conv(4, 6, (3, 2), kernel_initializer=CountingInitializer(seed=3))
        rank = (2, 3) if cls is TuckerConv2D else 2
    CountingInitializer.calls = 0
    layer = decompose_layer(cls, source, rank)
    # the factors are assigned from the source's weights at once: drawing random ones first is wasted work
    assert CountingInitializer.calls == 0
    # ... but the layer keeps the source's initializer (config, re-creation, a later re-initialisation)
    assert isinstance(layer.kernel_initializer, CountingInitializer)
    assert layer.get_config()["kernel_initializer"] == keras.initializers.serialize(source.kernel_initializer)
    again = type(layer).from_config(layer.get_config())
    again.build((None, 8) if cls is SVDDense else (None, None, None, 4))
    assert CountingInitializer.calls == len(FACTOR_NAMES.get(cls, ["kernel_a", "kernel_b"]))  # a plain build draws all
    np.testing.assert_allclose(layer.reconstructed_kernel(), decompose_layer(cls, source, rank).reconstructed_kernel())


@pytest.mark.parametrize("cls", [*CONV_CLASSES, SVDDense])
def test_from_layer_preserves_float64(cls):
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            pytest.skip("JAX computes in float32 unless JAX_ENABLE_X64=1")
    global_policy = keras.config.dtype_policy().name
    if cls is SVDDense:
        source = make_dense(8, 6, dtype="float64")
        x = np.random.default_rng(0).normal(size=(2, 8))
    else:
        source = make_conv(4, 6, (3, 2), padding="same", dtype="float64")
        x = np.random.default_rng(0).normal(size=(2, 7, 7, 4))
    full = SVDDense.max_rank_for((8, 6)) if cls is SVDDense else cls.max_rank_for(tuple(source.kernel.shape))
    layer = decompose_layer(cls, source, full)
    assert layer.dtype_policy.name == "float64"
    assert all(w.dtype == "float64" for w in layer.weights)
    got = layer(x)
    assert keras.backend.standardize_dtype(got.dtype) == "float64"
    # float64 all the way: full rank agrees far beyond float32 round-off
    np.testing.assert_allclose(np.asarray(got), np.asarray(source(x)), atol=1e-10)
    assert keras.config.dtype_policy().name == global_policy


@pytest.mark.parametrize("cls", [*CONV_CLASSES, SVDDense])
def test_from_layer_preserves_mixed_precision(cls):
    global_policy = keras.config.dtype_policy().name
    if cls is SVDDense:
        source = make_dense(8, 6, dtype="mixed_float16")
        x = np.random.default_rng(0).normal(size=(2, 8)).astype("float32")
        rank = 6
    else:
        source = make_conv(4, 6, (3, 2), padding="same", dtype="mixed_float16")
        x = np.random.default_rng(0).normal(size=(2, 7, 7, 4)).astype("float32")
        rank = cls.max_rank_for(tuple(source.kernel.shape))
    layer = decompose_layer(cls, source, rank)
    assert layer.dtype_policy.name == "mixed_float16"
    assert layer.compute_dtype == "float16" and layer.variable_dtype == "float32"
    assert all(w.dtype == "float32" for w in layer.weights)
    got = layer(x)
    assert keras.backend.standardize_dtype(got.dtype) == "float16"
    want = np.asarray(source(x), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), want, atol=2e-2 * max(1.0, np.abs(want).max()))
    assert keras.config.dtype_policy().name == global_policy
