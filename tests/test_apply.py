"""apply: streaming deployment builds against PEFT's merge_and_unload, byte-level layout checks,
atomicity (incompatible adapters, SIGKILL) and dtype casts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers.dense_delta_method import dense_method  # noqa: F401 (a fixture)
from safetensors.torch import load_file, save_file

from adapterhub import AdapterPackage, IncompatibleBaseModelError
from adapterhub.cli import cli
from adapterhub.engines.apply import BUILD_RECORD, apply_adapters
from adapterhub.errors import OutputExistsError
from adapterhub.io.checkpoint import INDEX_FILE, Checkpoint
from adapterhub.io.safetensors import read_header


def load_dir(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def tiny_llama_config(**changes):
    from transformers import LlamaConfig

    fields = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    return LlamaConfig(**{**fields, **changes})


@pytest.fixture(scope="module", params=["bfloat16", "float32"])
def llama(request, tmp_path_factory):
    """A random-init Llama saved in 3 shards, a PEFT LoRA on all linear layers, and PEFT's
    merge_and_unload + save_pretrained of the two."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaForCausalLM

    dtype = getattr(torch, request.param)
    root = tmp_path_factory.mktemp(f"llama-{request.param}")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).to(dtype)
    itemsize = torch.finfo(dtype).bits // 8
    model.save_pretrained(root / "base", max_shard_size=f"{30 * itemsize}KB")  # 3 shards
    (root / "base" / "tokenizer.json").write_text('{"version": "1.0"}')
    peft_model = get_peft_model(model, LoraConfig(
        r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False,
        use_rslora=True, rank_pattern={"down_proj": 2}))
    peft_model.save_pretrained(root / "lora")
    base = LlamaForCausalLM.from_pretrained(root / "base", dtype=dtype)
    merged = PeftModel.from_pretrained(base, root / "lora").merge_and_unload()
    merged.save_pretrained(root / "peft")
    return {"root": root, "dtype": dtype, "base": root / "base", "lora": root / "lora",
            "peft": root / "peft"}


@pytest.fixture(scope="module")
def built(llama):
    out = llama["root"] / "ours"
    record = apply_adapters(llama["base"], [llama["lora"]], out, show_progress=False)
    return out, record


def test_equals_peft_merge_and_unload(llama, built):
    out, record = built
    ours, peft, base = load_dir(out), load_dir(llama["peft"]), load_dir(llama["base"])
    assert set(ours) == set(peft) == set(base)
    assert record["tensors"] == {"merged": 14, "copied": 7, "cast": 0}
    worst = 0.0
    for name, tensor in ours.items():
        assert tensor.dtype == base[name].dtype, name
        diff = (tensor.float() - peft[name].float()).abs()
        worst = max(worst, diff.max().item())
        if llama["dtype"] == torch.bfloat16:
            # at most one bf16 step apart (PEFT adds in bf16, adapterhub in fp32)
            assert (diff <= peft[name].float().abs() * 2 ** -7).all(), name
        else:
            torch.testing.assert_close(tensor, peft[name], atol=1e-6, rtol=1e-6)
    print(f"\nmax |apply - PEFT| ({llama['dtype']}): {worst:.3g}")


