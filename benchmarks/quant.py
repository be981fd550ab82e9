"""NF4 against bitsandbytes (CPU), and QLoRA against bf16 LoRA, in one run.

1. Throughput: quantize (NF4, double quantisation) and dequantize (to bf16) a 4096×4096 bf16
   matrix and every Linear weight of a random-init Llama-shaped checkpoint, adapterhub and
   bitsandbytes alternating, best and median of several runs; the results must be equal bit
   for bit (checked). End to end: ``adapterhub quantize`` against transformers +
   bitsandbytes (``load_in_4bit`` + ``save_pretrained``), each in its own process, with
   wall time and peak RSS; their quantized tensors are compared byte for byte.
2. Size: bits per quantized parameter, from the bytes stored in the quantized checkpoint.
3. Memory: the checkpoint's model loaded in bf16 and in NF4, each in its own process doing
   LoRA training steps: tensor bytes and peak RSS.
4. QLoRA vs bf16 LoRA on a planted-change task: a frozen random-init Llama-shaped model;
   the teacher is the base plus a planted rank-4 change on every attention and MLP weight;
   the loss is the cross-entropy against the teacher's next-token distribution (whose
   entropy is the floor). LoRA (bf16 base) and QLoRA (NF4 base) train
   with identical budgets, data and seeds (3 seeds); final losses are compared.

Writes ``benchmarks/results/quant.json``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import alternate

RESULTS = Path(__file__).parent / "results" / "quant.json"
MATRIX = (4096, 4096)
REPEATS = 5
CHECKPOINT_SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
                    "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000}
TASK_SHAPE = {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256}
TASK = {"seq": 32, "batch": 8, "steps": 100, "lr": 2e-3, "rank": 8, "alpha": 16,
        "planted_rank": 4, "planted_scale": 2.5, "logit_scale": 10.0, "eval_batches": 4}
SEEDS = (0, 1, 2)


# -- timing ----------------------------------------------------------------------------------


def best_and_median(contenders: dict) -> dict[str, dict[str, float]]:
    """Each contender's fastest and median seconds over :data:`REPEATS` alternating runs."""
    times = alternate(contenders, REPEATS)
    return {name: {"best_s": min(t), "median_s": statistics.median(t)}
            for name, t in times.items()}

def ratios(timing: dict, params: int) -> dict:
    """Throughputs and bitsandbytes-time / adapterhub-time (≥ 1: adapterhub as fast or faster)."""
    ours, bnb = timing["adapterhub"], timing["bitsandbytes"]
    return {**timing, "params": params,
            "adapterhub_params_per_s": params / ours["median_s"],
            "bitsandbytes_params_per_s": params / bnb["median_s"],
            "speedup_median": bnb["median_s"] / ours["median_s"],
            "speedup_best": bnb["best_s"] / ours["best_s"]}


# -- bitsandbytes and adapterhub on the same weights ----------------------------------------


def bnb_quantize(weight):
    import bitsandbytes.functional as F

    return F.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)


def bnb_dequantize(packed_state):
    import bitsandbytes.functional as F

    return F.dequantize_4bit(*packed_state)


def check_equal(weight, ours, theirs, quantizer) -> None:
    packed, state = theirs
    stored = quantizer.state_dict(ours, "w")
    reference = {"w": packed, **{f"w.{k}": v for k, v in state.as_dict(packed=True).items()}}
    assert sorted(stored) == sorted(reference), "different tensors"
    for key in reference:
        assert torch.equal(stored[key], reference[key]), f"{key} differs from bitsandbytes"
    if weight.shape[-1] % 64 == 0:  # where bitsandbytes' CPU kernel keeps flat blocks
        assert torch.equal(quantizer.dequantize(ours, torch.bfloat16),
                           bnb_dequantize(theirs)), "dequantized values differ"


def bench_matrix() -> dict:
    import adapterhub

    quantizer = adapterhub.get_quantizer("nf4")
    config = quantizer.make_config()
    weight = (torch.randn(MATRIX, generator=torch.Generator().manual_seed(0)) * 0.02
              ).to(torch.bfloat16)
    ours, theirs = quantizer.quantize(weight, config), bnb_quantize(weight)
    check_equal(weight, ours, theirs, quantizer)
    quantize = best_and_median({"adapterhub": lambda: quantizer.quantize(weight, config),
                          "bitsandbytes": lambda: bnb_quantize(weight)})
    dequantize = best_and_median({"adapterhub": lambda: quantizer.dequantize(ours, torch.bfloat16),
                            "bitsandbytes": lambda: bnb_dequantize(theirs)})
    return {"shape": list(MATRIX), "dtype": "bfloat16", "bit_exact": True,
            "quantize": ratios(quantize, weight.numel()),
            "dequantize": ratios(dequantize, weight.numel())}


