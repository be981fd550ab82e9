"""The docs build strictly and keep up with the code (CLI reference, every hook)."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

from adapterhub import hookspecs
from adapterhub.cli._reference import render

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
         if name.startswith("adapterhub_")]


def test_mkdocs_build_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                             "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "plugins" / "index.html").exists()


def test_cli_reference_is_current():
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == render(), \
        "docs/cli.md is stale: run python -m adapterhub.cli._reference > docs/cli.md"


def test_every_hook_is_documented_with_its_signature():
    page = (ROOT / "docs" / "plugins.md").read_text()
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### {name}({params})" in page, name


def test_every_hook_has_a_test():
    tests = (ROOT / "tests" / "test_plugins.py").read_text()
    for name in HOOKS:
        assert re.search(rf"def test_hook_{name}\b", tests), name
