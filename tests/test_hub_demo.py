"""The hub demo step runs end to end and reports each step."""

import importlib.util
from pathlib import Path

DEMO = Path(__file__).parent.parent / "examples" / "demo_hub.py"


def test_demo_hub_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("demo_hub", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.run(tmp_path / "work", demo._tiny_adapter(tmp_path / "adapter"))
    out = capsys.readouterr().out
    assert "push      demo/adapter@1 to the hub" in out
    assert "pull      into a second registry: demo/adapter@1, same digest" in out
    assert "adapter_config.json" in out and "without a token → HTTP 401" in out
    assert out.rstrip().endswith("hub stopped")
