"""Every Python block of the README runs, and its commands match what CI runs."""

from __future__ import annotations

import pathlib
import re
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_block_runs(index: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' temp folders land in tmp_path
    monkeypatch.chdir(tmp_path)
    code = _blocks("python")[index]
    namespace: dict = {"__name__": f"readme_block_{index}"}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)  # our own README, run as a test


def test_readme_commands_are_the_demo_the_fast_tier_and_the_full_suite_and_ci_runs_both_tiers() -> None:
    commands = [block.strip() for block in _blocks("bash")]
    assert len(commands) == 3, commands
    demo, fast, full = commands
    assert demo.endswith("tfcompress demo") and "pip install -e" in demo
    assert 'pip install -e ".[test]"' in fast and fast.endswith('pytest -m "not slow"')
    assert full == "pytest"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install --quiet -e ".[test]"' in ci
    tiers = re.findall(r"^run_tier \w+ (pytest .*?) \|\|", ci, flags=re.M)
    assert tiers == ['pytest -m "not slow"', "pytest -m slow"], "CI runs the fast tier, then the slow one"


def test_readme_demo_command_installs_what_the_demo_imports() -> None:
    """The demo needs scikit-learn (its data) and matplotlib (its report): the README's extra must bring both."""
    import configparser

    demo = _blocks("bash")[0]
    extra = re.search(r'pip install -e "\.\[(\w+)\]"', demo)
    assert extra, demo
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    packages = config["options.extras_require"][extra.group(1)]
    assert "scikit-learn" in packages and "matplotlib" in packages, packages
