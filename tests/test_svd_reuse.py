"""The final rewrite of ``compress_model`` reuses the SVDs computed during selection (``decompose.reuse_svds``).

Each eligible layer is factorised exactly once per run, and the reused factors give exactly the model that
``tfc.rewrite_model(model, plan)`` gives on its own.
"""

from __future__ import annotations

import threading

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress import decompose, svd_memo

L = keras.layers
X = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype("float32")


def cnn(seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
            L.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
            L.MaxPooling2D(name="pool"),
            L.Conv2D(16, 3, padding="same", activation="relu", name="conv3"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(10, name="fc"),
        ]
    )


def agreement(model):
    reference = np.asarray(model(X, training=False))

    def score(m, iterations):
        return 1.0 - float(np.mean((np.asarray(m(X, training=False)) - reference) ** 2))

    return score


def auto(params_cls, target, rank_select="greedy", compare_plans=True):
    if rank_select == "tar":
        select = tfc.TarRankSelectionParameters(num_rank_indices=10, target_comp_ratio=target)
    else:
        select = tfc.GreedySelectionParameters(target_comp_ratio=target, compare_plans=compare_plans)
    return params_cls(tfc.Mode.auto, params_cls.AutoModeParams(select))


@pytest.fixture
def svd_calls(monkeypatch):
    """Shapes of the matrices numpy's SVD is asked to factorise (decompose calls np.linalg.svd)."""
    shapes = []
    real = np.linalg.svd

    def counting(matrix, *args, **kwargs):
        shapes.append(np.shape(matrix))
        return real(matrix, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "svd", counting)
    return shapes


CASES = [
    # scheme, parameters, eligible layers and their unfolding shapes
    ("spatial_svd", auto(tfc.SpatialSvdParameters, 0.5), {"conv1": (3, 24), "conv2": (24, 48), "conv3": (48, 48)}),
    (
        "weight_svd",
        auto(tfc.WeightSvdParameters, 0.5),
        {"conv2": (8, 144), "conv3": (16, 144), "fc": (16, 10)},  # conv1 (C=1): rank 1 saves nothing
    ),
    (
        "spatial_svd",
        auto(tfc.SpatialSvdParameters, 0.5, rank_select="tar"),
        {"conv1": (3, 24), "conv2": (24, 48), "conv3": (48, 48)},
    ),
]


@pytest.mark.parametrize(("scheme", "params", "unfoldings"), CASES, ids=["spatial-greedy", "weight-greedy", "tar"])
def test_each_layer_is_factorised_once_per_run(svd_calls, scheme, params, unfoldings):
    model = cnn()
    compressed, stats = tfc.compress_model(model, agreement(model), None, scheme, "mac", params, verbose=0)
    chosen = {row.name for row in stats.per_layer_stats}
    assert chosen, "the run should compress at least one layer"
    # one SVD per eligible layer during selection, none in the final rewrite (it used to add one per chosen layer)
    assert sorted(svd_calls) == sorted(unfoldings.values())
    assert any(
        isinstance(layer, tfc.SpatialSVDConv2D | tfc.WeightSVDConv2D | tfc.SVDDense) for layer in compressed.layers
    )
    # the memo does not outlive the run
    assert svd_memo._SVD_MEMO.get() is None
    svd_calls.clear()
    tfc.rewrite_model(model, {row.name: (row.scheme, row.rank) for row in stats.per_layer_stats})
    assert len(svd_calls) == len(chosen)  # outside compress_model, rewrite_model factorises as before


@pytest.mark.parametrize(("scheme", "params", "unfoldings"), CASES, ids=["spatial-greedy", "weight-greedy", "tar"])
def test_reused_factors_give_exactly_the_rewrite_model_result(scheme, params, unfoldings):
    model = cnn()
    compressed, stats = tfc.compress_model(model, agreement(model), None, scheme, "mac", params, verbose=0)
    plan = {row.name: (row.scheme, row.rank) for row in stats.per_layer_stats}
    assert plan
    fresh = tfc.rewrite_model(model, plan)  # factorises from scratch, outside any memo
    assert [type(layer) for layer in compressed.layers] == [type(layer) for layer in fresh.layers]
    assert [w.name for w in compressed.weights] == [w.name for w in fresh.weights]
    for ours, theirs in zip(compressed.get_weights(), fresh.get_weights(), strict=True):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(np.asarray(compressed(X)), np.asarray(fresh(X)))


