"""compress_model(..., "channel_pruning") and svd_then_prune: end to end on real digits, and exact cases."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress as tfc
from tfcompress.pruning import prune_units
from tfcompress.pruning.driver import keep_count, model_inputs

CP = tfc.ChannelPruningParameters


def auto_params(data, target, **kwargs):
    return CP(data, 1000, False, "auto", CP.AutoModeParams(tfc.GreedySelectionParameters(target)), **kwargs)


def manual_params(data, pairs, **kwargs):
    return CP(data, 1000, False, "manual", CP.ManualModeParams(pairs), **kwargs)


@pytest.fixture(scope="module")
def digits():
    from tfcompress.demo import digits_cnn, digits_data

    x_train, y_train, x_test, y_test = digits_data(seed=0)
    keras.utils.set_random_seed(0)
    tf.random.set_seed(0)
    model = digits_cnn()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    x_val, y_val = x_test[:300], y_test[:300]
    x_hold, y_hold = x_test[300:], y_test[300:]

    def accuracy(m, iterations, x=x_val, y=y_val):
        return float(np.mean(np.argmax(m.predict(x, verbose=0, batch_size=1024), -1) == y))

    def held_out(m):
        return accuracy(m, None, x_hold, y_hold)

    assert accuracy(model, None) > 0.9
    return model, accuracy, held_out, x_train


def kept_inputs(stats):
    """``{layer: kept input channels}`` of the layers whose input channels were pruned (from their own stats rows)."""
    return {
        row.name: row.in_channels[1]
        for row in stats.per_layer_stats
        if row.in_channels and row.in_channels[1] < row.in_channels[0] and row.out_channels is not None
    }


def snapshot(model):
    return [w.copy() for w in model.get_weights()], model.get_config()


@pytest.mark.slow
def test_digits_half_macs_reconstruction_beats_plain_pruning_and_file_shrinks(digits, tmp_path):
    model, accuracy, held_out, x_train = digits
    weights, config = snapshot(model)
    small, stats = tfc.compress_model(
        model, accuracy, None, "channel_pruning", "mac", auto_params(x_train, 0.5), verbose=0
    )
    # the user's model is untouched
    assert model.get_config() == config
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights, strict=True))
    # really smaller, at the reported ratio
    assert stats.mac_compression_ratio <= 0.5 + 1e-3
    assert stats.mac_compression_ratio == pytest.approx(tfc.model_cost(small).macs / tfc.model_cost(model).macs)
    assert stats.mac_compression_ratio > 0.45  # the budget left by the threshold search is spent
    kept = kept_inputs(stats)
    assert set(kept) <= {"conv2", "conv3", "fc"} and kept
    assert small.get_layer("conv1").filters == kept.get("conv2", 32)
    rows = {row.name: row for row in stats.per_layer_stats}
    why = stats.skipped_layers.get("conv1") or rows["conv1"].group  # not listed as "not compressed" if it changed
    assert "model input" in why
    # the same plan without reconstruction loses more accuracy
    plain, plain_stats = tfc.compress_model(
        model,
        accuracy,
        None,
        "channel_pruning",
        "mac",
        manual_params(x_train, list(stats.chosen_ratios.items()), reconstruct=False),
        verbose=0,
    )
    assert plain_stats.mac_compression_ratio == pytest.approx(stats.mac_compression_ratio)
    assert held_out(small) > held_out(plain) + 0.02, (held_out(small), held_out(plain))
    assert stats.compressed_model_accuracy > plain_stats.compressed_model_accuracy
    # the .keras file is smaller and loads with the same outputs
    tfc_path, orig_path = tmp_path / "small.keras", tmp_path / "orig.keras"
    small.save(tfc_path)
    model.save(orig_path)
    assert os.path.getsize(tfc_path) < 0.75 * os.path.getsize(orig_path)
    loaded = keras.saving.load_model(tfc_path)
    x = x_train[:64]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), small.predict(x, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_greedy_channel_choice_beats_magnitude_on_digits(digits):
    model, accuracy, _held_out, x_train = digits
    x = x_train[:400]
    reference = model.predict(x, verbose=0)

    def mse(m):
        return float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    pairs = [("conv2", 0.25), ("conv3", 0.25)]
    by_greedy, _ = tfc.compress_model(
        model, accuracy, None, "channel_pruning", "mac", manual_params(x_train, pairs), verbose=0
    )
    by_magnitude, _ = tfc.compress_model(
        model,
        accuracy,
        None,
        "channel_pruning",
        "mac",
        manual_params(x_train, pairs, channel_selection="magnitude"),
        verbose=0,
    )
    assert mse(by_greedy) < mse(by_magnitude)


def linear_model():
    """1x1 convs without activations: conv2's 8 input channels span only 3 dimensions."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(8, 1, name="c1")(inputs)
    h = keras.layers.Conv2D(5, 1, name="c2")(h)
    return keras.Model(inputs, h)


