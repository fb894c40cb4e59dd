"""Tests of ``tfc.compress_model``: selection quality, evaluation budget, safety of the user's model, cache, stats.

Most tests use a tiny untrained CNN and a cheap deterministic callback (agreement with the original model's outputs
on a fixed batch). The digits CNN (trained once per module) is used where accuracy matters.
"""

from __future__ import annotations

import json
import re
import time

import keras
import numpy as np
import pytest
from conftest import cnn

import tfcompress as tfc
from tfcompress import decompose as dc

L = keras.layers
SPATIAL = tfc.SpatialSvdParameters
WEIGHT = tfc.WeightSvdParameters
# candidate ratios 0.1 .. 0.9 with the default num_comp_ratio_candidates=10
N_CANDIDATES = 9


# ---------------------------------------------------------------- helpers


X_FIXED = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")


class Recorder:
    """Eval callback: 1 - MSE to the user's model outputs on a fixed batch; records every call."""

    def __init__(self, model, fail_on=None, exc=RuntimeError):
        self.reference = np.asarray(model(X_FIXED, training=False))
        self.models = []
        self.iterations = []
        self.fail_on = fail_on
        self.exc = exc

    def __call__(self, model, iterations):
        self.models.append(model)
        self.iterations.append(iterations)
        if self.fail_on is not None and len(self.models) == self.fail_on:
            raise self.exc(f"callback failure on call {self.fail_on}")
        out = np.asarray(model(X_FIXED, training=False))
        return 1.0 - float(np.mean((out - self.reference) ** 2))

    @property
    def calls(self):
        return len(self.models)


def greedy(
    params_cls,
    target=0.5,
    mode="auto",
    ignore=None,
    multiplicity=1,
    n=10,
    cache=None,
    compare_plans=True,
    allow_unreachable=False,
):
    select = tfc.GreedySelectionParameters(
        target_comp_ratio=target,
        num_comp_ratio_candidates=n,
        saved_eval_scores_dict=cache,
        compare_plans=compare_plans,
        allow_unreachable=allow_unreachable,
    )
    return params_cls(mode, params_cls.AutoModeParams(select, modules_to_ignore=ignore), multiplicity=multiplicity)


def manual(params_cls, pairs, multiplicity=1):
    return params_cls(tfc.Mode.manual, params_cls.ManualModeParams(pairs), multiplicity=multiplicity)


def run(model, params, scheme="spatial_svd", metric="mac", callback=None, **kwargs):
    callback = callback or Recorder(model)
    compressed, stats = tfc.compress_model(model, callback, None, scheme, metric, params, verbose=0, **kwargs)
    return compressed, stats, callback


def snapshot(model):
    return {
        "layers": list(model.layers),
        "variables": list(model.weights),
        "config": model.get_config(),
        "weights": [w.copy() for w in model.get_weights()],
    }


def assert_unchanged(model, snap):
    assert len(model.layers) == len(snap["layers"])
    assert all(a is b for a, b in zip(model.layers, snap["layers"], strict=True))
    assert all(a is b for a, b in zip(model.weights, snap["variables"], strict=True))
    assert model.get_config() == snap["config"]
    now = model.get_weights()
    assert len(now) == len(snap["weights"])
    for a, b in zip(now, snap["weights"], strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert all(type(layer) in (L.Conv2D, L.MaxPooling2D, L.GlobalAveragePooling2D, L.Dense) for layer in model.layers)


def ranks(stats):
    return {row.name: row.rank for row in stats.per_layer_stats}


def spatial_matrix_rank(kernel):
    """Rank of the (C*kh, N*kw) unfolding, computed here independently of the library."""
    kh, kw, c, n = kernel.shape
    matrix = np.asarray(kernel, np.float64).transpose(2, 0, 3, 1).reshape(c * kh, n * kw)
    return int(np.linalg.matrix_rank(matrix, tol=1e-4 * np.linalg.norm(matrix, 2)))


# ---------------------------------------------------------------- the trained digits CNN


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:1200], y[:1200], x[1200:], y[1200:]
    model = cnn(widths=(32, 64, 64), softmax=True, seed=0, name="digits")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=20, batch_size=32, verbose=0)

    def accuracy(m, iterations):
        predicted = np.argmax(m.predict(x_test, verbose=0, batch_size=1024), axis=-1)
        return float(np.mean(predicted == y_test))

    baseline = accuracy(model, None)
    assert baseline > 0.9, f"digits CNN trained to only {baseline:.3f}"
    return model, accuracy, baseline


