"""The accuracy target: ``GreedySelectionParameters(target_comp_ratio=None, max_score_drop=d)`` returns the cheapest
plan whose whole-model score stays within ``d`` of the baseline; with a target ratio too, a larger drop raises."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cnn

import tfcompress as tfc

G = tfc.GreedySelectionParameters
X = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype("float32")


def agreement(model):
    reference = np.asarray(model(X))

    def score(m, _):
        return 1.0 - float(np.mean((np.asarray(m(X)) - reference) ** 2))

    return score


def parameters(scheme, greedy):
    if scheme == "channel_pruning":
        return tfc.ChannelPruningParameters(X, 200, False, "auto", tfc.ChannelPruningParameters.AutoModeParams(greedy))
    cls = {"spatial_svd": tfc.SpatialSvdParameters, "weight_svd": tfc.WeightSvdParameters}.get(scheme)
    cls = cls or tfc.AutoSchemeParameters
    return cls(tfc.Mode.auto, cls.AutoModeParams(greedy))


def test_parameters_are_checked():
    with pytest.raises(ValueError, match=r"target_comp_ratio .* max_score_drop .* or both"):
        G(None)
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_score_drop"):
            G(None, max_score_drop=bad)
    with pytest.raises(TypeError, match="max_score_drop"):
        G(0.5, max_score_drop="0.01")
    assert G(None, max_score_drop=0).max_score_drop == 0.0 and G(0.5, max_score_drop=np.float32(0.5)).target_comp_ratio


def check_search(scheme, drops):
    model = cnn(widths=(8, 16, 32))
    score = agreement(model)
    results = {}
    for drop in drops:
        _, stats = tfc.compress_model(
            model, score, None, scheme, "mac", parameters(scheme, G(None, 5, max_score_drop=drop)), verbose=0
        )
        results[drop] = stats
        assert stats.target_comp_ratio is None and stats.max_score_drop == drop
        assert 1 <= stats.whole_model_evaluations == len(stats.plan_scores) <= 12
        # the chosen plan was verified on the whole model, and the compressed model agrees
        assert stats.baseline_model_accuracy - stats.compressed_model_accuracy <= drop + 1e-5
        chosen = [s for k, s in stats.plan_scores.items() if k.endswith(f"ratio {stats.selected_comp_ratio:.4f}")]
        assert chosen and stats.compressed_model_accuracy == pytest.approx(chosen[-1], abs=1e-4)
        # every cheaper plan the search scored was beyond the drop
        for key, plan_score in stats.plan_scores.items():
            if float(key.rsplit(" ", 1)[1]) < stats.selected_comp_ratio - 1e-4:
                assert stats.baseline_model_accuracy - plan_score > drop
        assert any("accuracy target" in note for note in stats.notes)
        assert stats.mac_compression_ratio < 1.0
    return results


@pytest.mark.parametrize("scheme", ["spatial_svd", "auto", "channel_pruning"])
def test_the_cheapest_plan_within_the_drop(scheme):
    check_search(scheme, [0.02])


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["spatial_svd", "channel_pruning"])
def test_a_larger_drop_gives_a_cheaper_plan(scheme):
    results = check_search(scheme, [0.002, 0.02])
    assert results[0.02].selected_comp_ratio <= results[0.002].selected_comp_ratio < 1.0


def test_with_a_target_too_the_drop_is_checked():
    model = cnn(widths=(8, 16, 32))
    score = agreement(model)
    with pytest.raises(ValueError, match=r"dropped by [0-9.e-]+ .* more than max_score_drop=0\b") as err:
        tfc.compress_model(
            model, score, None, "spatial_svd", "mac", parameters("spatial_svd", G(0.3, max_score_drop=0))
        )
    assert err.value.stats.mac_compression_ratio <= 0.31
    _, stats = tfc.compress_model(
        model, score, None, "spatial_svd", "mac", parameters("spatial_svd", G(0.6, max_score_drop=1.0)), verbose=0
    )
    assert stats.mac_compression_ratio <= 0.61 and stats.max_score_drop == 1.0 and stats.whole_model_evaluations == 0


def test_nothing_within_the_drop_keeps_the_model_and_warns():
    model = cnn(widths=(8, 16, 32))
    score = agreement(model)
    noisy = {"calls": 0}

    def strict(m, i):  # every compressed plan loses more than the tolerance
        noisy["calls"] += 1
        s = score(m, i)
        return s if s == 1.0 else s - 1.0

    with pytest.warns(UserWarning, match="no compressed plan stays within"):
        _, stats = tfc.compress_model(
            model,
            strict,
            None,
            "weight_svd",
            "mac",
            parameters("weight_svd", G(None, 4, max_score_drop=0.0)),
            verbose=0,
        )
    assert stats.mac_compression_ratio == 1.0 and not stats.per_layer_stats


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["spatial_svd", "channel_pruning"])
def test_digits_accuracy_within_one_point(scheme):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    model = cnn(widths=(32, 64, 64), softmax=True, seed=0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x[:1200], y[:1200], epochs=20, batch_size=32, verbose=0)

    def accuracy(m, _):
        return float(np.mean(np.argmax(m.predict(x[1200:], verbose=0, batch_size=1024), axis=-1) == y[1200:]))

    if scheme == "channel_pruning":
        params = tfc.ChannelPruningParameters(
            x[:512], 1000, True, "auto", tfc.ChannelPruningParameters.AutoModeParams(G(None, max_score_drop=0.01))
        )
    else:
        params = parameters(scheme, G(None, max_score_drop=0.01))
    small, stats = tfc.compress_model(model, accuracy, None, scheme, "mac", params, verbose=0)
    assert stats.baseline_model_accuracy > 0.9
    assert stats.compressed_model_accuracy >= stats.baseline_model_accuracy - 0.01
    assert accuracy(small, None) == stats.compressed_model_accuracy
    assert stats.mac_compression_ratio < 0.9  # a real saving within one point of accuracy
    assert stats.whole_model_evaluations <= 12
