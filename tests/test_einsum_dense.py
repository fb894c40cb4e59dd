"""``SVDEinsumDense`` and the EinsumDense unfolding: exactness, optimality, refused equations, costs, rewrite, search."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tfcompress as tfc
from tfcompress import einsum_unfold as eu
from tfcompress import unfoldings
from tfcompress.cost import decomposed_cost, layer_geometry, original_cost

PROPERTY = settings(max_examples=25, deadline=None, database=None)


@st.composite
def equations(draw: st.DrawFn) -> tuple[str, dict[str, int]]:
    """A random equation of the supported family: free (input and output), summed (input and kernel) and produced
    (kernel and output) indices, each spec in a random order, with random sizes."""
    letters = list("abcdefghijklmn")
    n_free, n_sum, n_out = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    free, summed, produced = (
        letters[:n_free],
        letters[n_free : n_free + n_sum],
        letters[n_free + n_sum : n_free + n_sum + n_out],
    )
    x = "".join(free[:1] + draw(st.permutations(free[1:] + summed)))  # the batch axis first, as in a layer
    w = "".join(draw(st.permutations(summed + produced)))
    out = "".join(free[:1] + draw(st.permutations(free[1:] + produced)))
    sizes = {c: draw(st.integers(1, 4)) for c in free + summed + produced}
    return f"{x},{w}->{out}", sizes


@PROPERTY
@given(case=equations(), seed=st.integers(0, 2**16))
def test_unfolding_is_a_permutation_and_the_stages_compose(case: tuple[str, dict[str, int]], seed: int) -> None:
    equation, sizes = case
    split = eu.einsum_split(equation)
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=[sizes[c] for c in split.kernel_spec])
    x = rng.normal(size=[sizes[c] for c in split.input_spec])
    matrix = eu.einsum_unfold(kernel, equation)
    rows = int(np.prod([sizes[c] for c in split.summed]))
    assert matrix.shape == (rows, kernel.size // rows)
    assert sorted(matrix.ravel()) == sorted(kernel.ravel())  # a permutation of the kernel's values
    np.testing.assert_array_equal(eu.einsum_fold(matrix, equation, kernel.shape), kernel)
    # full rank: the two contractions equal the layer
    a, b = eu.einsum_factors(kernel, equation, min(matrix.shape))
    two = np.einsum(split.second, np.einsum(split.first, x, a), b)
    np.testing.assert_allclose(two, np.einsum(equation, x, kernel), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(eu.einsum_compose(a, b, equation), kernel, atol=1e-10)
    # below it: the error of the folded kernel is the tail of the singular values (Eckart-Young)
    r = max(1, min(matrix.shape) - 1)
    a, b = eu.einsum_factors(kernel, equation, r)
    s = np.linalg.svd(matrix, compute_uv=False)
    err = np.linalg.norm(eu.einsum_compose(a, b, equation) - kernel)
    np.testing.assert_allclose(err, np.sqrt(np.sum(s[r:] ** 2)), atol=1e-9)


@pytest.mark.parametrize(
    ("equation", "reason"),
    [
        ("abc,bcd->abd", "in the input and the output"),
        ("abc,cde->abd", "neither summed nor in the output"),
        ("abc,cd->ad", "summed without the kernel"),
        ("ab,...bc->ac", "kernel has an ellipsis"),
        ("aab,bc->ac", "repeats an index"),
        ("abc,cd->abcd", "in the input and the output"),
        ("ab,b->a", "writes no feature axis"),
    ],
)
def test_equations_that_do_not_split_get_a_reason(equation: str, reason: str) -> None:
    problem = eu.einsum_problem(equation)
    assert problem is not None and reason in problem and "\n" not in problem
    with pytest.raises(ValueError, match="cannot be split"):
        tfc.SVDEinsumDense(equation, (4, 4, 4)[: len(equation.split(",")[1].split("-")[0])], rank=1)


CASES = [
    # (equation, output_shape, bias_axes, input_shape)
    ("abc,cde->abde", (6, 4, 8), "de", (None, 6, 32)),  # a query projection
    ("abcd,cde->abe", (6, 32), "e", (None, 6, 4, 8)),  # an output projection
    ("abc,cde->abde", (6, 4, 8), "e", (None, 6, 32)),  # bias on part of the output axes only
    ("abc,cd->abd", (6, 48), None, (None, 6, 32)),  # no bias
    ("...b,bc->...c", 24, "c", (None, 3, 5, 16)),  # an ellipsis
    ("abc,dce->abde", (6, 4, 8), "de", (None, 6, 32)),  # a kernel whose summed axis is not its first
]


def _source(equation: str, output_shape: object, bias_axes: str | None, input_shape: tuple, seed: int = 0) -> object:
    layer = keras.layers.EinsumDense(equation, output_shape=output_shape, bias_axes=bias_axes, activation="gelu")
    layer.build(input_shape)
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.weights])
    return layer


@pytest.mark.parametrize("case", CASES, ids=[c[0] + (c[2] or "") for c in CASES])
def test_layer_is_exact_at_full_rank_and_optimal_below(case: tuple) -> None:
    equation, output_shape, bias_axes, input_shape = case
    source = _source(equation, output_shape, bias_axes, input_shape)
    x = np.random.default_rng(1).normal(size=(2, *input_shape[1:])).astype("float32")
    full = tfc.SVDEinsumDense.max_rank_for(tuple(source.kernel.shape), equation)
    layer = tfc.SVDEinsumDense.from_layer(source, rank=full)
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(source(x)), rtol=1e-4, atol=1e-4)
    assert layer.name == source.name and tuple(layer.compute_output_shape(x.shape)) == tuple(source(x).shape)
    low = tfc.SVDEinsumDense.from_layer(source, rank=2)
    kernel = np.asarray(source.kernel)
    s = np.linalg.svd(eu.einsum_unfold(kernel, equation), compute_uv=False)
    err = np.linalg.norm(low.reconstructed_kernel() - kernel)
    np.testing.assert_allclose(err, np.sqrt(np.sum(s[2:] ** 2)), rtol=1e-4)
    # a config round trip gives the same function
    twin = tfc.SVDEinsumDense.from_config(low.get_config())
    twin.build(input_shape)
    twin.set_weights(low.get_weights())
    np.testing.assert_allclose(np.asarray(twin(x)), np.asarray(low(x)), rtol=1e-6, atol=1e-6)


def test_rank_outside_bounds_and_wrong_weights_name_the_layer() -> None:
    source = _source("abc,cde->abde", (6, 4, 8), "de", (None, 6, 32))
    with pytest.raises(ValueError, match="exceeds the maximum rank 32"):
        tfc.SVDEinsumDense("abc,cde->abde", (32, 4, 8), rank=33, name="q")
    layer = tfc.SVDEinsumDense("abc,cde->abde", (32, 4, 8), rank=4, bias_axes="de", name="q")
    with pytest.raises(ValueError, match="must be built"):
        layer.set_decomposed_weights(source.get_weights())
    layer.build((None, 6, 32))
    with pytest.raises(ValueError, match=r"'q'.*expects 2"):
        layer.set_decomposed_weights(source.get_weights()[:1])
    with pytest.raises(ValueError, match="bias axis 'x'"):
        tfc.SVDEinsumDense("abc,cde->abde", (32, 4, 8), rank=4, bias_axes="x")


def _model() -> keras.Model:
    inp = keras.Input((6, 32))
    q = keras.layers.EinsumDense("abc,cde->abde", output_shape=(6, 4, 8), bias_axes="de", name="q")
    o = keras.layers.EinsumDense("abcd,cde->abe", output_shape=(6, 32), bias_axes="e", name="o")
    model = keras.Model(inp, o(q(inp)))
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.weights])
    return model


def test_costs_match_the_geometry_and_a_hand_count() -> None:
    model = _model()
    cost = tfc.model_cost(model)
    assert cost.layers["q"].macs == 6 * 32 * 32 and cost.layers["o"].macs == 6 * 32 * 32
    g = layer_geometry(model.get_layer("q"))
    assert (g.in_channels, g.out_channels, g.positions) == (32, 32, 6)
    assert original_cost(g).params == 32 * 32 + 32
    rank = tfc.rank_for_ratio(model.get_layer("q"), 0.5, "svd")
    assert rank == 8  # 6 * 64 * r <= 0.5 * 6 * 1024
    new = tfc.rewrite_model(model, {"q": ("svd", 8), "o": ("weight_svd", 5)})
    after = tfc.model_cost(new)
    assert after.layers["q"].macs == 6 * (32 + 32) * 8 == decomposed_cost(g, "svd", 8).macs
    assert after.layers["o"].macs == 6 * (32 + 32) * 5
    assert after.layers["q"].params == (32 + 32) * 8 + 32 and after.params == new.count_params()


def test_rewrite_saves_and_loads(tmp_path: object) -> None:
    model = _model()
    x = np.random.default_rng(4).normal(size=(3, 6, 32)).astype("float32")
    full = tfc.rewrite_model(model, {"q": 32, "o": 32}, scheme="svd")
    np.testing.assert_allclose(np.asarray(full(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-4)
    low = tfc.rewrite_model(model, {"q": 4, "o": 4}, scheme="weight_svd")
    path = str(tmp_path / "m.keras")  # type: ignore[operator]
    low.save(path)
    loaded = keras.models.load_model(path)
    assert [type(layer).__name__ for layer in loaded.layers][1:] == ["SVDEinsumDense", "SVDEinsumDense"]
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(low(x)))


def test_unfolding_table_takes_the_equation() -> None:
    kernel = np.arange(64.0).reshape(2, 4, 8)
    m = unfoldings.unfold("einsum_dense", "svd", kernel, equation="abcd,cde->abe")
    assert m.shape == (8, 8)
    np.testing.assert_array_equal(
        unfoldings.fold("einsum_dense", "svd", m, kernel.shape, equation="abcd,cde->abe"), kernel
    )
    with pytest.raises(ValueError, match="equation"):
        unfoldings.unfold("einsum_dense", "svd", kernel)


def test_greedy_search_compresses_einsum_layers() -> None:
    model = _model()
    x = np.random.default_rng(5).normal(size=(4, 6, 32)).astype("float32")
    reference = np.asarray(model(x))

    def score(m: keras.Model, iterations: int) -> float:
        return -float(np.mean((np.asarray(m(x)) - reference) ** 2))

    params = tfc.WeightSvdParameters(
        tfc.Mode.auto,
        tfc.WeightSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(0.5, num_comp_ratio_candidates=4)),
    )
    new, stats = tfc.compress_model(model, score, 1, compress_scheme="weight_svd", cost_metric="mac", parameters=params)
    assert set(stats.eval_scores) == {"q", "o"}
    assert stats.mac_compression_ratio <= 0.5 + 1e-9
    assert {type(layer).__name__ for layer in new.layers[1:]} <= {"SVDEinsumDense", "EinsumDense"}
    assert tfc.model_cost(new).macs <= 0.5 * tfc.model_cost(model).macs