def test_merge_is_fp32_with_one_rounding(llama, built):
    """Each merged value is the exact W + ΔW rounded once: within half a step of the dtype
    (plus the fp32 error of computing ΔW) of a float64 merge."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    out, _ = built
    ours, base = load_dir(out), load_dir(llama["base"])
    model = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(llama["base"], dtype=torch.float64), llama["lora"])
    model = model.to(torch.float64).merge_and_unload()
    exact = {k: v for k, v in model.state_dict().items()}
    eps = torch.finfo(llama["dtype"]).eps
    for name, tensor in ours.items():
        if torch.equal(tensor, base[name]):
            continue
        err = (tensor.double() - exact[name]).abs()
        fp32_error = exact[name].abs() * 2 ** -20 + 1e-7
        assert (err <= exact[name].abs() * eps * 0.5 + fp32_error).all(), name


def test_same_files_sharding_and_index(llama, built):
    out, record = built
    base = llama["base"]
    assert len(Checkpoint(base).files) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for p in base.iterdir()] + [BUILD_RECORD])
    assert (out / INDEX_FILE).read_bytes() == (base / INDEX_FILE).read_bytes()
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes()
    for shard in Checkpoint(base).files:
        src, dst = read_header(shard), read_header(out / shard.name)
        assert shard.stat().st_size == (out / shard.name).stat().st_size
        with open(shard, "rb") as a, open(out / shard.name, "rb") as b:
            assert a.read(src.data_start) == b.read(dst.data_start)  # header, verbatim
            src_bytes, dst_bytes = a.read(), b.read()
        for name, info in src.tensors.items():
            lo, hi = info.start - src.data_start, info.end - src.data_start
            same = src_bytes[lo:hi] == dst_bytes[lo:hi]
            assert same == ("proj" not in name), name  # untouched tensors: identical bytes
    assert record["base"]["fingerprint"] == Checkpoint(base).fingerprint == record["fingerprint"]
    from adapterhub.io.formats import read_adapter

    assert record["adapters"] == [{"digest": read_adapter(llama["lora"]).digest,
                                   "method": "lora", "weight": 1.0, "modules": 14,
                                   "fingerprint_match": None, "quantization": None,
                                   "folded_into": {"full_precision": 14}}]
    assert record["quantization"] is None
    assert json.loads((out / BUILD_RECORD).read_text()) == record


def test_incompatible_adapter_writes_nothing(llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    other = get_peft_model(LlamaForCausalLM(tiny_llama_config(hidden_size=32)),
                           LoraConfig(r=2, target_modules=["q_proj"]))
    other.save_pretrained(tmp_path / "wrong")
    out = tmp_path / "builds" / "merged"
    with pytest.raises(IncompatibleBaseModelError, match="q_proj.weight has shape"):
        apply_adapters(llama["base"], [llama["lora"], tmp_path / "wrong"], out)
    assert not out.exists()
    assert not (tmp_path / "builds").exists() or not any((tmp_path / "builds").iterdir())
    result = CliRunner().invoke(cli, ["apply", str(llama["base"]), str(tmp_path / "wrong"),
                                      "--out", str(out)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: adapter 1 (lora, sha256:") and \
        "does not fit the base model" in result.output
    assert not out.exists()


def test_refuses_existing_output(llama, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        apply_adapters(llama["base"], [llama["lora"]], tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["keep.txt"]
    from adapterhub.errors import WriteError

    with pytest.raises(WriteError, match="building .* failed"):  # its parent is a file
        apply_adapters(llama["base"], [llama["lora"]], tmp_path / "out" / "keep.txt" / "x")
    (tmp_path / "empty").mkdir()
    apply_adapters(llama["base"], [llama["lora"]], tmp_path / "empty", show_progress=False)
    assert (tmp_path / "empty" / BUILD_RECORD).exists()


# -- synthetic checkpoints (no transformers) -----------------------------------------------


def write_checkpoint(directory: Path, layers: int, size: int, dtype=torch.bfloat16) -> None:
    """Square ``layers.N.proj.weight`` tensors, a norm vector and an int64 buffer."""
    directory.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.proj.weight": torch.randn(size, size, generator=gen).to(dtype)
               for i in range(layers)}
    tensors["norm.weight"] = torch.rand(size, generator=gen).to(dtype)
    tensors["position_ids"] = torch.arange(size, dtype=torch.int64)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({"model_type": "toy",
                                                       "torch_dtype": "bfloat16"}))


def lora_package(layers: list[int], size: int, rank: int, seed: int) -> AdapterPackage:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in layers:
        tensors[f"layers.{i}.proj.lora_A"] = torch.randn(rank, size, generator=gen) * 0.1
        tensors[f"layers.{i}.proj.lora_B"] = torch.randn(size, rank, generator=gen) * 0.1
    return AdapterPackage.build("lora", {"r": rank, "lora_alpha": 2 * rank}, tensors)


def test_weights_dtype_cast_and_non_float_tensors(tmp_path):
    base = tmp_path / "base"
    write_checkpoint(base, layers=3, size=24)
    (base / "pytorch_model.bin").write_bytes(b"stale weights")
    one, two = lora_package([0, 1], 24, 4, seed=1), lora_package([1], 24, 2, seed=2)
    record = apply_adapters(base, [one, two], tmp_path / "out", weights=[0.5, -1.0],
                            dtype="fp32", show_progress=False)
    assert record["tensors"] == {"merged": 2, "cast": 2, "copied": 1}
    assert record["dtype"] == "fp32" and record["skipped_files"] == ["pytorch_model.bin"]
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "float32"
    src, out = load_dir(base), load_dir(tmp_path / "out")
    header = read_header(tmp_path / "out" / "model.safetensors")
    assert list(header.tensors) == list(read_header(base / "model.safetensors").tensors)
    assert torch.equal(out["position_ids"], src["position_ids"])
    assert torch.equal(out["norm.weight"], src["norm.weight"].float())
    assert torch.equal(out["layers.2.proj.weight"], src["layers.2.proj.weight"].float())
    methods = {id(p): (p.method, p.config, p.method.group_tensors(p.tensors)) for p in (one, two)}

    def delta(package, module):
        method, config, groups = methods[id(package)]
        return method.delta_weight(module, groups[module], config, (24, 24))

    expected0 = src["layers.0.proj.weight"].float() + 0.5 * delta(one, "layers.0.proj")
    expected1 = torch.add(src["layers.1.proj.weight"].float(), delta(one, "layers.1.proj"),
                          alpha=0.5)
    expected1 = torch.add(expected1, delta(two, "layers.1.proj"), alpha=-1.0)
    torch.testing.assert_close(out["layers.0.proj.weight"], expected0, atol=0, rtol=0)
    torch.testing.assert_close(out["layers.1.proj.weight"], expected1, atol=0, rtol=0)
    assert Checkpoint(tmp_path / "out").fingerprint == record["fingerprint"] != \
        record["base"]["fingerprint"]


def test_merged_and_dense_adapters(tmp_path, dense_method):
    """A merged LoRA (rank patterns, scaling 1) builds what its parents build together, and a
    method without low-rank factors goes through its dense ΔW."""
    from adapterhub.engines.merging import merge_adapters

    base = tmp_path / "base"
    write_checkpoint(base, layers=2, size=24, dtype=torch.float32)
    one, two = lora_package([0, 1], 24, 4, seed=5), lora_package([1], 24, 2, seed=6)
    apply_adapters(base, [one, two], tmp_path / "both", show_progress=False)
    merged = merge_adapters([one, two], "cat")
    assert merged.config.rank_pattern == {"layers.0.proj": 4}
    apply_adapters(base, [merged], tmp_path / "merged", show_progress=False)
    both, single = load_dir(tmp_path / "both"), load_dir(tmp_path / "merged")
    for name in both:
        torch.testing.assert_close(single[name], both[name], atol=1e-6, rtol=1e-6)
    delta = torch.randn(24, 24, generator=torch.Generator().manual_seed(7))
    dense = AdapterPackage.build(dense_method, {}, {"layers.1.proj.delta": delta})
    apply_adapters(base, [dense], tmp_path / "dense", weights=[-0.5], show_progress=False)
    src, out = load_dir(base), load_dir(tmp_path / "dense")
    assert torch.equal(out["layers.1.proj.weight"],
                       torch.add(src["layers.1.proj.weight"], delta, alpha=-0.5))
    assert torch.equal(out["layers.0.proj.weight"], src["layers.0.proj.weight"])


def test_refuses_non_finite_results(tmp_path):
    """NaN from an adapter and fp16 overflow stop the build; large sums that merely overflow
    the block check's fast path do not."""
    from adapterhub import MergeError

    base = tmp_path / "base"
    base.mkdir()
    save_file({"a.weight": torch.full((4, 4), 60000.0, dtype=torch.float16),
               "b.weight": torch.full((4, 4), 30000.0, dtype=torch.float16)},
              base / "model.safetensors")

    def adapter(module: str, value: float) -> AdapterPackage:
        return AdapterPackage.build("lora", {"r": 1, "lora_alpha": 1}, {
            f"{module}.lora_A": torch.full((1, 4), value), f"{module}.lora_B": torch.ones(4, 1)})

    with pytest.raises(MergeError, match="a.weight \\(F16\\): merging produced NaN or Inf"):
        apply_adapters(base, [adapter("a", 10000.0)], tmp_path / "overflow")
    with pytest.raises(MergeError, match="b.weight"):
        apply_adapters(base, [adapter("b", float("nan"))], tmp_path / "nan")
    apply_adapters(base, [adapter("b", 1.0)], tmp_path / "fine", show_progress=False)
    assert (load_dir(tmp_path / "fine")["b.weight"] == 30001.0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "fine"]


