"""Data-aware factors on Keras layers and models: layouts, forward-order refits, reading activations."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import tfcompress as tfc
from tfcompress import data_aware, data_fit
from tfcompress.activations import MomentCollector, patch_spec


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return (load_digits().images[:, :, :, None] / 16.0).astype("float32")


def digits_cnn() -> keras.Model:
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Conv2D(16, (3, 2), strides=2, padding="valid", use_bias=False, name="c3")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(24, activation="relu", name="fc")(x)
    return keras.Model(inp, keras.layers.Dense(10, name="out")(x))


@pytest.mark.parametrize(
    ("layer", "scheme", "rank", "shape"),
    [
        (keras.layers.Conv2D(6, 3, padding="same", name="w"), "weight_svd", 2, (2, 7, 7, 4)),
        (keras.layers.Conv2D(6, (3, 2), strides=2, name="s"), "spatial_svd", 3, (2, 7, 7, 4)),
        (keras.layers.Conv2D(6, 3, dilation_rate=2, use_bias=False, name="t"), "tucker", (2, 3), (2, 7, 7, 4)),
        (keras.layers.Conv1D(6, 3, padding="same", name="w1"), "weight_svd", 2, (2, 9, 4)),
        (keras.layers.Conv1D(6, 3, name="s1"), "spatial_svd", 4, (2, 9, 4)),
        (keras.layers.Dense(6, name="d"), "svd", 2, (5, 4)),
    ],
)
def test_fitted_weights_fit_the_decomposed_layer_and_compose_to_its_kernel(layer, scheme, rank, shape):
    # the decomposed layer holding the fitted weights computes what the original layer computes with the composed
    # kernel and the fitted bias: the factor layouts agree with the layers'
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype("float32")
    layer.build(shape)
    spec, why = patch_spec(layer)
    assert why is None
    moments = MomentCollector(np.maximum(x, 0), samples=200).moments(
        keras.Sequential([keras.Input(shape[1:]), layer]), [layer.name], specs={layer.name: spec}
    )[layer.name]
    weights, fit = data_fit.fit_layer(layer, scheme, rank, moments)
    assert fit.error <= fit.data_free_error * (1 + 1e-9) + 1e-12
    small = tfc.rewrite_model(keras.Sequential([keras.Input(shape[1:]), layer]), {layer.name: (scheme, rank)})
    decomposed = small.layers[-1]
    decomposed.set_weights(weights)
    twin = layer.__class__.from_config(layer.get_config())
    twin.build(shape)
    composed = data_fit.composed_kernel(layer, scheme, weights)
    twin.set_weights([composed, weights[-1]] if layer.use_bias else [composed])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(decomposed(x)), keras.ops.convert_to_numpy(twin(x)), atol=1e-4
    )


def agreement(a: keras.Model, b: keras.Model, x: np.ndarray) -> float:
    return float(np.mean(a.predict(x, verbose=0).argmax(1) == b.predict(x, verbose=0).argmax(1)))


@pytest.mark.slow
def test_forward_refit_brings_a_compressed_model_back_to_the_original(digits):
    model = digits_cnn()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits[:1200], load_digits().target[:1200], epochs=3, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    plan = {"c1": ("weight_svd", 1), "c2": ("spatial_svd", 3), "c3": ("tucker", (4, 4)), "fc": ("svd", 3)}
    small = tfc.rewrite_model(model, plan)
    test = digits[1200:]
    agreed = agreement(small, model, test)
    free = np.mean((small.predict(test, verbose=0) - model.predict(test, verbose=0)) ** 2)
    report = data_fit.refit_forward(model, small, digits[:300], samples=1500)
    fitted = np.mean((small.predict(test, verbose=0) - model.predict(test, verbose=0)) ** 2)
    assert sorted(report.layers) == sorted(plan) and not report.skipped
    assert fitted < 0.5 * free  # on held-out images, not only on the fitting ones
    assert agreement(small, model, test) > agreed + 0.1
    for fit in report.layers.values():
        assert fit.relative_error <= fit.data_free_relative_error + 1e-12
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))  # never mutated
    assert report.collect_seconds > 0 and report.fit_seconds > 0


def test_layers_whose_inputs_cannot_be_read_keep_data_free_factors_with_the_reason(digits):
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 1, name="widen")(inp)
    x = keras.layers.Conv2DTranspose(8, 3, name="up")(x)
    x = keras.layers.Conv2D(8, 3, name="conv")(x)
    model = keras.Model(inp, x)
    small = tfc.rewrite_model(model, {"up": ("weight_svd", 2), "conv": ("weight_svd", 2)})
    report = data_fit.refit_forward(model, small, digits[:40], samples=200)
    assert "Conv2DTranspose" in report.skipped["up"]
    assert list(report.layers) == ["conv"]


def test_a_separable_convs_pointwise_factors_are_fitted_to_its_depthwise_outputs(digits):
    """SVDSeparableConv2D keeps the depthwise kernel and splits the pointwise one: the "input" of the fit is each
    output pixel's C*depth_multiplier depthwise outputs."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 1, activation="relu", name="widen")(inp)
    x = keras.layers.SeparableConv2D(8, 3, depth_multiplier=2, strides=2, padding="same", name="sep")(x)
    model = keras.Model(inp, x)
    plan = {"sep": ("weight_svd", 2)}
    free, fitted = tfc.rewrite_model(model, plan), tfc.rewrite_model(model, plan)
    report = data_fit.refit_forward(model, fitted, digits[:200], samples=500)
    fit = report.layers["sep"]
    assert fit.relative_error < 0.2 * fit.data_free_relative_error
    layer = fitted.get_layer("sep")
    np.testing.assert_array_equal(  # the depthwise stage is the original's
        keras.ops.convert_to_numpy(layer.depthwise_kernel),
        keras.ops.convert_to_numpy(model.get_layer("sep").depthwise_kernel),
    )
    test = digits[200:400]
    reference = model.predict(test, verbose=0)
    error = {
        name: float(np.mean((m.predict(test, verbose=0) - reference) ** 2)) for name, m in (("f", free), ("a", fitted))
    }
    assert error["a"] < 0.5 * error["f"]