class Counting:
    def __init__(self, callback):
        self.callback = callback
        self.calls = 0

    def __call__(self, model, iterations):
        self.calls += 1
        return self.callback(model, iterations)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scheme", "params_cls", "eligible", "skipped"),
    [
        ("spatial_svd", SPATIAL, ["conv1", "conv2", "conv3"], "fc"),
        ("weight_svd", WEIGHT, ["conv2", "conv3", "fc"], "conv1"),
    ],
)
def test_digits_greedy_beats_uniform(digits, scheme, params_cls, eligible, skipped):
    model, accuracy, baseline = digits
    snap = snapshot(model)
    counting = Counting(accuracy)
    compressed, stats = tfc.compress_model(
        model, counting, None, scheme, "mac", greedy(params_cls, target=0.5), verbose=0
    )
    original_macs = tfc.model_cost(model).macs
    assert abs(stats.mac_compression_ratio - 0.5) <= 0.02
    assert stats.mac_compression_ratio == pytest.approx(tfc.model_cost(compressed).macs / original_macs, abs=1e-12)
    assert stats.baseline_model_accuracy == pytest.approx(baseline)
    # the eligible layers are exactly the ones evaluated
    assert set(stats.eval_scores) == set(eligible)
    assert skipped in stats.skipped_layers
    if scheme == "weight_svd":
        assert "rank 1" in stats.skipped_layers["conv1"]
    # evaluation budget: at most (eligible layers) x (N - 1) candidates + baseline + final
    assert counting.calls <= len(eligible) * N_CANDIDATES + 2
    assert stats.num_eval_calls == counting.calls

    _, uniform_stats = tfc.compress_model(
        model, accuracy, None, scheme, "mac", manual(params_cls, [(n, 0.5) for n in eligible]), verbose=0
    )
    assert abs(uniform_stats.mac_compression_ratio - 0.5) <= 0.02
    assert stats.compressed_model_accuracy >= uniform_stats.compressed_model_accuracy
    assert stats.compressed_model_accuracy == pytest.approx(accuracy(compressed, None))
    assert stats.compressed_model_accuracy >= baseline - 0.05
    assert_unchanged(model, snap)


@pytest.mark.slow
def test_digits_tar_meets_target(digits):
    model, accuracy, _ = digits
    counting = Counting(accuracy)
    select = tfc.TarRankSelectionParameters(num_rank_indices=10, target_comp_ratio=0.5)
    params = SPATIAL(tfc.Mode.auto, SPATIAL.AutoModeParams(select))
    compressed, stats = tfc.compress_model(model, counting, None, "spatial_svd", "mac", params, verbose=0)
    assert stats.rank_select_scheme == "tar"
    assert stats.mac_compression_ratio <= 0.5 + 1e-3
    assert stats.mac_compression_ratio == pytest.approx(
        tfc.model_cost(compressed).macs / tfc.model_cost(model).macs, abs=1e-12
    )
    assert stats.tar_index_scores
    assert set(stats.tar_index_scores) <= set(range(1, 10))
    assert counting.calls == len(stats.tar_index_scores) + 2 == stats.num_eval_calls
    assert stats.compressed_model_accuracy > 0.5


# ---------------------------------------------------------------- evaluation budget


def test_tiny_eval_count_exact_and_deduplicated():
    # Spatial SVD of conv1 (C=1, 3x3, 8 filters, 8x8 'same'): cost(r) = 8*8*3*1*r + 8*8*3*8*r = 1728 r against
    # 4608 for the original; max rank min(1*3, 8*3) = 3. Ratios 0.1..0.7 give rank 1 and 0.8, 0.9 give rank 2:
    # 2 evaluations. conv2 (4608 r vs 73728) and conv3 (1536 r vs 36864 at 4x4) get 9 distinct ranks each.
    model = cnn()
    _, stats, recorder = run(model, greedy(SPATIAL, target=0.5, compare_plans=False))
    assert recorder.calls == 2 + 2 + 9 + 9 == stats.num_eval_calls
    assert len(set(stats.eval_scores["conv1"].values())) <= 2
    assert len(stats.eval_scores["conv1"]) == N_CANDIDATES  # every candidate ratio has a score
    assert stats.eval_scores["conv1"][0.1] == stats.eval_scores["conv1"][0.7]
    assert stats.eval_scores["conv1"][0.8] == stats.eval_scores["conv1"][0.9]


def test_tiny_eval_count_with_multiplicity_8():
    # multiplicity 8 (caps: conv1 2, conv2 16, conv3 24 = the largest ranks not exceeding the original cost):
    # conv1 -> always 2: 1 evaluation. conv2 -> 8 or 16, and 16 costs as much as the original, so only 8: 1.
    # conv3 -> 8, 16 or 24 (24 costs the original): 2. Plus baseline and final.
    model = cnn()
    caps = [tfc.rank_for_ratio(model.get_layer(n), 1.0, "spatial_svd", "mac") for n in ("conv1", "conv2", "conv3")]
    assert caps == [2, 16, 24]
    _, stats, recorder = run(model, greedy(SPATIAL, target=0.7, multiplicity=8, compare_plans=False))
    assert recorder.calls == 2 + 1 + 1 + 2 == stats.num_eval_calls
    assert len(stats.eval_scores["conv1"]) == N_CANDIDATES and len(set(stats.eval_scores["conv1"].values())) == 1
    assert len(stats.eval_scores["conv2"]) == 5  # 0.1 .. 0.5 round to rank 8; 0.6 .. 0.9 to 16 (saves nothing)