def test_cli_apply_json(tmp_path):
    base = tmp_path / "base"
    write_checkpoint(base, layers=2, size=16)
    lora_package([0], 16, 2, seed=3).save(tmp_path / "pkg")
    result = CliRunner().invoke(cli, ["apply", str(base), str(tmp_path / "pkg"), "--out",
                                      str(tmp_path / "out"), "--dtype", "bf16", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["tensors"] == {"merged": 1, "copied": 3, "cast": 0}
    assert json.loads((tmp_path / "out" / BUILD_RECORD).read_text()) == record
    bad = CliRunner().invoke(cli, ["apply", str(base), str(tmp_path / "pkg"), "--out",
                                   str(tmp_path / "out2"), "--weights", "1,2"])
    assert bad.exit_code == 1 and "2 weights given for 1 adapters" in bad.output


def test_sigkill_leaves_no_output(tmp_path):
    base = tmp_path / "base"
    write_checkpoint(base, layers=40, size=1024, dtype=torch.float32)  # 160 MB
    lora_package(list(range(40)), 1024, 16, seed=4).save(tmp_path / "pkg")
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).parent / "adapterhub"), "apply", str(base), str(tmp_path / "pkg"),
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "ADAPTERHUB_QUIET": "1"})
    partial = tmp_path / f".out.{proc.pid}.partial"
    deadline = time.monotonic() + 120
    while not (partial / "model.safetensors").exists():
        assert proc.poll() is None, "apply ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not out.exists()
    assert partial.exists()  # what the killed build left: hidden, never at --out
    apply_adapters(base, [tmp_path / "pkg"], out, show_progress=False)
    assert not partial.exists(), "the next build did not clean up after the killed one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "out", "pkg"]
