"""The ``tfcompress`` command line: inspect, compress, report; exit codes and one-line errors.

Most tests call ``main([...])`` in this process (fast); the ``subprocess`` ones check what a user's shell sees.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.cli import main

EVAL_MODULE = "tfc_cli_test_eval"
EVAL_SOURCE = textwrap.dedent(
    """
    import numpy as np

    NOT_A_FUNCTION = 3


    def agreement(model, data):
        \"\"\"Share of the --data samples whose predicted class is the label.\"\"\"
        predictions = np.asarray(model(data["x"], training=False))
        return float(np.mean(predictions.argmax(1) == data["y"]))


    def broken(model, data):
        raise RuntimeError("boom in user code")
    """
)


@keras.saving.register_keras_serializable(package="tfc_cli_test")
class TinySubclassed(keras.Model):
    """A subclassed model: it loads, but compress_model refuses it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc = keras.layers.Dense(3)

    def call(self, inputs):
        return self.fc(inputs)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """A small saved CNN, an .npz of inputs labelled by the model itself, and an eval module."""
    folder = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(4, name="fc"),
        ],
        name="tiny_cnn",
    )
    model.save(folder / "model.keras")
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype("float32")
    np.savez(folder / "data.npz", x=x, y=model.predict(x, verbose=0).argmax(1))
    (folder / f"{EVAL_MODULE}.py").write_text(EVAL_SOURCE, encoding="utf-8")
    subclassed = TinySubclassed()
    subclassed(np.zeros((1, 4), dtype="float32"))
    subclassed.save(folder / "subclassed.keras")
    (folder / "weights.h5").write_bytes(b"not a keras file")
    (folder / "corrupt.keras").write_bytes(b"not a zip archive")
    return {
        "folder": folder,
        "model": folder / "model.keras",
        "data": folder / "data.npz",
        "subclassed": folder / "subclassed.keras",
        "h5": folder / "weights.h5",
        "corrupt": folder / "corrupt.keras",
    }


@pytest.fixture
def eval_on_path(files: dict[str, pathlib.Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(files["folder"]), *sys.path])  # restored after the test
    monkeypatch.chdir(files["folder"])


def _run(argv: list[str]) -> int:
    return main([str(a) for a in argv])


# ---------------------------------------------------------------- help and usage


@pytest.mark.parametrize("command", [[], ["demo"], ["inspect"], ["compress"], ["report"]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tfcompress" + (f" {command[0]}" if command else ""))
    assert "example" in out.lower()


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "inspect" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra",
    [
        ["--manual", "c2=0.5", "--target", "0.3"],  # manual mode sets the ratios itself
        ["--manual", "c2=half"],
        ["--manual", "c2"],
        ["--target", "1.5"],
        ["--candidates", "1"],
        ["--multiplicity", "0"],
        ["--scheme", "channel_pruning"],
    ],
)
def test_bad_usage_exits_2(extra: list[str], files, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run(["compress", files["model"], "-o", tmp_path / "out", *extra])
    assert exit_info.value.code == 2
    assert "usage: tfcompress compress" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- inspect


def test_inspect_prints_a_table_and_totals(files, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["inspect", files["model"]]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("layer"))
    assert header.split() == ["layer", "type", "MACs", "params", "weight_svd", "spatial_svd", "tucker"]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["c1"], ["c2"])}
    assert rows["c2"][-3:] == ["8", "24", "8x16"]  # max ranks: min(C, 9N), min(3C, 3N), (C, N)
    assert "total" in out and "tucker: fc: Tucker-2 applies to Conv2D layers only" in out
    assert "gap" not in rows  # layers without MACs or parameters are left out


