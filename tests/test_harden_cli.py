"""The command line never loses work (issue 19): output paths checked before the first evaluation, a run's
outputs moved into place together, leftovers of killed runs cleaned, hostile or broken .keras files refused."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time
import zipfile

import keras
import pytest

from tfcompress.cli import main

L = keras.layers


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("harden_cli")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
            L.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
            L.GlobalAveragePooling2D(),
            L.Dense(4, name="fc"),
        ]
    )
    model.save(folder / "model.keras")
    (folder / "counting_eval.py").write_text(
        "import numpy as np\n\n"
        "def score(model, data):\n"
        f"    with open({str(folder / 'calls.txt')!r}, 'a') as handle:\n"
        "        handle.write('x')\n"
        "    return float(-np.mean(np.asarray(model(np.ones((2, 8, 8, 3), 'float32'))) ** 2))\n",
        encoding="utf-8",
    )
    return folder


def _eval_calls(saved: pathlib.Path) -> int:
    calls = saved / "calls.txt"
    return len(calls.read_text()) if calls.exists() else 0


def _compress(saved: pathlib.Path, out: pathlib.Path | str, *extra: str) -> int:
    argv = ["compress", str(saved / "model.keras"), "-o", str(out), "--eval", f"{saved / 'counting_eval.py'}:score"]
    return main([*argv, "--candidates", "3", "-q", *extra])


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tfcompress: error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def unwritable_folder(tmp_path: pathlib.Path) -> str:
    """A folder where no file can be created: chmod 555, or for root (whom modes do not stop) a sysfs folder."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        yield str(folder)
        folder.chmod(0o755)
        return
    for candidate in ("/sys/kernel", "/sys", "/proc/self"):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            if os.path.isdir(candidate):
                yield candidate
                return
        else:
            os.close(fd)
            os.unlink(probe)
    pytest.skip("no folder that root cannot write to")


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ---------------------------------------------------------------- 2. writability before the first evaluation


def test_an_unwritable_output_folder_fails_before_any_evaluation(saved, unwritable_folder, capsys) -> None:
    before = _eval_calls(saved)
    assert _compress(saved, unwritable_folder) == 1
    assert "cannot write in the folder" in _error(capsys)
    assert _eval_calls(saved) == before


def test_an_unwritable_cache_fails_before_any_evaluation(saved, unwritable_folder, tmp_path, capsys) -> None:
    before = _eval_calls(saved)
    assert _compress(saved, tmp_path / "out", "--cache", os.path.join(unwritable_folder, "scores.json")) == 1
    assert "--cache" in _error(capsys)
    assert _eval_calls(saved) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("cache", "message"), [("", "the path is empty"), (".", "is a folder")])
def test_an_empty_or_folder_cache_path_is_one_line(saved, tmp_path, monkeypatch, capsys, cache, message) -> None:
    monkeypatch.chdir(tmp_path)
    before = _eval_calls(saved)
    assert _compress(saved, tmp_path / "out", "--cache", cache) == 1
    assert message in _error(capsys)
    assert _eval_calls(saved) == before


# ---------------------------------------------------------------- 3. the output folder as a whole