def test_a_loaded_model_is_read_and_a_shared_layer_is_reported(digits, tmp_path):
    """A Sequential model loaded from a .keras file holds extra nodes per layer (from being built): its layers are
    still read once each; a layer that really runs twice keeps data-free factors, with that reason."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(6, 3, name="a"), keras.layers.Conv2D(8, 3, name="b")]
    )
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    small = tfc.rewrite_model(loaded, {"a": ("spatial_svd", 2), "b": ("weight_svd", 3)})
    report = data_fit.refit_forward(loaded, small, digits[:40], samples=200)
    assert sorted(report.layers) == ["a", "b"] and report.skipped == {}

    inp = keras.Input((8, 8, 4))
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")
    out = keras.layers.Conv2D(5, 3, name="last")(shared(shared(inp)))
    twice = keras.Model(inp, out)
    small = tfc.rewrite_model(twice, {"last": ("weight_svd", 2)})
    x = np.repeat(digits[:40], 4, axis=-1)
    assert data_fit.readable_reason(twice, "shared", shared, "weight_svd") == "the layer is called more than once"
    assert list(data_fit.refit_forward(twice, small, x, samples=200).layers) == ["last"]


def test_all_zero_inputs_are_reported_and_stay_finite():
    inp = keras.Input((6, 6, 2))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3, name="c")(inp))
    small = tfc.rewrite_model(model, {"c": ("weight_svd", 1)})
    report = data_fit.refit_forward(model, small, np.zeros((8, 6, 6, 2), "float32"), samples=50)
    assert any("all zero" in note for note in report.layers["c"].notes)
    assert all(np.isfinite(w).all() for w in small.get_weights())


def test_collector_pairs_the_inputs_of_two_models_at_the_same_positions(digits):
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Conv2D(3, 3, name="c")(keras.layers.Conv2D(2, 1, name="a")(inp)))
    collector = MomentCollector(digits[:20], samples=100, seed=1)
    paired = collector.moments(model, ["c"], reference=model)["c"]
    np.testing.assert_allclose(paired.cross, paired.gram)  # the same model twice: x = x̂
    np.testing.assert_allclose(paired.target_mean, paired.mean)
    assert isinstance(paired, data_aware.Moments) and paired.count == 100


# ---------------------------------------------------------------- the API: parameters and rewrite_model


@pytest.mark.parametrize(
    "cls", [tfc.WeightSvdParameters, tfc.SpatialSvdParameters, tfc.TuckerParameters, tfc.AutoSchemeParameters]
)
def test_scheme_parameters_take_data_like_channel_pruning(cls, digits):
    manual = cls.ManualModeParams({"c1": 0.5})
    assert cls("manual", manual).data is None and not cls("manual", manual).data_aware
    p = cls("manual", manual, data=(digits, np.zeros(len(digits))), num_reconstruction_samples=300)
    assert p.data_aware and p.num_reconstruction_samples == 300
    assert "num_reconstruction_samples=300" in repr(p)
    with pytest.raises(TypeError, match="list is ambiguous"):
        cls("manual", manual, data=[digits, digits])
    with pytest.raises(TypeError, match=f"{cls.__name__}: data must be model inputs"):
        cls("manual", manual, data="images.npy")
    with pytest.raises(ValueError, match="num_reconstruction_samples"):
        cls("manual", manual, data=digits, num_reconstruction_samples=0)
    with pytest.raises(TypeError, match="ChannelPruningParameters: data must be model inputs"):
        tfc.ChannelPruningParameters(None, 10, False, "manual", manual)


def test_rewrite_model_with_data_refits_the_decomposed_layers(digits):
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="b")(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="d")(keras.layers.Flatten()(x)))
    plan = {"a": ("weight_svd", 1), "b": ("spatial_svd", 3), "d": ("svd", 2)}
    test = digits[1000:]

    def error(m: keras.Model) -> float:
        return float(np.mean((m.predict(test, verbose=0) - model.predict(test, verbose=0)) ** 2))

    free = tfc.rewrite_model(model, plan)
    fitted = tfc.rewrite_model(model, plan, data=digits[:1000], num_reconstruction_samples=1000)
    assert error(fitted) < 0.7 * error(free)
    with pytest.raises(TypeError, match="rewrite_model: data must be model inputs"):
        tfc.rewrite_model(model, plan, data=3.0)


# ---------------------------------------------------------------- compress_model with data


def small_cnn(digits) -> keras.Model:
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inp)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="out")(x))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits[:1200], load_digits().target[:1200], epochs=2, verbose=0)
    return model


def test_compress_model_with_data_fits_the_factors_and_reports_the_time(digits, tmp_path):
    model = small_cnn(digits)
    test = digits[1200:]
    reference = model.predict(test, verbose=0)

    def score(m, iterations):  # agreement with the original outputs: higher is better
        return -float(np.mean((m.predict(test, verbose=0) - reference) ** 2))

    pairs = tfc.SpatialSvdParameters.ManualModeParams({"a": 0.5, "b": 0.3})
    free, _ = tfc.compress_model(
        model, score, None, "spatial_svd", "mac", tfc.SpatialSvdParameters("manual", pairs), verbose=0
    )
    params = tfc.SpatialSvdParameters("manual", pairs, data=digits[:400], num_reconstruction_samples=800)
    fitted, stats = tfc.compress_model(model, score, None, "spatial_svd", "mac", params, verbose=0)
    assert [layer.rank for layer in fitted.layers[1:3]] == [layer.rank for layer in free.layers[1:3]]  # same ranks
    assert score(fitted, None) > 2 * score(free, None)  # less than half the output error, on held-out images
    assert stats.timings["data_aware_collect_seconds"] > 0 and stats.timings["data_aware_fit_seconds"] > 0
    assert any("refitted in forward order (2 layer(s))" in note for note in stats.notes)

    # a score cache of data-free candidates is not read back for data-aware ones
    cache = str(tmp_path / "scores.json")
    greedy = tfc.SpatialSvdParameters.AutoModeParams(
        tfc.GreedySelectionParameters(0.6, num_comp_ratio_candidates=2, saved_eval_scores_dict=cache)
    )
    tfc.compress_model(model, score, None, "spatial_svd", "mac", tfc.SpatialSvdParameters("auto", greedy), verbose=0)
    aware = tfc.SpatialSvdParameters("auto", greedy, data=digits[:400], num_reconstruction_samples=800)
    with pytest.raises(ValueError, match="other settings"):
        tfc.compress_model(model, score, None, "spatial_svd", "mac", aware, verbose=0)


def test_a_score_cache_of_a_data_aware_run_without_readable_layers_is_read_back(digits, tmp_path):
    """The cache tag names the run's data even when no layer can be fitted (here a Conv2DTranspose only): a
    second run on the same cache reads the scores instead of refusing them as "other settings"."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 1, name="pre")(inp)
    x = keras.layers.Conv2DTranspose(16, 3, name="up")(x)
    model = keras.Model(inp, keras.layers.Conv2D(2, 1, name="mix")(x))
    greedy = tfc.WeightSvdParameters.AutoModeParams(
        tfc.GreedySelectionParameters(
            0.8, num_comp_ratio_candidates=2, saved_eval_scores_dict=str(tmp_path / "s.json")
        ),
        modules_to_ignore=["pre", "mix"],
    )
    params = tfc.WeightSvdParameters("auto", greedy, data=digits[:64], num_reconstruction_samples=100)
    calls = []

    def score(m, iterations):
        calls.append(1)
        return 1.0

    _, first = tfc.compress_model(model, score, None, "weight_svd", "mac", params, verbose=0)
    assert any("'up' keeps data-free factors" in n for n in first.notes)
    before = len(calls)
    _, second = tfc.compress_model(model, score, None, "weight_svd", "mac", params, verbose=0)
    assert second.eval_scores == first.eval_scores and len(calls) - before < before


