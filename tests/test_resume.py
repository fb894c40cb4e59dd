"""Resumable runs: every score goes to the JSON cache as it arrives, a killed run resumes where it stopped, two runs
on one cache file keep each other's scores, and the cache is tied to the layers' configurations as well as their
weights."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.pipeline.scorecache import model_fingerprint
from tfcompress.select import EvalScoresCacheError, ScoreCacheWriter, load_eval_scores

L = keras.layers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tfc.__file__)))
X = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")

# the model, callback and parameters of the subprocess runs (and of the in-process ones): deterministic
SCRIPT = """
import json, os, signal, sys
import keras, numpy as np
import tfcompress as tfc
from tfcompress.select import ScoreCacheWriter

cache, kill_at, ignore, interval = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
ScoreCacheWriter.min_interval = interval
L = keras.layers
keras.utils.set_random_seed(1)
model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
    L.Conv2D(16, 3, padding="same", activation="relu", name="conv2"), L.MaxPooling2D(name="pool"),
    L.Conv2D(16, 3, padding="same", activation="relu", name="conv3"), L.GlobalAveragePooling2D(name="gap"),
    L.Dense(10, name="fc")])
x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
reference = np.asarray(model(x))
calls = 0

def score(m, _):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("SLOW_EVAL"):
        import time; time.sleep(0.05)
    return 1.0 - float(np.mean((np.asarray(m(x)) - reference) ** 2))

greedy = tfc.GreedySelectionParameters(0.6, 5, saved_eval_scores_dict=cache, allow_unreachable=True)
ignored = [name for name in ignore.split(",") if name]
params = tfc.WeightSvdParameters(tfc.Mode.auto, tfc.WeightSvdParameters.AutoModeParams(greedy, modules_to_ignore=ignored))
_, stats = tfc.compress_model(model, score, None, "weight_svd", "mac", params, verbose=0)
checks = len(stats.plan_scores or {})
print(json.dumps({"candidates": calls - 2 - checks, "ranks": [[r.name, r.rank] for r in stats.per_layer_stats],
                  "scores": {k: {repr(r): s for r, s in row.items()} for k, row in stats.eval_scores.items()}}))
