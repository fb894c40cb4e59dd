"""Tests of the executor abstraction (``tfcompress.pipeline.executor``) and its use by ``compress_model``.

Every search loop scores its candidates through an executor; the default one, ``LocalExecutor``, must give exactly
the scores, plans and call counts of the in-place search it replaced, and any object with the protocol's methods
plugs in.
"""

from __future__ import annotations

import ast
import copy
import pathlib

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.pipeline import Job, LocalExecutor
from tfcompress.pipeline.executor import check_executor

L = keras.layers
ROOT = pathlib.Path(tfc.__file__).parent
X = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")


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

    def score(m, _):
        return 1.0 - float(np.mean((np.asarray(m(X, training=False)) - reference) ** 2))

    return score


class Counting:
    """An executor of the protocol that wraps LocalExecutor and records the jobs it scored."""

    def __init__(self):
        self.inner = LocalExecutor()
        self.jobs = []
        self.opened = self.closed = 0

    @property
    def evaluations(self):
        return self.inner.evaluations

    @property
    def eval_seconds(self):
        return self.inner.eval_seconds

    def open(self, work, evaluator):
        self.opened += 1
        self.inner.open(work, evaluator)

    def map(self, jobs):
        for job, score in self.inner.map(jobs):
            self.jobs.append(job)
            yield job, score

    def close(self):
        self.closed += 1
        self.inner.close()


class Elsewhere(Counting):
    """Scores every job on its own copy of the working model with its own copy of the evaluator (as a remote worker
    would), so the run's evaluator does not see these calls."""

    def open(self, work, evaluator):
        self.opened += 1
        copy_of_work = keras.models.clone_model(work)
        copy_of_work.set_weights(work.get_weights())
        self.inner.open(copy_of_work, copy.deepcopy(evaluator))


def values(model):
    return [np.array(w) for w in model.get_weights()]


def test_local_executor_scores_in_order_and_restores_every_weight_bit_for_bit():
    model = cnn()
    before = values(model)
    seen = []

    def evaluator(m, what):
        seen.append((what, [float(np.sum(np.asarray(w))) for w in m.weights]))
        return float(len(seen))

    kernel = lambda v: np.full(model.weights[0].shape, v, "float32")  # noqa: E731
    bias = np.ones(model.weights[3].shape, "float32")
    jobs = [
        Job("a", "first", ((0, kernel(1.0)),)),
        Job("b", "second", ((0, kernel(2.0)),)),  # the same weight again: no restore in between needed
        Job("c", "third", ((3, bias),)),  # another weight: the first must be the original again
    ]
    executor = LocalExecutor()
    executor.open(model, evaluator)
    out = list(executor.map(jobs))
    executor.close()
    assert [(job.key, score) for job, score in out] == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    sums = [s for _, s in seen]
    original_sums = [float(np.sum(w)) for w in before]
    assert sums[0][0] == kernel(1.0).sum() and sums[1][0] == kernel(2.0).sum()
    assert sums[2][0] == original_sums[0] and sums[2][3] == bias.sum()
    assert all(sums[i][j] == original_sums[j] for i in range(3) for j in (1, 2, 4, 5))
    assert all(np.array_equal(a, b) for a, b in zip(values(model), before, strict=True))
    assert executor.evaluations == 3 and executor.eval_seconds >= 0


@pytest.mark.parametrize("where", ["evaluator", "consumer"])
def test_local_executor_restores_when_stopped_midway(where):
    model = cnn()
    before = values(model)

    def evaluator(m, what):
        if where == "evaluator" and what == "second":
            raise KeyboardInterrupt
        return 0.0

    jobs = [Job(i, w, ((0, np.zeros(model.weights[0].shape, "float32")),)) for i, w in enumerate(["first", "second"])]
    executor = LocalExecutor()
    executor.open(model, evaluator)
    results = executor.map(jobs)
    with pytest.raises(KeyboardInterrupt):
        for _ in results:
            if where == "consumer":
                raise KeyboardInterrupt
    results.close()
    assert all(np.array_equal(a, b) for a, b in zip(values(model), before, strict=True))