def test_reconstruction_is_exact_when_the_kept_channels_span_the_inputs():
    model = linear_model()
    x = np.random.default_rng(0).normal(size=(40, 6, 6, 3)).astype("float32")
    reference = model.predict(x, verbose=0)

    def score(m, _):
        return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    small, _stats = tfc.compress_model(
        model, score, None, "channel_pruning", "mac", manual_params(x, [("c2", 3 / 8)]), verbose=0
    )
    assert small.get_layer("c2").kernel.shape == (1, 1, 3, 5)
    assert small.get_layer("c1").kernel.shape == (1, 1, 3, 3)
    np.testing.assert_allclose(small.predict(x, verbose=0), reference, atol=1e-4)
    plain, _ = tfc.compress_model(
        model, score, None, "channel_pruning", "mac", manual_params(x, [("c2", 3 / 8)], reconstruct=False), verbose=0
    )
    assert np.max(np.abs(plain.predict(x, verbose=0) - reference)) > 1e-2


def test_candidates_are_evaluated_in_place_without_rebuilding(monkeypatch):
    model = linear_model()
    x = np.random.default_rng(0).normal(size=(20, 6, 6, 3)).astype("float32")
    seen = []

    def score(m, _):
        seen.append(id(m))
        return float(np.mean(m.predict(x[:4], verbose=0)))

    clones = []
    original_clone = keras.models.clone_model

    def counting_clone(*args, **kwargs):
        clones.append(1)
        return original_clone(*args, **kwargs)

    monkeypatch.setattr(keras.models, "clone_model", counting_clone)
    params = CP(x, 200, False, "auto", CP.AutoModeParams(tfc.GreedySelectionParameters(0.7, 4)))
    _, stats = tfc.compress_model(model, score, None, "channel_pruning", "mac", params, verbose=0)
    # baseline + candidates on one working copy; the final model is a different object
    assert len(set(seen[:-1])) == 1 and seen[-1] != seen[0]
    assert stats.num_eval_calls == len(seen) == 1 + 3 + 1
    assert len(clones) <= 3  # working copy and final model, not one per candidate


def test_keep_count_rounding():
    assert keep_count(0.5, 32) == 16
    assert keep_count(0.3, 32, multiplicity=8) == 8
    assert keep_count(0.9, 32, multiplicity=8) == 32
    assert keep_count(0.01, 3) == 1


def test_model_inputs_from_dataset_array_and_tuple():
    model = linear_model()
    x = np.arange(10 * 6 * 6 * 3, dtype="float32").reshape(10, 6, 6, 3)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(10))).batch(4)
    np.testing.assert_array_equal(model_inputs(ds, model, 7), x[:7])
    np.testing.assert_array_equal(model_inputs(tf.data.Dataset.from_tensor_slices(x), model, 3), x[:3])
    np.testing.assert_array_equal(model_inputs((x, np.zeros(10)), model, 20), x)
    with pytest.raises(ValueError, match="do not fit the model input"):
        model_inputs(np.zeros((4, 5, 5, 3)), model, 4)