# -- a Llama-shaped checkpoint --------------------------------------------------------------


def write_checkpoint(directory: Path) -> dict:
    """A random-init bf16 Llama-shaped checkpoint, two layers per shard, with config.json."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    s = CHECKPOINT_SHAPE
    h, i, v = s["hidden_size"], s["intermediate_size"], s["vocab_size"]
    kv = h // s["num_attention_heads"] * s["num_key_value_heads"]
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)

    directory.mkdir(parents=True)
    LlamaConfig(**s, max_position_embeddings=256, torch_dtype="bfloat16").save_pretrained(
        directory)
    shards: list[dict[str, torch.Tensor]] = [{"model.embed_tokens.weight": rand(v, h)}]
    for layer in range(s["num_hidden_layers"]):
        if layer % 2 == 0:
            shards.append({})
        p = f"model.layers.{layer}."
        shards[-1].update({
            p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(kv, h),
            p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, h),
            p + "mlp.gate_proj.weight": rand(i, h), p + "mlp.up_proj.weight": rand(i, h),
            p + "mlp.down_proj.weight": rand(h, i),
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)})
    shards.append({"model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
                   "lm_head.weight": rand(v, h)})
    weight_map, total = {}, 0
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / name, metadata={"format": "pt"})
        for key, tensor in shard.items():
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return {"shape": s, "params": total // 2, "bytes": total, "shards": len(shards)}


def bench_checkpoint_kernels(base: Path) -> dict:
    """Quantize and dequantize every Linear weight of the checkpoint (in memory, both tools)."""
    import adapterhub
    from adapterhub.engines.quantize_checkpoint import DEFAULT_SKIP, is_linear_weight
    from adapterhub.io.checkpoint import Checkpoint

    quantizer = adapterhub.get_quantizer("nf4")
    config = quantizer.make_config()
    checkpoint = Checkpoint(base)
    weights = [checkpoint.read_tensor(n) for n, t in checkpoint.tensors.items()
               if is_linear_weight(n, t.info.dtype, t.info.shape, DEFAULT_SKIP)]
    ours = [quantizer.quantize(w, config) for w in weights]
    theirs = [bnb_quantize(w) for w in weights]
    for w, a, b in zip(weights, ours, theirs):
        check_equal(w, a, b, quantizer)
    params = sum(w.numel() for w in weights)
    quantize = best_and_median({
        "adapterhub": lambda: [quantizer.quantize(w, config) for w in weights],
        "bitsandbytes": lambda: [bnb_quantize(w) for w in weights]}, repeats=3)
    dequantize = best_and_median({
        "adapterhub": lambda: [quantizer.dequantize(q, torch.bfloat16) for q in ours],
        "bitsandbytes": lambda: [bnb_dequantize(q) for q in theirs]}, repeats=3)
    return {"linear_weights": len(weights), "bit_exact": True,
            "quantize": ratios(quantize, params), "dequantize": ratios(dequantize, params)}


PEER_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], quantization_config=config,
                                             device_map="cpu")
model.save_pretrained(sys.argv[2])
"""


def _status_mib(field: str, pid: int | str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """The process's peak resident set size (``VmHWM``, reset by exec) in MiB."""
    return _status_mib("VmHWM", pid)


def current_rss_mib(pid: int | str = "self") -> float | None:
    """The process's resident set size now (``VmRSS``) in MiB."""
    return _status_mib("VmRSS", pid)


def run_measured(args: list[str]) -> dict:
    """Run a command; its wall time and peak RSS (``VmHWM`` sampled until it exits)."""
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "ADAPTERHUB_QUIET": "1"})
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, peak_rss_mib(process.pid) or 0.0)
        time.sleep(0.02)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f"{args[:3]} failed: {stderr[-2000:]}")
    return {"wall_s": wall, "peak_rss_mib": peak, "stdout": stdout}


