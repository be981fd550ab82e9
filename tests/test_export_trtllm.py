"""TensorRT-LLM export: the arrays equal an independent reading of TRT-LLM's converter rules
applied to real PEFT adapters, and, applied the way TRT-LLM's kernels apply them, reproduce
PEFT's own outputs."""

from __future__ import annotations

import io
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import adapterhub
from adapterhub import AdapterPackage, ExportError
from adapterhub.cli import cli
from adapterhub.io.formats.peft import read_peft
from adapterhub.io.formats.trtllm import TrtllmRow, pack_rows, trtllm_files

LAYERS = 11  # enough layers that the converter's key order (0, 1, 10, 2, ...) is not numeric
IDS = torch.tensor([[1, 5, 9, 33, 2, 60]])
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=LAYERS, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=64)).eval()


@pytest.fixture(scope="module")
def peft_dirs(tmp_path_factory):
    """A saved base and PEFT adapters on it: all seven Llama modules (one with another rank),
    rsLoRA, q and v only, DoRA with trained-looking magnitudes."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("trtllm")
    tiny_llama().save_pretrained(root / "base")
    specs = {
        "full": dict(r=4, lora_alpha=8, target_modules=ALL, rank_pattern={"down_proj": 2}),
        "rslora": dict(r=8, lora_alpha=6, target_modules=ALL, use_rslora=True),
        "qv": dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        "dora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                     use_dora=True),
    }
    for seed, (name, kwargs) in enumerate(specs.items()):
        torch.manual_seed(seed + 1)
        model = get_peft_model(tiny_llama(), LoraConfig(init_lora_weights=False, **kwargs))
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "lora_magnitude_vector" in param_name:  # as if trained
                    param.mul_(1 + 0.2 * torch.randn_like(param))
        model.save_pretrained(root / name)
        with torch.no_grad():
            torch.save(model(IDS).logits, root / name / "logits.pt")
    return root


# -- an independent reading of the converter's rules --------------------------------------------

KEY = re.compile(r".*\.layers\.([0-9]+)\.(self_attn|mlp)\.([a-z_]+)\."
                 r"(?:lora_(A|B)\.weight|lora_magnitude_vector)")
MODULE_ID = {"q_proj": 1, "k_proj": 2, "v_proj": 3, "o_proj": 4, "gate_proj": 5, "down_proj": 6,
             "up_proj": 7}  # LORA_MODULE_IDS of hf_modules_to_trtllm_modules[...]


def converter_reference(adapter: Path, dtype: str, base: Path | None = None):
    """examples/hf_lora_convert.py::convert_hf_model on a PEFT directory, with DoRA magnitudes
    normalized as examples/dora/normalize_weights.py does and missing q/k/v filled as
    tensorrt_llm/lora_manager.py::load_from_hf does."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # sorted, as TRT-LLM reads them
    layers = defaultdict(lambda: defaultdict(dict))
    for key in tensors:
        m = KEY.match(key)
        part = {"A": "in", "B": "out", None: "magnitude"}[m.group(4)]
        layers[int(m.group(1))][m.group(3)][part] = tensors[key]
        layers[int(m.group(1))][m.group(3)]["path"] = f"layers.{m.group(1)}.{m.group(2)}." \
                                                      f"{m.group(3)}"
    present = {name for modules in layers.values() for name in modules}
    qkv = ["q_proj", "k_proj", "v_proj"]
    missing = [n for n in qkv if n not in present] if present & set(qkv) else []
    target = getattr(torch, dtype)
    rows, configs = [], []
    for layer, modules in layers.items():
        for name, w in modules.items():
            a, b = w["in"], w["out"]
            r = min(a.shape)
            scale = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
            parts = [a, b * scale]
            if "magnitude" in w:
                with safe_open(base / "model.safetensors", "pt") as f:
                    weight = f.get_tensor(f"model.{w['path']}.weight")
                parts.append(w["magnitude"] / torch.linalg.norm(weight + scale * b @ a,
                                                                dim=1).to(weight.dtype))
            rows.append(torch.cat([p.contiguous().flatten().to(target) for p in parts]))
            configs.append([MODULE_ID[name], layer, r, int("magnitude" in w)])
        for name in missing:
            r, hidden = config["r"], 32
            rows.append(torch.zeros(2 * r * hidden, dtype=target))
            configs.append([MODULE_ID[name], layer, r, 0])
    longest = max(len(row) for row in rows)
    weights = torch.stack([torch.nn.functional.pad(row, (0, longest - len(row)))
                           for row in rows])[None]
    if dtype == "bfloat16":
        weights = weights.view(torch.int16)
    return weights.numpy(), np.array(configs, dtype=np.int32)[None]


