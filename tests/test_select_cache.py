"""The eval-score JSON cache: round trip, fingerprints, corrupt files, atomic writes."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfcompress.select import EvalScoresCacheError, fingerprint_from_entries, load_eval_scores, save_eval_scores

SCORES = {"conv2d_1": {0.1: 0.52, 0.2: 0.71, 0.5: 0.93}, "dense": {0.25: 0.88}}


def test_round_trip_with_fingerprint(tmp_path):
    path = tmp_path / "scores.json"
    save_eval_scores(path, SCORES, fingerprint="abc123")
    assert load_eval_scores(path, fingerprint="abc123") == SCORES
    assert load_eval_scores(str(path), fingerprint=None) == SCORES  # no check requested
    document = json.loads(path.read_text())
    assert document == {
        "eval_scores": {"conv2d_1": {"0.1": 0.52, "0.2": 0.71, "0.5": 0.93}, "dense": {"0.25": 0.88}},
        "model_fingerprint": "abc123",
    }


def test_ratio_keys_round_trip_exactly_including_numpy_values(tmp_path):
    ratios = np.linspace(0.1, 0.9, 9)  # includes 0.30000000000000004-like values
    scores = {"layer": {r: np.float32(0.5) + i for i, r in enumerate(ratios)}}
    path = tmp_path / "scores.json"
    save_eval_scores(path, scores, fingerprint=None)
    loaded = load_eval_scores(path, fingerprint=None)
    assert list(loaded["layer"]) == [float(r) for r in ratios]
    assert all(type(k) is float and type(v) is float for k, v in loaded["layer"].items())
    assert "0.1" in json.loads(path.read_text())["eval_scores"]["layer"]


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.dictionaries(st.floats(1e-6, 1.0), st.floats(-1e6, 1e6, allow_nan=False), max_size=5),
        max_size=4,
    )
)
def test_round_trip_property(tmp_path_factory, scores):
    path = tmp_path_factory.mktemp("cache") / "scores.json"
    save_eval_scores(path, scores, fingerprint="f")
    assert load_eval_scores(path, fingerprint="f") == scores


def test_missing_file_returns_none(tmp_path):
    assert load_eval_scores(tmp_path / "absent.json", fingerprint="x") is None


def test_fingerprint_mismatch_is_an_error(tmp_path):
    path = tmp_path / "scores.json"
    save_eval_scores(path, SCORES, fingerprint="a" * 64)
    with pytest.raises(EvalScoresCacheError, match="different model") as caught:
        load_eval_scores(path, fingerprint="b" * 64)
    assert isinstance(caught.value, ValueError)
    assert str(path) in str(caught.value) and "Delete" in str(caught.value)


def test_file_without_fingerprint_is_accepted(tmp_path):
    path = tmp_path / "scores.json"
    save_eval_scores(path, SCORES, fingerprint=None)
    assert "model_fingerprint" not in json.loads(path.read_text())
    assert load_eval_scores(path, fingerprint="anything") == SCORES
    path.write_text(json.dumps({"eval_scores": {"d": {"0.5": 1}}, "model_fingerprint": None}))
    assert load_eval_scores(path, fingerprint="anything") == {"d": {0.5: 1.0}}


def test_partial_table_is_fine(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text('{"eval_scores": {"dense": {}}}')
    assert load_eval_scores(path, fingerprint=None) == {"dense": {}}


def test_truncated_file_is_an_error(tmp_path):
    path = tmp_path / "scores.json"
    save_eval_scores(path, SCORES, fingerprint="f")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(EvalScoresCacheError, match="invalid JSON") as caught:
        load_eval_scores(path, fingerprint="f")
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[1, 2]", "top level"),
        ('{"scores": {}}', "eval_scores"),
        ('{"eval_scores": [1]}', "eval_scores"),
        ('{"eval_scores": {"d": [0.5]}}', "layer 'd'"),
        ('{"eval_scores": {"d": {"half": 0.5}}}', "'half'"),
        ('{"eval_scores": {"d": {"0.5": "high"}}}', "'high'"),
        ('{"eval_scores": {"d": {"0.5": true}}}', "True"),
        ('{"eval_scores": {"d": {"0.5": NaN}}}', "NaN"),
        ('{"eval_scores": {"d": {"nan": 0.5}}}', "'nan'"),
        ('{"eval_scores": {"d": {"0.5": 1, "0.50": 2}}}', "twice"),
        ('{"eval_scores": {"d": {"0.5": 1, "0.5": 2}}}', "duplicate"),
        ('{"eval_scores": {}, "model_fingerprint": 7}', "model_fingerprint"),
        ("", "invalid JSON"),
    ],
)
def test_wrong_structure_is_an_error(tmp_path, content, match):
    path = tmp_path / "scores.json"
    path.write_text(content)
    with pytest.raises(EvalScoresCacheError, match=match) as caught:
        load_eval_scores(path, fingerprint=None)
    assert str(path) in str(caught.value)


def test_non_utf8_file_is_an_error(tmp_path):
    path = tmp_path / "scores.json"
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(EvalScoresCacheError, match="UTF-8"):
        load_eval_scores(path, fingerprint=None)


def test_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "scores.json"
    save_eval_scores(path, SCORES, fingerprint="f")
    save_eval_scores(path, {"dense": {0.5: 0.1}}, fingerprint="g")  # overwrite
    assert os.listdir(tmp_path) == ["scores.json"]
    assert load_eval_scores(path, fingerprint="g") == {"dense": {0.5: 0.1}}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_score_is_rejected_before_writing(tmp_path, bad):
    path = tmp_path / "scores.json"
    save_eval_scores(path, SCORES, fingerprint="f")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="'dense'"):
        save_eval_scores(path, {"dense": {0.5: bad}}, fingerprint="f")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["scores.json"]


def test_failed_rename_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "scores.json"
    save_eval_scores(path, SCORES, fingerprint="f")
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk trouble")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk trouble"):
        save_eval_scores(path, {"dense": {0.5: 0.1}}, fingerprint="g")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["scores.json"]


def test_missing_directory_is_reported_and_nothing_created(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        save_eval_scores(tmp_path / "nope" / "scores.json", SCORES, fingerprint=None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("scores", "fingerprint", "match"),
    [
        ({1: {0.5: 0.1}}, None, "layer names"),
        ({"d": [0.5]}, None, "scores\\['d'\\]"),
        ({"d": {math.nan: 0.1}}, None, "ratio"),
        ({"d": {"x": 0.1}}, None, "numbers"),
        ({"d": {0.5: 0.1}}, 123, "fingerprint"),
    ],
)
def test_save_rejects_bad_input(tmp_path, scores, fingerprint, match):
    with pytest.raises(ValueError, match=match):
        save_eval_scores(tmp_path / "s.json", scores, fingerprint)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- fingerprint


def _entries():
    kernel = np.arange(12, dtype=np.float32).reshape(3, 4)
    return [("dense", "Dense", [kernel, np.zeros(4, np.float32)]), ("conv", "Conv2D", [np.ones((1, 1, 2, 2))])]


def test_fingerprint_is_deterministic_hex():
    digest = fingerprint_from_entries(_entries())
    assert digest == fingerprint_from_entries(_entries())
    assert len(digest) == 64 and int(digest, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        lambda e: [("dense2", *e[0][1:]), e[1]],  # layer name
        lambda e: [("dense", "SVDDense", e[0][2]), e[1]],  # class name
        lambda e: [("dense", "Dense", [e[0][2][0].reshape(4, 3), e[0][2][1]]), e[1]],  # shape, same bytes
        lambda e: [("dense", "Dense", [e[0][2][0].view(np.int32), e[0][2][1]]), e[1]],  # dtype, same bytes
        lambda e: [("dense", "Dense", [e[0][2][0] + 1e-3, e[0][2][1]]), e[1]],  # values
        lambda e: [("dense", "Dense", [e[0][2][0]]), e[1]],  # a weight fewer
        lambda e: [e[1], e[0]],  # layer order
        lambda e: [("dense", "Dense", [np.concatenate([e[0][2][0].ravel(), e[0][2][1]])]), e[1]],  # regrouped
        lambda e: [("den", "seDense", e[0][2]), e[1]],  # same concatenated text
    ],
)
def test_fingerprint_changes_with_any_field(change):
    assert fingerprint_from_entries(change(_entries())) != fingerprint_from_entries(_entries())


def test_fingerprint_ignores_memory_layout():
    kernel = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4))
    assert fingerprint_from_entries([("d", "Dense", [kernel])]) == fingerprint_from_entries(
        [("d", "Dense", [np.ascontiguousarray(kernel)])]
    )


def test_fingerprint_rejects_object_arrays():
    with pytest.raises(ValueError, match="'d'"):
        fingerprint_from_entries([("d", "Dense", [np.array([object()])])])