def test_candidates_swap_kernel_in_place_without_cloning():
    model = cnn()
    originals = {n: model.get_layer(n).get_weights()[0] for n in ("conv1", "conv2", "conv3")}
    kernels = []

    class KernelRecorder(Recorder):
        def __call__(self, m, iterations):
            kernels.append({n: m.get_layer(n).get_weights()[0] for n in originals})
            return super().__call__(m, iterations)

    recorder = KernelRecorder(model)
    compressed, _, _ = run(model, greedy(SPATIAL, target=0.5, compare_plans=False), callback=recorder)
    work = recorder.models[0]
    # baseline and every candidate: one working model, neither the user's model nor the result
    assert all(m is work for m in recorder.models[:-1])
    assert work is not model and work is not compressed
    assert recorder.models[-1] is compressed
    # baseline: the original kernels; each candidate: exactly one layer's kernel replaced by a low-rank one
    assert all(np.array_equal(kernels[0][n], originals[n]) for n in originals)
    seen_ranks = {n: set() for n in originals}
    for record in kernels[1:-1]:
        changed = [n for n in originals if not np.array_equal(record[n], originals[n])]
        assert len(changed) == 1
        seen_ranks[changed[0]].add(spatial_matrix_rank(record[changed[0]]))
    assert seen_ranks["conv1"] == {1, 2}
    assert seen_ranks["conv2"] == {1, 3, 4, 6, 8, 9, 11, 12, 14}
    # the working copy's kernels were restored after each candidate (next candidate differs in one layer only)
    # and the final model is the decomposed one
    assert isinstance(compressed.get_layer("conv2"), tfc.SpatialSVDConv2D)


@pytest.mark.parametrize("fail", [False, True])
def test_kernel_slot_assigns_each_candidate_once_and_restores_the_original_once(fail):
    from tfcompress.pipeline.candidates import kernel_slot as _kernel_slot

    layer = cnn().get_layer("conv2")
    original = layer.get_weights()[0].copy()
    assigned = []
    real_assign = type(layer.kernel).assign

    def counting_assign(variable, value):
        assigned.append(np.array(value))
        return real_assign(variable, value)

    record = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(layer.kernel), "assign", counting_assign)
        try:
            with _kernel_slot(layer, record) as put:
                for k in (1.0, 2.0):
                    put(np.full_like(original, k))
                    np.testing.assert_array_equal(layer.get_weights()[0], np.full_like(original, k))
                if fail:
                    raise RuntimeError("callback failed")
        except RuntimeError:
            assert fail
        with _kernel_slot(layer, record):
            pass  # nothing put: nothing assigned
    # two candidates, one restore (no restore between them), whatever happened
    assert len(assigned) == 3 and np.array_equal(assigned[-1], original)
    np.testing.assert_array_equal(layer.get_weights()[0], original)


def test_each_candidate_kernel_is_the_best_low_rank_kernel_at_its_rank():
    # candidates of a layer go up in rank and are built from the previous one plus the triplets in between: each
    # must still be the direct rank-r reconstruction (to float32 rounding)
    model = cnn()
    original = model.get_layer("conv2").get_weights()[0]
    svd = tfc.decompose.TruncatedSVD.of(tfc.decompose.spatial_svd_unfold(original))
    seen = []

    class KernelRecorder(Recorder):
        def __call__(self, m, iterations):
            kernel = m.get_layer("conv2").get_weights()[0]
            if not isinstance(m.get_layer("conv2"), tfc.SpatialSVDConv2D) and not np.array_equal(kernel, original):
                seen.append(kernel)  # a candidate of conv2 in the working copy
            return super().__call__(m, iterations)

    run(model, greedy(SPATIAL, target=0.5, compare_plans=False), callback=KernelRecorder(model))
    assert len(seen) == 9  # conv2's nine distinct ranks
    for kernel in seen:
        rank = spatial_matrix_rank(kernel)
        direct = tfc.decompose.spatial_svd_fold(svd.reconstruct(rank), original.shape)
        np.testing.assert_allclose(kernel, direct, atol=1e-5 * float(np.abs(original).max()))


# ---------------------------------------------------------------- the user's model is never changed


def test_model_unchanged_after_success():
    model = cnn()
    snap = snapshot(model)
    compressed, _, _ = run(model, greedy(SPATIAL, target=0.5))
    assert_unchanged(model, snap)
    assert compressed is not model
    assert not any(a is b for a, b in zip(compressed.layers, model.layers, strict=True))
    assert isinstance(compressed.get_layer("conv2"), tfc.SpatialSVDConv2D)


def test_result_layers_belong_to_the_result_alone_so_feature_extraction_works():
    # A layer's .input/.output are those of its first call: a result that reused the working copy's layer objects
    # would hand out the working copy's tensors, and keras.Model(result.input, layer.output) would fail.
    model = cnn()
    compressed, stats, _ = run(model, greedy(SPATIAL, target=0.5))
    decomposed = {row.name for row in stats.per_layer_stats}
    kept = [layer.name for layer in compressed.layers if layer.name not in decomposed]
    assert decomposed and kept
    for name in [*decomposed, *kept]:
        feature = keras.Model(compressed.inputs, compressed.get_layer(name).output)
        assert feature(X_FIXED).shape[0] == len(X_FIXED)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_model_unchanged_when_callback_raises(exc):
    model = cnn()
    snap = snapshot(model)
    recorder = Recorder(model, fail_on=5, exc=exc)
    with pytest.raises(exc, match="call 5"):
        run(model, greedy(SPATIAL, target=0.5), callback=recorder)
    assert recorder.calls == 5
    assert_unchanged(model, snap)
    np.testing.assert_array_equal(np.asarray(model(X_FIXED, training=False)), recorder.reference)


# ---------------------------------------------------------------- manual mode


