"""Data-aware factors of EinsumDense layers (attention and FFN projections): the unfolded input vectors are the
"input" the factors are whitened by."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tfcompress as tfc
from tfcompress import data_fit, einsum_unfold
from tfcompress.activations import MomentCollector, einsum_input_order, patch_spec
from tfcompress.data_aware import MomentAccumulator, Moments

# (equation, input shape without batch, output_shape, bias_axes): a query projection, an output projection
# (two summed axes), a transposing one, a plain 2-D one, one whose bias spans only part of the outputs
CASES = [
    ("abc,cde->abde", (5, 12), (None, 3, 4), "de"),
    ("abcd,cde->abe", (5, 3, 4), (None, 10), "e"),
    ("abc,ce->aeb", (6, 8), (7, None), "e"),
    ("ab,bc->ac", (9,), 6, "c"),
    ("abc,cde->abde", (5, 12), (None, 3, 4), "e"),
    ("abc,cde->abde", (5, 12), (None, 3, 4), None),
]


def einsum_layer(case: tuple, seed: int = 0) -> tuple[keras.layers.EinsumDense, tuple]:
    equation, shape, output_shape, bias_axes = case
    keras.utils.set_random_seed(seed)
    layer = keras.layers.EinsumDense(equation, output_shape=output_shape, bias_axes=bias_axes, name="proj")
    layer.build((None, *shape))
    if layer.bias is not None:  # a bias that is not zero, so that keeping or refitting it shows
        layer.bias.assign(np.random.default_rng(seed).normal(size=layer.bias.shape).astype("float32"))
    return layer, shape


def correlated_inputs(rng: np.random.Generator, count: int, shape: tuple, rank: int = 3) -> np.ndarray:
    """Inputs whose last axis lies mostly in a ``rank``-dim subspace (real activations are far from white); each
    call draws another subspace."""
    basis = rng.normal(size=(rank, shape[-1]))
    x = rng.normal(size=(count, *shape[:-1], rank)) @ basis + 0.05 * rng.normal(size=(count, *shape))
    return (x + 0.5).astype("float32")


def layer_moments(layer: keras.layers.EinsumDense, x: np.ndarray, samples: int = 400) -> Moments:
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    spec, why = patch_spec(layer)
    assert why is None
    return MomentCollector(x, samples=samples).moments(model, [layer.name], specs={layer.name: spec})[layer.name]


def outputs(layer: keras.layers.Layer, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(layer(x)), dtype=np.float64)


def decomposed_with(layer: keras.layers.EinsumDense, rank: int, weights: list | None) -> tfc.SVDEinsumDense:
    twin = tfc.SVDEinsumDense.from_layer(layer, rank)
    if weights is not None:
        twin.set_weights(weights)
    return twin


def test_the_input_vectors_are_the_summed_axes_in_the_kernels_order():
    assert einsum_input_order("abcd", "cd", 4) == [0, 1, 2, 3]
    assert einsum_input_order("abc", "b", 3) == [0, 2, 1]  # "abc,bd->acd": axis b is read
    assert einsum_input_order("a...c", "c", 4) == [0, 1, 2, 3]
    layer, _ = einsum_layer(CASES[1])  # "abcd,cde->abe": the vectors are (c, d) flattened
    x = np.arange(2 * 5 * 3 * 4, dtype="float32").reshape(2, 5, 3, 4)
    vectors = patch_spec(layer)[0].vectors(x)
    assert vectors.shape == (2, 5, 12)
    np.testing.assert_array_equal(vectors[1, 2], x[1, 2].ravel())
    # the unfolded kernel maps those vectors to the outputs (the premise of the fit)
    unfolded = einsum_unfold.einsum_unfold(keras.ops.convert_to_numpy(layer.kernel), layer.equation)
    bias = keras.ops.convert_to_numpy(layer.bias)
    np.testing.assert_allclose(vectors.reshape(-1, 12) @ unfolded + bias, outputs(layer, x).reshape(-1, 10), rtol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}/{c[3]}")
def test_white_inputs_give_the_plain_truncated_svd(case):
    layer, _ = einsum_layer(case)
    d = einsum_unfold.einsum_split(layer.equation).matrix_shape(tuple(layer.kernel.shape))[0]
    white = Moments(10_000, np.zeros(d), 2.5 * np.eye(d))
    rank = 2
    weights, fit = data_fit.fit_layer(layer, "svd", rank, white)
    plain = data_fit.composed_kernel(layer, "svd", [w for w in decomposed_with(layer, rank, None).get_weights()])
    np.testing.assert_allclose(data_fit.composed_kernel(layer, "svd", weights), plain, atol=1e-5)
    if layer.bias is not None:  # zero-mean inputs: the bias stays the original one
        np.testing.assert_allclose(weights[-1], keras.ops.convert_to_numpy(layer.bias), atol=1e-5)
    assert fit.error == pytest.approx(fit.data_free_error, rel=1e-6, abs=1e-9)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(range(len(CASES))), st.integers(1, 3))
def test_output_error_is_never_worse_than_data_free_on_the_fitting_data(seed, which, rank):
    layer, shape = einsum_layer(CASES[which], seed)
    rng = np.random.default_rng(seed)
    x = correlated_inputs(rng, 24, shape)
    moments = layer_moments(layer, x, samples=10_000)  # every position: the moments are the fitting data's
    weights, fit = data_fit.fit_layer(layer, "svd", rank, moments)
    reference = outputs(layer, x)
    fitted = np.mean((outputs(decomposed_with(layer, rank, weights), x) - reference) ** 2)
    free = np.mean((outputs(decomposed_with(layer, rank, None), x) - reference) ** 2)
    assert fitted <= free * (1 + 1e-4) + 1e-9
    assert fit.error <= fit.data_free_error * (1 + 1e-9) + 1e-12


def test_inputs_in_a_subspace_are_fitted_exactly_at_its_rank():
    layer, _ = einsum_layer(CASES[0])
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(3, 12))
    x = (rng.normal(size=(40, 5, 3)) @ basis).astype("float32")
    acc = MomentAccumulator(12)
    acc.add(x.reshape(-1, 12))
    weights, fit = data_fit.fit_layer(layer, "svd", 3, acc.moments())
    np.testing.assert_allclose(
        outputs(decomposed_with(layer, 3, weights), x), outputs(layer, x), atol=1e-3 * np.abs(outputs(layer, x)).max()
    )
    assert fit.relative_error < 1e-8 < fit.data_free_relative_error


def attention_like_model() -> keras.Model:
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 16))
    q = keras.layers.EinsumDense("abc,cde->abde", output_shape=(6, 2, 8), bias_axes="de", name="query")(inp)
    q = keras.layers.Activation("gelu")(q)
    out = keras.layers.EinsumDense("abcd,cde->abe", output_shape=(6, 16), bias_axes="e", name="out")(q)
    return keras.Model(inp, keras.layers.Dense(4, name="head")(out))


def test_compress_model_fits_einsum_projections_to_their_inputs():
    model = attention_like_model()
    rng = np.random.default_rng(3)
    x, test = np.split(correlated_inputs(rng, 96, (6, 16), rank=4), [64])  # one subspace for both
    reference = model.predict(test, verbose=0)

    def score(m, iterations):
        return -float(np.mean((m.predict(test, verbose=0) - reference) ** 2))

    plan = tfc.WeightSvdParameters.ManualModeParams({"query": 0.3, "out": 0.3})
    free, _ = tfc.compress_model(
        model, score, None, "weight_svd", "mac", tfc.WeightSvdParameters("manual", plan), verbose=0
    )
    params = tfc.WeightSvdParameters("manual", plan, data=x, num_reconstruction_samples=400)
    fitted, stats = tfc.compress_model(model, score, None, "weight_svd", "mac", params, verbose=0)
    assert isinstance(fitted.get_layer("query"), tfc.SVDEinsumDense)
    assert fitted.get_layer("query").rank == free.get_layer("query").rank
    assert any("refitted in forward order (2 layer(s))" in n for n in stats.notes), stats.notes
    assert score(fitted, None) > 5 * score(free, None)  # far closer to the original on held-out inputs


@pytest.mark.slow
def test_greedy_selection_fits_einsum_candidates_to_their_inputs():
    model = attention_like_model()
    rng = np.random.default_rng(3)
    x = correlated_inputs(rng, 64, (6, 16), rank=4)
    reference = model.predict(x, verbose=0)

    def score(m, iterations):
        return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    # the einsum candidates are fitted too (no "keeps data-free" note for them)
    greedy = tfc.WeightSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(0.6, num_comp_ratio_candidates=3))
    aware = tfc.WeightSvdParameters("auto", greedy, data=x, num_reconstruction_samples=400)
    _, stats = tfc.compress_model(model, score, None, "weight_svd", "mac", aware, verbose=0)
    assert not [n for n in stats.notes if "'query' keeps data-free" in n or "'out' keeps data-free" in n]
    assert any("3 of 3 layer(s) fitted to their inputs" in n for n in stats.notes), stats.notes


# ---------------------------------------------------------------- layers inside custom layers and nested models


def attention_block_model() -> keras.Model:
    """A MultiHeadAttention layer (its projections are EinsumDense layers inside a custom layer) and a nested
    Sequential model."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((10, 16))
    attended = keras.layers.MultiHeadAttention(2, 8, name="mha")(inp, inp)
    head = keras.Sequential(
        [
            keras.Input((10, 16)),
            keras.layers.Dense(12, activation="relu", name="d1"),
            keras.layers.Dense(16, name="d2"),
        ],
        name="sub",
    )
    return keras.Model(inp, head(attended))