def test_errors_name_the_problem():
    model = linear_model()
    x = np.zeros((8, 6, 6, 3), "float32")

    def score(m, _):
        return 0.0

    with pytest.raises(ValueError, match=r"'c1'.*model input"):
        tfc.compress_model(model, score, None, "channel_pruning", "mac", manual_params(x, [("c1", 0.5)]), verbose=0)
    with pytest.raises(ValueError, match="nope"):
        tfc.compress_model(model, score, None, "channel_pruning", "mac", manual_params(x, [("nope", 0.5)]), verbose=0)
    with pytest.raises(ValueError, match="latency"):
        tfc.compress_model(model, score, None, "channel_pruning", "latency", auto_params(x, 0.5), verbose=0)
    with pytest.raises(TypeError, match="ChannelPruningParameters"):
        tfc.compress_model(
            model,
            score,
            None,
            "channel_pruning",
            "mac",
            tfc.SpatialSvdParameters("manual", tfc.SpatialSvdParameters.ManualModeParams([("c2", 0.5)])),
        )
    tar = CP(x, 100, False, "auto", CP.AutoModeParams(tfc.TarRankSelectionParameters(5, 0.5)))
    with pytest.raises(ValueError, match="TAR"):
        tfc.compress_model(model, score, None, "channel_pruning", "mac", tar, verbose=0)
    with pytest.raises(TypeError, match="data"):
        CP(None, 100, False, "manual", CP.ManualModeParams([("c2", 0.5)]))
    with pytest.raises(ValueError, match="channel_selection"):
        CP(x, 100, False, "manual", CP.ManualModeParams([("c2", 0.5)]), channel_selection="random")
    with pytest.raises(ValueError, match="num_reconstruction_samples"):
        CP(x, 0, False, "manual", CP.ManualModeParams([("c2", 0.5)]))


def test_first_conv_pruned_with_a_gather_layer_when_allowed():
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 6)),
            keras.layers.Conv2D(8, 3, name="a"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, name="out"),
        ]
    )
    x = np.random.default_rng(0).normal(size=(30, 8, 8, 6)).astype("float32")
    params = CP(x, 500, True, "manual", CP.ManualModeParams([("a", 0.5)]))
    small, stats = tfc.compress_model(model, lambda m, _: 0.0, None, "channel_pruning", "mac", params, verbose=0)
    assert any(type(layer).__name__ == "ChannelGather" for layer in small.layers)
    assert small.get_layer("a").kernel.shape == (3, 3, 3, 8)
    assert stats.mac_compression_ratio < 0.6
    assert stats.per_layer_stats[0].scheme == "channel_pruning+gather"


def test_score_cache_is_reused(tmp_path):
    model = linear_model()
    x = np.random.default_rng(0).normal(size=(20, 6, 6, 3)).astype("float32")
    reference = model.predict(x, verbose=0)

    def score(m, _):
        return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    cache = str(tmp_path / "scores.json")
    params = CP(
        x, 300, False, "auto", CP.AutoModeParams(tfc.GreedySelectionParameters(0.7, 4, saved_eval_scores_dict=cache))
    )
    _first, s1 = tfc.compress_model(model, score, None, "channel_pruning", "mac", params, verbose=0)
    _second, s2 = tfc.compress_model(model, score, None, "channel_pruning", "mac", params, verbose=0)
    assert s1.num_eval_calls == 5 and s2.num_eval_calls == 2  # baseline + final only
    assert s1.eval_scores == s2.eval_scores
    assert [(r.name, r.in_channels, r.out_channels) for r in s1.per_layer_stats] == [
        (r.name, r.in_channels, r.out_channels) for r in s2.per_layer_stats
    ]


@pytest.mark.slow
def test_trainer_is_called_after_each_pruned_group(digits):
    model, accuracy, _held_out, x_train = digits
    calls = []

    class Recorder:
        def train_model(self, m, layer, train_flag=True):
            calls.append(layer.name)

    params = manual_params(x_train, [("conv2", 0.5), ("conv3", 0.5)])
    small, _stats = tfc.compress_model(model, accuracy, None, "channel_pruning", "mac", params, Recorder(), verbose=0)
    assert calls == ["conv2", "conv3"]
    reference, _ = tfc.compress_model(model, accuracy, None, "channel_pruning", "mac", params, verbose=0)
    assert [lay.get_weights()[0].shape for lay in small.layers if lay.weights] == [
        lay.get_weights()[0].shape for lay in reference.layers if lay.weights
    ]
    x = x_train[:50]
    np.testing.assert_allclose(small.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-4)