def bench_end_to_end(base: Path, work: Path) -> dict:
    """``adapterhub quantize`` vs transformers + bitsandbytes, each in a fresh process."""
    from adapterhub.io.checkpoint import Checkpoint, stored_quantized

    peer = run_measured([sys.executable, "-c", PEER_SCRIPT, str(base), str(work / "bnb")])
    peer.pop("stdout")
    command = str(Path(sys.executable).parent / "adapterhub")
    ours = run_measured([command, "quantize", str(base), "--out", str(work / "nf4"), "--json"])
    summary = json.loads(ours.pop("stdout"))
    mine, theirs = Checkpoint(work / "nf4"), Checkpoint(work / "bnb")
    stored = stored_quantized(mine)
    assert set(stored) == set(stored_quantized(theirs)), "different weights quantized"
    for entry in stored.values():
        for name in entry.tensors:
            assert torch.equal(mine.read_tensor(name), theirs.read_tensor(name)), name
    stored_bytes = sum(mine.tensors[n].info.nbytes for e in stored.values() for n in e.tensors)
    params = summary["quantized_params"]
    return {"adapterhub_quantize": {**ours, "bytes_out": summary["bytes_out"]},
            "transformers_bitsandbytes": peer,
            "identical_quantized_tensors": True,
            "wall_speedup": peer["wall_s"] / ours["wall_s"],
            "size": {"quantized_params": params, "stored_bytes": stored_bytes,
                     "bits_per_param": 8 * stored_bytes / params,
                     "nominal_bits_per_param": 4 + 8 / 64 + 32 / (64 * 256),
                     "checkpoint_bytes_bf16": summary["bytes_in"],
                     "checkpoint_bytes_nf4": summary["bytes_out"]}}


MEMORY_SCRIPT = """
import json, sys, torch
from pathlib import Path
import adapterhub
from adapterhub.io.checkpoint import Checkpoint
from adapterhub.io.checkpoint import load_quantized
from benchmarks.quant import current_rss_mib, peak_rss_mib
from transformers import AutoConfig, AutoModelForCausalLM
path, variant = Path(sys.argv[1]), sys.argv[2]
start_rss = current_rss_mib()
config = AutoConfig.from_pretrained(path)
with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
model = model.to_empty(device="cpu")  # allocated but untouched: not resident
model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
if variant == "nf4":
    load_quantized(model, path)
else:
    checkpoint = Checkpoint(path)
    model.load_state_dict({n: checkpoint.read_tensor(n) for n in checkpoint.tensors},
                          strict=False, assign=True)
loaded_rss = current_rss_mib()
state = model.state_dict()
tensor_bytes = sum(t.numel() * t.element_size() for t in state.values())
linear_bytes = sum(t.numel() * t.element_size() for n, t in state.items()
                   if ".layers." in n and ("_proj" in n))
adapterhub.attach(model, "lora", r=16, target_modules="all-linear")
optimizer = torch.optim.AdamW(adapterhub.param_groups(model, lr=1e-4))
tokens = torch.randint(0, config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0))
for _ in range(2):
    loss = model(tokens, labels=tokens).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
print(json.dumps({"tensor_bytes": tensor_bytes, "linear_weight_bytes": linear_bytes,
                  "rss_after_imports_mib": start_rss, "rss_after_load_mib": loaded_rss,
                  "peak_rss_training_mib": peak_rss_mib(), "loss": loss.item()}))
"""


