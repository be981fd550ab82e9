"""``adapterhub apply`` against PEFT and ``cp -r`` on a TinyLlama-shaped checkpoint.

A random-init bf16 Llama with TinyLlama's shapes (hidden 2048, intermediate 5632, 22 layers,
32 heads, 4 KV heads, vocab 32000: 1.1 B parameters, 2.2 GB) is written shard by shard, with
a rank-16 PEFT LoRA on every linear layer of every block. Each contender runs in its own
process, timed from start to exit, with the anonymous memory (RssAnon) of its process tree
sampled from /proc:

- ``cp -r`` of the checkpoint (the floor for writing 2.2 GB);
- ``adapterhub apply BASE LORA --out OUT``;
- PEFT: ``from_pretrained`` + ``PeftModel.from_pretrained`` + ``merge_and_unload`` +
  ``save_pretrained``.

cp and adapterhub run five times each and the fastest run counts (other work on a shared
machine only ever slows a run down); PEFT runs once. CPU time (user + system of the process
tree) is recorded beside wall time: it hardly depends on the machine's load. adapterhub runs again on a model with
twice the layers to show its memory does not grow with the model. The merged checkpoints of
adapterhub and PEFT are compared tensor by tensor. Models live in a temp directory that is
deleted at the end. Writes ``benchmarks/results/apply.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import best_of, measure, settle

RESULTS = Path(__file__).parent / "results" / "apply.json"
SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
         "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000}
RANK = 16
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LAYERS_PER_SHARD = 5

PEFT_SCRIPT = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
merged = PeftModel.from_pretrained(base, sys.argv[2]).merge_and_unload()
merged.save_pretrained(sys.argv[3])
"""


def linear_shapes(layers: int) -> dict[str, tuple[int, int]]:
    """Every targeted weight of the Llama blocks: name → (out, in)."""
    h, i = SHAPE["hidden_size"], SHAPE["intermediate_size"]
    kv = h // SHAPE["num_attention_heads"] * SHAPE["num_key_value_heads"]
    per_layer = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h),
                 "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, h),
                 "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}
    return {f"model.layers.{n}.{name}": shape for n in range(layers)
            for name, shape in per_layer.items()}


def write_model(directory: Path, layers: int) -> int:
    """Write the checkpoint a shard (five blocks) at a time; returns its size in bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    directory.mkdir(parents=True)
    config = LlamaConfig(**{**SHAPE, "num_hidden_layers": layers}, dtype="bfloat16")
    config.save_pretrained(directory)
    gen = torch.Generator().manual_seed(0)
    h, vocab = SHAPE["hidden_size"], SHAPE["vocab_size"]

    def rand(*shape):
        return torch.empty(*shape, dtype=torch.bfloat16).normal_(std=0.02, generator=gen)

    groups = [list(range(start, min(start + LAYERS_PER_SHARD, layers)))
              for start in range(0, layers, LAYERS_PER_SHARD)]
    shapes = linear_shapes(layers)
    weight_map, total = {}, 0
    for index, blocks in enumerate(groups):
        tensors = {}
        if index == 0:
            tensors["model.embed_tokens.weight"] = rand(vocab, h)
        for n in blocks:
            for name in ("input_layernorm", "post_attention_layernorm"):
                tensors[f"model.layers.{n}.{name}.weight"] = torch.ones(h, dtype=torch.bfloat16)
            for name, shape in shapes.items():
                if name.startswith(f"model.layers.{n}."):
                    tensors[f"{name}.weight"] = rand(*shape)
        if index == len(groups) - 1:
            tensors["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
            tensors["lm_head.weight"] = rand(vocab, h)
        file = f"model-{index + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(tensors, directory / file, metadata={"format": "pt"})
        weight_map.update({name: file for name in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    index_json = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))
    return total


def write_lora(directory: Path, layers: int) -> None:
    """A PEFT LoRA (r=16, alpha=32) on every linear layer of every block, B ≠ 0."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for name, (d_out, d_in) in linear_shapes(layers).items():
        key = f"base_model.model.{name}"
        tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, d_in, generator=gen) / d_in ** 0.5
        tensors[f"{key}.lora_B.weight"] = torch.randn(d_out, RANK, generator=gen) * 0.01
    save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 2 * RANK,
              "lora_dropout": 0.0, "target_modules": list(TARGETS), "bias": "none",
              "use_rslora": False, "use_dora": False, "fan_in_fan_out": False,
              "base_model_name_or_path": None}
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))


# -- measuring ----------------------------------------------------------------------------