def test_manual_mode_ranks_and_layer_stats():
    model = cnn(widths=(16, 32, 32))
    conv3 = model.get_layer("conv3")
    params = manual(SPATIAL, [("conv2", 0.3), (conv3, 0.6), ("fc", 0.5)], multiplicity=4)
    compressed, stats, recorder = run(model, params)
    assert recorder.calls == 2  # manual mode: baseline and final only
    expected = {
        "conv2": tfc.rank_for_ratio(model.get_layer("conv2"), 0.3, "spatial_svd", "mac", multiplicity=4),
        "conv3": tfc.rank_for_ratio(conv3, 0.6, "spatial_svd", "mac", multiplicity=4),
        "fc": tfc.rank_for_ratio(model.get_layer("fc"), 0.5, "svd", "mac", multiplicity=4),
    }
    assert ranks(stats) == expected
    assert [row.name for row in stats.per_layer_stats] == ["conv2", "conv3", "fc"]
    assert {row.name: row.scheme for row in stats.per_layer_stats} == {
        "conv2": "spatial_svd",
        "conv3": "spatial_svd",
        "fc": "svd",
    }
    assert isinstance(compressed.get_layer("conv2"), tfc.SpatialSVDConv2D)
    assert isinstance(compressed.get_layer("fc"), tfc.SVDDense)
    assert type(compressed.get_layer("conv1")) is L.Conv2D
    before, after = tfc.model_cost(model), tfc.model_cost(compressed)
    for row in stats.per_layer_stats:
        assert compressed.get_layer(row.name).rank == row.rank
        assert row.macs_before == before.layers[row.name].macs
        assert row.macs_after == after.layers[row.name].macs
        assert row.params_before == before.layers[row.name].params
        assert row.params_after == after.layers[row.name].params
        assert row.macs_after < row.macs_before
    assert {row.name: row.ratio for row in stats.per_layer_stats} == {"conv2": 0.3, "conv3": 0.6, "fc": 0.5}
    assert stats.mac_compression_ratio == pytest.approx(after.macs / before.macs)
    saved = sum(r.macs_before - r.macs_after for r in stats.per_layer_stats)
    assert after.macs == before.macs - saved


def test_manual_mode_errors():
    model = cnn()
    with pytest.raises(ValueError, match="conv_nope"):
        run(model, manual(SPATIAL, [("conv2", 0.5), ("conv_nope", 0.5)]))
    with pytest.raises(ValueError, match="pool"):
        run(model, manual(SPATIAL, [("pool", 0.5)]))
    with pytest.raises(ValueError, match="conv2"):
        run(model, manual(SPATIAL, [("conv2", 0.5), ("conv2", 0.4)]))


# ---------------------------------------------------------------- TAR on the tiny model


def test_tar_compressed_score_matches_evaluated_index():
    model = cnn(widths=(16, 32, 32))
    select = tfc.TarRankSelectionParameters(num_rank_indices=10, target_comp_ratio=0.5)
    params = SPATIAL("auto", SPATIAL.AutoModeParams("tar", select))
    _, stats, recorder = run(model, params)
    assert stats.mac_compression_ratio <= 0.5 + 1e-3
    assert recorder.calls == len(stats.tar_index_scores) + 2 == stats.num_eval_calls
    chosen = [int(m.group(1)) for note in stats.notes if (m := re.search(r"residual index (\d+)/10", note))]
    assert len(chosen) == 1 and chosen[0] in stats.tar_index_scores
    # the decomposed model computes the function that was evaluated for that index
    assert stats.compressed_model_accuracy == pytest.approx(stats.tar_index_scores[chosen[0]], abs=1e-6)


# ---------------------------------------------------------------- modules_to_ignore


