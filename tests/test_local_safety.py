"""Local safety: output directories are never mixed, read-only commands work on a full disk,
and hostile local files give one-line errors, never tracebacks."""

import json
import resource
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import adapterhub
from adapterhub.cli import cli
from adapterhub.errors import OutputExistsError
from adapterhub.registry import Registry
from adapterhub.testing import TinyMLP


@pytest.fixture
def registry(tmp_path):
    model = TinyMLP.build()
    adapterhub.attach(model, "lora", r=2, target_modules=["lin0", "lin1"],
                      init_lora_weights=False)
    with Registry(tmp_path / "reg.db") as reg:
        reg.push(adapterhub.extract(model), "team/bot", progress=False)
        yield reg


def one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_pull_and_export_never_mix_two_adapters(registry, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter.json").write_text("{\"an\": \"older adapter\"}")
    db = ["--db", str(tmp_path / "reg.db")]
    for args in (["pull", "team/bot", "--out", out, "--format", "peft"],
                 ["export", "team/bot", "--out", out]):
        result = CliRunner().invoke(cli, [str(a) for a in [*args, *db]])
        one_line_error(result, "already exists and is not empty", "--force")
        assert sorted(p.name for p in out.iterdir()) == ["adapter.json"]  # untouched
    with pytest.raises(OutputExistsError):
        registry.write_files("team/bot", out, format="peft")

    result = CliRunner().invoke(cli, [str(a) for a in ["pull", "team/bot", "--out", out,
                                                        "--format", "peft", "--force", *db]])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json",
                                                    "adapter_model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left
    registry.write_files("team/bot", out, force=True)  # native replaces peft as a whole
    assert sorted(p.name for p in out.iterdir()) == ["adapter.json", "adapter.safetensors"]


def _no_growth() -> None:
    """In the child: no file may grow (what a full disk does to writes)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_read_only_commands_work_on_a_full_disk(registry, tmp_path):
    db = str(tmp_path / "reg.db")
    registry.close()
    for leftover in ("reg.db-wal", "reg.db-shm"):  # closed cleanly: SQLite removed them
        assert not (tmp_path / leftover).exists() or \
            (tmp_path / leftover).stat().st_size == 0

    def run(*args):
        return subprocess.run([sys.executable, "-m", "adapterhub.cli", *args, "--db", db],
                              preexec_fn=_no_growth, capture_output=True, text=True)

    listed = run("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [v["ref"] for v in json.loads(listed.stdout)] == ["team/bot@1"]
    shown = run("show", "team/bot@1")
    assert shown.returncode == 0 and "team/bot@1" in shown.stdout, shown.stderr
    assert run("log", "team/bot").returncode == 0
    tagged = run("tag", "team/bot@1", "prod")
    assert tagged.returncode == 1 and "Traceback" not in tagged.stderr
    assert len(tagged.stderr.strip().splitlines()) == 1 and "readonly" in tagged.stderr


def test_deeply_nested_json_files_are_one_line_errors(tmp_path):
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    save_file({"base_model.model.lin0.lora_A.weight": torch.zeros(2, 2)},
              str(peft / "adapter_model.safetensors"))
    result = CliRunner().invoke(cli, ["import", str(peft), "--format", "peft", "--out",
                                      str(tmp_path / "native")])
    one_line_error(result, "nested too deeply")
    (peft / "adapter_config.json").write_text('{"peft_type": "LORA", "r": NaN}')
    result = CliRunner().invoke(cli, ["check", str(peft), "--target", "vllm"])
    one_line_error(result, "NaN is not valid JSON")


def test_train_refuses_a_pickle_only_base(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "bert"}')
    (base / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "hi", "label": 0}\n{"text": "ho", "label": 1}\n')
    result = CliRunner().invoke(cli, ["train", "--method", "lora", "--base", str(base),
                                      "--data", str(data), "--task", "classification",
                                      "--out", str(tmp_path / "out")])
    one_line_error(result, "pickle", "safetensors")