def _contents(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_interrupted_run_leaves_the_previous_outputs_whole(saved, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    assert _compress(saved, out, "--target", "0.8") == 0
    first = _contents(out)
    assert set(first) == {"compressed.keras", "stats.json", "report.html"}

    def interrupted(*args, **kwargs):  # Ctrl-C while the report is written: model and stats are already done
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["tfcompress.report"], "report", interrupted)
    assert _compress(saved, out, "--target", "0.5") == 130
    assert _contents(out) == first  # not a new model beside the old report


def test_a_run_without_report_removes_the_old_report(saved, tmp_path) -> None:
    out = tmp_path / "out"
    assert _compress(saved, out) == 0
    (out / "notes.txt").write_text("the user's own file")
    assert _compress(saved, out, "--no-report", "--target", "0.7") == 0
    assert sorted(p.name for p in out.iterdir()) == ["compressed.keras", "notes.txt", "stats.json"]


def test_leftovers_of_killed_runs_are_cleaned_and_live_ones_kept(saved, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    old = time.time() - 7200
    leftovers = [
        out / f".compressed.keras.tmp-{dead}.keras",
        out / f".stats.json.tmp-{dead}-k2j4h5g1.tmp",
        out / ".report.html.k2j4h5g1.tmp",  # an older version's name (no PID), two hours old
    ]
    staging = out / f".tfcompress-run-{dead}"
    staging.mkdir()
    (staging / "compressed.keras").write_bytes(b"half")
    kept = [
        out / f".stats.json.tmp-{os.getpid()}-k2j4h5g1.tmp",  # a live process's
        out / ".unrelated.json.k2j4h5g1.tmp",  # not a name of ours
        out / f".notes.txt.tmp-{dead}-k2j4h5g1.tmp",
    ]
    for path in leftovers + kept:
        path.write_bytes(b"x")
        os.utime(path, (old, old))
    assert _compress(saved, out) == 0
    assert not [p for p in leftovers if p.exists()]
    assert not staging.exists()
    assert all(p.exists() for p in kept)
    assert not [p for p in out.iterdir() if p.name.startswith(".tfcompress-run")]


def test_run_outputs_commit_marks_the_folder_while_it_moves(tmp_path, monkeypatch) -> None:
    from tfcompress import outputs

    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.json").write_text("old")
    run = outputs.RunOutputs(out, ["compressed.keras", "stats.json"])
    run.prepare()
    pathlib.Path(run.path("compressed.keras")).write_text("new model")
    pathlib.Path(run.path("stats.json")).write_text("new stats")
    real_replace = os.replace
    moved = []

    def killed_after_one(src, dst):
        if moved:
            raise KeyboardInterrupt  # killed between two renames
        moved.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        run.commit()
    marker = out / outputs.INCOMPLETE_MARKER
    staging = out / f".tfcompress-run-{os.getpid()}"
    assert marker.exists() and "may mix two runs" in marker.read_text() and staging.name in marker.read_text()
    monkeypatch.undo()
    run.abort()
    assert (out / "compressed.keras").read_text() == "new model"
    assert (staging / "stats.json").read_text() == "new stats"  # not lost: the marker says where it is


# ---------------------------------------------------------------- 6. hostile and broken .keras files


def _bomb(path: pathlib.Path, size: int) -> None:
    """A valid-looking .keras whose weights member inflates to ``size`` bytes of zeros from a few hundred KB."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", "{}")
        archive.writestr("config.json", "{}")
        with archive.open("model.weights.h5", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                member.write(chunk)


def test_a_zip_bomb_is_refused_before_loading(tmp_path, capsys) -> None:
    bomb = tmp_path / "bomb.keras"
    _bomb(bomb, 300 << 20)
    assert bomb.stat().st_size < 2 << 20
    start = time.perf_counter()
    assert main(["inspect", str(bomb)]) == 1
    line = _error(capsys)
    assert "refused before loading" in line and "model.weights.h5" in line and "TFCOMPRESS_MAX_MODEL_BYTES" in line
    assert time.perf_counter() - start < 5.0


def test_the_size_limit_is_overridable(saved, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TFCOMPRESS_MAX_MODEL_BYTES", "1k")
    assert main(["inspect", str(saved / "model.keras")]) == 1
    line = _error(capsys)
    assert "above the limit of 1.0 KiB" in line and "TFCOMPRESS_MAX_MODEL_BYTES" in line
    monkeypatch.setenv("TFCOMPRESS_MAX_MODEL_BYTES", "1G")
    assert main(["inspect", str(saved / "model.keras")]) == 0


def test_truncated_and_non_zip_models_say_what_is_wrong(saved, tmp_path, capsys) -> None:
    whole = (saved / "model.keras").read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(whole[: len(whole) // 2])
    assert main(["inspect", str(truncated)]) == 1
    line = _error(capsys)
    assert "truncated or damaged" in line and "not found" not in line.lower()
    h5 = tmp_path / "legacy.keras"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert main(["inspect", str(h5)]) == 1
    assert "HDF5 file" in _error(capsys)
    text = tmp_path / "text.keras"
    text.write_text("hello")
    assert main(["compress", str(text), "-o", str(tmp_path / "o")]) == 1
    assert "not even a zip archive" in _error(capsys)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- no pickle, no code from files


def test_no_pickle_and_no_code_is_loaded_from_files(saved, tmp_path, capsys) -> None:
    """--data is read without pickles, a .keras file in safe mode (no lambda bytecode), and everything we write is
    JSON or a .keras file."""
    import numpy as np

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    np.savez(tmp_path / "evil.npz", x=np.array([Payload()], dtype=object))
    assert _compress(saved, tmp_path / "out", "--data", str(tmp_path / "evil.npz")) == 1
    assert "no pickles" in _error(capsys)
    assert not marker.exists()

    keras.utils.set_random_seed(0)
    lambda_model = keras.Sequential([keras.Input((4,)), L.Lambda(lambda t: t * 2.0), L.Dense(2)])
    lambda_model.save(tmp_path / "lambda.keras")
    assert main(["inspect", str(tmp_path / "lambda.keras")]) == 1
    assert "safe_mode" in _error(capsys)

    out = tmp_path / "good"
    assert _compress(saved, out, "--cache", str(tmp_path / "scores.json")) == 0
    import json

    for path in (out / "stats.json", tmp_path / "scores.json"):
        json.loads(path.read_text(encoding="utf-8"))  # plain JSON, nothing else
    assert zipfile.is_zipfile(out / "compressed.keras")


def test_the_demo_checks_its_output_folder_before_training(unwritable_folder, capsys) -> None:
    start = time.perf_counter()
    assert main(["demo", "-o", unwritable_folder, "--epochs", "1", "-q"]) == 1
    assert "cannot write in the folder" in _error(capsys)
    assert time.perf_counter() - start < 10.0  # no training happened first
