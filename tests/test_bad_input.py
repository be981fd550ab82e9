"""Bad input: each a one-line error naming the problem and the next step, exit code 1."""

import json
import struct

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import adapterhub
from adapterhub.cli import cli
from adapterhub.testing import TinyMLP


@pytest.fixture
def package_dir(tmp_path):
    model = TinyMLP.build()
    adapterhub.attach(model, "lora", r=2, target_modules=["lin0", "lin1"],
                      init_lora_weights=False)
    return adapterhub.extract(model).save(tmp_path / "pkg")


def base_dir(tmp_path, name, shapes):
    path = tmp_path / name
    path.mkdir()
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path / "model.safetensors"))
    return path


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    return result


def assert_one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_corrupt_safetensors_header(package_dir):
    path = package_dir / "adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", 10**9)  # header length past the end of the file
    path.write_bytes(bytes(data))
    result = invoke("show", package_dir)
    assert_one_line_error(result, "adapter.safetensors is not a valid safetensors file",
                          "header length", "fetch it again")


def test_garbled_header_json(package_dir):
    path = package_dir / "adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe{{"
    path.write_bytes(bytes(data))
    assert_one_line_error(invoke("show", package_dir), "not valid JSON")


def test_truncated_tensor_data(package_dir):
    path = package_dir / "adapter.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    assert_one_line_error(invoke("show", package_dir), "runs past the end of the file")


def test_tampered_tensor_fails_its_digest(package_dir):
    path = package_dir / "adapter.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_one_line_error(invoke("show", package_dir), "does not match its digest",
                          "corrupt")


def test_adapter_for_another_base(package_dir, tmp_path):
    right = base_dir(tmp_path, "right", {"lin0.weight": (32, 16), "lin1.weight": (16, 32)})
    wrong = base_dir(tmp_path, "wrong", {"lin0.weight": (64, 16), "lin1.weight": (16, 64)})
    ok = invoke("check", package_dir, "--base", right)
    assert ok.exit_code == 0 and "ok: 2 modules fit" in ok.output
    result = invoke("check", package_dir, "--base", wrong)
    assert_one_line_error(result, "lin0.weight has shape [64, 16]", "expects [32, 16]",
                          "trained on this base model")
    report = json.loads(invoke("check", package_dir, "--base", wrong, "--json").output)
    assert report["ok"] is False and len(report["problems"]) == 2


def test_base_missing_a_module(package_dir, tmp_path):
    partial = base_dir(tmp_path, "partial", {"lin0.weight": (32, 16)})
    assert_one_line_error(invoke("check", package_dir, "--base", partial),
                          "no weight for module 'lin1'")


def test_unknown_method(package_dir, tmp_path):
    manifest = json.loads((package_dir / "adapter.json").read_text())
    manifest["method"]["name"] = "nosuch"
    (package_dir / "adapter.json").write_text(json.dumps(manifest))
    result = invoke("export", package_dir, "--format", "peft", "--out", tmp_path / "out")
    assert_one_line_error(result, "unknown method 'nosuch'", "installed: ", "lora",
                          "adapterhub plugins")
    assert not (tmp_path / "out").exists()


def test_pickle_peft_adapter_is_refused(tmp_path):
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    (peft_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (peft_dir / "adapter_model.bin").write_bytes(b"\x80\x04pickle-payload")
    result = invoke("import", peft_dir, "--format", "peft", "--out", tmp_path / "out")
    assert_one_line_error(result, "adapter_model.bin, a pickle file", "never unpickles",
                          "safe_serialization=True")
    assert not (tmp_path / "out").exists()


def test_pickle_base_checkpoint_is_refused(package_dir, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "pytorch_model.bin").write_bytes(b"\x80\x04pickle-payload")
    assert_one_line_error(invoke("check", package_dir, "--base", base),
                          "only pickle weights", "safe_serialization=True")


def test_not_an_adapter(tmp_path):
    assert_one_line_error(invoke("show", tmp_path), "neither an adapterhub package")
    assert_one_line_error(invoke("show", tmp_path / "missing"),
                          "neither an adapter directory nor a registry ref", "ns/name@3")


def test_debug_shows_the_traceback(tmp_path):
    result = invoke("show", tmp_path / "missing", env={"ADAPTERHUB_DEBUG": "1"})
    assert isinstance(result.exception, adapterhub.AdapterHubError)
