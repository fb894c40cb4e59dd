"""keras_hub backbones built from small explicit configs (no presets, nothing downloaded): honest costs against a
hand count that includes the attention products, full-rank rewrites with unchanged outputs, greedy weight SVD to
half the MACs, ``.keras`` round trips and SavedModel export.

Every model here runs at a fixed sequence length (``fixed_length``): the backbones take any length, and MACs are
only defined for one. Skipped when keras_hub is not installed (``pip install -e ".[transformers]"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.cost import layer_geometry, max_rank
from tfcompress.graph import walk_layers
from tfcompress.layers import RewiredLayer, RewiredModel

hub = pytest.importorskip("keras_hub", reason="keras_hub is not installed (pip install -e '.[transformers]')")
H = hub.models

T, VOCAB, HIDDEN, FF, LAYERS, HEADS = 16, 300, 64, 128, 2, 2


def fixed_length(model: keras.Model, length: int = T) -> keras.Model:
    """The same model (same layers' configs and weights) with inputs of one fixed sequence length."""
    inputs = {k: keras.Input((length, *v.shape[2:]), dtype=v.dtype, name=k) for k, v in model.input.items()}
    fixed = keras.models.clone_model(model, input_tensors=inputs)
    fixed.set_weights(model.get_weights())
    return fixed


def encoder_macs(t: int, h: int, ff: int, layers: int, heads: int) -> int:
    """Per layer: Q, K, V, O projections, Q·Kᵀ and A·V (every head, head_dim = h / heads), the two FFN layers."""
    return layers * (4 * t * h * h + 2 * heads * t * t * (h // heads) + 2 * t * h * ff)


def decoder_macs(t: int, h: int, ff_layers: int, ff: int, q_heads: int, kv_heads: int, head_dim: int) -> int:
    """Grouped-query attention (K and V for ``kv_heads`` only) and a gated FFN of ``ff_layers`` projections."""
    attention = t * h * q_heads * head_dim * 2 + t * h * kv_heads * head_dim * 2 + 2 * q_heads * t * t * head_dim
    return LAYERS * (attention + ff_layers * t * h * ff)


BACKBONES: dict[str, tuple[Callable[[], keras.Model], int]] = {
    "bert": (
        lambda: H.BertBackbone(
            vocabulary_size=VOCAB,
            num_layers=LAYERS,
            num_heads=HEADS,
            hidden_dim=HIDDEN,
            intermediate_dim=FF,
            max_sequence_length=32,
        ),
        encoder_macs(T, HIDDEN, FF, LAYERS, HEADS) + HIDDEN * HIDDEN,  # + the pooler on the first token
    ),
    "distil_bert": (
        lambda: H.DistilBertBackbone(
            vocabulary_size=VOCAB,
            num_layers=LAYERS,
            num_heads=HEADS,
            hidden_dim=HIDDEN,
            intermediate_dim=FF,
            max_sequence_length=32,
        ),
        encoder_macs(T, HIDDEN, FF, LAYERS, HEADS),
    ),
    "roberta": (
        lambda: H.RobertaBackbone(
            vocabulary_size=VOCAB,
            num_layers=LAYERS,
            num_heads=HEADS,
            hidden_dim=HIDDEN,
            intermediate_dim=FF,
            max_sequence_length=32,
        ),
        encoder_macs(T, HIDDEN, FF, LAYERS, HEADS),
    ),
    "gpt2": (
        lambda: H.GPT2Backbone(
            vocabulary_size=VOCAB,
            num_layers=LAYERS,
            num_heads=HEADS,
            hidden_dim=HIDDEN,
            intermediate_dim=FF,
            max_sequence_length=32,
        ),
        encoder_macs(T, HIDDEN, FF, LAYERS, HEADS),
    ),
    "gemma": (  # Gemma's gated FFN halves intermediate_dim between its two gates
        lambda: H.GemmaBackbone(
            vocabulary_size=VOCAB,
            num_layers=LAYERS,
            num_query_heads=2,
            num_key_value_heads=1,
            hidden_dim=HIDDEN,
            intermediate_dim=FF,
            head_dim=32,
        ),
        decoder_macs(T, HIDDEN, 3, FF // 2, 2, 1, 32),
    ),
    "mistral": (
        lambda: H.MistralBackbone(
            vocabulary_size=VOCAB,
            num_layers=LAYERS,
            num_query_heads=2,
            num_key_value_heads=1,
            hidden_dim=HIDDEN,
            intermediate_dim=FF,
        ),
        decoder_macs(T, HIDDEN, 3, FF, 2, 1, HIDDEN // 2),
    ),
}


def _tokens(model: keras.Model, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in model.input.items():
        if "mask" in name:
            out[name] = np.ones((n, T), "int32")
        elif "segment" in name:
            out[name] = np.zeros((n, T), "int32")
        else:
            out[name] = rng.integers(1, VOCAB, (n, T)).astype(spec.dtype)
    return out


def _outputs(model: keras.Model, x: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(t) for t in keras.tree.flatten(model(x))]


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b, strict=True))


def _full_rank_plan(model: keras.Model) -> dict[str, tuple[str, int]]:
    plan = {}
    for ref in walk_layers(model, sublayers=True):
        if type(ref.layer) in (keras.layers.Dense, keras.layers.EinsumDense):
            g = layer_geometry(ref.layer, input_shape=ref.input_shape)
            plan[ref.path] = ("svd", int(max_rank(g, "svd")))
    return plan


def _backbone(name: str) -> tuple[keras.Model, int]:
    build, macs = BACKBONES[name]
    keras.utils.set_random_seed(1)
    return fixed_length(build()), macs


def test_bert_cost_counts_attention_products_and_projections_inside_blocks() -> None:
    model, hand = _backbone("bert")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing uncounted
        cost = tfc.model_cost(model)
    assert cost.macs == hand and not cost.uncounted
    paths = {ref.path for ref in walk_layers(model, sublayers=True)}
    assert {
        "transformer_layer_0/self_attention_layer/query",
        "transformer_layer_0/self_attention_layer/attention_output",
        "transformer_layer_0/feedforward_intermediate_dense",
        "transformer_layer_1/feedforward_output_dense",
    } <= paths


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_costs_rewrites_compresses_saves_and_exports(name: str, tmp_path: object) -> None:
    model, hand = _backbone(name)
    compressed = _check_backbone(model, hand, _tokens(model), tmp_path)
    assert any(isinstance(layer, RewiredLayer) for layer in compressed.layers)


def _check_backbone(model: keras.Model, hand: int, x: object, tmp_path: object) -> keras.Model:
    """Honest cost, full-rank rewrite, greedy weight SVD to half the MACs, ``.keras`` round trip, SavedModel export;
    returns the compressed model."""
    cost = tfc.model_cost(model)
    assert not cost.uncounted
    assert abs(cost.macs - hand) <= 0.02 * hand, (cost.macs, hand)
    reference = _outputs(model, x)

    # full rank: every Dense/EinsumDense (inside the blocks too) replaced, outputs unchanged
    plan = _full_rank_plan(model)
    assert len(plan) >= 4 * LAYERS
    full = tfc.rewrite_model(model, plan)
    assert _max_diff(_outputs(full, x), reference) < 1e-4

    # greedy weight SVD to half the MACs, scored by the distance to the original outputs on fixed inputs
    def score(m: keras.Model, iterations: int) -> float:
        return -sum(float(np.mean((p - q) ** 2)) for p, q in zip(_outputs(m, x), reference, strict=True))

    params = tfc.WeightSvdParameters(
        tfc.Mode.auto,
        tfc.WeightSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(0.5, num_comp_ratio_candidates=4)),
    )
    compressed, stats = tfc.compress_model(model, score, 1, "weight_svd", "mac", params, verbose=0)
    assert stats.mac_compression_ratio <= 0.5 + 1e-9
    assert tfc.model_cost(compressed).macs <= 0.5 * cost.macs + 1
    inner = [path for path in stats.eval_scores if "/" in path]
    assert len(inner) >= 4 * LAYERS  # attention and FFN projections are in the score table by path
    scores = [s for path in inner for ratio, s in stats.eval_scores[path].items() if ratio < 1]
    assert min(scores) < 0 and len(set(scores)) > 1  # candidates really were swapped in
    np.testing.assert_array_equal(_max_diff(_outputs(model, x), reference), 0.0)  # the user's model is untouched

    path = str(tmp_path / f"{model.name}.keras")  # type: ignore[operator]
    compressed.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(_max_diff(_outputs(loaded, x), _outputs(compressed, x)), 0.0)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        compressed.export(str(tmp_path / "saved"), verbose=False)  # type: ignore[operator]
        served = tf.saved_model.load(str(tmp_path / "saved"))  # type: ignore[operator]
        got = [np.asarray(t) for t in keras.tree.flatten(served.serve(x))]
        assert _max_diff(sorted(got, key=np.size), sorted(_outputs(compressed, x), key=np.size)) < 1e-4
    return compressed


def vit() -> keras.Model:
    """A ViT backbone on 32x32 images, patch 8 (16 patches and the class token)."""
    keras.utils.set_random_seed(1)
    return H.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=LAYERS, num_heads=HEADS, hidden_dim=64, mlp_dim=FF
    )


#: the patch embedding (a conv with stride = kernel) and the encoder over the 16 patches and the class token
VIT_MACS = 16 * 8 * 8 * 3 * 64 + encoder_macs(17, 64, FF, LAYERS, HEADS)


@pytest.mark.slow
def test_vit_is_rebuilt_from_its_own_config_where_a_layer_config_fails(tmp_path: object) -> None:
    model = vit()
    assert tfc.model_cost(model).macs == VIT_MACS
    # keras_hub 0.32: ViTPatchingAndEmbedding does not accept its own config back, so no per-layer copy is possible;
    # the whole backbone re-creates from its config, and the rewrite does that instead
    patching = model.get_layer("vit_patching_and_embedding")
    with pytest.raises(TypeError, match="num_patches"):
        type(patching).from_config(patching.get_config())
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    compressed = _check_backbone(model, VIT_MACS, x, tmp_path)
    assert isinstance(compressed, RewiredModel) and compressed.source_config["class_name"] == "ViTBackbone"
    assert [layer.name for layer in compressed.layers] == [layer.name for layer in model.layers]
    kinds = {type(layer).__name__ for layer in compressed.replacements.values()}
    assert kinds and kinds <= {"SVDDense", "SVDEinsumDense"}  # the decomposed layers are swapped into the blocks


def llama() -> keras.Model:
    """A Llama backbone at length ``T``, nested in a model with fixed-length inputs: keras_hub 0.32's
    ``LlamaTransformerDecoder.get_config`` raises, so no layer-by-layer fixed-length copy (``fixed_length``) can be
    made; the backbone itself re-creates from its own config."""
    keras.utils.set_random_seed(1)
    backbone = H.LlamaBackbone(
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=HIDDEN,
        intermediate_dim=FF,
        name="llama_backbone",
    )
    inputs = {k: keras.Input((T,), dtype=v.dtype, name=k) for k, v in backbone.input.items()}
    return keras.Model(inputs, backbone(inputs), name="llama")


LLAMA_MACS = decoder_macs(T, HIDDEN, 3, FF, 2, 1, HIDDEN // 2)


@pytest.mark.slow
def test_llama_nested_at_a_fixed_length_is_rebuilt_from_its_own_config(tmp_path: object) -> None:
    model = llama()
    decoder = model.get_layer("llama_backbone").get_layer("transformer_layer_0")
    with pytest.raises(AttributeError, match="rope_scaling_factor"):  # the keras_hub bug: no per-layer copy
        decoder.get_config()
    # costed at the length the nested backbone is called with (its own inputs take any length)
    compressed = _check_backbone(model, LLAMA_MACS, _tokens(model), tmp_path)
    assert tfc.model_cost(model).macs == LLAMA_MACS
    rebuilt = compressed.get_layer("llama_backbone")
    assert isinstance(rebuilt, RewiredModel) and rebuilt.source_config["class_name"] == "LlamaBackbone"
    kinds = {type(layer).__name__ for layer in rebuilt.replacements.values()}
    assert kinds and kinds <= {"SVDDense", "SVDEinsumDense"}  # the decomposed layers are swapped into the blocks


@pytest.mark.slow
def test_bert_text_classifier_task_model(tmp_path: object) -> None:
    keras.utils.set_random_seed(2)
    backbone = H.BertBackbone(
        vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS, hidden_dim=HIDDEN, intermediate_dim=FF, name="bert"
    )
    task = H.BertTextClassifier(backbone, num_classes=3, preprocessor=None)
    # the task's head on a fixed-length copy of its backbone (a nested model: its layers are "bert/...")
    inputs = {k: keras.Input((T,), dtype=v.dtype, name=k) for k, v in task.input.items()}
    pooled = fixed_length(backbone)(inputs)["pooled_output"]
    model = keras.Model(inputs, task.get_layer("logits")(task.get_layer("classifier_dropout")(pooled)))
    x = _tokens(model)
    np.testing.assert_allclose(_outputs(model, x)[0], np.asarray(task(x)), rtol=1e-5, atol=1e-5)
    hand = BACKBONES["bert"][1] + HIDDEN * 3  # + the classification head
    assert tfc.model_cost(model).macs == hand
    plan = [p for p in _full_rank_plan(model) if "feedforward" in p or "query" in p]
    assert "bert/transformer_layer_0/self_attention_layer/query" in plan
    low = tfc.rewrite_model(model, {p: ("svd", 8) for p in plan})
    assert tfc.model_cost(low).macs < hand
    path = str(tmp_path / "task.keras")  # type: ignore[operator]
    low.save(path)
    np.testing.assert_array_equal(_outputs(keras.models.load_model(path), x)[0], _outputs(low, x)[0])
