"""The registry demo step runs end to end and reports each step."""

import importlib.util
from pathlib import Path

DEMO = Path(__file__).parent.parent / "examples" / "demo_registry.py"


def test_demo_registry_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("demo_registry", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.run(tmp_path / "work", demo._tiny_adapter(tmp_path / "adapter"))
    out = capsys.readouterr().out
    assert "push      demo/adapter@1" in out and "unchanged: same digest" in out
    assert "tag       demo/adapter:demo → demo/adapter@1" in out
    assert "same digest, every byte re-hashed" in out and "verify    ok" in out
    assert (tmp_path / "work" / "pulled-peft" / "adapter_model.safetensors").exists()