def test_inspect_json_matches_the_cost_model(files, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["inspect", files["model"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = keras.models.load_model(files["model"])
    cost = tfc.model_cost(model)
    assert (info["macs"], info["params"]) == (cost.macs, cost.params)
    layers = {row["name"]: row for row in info["layers"]}
    assert list(layers) == ["c1", "c2", "fc"]
    assert layers["c2"]["macs"] == cost.layers["c2"].macs
    assert layers["c2"]["schemes"]["spatial_svd"] == {
        "eligible": True,
        "manual_only": False,
        "max_rank": 24,
        "reason": None,
    }
    assert layers["c2"]["schemes"]["tucker"]["max_rank"] == [8, 16]
    assert layers["fc"]["schemes"]["spatial_svd"]["manual_only"] is True
    assert layers["fc"]["schemes"]["tucker"]["eligible"] is False
    assert info["eligible_totals"]["spatial_svd"]["layers"] == 2


# ---------------------------------------------------------------- compress


def _no_temp_files(folder: pathlib.Path) -> bool:
    return not [name for name in os.listdir(folder) if name.startswith(".")]


@pytest.mark.usefixtures("eval_on_path")
def test_compress_with_an_eval_module_and_data(files, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["compress", files["model"], "--eval", f"{EVAL_MODULE}:agreement", "--data", files["data"]]
    assert _run([*argv, "--target", "0.6", "--candidates", "4", "-o", out]) == 0
    captured = capsys.readouterr()
    assert "weaker" not in captured.err
    assert "wrote model" in captured.out and "compression stats" in captured.out
    assert sorted(os.listdir(out)) == ["compressed.keras", "report.html", "stats.json"]
    stats = tfc.CompressionStats.from_json(out / "stats.json")
    assert stats.baseline_model_accuracy == 1.0  # the labels are the model's own predictions
    assert stats.mac_compression_ratio <= 0.6 + 1e-9
    assert stats.eval_scores and {s.name for s in stats.per_layer_stats} <= {"c1", "c2"}
    compressed = keras.models.load_model(out / "compressed.keras", safe_mode=True)
    assert tfc.model_cost(compressed).macs == stats.compressed_macs
    page = (out / "report.html").read_text(encoding="utf-8")
    assert all(s.name in page for s in stats.per_layer_stats)


@pytest.mark.usefixtures("eval_on_path")
def test_compress_eval_from_a_py_file_path(files, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"{files['folder'] / (EVAL_MODULE + '.py')}:agreement"
    argv = ["compress", files["model"], "--eval", spec, "--data", files["data"], "--candidates", "3"]
    assert _run([*argv, "--no-report", "-q", "-o", tmp_path / "out"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["compressed.keras", "stats.json"]
    assert "MAC ratio" in capsys.readouterr().out


def test_compress_data_free_warns_that_it_is_weaker(files, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["compress", files["model"], "--candidates", "3", "-q", "-o", tmp_path / "out"]) == 0
    err = capsys.readouterr().err
    assert "no --eval function given" in err and "weaker" in err and "random batch" in err
    stats = tfc.CompressionStats.from_json(tmp_path / "out" / "stats.json")
    assert stats.baseline_model_accuracy == 0.0  # a perfect copy of the original outputs
    assert stats.compressed_model_accuracy < 0.0


def test_compress_data_free_uses_the_data_inputs(files, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", files["model"], "--data", files["data"], "--candidates", "3", "--no-report", "-q"]
    assert _run([*argv, "-o", tmp_path / "out"]) == 0
    assert "--data's array 'x' (32 samples)" in capsys.readouterr().err


def test_compress_manual_mode(files, tmp_path) -> None:
    argv = ["compress", files["model"], "--scheme", "weight_svd", "--manual", "c2=0.5", "fc=0.5"]
    assert _run([*argv, "--no-report", "-q", "-o", tmp_path / "out"]) == 0
    stats = tfc.CompressionStats.from_json(tmp_path / "out" / "stats.json")
    assert stats.mode == "manual" and stats.eval_scores == {}
    assert [(s.name, s.scheme) for s in stats.per_layer_stats] == [("c2", "weight_svd"), ("fc", "svd")]


@pytest.mark.usefixtures("eval_on_path")
def test_compress_channel_pruning(files, tmp_path) -> None:
    argv = ["compress", files["model"], "--scheme", "channel_pruning", "--eval", f"{EVAL_MODULE}:agreement"]
    argv += ["--data", files["data"], "--samples", "300", "--target", "0.6", "--candidates", "4"]
    assert _run([*argv, "--no-report", "-q", "-o", tmp_path / "out"]) == 0
    stats = tfc.CompressionStats.from_json(tmp_path / "out" / "stats.json")
    assert stats.compress_scheme == "channel_pruning" and stats.mac_compression_ratio <= 0.6 + 1e-3
    compressed = keras.models.load_model(tmp_path / "out" / "compressed.keras", safe_mode=True)
    assert tfc.model_cost(compressed).macs == stats.compressed_macs
    assert "model input" in stats.skipped_layers["c1"]


@pytest.mark.usefixtures("eval_on_path")
def test_compress_cache_skips_evaluations_on_a_rerun(files, tmp_path) -> None:
    cache = tmp_path / "scores.json"
    argv = ["compress", files["model"], "--eval", f"{EVAL_MODULE}:agreement", "--data", files["data"]]
    argv += ["--candidates", "4", "--cache", cache, "--no-report", "-q"]
    assert _run([*argv, "--target", "0.7", "-o", tmp_path / "a"]) == 0
    assert _run([*argv, "--target", "0.5", "-o", tmp_path / "b"]) == 0
    first = tfc.CompressionStats.from_json(tmp_path / "a" / "stats.json")
    second = tfc.CompressionStats.from_json(tmp_path / "b" / "stats.json")
    # baseline and final model only (plus the whole-model check of two plans, when they differ)
    assert first.num_eval_calls > 2 and second.num_eval_calls == 2 + len(second.plan_scores)
    assert second.eval_scores == first.eval_scores


# ---------------------------------------------------------------- report


def test_report_command(files, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["compress", files["model"], "--candidates", "3", "--no-report", "-q", "-o", tmp_path]) == 0
    assert _run(["report", tmp_path / "stats.json", "-o", tmp_path / "page.html", "--title", "tiny <cnn>"]) == 0
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert "<title>tiny &lt;cnn&gt;</title>" in page and "data:image/png;base64," in page
    assert _run(["report", tmp_path / "stats.json"]) == 0  # default: report.html next to the stats
    assert (tmp_path / "report.html").is_file()
    assert str(tmp_path / "report.html") in capsys.readouterr().out


# ---------------------------------------------------------------- user mistakes: exit 1, one line


def _is_status(line: str) -> bool:
    """A phase message such as "tfcompress: loading m.keras ..." (not an error or a warning)."""
    return line.startswith("tfcompress: ") and not line.startswith(("tfcompress: error:", "tfcompress: warning:"))


def _assert_one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not _is_status(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith("tfcompress: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.mark.usefixtures("eval_on_path")
@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["inspect", "{folder}/missing.keras"], ["no such file"]),
        (["inspect", "{h5}"], ["is not a .keras file"]),
        (["inspect", "{folder}"], ["is a folder"]),
        (["inspect", "{corrupt}"], ["cannot load"]),
        (["inspect", "{subclassed}"], ["subclassed model", "Functional"]),
        (["compress", "{subclassed}", "-o", "{tmp}/out"], ["subclassed model"]),
        (["compress", "{model}", "--eval", "no_such_module_xyz:f", "-o", "{tmp}/out"], ["cannot import module"]),
        (["compress", "{model}", "--eval", f"{EVAL_MODULE}:nope", "-o", "{tmp}/out"], ["no attribute 'nope'"]),
        (["compress", "{model}", "--eval", f"{EVAL_MODULE}:NOT_A_FUNCTION", "-o", "{tmp}/out"], ["not a function"]),
        (["compress", "{model}", "--eval", EVAL_MODULE, "-o", "{tmp}/out"], ["MODULE:FUNCTION"]),
        (["compress", "{model}", "--eval", "missing.py:f", "-o", "{tmp}/out"], ["no such file"]),
        (["compress", "{model}", "--ignore", "c9", "-o", "{tmp}/out"], ["unknown layer", "c9"]),
        (["compress", "{model}", "--manual", "c9=0.5", "-o", "{tmp}/out"], ["unknown layer", "c9"]),
        (["compress", "{model}", "--manual", "gap=0.5", "-o", "{tmp}/out"], ["gap"]),
        (["compress", "{model}", "--data", "{folder}/missing.npz", "-o", "{tmp}/out"], ["--data"]),
        (["compress", "{model}", "--data", "{h5}", "-o", "{tmp}/out"], ["not an .npz archive"]),
        (["compress", "{model}", "--data", "{model}", "-o", "{tmp}/out"], ["has no array 'x'"]),
        (["compress", "{model}", "-o", "{model}"], ["not a folder"]),
        (["report", "{folder}/missing.json"], ["no such file"]),
        (["report", "{h5}"], ["not a valid stats JSON"]),
        (["report", "{data}"], ["not a stats JSON file"]),
    ],
)
def test_user_mistakes_are_one_line_errors(
    argv: list[str], fragments: list[str], files, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = {key: str(value) for key, value in files.items()} | {"tmp": str(tmp_path)}
    assert _run([a.format(**names) for a in argv]) == 1
    _assert_one_line_error(capsys, *fragments)
    assert not (tmp_path / "out").exists()  # a failed run leaves no empty output folder


@pytest.mark.usefixtures("eval_on_path")
def test_an_error_inside_the_eval_function_shows_its_traceback(
    files, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compress", files["model"], "--eval", f"{EVAL_MODULE}:broken", "--data", files["data"]]
    assert _run([*argv, "-q", "-o", tmp_path / "out"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and 'raise RuntimeError("boom in user code")' in err
    assert err.strip().splitlines()[-1] == (
        f"tfcompress: error: the --eval function {EVAL_MODULE}:broken raised RuntimeError: boom in user code"
    )


def test_missing_matplotlib_fails_before_the_work(
    files, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert _run(["compress", files["model"], "-q", "-o", tmp_path / "out"]) == 1
    line = _assert_one_line_error(capsys, 'pip install -e ".[report]"')
    assert "weaker" not in line
    assert _run(["compress", files["model"], "--candidates", "3", "--no-report", "-q", "-o", tmp_path / "out"]) == 0


# ---------------------------------------------------------------- a real process


def _cli(args: list[str], cwd: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    # TensorFlow's C++ start-up lines (oneDNN notice) go to stderr before tfcompress runs; silence them so the
    # test sees exactly what tfcompress itself prints.
    environment.update(TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0")
    command = [sys.executable, "-m", "tfcompress", *[str(a) for a in args]]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def test_process_exit_codes_and_one_line_errors(files, tmp_path) -> None:
    missing = _cli(["inspect", "missing.keras"], cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == ["tfcompress: error: no such file: 'missing.keras'"]
    usage = _cli(["compress", files["model"]], cwd=tmp_path)  # -o is required
    assert usage.returncode == 2 and "usage: tfcompress compress" in usage.stderr
    assert "Traceback" not in missing.stderr + usage.stderr


@pytest.mark.slow
def test_process_compress_with_an_eval_module_on_pythonpath(files, tmp_path) -> None:
    args = ["compress", files["model"], "--eval", f"{EVAL_MODULE}:agreement", "--data", files["data"]]
    result = _cli([*args, "--candidates", "3", "-o", "out"], cwd=tmp_path, PYTHONPATH=str(files["folder"]))
    assert result.returncode == 0, result.stderr
    assert "eval" in result.stdout + result.stderr  # the progress bar over the evaluations
    assert sorted(os.listdir(tmp_path / "out")) == ["compressed.keras", "report.html", "stats.json"]


@pytest.mark.usefixtures("eval_on_path")
def test_unreachable_target_exits_1_with_one_line_unless_allowed(files, tmp_path, capsys) -> None:
    argv = ["compress", files["model"], "--eval", f"{EVAL_MODULE}:agreement", "--data", files["data"]]
    argv += ["--target", "0.01", "--candidates", "3", "--ignore", "c2"]
    assert _run([*argv, "-o", tmp_path / "refused"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "cannot be reached; the best reachable ratio is" in err[-1] and "--allow-unreachable" in err[-1]
    assert not (tmp_path / "refused" / "compressed.keras").exists()
    assert _run([*argv, "--allow-unreachable", "-o", tmp_path / "allowed"]) == 0
    stats = tfc.CompressionStats.from_json(tmp_path / "allowed" / "stats.json")
    assert stats.mac_compression_ratio > 0.01 and any("not reachable" in note for note in stats.notes)


@pytest.mark.usefixtures("eval_on_path")
def test_compress_max_score_drop(files, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", files["model"], "--eval", f"{EVAL_MODULE}:agreement", "--data", files["data"]]
    argv += ["--candidates", "4", "--no-report", "-q"]
    assert _run([*argv, "--max-score-drop", "0.05", "-o", tmp_path / "a"]) == 0
    stats = tfc.CompressionStats.from_json(tmp_path / "a" / "stats.json")
    assert stats.target_comp_ratio is None and stats.max_score_drop == 0.05
    assert stats.whole_model_evaluations == len(stats.plan_scores) >= 1
    assert stats.baseline_model_accuracy - stats.compressed_model_accuracy <= 0.05 + 1e-6
    capsys.readouterr()
    # both: the ratio is reached and the drop checked (a drop beyond the bound is a ValueError: exit 1, one line)
    assert _run([*argv, "--target", "0.5", "--max-score-drop", "1", "-o", tmp_path / "b"]) == 0
    both = tfc.CompressionStats.from_json(tmp_path / "b" / "stats.json")
    assert both.target_comp_ratio == 0.5 and both.max_score_drop == 1.0 and both.mac_compression_ratio <= 0.501
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:
        _run([*argv, "--max-score-drop", "-1", "-o", tmp_path / "c"])
    assert usage.value.code == 2
    assert "--max-score-drop must be a number >= 0" in capsys.readouterr().err


# ---------------------------------------------------------------- data-aware factors from --data


def _data_aware_notes(stats: tfc.CompressionStats) -> list[str]:
    return [n for n in stats.notes if n.startswith("data-aware factors")]


@pytest.mark.usefixtures("eval_on_path")
def test_compress_with_data_fits_the_factors_to_its_inputs(files, tmp_path) -> None:
    """--data with model inputs makes the SVD factors data-aware (the recommended path); --data-free turns it off
    with the same selection otherwise, and the data-aware model's outputs are closer to the original's."""
    base = ["compress", files["model"], "--scheme", "weight_svd", "--manual", "c2=0.3", "fc=0.5"]
    base += ["--data", files["data"], "--samples", "300", "--no-report", "-q"]
    assert _run([*base, "-o", tmp_path / "aware"]) == 0
    assert _run([*base, "--data-free", "-o", tmp_path / "free"]) == 0
    aware = tfc.CompressionStats.from_json(tmp_path / "aware" / "stats.json")
    free = tfc.CompressionStats.from_json(tmp_path / "free" / "stats.json")
    assert any("fitted to their inputs" in n or "refitted in forward order" in n for n in _data_aware_notes(aware))
    assert _data_aware_notes(free) == []
    assert "data_aware_fit_seconds" in aware.timings and "data_aware_fit_seconds" not in free.timings
    x = np.load(files["data"])["x"]
    original = keras.models.load_model(files["model"], safe_mode=True)
    reference = np.asarray(original(x, training=False))

    def error(folder: str) -> float:
        model = keras.models.load_model(tmp_path / folder / "compressed.keras", safe_mode=True)
        return float(np.mean((np.asarray(model(x, training=False)) - reference) ** 2))

    assert error("aware") < error("free")


def test_compress_data_from_an_npy_file(files, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.load(files["data"])["x"])
    argv = ["compress", files["model"], "--data", tmp_path / "x.npy", "--candidates", "3", "--samples", "200"]
    assert _run([*argv, "--no-report", "-q", "-o", tmp_path / "out"]) == 0
    assert "--data's array 'x' (32 samples)" in capsys.readouterr().err  # the data-free score reads it too
    stats = tfc.CompressionStats.from_json(tmp_path / "out" / "stats.json")
    assert _data_aware_notes(stats)


def test_compress_data_without_inputs_says_the_factors_are_data_free(
    files, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "labels.npz", y=np.zeros(4))
    (tmp_path / "const_eval.py").write_text("def score(model, data):\n    return float(len(data['y']))\n")
    argv = ["compress", files["model"], "--eval", f"{tmp_path / 'const_eval.py'}:score"]
    argv += ["--data", tmp_path / "labels.npz", "--manual", "c2=0.5", "--no-report", "-q", "-o", tmp_path / "out"]
    assert _run(argv) == 0
    assert "no array 'x' of model inputs: the factors are data-free" in capsys.readouterr().err
    assert _data_aware_notes(tfc.CompressionStats.from_json(tmp_path / "out" / "stats.json")) == []


def test_data_free_flag_is_refused_for_channel_pruning(files, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compress", files["model"], "--scheme", "channel_pruning", "--data", files["data"], "--data-free"]
    with pytest.raises(SystemExit) as err:
        _run([*argv, "-o", tmp_path / "out"])
    assert err.value.code == 2 and "--data-free is for the SVD and Tucker schemes" in capsys.readouterr().err


def test_a_file_that_is_neither_npz_nor_npy_is_refused(files, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY broken header")
    assert _run(["compress", files["model"], "--data", tmp_path / "x.npy", "-o", tmp_path / "out"]) == 1
    _assert_one_line_error(capsys, "not a readable .npy array")
