"""Structured pruning of FFN hidden units inside custom layers (issue 16 item 3): a small custom block trained on
real data (sklearn digits, each image's 8 rows as 8 tokens), and keras_hub BERT, GPT-2, Gemma and Mistral backbones
from small configs (gated FFNs in Gemma and Mistral). Checked: which units are found and which are refused with a
reason, that the least-squares refit beats plain dropping on the FFN output, exact costs against a hand count,
``.keras`` round trips and SavedModel export."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import tfcompress as tfc
from tfcompress.pruning.ffn import find_ffn_units, hooked_calls
from tfcompress.pruning.ffn_fit import consumer_of, prune_ffn

HIDDEN, FF = 16, 48


@keras.saving.register_keras_serializable(package="tests_ffn")
class MlpBlock(keras.layers.Layer):
    """x + down(gelu(up(x))), optionally with a normalisation across the hidden units or a roll of them."""

    def __init__(self, hidden: int = HIDDEN, ff: int = FF, mix: str = "", **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.ff, self.mix = hidden, ff, mix
        self.up = keras.layers.Dense(ff, activation="gelu", name="up")
        self.down = keras.layers.Dense(hidden, name="down")
        self.norm = keras.layers.LayerNormalization(name="norm") if mix == "norm" else None

    def call(self, x):
        h = self.up(x)
        if self.mix == "norm":
            h = self.norm(h)
        elif self.mix == "roll":
            h = keras.ops.roll(h, 1, axis=-1)
        return x + self.down(h)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "ff": self.ff, "mix": self.mix}


def _digits_model(mix: str = "") -> tuple[keras.Model, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")  # (n, 8 rows = tokens, 8 pixels)
    y = digits.target
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8))
    h = keras.layers.Dense(HIDDEN, name="embed")(inputs)
    h = MlpBlock(mix=mix, name="block")(h)
    out = keras.layers.Dense(10, name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, out)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=4, batch_size=64, verbose=0)
    return model, x, y


@pytest.fixture(scope="module")
def digits_model():
    return _digits_model()


def _work(model: keras.Model) -> keras.Model:
    return tfc.rewrite_model(model, {})  # a copy, also of a model whose layers do not copy from their configs


def _ffn_output(model: keras.Model, unit, inputs) -> np.ndarray:
    """The outputs of the unit's consumer (the FFN output) when ``model`` runs on ``inputs``."""
    seen = []
    consumer = consumer_of(model, unit)
    with hooked_calls([consumer], lambda layer, args, kwargs: seen.append(args[0])):
        model(inputs, training=False)
    return np.asarray(keras.ops.convert_to_numpy(consumer(seen[0])))


def test_custom_block_ffn_is_found_pruned_refitted_and_saved(digits_model, tmp_path) -> None:
    model, x, y = digits_model
    before = [w.copy() for w in model.get_weights()]
    units, reasons = find_ffn_units(model, _work(model), x[:64])
    assert [(u.name, [p.attribute for p in u.producers], u.consumer.attribute, u.channels) for u in units] == [
        ("block/ffn", ["up"], "down", FF)
    ]
    assert reasons == {}
    unit = units[0]

    pruned, report = prune_ffn(model, 0.5, x[:1400])
    dropped, _ = prune_ffn(model, 0.5, x[:1400], reconstruct=False)
    assert report["units"] == {"block/ffn": (FF // 2, FF)}
    inner = pruned.get_layer("block").layer
    assert tuple(inner.up.kernel.shape) == (HIDDEN, FF // 2) and tuple(inner.down.kernel.shape) == (FF // 2, HIDDEN)
    for a, b in zip(before, model.get_weights(), strict=True):  # the user's model is untouched
        np.testing.assert_array_equal(a, b)

    # held-out digits: the least-squares refit reproduces the FFN output better than dropping the same units
    held = x[1400:]
    target = _ffn_output(model, unit, held)
    refit_error = np.linalg.norm(_ffn_output(pruned, unit, held) - target)
    drop_error = np.linalg.norm(_ffn_output(dropped, unit, held) - target)
    assert refit_error < 0.8 * drop_error, (refit_error, drop_error)
    accuracy = np.mean(np.argmax(pruned.predict(held, verbose=0), -1) == y[1400:])
    baseline = np.mean(np.argmax(model.predict(held, verbose=0), -1) == y[1400:])
    assert accuracy >= baseline - 0.05, (accuracy, baseline)

    # cost by hand: the FFN's two layers over 8 tokens, half the hidden units
    original, after = tfc.model_cost(model), tfc.model_cost(pruned)
    assert original.macs - after.macs == 8 * (HIDDEN * FF + FF * HIDDEN) // 2
    assert original.params - after.params == (HIDDEN * FF + FF) // 2 + FF * HIDDEN // 2

    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(held, verbose=0), pruned.predict(held, verbose=0))


@pytest.mark.parametrize(
    ("mix", "why"), [("norm", "other than through it"), ("roll", "permuting its hidden units consistently")]
)
def test_hidden_units_that_do_not_pass_element_wise_are_refused_with_a_reason(mix: str, why: str) -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8))
    model = keras.Model(inputs, MlpBlock(hidden=8, mix=mix, name="block")(inputs))
    x = np.random.default_rng(0).normal(size=(16, 8, 8)).astype("float32")
    units, reasons = find_ffn_units(model, _work(model), x)
    assert units == []
    assert list(reasons) == ["block/down"] and why in reasons["block/down"]
    with pytest.raises(ValueError, match="no prunable FFN"):
        prune_ffn(model, 0.5, x)