def test_modules_to_ignore_by_name_and_object():
    model = cnn()
    snap = snapshot(model)
    # conv1 alone: rank 1 gives a model ratio of 0.975 (see test_unreachable_target_allowed_warns_and_returns_best_plan)
    params = greedy(SPATIAL, target=0.98, ignore=["conv2", model.get_layer("conv3")])
    compressed, stats, recorder = run(model, params)
    assert set(stats.eval_scores) == {"conv1"}
    assert recorder.calls == 2 + 2  # conv1 has two distinct candidate ranks
    for name in ("conv2", "conv3"):
        assert "modules_to_ignore" in stats.skipped_layers[name]
        assert type(compressed.get_layer(name)) is L.Conv2D
        for a, b in zip(compressed.get_layer(name).get_weights(), model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    assert ranks(stats) == {"conv1": 1}
    assert_unchanged(model, snap)


def test_modules_to_ignore_unknown_name():
    model = cnn()
    recorder = Recorder(model)
    with pytest.raises(ValueError, match="conv_missing"):
        run(model, greedy(SPATIAL, ignore=["conv_missing"]), callback=recorder)
    assert recorder.calls == 0


# ---------------------------------------------------------------- multiplicity


@pytest.mark.parametrize(("scheme", "params_cls"), [("spatial_svd", SPATIAL), ("weight_svd", WEIGHT)])
def test_multiplicity_8_ranks(scheme, params_cls):
    model = cnn(widths=(32, 64, 64))
    _, stats, _ = run(model, greedy(params_cls, target=0.5, multiplicity=8), scheme=scheme)
    assert stats.per_layer_stats
    assert stats.mac_compression_ratio <= 0.5 + 1e-3
    multiples = 0
    for row in stats.per_layer_stats:
        layer_scheme = "svd" if row.name == "fc" else scheme
        cap = tfc.rank_for_ratio(model.get_layer(row.name), 1.0, layer_scheme, "mac")
        assert row.rank % 8 == 0 or row.rank == cap, (row.name, row.rank, cap)
        assert row.rank <= cap
        multiples += row.rank % 8 == 0
    assert multiples >= 1
    for path, table in stats.eval_scores.items():
        assert table, path


# ---------------------------------------------------------------- JSON cache


def test_cache_roundtrip_and_reuse(tmp_path):
    path = tmp_path / "scores.json"
    model = cnn()
    _, stats1, recorder1 = run(model, greedy(SPATIAL, target=0.5, cache=path, compare_plans=False))
    assert recorder1.calls == 22
    document = json.loads(path.read_text())
    assert set(document) == {"eval_scores", "model_fingerprint"}
    assert isinstance(document["model_fingerprint"], str) and document["model_fingerprint"]
    assert set(document["eval_scores"]) == {"conv1", "conv2", "conv3"}
    for layer, row in document["eval_scores"].items():
        assert {float(k) for k in row} == {round(i / 10, 6) for i in range(1, 10)}, layer
        for ratio, score in row.items():
            assert score == pytest.approx(stats1.eval_scores[layer][float(ratio)])

    # a different target: only baseline and final evaluations; same plan as a fresh run at that target
    _, stats2, recorder2 = run(model, greedy(SPATIAL, target=0.7, cache=path, compare_plans=False))
    assert recorder2.calls == 2 == stats2.num_eval_calls
    _, fresh, _ = run(model, greedy(SPATIAL, target=0.7, compare_plans=False))  # the same selection as stats2
    assert ranks(stats2) == ranks(fresh)
    assert ranks(stats2) != ranks(stats1)
    assert stats2.mac_compression_ratio == pytest.approx(fresh.mac_compression_ratio)
    assert stats2.mac_compression_ratio <= 0.7 + 1e-3
    assert stats2.eval_scores == stats1.eval_scores

    # the same weights in another model object are accepted
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    _, _, recorder3 = run(twin, greedy(SPATIAL, target=0.6, cache=path, compare_plans=False))
    assert recorder3.calls == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json", "scores.json.lock"]  # no temp file left


def test_cache_partial_file_evaluates_missing_layers_only(tmp_path):
    path = tmp_path / "scores.json"
    model = cnn()
    run(model, greedy(SPATIAL, target=0.5, cache=path, compare_plans=False))
    document = json.loads(path.read_text())
    del document["eval_scores"]["conv2"]
    del document["model_fingerprint"]  # a file without fingerprint is accepted
    path.write_text(json.dumps(document))
    _, _, recorder = run(model, greedy(SPATIAL, target=0.5, cache=path, compare_plans=False))
    assert recorder.calls == 2 + 9  # conv2 only
    rewritten = json.loads(path.read_text())
    assert set(rewritten["eval_scores"]) == {"conv1", "conv2", "conv3"}
    assert rewritten["model_fingerprint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json", "scores.json.lock"]  # no temp file left


def test_cache_errors(tmp_path):
    path = tmp_path / "scores.json"
    model = cnn()
    run(model, greedy(SPATIAL, target=0.5, cache=path))
    good = path.read_text()

    changed = keras.models.clone_model(model)
    weights = model.get_weights()
    weights[2] = weights[2].copy()
    weights[2].flat[0] += 1e-3
    changed.set_weights(weights)
    recorder = Recorder(changed)
    with pytest.raises(ValueError, match="different model") as info:
        run(changed, greedy(SPATIAL, target=0.5, cache=path), callback=recorder)
    assert type(info.value).__name__ == "EvalScoresCacheError"
    assert recorder.calls <= 1  # at most the baseline; no candidate was evaluated

    with pytest.raises(ValueError, match="settings"):
        run(model, greedy(SPATIAL, target=0.5, cache=path, multiplicity=8))
    with pytest.raises(ValueError, match="settings"):
        run(model, greedy(WEIGHT, target=0.5, cache=path), scheme="weight_svd")
    with pytest.raises(ValueError, match="settings"):
        run(model, greedy(SPATIAL, target=0.5, cache=path), metric="memory")
    assert path.read_text() == good  # a refused file is left as it was

    path.write_text(good[: len(good) // 2])
    with pytest.raises(ValueError) as info:
        run(model, greedy(SPATIAL, target=0.5, cache=path))
    assert str(path) in str(info.value)

    path.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        run(model, greedy(SPATIAL, target=0.5, cache=path))

    with pytest.raises(ValueError, match="does not exist"):
        run(model, greedy(SPATIAL, target=0.5, cache=tmp_path / "missing" / "scores.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json", "scores.json.lock"]  # no temp file left


# ---------------------------------------------------------------- unreachable target


def test_unreachable_target_raises_with_the_best_ratio_and_keeps_the_table(tmp_path):
    model = cnn()
    cache = tmp_path / "scores.json"
    with pytest.raises(tfc.TargetUnreachableError, match=r"cannot be reached; the best reachable ratio is") as info:
        run(model, greedy(SPATIAL, target=0.05, ignore=["conv2", "conv3"], cache=cache))
    err = info.value
    assert isinstance(err, ValueError) and "\n" not in str(err) and "allow_unreachable=True" in str(err)
    total = tfc.model_cost(model).macs
    assert err.target_ratio == 0.05
    assert err.best_ratio == pytest.approx((total - 4608 + 1728) / total, rel=1e-5)  # conv1 alone at rank 1
    assert set(err.eval_scores) == {"conv1"} and len(err.eval_scores["conv1"]) == 9
    assert err.cache_path == str(cache) and str(cache) in str(err)
    assert set(json.loads(cache.read_text())["eval_scores"]) == {"conv1"}  # nothing computed is lost
    # the same run again only reads the cache: 1 baseline evaluation, then the same error
    recorder = Recorder(model)
    with pytest.raises(tfc.TargetUnreachableError):
        run(model, greedy(SPATIAL, target=0.05, ignore=["conv2", "conv3"], cache=cache), callback=recorder)
    assert recorder.calls == 1


def test_unreachable_channel_pruning_target_raises():
    model = cnn()
    params = tfc.ChannelPruningParameters(
        data=np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype("float32"),
        num_reconstruction_samples=100,
        allow_custom_downsample_ops=False,
        mode="auto",
        params=tfc.ChannelPruningParameters.AutoModeParams(
            tfc.GreedySelectionParameters(target_comp_ratio=0.01, num_comp_ratio_candidates=4)
        ),
    )
    with pytest.raises(tfc.TargetUnreachableError) as info:
        run(model, params, scheme="channel_pruning")
    assert info.value.best_ratio > 0.01 and info.value.eval_scores


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_unreachable_target_allowed_warns_and_returns_best_plan():
    model = cnn()
    with pytest.warns(UserWarning, match="best reachable") as caught:
        compressed, stats, _ = run(
            model, greedy(SPATIAL, target=0.05, ignore=["conv2", "conv3"], allow_unreachable=True)
        )
    messages = [str(w.message) for w in caught if "best reachable" in str(w.message)]
    reported = float(re.search(r"best reachable model ratio is ([0-9.]+)", messages[0]).group(1))
    # only conv1 can shrink: rank 1 costs 1728 of its 4608 MACs
    total = tfc.model_cost(model).macs
    assert reported == pytest.approx((total - 4608 + 1728) / total, rel=1e-5)
    assert stats.mac_compression_ratio == pytest.approx(reported, rel=1e-5)
    assert any("best reachable" in note for note in stats.notes)
    assert ranks(stats) == {"conv1": 1}
    assert isinstance(compressed.get_layer("conv1"), tfc.SpatialSVDConv2D)


# ---------------------------------------------------------------- eval callback forms


def test_aimet_callback_and_iterations_identity():
    model = cnn()
    seen = []
    iterations = object()
    recorder = Recorder(model)

    def aimet_callback(m, its, use_cuda):
        seen.append((its, use_cuda))
        return recorder(m, its)

    _, stats = tfc.compress_model(
        model,
        aimet_callback,
        iterations,
        "spatial_svd",
        "mac",
        greedy(SPATIAL, target=0.5, compare_plans=False),
        verbose=0,
    )
    assert len(seen) == stats.num_eval_calls == 22
    assert all(its is iterations and use_cuda is False for its, use_cuda in seen)
    assert tfc.ModelCompressor.compress_model is tfc.compress_model


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("high", TypeError),
        ("0.9", TypeError),
        (None, TypeError),
    ],
)
def test_bad_callback_results(value, error):
    model = cnn()
    snap = snapshot(model)
    with pytest.raises(error, match="eval_callback"):
        run(model, greedy(SPATIAL), callback=lambda m, its: value)
    assert_unchanged(model, snap)


def test_callback_returning_numpy_scalar_is_fine():
    model = cnn()
    recorder = Recorder(model)
    _, stats, _ = run(model, greedy(SPATIAL, target=0.6), callback=lambda m, its: np.float32(recorder(m, its)))
    assert isinstance(stats.baseline_model_accuracy, float)


# ---------------------------------------------------------------- argument errors and forms


def test_argument_errors():
    model = cnn()
    with pytest.raises(TypeError, match="SpatialSvdParameters"):
        run(model, greedy(WEIGHT), scheme="spatial_svd")
    with pytest.raises(ValueError, match="compress_scheme"):
        run(model, greedy(SPATIAL), scheme="spatial")
    with pytest.raises(ValueError, match="cost_metric"):
        run(model, greedy(SPATIAL), metric="flops")
    with pytest.raises(TypeError, match="eval_callback"):
        tfc.compress_model(model, "not callable", None, "spatial_svd", "mac", greedy(SPATIAL), verbose=0)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    sub = Sub()
    sub(X_FIXED)
    with pytest.raises(TypeError, match="subclassed"):
        tfc.compress_model(sub, lambda m, i: 1.0, None, "spatial_svd", "mac", greedy(SPATIAL), verbose=0)


def test_string_enums_match_enum_members():
    model = cnn()
    select = tfc.GreedySelectionParameters(target_comp_ratio=0.5)
    with_strings = SPATIAL("auto", SPATIAL.AutoModeParams("greedy", select))
    with_enums = SPATIAL(tfc.Mode.auto, SPATIAL.AutoModeParams(tfc.RankSelectScheme.greedy, select))
    _, stats_s, _ = run(model, with_strings, scheme="spatial_svd", metric="mac")
    _, stats_e, _ = run(model, with_enums, scheme=tfc.CompressionScheme.spatial_svd, metric=tfc.CostMetric.mac)
    assert ranks(stats_s) == ranks(stats_e) and ranks(stats_s)
    assert stats_s.compress_scheme == "spatial_svd" and stats_s.cost_metric == "mac" and stats_s.mode == "auto"


def test_memory_metric():
    model = cnn(widths=(16, 32, 32))
    compressed, stats, _ = run(model, greedy(WEIGHT, target=0.5), scheme="weight_svd", metric="memory")
    assert abs(stats.memory_compression_ratio - 0.5) <= 0.02
    assert stats.memory_compression_ratio <= 0.5 + 1e-3
    assert stats.memory_compression_ratio == pytest.approx(compressed.count_params() / model.count_params())


# ---------------------------------------------------------------- trainer


def test_trainer_called_per_layer_in_forward_order():
    model = cnn()
    snap = snapshot(model)
    fc_bias = model.get_layer("fc").get_weights()[1]

    class FakeTrainer:
        def __init__(self):
            self.calls = []

        def train_model(self, m, layer, train_flag=True):
            self.calls.append((m, layer, train_flag, m.get_layer(layer.name) is layer, type(layer), layer.rank))
            fc = m.get_layer("fc")
            kernel, bias = fc.get_weights()
            fc.set_weights([kernel, bias + 1.0])  # "fine-tuning" that must survive the next layers' rewrites

    trainer = FakeTrainer()
    compressed, stats, _ = run(model, greedy(SPATIAL, target=0.5, compare_plans=False), trainer=trainer)
    names = [call[1].name for call in trainer.calls]
    assert names == [row.name for row in stats.per_layer_stats]
    assert len(names) >= 2
    order = [layer.name for layer in model.layers]
    assert names == sorted(names, key=order.index)
    for m, layer, flag, in_model, layer_type, rank in trainer.calls:
        assert flag is True and in_model and m is not model
        assert layer_type is tfc.SpatialSVDConv2D
        assert rank == ranks(stats)[layer.name]
    assert trainer.calls[-1][0] is compressed
    np.testing.assert_allclose(compressed.get_layer("fc").get_weights()[1], fc_bias + len(names))
    assert_unchanged(model, snap)


def test_fit_trainer_runs():
    model = cnn(softmax=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=64).astype("int32")
    trainer = tfc.FitTrainer((x, y), steps=2, loss="sparse_categorical_crossentropy")
    _, stats, _ = run(model, greedy(SPATIAL, target=0.5), trainer=trainer)
    assert trainer.calls == len(stats.per_layer_stats) >= 1
    assert np.isfinite(stats.compressed_model_accuracy)


# ---------------------------------------------------------------- stats


def test_stats_text_json_and_timings(tmp_path):
    model = cnn()
    recorder = Recorder(model)

    def slow_callback(m, its):
        time.sleep(0.005)
        return recorder(m, its) - 0.1

    compressed, stats, _ = run(model, greedy(SPATIAL, target=0.5), callback=slow_callback)
    text = str(stats)
    assert stats.per_layer_stats
    for row in stats.per_layer_stats:
        assert row.name in text
    assert f"{stats.baseline_model_accuracy:.4f}" in text
    assert f"{stats.compressed_model_accuracy:.4f}" in text
    assert stats.baseline_model_accuracy == pytest.approx(0.9)

    data = stats.to_dict()
    json.dumps(data, allow_nan=False)
    path = tmp_path / "stats.json"
    stats.to_json(path)
    assert tfc.CompressionStats.from_json(path) == stats
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]

    timings = stats.timings
    total, callback, overhead = timings["total_seconds"], timings["eval_callback_seconds"], timings["overhead_seconds"]
    assert callback >= 0.005 * stats.num_eval_calls
    assert total >= callback
    assert overhead == pytest.approx(total - callback, abs=1e-6)
    assert stats.original_macs == tfc.model_cost(model).macs
    assert stats.compressed_macs == tfc.model_cost(compressed).macs


# ---------------------------------------------------------------- verbose


def test_verbose(capsys):
    model = cnn()
    capsys.readouterr()
    _, stats, _ = run(model, greedy(SPATIAL, target=0.5, compare_plans=False))
    assert capsys.readouterr().out == ""
    tfc.compress_model(
        model, Recorder(model), None, "spatial_svd", "mac", greedy(SPATIAL, target=0.5, compare_plans=False), verbose=1
    )
    out = capsys.readouterr().out
    evaluations = stats.num_eval_calls - 2
    assert f"{evaluations}/{evaluations}" in out
    assert "eval" in out


# ---------------------------------------------------------------- whole-model check of two plans


def test_compare_plans_scores_both_plans_in_place_and_keeps_the_better():
    model = cnn()
    snap = snapshot(model)
    originals = {n: model.get_layer(n).get_weights()[0] for n in ("conv1", "conv2", "conv3")}
    changed_per_call, kernels_per_call = [], []

    class KernelRecorder(Recorder):
        def __call__(self, m, iterations):
            if m.get_layer("conv2").__class__ is L.Conv2D:  # the working copy (the final model is decomposed)
                kernels = {n: m.get_layer(n).get_weights()[0] for n in originals}
                changed_per_call.append(sorted(n for n in originals if not np.array_equal(kernels[n], originals[n])))
                kernels_per_call.append({n: kernels[n] for n in changed_per_call[-1]})
            return super().__call__(m, iterations)

    recorder = KernelRecorder(model)
    compressed, stats, _ = run(model, greedy(SPATIAL, target=0.5), callback=recorder)
    _, alone, alone_recorder = run(model, greedy(SPATIAL, target=0.5, compare_plans=False))
    # this tiny CNN's two plans differ, so both were scored: two evaluations more than the threshold plan alone
    assert set(stats.plan_scores) == {"threshold", "min_summed_loss"}
    assert recorder.calls == alone_recorder.calls + 2 == stats.num_eval_calls
    # both whole-plan evaluations ran on the same working copy with several kernels swapped at once ...
    work = recorder.models[0]
    assert recorder.models[-3] is work and recorder.models[-2] is work and recorder.models[-1] is compressed
    plans = [changed_per_call[-2], changed_per_call[-1]]  # the threshold plan, then the least-summed-loss one
    assert max(len(p) for p in plans) >= 2
    assert sorted(r.name for r in stats.per_layer_stats) in plans
    # ... and every other call (baseline, candidates) saw at most one changed kernel: the swaps were undone
    assert all(len(c) <= 1 for c in changed_per_call[:-2])
    # each whole-plan call saw exactly its plan (switching from the first plan to the second touched only the layers
    # that differ): the rank of every changed kernel, read off its spectrum, rebuilds a model that scores the same
    for kernels, which in zip(kernels_per_call[-2:], ("threshold", "min_summed_loss"), strict=True):
        plan = {}
        for name, kernel in kernels.items():
            s = np.linalg.svd(dc.spatial_svd_unfold(kernel.astype(np.float64)), compute_uv=False)
            plan[name] = ("spatial_svd", int(np.count_nonzero(s > 1e-4 * s[0])))
        assert Recorder(model)(tfc.rewrite_model(model, plan), None) == pytest.approx(
            stats.plan_scores[which], abs=1e-6
        )
    # the better plan was kept, and the rewritten model computes exactly what was scored
    best = max(stats.plan_scores.values())
    assert stats.compressed_model_accuracy == pytest.approx(best, abs=1e-6)
    assert stats.compressed_model_accuracy >= alone.compressed_model_accuracy - 1e-6
    kept = (
        "least-summed-loss plan"
        if stats.plan_scores["min_summed_loss"] > stats.plan_scores["threshold"]
        else "threshold plan"
    )
    assert any(note.startswith("whole-model check of two plans") and note.endswith(kept) for note in stats.notes)
    assert alone.plan_scores == {} and not any("two plans" in n for n in alone.notes)
    assert stats.mac_compression_ratio <= 0.5 + 1e-3 and alone.mac_compression_ratio <= 0.5 + 1e-3
    assert_unchanged(model, snap)


def test_compare_plans_costs_nothing_when_both_plans_agree():
    # one eligible layer and a score that peaks at the baseline: both selectors take the fitting candidate with the
    # best score, so there is nothing to compare and no evaluation is spent
    model = cnn()
    _, stats, recorder = run(model, greedy(SPATIAL, target=0.9, ignore=["conv1", "conv3"]))
    _, alone, alone_recorder = run(model, greedy(SPATIAL, target=0.9, ignore=["conv1", "conv3"], compare_plans=False))
    assert stats.plan_scores == {} and recorder.calls == alone_recorder.calls
    assert [(r.name, r.rank) for r in stats.per_layer_stats] == [(r.name, r.rank) for r in alone.per_layer_stats]
    assert stats.per_layer_stats


def test_compare_plans_must_be_a_bool():
    with pytest.raises(TypeError, match="compare_plans"):
        tfc.GreedySelectionParameters(target_comp_ratio=0.5, compare_plans="yes")


@pytest.mark.parametrize("scheme", ["weight_svd", "auto", "channel_pruning"])
def test_a_model_without_decomposable_layers_says_what_it_has(scheme):
    inp = keras.Input((5, 3))
    model = keras.Model(inp, L.LSTM(4, name="rnn")(inp), name="rnn_only")
    if scheme == "channel_pruning":
        params = tfc.ChannelPruningParameters(
            data=np.zeros((4, 5, 3), "float32"),
            num_reconstruction_samples=10,
            allow_custom_downsample_ops=False,
            mode="auto",
            params=tfc.ChannelPruningParameters.AutoModeParams(tfc.GreedySelectionParameters(0.5)),
        )
    else:
        cls = tfc.WeightSvdParameters if scheme == "weight_svd" else tfc.AutoSchemeParameters
        params = cls("auto", cls.AutoModeParams(tfc.GreedySelectionParameters(0.5)))
    with pytest.raises(ValueError, match=r"no layer of 'rnn_only' can be .*: it has no Dense, .*'rnn' \(LSTM\)"):
        tfc.compress_model(model, lambda m, _: 1.0, None, scheme, "mac", params, verbose=0)