@pytest.mark.slow
def test_svd_then_prune_on_digits(digits):
    model, accuracy, _held_out, x_train = digits
    small, result = tfc.svd_then_prune(
        model, accuracy, None, data=x_train, target_comp_ratio=0.5, ssvd_ratios=(0.75, 1.0), tolerance=0.05, verbose=0
    )
    assert len(result.steps) == 2
    first = result.steps[0]
    assert first.ssvd_stats.mac_compression_ratio <= 0.751
    assert first.prune_stats is not None and first.prune_ratio == pytest.approx(
        0.5 / first.ssvd_stats.mac_compression_ratio
    )
    for step in result.steps:
        assert step.mac_compression_ratio <= 0.5 + 2e-3
    assert result.best.mac_compression_ratio == pytest.approx(tfc.model_cost(small).macs / tfc.model_cost(model).macs)
    assert result.to_dict()["chosen"] == result.chosen
    assert "spatial SVD" in str(result)


@pytest.mark.slow
def test_resnet50_pruned_everywhere_at_0_7_builds_saves_and_reports_its_ratio(tmp_path):
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    x = np.random.default_rng(0).normal(size=(8, 64, 64, 3)).astype("float32")
    units, _ = prune_units(model)
    pairs = [(unit.name, 0.7) for unit in units]
    params = CP(x, 300, False, "manual", CP.ManualModeParams(pairs), channel_selection="magnitude", reconstruct=False)
    small, stats = tfc.compress_model(model, lambda m, _: 0.0, None, "channel_pruning", "mac", params, verbose=0)
    assert stats.mac_compression_ratio == pytest.approx(tfc.model_cost(small).macs / tfc.model_cost(model).macs)
    assert 0.4 < stats.mac_compression_ratio < 0.75
    path = tmp_path / "r50.keras"
    small.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x[:2], verbose=0), small.predict(x[:2], verbose=0), atol=1e-5)


def test_decomposed_layers_are_pruned_through_their_first_and_last_factors():
    from tfcompress.demo import digits_cnn
    from tfcompress.pruning import apply_pruning

    keras.utils.set_random_seed(3)
    model = digits_cnn()
    small = tfc.rewrite_model(
        model,
        {"conv1": ("spatial_svd", 2), "conv2": ("spatial_svd", 20), "conv3": ("weight_svd", 20), "fc": ("svd", 5)},
    )
    units, _ = prune_units(small)
    assert [(u.name, [s.layer for s in u.producers]) for u in units] == [
        ("conv2", ["conv1"]),
        ("conv3", ["conv2"]),
        ("fc", ["conv3"]),
    ]
    kept = {u.name: np.arange(0, u.channels, 2) for u in units}
    pruned = apply_pruning(small, kept, units=units)
    shapes = {layer.name: [w.shape for w in layer.get_weights()] for layer in pruned.layers if layer.weights}
    assert shapes["conv2"] == [(3, 1, 16, 20), (1, 3, 20, 32), (32,)]  # first factor's inputs, last factor's outputs
    assert shapes["fc"] == [(32, 5), (5, 10), (10,)]
    masked = tfc.rewrite_model(small, {})  # the same function: zeros on the dropped inputs of each first factor
    for unit in units:
        drop = np.setdiff1d(np.arange(unit.channels), kept[unit.name])
        for slot in unit.consumers:
            layer = masked.get_layer(slot.layer)
            weights = layer.get_weights()
            weights[0][..., slot.index[drop], :] = 0.0
            layer.set_weights(weights)
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(pruned.predict(x, verbose=0), masked.predict(x, verbose=0), atol=1e-5)
    # a weight-SVD layer cannot keep fewer input channels than its rank: such candidates are not offered
    x_many = np.random.default_rng(1).random((40, 8, 8, 1)).astype("float32")
    params = CP(x_many, 300, False, "manual", CP.ManualModeParams([("conv3", 0.25)]))
    out, stats = tfc.compress_model(small, lambda m, _: 0.0, None, "channel_pruning", "mac", params, verbose=0)
    assert out.get_layer("conv3").get_weights()[0].shape[-2] == 20
    assert any("rank of a decomposed layer" in note for note in stats.notes)


