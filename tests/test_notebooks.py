"""The notebooks in notebooks/ run top to bottom, and are committed without outputs."""

from __future__ import annotations

import json
import pathlib
import sys

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _ids(paths: list[pathlib.Path]) -> list[str]:
    return [p.stem for p in paths]


def test_the_notebooks_are_there() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_greedy_selection.ipynb",
        "03_channel_pruning.ipynb",
        "04_transformers.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_has_no_outputs(path: pathlib.Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "a notebook without code cells"
    for index, cell in enumerate(code):
        assert cell.outputs == [], f"code cell {index} of {path.name} has stored outputs; clear them"
        assert cell.execution_count is None, f"code cell {index} of {path.name} has an execution count"
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"


def _python3_kernel_for_this_interpreter(folder: pathlib.Path) -> pathlib.Path:
    """A 'python3' kernelspec that starts ipykernel with the interpreter running the tests (found via JUPYTER_PATH)."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    kernel = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tfcompress tests)",
        "language": "python",
    }
    (spec / "kernel.json").write_text(json.dumps(kernel), encoding="utf-8")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(
    path: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(_python3_kernel_for_this_interpreter(tmp_path / "jupyter")))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # connection files stay in tmp_path
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the notebook's tempfile.mkdtemp() lands here
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()

    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert list(cwd.iterdir()) == [], "the notebook wrote into its working folder; it must use a temp folder"
    leftovers = [p.name for p in temp.iterdir() if p.name.startswith("tfcompress_notebook_")]
    assert leftovers == [], "the notebook's last cell must delete its temp folder"
