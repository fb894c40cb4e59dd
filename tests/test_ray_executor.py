"""RayExecutor: candidates scored on Ray actors give the local executor's table and plan; a killed worker is
replaced and its jobs retried; the callback's own errors propagate unchanged; close() leaves nothing behind.

The tests that start Ray are slow (each actor imports TensorFlow: 10-30 s on this 2-core machine); the fast ones
check what needs no Ray process: the weight order of a reloaded working copy, arguments, the missing-Ray error.
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.pipeline.evaluator import Evaluator
from tfcompress.pipeline.executor import Job, LocalExecutor
from tfcompress.pipeline.ray_executor import (
    _custom_objects,
    _layout_mismatch,
    _model_bytes,
    _weight_layout,
)

try:
    import ray
except ImportError:  # the fast checks below that need no Ray still run
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason='Ray is not installed (pip install -e ".[ray]")')


# ---------------------------------------------------------------- models


@keras.saving.register_keras_serializable(package="test_ray_executor")
class Block(keras.layers.Layer):
    """A custom layer holding two Dense sublayers and a weight of its own."""

    def __init__(self, units: int = 6, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.first = keras.layers.Dense(units, activation="relu", name="first")
        self.second = keras.layers.Dense(units, name="second")

    def build(self, input_shape):
        self.first.build(input_shape)
        self.second.build((*input_shape[:-1], self.units))
        self.scale = self.add_weight(shape=(self.units,), initializer="ones", name="scale")

    def call(self, x):
        return self.second(self.first(x)) * self.scale

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def digits_cnn() -> keras.Model:
    from tfcompress.demo import digits_cnn as make

    keras.utils.set_random_seed(0)
    return make()


def nested_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((8, 8, 4)), keras.layers.Conv2D(8, 3, padding="same", name="c1"), keras.layers.ReLU()],
        name="inner",
    )
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = inner(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="outer")


def custom_layer_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    x = Block(6, name="block")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x), name="with_block")


@pytest.mark.parametrize("make", [digits_cnn, nested_model, custom_layer_model])
def test_a_working_copy_reloaded_from_its_keras_bytes_lists_its_weights_in_the_same_order(make, tmp_path):
    # jobs address weights by index into work.weights: an actor's copy, loaded from the bytes, must agree
    model = make()
    path = tmp_path / "work.keras"
    path.write_bytes(_model_bytes(model))
    loaded = keras.saving.load_model(path, custom_objects=_custom_objects(model), compile=False)
    assert _layout_mismatch(_weight_layout(model), _weight_layout(loaded)) is None
    assert len(model.weights) == len(loaded.weights) >= 4
    for original, reloaded in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(original), keras.ops.convert_to_numpy(reloaded))


def test_a_layout_mismatch_is_named():
    sent = [("conv/kernel", (3, 3, 1, 8), "<f4", "aa"), ("conv/bias", (8,), "<f4", "bb")]
    assert _layout_mismatch(sent, sent) is None
    assert "weight 1 is conv/bias (8,) <f4 on the driver but conv/bias (4,)" in _layout_mismatch(
        sent, [sent[0], ("conv/bias", (4,), "<f4", "bb")]
    )
    assert "weight 0 (conv/kernel (3, 3, 1, 8)) holds other values" in _layout_mismatch(
        sent, [("conv/kernel", (3, 3, 1, 8), "<f4", "cc"), sent[1]]
    )
    assert "2 weights" in _layout_mismatch(sent, sent[:1])


def test_custom_objects_name_the_custom_classes_only():
    found = _custom_objects(custom_layer_model())
    assert found == {"test_ray_executor>Block": Block}
    assert _custom_objects(digits_cnn()) == {}


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[ray\]"'):
        tfc.RayExecutor(num_workers=2)


@needs_ray
@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_num_workers_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="num_workers"):
        tfc.RayExecutor(num_workers=bad)


@needs_ray
def test_address_and_runtime_env_types_are_checked():
    with pytest.raises(TypeError, match="address"):
        tfc.RayExecutor(address=10001)
    with pytest.raises(TypeError, match="runtime_env"):
        tfc.RayExecutor(runtime_env=["working_dir"])
    assert repr(tfc.RayExecutor(2, "auto")) == "RayExecutor(num_workers=2, address='auto')"


@pytest.mark.slow  # a fresh process imports TensorFlow: 5-20 s here
def test_importing_tfcompress_does_not_import_ray():
    code = "import sys, tfcompress; tfcompress.RayExecutor; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------- on Ray (slow)


def _jobs(model: keras.Model) -> list[Job]:
    """Two jobs per weight: the weight scaled by 0.5 and by 1.5 (every job starts from the original weights)."""
    jobs = []
    for index, variable in enumerate(model.weights):
        value = keras.ops.convert_to_numpy(variable)
        for factor in (0.5, 1.5):
            jobs.append(Job((index, factor), f"weight {index} x {factor}", ((index, value * factor),)))
    return jobs


def _accuracy(x: np.ndarray, y: np.ndarray):
    def accuracy(model, iterations):
        predicted = np.argmax(model.predict(x, verbose=0, batch_size=1024), axis=-1)
        return float(np.mean(predicted == y))

    return accuracy


def _dies_once(callback, marker: str):
    """``callback``, except that the first call in a process other than this one kills that process
    (``os._exit(1)``), once: the marker file says it happened."""
    driver = os.getpid()

    def dying(model, iterations):
        if os.getpid() != driver:
            try:  # O_EXCL: of two workers starting at once, exactly one claims the marker (and dies)
                handle = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return callback(model, iterations)
            os.write(handle, str(os.getpid()).encode())
            os.close(handle)
            os._exit(1)
        return callback(model, iterations)

    return dying


@pytest.fixture(scope="module")
def trained_digits():
    from tfcompress.demo import digits_data

    x_train, y_train, x_test, y_test = digits_data(seed=0)
    model = digits_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=3, batch_size=64, verbose=0)
    return model, x_test, y_test


def _local_table(model, callback, jobs):
    executor = LocalExecutor()
    executor.open(model, Evaluator(callback, None))
    try:
        return {job.key: score for job, score in executor.map(jobs)}
    finally:
        executor.close()


def _pids_alive(pids):
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


@pytest.mark.slow
@needs_ray
def test_two_workers_give_the_local_table_and_a_killed_worker_is_replaced(trained_digits, tmp_path):
    model, x_test, y_test = trained_digits
    accuracy = _accuracy(x_test, y_test)
    jobs = _jobs(model)
    local = _local_table(model, accuracy, jobs)
    assert len(set(local.values())) > 3  # the jobs really change the score

    marker = str(tmp_path / "died")
    executor = tfc.RayExecutor(num_workers=2)
    executor.open(model, Evaluator(_dies_once(accuracy, marker), None))
    try:
        pids = executor._get([slot.actor.ready.remote() for slot in executor._slots])
        remote = {job.key: score for job, score in executor.map(iter(jobs))}
        assert executor.restarts == 1
    finally:
        executor.close()
    assert os.path.exists(marker)  # a worker did die mid-run
    assert remote == local  # and the table is still identical, every job scored once
    assert executor.evaluations == len(jobs)
    assert executor.eval_seconds > 0
    assert not ray.is_initialized()  # it started Ray, so close() shut it down
    assert _pids_alive(pids) == []


@pytest.mark.slow
@needs_ray
def test_callback_errors_propagate_unchanged_and_a_job_that_kills_two_workers_raises(trained_digits, tmp_path):
    model, x_test, y_test = trained_digits
    accuracy = _accuracy(x_test, y_test)
    jobs = _jobs(model)

    def wrong_type(m, iterations):
        raise TypeError("my callback's own TypeError")

    def always_dies(m, iterations):
        os._exit(1)

    ray.init(num_cpus=1, include_dashboard=False)
    try:
        with tfc.RayExecutor(num_workers=1) as executor:
            executor.open(model, Evaluator(wrong_type, None))
            with pytest.raises(TypeError, match="my callback's own TypeError") as caught:
                list(executor.map(jobs))
            assert type(caught.value) is TypeError  # not Ray's wrapper
        assert ray.is_initialized()  # a Ray instance it did not start is left running

        with tfc.RayExecutor(num_workers=1) as executor:
            executor.open(model, Evaluator(lambda m, i: "high", None))  # the evaluator's own check
            with pytest.raises(TypeError, match=r"for weight 0 x 0\.5 it returned 'high'"):
                list(executor.map(jobs))

        with tfc.RayExecutor(num_workers=1) as executor:
            executor.open(model, Evaluator(always_dies, None))
            with pytest.raises(RuntimeError, match=r"scoring weight 0 x [0-9.]+ failed on 2 different workers"):
                list(executor.map(jobs))
            actors = [slot.actor for slot in executor._slots]
        for actor in actors:  # close() killed them
            with pytest.raises(ray.exceptions.RayActorError):
                ray.get(actor.ready.remote(), timeout=60)
        del accuracy
    finally:
        ray.shutdown()


# ---------------------------------------------------------------- compress_model on Ray (slow)


def _plan(stats) -> list[tuple]:
    """What was chosen per layer: (name, scheme, rank or kept channels, MACs after)."""
    return [(row.name, row.scheme, row.rank, row.macs_after) for row in stats.per_layer_stats]


def _greedy(params_cls, data=None, **greedy):
    select = tfc.GreedySelectionParameters(target_comp_ratio=0.5, num_comp_ratio_candidates=5, **greedy)
    if params_cls is tfc.ChannelPruningParameters:
        return params_cls(data, 500, False, "auto", params_cls.AutoModeParams(select))
    return params_cls("auto", params_cls.AutoModeParams(select))


@pytest.mark.slow
@needs_ray
@pytest.mark.parametrize(
    ("scheme", "params_cls"),
    [
        ("weight_svd", tfc.WeightSvdParameters),
        ("auto", tfc.AutoSchemeParameters),
        ("channel_pruning", tfc.ChannelPruningParameters),
    ],
)
def test_compress_model_on_two_ray_workers_gives_the_local_plan_and_table(trained_digits, scheme, params_cls, tmp_path):
    from tfcompress.demo import digits_data

    model, x_test, y_test = trained_digits
    x_train = digits_data(seed=0)[0]
    accuracy = _accuracy(x_test, y_test)
    params = _greedy(params_cls, x_train[:500])
    weights = [w.copy() for w in model.get_weights()]
    local_model, local = tfc.compress_model(model, accuracy, None, scheme, "mac", params, verbose=0)
    executor = tfc.RayExecutor(num_workers=2)
    # weight SVD: one worker dies (os._exit) on its first candidate, in the middle of the run
    marker = str(tmp_path / "died")
    callback = _dies_once(accuracy, marker) if scheme == "weight_svd" else accuracy
    remote_model, remote = tfc.compress_model(
        model, callback, None, scheme, "mac", params, verbose=0, executor=executor
    )
    assert not ray.is_initialized()  # the run closed the executor, which stopped the Ray it started
    assert executor.restarts == (1 if scheme == "weight_svd" else 0)
    assert os.path.exists(marker) == (scheme == "weight_svd")
    assert remote.eval_scores == local.eval_scores
    assert sum(len(row) for row in remote.eval_scores.values()) >= 8
    assert executor.evaluations >= 8  # the candidates were scored on the workers
    assert _plan(remote) == _plan(local)
    assert remote.mac_compression_ratio == local.mac_compression_ratio
    assert remote.compressed_model_accuracy == local.compressed_model_accuracy
    for a, b in zip(local_model.get_weights(), remote_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(weights, model.get_weights(), strict=True):  # the user's model is untouched
        np.testing.assert_array_equal(a, b)