@pytest.mark.slow
def test_layers_inside_custom_layers_and_nested_models_are_fitted_through_hooks():
    model = attention_block_model()
    rng = np.random.default_rng(5)
    x, test = np.split(correlated_inputs(rng, 120, (10, 16)), [80])  # one subspace for both
    plan = {"mha/query": ("svd", 2), "mha/value": ("svd", 2), "sub/d1": ("svd", 3)}
    free = tfc.rewrite_model(model, plan)
    fitted = tfc.rewrite_model(model, plan)
    report = data_fit.refit_forward(model, fitted, x, samples=600)
    assert sorted(report.layers) == ["mha/query", "mha/value", "sub/d1"] and report.skipped == {}
    for fit in report.layers.values():
        assert fit.relative_error <= fit.data_free_relative_error * (1 + 1e-9) + 1e-12
    reference = model.predict(test, verbose=0)

    def error(m: keras.Model) -> float:
        return float(np.mean((m.predict(test, verbose=0) - reference) ** 2))

    assert error(fitted) < 0.5 * error(free)  # held-out inputs
    inner = model.get_layer("mha")
    assert all("call" not in vars(layer) for layer in (inner._query_dense, inner._value_dense))  # hooks removed
    assert all("call" not in vars(layer) for layer in model.get_layer("sub").layers)