def export(source, out: Path, *args: str) -> tuple[np.ndarray, np.ndarray]:
    result = CliRunner().invoke(cli, ["export", str(source), "--format", "trtllm", "--out",
                                      str(out), *args])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["model.lora_config.npy",
                                                     "model.lora_weights.npy"]
    return np.load(out / "model.lora_weights.npy"), np.load(out / "model.lora_config.npy")


def assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray],
                dtype: str) -> None:
    weights, config = got
    assert config.dtype == np.int32 and np.array_equal(config, want[1])
    if dtype == "bfloat16":  # TRT-LLM's torch_to_numpy: bf16 bits as numpy's 2-byte void
        assert weights.dtype == np.dtype("V2")
        weights = weights.view(np.int16)
    else:
        assert weights.dtype == np.dtype(dtype)
    assert weights.shape == want[0].shape and np.array_equal(weights, want[0])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_llama_lora_arrays_follow_the_converter(peft_dirs, tmp_path, dtype):
    args = [] if dtype == "float16" else ["--dtype", dtype]  # float16 is the default
    got = export(peft_dirs / "full", tmp_path / "out", *args)
    assert_same(got, converter_reference(peft_dirs / "full", dtype), dtype)
    weights, config = got
    assert weights.shape[:2] == (1, 7 * LAYERS) and config.shape == (1, 7 * LAYERS, 4)
    assert config[0, :7, 1].tolist() == [0] * 7 and config[0, 7:14, 1].tolist() == [1] * 7
    assert config[0, 14, 1] == 10  # key order, as the converter reads the file
    # mlp first (key order), gate_proj -> mlp_h_to_4h (5), up_proj -> mlp_gate (7)
    assert config[0, :7, 0].tolist() == [6, 5, 7, 2, 4, 1, 3]
    assert config[0, :7, 2].tolist() == [2, 4, 4, 4, 4, 4, 4]  # down_proj's rank_pattern


def test_rslora_scales_by_alpha_over_sqrt_r(peft_dirs, tmp_path):
    got = export(peft_dirs / "rslora", tmp_path / "out", "--dtype", "float32")
    assert_same(got, converter_reference(peft_dirs / "rslora", "float32"), "float32")
    with safe_open(peft_dirs / "rslora" / "adapter_model.safetensors", "pt") as f:
        b = f.get_tensor("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight")
    out_half = got[0][0, 0, 8 * 64:8 * 64 + 32 * 8]  # row 0: down_proj, in [8, 64], out [32, 8]
    np.testing.assert_array_equal(out_half, (b * (6 / math.sqrt(8))).flatten().numpy())


def test_q_and_v_only_get_zero_k_rows(peft_dirs, tmp_path):
    got = export(peft_dirs / "qv", tmp_path / "out")
    assert_same(got, converter_reference(peft_dirs / "qv", "float16"), "float16")
    weights, config = got
    k_rows = config[0, :, 0] == 2
    assert k_rows.sum() == LAYERS and not weights[0, k_rows].any()
    assert config[0, :3, 0].tolist() == [1, 3, 2]  # q, v, then the filled k
    result = CliRunner().invoke(cli, ["check", str(peft_dirs / "qv"), "--target", "trtllm",
                                      "--json"])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.output)["targets"]
    assert any("attn_q attn_k attn_v" in note for note in report["notes"])


def trtllm_applied_logits(peft_dir: Path, out: Path) -> torch.Tensor:
    """The base model with each row applied as TRT-LLM's kernels do: W + out·in (LoRA), and
    m ⊙ (W + out·in) x with the normalized magnitude m (DoRA)."""
    from transformers import LlamaForCausalLM

    weights = np.load(out / "model.lora_weights.npy")
    config = np.load(out / "model.lora_config.npy")
    names = {v: k for k, v in MODULE_ID.items()}
    model = LlamaForCausalLM.from_pretrained(peft_dir.parent / "base").eval()
    with torch.no_grad():
        for row, (module_id, layer, r, dora) in zip(weights[0], config[0]):
            name = names[int(module_id)]
            part = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            linear = model.get_submodule(f"model.layers.{layer}.{part}.{name}")
            d_out, d_in = linear.weight.shape
            values = torch.from_numpy(row.astype(np.float32))
            lora_in = values[:r * d_in].reshape(r, d_in)
            lora_out = values[r * d_in:r * (d_in + d_out)].reshape(d_out, r)
            adapted = linear.weight + lora_out @ lora_in
            if dora:
                adapted = values[r * (d_in + d_out):r * (d_in + d_out) + d_out, None] * adapted
            linear.weight.copy_(adapted)
        return model(IDS).logits


