"""Start-up of the command line: instant answers without TensorFlow, no TensorFlow log lines, plain progress in logs.

The subprocess tests check what a user's shell sees; ``-X importtime`` lists every module a process imports.
"""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress import _starting_command_line
from tfcompress._startup import is_startup_noise
from tfcompress.progress import Progress

ENTRY_SCRIPT = "import sys\nfrom tfcompress.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n"


def _imported_modules(stderr: str) -> set[str]:
    """Top-level names of the modules a ``python -X importtime`` process imported."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def _timed(command: list[str], cwd: pathlib.Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}  # nothing pre-silenced for us
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return result, time.perf_counter() - start


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["--version"], 0),
        (["compress", "--help"], 0),
        (["compress", "m.keras", "-o", "out", "--target", "abc"], 2),
        (["compress", "m.keras", "-o", "out", "--target", "1.5"], 2),
        (["inspect", "missing.keras"], 1),
        (["report", "missing.json"], 1),
    ],
)
@pytest.mark.parametrize("launcher", ["python -m", "script"])
def test_help_version_and_usage_errors_answer_without_tensorflow(
    argv: list[str], code: int, launcher: str, tmp_path: pathlib.Path
) -> None:
    if launcher == "script":  # what pip's console script `tfcompress` runs
        script = tmp_path / "bin" / "tfcompress"
        script.parent.mkdir()
        script.write_text(ENTRY_SCRIPT, encoding="utf-8")
        command = [sys.executable, "-X", "importtime", str(script), *argv]
    else:
        command = [sys.executable, "-X", "importtime", "-m", "tfcompress", *argv]
    result, seconds = _timed(command, tmp_path)
    assert result.returncode == code, result.stderr[-2000:]
    imported = _imported_modules(result.stderr)
    assert "tfcompress" in imported
    assert not imported & {"tensorflow", "keras", "numpy", "matplotlib"}
    assert seconds < 5.0  # about 0.1 s here; generous for a loaded 2-core machine
    if argv == ["--version"]:
        assert result.stdout == f"tfcompress {tfc.__version__}\n"
    if code == 2:
        assert "usage: tfcompress compress" in result.stderr


def test_the_library_import_registers_the_layers() -> None:
    # pytest imported tfcompress as a library: everything is imported, so saved models load afterwards
    assert not _starting_command_line()
    assert keras.saving.get_registered_object("tfcompress>SVDDense") is tfc.SVDDense
    assert set(tfc.__all__) == {*tfc._PUBLIC, "__version__"}
    assert all(getattr(tfc, name) is not None for name in tfc.__all__)


@pytest.mark.parametrize(
    ("argv0", "command_line"),
    [("-m", True), ("/venv/bin/tfcompress", True), ("C:\\venv\\Scripts\\tfcompress.exe", False), ("-c", False)],
)
def test_only_the_command_line_start_imports_lazily(
    argv0: str, command_line: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    expected = command_line or (os.sep == "\\" and argv0.endswith(".exe"))
    assert _starting_command_line() is expected


def test_tensorflow_start_up_lines_are_recognised() -> None:
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796474114.375227    4781 port.cc:153] oneDNN custom operations are on. You may see ...",
        "I0000 00:00:1796474114.409520    4781 cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the flags.",
    ]
    assert all(is_startup_noise(line) for line in lines)
    assert not is_startup_noise("Traceback (most recent call last):")
    assert not is_startup_noise("tfcompress: error: cannot load 'm.keras'")


@pytest.mark.slow
def test_a_real_command_prints_no_tensorflow_lines(tmp_path: pathlib.Path) -> None:
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(8, 3, name="conv"), keras.layers.Flatten()])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.zeros((4, 6, 6, 3)), np.zeros((4, 128)), verbose=0)
    model.save(tmp_path / "m.keras")
    result, _ = _timed([sys.executable, "-m", "tfcompress", "inspect", "m.keras"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "tfcompress: loading m.keras ...",
        *[line for line in result.stderr.splitlines() if line.startswith("tfcompress: loaded model")],
    ]
    assert "conv" in result.stdout
    verbose, _ = _timed([sys.executable, "-m", "tfcompress", "inspect", "m.keras", "--verbose"], tmp_path)
    assert verbose.returncode == 0
    assert any(is_startup_noise(line) for line in verbose.stderr.splitlines())  # there were lines to hide


def test_progress_in_a_log_is_one_plain_line_per_update() -> None:
    out = io.StringIO()
    bar = Progress(3, verbose=1, stream=out)
    for done in (1, 2, 3):
        bar.update(done, values=[("score", done / 10)])
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[:2] for line in lines] == [
        ["eval 1/3", "score 0.1000"],
        ["eval 2/3", "score 0.2000"],
        ["eval 3/3", "score 0.3000"],
    ]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue() and "\b" not in out.getvalue()
    silent = io.StringIO()
    Progress(3, verbose=0, stream=silent).update(1, values=[("score", 0.5)])
    assert silent.getvalue() == ""


def test_compress_model_progress_is_plain_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(16, 3, name="conv"), keras.layers.GlobalAveragePooling2D()]
    )
    params = tfc.SpatialSvdParameters(
        tfc.Mode.auto,
        tfc.SpatialSvdParameters.AutoModeParams(tfc.GreedySelectionParameters(0.5, num_comp_ratio_candidates=4)),
    )
    tfc.compress_model(model, lambda m, it: 1.0, None, "spatial_svd", "mac", params, verbose=1)
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out
    assert [line for line in out.splitlines() if line.startswith("eval ")][-1].startswith("eval 3/3")