def test_trainer_changes_later_kernels_so_they_are_factorised_anew(svd_calls):
    # with a trainer the model changes between the layer-by-layer rewrites: a layer whose kernel the fine-tuning
    # changed no longer matches the selection's matrix and must be factorised again, from its new kernel
    model = cnn()

    class Nudge:
        def train_model(self, m, layer, train_flag=True):
            for other in m.layers:
                if type(other) is L.Conv2D:
                    other.kernel.assign(other.kernel + 0.01)

    params = auto(tfc.SpatialSvdParameters, 0.5, compare_plans=False)  # the threshold plan: two layers
    compressed, stats = tfc.compress_model(
        model, agreement(model), None, "spatial_svd", "mac", params, trainer=Nudge(), verbose=0
    )
    chosen = [row.name for row in stats.per_layer_stats]  # forward order
    assert len(chosen) >= 2
    shapes = {"conv1": (3, 24), "conv2": (24, 48), "conv3": (48, 48)}
    # selection: every layer once; the first chosen layer reuses its SVD; each later one was nudged before its turn
    assert sorted(svd_calls) == sorted([*shapes.values(), *(shapes[name] for name in chosen[1:])])
    last = compressed.get_layer(chosen[-1])
    kernel = model.get_layer(chosen[-1]).get_weights()[0]
    for _ in chosen[:-1]:
        kernel = kernel + np.float32(0.01)  # what the trainer did to it before it was rewritten
    for ours, theirs in zip(last.get_weights()[:2], decompose.spatial_svd_factors(kernel, last.rank), strict=True):
        np.testing.assert_array_equal(ours, theirs.astype("float32"))
    # the trainer's time is the user's, not toolkit overhead
    t = stats.timings
    assert t["trainer_seconds"] > 0 and t["final_rewrite_seconds"] > 0 and t["working_copy_seconds"] > 0
    assert t["overhead_seconds"] == pytest.approx(
        t["total_seconds"] - t["eval_callback_seconds"] - t["trainer_seconds"], abs=1e-6
    )


def test_memo_compares_values_and_keeps_its_own_copy():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 4))
    with decompose.reuse_svds():
        first = decompose.TruncatedSVD.of(m)
        assert decompose.TruncatedSVD.of(m.copy()) is first
        assert decompose.TruncatedSVD.of(m.astype(np.float32).astype(np.float64)) is not first  # other values
        m[0, 0] += 1.0  # the caller changes its array: the memo has its own copy, so this is a new matrix
        second = decompose.TruncatedSVD.of(m)
        assert second is not first
        np.testing.assert_allclose(second.reconstruct(4), m, atol=1e-12)
        with pytest.raises(ValueError, match="read-only"):
            first.u[0, 0] = 0.0
        with decompose.reuse_svds():  # nested blocks share the memo
            assert decompose.TruncatedSVD.of(m) is second
    assert decompose.TruncatedSVD.of(m) is not second
    assert decompose.TruncatedSVD.of(m).u.flags.writeable


# ---------------------------------------------------------------- SVDs on background threads


def _matrices():
    rng = np.random.default_rng(3)
    # tall, wide, small (direct SVD) and large enough for the Gram route
    return [
        rng.normal(size=(300, 200)),
        rng.normal(size=(60, 90)),
        rng.normal(size=(5, 7)),
        rng.normal(size=(160, 160)),
    ]