"""


def run(cache, kill_at=0, ignore="", interval=0.5, slow=False, wait=True):
    env = {
        **os.environ,
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    if slow:
        env["SLOW_EVAL"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(cache), str(kill_at), ignore, str(interval)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not wait:
        return process
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def cached_count(path):
    return sum(len(row) for row in (load_eval_scores(path, None) or {}).values())


@pytest.mark.slow
def test_a_run_killed_mid_run_resumes_and_pays_only_for_the_missing_candidates(tmp_path):
    code, out, _ = run(tmp_path / "clean.json")
    assert code == 0
    clean = json.loads(out)
    cache = tmp_path / "scores.json"
    code, _, _ = run(cache, kill_at=8, interval=0.0)  # baseline + 6 candidates scored, killed in the 7th
    assert code == -signal.SIGKILL
    stored = load_eval_scores(cache, None)
    assert 6 <= sum(len(row) for row in stored.values())  # every score returned before the kill is in the file
    code, out, _ = run(cache)
    resumed = json.loads(out)
    assert code == 0
    assert resumed["candidates"] == clean["candidates"] - 6  # nothing paid twice
    # the same table (a resumed layer's first rank is reconstructed directly, not extended from the rank before it:
    # equal up to float32 rounding) and the same plan
    assert resumed["scores"].keys() == clean["scores"].keys()
    for layer, row in clean["scores"].items():
        assert resumed["scores"][layer] == pytest.approx(row, rel=1e-6)
    assert resumed["ranks"] == clean["ranks"]
    # with the default interval a kill loses at most the scores of the last half second: still nothing paid twice
    cache2 = tmp_path / "scores2.json"
    code, _, _ = run(cache2, kill_at=8)
    assert code == -signal.SIGKILL
    kept = cached_count(cache2)
    code, out, _ = run(cache2)
    assert code == 0 and json.loads(out)["candidates"] == clean["candidates"] - kept
    assert kept >= 1


@pytest.mark.slow
def test_two_runs_on_one_cache_file_keep_each_others_scores(tmp_path):
    cache = tmp_path / "scores.json"
    first = run(cache, ignore="conv3,fc", interval=0.0, slow=True, wait=False)
    second = run(cache, ignore="conv1,conv2", interval=0.0, slow=True, wait=False)
    for process in (first, second):
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    assert set(load_eval_scores(cache, None)) == {"conv2", "conv3", "fc"}  # (conv1 saves nothing at rank 1)
    code, out, _ = run(cache)  # everything is cached now
    assert code == 0 and json.loads(out)["candidates"] == 0


# ---------------------------------------------------------------- in process (fast)


def cnn(activation="relu", strides=1, seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
            L.Conv2D(16, 3, strides=strides, padding="same", activation=activation, name="conv2"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(10, name="fc"),
        ]
    )


def params(cache):
    greedy = tfc.GreedySelectionParameters(0.6, 5, saved_eval_scores_dict=cache, allow_unreachable=True)
    return tfc.WeightSvdParameters(tfc.Mode.auto, tfc.WeightSvdParameters.AutoModeParams(greedy))


def test_every_score_is_in_the_cache_as_it_arrives_and_an_interrupted_run_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(ScoreCacheWriter, "min_interval", 0.0)
    model = cnn()
    reference = np.asarray(model(X))
    cache = tmp_path / "scores.json"
    seen = []

    def score(m, _):
        seen.append(cached_count(cache) if cache.exists() else 0)
        if len(seen) == 6:
            raise KeyboardInterrupt
        return 1.0 - float(np.mean((np.asarray(m(X)) - reference) ** 2))

    with pytest.raises(KeyboardInterrupt):
        tfc.compress_model(model, score, None, "weight_svd", "mac", params(cache), verbose=0)
    assert seen == [0, 0, 1, 2, 3, 4]  # baseline, then one more score in the file before each candidate
    calls = []

    def counted(m, i):
        calls.append(1)
        return 1.0 - float(np.mean((np.asarray(m(X)) - reference) ** 2))

    _, stats = tfc.compress_model(model, counted, None, "weight_svd", "mac", params(cache), verbose=0)
    _, clean = tfc.compress_model(model, counted, None, "weight_svd", "mac", params(None), verbose=0)
    candidates = stats.num_eval_calls - 2 - len(stats.plan_scores or {})
    assert candidates == clean.num_eval_calls - 2 - len(clean.plan_scores or {}) - 4
    assert stats.eval_scores == clean.eval_scores


def test_writes_are_at_most_every_min_interval_and_close_writes_the_rest(tmp_path):
    path = tmp_path / "scores.json"
    writer = ScoreCacheWriter(path, "f")
    table = {"conv": {}}
    for i in range(50):
        table["conv"][round(0.01 * (i + 1), 6)] = 0.5
        writer.save(table)
    assert writer.writes == 1 and cached_count(path) == 1  # the first score at once, the others within 0.5 s
    assert writer.close() == str(path) and cached_count(path) == 50 and writer.writes == 2


def test_two_writers_on_one_file_merge_their_scores(tmp_path):
    path = tmp_path / "scores.json"
    a, b = ScoreCacheWriter(path, "f"), ScoreCacheWriter(path, "f")
    a.save({"conv1": {0.5: 0.9}})
    b.save({"conv2": {0.5: 0.8}})
    a.close({"conv1": {0.5: 0.9, 0.25: 0.7}})
    assert load_eval_scores(path, "f") == {"conv1": {0.25: 0.7, 0.5: 0.9}, "conv2": {0.5: 0.8}}


def test_a_write_waits_for_the_lock_held_by_another_writer(tmp_path):
    path = tmp_path / "scores.json"
    descriptor = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(descriptor, fcntl.LOCK_EX)  # another process's write in progress
    writer = ScoreCacheWriter(path, "f")
    thread = threading.Thread(target=writer.save, args=({"conv": {0.5: 0.9}},))
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive() and not path.exists()
    os.close(descriptor)
    thread.join(5)
    assert not thread.is_alive() and load_eval_scores(path, "f") == {"conv": {0.5: 0.9}}


@pytest.mark.parametrize("other", [{"activation": "tanh"}, {"strides": 2}])
def test_a_cache_of_the_same_weights_under_another_configuration_is_refused(tmp_path, other):
    model, changed = cnn(), cnn(**other)
    changed.set_weights(model.get_weights())  # the very same weights
    assert model_fingerprint(model) != model_fingerprint(changed)
    assert model_fingerprint(model) == model_fingerprint(cnn())  # deterministic
    cache = tmp_path / "scores.json"
    reference = np.asarray(model(X))
    tfc.compress_model(model, lambda m, i: -float(np.mean((np.asarray(m(X)) - reference) ** 2)), None, "weight_svd",
                       "mac", params(cache), verbose=0)  # fmt: skip
    with pytest.raises(EvalScoresCacheError, match="different model"):
        tfc.compress_model(changed, lambda m, i: 0.0, None, "weight_svd", "mac", params(cache), verbose=0)


def _auto_run(cache: str, stop_after: int | None = None) -> tuple[int, tfc.CompressionStats, np.ndarray]:
    """compress_scheme='auto' on a small CNN with a score cache; ``stop_after`` candidate scores: Ctrl-C."""
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
            L.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(10, name="fc"),
        ]
    )
    reference = np.asarray(model(X))
    calls = []

    def score(m, _):
        calls.append(1)
        if stop_after is not None and len(calls) == stop_after + 2:  # after the baseline and stop_after candidates
            raise KeyboardInterrupt
        return 1.0 - float(np.mean((np.asarray(m(X)) - reference) ** 2))

    greedy = tfc.GreedySelectionParameters(0.6, 4, saved_eval_scores_dict=cache, allow_unreachable=True)
    params = tfc.AutoSchemeParameters(tfc.Mode.auto, tfc.AutoSchemeParameters.AutoModeParams(greedy))
    small, stats = tfc.compress_model(model, score, None, "auto", "mac", params, verbose=0)
    return len(calls), stats, np.asarray(small(X))


def test_auto_writes_its_scores_to_the_cache_and_a_stopped_run_resumes(tmp_path):
    cache = str(tmp_path / "auto.json")
    calls, stats, out = _auto_run(cache)
    checks = len(stats.plan_scores or {})
    candidates = calls - 2 - checks
    assert candidates > 4 and os.path.exists(cache)
    rows = load_eval_scores(cache, None)
    assert {row.split("|")[0] for row in rows} == {name for name, row in stats.eval_scores.items() if row}
    assert {row.split("|")[1] for row in rows} >= {"weight_svd", "spatial_svd"}
    # the same run again pays for no candidate and gives the same model
    again, stats2, out2 = _auto_run(cache)
    assert again == calls - candidates
    assert stats2.eval_scores == stats.eval_scores
    np.testing.assert_allclose(out2, out, rtol=1e-5, atol=1e-6)
    # a run stopped by Ctrl-C after 3 candidates keeps them; the next one pays only for the rest
    fresh = str(tmp_path / "stopped.json")
    with pytest.raises(KeyboardInterrupt):
        _auto_run(fresh, stop_after=3)
    assert 1 <= sum(len(r) for r in load_eval_scores(fresh, None).values())
    resumed, stats3, out3 = _auto_run(fresh)
    assert resumed == calls - 3
    assert stats3.eval_scores.keys() == stats.eval_scores.keys()
    for name, row in stats.eval_scores.items():  # (scored again in another order: equal up to float rounding)
        assert stats3.eval_scores[name] == pytest.approx(row, abs=1e-8)
    np.testing.assert_allclose(out3, out, rtol=1e-5, atol=1e-6)
