"""Tests of ``tfcompress.cost``: hand-computed MACs/params, ranks for a ratio, and whole-model costs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tfcompress as tfc
from tfcompress.cost import (
    LayerGeometry,
    decomposed_cost,
    layer_geometry,
    max_rank,
    model_cost,
    original_cost,
    rank_for_ratio,
    round_rank,
)
from tfcompress.layers import SpatialSVDConv2D, SVDDense, TuckerConv2D, WeightSVDConv2D

# database=None: hypothesis must not write a .hypothesis directory into the working tree.
FAST = settings(max_examples=150, deadline=None, database=None)


def called_conv(input_shape, *args, **kwargs):
    """A Conv2D (or other layer) called once on ``keras.Input(input_shape)`` inside a model."""
    inp = keras.Input(input_shape)
    layer = keras.layers.Conv2D(*args, **kwargs)
    keras.Model(inp, layer(inp))
    return layer


# ---------------------------------------------------------------- the worked examples of the issue


def test_issue_example_32_to_64_5x5_at_half_macs():
    conv = called_conv((14, 14, 32), 64, 5, padding="same", name="conv2")
    g = layer_geometry(conv)
    assert g == LayerGeometry("conv2d", 32, 64, (5, 5), (14, 14), (14, 14), name="conv2")
    # original: 14*14*5*5*32*64
    assert original_cost(g).macs == 10_035_200
    # spatial: 14*14*5*32*r + 14*14*5*r*64 = 94080 r; 5017600 / 94080 = 53.3
    assert rank_for_ratio(conv, 0.5, "spatial_svd", "mac") == 53
    # weight: 14*14*32*r + 14*14*25*r*64 = 319872 r; 5017600 / 319872 = 15.7
    assert rank_for_ratio(conv, 0.5, tfc.CompressionScheme.weight_svd, tfc.CostMetric.mac) == 15
    assert decomposed_cost(g, "spatial_svd", 53).macs == 94080 * 53
    assert decomposed_cost(g, "weight_svd", 15).macs == 319872 * 15


def test_issue_example_1_to_32_5x5_at_28x28():
    conv = called_conv((28, 28, 1), 32, 5, padding="same", name="conv1")
    # original 28*28*25*32 = 627200; spatial 28*28*5*1*r + 28*28*5*r*32 = 129360 r; 313600 / 129360 = 2.4
    assert rank_for_ratio(conv, 0.5, "spatial_svd") == 2
    assert max_rank(layer_geometry(conv), "spatial_svd") == 5  # min(C*kh, N*kw) = min(5, 160)


# ---------------------------------------------------------------- costs of single layers, by hand


def test_conv2d_cost_with_stride_and_valid_padding():
    conv = called_conv((17, 15, 6), 10, (3, 5), strides=2, name="c")
    g = layer_geometry(conv)
    assert g.in_hw == (17, 15) and g.out_hw == (8, 6) and g.kernel_size == (3, 5)
    assert original_cost(g).macs == 8 * 6 * 3 * 5 * 6 * 10
    assert original_cost(g).params == 3 * 5 * 6 * 10 + 10 == conv.count_params()
    no_bias = called_conv((17, 15, 6), 10, (3, 5), strides=2, use_bias=False)
    assert original_cost(layer_geometry(no_bias)).params == 3 * 5 * 6 * 10 == no_bias.count_params()


def test_decomposed_costs_by_hand():
    # input 16x12, output 14x10 ('valid'), 3x3 kernel, C=32, N=64, bias; Ho*W != H*Wo
    g = LayerGeometry("conv2d", 32, 64, (3, 3), (16, 12), (14, 10))
    r = 7
    assert decomposed_cost(g, "weight_svd", r).macs == 16 * 12 * 32 * r + 14 * 10 * 3 * 3 * r * 64
    assert decomposed_cost(g, "weight_svd", r).params == 32 * r + 3 * 3 * r * 64 + 64
    assert decomposed_cost(g, "spatial_svd", r).macs == 14 * 12 * 3 * 32 * r + 14 * 10 * 3 * r * 64
    assert decomposed_cost(g, "spatial_svd", r).params == 3 * 32 * r + 3 * r * 64 + 64
    r1, r2 = 5, 9
    assert decomposed_cost(g, "tucker", (r1, r2)).macs == 16 * 12 * 32 * r1 + 14 * 10 * 9 * r1 * r2 + 14 * 10 * r2 * 64
    assert decomposed_cost(g, "tucker", (r1, r2)).params == 32 * r1 + 9 * r1 * r2 + r2 * 64 + 64
    assert decomposed_cost(g, "tucker", 6) == decomposed_cost(g, "tucker", (6, 6))
    d = LayerGeometry("dense", 100, 30, positions=7, use_bias=False)
    assert original_cost(d) == tfc.cost.Cost(7 * 100 * 30, 100 * 30)
    assert decomposed_cost(d, "svd", 4) == tfc.cost.Cost(7 * 130 * 4, 130 * 4)
    # a Dense layer asked for weight/spatial SVD is split with plain SVD
    assert decomposed_cost(d, "weight_svd", 4) == decomposed_cost(d, "svd", 4)


def test_max_rank_per_scheme():
    g = LayerGeometry("conv2d", 6, 40, (3, 5))
    assert max_rank(g, "weight_svd") == 6  # min(C, kh*kw*N)
    assert max_rank(g, "spatial_svd") == 18  # min(C*kh, N*kw) = min(18, 200)
    assert max_rank(g, "tucker") == (6, 40)
    assert max_rank(LayerGeometry("conv2d", 64, 2, (3, 3)), "weight_svd") == 18
    assert max_rank(LayerGeometry("dense", 100, 30), "svd") == 30
    with pytest.raises(ValueError, match="Dense"):
        max_rank(LayerGeometry("dense", 100, 30, name="fc"), "tucker")
    with pytest.raises(ValueError, match="'c'"):
        decomposed_cost(LayerGeometry("conv2d", 3, 3, name="c"), "svd", 1)
    with pytest.raises(ValueError, match="kind"):
        LayerGeometry("lstm", 3, 3)


def test_dense_on_3d_input_counts_positions():
    model = keras.Sequential([keras.Input((5, 16)), keras.layers.Dense(8, name="fc")])
    g = layer_geometry(model.get_layer("fc"))
    assert (g.in_channels, g.out_channels, g.positions) == (16, 8, 5)
    cost = model_cost(model)
    assert cost.macs == 5 * 16 * 8 and cost.params == 16 * 8 + 8
    # svd: 5*(16+8)*r = 120 r <= 320  ->  r = 2
    assert rank_for_ratio(model.get_layer("fc"), 0.5, "svd") == 2
    # memory: (16+8)*r + 8 <= 68  ->  r = 2
    assert rank_for_ratio(model.get_layer("fc"), 0.5, "svd", "memory") == 2
    # 4-D input: positions multiply over all inner dims
    model4 = keras.Sequential([keras.Input((3, 4, 6)), keras.layers.Dense(2, name="fc")])
    assert model_cost(model4).macs == 3 * 4 * 6 * 2


def test_other_compute_layers_by_hand():
    inp = keras.Input((10, 10, 4))
    dw = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(inp)  # 8x8x8
    sep = keras.layers.SeparableConv2D(16, 3, depth_multiplier=2, padding="same", name="sep")(dw)  # 8x8x16
    bn = keras.layers.BatchNormalization(name="bn")(sep)
    pool = keras.layers.MaxPooling2D(name="pool")(bn)  # 4x4x16
    model = keras.Model(inp, pool)
    cost = model_cost(model)
    assert cost.layers["dw"].macs == 8 * 8 * 9 * 4 * 2
    assert cost.layers["dw"].params == 9 * 4 * 2 + 8
    # depthwise 8*8*9*(8*2) + pointwise 8*8*(8*2)*16
    assert cost.layers["sep"].macs == 8 * 8 * 9 * 16 + 8 * 8 * 16 * 16
    assert cost.layers["sep"].params == 9 * 16 + 16 * 16 + 16
    assert cost.layers["bn"].macs == 0 and cost.layers["bn"].params == 4 * 16
    assert cost.layers["pool"].macs == 0
    assert cost.macs == 8 * 8 * 9 * 8 + 8 * 8 * 9 * 16 + 8 * 8 * 16 * 16
    assert cost.params == model.count_params()


def test_conv1d_and_grouped_conv_by_hand():
    seq = keras.Sequential(
        [keras.Input((20, 4)), keras.layers.Conv1D(8, 3, name="c1"), keras.layers.Conv1D(6, 5, groups=2, name="g1")]
    )
    cost = model_cost(seq)
    assert cost.layers["c1"].macs == 18 * 3 * 4 * 8
    assert cost.layers["g1"].macs == 14 * 5 * (8 // 2) * 6
    grouped = keras.Sequential([keras.Input((6, 6, 8)), keras.layers.Conv2D(4, 3, groups=2, name="g2")])
    assert model_cost(grouped).macs == 4 * 4 * 9 * (8 // 2) * 4


def test_model_cost_of_decomposed_layers_matches_docstring_formulas():
    # H x W = 12 x 10, C = 6, N = 10, 3x3 kernel, stride 2 'valid' -> Ho x Wo = 5 x 4 (Ho*W != H*Wo)
    H, W = 12, 10
    Ho, Wo = 5, 4
    C, N, kh, kw = 6, 10, 3, 3
    inp = keras.Input((H, W, C))
    kw_args = {"strides": 2, "padding": "valid"}
    a = WeightSVDConv2D(N, 3, rank=4, name="w", **kw_args)(inp)
    b = SpatialSVDConv2D(N, 3, rank=5, name="s", **kw_args)(inp)
    c = TuckerConv2D(N, 3, ranks=(2, 3), name="t", **kw_args)(inp)
    x = keras.layers.Concatenate(name="cat")([a, b, c])  # Ho x Wo x 3N
    x = keras.layers.Flatten(name="flat")(x)
    out = SVDDense(7, rank=3, name="d")(x)
    model = keras.Model(inp, out)
    cost = model_cost(model)
    expected = {
        "w": (H * W * C * 4 + Ho * Wo * kh * kw * 4 * N, C * 4 + kh * kw * 4 * N + N),
        "s": (Ho * W * kh * C * 5 + Ho * Wo * kw * 5 * N, kh * C * 5 + kw * 5 * N + N),
        "t": (H * W * C * 2 + Ho * Wo * kh * kw * 2 * 3 + Ho * Wo * 3 * N, C * 2 + kh * kw * 2 * 3 + 3 * N + N),
        "d": (1 * (Ho * Wo * 3 * N + 7) * 3, (Ho * Wo * 3 * N + 7) * 3 + 7),
    }
    for name, (macs, params) in expected.items():
        assert (cost.layers[name].macs, cost.layers[name].params) == (macs, params), name
        assert model.get_layer(name).count_params() == params
    assert cost.macs == sum(m for m, _ in expected.values())
    assert cost.params == model.count_params() == sum(p for _, p in expected.values())
    assert cost.metric("mac") == cost.macs and cost.metric(tfc.CostMetric.memory) == cost.params
    with pytest.raises(ValueError, match="latency"):
        cost.metric("latency")
    assert cost.to_dict()["layers"]["w"]["macs"] == expected["w"][0]


# ---------------------------------------------------------------- memory metric, multiplicity, bounds


def test_memory_metric_ranks_differ_from_mac_ranks():
    # 32 -> 64, 3x3, stride 2 'same' on 16x16: Ho = Wo = 8
    conv = called_conv((16, 16, 32), 64, 3, strides=2, padding="same", name="c")
    # MACs: orig 8*8*9*32*64 = 1179648; spatial 8*16*3*32 r + 8*8*3*r*64 = 24576 r -> 24
    assert rank_for_ratio(conv, 0.5, "spatial_svd", "mac") == 24
    # params: orig 18432 + 64; spatial 96 r + 192 r + 64 <= 9248 -> 31
    assert rank_for_ratio(conv, 0.5, "spatial_svd", "memory") == 31
    # weight MACs: 16*16*32 r + 8*8*9*r*64 = 45056 r <= 589824 -> 13
    assert rank_for_ratio(conv, 0.5, "weight_svd", "mac") == 13
    # weight params: 32 r + 576 r + 64 <= 9248 -> 15
    assert rank_for_ratio(conv, 0.5, "weight_svd", "memory") == 15
    with pytest.raises(ValueError, match="latency"):
        rank_for_ratio(conv, 0.5, "weight_svd", "latency")


def test_multiplicity_rounding_by_hand():
    conv = called_conv((14, 14, 32), 64, 5, padding="same")
    # spatial cost 94080 r, original 10035200: largest rank not above the original is 106, max rank 160
    assert rank_for_ratio(conv, 0.5, "spatial_svd", multiplicity=8) == 56
    assert rank_for_ratio(conv, 0.5, "spatial_svd", multiplicity=1) == 53
    assert rank_for_ratio(conv, 0.5, "spatial_svd", multiplicity=53) == 53
    assert rank_for_ratio(conv, 0.99, "spatial_svd") == 105
    assert rank_for_ratio(conv, 0.99, "spatial_svd", multiplicity=8) == 106  # 112 would cost more than the original
    assert rank_for_ratio(conv, 1.0, "spatial_svd", multiplicity=8) == 106
    # a ratio above 1 may pass the original's cost, and rounding never goes below the unrounded rank
    assert rank_for_ratio(conv, 1.2, "spatial_svd") == 128
    assert rank_for_ratio(conv, 1.2, "spatial_svd", multiplicity=100) == 128
    assert rank_for_ratio(conv, 5.0, "spatial_svd", multiplicity=64) == 160
    with pytest.raises(ValueError, match="multiplicity"):
        rank_for_ratio(conv, 0.5, "spatial_svd", multiplicity=0)


def test_round_rank():
    assert round_rank(13, 8, 100) == 16
    assert round_rank(16, 8, 100) == 16
    assert round_rank(13, 8, 14) == 14
    assert round_rank(13, 8, 10) == 13  # never below the rank itself
    assert round_rank(1, 4, 100) == 4
    assert round_rank(7, 1, 3) == 7


def test_rank_is_at_least_one_and_at_most_max():
    conv = called_conv((28, 28, 1), 32, 5, padding="same")
    assert rank_for_ratio(conv, 1e-6, "spatial_svd") == 1
    assert rank_for_ratio(conv, 1e-6, "weight_svd") == 1
    assert rank_for_ratio(conv, 50.0, "spatial_svd") == 5
    assert rank_for_ratio(conv, 50.0, "weight_svd") == 1  # min(C, kh*kw*N) = 1
    # Tucker-2 pairs stay proportional to (C, N): the smallest is (1, N/C), the largest (C, N)
    assert rank_for_ratio(conv, 1e-6, "tucker") == (1, 1)
    assert rank_for_ratio(conv, 50.0, "tucker") == (1, 32)
    wide = called_conv((8, 8, 32), 64, 3)
    assert rank_for_ratio(wide, 1e-6, "tucker") == (1, 1)
    assert rank_for_ratio(wide, 50.0, "tucker") == (32, 64)


def test_tucker_rank_pair_within_budget():
    conv = called_conv((14, 14, 32), 64, 3, padding="same")
    g = layer_geometry(conv)
    r1, r2 = rank_for_ratio(conv, 0.3, "tucker")
    assert 1 <= r1 <= 32 and 1 <= r2 <= 64
    assert r2 == round(r1 * 64 / 32)  # proportional to (C, N)
    assert decomposed_cost(g, "tucker", (r1, r2)).macs <= 0.3 * original_cost(g).macs
    bigger = (r1 + 1, round((r1 + 1) * 2))
    assert decomposed_cost(g, "tucker", bigger).macs > 0.3 * original_cost(g).macs
    r8 = rank_for_ratio(conv, 0.3, "tucker", multiplicity=8)
    assert all(r % 8 == 0 for r in r8) and r8[0] >= r1 and r8[1] >= r2


# ---------------------------------------------------------------- property: rank_for_ratio is the largest rank in budget

conv_geometries = st.builds(
    lambda c, n, kh, kw, h, w, s: LayerGeometry(
        "conv2d", c, n, (kh, kw), (h, w), (-(-h // s), -(-w // s)), use_bias=bool(c % 2)
    ),
    st.integers(1, 96),
    st.integers(1, 96),
    st.integers(1, 7),
    st.integers(1, 7),
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(1, 3),
)
dense_geometries = st.builds(
    lambda c, n, p, b: LayerGeometry("dense", c, n, positions=p, use_bias=b),
    st.integers(1, 2048),
    st.integers(1, 2048),
    st.integers(1, 50),
    st.booleans(),
)
geom_and_scheme = st.one_of(
    st.tuples(conv_geometries, st.sampled_from(["weight_svd", "spatial_svd"])),
    st.tuples(dense_geometries, st.just("svd")),
)


@FAST
@given(gs=geom_and_scheme, percent=st.integers(1, 150), metric=st.sampled_from(["mac", "memory"]))
def test_rank_for_ratio_is_largest_rank_within_budget(gs, percent, metric):
    g, scheme = gs
    ratio = percent / 100
    r = tfc.cost._rank_for_ratio(g, ratio, scheme, metric)
    bound = max_rank(g, scheme)
    assert isinstance(r, int) and 1 <= r <= bound

    def scaled(rank):  # 100 * cost, compared with percent * original: exact integers
        return 100 * decomposed_cost(g, scheme, rank).metric(metric)

    budget = percent * original_cost(g).metric(metric)
    if scaled(1) <= budget:
        assert scaled(r) <= budget
        assert r == bound or scaled(r + 1) > budget
    else:
        assert r == 1


@FAST
@given(gs=geom_and_scheme, percent=st.integers(1, 150), multiplicity=st.integers(1, 16))
def test_multiplicity_rounds_up_within_original_cost(gs, percent, multiplicity):
    g, scheme = gs
    ratio = percent / 100
    plain = tfc.cost._rank_for_ratio(g, ratio, scheme, "mac")
    rounded = tfc.cost._rank_for_ratio(g, ratio, scheme, "mac", multiplicity)
    bound = max_rank(g, scheme)
    orig = original_cost(g).macs
    next_multiple = -(-plain // multiplicity) * multiplicity
    assert plain <= rounded <= bound
    assert rounded <= max(plain, next_multiple)
    if rounded > plain:
        assert decomposed_cost(g, scheme, rounded).macs <= orig
    if rounded < next_multiple:
        # stopped short of the next multiple: at the max rank, or one more would cost more than the original
        assert rounded == bound or decomposed_cost(g, scheme, rounded + 1).macs > orig


# ---------------------------------------------------------------- whole models


@pytest.mark.slow
@pytest.mark.parametrize(
    ("factory", "published_macs"),
    [
        (keras.applications.ResNet50, 3.86e9),
        (keras.applications.VGG16, 15.47e9),
        (keras.applications.MobileNetV2, 0.30e9),
    ],
    ids=["ResNet50", "VGG16", "MobileNetV2"],
)
def test_model_cost_of_applications_at_224(factory, published_macs):
    keras.utils.set_random_seed(0)
    model = factory(weights=None, input_shape=(224, 224, 3))
    cost = model_cost(model)
    assert abs(cost.macs - published_macs) <= 0.03 * published_macs
    assert cost.params == model.count_params()
    assert sum(row.params for row in cost.layers.values()) == model.count_params()
    assert sum(row.macs for row in cost.layers.values()) == cost.macs


def test_shared_layer_params_once_macs_per_call():
    inp = keras.Input((8, 8, 3))
    shared = keras.layers.Conv2D(3, 3, padding="same", name="shared")
    mid = keras.layers.Conv2D(3, 1, name="mid")
    model = keras.Model(inp, shared(mid(shared(inp))))
    cost = model_cost(model)
    one_call = 8 * 8 * 9 * 3 * 3
    assert cost.layers["shared"].calls == 2
    assert cost.layers["shared"].macs == 2 * one_call
    assert cost.layers["shared"].params == 9 * 3 * 3 + 3
    assert cost.macs == 2 * one_call + 8 * 8 * 3 * 3
    assert cost.params == model.count_params() == (9 * 3 * 3 + 3) + (3 * 3 + 3)


def test_call_counts_are_read_once_per_functional_model_and_stay_right():
    import gc

    from tfcompress import graph

    inp = keras.Input((8, 8, 3))
    shared = keras.layers.Conv2D(3, 3, padding="same", name="shared")
    model = keras.Model(inp, shared(shared(inp)))
    assert [r.calls for r in graph.walk_layers(model)] == [2]
    assert model in graph._FUNCTIONAL_CALLS  # read from the config once ...
    # ... and still right after the layer is called in another model (counts are per model)
    other = keras.Model(inp, shared(inp))
    assert [r.calls for r in graph.walk_layers(model)] == [2]
    assert [r.calls for r in graph.walk_layers(other)] == [1]
    # a Sequential model can grow, so it is never cached
    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a")])
    assert [r.path for r in graph.walk_layers(seq)] == ["a"]
    seq.add(keras.layers.Dense(2, name="b"))
    assert [r.path for r in graph.walk_layers(seq)] == ["a", "b"] and seq not in graph._FUNCTIONAL_CALLS
    # weak keys: a model that is gone is not kept
    size = len(graph._FUNCTIONAL_CALLS)
    del model, other
    gc.collect()
    assert len(graph._FUNCTIONAL_CALLS) <= size - 2


def test_a_rewritten_model_inherits_the_call_counts_without_reading_its_config(monkeypatch):
    import tfcompress as tfc
    from tfcompress import graph

    inp = keras.Input((8, 8, 3))
    shared = keras.layers.Conv2D(3, 3, padding="same", name="shared")
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, keras.layers.Conv2D(3, 3, padding="same", name="deep")(inner_in), name="inner")
    x = shared(shared(inp))
    model = keras.Model(inp, inner(inner(x)), name="outer")
    want = [(r.path, r.calls) for r in graph.walk_layers(model)]
    assert want == [("shared", 2), ("inner/deep", 2)]

    new = tfc.rewrite_model(model, {"shared": ("spatial_svd", 2)})
    assert new in graph._FUNCTIONAL_CALLS and new.get_layer("inner") in graph._FUNCTIONAL_CALLS
    reads = []
    real = keras.Model.get_config
    monkeypatch.setattr(keras.Model, "get_config", lambda self: reads.append(self.name) or real(self))
    assert [(r.path, r.calls) for r in graph.walk_layers(new)] == want
    assert reads == []  # counted from the original, not from the clone's config
    monkeypatch.undo()
    graph._FUNCTIONAL_CALLS.pop(new)
    graph._FUNCTIONAL_CALLS.pop(new.get_layer("inner"))
    assert [(r.path, r.calls) for r in graph.walk_layers(new)] == want  # and they are what its config says


def test_nested_model_layers_have_outer_inner_paths():
    inner = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="ic"), keras.layers.ReLU(name="act")], name="block"
    )
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Add(name="add")([inner(inp), inner(inp)])  # the nested model runs twice
    out = keras.layers.Dense(5, name="fc")(keras.layers.Flatten(name="flat")(x))
    model = keras.Model(inp, out)
    cost = model_cost(model)
    assert list(cost.layers) == ["block/ic", "block/act", "add", "flat", "fc"]
    assert cost.layers["block/ic"].calls == 2
    assert cost.layers["block/ic"].macs == 2 * 6 * 6 * 9 * 3 * 4
    assert cost.layers["fc"].macs == 6 * 6 * 4 * 5
    assert cost.params == model.count_params()


# ---------------------------------------------------------------- errors


def test_unbuilt_layer_without_input_shape_names_the_layer():
    conv = keras.layers.Conv2D(64, 5, padding="same", name="lonely_conv")
    with pytest.raises(ValueError, match=r"lonely_conv.*input_shape"):
        rank_for_ratio(conv, 0.5, "spatial_svd")
    dense = keras.layers.Dense(8, name="lonely_fc")
    with pytest.raises(ValueError, match="lonely_fc"):
        rank_for_ratio(dense, 0.5, "svd")
    # with input_shape the same layers work, even unbuilt
    assert rank_for_ratio(conv, 0.5, "spatial_svd", input_shape=(None, 14, 14, 32)) == 53
    assert rank_for_ratio(dense, 0.5, "svd", input_shape=(None, 5, 16)) == 2


def test_unknown_spatial_size_asks_for_fixed_input():
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, name="c")])
    with pytest.raises(ValueError, match=r"'c'.*fixed input size"):
        model_cost(model)
    with pytest.raises(ValueError, match=r"'c'.*fixed input size"):
        rank_for_ratio(model.get_layer("c"), 0.5, "spatial_svd")
    dw_model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.DepthwiseConv2D(3, name="dw")])
    with pytest.raises(ValueError, match=r"'dw'.*fixed input size"):
        model_cost(dw_model)


def test_non_decomposable_layer_is_type_error():
    inp = keras.Input((8, 8, 3))
    dw = keras.layers.DepthwiseConv2D(3, name="dw")
    bn = keras.layers.BatchNormalization(name="bn")
    keras.Model(inp, bn(dw(inp)))
    for layer in (dw, bn):
        with pytest.raises(TypeError, match=f"'{layer.name}'"):
            rank_for_ratio(layer, 0.5, "weight_svd")


@pytest.mark.parametrize("ratio", [0, 0.0, -0.5, "half", None])
def test_bad_ratio_is_value_error(ratio):
    conv = called_conv((8, 8, 3), 4, 3, name="c")
    with pytest.raises(ValueError, match=r"'c'.*ratio"):
        rank_for_ratio(conv, ratio, "weight_svd")


def test_bad_scheme_and_metric():
    conv = called_conv((8, 8, 3), 4, 3, name="c")
    for scheme in ("channel_pruning", "auto"):
        with pytest.raises(ValueError, match="decomposition scheme"):
            rank_for_ratio(conv, 0.5, scheme)
    with pytest.raises(ValueError, match="scheme"):
        rank_for_ratio(conv, 0.5, "cp_decomposition")
    with pytest.raises(ValueError, match=r"'c'.*svd"):
        rank_for_ratio(conv, 0.5, "svd")
    with pytest.raises(ValueError, match="cost_metric"):
        rank_for_ratio(conv, 0.5, "weight_svd", "flops")


def test_model_cost_rejects_subclassed_and_non_models():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    tiny = Tiny()
    tiny(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match="Tiny"):
        model_cost(tiny)
    with pytest.raises(TypeError, match=r"keras\.Model"):
        model_cost(keras.layers.Dense(2))
