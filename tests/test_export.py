"""Exports for serving engines: PEFT and vLLM layouts, the Hugging Face cache tree (loaded
offline by repo id in a fresh process), and the --target lint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from adapterhub import AdapterPackage, ExportError
from adapterhub.cli import cli
from adapterhub.engines.merging import merge_adapters
from adapterhub.io.formats.peft import read_peft
from adapterhub.io.formats.vllm import vllm_layout


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=64))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved base model, two PEFT LoRA adapters on it, and their TIES merge."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("export")
    tiny_llama().save_pretrained(root / "base")
    packages = []
    for seed, targets in ((1, ["q_proj", "v_proj", "down_proj"]), (2, ["q_proj", "o_proj"])):
        torch.manual_seed(seed)
        model = get_peft_model(tiny_llama(), LoraConfig(
            r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
        model.save_pretrained(root / f"lora{seed}")
        packages.append(read_peft(root / f"lora{seed}"))
    merged = merge_adapters(packages, "ties", weights=[1.0, 0.7], density=0.5)
    merged.save(root / "merged")
    return {"root": root, "packages": packages, "merged": merged}


def expected_logits(setup, package: AdapterPackage, ids: torch.Tensor) -> torch.Tensor:
    """The base model with W + ΔW folded in by the package's own merge kernel."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(setup["root"] / "base")
    method, config = package.method, package.config
    with torch.no_grad():
        for module, group in method.group_tensors(package.tensors).items():
            layer = model.get_submodule(module)
            layer.weight.copy_(method.merge(layer.weight, module, group, config))
        return model(ids).logits


IDS = torch.tensor([[1, 5, 9, 33, 2, 60]])


@pytest.mark.parametrize("fmt", ["peft", "vllm"])
def test_merged_adapter_loads_in_peft(setup, tmp_path, fmt):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    result = CliRunner().invoke(cli, ["export", str(setup["root"] / "merged"), "--format", fmt,
                                      "--out", str(tmp_path / fmt)])
    assert result.exit_code == 0, result.output
    base = LlamaForCausalLM.from_pretrained(setup["root"] / "base")
    model = PeftModel.from_pretrained(base, tmp_path / fmt).eval()
    with torch.no_grad():
        got = model(IDS).logits
    torch.testing.assert_close(got, expected_logits(setup, setup["merged"], IDS), atol=1e-5,
                               rtol=1e-5)


def test_vllm_layout_folds_scaling_and_pads_ranks(setup):
    one = setup["packages"][0]
    tensors = {k: v for k, v in one.tensors.items() if "down_proj" not in k}
    gen = torch.Generator().manual_seed(3)
    tensors["model.layers.0.mlp.down_proj.lora_A"] = torch.randn(2, 64, generator=gen)
    tensors["model.layers.0.mlp.down_proj.lora_B"] = torch.randn(32, 2, generator=gen)
    package = AdapterPackage.build("lora", {
        "r": 4, "lora_alpha": 8, "use_rslora": True, "rank_pattern": {"down_proj": 2},
        "alpha_pattern": {"down_proj": 3}}, tensors)
    config, exported = vllm_layout(package)
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 4, False)
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    assert config["peft_type"] == "LORA" and config["modules_to_save"] is None
    down = "base_model.model.model.layers.0.mlp.down_proj"
    assert exported[f"{down}.lora_A.weight"].shape == (4, 64)  # zero-padded from rank 2
    a, b = tensors["model.layers.0.mlp.down_proj.lora_A"], \
        tensors["model.layers.0.mlp.down_proj.lora_B"]
    torch.testing.assert_close(exported[f"{down}.lora_B.weight"] @
                               exported[f"{down}.lora_A.weight"],
                               3 / 2 ** 0.5 * (b @ a))  # alpha 3 / sqrt(rank 2), in B
    q = "base_model.model.model.layers.1.self_attn.q_proj"
    torch.testing.assert_close(exported[f"{q}.lora_B.weight"],
                               tensors["model.layers.1.self_attn.q_proj.lora_B"] * 8 / 2)
    assert torch.equal(exported[f"{q}.lora_A.weight"],
                       tensors["model.layers.1.self_attn.q_proj.lora_A"])


def test_vllm_refuses_ranks_above_512():
    package = AdapterPackage.build("lora", {"r": 640}, {
        "layers.0.q.lora_A": torch.zeros(640, 8), "layers.0.q.lora_B": torch.zeros(8, 640)})
    with pytest.raises(ExportError, match="rank 640 is above the largest rank vLLM serves"):
        vllm_layout(package)


def test_vllm_refuses_embeddings(tmp_path):
    package = AdapterPackage.build("lora", {"r": 2}, {
        "model.embed_tokens.lora_embedding_A": torch.randn(2, 64),
        "model.embed_tokens.lora_embedding_B": torch.randn(32, 2)})
    with pytest.raises(ExportError, match="vLLM does not load LoRA on embeddings"):
        vllm_layout(package)
    package.save(tmp_path / "emb")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "emb"), "--format", "vllm",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "adapterhub apply" in result.output
    assert not (tmp_path / "out").exists()