def compare(ours: Path, theirs: Path) -> dict[str, float]:
    """Max |difference| between two checkpoints, one tensor at a time, and how many differ."""
    from safetensors import safe_open

    def locate(directory: Path) -> dict[str, Path]:
        out = {}
        for file in directory.glob("*.safetensors"):
            with safe_open(file, "pt") as fh:
                out.update({key: file for key in fh.keys()})
        return out

    a, b = locate(ours), locate(theirs)
    if set(a) != set(b):
        raise RuntimeError(f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}")
    worst, differing, elements = 0.0, 0, 0
    for name in sorted(a):
        with safe_open(a[name], "pt") as fa, safe_open(b[name], "pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
        diff = (x.float() - y.float()).abs()
        worst = max(worst, diff.max().item())
        differing += int((diff > 0).sum())
        elements += diff.numel()
    return {"max_abs_diff": worst, "differing_fraction": differing / elements,
            "tensors": len(a)}


def main() -> dict:
    bin_dir = Path(sys.executable).parent
    apply_cmd = [str(bin_dir / "adapterhub"), "apply"]
    quiet = {"ADAPTERHUB_QUIET": "1"}
    tmp = Path(tempfile.mkdtemp(prefix="adapterhub-bench-apply-"))
    results: dict = {"model": {**SHAPE, "dtype": "bfloat16"},
                     "lora": {"r": RANK, "lora_alpha": 2 * RANK, "target_modules": TARGETS},
                     "load_average_at_start": os.getloadavg()}
    try:
        base, lora = tmp / "base", tmp / "lora"
        results["model"]["bytes"] = write_model(base, SHAPE["num_hidden_layers"])
        write_lora(lora, SHAPE["num_hidden_layers"])
        runs = {"cp": best_of(5, ["cp", "-r", str(base), str(tmp / "cp")], tmp / "cp",
                              (base,)),
                "adapterhub": best_of(5, apply_cmd + [str(base), str(lora), "--out",
                                                      str(tmp / "ours")],
                                      tmp / "ours", (base, lora), quiet)}
        settle(base, lora)
        runs["peft"] = measure([sys.executable, "-c", PEFT_SCRIPT, str(base), str(lora),
                                str(tmp / "peft")])
        settle(base, lora)
        measure(apply_cmd + [str(base), str(lora), "--out", str(tmp / "ours")], quiet)
        results["parity_vs_peft"] = compare(tmp / "ours", tmp / "peft")
        for name in ("ours", "peft", "base", "lora"):
            shutil.rmtree(tmp / name)
        layers = 2 * SHAPE["num_hidden_layers"]
        base, lora = tmp / "base2", tmp / "lora2"
        results["model_2x"] = {"num_hidden_layers": layers, "bytes": write_model(base, layers)}
        write_lora(lora, layers)
        runs["cp_2x"] = best_of(3, ["cp", "-r", str(base), str(tmp / "cp")], tmp / "cp",
                                (base,))
        runs["adapterhub_2x"] = best_of(3, apply_cmd + [str(base), str(lora), "--out",
                                                        str(tmp / "ours")],
                                        tmp / "ours", (base, lora), quiet)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ours, peft, cp = runs["adapterhub"], runs["peft"], runs["cp"]
    results["runs"] = runs
    results["ratios"] = {
        "wall_vs_peft": round(ours["wall_s"] / peft["wall_s"], 3),
        "wall_vs_cp": round(ours["wall_s"] / cp["wall_s"], 3),
        "wall_vs_cp_2x": round(runs["adapterhub_2x"]["wall_s"] / runs["cp_2x"]["wall_s"], 3),
        "cpu_vs_peft": round(ours["cpu_s"] / peft["cpu_s"], 3),
        "cpu_vs_cp": round(ours["cpu_s"] / cp["cpu_s"], 3),
        "cpu_vs_cp_2x": round(runs["adapterhub_2x"]["cpu_s"] / runs["cp_2x"]["cpu_s"], 3),
        "anon_vs_peft": round(ours["peak_anon_mb"] / peft["peak_anon_mb"], 3),
        "anon_2x_vs_1x": round(runs["adapterhub_2x"]["peak_anon_mb"] / ours["peak_anon_mb"],
                               3),
    }
    results["targets"] = {"wall_vs_peft_max": 0.25, "wall_vs_cp_max": 2.0,
                          "peak_anon_mb_max": 600}
    results["meets_targets"] = {
        "wall_vs_peft": results["ratios"]["wall_vs_peft"] <= 0.25,
        "wall_vs_cp": results["ratios"]["wall_vs_cp"] <= 2.0,
        "peak_anon": max(ours["peak_anon_mb"], runs["adapterhub_2x"]["peak_anon_mb"]) <= 600,
    }
    results["machine"] = {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"runs": {k: {key: v[key] for key in ("wall_s", "cpu_s", "peak_anon_mb")}
                               for k, v in runs.items()},
                      "ratios": results["ratios"], "meets_targets": results["meets_targets"],
                      "parity_vs_peft": results["parity_vs_peft"]}, indent=2))
    return results


if __name__ == "__main__":
    main()