def bench_memory(bf16_dir: Path, nf4_dir: Path) -> dict:
    """Load the model in bf16 and in NF4 and train LoRA on it, each in a fresh process."""
    out = {}
    root = Path(__file__).parent.parent
    for variant, path in (("bf16", bf16_dir), ("nf4", nf4_dir)):
        done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path), variant],
                              capture_output=True, text=True, cwd=root)
        if done.returncode:
            raise RuntimeError(f"memory run {variant} failed: {done.stderr[-2000:]}")
        out[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("tensor_bytes", "linear_weight_bytes", "rss_after_load_mib",
                "peak_rss_training_mib"):
        out[f"{key}_ratio"] = out["nf4"][key] / out["bf16"][key]
    return out


# -- QLoRA vs LoRA on a planted change --------------------------------------------------------


def task_models(seed: int):
    """(base, teacher): a random-init Llama and the same plus a planted low-rank change."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1000 + seed)
    config = LlamaConfig(**TASK_SHAPE, max_position_embeddings=TASK["seq"])
    base = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        base.lm_head.weight.mul_(TASK["logit_scale"])  # sharper next-token distributions
    teacher = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(2000 + seed)
    r = TASK["planted_rank"]
    with torch.no_grad():
        for name, module in teacher.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("model.layers"):
                d_out, d_in = module.weight.shape
                a = torch.randn(r, d_in, generator=generator) / d_in ** 0.5
                b = torch.randn(d_out, r, generator=generator) / r ** 0.5
                change = TASK["planted_scale"] * module.weight.float().std() * (b @ a)
                module.weight.add_(change.to(module.weight.dtype))
    return base, teacher


def task_batches(teacher, seed: int, count: int):
    """Random contexts with the teacher's next-token distributions (soft targets)."""
    generator = torch.Generator().manual_seed(3000 + seed)
    vocab = TASK_SHAPE["vocab_size"]
    batches = []
    with torch.no_grad():
        for _ in range(count):
            tokens = torch.randint(0, vocab, (TASK["batch"], TASK["seq"]), generator=generator)
            batches.append((tokens, torch.softmax(teacher(tokens).logits.float(), dim=-1)))
    return batches


def cross_entropy(model, tokens, probs) -> torch.Tensor:
    """Cross-entropy against the teacher's distribution: its entropy plus KL(teacher‖model)."""
    logits = model(tokens).logits.float()
    return -(probs * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def train_one(base, batches, eval_batches, quantize: str | None, seed: int) -> dict:
    import copy

    import adapterhub

    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    adapterhub.attach(model, "lora", r=TASK["rank"], lora_alpha=TASK["alpha"],
                      target_modules="all-linear", quantize=quantize)
    optimizer = torch.optim.AdamW(adapterhub.param_groups(model, lr=TASK["lr"]))
    losses = []
    start = time.perf_counter()
    model.train()
    for tokens, targets in batches:
        loss = cross_entropy(model, tokens, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        final = statistics.fmean(cross_entropy(model, t, y).item() for t, y in eval_batches)
    return {"final_eval_loss": final, "final_train_loss": statistics.fmean(losses[-10:]),
            "first_loss": losses[0], "train_s": seconds}


def bench_qlora_vs_lora() -> dict:
    import copy

    import adapterhub

    runs = []
    for seed in SEEDS:
        base, teacher = task_models(seed)
        batches = task_batches(teacher, seed, TASK["steps"])
        eval_batches = task_batches(teacher, seed + 100, TASK["eval_batches"])
        quantized = copy.deepcopy(base)
        adapterhub.quantize_model(quantized, "nf4")
        with torch.no_grad():
            losses = {name: statistics.fmean(cross_entropy(model, t, y).item()
                                             for t, y in eval_batches)
                      for name, model in (("teacher_loss", teacher), ("base_loss", base),
                                          ("quantized_base_loss", quantized))}
        lora = train_one(base, batches, eval_batches, None, seed)
        qlora = train_one(base, batches, eval_batches, "nf4", seed)
        gap = losses["base_loss"] - losses["teacher_loss"]
        for result in (lora, qlora):
            result["gap_closed"] = (losses["base_loss"] - result["final_eval_loss"]) / gap
        runs.append({"seed": seed, **losses, "lora": lora, "qlora": qlora,
                     "final_loss_ratio": qlora["final_eval_loss"] / lora["final_eval_loss"]})
    mean = {key: statistics.fmean(r[key] for r in runs)
            for key in ("teacher_loss", "base_loss", "quantized_base_loss")}
    for name in ("lora", "qlora"):
        mean[f"{name}_gap_closed"] = statistics.fmean(r[name]["gap_closed"] for r in runs)
        mean[f"{name}_train_s"] = statistics.fmean(r[name]["train_s"] for r in runs)
    lora_final = statistics.fmean(r["lora"]["final_eval_loss"] for r in runs)
    qlora_final = statistics.fmean(r["qlora"]["final_eval_loss"] for r in runs)
    return {"task": {**TASK, "shape": TASK_SHAPE, "seeds": list(SEEDS),
                     "targets": "all-linear (LoRA on every Linear of the blocks)",
                     "base_dtype": "bfloat16", "qlora": "nf4, double quant, bf16 compute"},
            "runs": runs, **mean, "lora_final_eval_loss": lora_final,
            "qlora_final_eval_loss": qlora_final,
            "final_loss_ratio": qlora_final / lora_final,
            "within_5_percent": abs(qlora_final / lora_final - 1) <= 0.05,
            "max_seed_ratio_deviation": max(abs(r["final_loss_ratio"] - 1) for r in runs)}


def main() -> dict:
    import bitsandbytes
    import transformers

    import adapterhub

    started = time.perf_counter()
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                 "platform": platform.platform(), "torch": torch.__version__,
                                 "bitsandbytes": bitsandbytes.__version__,
                                 "transformers": transformers.__version__,
                                 "adapterhub": adapterhub.__version__,
                                 "load_average_at_start": os.getloadavg()}}
    print("matrix 4096x4096", flush=True)
    results["matrix"] = bench_matrix()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("checkpoint", flush=True)
        results["checkpoint"] = write_checkpoint(work / "base")
        results["checkpoint"]["kernels"] = bench_checkpoint_kernels(work / "base")
        print("end to end", flush=True)
        results["checkpoint"]["end_to_end"] = bench_end_to_end(work / "base", work)
        results["size"] = results["checkpoint"]["end_to_end"].pop("size")
        print("memory", flush=True)
        results["memory"] = bench_memory(work / "base", work / "nf4")
    print("qlora vs lora", flush=True)
    results["qlora_vs_lora"] = bench_qlora_vs_lora()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("matrix", "size")}, indent=2))
    return results


if __name__ == "__main__":
    main()
