"""The import contracts: docs/architecture.md shows the ones pyproject.toml declares, they cover
every package, today's code keeps them, and a bad import breaks them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]


def _layers_contract() -> dict:
    (layers,) = [c for c in _config()["contracts"] if c["type"] == "layers"]
    return layers


def _page_section() -> str:
    """The page's "Import rules" section, up to the next heading."""
    text = PAGE.read_text(encoding="utf-8")
    match = re.search(r"^## Import rules\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{PAGE.name} has no '## Import rules' section"
    return match.group(1)


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "300"}  # one contract a line: rich wraps at 80 when not on a terminal
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def _broken(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"^(.+?) BROKEN$", result.stdout, re.M))


def test_the_page_shows_the_layers_of_the_contract():
    (block,) = re.findall(r"```text\n(.*?)```", _page_section(), re.S)
    shown = [" ".join(line.split()) for line in block.splitlines() if line.strip()]
    assert shown == _layers_contract()["layers"], "docs/architecture.md's layers differ from pyproject.toml's"


def test_the_page_lists_every_other_contract_and_no_other():
    declared = {c["name"] for c in _config()["contracts"] if c["type"] != "layers"}
    listed = set(re.findall(r"^- (.+)$", _page_section(), re.M))
    assert listed == declared, (
        f"only on the page: {sorted(listed - declared)}; only in pyproject.toml: {sorted(declared - listed)}"
    )


def test_every_package_of_the_project_has_a_layer():
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests"}
    in_layers = {name.strip() for line in _layers_contract()["layers"] for name in line.split("|")}
    assert set(_config()["root_packages"]) == on_disk, "root_packages must name every package of the repository"
    assert in_layers == on_disk, f"packages without a layer: {sorted(on_disk - in_layers)}"


def test_todays_code_keeps_every_contract():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not _broken(result) and f"{len(_config()['contracts'])} kept, 0 broken" in result.stdout


# One bad import per contract, each crossing that contract and no other: (file, code, contract).
BAD_IMPORTS = [
    ("partitioning/bad.py", "from task import node_config\n", "Data flows one way"),  # upwards
    ("server_app/bad.py", "from client_app import app\n", "Data flows one way"),  # between siblings
    ("partitioning/bad.py", "import torch\n", "partitioning knows nothing"),
    ("client_app/bad.py", "import run_folder\n", "A node never touches"),  # the layers allow it
    ("report/bad.py", "import flwr\n", "report and autoencoder"),
    ("task/node_config.py", "import numpy\n", "task.node_config"),
]


def test_every_contract_is_shown_to_catch_a_bad_import():
    caught = {contract for *_, contract in BAD_IMPORTS}
    for contract in _config()["contracts"]:
        assert any(contract["name"].startswith(c) for c in caught), f"no case in BAD_IMPORTS for {contract['name']}"


@pytest.mark.parametrize("path, code, contract", BAD_IMPORTS)
def test_a_bad_import_breaks_the_contract_it_crosses(tmp_path, path, code, contract):
    for package in _config()["root_packages"]:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("wheelhouse", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / path).open("a", encoding="utf-8") as f:
        f.write(code)
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    (broken,) = _broken(result)
    assert broken.startswith(contract)
    assert path.removesuffix(".py").replace("/", ".") in result.stdout  # the message names the culprit