def test_executor_argument_is_checked():
    model = cnn()
    params = tfc.WeightSvdParameters(
        tfc.Mode.auto, tfc.WeightSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(0.5))
    )
    for bad in ("local", LocalExecutor, object()):
        with pytest.raises(TypeError, match="executor"):
            tfc.compress_model(model, agreement(model), None, "weight_svd", "mac", params, verbose=0, executor=bad)
    assert isinstance(check_executor(None), LocalExecutor)


@pytest.mark.parametrize("scheme", ["spatial_svd", "auto"])
def test_every_candidate_goes_through_the_executor_and_the_plan_is_unchanged(scheme):
    model = cnn()
    if scheme == "auto":
        params = tfc.AutoSchemeParameters(
            tfc.Mode.auto, tfc.AutoSchemeParameters.AutoModeParams(tfc.GreedySelectionParameters(0.5, 5))
        )
    else:
        params = tfc.SpatialSvdParameters(
            tfc.Mode.auto, tfc.SpatialSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(0.5))
        )
    _, default = tfc.compress_model(model, agreement(model), None, scheme, "mac", params, verbose=0)
    executor = Counting()
    _, stats = tfc.compress_model(model, agreement(model), None, scheme, "mac", params, verbose=0, executor=executor)
    assert [(r.name, r.rank) for r in stats.per_layer_stats] == [(r.name, r.rank) for r in default.per_layer_stats]
    assert stats.eval_scores == default.eval_scores
    assert executor.opened == executor.closed == 1
    checks = len(stats.plan_scores or {})
    assert len(executor.jobs) == stats.num_eval_calls - 2 - checks  # all but the baseline, checks, final model
    assert len({job.key for job in executor.jobs}) == len(executor.jobs)
    assert all(len(job.assignments) == 1 for job in executor.jobs)


def test_channel_pruning_scores_through_the_executor_and_counts_remote_evaluations():
    model = cnn()
    params = tfc.ChannelPruningParameters(
        X, 200, False, "auto", tfc.ChannelPruningParameters.AutoModeParams(tfc.GreedySelectionParameters(0.6, 4))
    )
    _, default = tfc.compress_model(model, agreement(model), None, "channel_pruning", "mac", params, verbose=0)
    executor = Elsewhere()
    _, stats = tfc.compress_model(
        model, agreement(model), None, "channel_pruning", "mac", params, verbose=0, executor=executor
    )
    assert stats.eval_scores == default.eval_scores
    assert stats.chosen_ratios == default.chosen_ratios
    # the jobs were scored on another copy by another evaluator: still counted in the stats
    assert executor.jobs and stats.num_eval_calls == default.num_eval_calls
    assert all(isinstance(i, int) for job in executor.jobs for i, _ in job.assignments)


def test_a_full_cache_opens_no_executor(tmp_path):
    model = cnn()
    cache = tmp_path / "scores.json"
    params = tfc.WeightSvdParameters(
        tfc.Mode.auto,
        tfc.WeightSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(0.5, saved_eval_scores_dict=cache)),
    )
    tfc.compress_model(model, agreement(model), None, "weight_svd", "mac", params, verbose=0)
    executor = Counting()
    tfc.compress_model(model, agreement(model), None, "weight_svd", "mac", params, verbose=0, executor=executor)
    assert executor.opened == 0 and not executor.jobs


def _imports(path):
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add(("." * node.level) + (node.module or ""))
    return out


def test_layout_no_circular_import_and_no_long_module():
    assert not {m for m in _imports(ROOT / "pruning" / "driver.py") if m.endswith("compress")}
    for path in (ROOT / "pipeline").glob("*.py"):
        assert "..compress" not in _imports(path), path
    for path in [ROOT / "compress.py", *(ROOT / "pipeline").glob("*.py"), *(ROOT / "pruning").glob("*.py")]:
        assert len(path.read_text().splitlines()) <= 650, path