def test_four_conv_chain_pruned_at_half_through_compress_model():
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [keras.Input((12, 12, 1))]
        + [
            keras.layers.Conv2D(n, 3, padding="same", activation="relu", name=f"c{i}")
            for i, n in enumerate((10, 20, 30, 40), 1)
        ]
    )
    x = np.random.default_rng(0).random((24, 12, 12, 1)).astype("float32")
    params = manual_params(x, [("c2", 0.5), ("c3", 0.5), ("c4", 0.5)])
    small, stats = tfc.compress_model(model, lambda m, _: 0.0, None, "channel_pruning", "mac", params, verbose=0)
    assert [tuple(small.get_layer(f"c{i}").kernel.shape[-2:]) for i in range(1, 5)] == [
        (1, 5),
        (5, 10),
        (10, 15),
        (15, 40),
    ]
    # one row per changed layer, with its own channels and costs, and the groups it belongs to
    rows = [(row.name, row.in_channels, row.out_channels, row.rank) for row in stats.per_layer_stats]
    assert rows == [
        ("c1", [1, 1], [10, 5], None),
        ("c2", [10, 5], [20, 10], None),
        ("c3", [20, 10], [30, 15], None),
        ("c4", [30, 15], [40, 40], None),
    ]
    assert [row.group.split(";")[0] for row in stats.per_layer_stats] == [
        "c2 (out)",
        "c2 (in), c3 (out)",
        "c3 (in), c4 (out)",
        "c4 (in)",
    ]
    assert "model input" in stats.per_layer_stats[0].group and "c1" not in stats.skipped_layers
    saved = sum(row.macs_before - row.macs_after for row in stats.per_layer_stats)
    assert saved == stats.original_macs - stats.compressed_macs
    saved = sum(row.params_before - row.params_after for row in stats.per_layer_stats)
    assert saved == stats.original_params - stats.compressed_params
    for row in stats.per_layer_stats:
        layer = small.get_layer(row.name)
        assert tuple(layer.kernel.shape[-2:]) == (row.in_channels[1], row.out_channels[1])
        assert row.ratio == pytest.approx(row.macs_after / row.macs_before)
    assert stats.chosen_ratios == {"c2": 0.5, "c3": 0.5, "c4": 0.5}
    text = str(stats)
    assert "in ch" in text and "30->15" in text and "c3 (in), c4 (out)" in text
    assert stats.mac_compression_ratio == pytest.approx(tfc.model_cost(small).macs / tfc.model_cost(model).macs)


def test_svd_then_prune_choice_rule():
    from tfcompress.workflow import SvdThenPruneResult, SvdThenPruneStep, _choose

    def step(ratio, score, ok=True):
        return SvdThenPruneStep(0.75, tfc.CompressionStats(), score, 0.6, None, score, ratio, ratio, ok)

    result = SvdThenPruneResult(0.5, 0.01, 0.9, [step(0.4999, 0.90), step(0.4995, 0.93), step(0.45, 0.95)])
    _choose(result)
    assert result.chosen == 1  # near-equal distance to the target: the higher score wins; 0.45 is too far
    result = SvdThenPruneResult(0.5, 0.01, 0.9, [step(0.5, 0.95, ok=False), step(0.3, 0.99, ok=True)])
    _choose(result)
    assert result.chosen == 1  # only steps within tolerance count
    result = SvdThenPruneResult(0.5, 0.01, 0.9, [step(0.5, 0.5, ok=False), step(0.45, 0.6, ok=False)])
    with pytest.warns(UserWarning, match="no final model is within tolerance"):
        _choose(result)
    assert result.chosen == 1 and result.notes


def _tiny_cnn():
    keras.utils.set_random_seed(3)
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(10, name="fc"),
        ]
    )


