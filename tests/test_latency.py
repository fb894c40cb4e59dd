"""cost_metric="latency": measured layer/candidate/model latencies, the JSON cache, and selection on them.

No test asserts a timing threshold: timings are counted, cached, or injected.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress import cost, latency
from tfcompress.latency import LatencyMeter, LatencyOptions

L = keras.layers
SPATIAL = tfc.SpatialSvdParameters
FAST = {"repeats": 2, "warmup": 0}


def cnn(seed: int = 5) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            L.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(4, name="fc"),
        ],
        name="latency_cnn",
    )


def mse_score(model: keras.Model):
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    reference = model.predict(x, verbose=0)

    def score(m, iterations):
        return -float(np.mean((m.predict(x, verbose=0) - reference) ** 2))

    return score


def greedy(target: float = 0.6, n: int = 4) -> SPATIAL:
    return SPATIAL("auto", SPATIAL.AutoModeParams(tfc.GreedySelectionParameters(target, num_comp_ratio_candidates=n)))


@pytest.fixture
def count_timings(monkeypatch):
    calls = []
    real = latency.measure_seconds

    def counting(run, warmup, repeats):
        calls.append(1)
        return real(run, warmup, repeats)

    monkeypatch.setattr(latency, "measure_seconds", counting)
    return calls


@pytest.fixture
def fake_timer(monkeypatch):
    """Deterministic 'timings' (seconds = MACs * 1e-9, plus 1e-6 per model) recorded per call; no real timing."""
    calls = []

    def fake_layer(self, layer, shape):
        calls.append(layer.name)
        g = cost.layer_geometry(layer, input_shape=(None, *shape[1:]))
        scheme = cost.layer_scheme(layer)
        macs = cost.original_cost(g).macs if scheme is None else cost.decomposed_cost(g, scheme, layer.rank).macs
        return macs * 1e-9

    def fake_model(self, model, shape):
        calls.append(model.name)
        return tfc.model_cost(model).macs * 1e-9 + 1e-6

    monkeypatch.setattr(LatencyMeter, "_time_layer", fake_layer)
    monkeypatch.setattr(LatencyMeter, "_time_callable_model", fake_model)
    return calls


@pytest.mark.parametrize("runtime", ["tf", "tflite"])
def test_meter_measures_layer_candidate_model(runtime, count_timings):
    model = cnn()
    meter = LatencyMeter(LatencyOptions(runtime=runtime, **FAST))
    conv = model.get_layer("conv2")
    values = [meter.layer(conv), meter.candidate(conv, "spatial_svd", 4), meter.model(model)]
    assert all(v > 0 for v in values)
    assert meter.timings == 3 and len(count_timings) == 3
    meter.layer(conv)  # in-memory cache
    assert meter.timings == 3
    # the user's layer gained no new call node
    assert len(conv._inbound_nodes) == 1


def test_keys_ignore_names_and_depend_on_batch_and_runtime():
    a, b = cnn(seed=1), cnn(seed=2)
    meter = LatencyMeter(LatencyOptions(**FAST))
    assert meter.layer_key(a.get_layer("conv2")) == meter.layer_key(b.get_layer("conv2"))
    assert meter.layer_key(a.get_layer("conv1")) != meter.layer_key(a.get_layer("conv2"))
    other = LatencyMeter(LatencyOptions(batch_size=8, **FAST))
    assert meter.layer_key(a.get_layer("conv2")) != other.layer_key(a.get_layer("conv2"))
    lite = LatencyMeter(LatencyOptions(runtime="tflite", **FAST))
    assert meter.layer_key(a.get_layer("conv2")) != lite.layer_key(a.get_layer("conv2"))
    assert meter.candidate_key(a.get_layer("conv2"), "spatial_svd", 4) != meter.candidate_key(
        a.get_layer("conv2"), "spatial_svd", 5
    )
    assert meter.model_key(a) == meter.model_key(b)


def test_second_run_with_cache_times_nothing_and_plans_match(tmp_path, fake_timer):
    model = cnn()
    options = LatencyOptions(cache_path=tmp_path / "lat.json", **FAST)
    score = mse_score(model)
    _, stats1 = tfc.compress_model(
        model, score, None, "spatial_svd", "latency", greedy(), verbose=0, latency_options=options
    )
    first = len(fake_timer)
    assert first > 0
    data = json.loads((tmp_path / "lat.json").read_text())
    assert data["format"] == "tfcompress-latency-cache" and data["entries"]
    _, stats2 = tfc.compress_model(
        model, score, None, "spatial_svd", "latency", greedy(), verbose=0, latency_options=options
    )
    assert len(fake_timer) == first, "a second run with a full cache must not time anything"
    assert stats2.timings["latency_measurements"] == 0
    plan1 = [(r.name, r.scheme, r.rank) for r in stats1.per_layer_stats]
    plan2 = [(r.name, r.scheme, r.rank) for r in stats2.per_layer_stats]
    assert plan1 == plan2
    assert stats1.selected_comp_ratio == stats2.selected_comp_ratio
    for key in (
        "latency_original_measured_seconds",
        "latency_original_predicted_seconds",
        "latency_compressed_predicted_seconds",
        "latency_compressed_measured_seconds",
    ):
        assert stats2.timings[key] == stats1.timings[key] > 0


def _inject(path, model, slow_layer: str, n: int = 4):
    """A cache where every candidate of ``slow_layer`` is slower than the original, the others 10x faster."""
    meter = LatencyMeter(LatencyOptions(cache_path=None, **FAST))
    entries = {meter.model_key(model): 3.0}
    for name in ("conv1", "conv2"):
        layer = model.get_layer(name)
        entries[meter.layer_key(layer)] = 1.0
        for i in range(1, n):
            rank = tfc.rank_for_ratio(layer, i / n, "spatial_svd", "mac")
            entries[meter.candidate_key(layer, "spatial_svd", rank)] = 2.0 if name == slow_layer else 0.1
    path.write_text(json.dumps({"format": "tfcompress-latency-cache", "version": 1, "entries": entries}))


def test_slower_decomposition_is_never_selected(tmp_path, monkeypatch):
    model = cnn()
    _inject(tmp_path / "lat.json", model, slow_layer="conv1")

    timed = []
    monkeypatch.setattr(latency, "measure_seconds", lambda run, warmup, repeats: timed.append(1) or 1.0)
    options = LatencyOptions(cache_path=tmp_path / "lat.json", **FAST)
    small, stats = tfc.compress_model(
        model, mse_score(model), None, "spatial_svd", "latency", greedy(0.8), verbose=0, latency_options=options
    )
    assert isinstance(small.get_layer("conv1"), L.Conv2D)
    assert "conv1" not in [r.name for r in stats.per_layer_stats]
    assert "conv1" not in stats.eval_scores or not stats.eval_scores["conv1"]
    assert isinstance(small.get_layer("conv2"), tfc.SpatialSVDConv2D)
    # remainder = 3 - (1 + 1) = 1; total 3; conv2 at 0.1 -> 2.1 / 3 = 0.7 <= 0.8
    assert stats.timings["latency_remainder_seconds"] == pytest.approx(1.0)
    assert stats.selected_comp_ratio == pytest.approx(2.1 / 3.0)
    assert len(timed) == 1, "only the compressed model (not in the injected cache) is timed"


def test_all_slower_is_a_clear_error(tmp_path, monkeypatch):
    model = cnn()
    path = tmp_path / "lat.json"
    _inject(path, model, slow_layer="conv1")
    data = json.loads(path.read_text())
    data["entries"] = {k: (2.0 if k.startswith("candidate:") else v) for k, v in data["entries"].items()}
    path.write_text(json.dumps(data))
    options = LatencyOptions(cache_path=path, **FAST)
    with pytest.raises(ValueError, match=r"saves cost.*measured slower"):
        tfc.compress_model(
            model, mse_score(model), None, "spatial_svd", "latency", greedy(0.8), verbose=0, latency_options=options
        )


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"format": "other"}),
        '{"format": "tfcompress-latency-cache", "entries": {"k": -1}}',
    ],
)
def test_corrupt_cache_is_a_value_error(tmp_path, content):
    path = tmp_path / "lat.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="latency cache"):
        LatencyMeter(LatencyOptions(cache_path=path))
    model = cnn()
    with pytest.raises(ValueError, match="latency cache"):
        tfc.compress_model(
            model,
            mse_score(model),
            None,
            "spatial_svd",
            "latency",
            greedy(),
            verbose=0,
            latency_options=LatencyOptions(cache_path=path),
        )


def test_option_errors(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        LatencyOptions(batch_size=0)
    with pytest.raises(ValueError, match="folder"):
        LatencyMeter(LatencyOptions(cache_path=tmp_path / "missing" / "lat.json"))
    model = cnn()
    with pytest.raises(TypeError, match="latency_options"):
        tfc.compress_model(model, mse_score(model), None, "spatial_svd", "latency", greedy(), latency_options={})


def test_manual_mode_under_latency_uses_mac_ranks(fake_timer):
    model = cnn()
    params = SPATIAL("manual", SPATIAL.ManualModeParams({"conv2": 0.5}))
    small, stats = tfc.compress_model(
        model,
        mse_score(model),
        None,
        "spatial_svd",
        "latency",
        params,
        verbose=0,
        latency_options=LatencyOptions(**FAST),
    )
    assert small.get_layer("conv2").rank == tfc.rank_for_ratio(model.get_layer("conv2"), 0.5, "spatial_svd", "mac")
    assert stats.timings["latency_compressed_measured_seconds"] > 0