def test_hf_cache_loads_offline_by_repo_id(setup, tmp_path):
    cache = tmp_path / "hub"
    runner = CliRunner()
    for revision in ("main", "v1"):
        result = runner.invoke(cli, ["export", str(setup["root"] / "merged"), "--layout",
                                     "hf-cache", str(cache), "--repo-id", "acme/merged",
                                     "--revision", revision])
        assert result.exit_code == 0, result.output
    repo = cache / "models--acme--merged"
    commit = (repo / "refs" / "main").read_bytes().decode()
    assert len(commit) == 40 and (repo / "refs" / "v1").read_text() == commit  # no newline
    snapshot = repo / "snapshots" / commit
    assert sorted(p.name for p in snapshot.iterdir()) == ["adapter_config.json",
                                                         "adapter_model.safetensors"]
    weights = snapshot / "adapter_model.safetensors"
    import hashlib

    assert os.readlink(weights) == "../../blobs/" + hashlib.sha256(
        weights.read_bytes()).hexdigest()
    from huggingface_hub import scan_cache_dir

    scan = scan_cache_dir(cache)
    assert not scan.warnings
    (info,) = scan.repos
    assert info.repo_id == "acme/merged" and {r.commit_hash for r in info.revisions} == {commit}
    script = (
        "import sys, torch\n"
        "from peft import PeftModel\n"
        "from transformers import LlamaForCausalLM\n"
        "base = LlamaForCausalLM.from_pretrained(sys.argv[1])\n"
        "model = PeftModel.from_pretrained(base, 'acme/merged').eval()\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(torch.tensor({IDS.tolist()})).logits, sys.argv[2])\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "HF_HOME": str(tmp_path / "hf-home")}
    subprocess.run([sys.executable, "-c", script, str(setup["root"] / "base"),
                    str(tmp_path / "logits.pt")], env=env, check=True, capture_output=True)
    got = torch.load(tmp_path / "logits.pt", weights_only=True)
    torch.testing.assert_close(got, expected_logits(setup, setup["merged"], IDS), atol=1e-5,
                               rtol=1e-5)


# -- check --target ---------------------------------------------------------------------------


def write_peft_dir(directory: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, directory / "adapter_model.safetensors")
    return directory


def test_check_vllm_lists_what_vllm_refuses(tmp_path):
    prefix = "base_model.model.model."
    bad = write_peft_dir(tmp_path / "bad", {
        "peft_type": "LORA", "r": 32, "lora_alpha": 16, "target_modules": ["q_proj",
                                                                           "lm_head"],
        "use_dora": True, "modules_to_save": ["score"], "rank_pattern": {"q_proj": 8}}, {
        prefix + "layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 32),
        prefix + "layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(32, 8),
        "base_model.model.lm_head.lora_A.weight": torch.zeros(32, 32),
        "base_model.model.lm_head.lora_B.weight": torch.zeros(64, 32),
        prefix + "embed_tokens.lora_embedding_A": torch.zeros(32, 64),
        "base_model.model.score.weight": torch.zeros(2, 32)})
    result = CliRunner().invoke(cli, ["check", str(bad), "--target", "vllm:max_rank=16",
                                      "--json"])
    assert result.exit_code == 1
    (report,) = json.loads(result.output)["targets"]
    assert report["target"] == "vllm" and report["options"] == {"max_rank": 16}
    text = "\n".join(report["problems"])
    for needle in ("DoRA", "modules_to_save", "rank_pattern is set", "lm_head: vLLM does not",
                   "embed_tokens.lora_embedding_A: vLLM does not load LoRA on embeddings",
                   "score.weight: a full tensor", "r=32 is above the server's "
                   "max_lora_rank=16"):
        assert needle in text, needle
    human = CliRunner().invoke(cli, ["check", str(bad), "--target", "vllm:max_rank=16"])
    assert human.exit_code == 1 and human.output.startswith("vllm:max_rank=16: 7 problem(s)")
    wrong = CliRunner().invoke(cli, ["check", str(bad), "--target", "vllm:max_rank=24"])
    assert wrong.exit_code == 1 and "max_rank must be one of vLLM's ranks" in wrong.output


def test_check_targets_on_packages(setup, tmp_path):
    runner = CliRunner()
    merged = str(setup["root"] / "merged")
    result = runner.invoke(cli, ["check", merged, "--target", "vllm", "--target", "peft",
                                 "--base", str(setup["root"] / "base"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["base"]["ok"] and [t["ok"] for t in out["targets"]] == [True, True]
    assert out["targets"][0]["notes"] == ["serve with --max-lora-rank 8 or more"]
    big = AdapterPackage.build("lora", {"r": 64}, {
        "layers.0.q.lora_A": torch.randn(64, 128), "layers.0.q.lora_B": torch.randn(128, 64)})
    big.save(tmp_path / "big")
    result = runner.invoke(cli, ["check", str(tmp_path / "big"), "--target",
                                 "vllm:max_rank=32"])
    assert result.exit_code == 1 and "r=64 is above the server's max_lora_rank=32" in \
        result.output
    plain = runner.invoke(cli, ["check", merged, "--base", str(setup["root"] / "base")])
    assert plain.exit_code == 0 and plain.output.startswith("ok: ")
