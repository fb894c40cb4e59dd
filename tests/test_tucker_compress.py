"""compress_model with the Tucker-2 scheme: auto (greedy) and manual modes, rank pairs, rewrite, candidate function."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress import decompose
from tfcompress.params import AutoSchemeParameters

L = keras.layers
TUCKER = tfc.TuckerParameters


def cnn(seed: int = 3) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            L.Conv2D(24, 3, padding="same", activation="relu", name="conv2"),
            L.Conv2D(32, 3, padding="same", name="conv3"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(10, name="fc"),
        ],
        name="tucker_cnn",
    )


def mse_score(model: keras.Model):
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    reference = model.predict(x, verbose=0)

    def score(m, iterations):
        return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    return score


def test_auto_greedy_reaches_target_with_tucker_layers():
    model = cnn()
    params = TUCKER("auto", TUCKER.AutoModeParams(tfc.GreedySelectionParameters(target_comp_ratio=0.5)))
    small, stats = tfc.compress_model(model, mse_score(model), None, "tucker", "mac", params, verbose=0)
    assert stats.mac_compression_ratio <= 0.5 + 1e-3
    assert stats.per_layer_stats, "something must be compressed"
    for row in stats.per_layer_stats:
        assert row.scheme == "tucker"
        assert isinstance(row.rank, list) and len(row.rank) == 2
        layer = small.get_layer(row.name)
        assert isinstance(layer, tfc.TuckerConv2D)
        assert list(layer.ranks) == row.rank
    # Dense layers are not Tucker candidates
    assert "fc" in stats.skipped_layers
    assert isinstance(small.get_layer("fc"), L.Dense)
    # every evaluated candidate was scored for conv layers only
    assert set(stats.eval_scores) <= {"conv1", "conv2", "conv3"}
    assert tfc.model_cost(small).macs == stats.compressed_macs


def test_manual_mode_ranks_come_from_rank_for_ratio():
    model = cnn()
    ratios = {"conv2": 0.4, "conv3": 0.3}
    params = TUCKER("manual", TUCKER.ManualModeParams(ratios))
    small, stats = tfc.compress_model(model, mse_score(model), None, "tucker", "mac", params, verbose=0)
    for name, ratio in ratios.items():
        expected = tfc.rank_for_ratio(model.get_layer(name), ratio, "tucker", "mac")
        assert isinstance(expected, tuple) and len(expected) == 2
        assert small.get_layer(name).ranks == expected
        row = next(r for r in stats.per_layer_stats if r.name == name)
        assert row.rank == list(expected)
        assert row.macs_after <= ratio * row.macs_before
    assert isinstance(small.get_layer("conv1"), L.Conv2D)


def test_rank_pair_is_proportional_to_channels():
    model = cnn()
    conv = model.get_layer("conv3")  # C = 24, N = 32
    for ratio in (0.2, 0.5, 0.8):
        r1, r2 = tfc.rank_for_ratio(conv, ratio, "tucker", "mac")
        assert 1 <= r1 <= 24 and 1 <= r2 <= 32
        assert r2 == max(1, min(32, round(r1 * 32 / 24)))
    # a larger ratio never gives smaller ranks
    pairs = [tfc.rank_for_ratio(conv, r, "tucker", "mac") for r in (0.1, 0.3, 0.5, 0.7, 0.9)]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(pairs))


def test_multiplicity_rounds_both_ranks():
    model = cnn()
    conv = model.get_layer("conv3")
    plain = tfc.rank_for_ratio(conv, 0.3, "tucker", "mac")
    rounded = tfc.rank_for_ratio(conv, 0.3, "tucker", "mac", multiplicity=8)
    assert all(r % 8 == 0 or r == bound for r, bound in zip(rounded, (24, 32), strict=True))
    assert all(r >= p for r, p in zip(rounded, plain, strict=True))
    params = TUCKER("manual", TUCKER.ManualModeParams({"conv3": 0.3}), multiplicity=8)
    small, _ = tfc.compress_model(model, mse_score(model), None, "tucker", "mac", params, verbose=0)
    assert small.get_layer("conv3").ranks == rounded


def test_rewrite_with_tucker_pairs():
    model = cnn()
    new = tfc.rewrite_model(model, {"conv2": ("tucker", (4, 6)), "conv3": ("tucker", (24, 32))})
    assert new.get_layer("conv2").ranks == (4, 6)
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    # full ranks on conv3 alone reproduce the original function
    full = tfc.rewrite_model(model, {"conv3": ("tucker", (24, 32))})
    np.testing.assert_allclose(full.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)
    with pytest.raises(ValueError, match="conv2"):
        tfc.rewrite_model(model, {"conv2": ("tucker", (17, 6))})


def test_candidate_function_equals_decomposed_layer():
    """The in-place candidate (reconstructed kernel) computes what TuckerConv2D.from_layer computes."""
    model = cnn()
    conv = model.get_layer("conv2")
    ranks = tfc.rank_for_ratio(conv, 0.3, "tucker", "mac")
    x = np.random.default_rng(2).normal(size=(4, 8, 8, 16)).astype("float32")
    kernel = keras.ops.convert_to_numpy(conv.kernel).astype(np.float64)
    # the same reconstruction compress_model swaps into the work copy
    reconstructed = decompose.tucker2_compose(*decompose.tucker2_factors(kernel, ranks, hooi_iterations=2))
    work = tfc.rewrite_model(model, {})
    work_conv = work.get_layer("conv2")
    work_conv.kernel.assign(reconstructed.astype("float32"))
    swapped = keras.ops.convert_to_numpy(work_conv(x))
    decomposed = tfc.TuckerConv2D.from_layer(conv, ranks=ranks)
    direct = keras.ops.convert_to_numpy(decomposed(x))
    np.testing.assert_allclose(swapped, direct, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(decomposed.reconstructed_kernel(), reconstructed, rtol=1e-4, atol=1e-5)
    # and the truncation actually changed the function
    assert not np.allclose(swapped, keras.ops.convert_to_numpy(conv(x)), atol=1e-3)


def test_compressed_score_matches_candidate_score_for_single_layer():
    """Single compressed layer: the score of the compressed model equals the score of its candidate evaluation."""
    model = cnn()
    score = mse_score(model)
    params = TUCKER("auto", TUCKER.AutoModeParams(tfc.GreedySelectionParameters(0.9), modules_to_ignore=["conv1"]))
    small, stats = tfc.compress_model(model, score, None, "tucker", "mac", params, verbose=0)
    if len(stats.per_layer_stats) == 1:
        row = stats.per_layer_stats[0]
        table = stats.eval_scores[row.name]
        layer = model.get_layer(row.name)
        same_rank = [r for r in table if list(tfc.rank_for_ratio(layer, r, "tucker", "mac")) == row.rank]
        assert same_rank, "the chosen rank is one of the evaluated candidates"
        assert score(small, None) == pytest.approx(table[same_rank[0]], rel=1e-3, abs=1e-6)
    assert stats.mac_compression_ratio <= 0.9 + 1e-3


def test_tar_rejects_tucker():
    model = cnn()
    params = TUCKER("auto", TUCKER.AutoModeParams(tfc.TarRankSelectionParameters(10, target_comp_ratio=0.5)))
    with pytest.raises(ValueError, match="Tucker"):
        tfc.compress_model(model, mse_score(model), None, "tucker", "mac", params, verbose=0)


# ---------------------------------------------------------------- compress_scheme="auto"

AUTO = AutoSchemeParameters


@pytest.mark.parametrize("data_free", [False, True])
def test_auto_scheme_greedy_mixes_schemes_and_meets_target(data_free):
    model = cnn()
    params = AUTO("auto", AUTO.AutoModeParams(tfc.GreedySelectionParameters(0.5, 5)), data_free=data_free)
    small, stats = tfc.compress_model(model, mse_score(model), None, "auto", "mac", params, verbose=0)
    assert stats.mac_compression_ratio <= 0.5 + 1e-3
    assert stats.per_layer_stats
    for row in stats.per_layer_stats:
        layer = small.get_layer(row.name)
        assert layer.scheme == row.scheme
        assert row.scheme in ("weight_svd", "spatial_svd", "tucker", "svd")
    # the model rebuilds from the same mixed plan
    again = tfc.rewrite_model(
        model,
        {r.name: (r.scheme, tuple(r.rank) if isinstance(r.rank, list) else r.rank) for r in stats.per_layer_stats},
    )
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(again.predict(x, verbose=0), small.predict(x, verbose=0), atol=1e-5)
    if data_free:
        assert stats.num_eval_calls == 2  # baseline and compressed model only


def test_auto_scheme_keeps_best_variant_per_ratio():
    """Manual mode: each layer gets the variant with the best score at the user's ratio."""
    model = cnn()
    score = mse_score(model)
    params = AUTO("manual", AUTO.ManualModeParams({"conv2": 0.3, "fc": 0.5}))
    small, _ = tfc.compress_model(model, score, None, "auto", "mac", params, verbose=0)
    chosen = small.get_layer("conv2").scheme
    assert isinstance(small.get_layer("fc"), tfc.SVDDense)
    per_scheme = {}
    for scheme in ("weight_svd", "spatial_svd", "tucker"):
        rank = tfc.rank_for_ratio(model.get_layer("conv2"), 0.3, scheme, "mac")
        per_scheme[scheme] = score(tfc.rewrite_model(model, {"conv2": (scheme, rank)}), None)
    best = max(per_scheme, key=per_scheme.get)
    assert per_scheme[chosen] == pytest.approx(per_scheme[best], rel=1e-3, abs=1e-7)


def test_auto_scheme_rejects_tar_and_wrong_parameters():
    model = cnn()
    tar = AUTO("auto", AUTO.AutoModeParams(tfc.TarRankSelectionParameters(10, target_comp_ratio=0.5)))
    with pytest.raises(ValueError, match="TAR"):
        tfc.compress_model(model, mse_score(model), None, "auto", "mac", tar, verbose=0)
    with pytest.raises(TypeError, match="AutoSchemeParameters"):
        tfc.compress_model(
            model, mse_score(model), None, "auto", "mac", TUCKER("manual", TUCKER.ManualModeParams({"conv2": 0.5}))
        )
