"""``adapterhub apply`` on NF4 bases: time and peak memory, at two model sizes.

A random-init bf16 Llama with TinyLlama's widths (``benchmarks.apply.SHAPE``) but 6 layers,
then 12, is quantized with ``adapterhub quantize`` (NF4, double quantisation); a rank-16 LoRA
on every linear layer of every block is stored as an adapter trained on that quantization.
Each command runs in its own process with its process tree's RssAnon sampled from /proc
(``benchmarks.apply.measure``), fastest of three runs:

- ``adapterhub apply NF4 QLORA`` (dequantize → bf16, the default);
- ``adapterhub apply NF4 QLORA --requantize`` (stays NF4, rounding error recorded);
- ``adapterhub apply BF16 QLORA`` (deq(Q(W)) rebuilt from the bf16 base);
- ``cp -r`` of the NF4 checkpoint, as the floor.

Quantized weights are processed whole, so memory should follow the largest weight (5632×2048
here), not the model: the 12-layer figures against the 6-layer ones show it. Writes
``benchmarks/results/apply_quantized.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.apply import SHAPE, write_lora, write_model
from benchmarks.harness import best_of

RESULTS = Path(__file__).parent / "results" / "apply_quantized.json"
LAYERS = (6, 12)
RUNS = 3


def qlora_package(peft_dir: Path, out: Path) -> None:
    """The PEFT LoRA as a native package that records an NF4 base (what QLoRA extracts)."""
    from adapterhub.io.formats import read_adapter

    package = read_adapter(peft_dir)
    package.with_manifest(quantization={"name": "nf4", "config": {
        "blocksize": 64, "double_quant": True, "compute_dtype": "bfloat16"}}).save(out)


def one_size(tmp: Path, layers: int) -> dict:
    bin_dir = Path(sys.executable).parent
    cli = str(bin_dir / "adapterhub")
    quiet = {"ADAPTERHUB_QUIET": "1"}
    base, nf4, lora, pkg = (tmp / f"{name}{layers}" for name in ("base", "nf4", "lora", "pkg"))
    size = write_model(base, layers)
    write_lora(lora, layers)
    qlora_package(lora, pkg)
    subprocess.run([cli, "quantize", str(base), "--out", str(nf4), "--quiet"], check=True)
    out = tmp / "out"
    runs = {
        "cp_nf4": best_of(RUNS, ["cp", "-r", str(nf4), str(out)], out, (nf4,)),
        "dequantize": best_of(RUNS, [cli, "apply", str(nf4), str(pkg), "--out", str(out)],
                              out, (nf4, pkg), quiet),
        "requantize": best_of(RUNS, [cli, "apply", str(nf4), str(pkg), "--out", str(out),
                                     "--requantize"], out, (nf4, pkg), quiet),
        "roundtrip": best_of(RUNS, [cli, "apply", str(base), str(pkg), "--out", str(out)],
                             out, (base, pkg), quiet),
    }
    nf4_bytes = sum(f.stat().st_size for f in nf4.glob("*.safetensors"))
    for path in (base, nf4, lora, pkg):
        shutil.rmtree(path)
    return {"num_hidden_layers": layers, "bf16_bytes": size, "nf4_bytes": nf4_bytes,
            "runs": runs}


def main() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="adapterhub-bench-apply-nf4-"))
    results: dict = {"model": {**{k: v for k, v in SHAPE.items() if k != "num_hidden_layers"},
                               "dtype": "bfloat16", "quantization": "nf4, blocksize 64, "
                                                                    "double quant"},
                     "lora": {"r": 16, "targets": "every linear layer of every block"},
                     "load_average_at_start": os.getloadavg()}
    try:
        sizes = [one_size(tmp, layers) for layers in LAYERS]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["sizes"] = sizes
    small, large = (s["runs"] for s in sizes)
    results["ratios"] = {
        f"{kind}_anon_2x_vs_1x": round(large[kind]["peak_anon_mb"] / small[kind]["peak_anon_mb"],
                                       3)
        for kind in ("dequantize", "requantize", "roundtrip")}
    results["machine"] = {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"sizes": [{"layers": s["num_hidden_layers"], "bf16_bytes": s["bf16_bytes"],
                                 "nf4_bytes": s["nf4_bytes"],
                                 "runs": {k: {key: v[key] for key in
                                              ("wall_s", "cpu_s", "peak_anon_mb")}
                                          for k, v in s["runs"].items()}} for s in sizes],
                      "ratios": results["ratios"]}, indent=2))
    return results


if __name__ == "__main__":
    main()