@pytest.mark.parametrize("name", ["full", "qv"])
def test_float32_arrays_reproduce_peft_outputs(peft_dirs, tmp_path, name):
    export(peft_dirs / name, tmp_path / "out", "--dtype", "float32")
    torch.testing.assert_close(trtllm_applied_logits(peft_dirs / name, tmp_path / "out"),
                               torch.load(peft_dirs / name / "logits.pt", weights_only=True),
                               atol=1e-5, rtol=1e-5)


def test_dora_magnitudes_are_normalized_against_the_base(peft_dirs, tmp_path):
    package = read_peft(peft_dirs / "dora")  # the dora plugin imports PEFT's DoRA adapter
    assert package.manifest.method_name == "dora"
    package.save(tmp_path / "pkg")
    runner = CliRunner()
    refused = runner.invoke(cli, ["export", str(tmp_path / "pkg"), "--format", "trtllm",
                                  "--out", str(tmp_path / "no-base")])
    assert refused.exit_code == 1 and "--base BASE" in refused.output
    assert not (tmp_path / "no-base").exists()
    for dtype in ("float16", "float32"):
        got = export(tmp_path / "pkg", tmp_path / dtype, "--dtype", dtype, "--base",
                     str(peft_dirs / "base"))
        assert_same(got, converter_reference(peft_dirs / "dora", dtype, peft_dirs / "base"),
                    dtype)
        config = got[1][0]
        assert (config[:, 3] == (config[:, 0] != 2)).all()  # DoRA rows; the filled k is not
    torch.testing.assert_close(trtllm_applied_logits(peft_dirs / "dora", tmp_path / "float32"),
                               torch.load(peft_dirs / "dora" / "logits.pt", weights_only=True),
                               atol=1e-5, rtol=1e-5)
    result = runner.invoke(cli, ["check", str(tmp_path / "pkg"), "--target", "trtllm"])
    assert result.exit_code == 0 and "--dora_plugin enable" in result.output


def test_pack_rows_lays_out_in_out_magnitude_and_pads():
    gen = torch.Generator().manual_seed(0)
    lora = TrtllmRow("a", "attn_q", 3, torch.randn(2, 6, generator=gen),
                     torch.randn(6, 2, generator=gen))
    dora = TrtllmRow("b", "mlp_4h_to_h", 0, torch.randn(1, 8, generator=gen),
                     torch.randn(4, 1, generator=gen), magnitude=torch.randn(4, generator=gen))
    weights, config = pack_rows([lora, dora], "float32")
    assert config.tolist() == [[[1, 3, 2, 0], [6, 0, 1, 1]]] and config.dtype == np.int32
    assert weights.shape == (1, 2, 24) and weights.dtype == np.float32
    want_lora = torch.cat([lora.lora_in.flatten(), lora.lora_out.flatten()])
    want_dora = torch.cat([dora.lora_in.flatten(), dora.lora_out.flatten(), dora.magnitude,
                           torch.zeros(8)])
    np.testing.assert_array_equal(weights[0], torch.stack([want_lora, want_dora]).numpy())
    half, _ = pack_rows([lora, dora], "float16")
    np.testing.assert_array_equal(half, weights.astype(np.float16))


def test_fused_gate_up_proj_swaps_the_halves_of_b():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 8, generator=gen), torch.randn(12, 2, generator=gen)
    package = AdapterPackage.build("lora", {"r": 2, "lora_alpha": 3}, {
        "model.layers.0.mlp.gate_up_proj.lora_A": a, "model.layers.0.mlp.gate_up_proj.lora_B": b})
    files = trtllm_files(package, dtype="float32")
    weights = np.load(io.BytesIO(files["model.lora_weights.npy"]))
    config = np.load(io.BytesIO(files["model.lora_config.npy"]))
    assert config.tolist() == [[[5, 0, 2, 0]]]  # mlp_h_to_4h, as hf_lora_convert.py maps it
    out = b * 1.5
    want = torch.cat([a.flatten(), torch.cat([out[6:], out[:6]]).flatten()])
    np.testing.assert_array_equal(weights[0, 0], want.numpy())