def test_magnitude_selection_needs_no_refit_and_keeps_the_strongest_rows(digits_model) -> None:
    model, x, _ = digits_model
    pruned, _ = prune_ffn(model, 0.25, x[:64], selection="magnitude", reconstruct=False)
    kernel = keras.ops.convert_to_numpy(model.get_layer("block").down.kernel)
    kept = np.sort(np.argsort(-np.sum(kernel**2, axis=1), kind="stable")[: FF // 4])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(pruned.get_layer("block").layer.down.kernel), kernel[kept])
    with pytest.raises(ValueError, match="no FFN unit named 'nope'"):
        prune_ffn(model, {"nope": 0.5}, x[:64])


@pytest.mark.slow
@pytest.mark.parametrize(("name", "producers"), [("bert", 1), ("gpt2", 1), ("gemma", 2), ("mistral", 2)])
def test_backbone_ffn_pruning_at_half(name: str, producers: int, tmp_path) -> None:
    pytest.importorskip("keras_hub", reason="keras_hub is not installed (pip install -e '.[transformers]')")
    from test_transformers import FF, LAYERS, T, _backbone, _max_diff, _outputs, _tokens
    from test_transformers import HIDDEN as H

    model, hand = _backbone(name)
    data, held = _tokens(model, 64, seed=3), _tokens(model, 8, seed=9)
    units, _ = find_ffn_units(model, _work(model), data)
    assert len(units) == LAYERS and all(len(u.producers) == producers for u in units)
    ff = FF // 2 if name == "gemma" else FF
    assert all(u.channels == ff for u in units)

    pruned, report = prune_ffn(model, 0.5, data)
    dropped, _ = prune_ffn(model, 0.5, data, reconstruct=False)
    assert report["units"] == {u.name: (ff // 2, ff) for u in units}
    # cost by hand: every FFN projection (producers and consumer) loses half its MACs
    ffn_macs = LAYERS * (producers + 1) * T * H * ff
    cost = tfc.model_cost(pruned)
    assert not cost.uncounted and cost.macs == hand - ffn_macs // 2
    # FFN pruning at 0.5 of the FFN MACs cannot reach 0.5 of the model: attention keeps the rest
    assert cost.macs / hand == pytest.approx(1 - 0.5 * ffn_macs / hand) and cost.macs / hand > 0.5

    # the first block's FFN output on held-out tokens: the refit is closer to the original than dropping
    target = _ffn_output(model, units[0], held)
    refit_error = np.linalg.norm(_ffn_output(pruned, units[0], held) - target)
    drop_error = np.linalg.norm(_ffn_output(dropped, units[0], held) - target)
    assert refit_error < drop_error, (refit_error, drop_error)

    path = str(tmp_path / f"{name}.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    assert _max_diff(_outputs(loaded, held), _outputs(pruned, held)) == 0.0
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        pruned.export(str(tmp_path / "saved"), verbose=False)
        served = tf.saved_model.load(str(tmp_path / "saved"))
        got = [np.asarray(t) for t in keras.tree.flatten(served.serve(held))]
        assert _max_diff(sorted(got, key=np.size), sorted(_outputs(pruned, held), key=np.size)) < 1e-4


def _check_refit_save_and_export(model, pruned, dropped, unit, held, tmp_path) -> None:
    """The refit FFN output is closer to the original than dropping the same units; ``pruned`` loads from `.keras`
    with identical outputs and serves as a SavedModel (TensorFlow)."""
    from test_transformers import _max_diff, _outputs

    target = _ffn_output(model, unit, held)
    refit_error = np.linalg.norm(_ffn_output(pruned, unit, held) - target)
    drop_error = np.linalg.norm(_ffn_output(dropped, unit, held) - target)
    assert refit_error < drop_error, (refit_error, drop_error)

    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    assert _max_diff(_outputs(keras.models.load_model(path), held), _outputs(pruned, held)) == 0.0
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        pruned.export(str(tmp_path / "saved"), verbose=False)
        served = tf.saved_model.load(str(tmp_path / "saved"))
        assert _max_diff([np.asarray(served.serve(held))], _outputs(pruned, held)) < 1e-4


@pytest.mark.slow
def test_vit_ffn_pruning_at_half_through_the_whole_model_rebuild(tmp_path) -> None:
    pytest.importorskip("keras_hub", reason="keras_hub is not installed (pip install -e '.[transformers]')")
    from test_transformers import FF, LAYERS, VIT_MACS, vit

    from tfcompress.layers import RewiredModel

    model = vit()  # its patch embedding layer does not copy from its config: the backbone is re-created instead
    rng = np.random.default_rng(3)
    data, held = rng.normal(size=(64, 32, 32, 3)).astype("float32"), rng.normal(size=(8, 32, 32, 3)).astype("float32")
    pruned, report = prune_ffn(model, 0.5, data)
    dropped, _ = prune_ffn(model, 0.5, data, reconstruct=False)
    assert isinstance(pruned, RewiredModel)
    assert report["units"] == {"vit_encoder/ffn": (FF // 2, FF), "vit_encoder/ffn_1": (FF // 2, FF)}
    ffn_macs = LAYERS * 2 * 17 * 64 * FF  # two projections per block over 16 patches and the class token
    cost = tfc.model_cost(pruned)
    assert not cost.uncounted and cost.macs == VIT_MACS - ffn_macs // 2
    units, _ = find_ffn_units(model, _work(model), data)
    _check_refit_save_and_export(model, pruned, dropped, units[0], held, tmp_path)


@pytest.mark.slow
def test_llama_ffn_pruning_at_half_through_the_whole_model_rebuild(tmp_path) -> None:
    pytest.importorskip("keras_hub", reason="keras_hub is not installed (pip install -e '.[transformers]')")
    from test_transformers import FF, LAYERS, LLAMA_MACS, T, _tokens, llama
    from test_transformers import HIDDEN as H

    from tfcompress.layers import RewiredModel

    model = llama()  # its decoder blocks' get_config raises: the nested backbone is re-created from its own config
    data, held = _tokens(model, 64, seed=3), _tokens(model, 8, seed=9)
    units, _ = find_ffn_units(model, _work(model), data)
    assert len(units) == LAYERS and all(len(u.producers) == 2 and u.channels == FF for u in units)  # gated FFN
    pruned, report = prune_ffn(model, 0.5, data)
    dropped, _ = prune_ffn(model, 0.5, data, reconstruct=False)
    assert isinstance(pruned.get_layer("llama_backbone"), RewiredModel)
    assert report["units"] == {u.name: (FF // 2, FF) for u in units}
    cost = tfc.model_cost(pruned)
    assert not cost.uncounted and cost.macs == LLAMA_MACS - LAYERS * 3 * T * H * FF // 2
    _check_refit_save_and_export(model, pruned, dropped, units[0], held, tmp_path)


# ---------------------------------------------------------------- in compress_model's channel-pruning search


def _pruning(data, mode: str = "auto", target: float = 0.6, ignore=(), pairs=()) -> tfc.ChannelPruningParameters:
    p = tfc.ChannelPruningParameters
    if mode == "manual":
        return p(data, 500, False, "manual", p.ManualModeParams(list(pairs)))
    select = tfc.GreedySelectionParameters(target, num_comp_ratio_candidates=4)
    return p(data, 500, False, "auto", p.AutoModeParams(select, modules_to_ignore=list(ignore)))


def test_compress_model_prunes_the_block_ffn_as_a_channel_group(digits_model) -> None:
    model, x, y = digits_model

    def accuracy(m, iterations):
        return float(np.mean(np.argmax(m.predict(x[1400:], verbose=0), -1) == y[1400:]))

    compressed, stats = tfc.compress_model(model, accuracy, 1, "channel_pruning", "mac", _pruning(x[:1400]), verbose=0)
    assert set(stats.eval_scores) == {"block/ffn"} and len(stats.eval_scores["block/ffn"]) >= 2
    assert stats.mac_compression_ratio <= 0.6 + 1e-3
    assert tfc.model_cost(compressed).macs / tfc.model_cost(model).macs == pytest.approx(stats.mac_compression_ratio)
    keep = round(stats.chosen_ratios["block/ffn"] * FF)
    inner = compressed.get_layer("block").layer
    assert tuple(inner.up.kernel.shape) == (HIDDEN, keep) and tuple(inner.down.kernel.shape) == (keep, HIDDEN)
    rows = {row.name: row for row in stats.per_layer_stats}
    assert rows["block/down"].in_channels == [FF, keep] and rows["block/up"].out_channels == [FF, keep]
    assert stats.compressed_model_accuracy == pytest.approx(accuracy(compressed, 1))


@pytest.mark.slow
def test_block_ffn_in_manual_mode_and_modules_to_ignore_by_path(digits_model) -> None:
    model, x, _ = digits_model
    score = lambda m, iterations: 0.0  # noqa: E731
    for name in ("block/ffn", "block/down"):
        pairs = [(name, 0.5)]
        compressed, stats = tfc.compress_model(
            model, score, 1, "channel_pruning", "mac", _pruning(x[:256], "manual", pairs=pairs), verbose=0
        )
        assert stats.chosen_ratios == {"block/ffn": 0.5}
        assert tuple(compressed.get_layer("block").layer.down.kernel.shape) == (FF // 2, HIDDEN)
    with pytest.raises(ValueError, match=r"block/down: its FFN unit 'block/ffn' is ignored"):
        tfc.compress_model(model, score, 1, "channel_pruning", "mac", _pruning(x[:256], ignore=["block"]), verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "mistral"])
def test_backbone_ffn_units_in_the_channel_pruning_search(name: str) -> None:
    pytest.importorskip("keras_hub", reason="keras_hub is not installed (pip install -e '.[transformers]')")
    from test_transformers import _backbone, _outputs, _tokens

    model, hand = _backbone(name)
    data, held = _tokens(model, 64, seed=3), _tokens(model, 8, seed=9)
    reference = _outputs(model, held)

    def score(m, iterations):
        return -sum(float(np.mean((p - q) ** 2)) for p, q in zip(_outputs(m, held), reference, strict=True))

    # FFN units alone cannot reach half the MACs: the error says how far they go
    with pytest.raises(tfc.TargetUnreachableError) as caught:
        tfc.compress_model(model, score, 1, "channel_pruning", "mac", _pruning(data, target=0.5), verbose=0)
    assert caught.value.best_ratio > 0.5
    compressed, stats = tfc.compress_model(model, score, 1, "channel_pruning", "mac", _pruning(data, target=0.8))
    assert set(stats.eval_scores) == {"transformer_layer_0/ffn", "transformer_layer_1/ffn"}
    assert stats.mac_compression_ratio <= 0.8 + 1e-3
    assert tfc.model_cost(compressed).macs == pytest.approx(stats.mac_compression_ratio * hand, rel=1e-9)


def test_inspect_lists_the_block_ffn_instead_of_refusing_its_layers(digits_model) -> None:
    from tfcompress.cli_inspect import inspect_model, inspect_text

    info = inspect_model(digits_model[0])
    assert info["channel_pruning"]["ffn"] == {"block/down": ["block/up"]}
    assert not {"block/up", "block/down"} & set(info["channel_pruning"]["reasons"])
    assert "FFN unit candidate: block/up -> block/down" in inspect_text(info, "model.keras")
