"""DoRA against PEFT's ``use_dora=True``, in the same run.

1. Speed: one 4096×4096 Linear (64 and 512 tokens) and the real MiniLM-L6 with DoRA on every
   Linear of its encoder; a training step (forward + backward, gradient with respect to the
   input as inside a network) and an inference forward. Both sides hold the same values;
   timings are medians of round-robin repetitions on one thread, reported as ratios
   (adapterhub's time / PEFT's). Each training step updates the adapter in place, as an
   optimizer step would, so no cached weight norm is reused across steps.
2. Parity on MiniLM in fp32: the outputs of the two with the same A, B and magnitude (B ≠ 0,
   magnitude moved off its init); after a round trip through PEFT's files both ways (our
   export loaded by ``PeftModel.from_pretrained`` against our model; PEFT's ``save_pretrained``
   imported and loaded by adapterhub against PEFT's model); and ``adapterhub apply`` against
   PEFT's ``merge_and_unload``.

``python -m benchmarks dora`` writes ``benchmarks/results/dora.json`` and
``docs/methods/dora.png``.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.harness import alternate, machine, median_ms, minilm

RESULT = Path(__file__).parent / "results" / "dora.json"
PLOT = Path(__file__).parent.parent / "docs" / "methods" / "dora.png"
TARGETS = ["query", "value", "dense"]
MINILM_CONFIG = {"r": 8, "lora_alpha": 16, "target_modules": TARGETS}


def _peft(model: nn.Module, **config: Any) -> nn.Module:
    """PEFT DoRA with random A and B and a magnitude moved off its init (trained-like)."""
    import peft

    torch.manual_seed(3)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(use_dora=True, init_lora_weights=False,
                                                         **config))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for module in wrapped.modules():
            if isinstance(module, peft.tuners.lora.LoraLayer) and module.lora_magnitude_vector:
                m = module.lora_magnitude_vector["default"].weight
                m.mul_(1 + 0.2 * torch.randn(m.shape, generator=g))
    return wrapped


def _ours_like(theirs: nn.Module, fresh: nn.Module, **config: Any) -> nn.Module:
    """``fresh`` with an adapterhub DoRA holding exactly ``theirs``'s values."""
    import adapterhub
    from adapterhub.contracts.layers import adapted_layers

    adapterhub.attach(fresh, "dora", **config)
    with torch.no_grad():
        for path, layer in adapted_layers(fresh).items():
            src = theirs.base_model.model.get_submodule(path)
            layer.lora_A.copy_(src.lora_A["default"].weight)
            layer.lora_B.copy_(src.lora_B["default"].weight)
            layer.lora_magnitude_vector.copy_(src.lora_magnitude_vector["default"].weight)
    return fresh


def _touch(module: nn.Module) -> None:
    """What an optimizer step does to the adapter as far as caches go: an in-place update of
    every trainable tensor (here ``+= 0``), so nothing computed from them can be reused."""
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(0.0)
                param.grad = None


def _train_step(fn, x: torch.Tensor, grad: torch.Tensor):
    def step() -> None:
        fn(x).backward(grad)
        x.grad = None
        _touch(fn)
    return step


def _infer(fn, x):
    def step() -> None:
        with torch.no_grad():
            fn(x)
    return step


def speed_linear(d: int = 4096, r: int = 16, reps: int = 9) -> dict[str, Any]:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(d, d))
    theirs = _peft(copy.deepcopy(base), r=r, lora_alpha=2 * r, target_modules=["0"])
    ours = _ours_like(theirs, copy.deepcopy(base), r=r, lora_alpha=2 * r, target_modules=["0"])
    layer_t, layer_o = theirs.base_model.model[0], ours[0]
    out: dict[str, Any] = {"shape": [d, d], "r": r}
    for tokens in (64, 512):
        x = torch.randn(tokens, d, requires_grad=True)
        grad = torch.randn(tokens, d)
        with torch.no_grad():
            diff = (layer_o(x) - layer_t(x)).abs().max().item()
        ms = median_ms(alternate({"peft_train": _train_step(layer_t, x, grad),
                                  "ours_train": _train_step(layer_o, x, grad),
                                  "peft_infer": _infer(layer_t, x),
                                  "ours_infer": _infer(layer_o, x)}, reps))
        out[f"{tokens}_tokens"] = {
            "ms": ms, "max_abs_diff": diff,
            "ratio_train": round(ms["ours_train"] / ms["peft_train"], 3),
            "ratio_infer": round(ms["ours_infer"] / ms["peft_infer"], 3)}
    return out


