"""The sampler's bounded hold on the original model's patches (issue 19: memory of channel pruning)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.pruning import driver
from tfcompress.pruning.sampling import Sampler


def _chain() -> keras.Model:
    keras.utils.set_random_seed(0)
    layers = [keras.Input((10, 10, 3))]
    layers += [keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"c{i}") for i in range(5)]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, name="fc")]
    return keras.Sequential(layers)


def _images() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(6, 10, 10, 3)).astype("float32")


def test_a_bounded_sampler_returns_the_same_patches_and_holds_at_most_its_budget() -> None:
    model = _chain()
    every = ["c1", "c2", "c3", "c4", "fc"]
    full = Sampler(_images(), samples=40, seed=1)
    expected = full.original_patches(model, ["c1"], every)
    assert full.original_passes == 1 and full.kept_layers == every  # unbounded: one pass keeps every layer
    one_layer = 4 * 40 * 9 * 8
    bounded = Sampler(_images(), samples=40, seed=1, keep_bytes=2 * one_layer)
    for name in every:
        got = bounded.original_patches(model, [name], every)[name]
        np.testing.assert_array_equal(got, full.original_patches(model, [name], every)[name])
        assert sum(a.nbytes for a in bounded._original.values()) <= 2 * one_layer + got.nbytes
    # the forward walk fetched c1 with c2, then c3 with c4, then fc: three passes, never all layers at once
    assert bounded.original_passes == 3
    assert "c1" not in bounded.kept_layers
    assert expected["c1"].shape == (40, 72)


def test_a_zero_budget_fetches_only_what_is_asked_and_rejects_negative_budgets() -> None:
    model = _chain()
    sampler = Sampler(_images(), samples=12, seed=0, keep_bytes=0)
    got = sampler.original_patches(model, ["c2", "c3"], ["c1", "c2", "c3", "c4"])
    assert sorted(got) == ["c2", "c3"] and sampler.kept_layers == ["c2", "c3"]
    sampler.original_patches(model, ["c3"], ["c1", "c2", "c3", "c4"])  # held: no pass
    assert sampler.original_passes == 1
    with pytest.raises(ValueError, match="keep_bytes must be None or >= 0, got -1"):
        Sampler(_images(), samples=12, seed=0, keep_bytes=-1)


def test_channel_pruning_result_does_not_depend_on_the_patch_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _chain()
    images = _images()
    x = np.random.default_rng(5).normal(size=(4, 10, 10, 3)).astype("float32")
    reference = np.asarray(model(x))

    def score(m, _iterations):
        return -float(np.mean((np.asarray(m(x)) - reference) ** 2))

    def run() -> tuple[tfc.CompressionStats, np.ndarray]:
        select = tfc.GreedySelectionParameters(0.6, num_comp_ratio_candidates=3, allow_unreachable=True)
        params = tfc.ChannelPruningParameters(
            images, 60, True, tfc.Mode.auto, tfc.ChannelPruningParameters.AutoModeParams(select)
        )
        compressed, stats = tfc.compress_model(model, score, None, "channel_pruning", "mac", params, verbose=0)
        return stats, np.asarray(compressed(x))

    passes: list[int] = []
    real = Sampler.original_patches

    def counted(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        passes.append(self.original_passes)
        return out

    monkeypatch.setattr(Sampler, "original_patches", counted)
    stats_all, out_all = run()
    all_passes = max(passes)
    passes.clear()
    monkeypatch.setattr(driver, "ORIGINAL_PATCHES_MIN_BYTES", 0)
    monkeypatch.setattr(driver, "ORIGINAL_PATCHES_SHARE", 0.0)
    stats_none, out_none = run()
    assert max(passes) > all_passes  # the small budget did make more passes
    assert stats_none.eval_scores == stats_all.eval_scores
    assert stats_none.mac_compression_ratio == stats_all.mac_compression_ratio
    np.testing.assert_allclose(out_none, out_all, rtol=1e-5, atol=1e-6)