def test_melora_exports_its_exact_block_diagonal_factors(tmp_path):
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("layers", nn.ModuleList([nn.ModuleDict({"mlp": nn.ModuleDict({
        "down_proj": nn.Linear(64, 32)})})]))
    adapterhub.attach(model, "melora", r=2, n=4, lora_alpha=6.0, init_lora_weights=False,
                      target_modules=["down_proj"])
    package = adapterhub.extract(model)
    package.save(tmp_path / "pkg")
    weights, config = export(tmp_path / "pkg", tmp_path / "out", "--dtype", "float32")
    assert config.tolist() == [[[6, 0, 8, 0]]]  # mlp_4h_to_h, layer 0, rank n·r
    values = torch.from_numpy(weights[0, 0])
    lora_in, lora_out = values[:8 * 64].reshape(8, 64), values[8 * 64:].reshape(32, 8)
    method, group = package.method, package.tensors
    delta = method.delta_weight("layers.0.mlp.down_proj", method.group_tensors(group)[
        "layers.0.mlp.down_proj"], package.config, (32, 64))
    torch.testing.assert_close(lora_out @ lora_in, delta, atol=1e-6, rtol=0)
    assert torch.equal((lora_out @ lora_in) == 0, delta == 0)  # off-diagonal blocks exactly 0


def test_ttlora_is_refused_with_the_reason(tmp_path):
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32))
    adapterhub.attach(model, "ttlora", target_modules=["0"])
    adapterhub.extract(model).save(tmp_path / "pkg")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "pkg"), "--format", "trtllm",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "'ttlora' method has no low-rank form" in result.output
    assert "adapterhub apply" in result.output and not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match="no low-rank form"):
        trtllm_files(adapterhub.extract(model))
    check = CliRunner().invoke(cli, ["check", str(tmp_path / "pkg"), "--target", "trtllm",
                                     "--json"])
    (report,) = json.loads(check.output)["targets"]
    assert check.exit_code == 1 and "no low-rank form" in report["problems"][0]


def test_check_trtllm_reports_rank_and_modules(peft_dirs, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(5)
    model = get_peft_model(tiny_llama(), LoraConfig(r=8, target_modules=["q_proj", "lm_head"],
                                                    init_lora_weights=False))
    model.save_pretrained(tmp_path / "head", save_embedding_layers=False)
    read_peft(tmp_path / "head").save(tmp_path / "pkg")
    runner = CliRunner()
    for source in (tmp_path / "pkg", tmp_path / "head"):  # a package, and PEFT files as is
        result = runner.invoke(cli, ["check", str(source), "--target", "trtllm:max_rank=4",
                                     "--json"])
        assert result.exit_code == 1, result.output
        (report,) = json.loads(result.output)["targets"]
        assert report["target"] == "trtllm" and report["options"] == {"max_rank": 4}
        text = "\n".join(report["problems"])
        assert "lm_head" in text and f"{LAYERS} module(s) have a rank above the engine's " \
                                     f"max_lora_rank=4" in text, text
    human = runner.invoke(cli, ["check", str(peft_dirs / "full"), "--target", "trtllm:max_rank=4"])
    assert human.exit_code == 0, human.output
    assert human.output.startswith("trtllm:max_rank=4: ok")
    bad = runner.invoke(cli, ["check", str(peft_dirs / "full"), "--target", "trtllm:max_rank=0"])
    assert bad.exit_code == 1 and "max_rank must be a positive integer" in bad.output


def test_export_options_are_checked(peft_dirs, tmp_path):
    runner = CliRunner()
    wrong = runner.invoke(cli, ["export", str(peft_dirs / "full"), "--format", "peft",
                                "--dtype", "float32", "--out", str(tmp_path / "a")])
    assert wrong.exit_code == 2 and "--dtype and --base go with --format trtllm" in wrong.output
    cache = runner.invoke(cli, ["export", str(peft_dirs / "full"), "--format", "trtllm",
                                "--layout", "hf-cache", str(tmp_path / "b"), "--repo-id", "a/b"])
    assert cache.exit_code == 2 and "--layout hf-cache" in cache.output