def test_background_svds_equal_the_direct_ones_in_the_order_given():
    matrices = _matrices()
    with decompose.BackgroundSVDs(matrices) as background:
        got = background.wait()
    assert len(got) == len(matrices)
    for matrix, svd in zip(matrices, got, strict=True):
        want = decompose.TruncatedSVD.of(matrix)
        np.testing.assert_allclose(svd.s, want.s, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(svd.reconstruct(svd.max_rank), matrix, atol=1e-9)
        np.testing.assert_allclose(svd.u.T @ svd.u, np.eye(svd.max_rank), atol=1e-9)
    assert background.compute_seconds > 0.0
    assert not [t for t in threading.enumerate() if t.name.startswith("tfcompress-svd")]  # none outlives the block


def test_background_svds_work_on_their_own_copy_and_feed_the_memo():
    matrices = _matrices()
    original = matrices[0].copy()
    with decompose.reuse_svds():
        with decompose.BackgroundSVDs(matrices) as background:
            matrices[0] *= 0.0  # the caller changes its array after handing it over
            first = background.get(0)
        np.testing.assert_allclose(first.reconstruct(first.max_rank), original, atol=1e-9)
        # an equal matrix is not factorised again inside the block: the very same SVD comes back
        assert decompose.TruncatedSVD.of(original.copy()) is first
        assert background.get(0) is first
        with pytest.raises(ValueError, match="read-only"):
            first.s[0] = 1.0


def test_background_svds_re_raise_a_failure_and_restore_the_blas_threads(monkeypatch):
    from threadpoolctl import threadpool_info

    before = [(lib["internal_api"], lib["num_threads"]) for lib in threadpool_info()]
    bad = np.full((20, 10), 2.0)
    compute = decompose.TruncatedSVD._compute_here.__func__

    def failing(cls, matrix):
        if matrix.shape == bad.shape:
            raise np.linalg.LinAlgError("SVD did not converge")
        return compute(cls, matrix)

    monkeypatch.setattr(decompose.TruncatedSVD, "_compute_here", classmethod(failing))
    with pytest.raises(np.linalg.LinAlgError), decompose.BackgroundSVDs([np.eye(4), bad]) as background:
        background.wait()
    assert [(lib["internal_api"], lib["num_threads"]) for lib in threadpool_info()] == before
    with pytest.raises(ValueError, match="layer 'conv' holds 1 non-finite value"):  # NaN: refused before any thread
        decompose.BackgroundSVDs([np.eye(4), np.where(np.eye(3) > 0, np.nan, 0.0)[:1]], names=["a", "layer 'conv'"])
    with pytest.raises(ValueError, match="matrices"):
        decompose.BackgroundSVDs([np.zeros(3)])
    with pytest.raises(RuntimeError, match="context manager"):
        decompose.BackgroundSVDs([np.eye(3)]).get(0)


def test_background_svds_leave_no_thread_when_the_caller_fails(monkeypatch):
    matrices = [np.random.default_rng(i).normal(size=(20, 20)) for i in range(6)]
    started, release = threading.Event(), threading.Event()
    real = decompose.TruncatedSVD._compute_kept.__func__

    def slow(cls, matrix):  # the first SVD stays "inside LAPACK" until the test lets it go
        started.set()
        release.wait(10.0)
        return real(cls, matrix)

    monkeypatch.setattr(decompose.TruncatedSVD, "_compute_kept", classmethod(slow))
    with pytest.raises(KeyError), decompose.BackgroundSVDs(matrices, workers=1) as background:
        assert started.wait(10.0)
        raise KeyError("the working copy could not be made")
    # leaving by an error does not wait: the one SVD already running ends on its own daemon thread, the rest never
    # start, and the BLAS limits are restored after it
    left = [t for t in threading.enumerate() if t.name.startswith("tfcompress-svd")]
    assert left and all(t.daemon for t in left)
    release.set()
    for thread in left:
        thread.join(10.0)
    assert not [t for t in threading.enumerate() if t.name.startswith("tfcompress-svd")]
    assert [f.cancelled() for f in background._futures].count(True) == len(matrices) - 1
    assert sum(f.done() and not f.cancelled() for f in background._futures) == 1


def test_compress_model_reports_svd_wait_and_compute_time():
    model = cnn()
    params = auto(tfc.SpatialSvdParameters, 0.5)
    _, stats = tfc.compress_model(model, agreement(model), None, "spatial_svd", "mac", params, verbose=0)
    assert stats.timings["svd_compute_seconds"] > 0.0
    assert 0.0 <= stats.timings["svd_seconds"] <= stats.timings["overhead_seconds"]