def test_forward_refit_reads_the_original_outputs_for_several_layers_per_pass(digits, monkeypatch):
    """The original model's layer outputs are read for the next layers while they fit the budget, a few passes
    instead of one per layer; what is fitted does not depend on the budget."""
    model = digits_cnn()
    plan = {"c1": ("weight_svd", 1), "c2": ("spatial_svd", 3), "c3": ("tucker", (4, 4)), "fc": ("svd", 3)}
    passes = []
    original_outputs = MomentCollector.outputs

    def counted(self, reference, names, *args, **kwargs):
        passes.append(list(names))
        return original_outputs(self, reference, names, *args, **kwargs)

    monkeypatch.setattr(MomentCollector, "outputs", counted)
    fitted = {}
    for budget in (0, None):
        passes.clear()
        small = tfc.rewrite_model(model, plan)
        report = data_fit.refit_forward(model, small, digits[:200], samples=600, keep_bytes=budget)
        fitted[budget] = (small.get_weights(), list(passes), report)
    assert fitted[0][1] == [["c1"], ["c2"], ["c3"], ["fc"]]  # no budget: one original pass per layer
    assert fitted[None][1] == [["c1", "c2", "c3", "fc"]]  # the default budget holds all four: one pass
    for a, b in zip(fitted[0][0], fitted[None][0], strict=True):
        np.testing.assert_array_equal(a, b)
    report = fitted[None][2]
    assert sorted(report.layers) == sorted(plan)
    assert all(f.relative_error <= f.data_free_relative_error + 1e-12 for f in report.layers.values())