@pytest.mark.parametrize(("change", "winner"), [(-1, "threshold"), (+1, "min_summed_loss")])
def test_two_plan_check_scores_both_plans_in_place_restores_the_copy_and_builds_the_winner(monkeypatch, change, winner):
    from tfcompress.pruning import driver

    model = _tiny_cnn()
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype("float32")
    reference = model.predict(x, verbose=0)
    seen = []

    def score(m, _):
        seen.append(m)
        return 1.0 - float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    real_select = driver.select_plan
    alternatives = []

    def with_alternative(run, keeps, table):
        chosen, _ = real_select(run, keeps, table)
        name = sorted(chosen.plan)[0]
        plan = {**chosen.plan, name: chosen.plan[name] + change}  # one group keeps one channel less / more
        alternatives.append(plan)
        return chosen, driver.Plan(plan, run.plan_cost(plan) / run.total_cost, ["the alternative's note"])

    monkeypatch.setattr(driver, "select_plan", with_alternative)
    real_compare = driver._compare_plans
    after_check = []

    def compare(run, *args):
        out = real_compare(run, *args)
        after_check.extend(run.work.get_weights())  # (the final build may mask the copy again; not the check)
        return out

    monkeypatch.setattr(driver, "_compare_plans", compare)
    params = CP(x, 300, False, "auto", CP.AutoModeParams(tfc.GreedySelectionParameters(0.6, 4)))
    small, stats = tfc.compress_model(model, score, None, "channel_pruning", "mac", params, verbose=0)
    work = seen[0]
    candidates = len(seen) - 4  # baseline, candidates, the two plans, the final model
    assert stats.num_eval_calls == len(seen) == 1 + candidates + 2 + 1 and candidates > 0
    assert all(m is work for m in seen[:-1]) and seen[-1] is small
    assert set(stats.plan_scores) == {"threshold", "min_summed_loss"}
    better = max(stats.plan_scores, key=stats.plan_scores.get)
    assert better == winner
    assert any("whole-model check of two plans" in n for n in stats.notes)
    assert ("the alternative's note" in stats.notes) == (winner == "min_summed_loss")
    # the final model is the winner, built from its masked refits: it computes what the working copy computed
    assert stats.compressed_model_accuracy == pytest.approx(stats.plan_scores[winner], abs=1e-5)
    kept = kept_inputs(stats)
    pruned = {name: keep for name, keep in alternatives[0].items() if keep < model.get_layer(name).kernel.shape[-2]}
    if winner == "min_summed_loss":
        assert kept == pruned
    else:
        assert kept != pruned
    # both plans were masked into the working copy and it was restored afterwards, exactly
    for a, b in zip(after_check, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_two_plan_check_can_be_switched_off():
    model = _tiny_cnn()
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype("float32")
    calls = []

    def score(m, _):
        calls.append(1)
        return float(-np.mean(m.predict(x[:8], verbose=0) ** 2))

    select = tfc.GreedySelectionParameters(0.6, 4, compare_plans=False)
    params = CP(x, 300, False, "auto", CP.AutoModeParams(select))
    _, stats = tfc.compress_model(model, score, None, "channel_pruning", "mac", params, verbose=0)
    assert stats.plan_scores == {} and not any("two plans" in n for n in stats.notes)
    assert stats.num_eval_calls == len(calls) == 1 + sum(len(row) for row in stats.eval_scores.values()) + 1


@pytest.mark.slow
def test_functional_transformer_ffn_hidden_units_are_pruned():
    """A transformer feed-forward block written as functional layers (Dense -> gelu -> Dense on token sequences,
    residual and LayerNormalization after it) loses hidden units of its first projection; the second is refitted."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 32))
    hidden = keras.layers.Dense(128, activation="gelu", name="ffn_in")(inp)
    out = keras.layers.Dense(32, name="ffn_out")(hidden)
    model = keras.Model(inp, keras.layers.LayerNormalization(name="ln")(inp + out))
    x = np.random.default_rng(0).normal(size=(64, 12, 32)).astype("float32")
    reference = model.predict(x, verbose=0)

    def fidelity(m, _):
        return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    params = tfc.ChannelPruningParameters(
        data=x,
        num_reconstruction_samples=500,
        allow_custom_downsample_ops=False,
        mode="auto",
        params=tfc.ChannelPruningParameters.AutoModeParams(tfc.GreedySelectionParameters(0.6, 4)),
    )
    pruned, stats = tfc.compress_model(model, fidelity, 1, "channel_pruning", "mac", params, verbose=0)
    assert stats.mac_compression_ratio <= 0.6 + 1e-9
    units = pruned.get_layer("ffn_in").units
    assert units < 128 and pruned.get_layer("ffn_out").kernel.shape[0] == units
