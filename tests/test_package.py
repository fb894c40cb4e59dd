"""What ships with the package: license, type marker, one version, changelog, design document, honest install hints."""

from __future__ import annotations

import configparser
import pathlib
import re

import tfcompress

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def test_license_is_the_apache_2_text_named_in_setup_cfg() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert _setup_cfg()["metadata"]["license"] == "Apache-2.0"


def test_py_typed_ships_as_package_data() -> None:
    assert (ROOT / "tfcompress" / "py.typed").is_file()
    assert "py.typed" in _setup_cfg()["options.package_data"]["tfcompress"]


def test_the_version_is_written_once() -> None:
    assert _setup_cfg()["metadata"]["version"].strip() == "attr: tfcompress._version.__version__"
    from tfcompress._version import __version__

    assert tfcompress.__version__ == __version__
    sources = [p for p in (ROOT / "tfcompress").rglob("*.py") if re.search(r"^__version__ = ", p.read_text(), re.M)]
    assert [p.name for p in sources] == ["_version.py"]
    assert f"## {__version__}" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


def test_notebook_runner_is_in_the_test_extra() -> None:
    extra = _setup_cfg()["options.extras_require"]["test"]
    for package in ("nbformat", "nbclient", "ipykernel", "pytest", "hypothesis", "scikit-learn", "matplotlib"):
        assert package in extra, package


def test_the_readme_points_at_the_design_document_in_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "DESIGN.md" not in readme
    assert "docs/design.md" in readme and (ROOT / "docs" / "design.md").is_file()
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)  # code (``items[0](x)``) is not a link
    for link in re.findall(r"\]\(([^)#:]+)\)", prose):  # every relative link of the README exists
        assert (ROOT / link).exists(), link


def test_install_hints_say_how_to_install_an_extra_from_the_checkout() -> None:
    # tfcompress is not published on a package index: "pip install tfcompress[...]" would fail there
    places = [*(ROOT / "tfcompress").rglob("*.py"), ROOT / "README.md", *(ROOT / "notebooks").glob("*.ipynb")]
    offenders = [str(p.relative_to(ROOT)) for p in places if re.search(r"install \\?\"?tfcompress\[", p.read_text())]
    assert offenders == []