def test_the_selection_reads_moments_within_a_budget_and_selects_the_same(digits, monkeypatch):
    """The candidates' input moments are read when first needed, at most a budget of them held: with no budget each
    layer is read in its own pass, one layer held at a time, and the run scores, selects and builds exactly what a
    run holding them all does."""
    from tfcompress import data_stage

    model = small_cnn(digits)
    test = digits[1200:1300]
    reference = model.predict(test, verbose=0)

    def score(m, iterations):
        return -float(np.mean((m.predict(test, verbose=0) - reference) ** 2))

    greedy = tfc.WeightSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(0.6, num_comp_ratio_candidates=3))
    params = tfc.WeightSvdParameters("auto", greedy, data=digits[:300], num_reconstruction_samples=600)
    held_at_get = []
    real_get = data_stage.MomentStore.get

    def get(self, path):
        out = real_get(self, path)
        held_at_get.append(len(self.held))
        return out

    monkeypatch.setattr(data_stage.MomentStore, "get", get)
    runs = {}
    for budget in (None, 0):
        monkeypatch.setattr(data_stage, "moments_budget", lambda m, b=budget: b)
        held_at_get.clear()
        runs[budget] = (*tfc.compress_model(model, score, None, "weight_svd", "mac", params, verbose=0), held_at_get[:])
    (big, big_stats, big_held), (small, small_stats, small_held) = runs[None], runs[0]
    assert max(small_held) == 1 and max(big_held) == 2  # two readable candidates: both held, or one at a time
    assert any("read in 2 passes" in n for n in small_stats.notes)
    assert not any("passes over the sample" in n for n in big_stats.notes)
    assert small_stats.eval_scores == big_stats.eval_scores
    for a, b in zip(big.get_weights(), small.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_moment_store_gives_the_one_pass_moments_and_checks_its_arguments(digits):
    from tfcompress.data_stage import MomentStore

    model = digits_cnn()
    layers = {n: (model.get_layer(n), "weight_svd") for n in ("c1", "c2", "fc")}
    everything = MomentStore(model, layers, digits[:64], 300, keep_bytes=None)
    one_by_one = MomentStore(model, layers, digits[:64], 300, keep_bytes=0)
    for name in layers:
        a, b = everything.get(name), one_by_one.get(name)
        np.testing.assert_array_equal(a.gram, b.gram)
        assert one_by_one.held == [name]
    assert everything.passes == 1 and one_by_one.passes == 3
    # a budget for c1 and c2 (but not fc) reads them together
    pair = MomentStore(model, layers, digits[:64], 300, keep_bytes=everything.size("c1") + everything.size("c2"))
    pair.get("c1")
    assert pair.held == ["c1", "c2"] and pair.passes == 1
    with pytest.raises(KeyError, match="no readable candidate layer 'c3'"):
        pair.get("c3")
    with pytest.raises(ValueError, match="keep_bytes must be None or >= 0, got -1"):
        MomentStore(model, layers, digits[:64], 300, keep_bytes=-1)
