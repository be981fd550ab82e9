"""The demo's registry and hub steps run end to end on a small adapter and report each step."""

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name):
    sys.path.insert(0, str(EXAMPLES))  # the steps import each other, as demo.py runs them
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("step, expected", [
    ("demo_registry", ["push      demo/adapter@1", "unchanged: same digest",
                       "tag       demo/adapter:demo → demo/adapter@1"]),
    ("demo_hub", ["push      demo/adapter@1 to the hub",
                  "pull      into a second registry: demo/adapter@1, same digest"]),
])
def test_demo_step_runs(step, expected, tmp_path, capsys):
    adapter = load("demo_registry").tiny_adapter(tmp_path / "adapter")
    load(step).run(tmp_path / "work", adapter)
    out = capsys.readouterr().out
    for line in expected:
        assert line in out