def _minilm_pair() -> tuple[nn.Module, nn.Module, Path]:
    base, path = minilm()
    theirs = _peft(copy.deepcopy(base), **MINILM_CONFIG).eval()
    ours = _ours_like(theirs, copy.deepcopy(base), **MINILM_CONFIG).eval()
    return ours, theirs, path


def _ids(batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 20000, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def speed_minilm(batch: int = 8, seq: int = 64, reps: int = 9) -> dict[str, Any]:
    ours, theirs, _ = _minilm_pair()
    inputs = _ids(batch, seq)
    target = torch.randn(batch, seq, 384)

    def train(model):
        def step() -> None:
            loss = torch.nn.functional.mse_loss(model(**inputs).last_hidden_state, target)
            loss.backward()
            _touch(model)
        return step

    def infer(model):
        def step() -> None:
            with torch.no_grad():
                model(**inputs)
        return step

    ms = median_ms(alternate({"peft_train": train(theirs), "ours_train": train(ours),
                              "peft_infer": infer(theirs), "ours_infer": infer(ours)}, reps))
    return {"tokens": batch * seq, "adapted_layers": 31, "ms": ms,
            "ratio_train": round(ms["ours_train"] / ms["peft_train"], 3),
            "ratio_infer": round(ms["ours_infer"] / ms["peft_infer"], 3)}


def parity() -> dict[str, Any]:
    import peft
    from safetensors.torch import load_file

    import adapterhub
    from adapterhub.engines.apply import apply_adapters
    from adapterhub.io.formats.peft import read_peft, write_peft

    ours, theirs, path = _minilm_pair()
    inputs = _ids(4, 32, seed=1)

    def hidden(model):
        with torch.no_grad():
            return model(**inputs).last_hidden_state

    def fresh():
        return minilm()[0]

    out: dict[str, Any] = {"dtype": "float32", "inputs": "4 x 32 token ids"}
    reference = hidden(theirs)
    out["adapter_effect"] = (hidden(ours) - hidden(fresh())).abs().max().item()
    out["forward"] = (hidden(ours) - reference).abs().max().item()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        package = adapterhub.extract(ours, base=path)
        write_peft(package, tmp / "ours")
        loaded = peft.PeftModel.from_pretrained(fresh(), tmp / "ours").eval()
        out["export_then_peft_load"] = (hidden(loaded) - hidden(ours)).abs().max().item()
        theirs.save_pretrained(tmp / "theirs")
        imported = read_peft(tmp / "theirs")
        back = fresh()
        adapterhub.load(back, imported)
        out["peft_save_then_import"] = (hidden(back.eval()) - reference).abs().max().item()
        out["imported_method"] = imported.manifest.method_name
        apply_adapters(path, [package], tmp / "built", show_progress=False)
        built = load_file(tmp / "built" / "model.safetensors")
        merged = copy.deepcopy(theirs).merge_and_unload().state_dict()
        original = load_file(path / "model.safetensors")
        changed = [k for k in built if not torch.equal(built[k], original[k])]
        out["apply_changed_tensors"] = len(changed)
        out["apply_vs_merge_and_unload"] = max(
            (built[k] - merged[k.removeprefix("bert.")]).abs().max().item() for k in changed)
    out["targets_met"] = {"parity_1e-5": max(out["forward"], out["export_then_peft_load"],
                                             out["peft_save_then_import"]) <= 1e-5,
                          "apply_1e-4": out["apply_vs_merge_and_unload"] <= 1e-4}
    return out


def main() -> dict[str, Any]:
    import peft

    default = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        results: dict[str, Any] = {
            "threads": 1, "peft_version": peft.__version__, "torch_version": torch.__version__,
            "linear_4096": speed_linear(), "minilm": speed_minilm(), "parity": parity()}
    finally:
        torch.set_num_threads(default)
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["machine"] = machine()
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")
    plot(results)
    print(json.dumps({k: results[k] for k in ("linear_4096", "minilm", "parity")}, indent=1))
    return results


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = {"4096² Linear, 64 tokens": results["linear_4096"]["64_tokens"],
             "4096² Linear, 512 tokens": results["linear_4096"]["512_tokens"],
             "MiniLM, 512 tokens": results["minilm"]}
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.38
    for i, (label, case) in enumerate(cases.items()):
        for j, kind in enumerate(("train", "infer")):
            value = case[f"ratio_{kind}"]
            bar = ax.bar(i + (j - 0.5) * width, value, width, color=("C0", "C1")[j],
                         label=("training step", "inference forward")[j] if i == 0 else None)
            ax.bar_label(bar, fmt="%.2f×", fontsize=8)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(cases)), list(cases), fontsize=8)
    ax.set_ylabel("adapterhub time / PEFT time")
    ax.set_title("DoRA: adapterhub vs PEFT use_dora=True (same run, 1 thread, median)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
