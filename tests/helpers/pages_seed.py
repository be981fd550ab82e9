"""A hub worth browsing, built through the real Python API and CLI: a tiny base checkpoint,
``team/bot`` with three versions (each fine-tuned from the one before, with metrics, CI
labels and tags; the newest with a model card), ``team/topic``, and ``team/merged``, a
TIES merge of ``team/bot:prod`` and ``team/topic`` made by ``adapterhub merge``."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from adapterhub.cli import cli
from adapterhub.io.checkpoint import fingerprint_of
from adapterhub.io.package import AdapterPackage
from adapterhub.registry import Registry

MODULES = ("layers.0.q", "layers.0.v", "layers.1.q", "layers.1.v")
D_IN, D_OUT, RANK = 16, 32, 4
BASE_NAME = "tiny-mlp"
RUN_URL = "https://git.example.com/team/bot/actions/runs/{run}"

CARD = """---
license: apache-2.0
base_model: tiny-mlp
tags: [lora, support, adapterhub]
datasets: [support-tickets-v3]
---
# Support bot adapter

A LoRA adapter (r=4) that routes **support tickets**, trained on `tiny-mlp`.

## Evaluation

| split | accuracy |
|-------|----------|
| dev   | 0.91     |
| test  | 0.89     |

## Usage

```python
PeftModel.from_pretrained(base, "team/bot", revision="prod")
```

See the [training run](https://git.example.com/team/bot/actions/runs/1003).
"""

#: (metrics, message, tags, git sha) of team/bot@1..3
BOT_VERSIONS = [
    ({"accuracy": 0.81, "loss": 0.62}, "first cut", ["baseline"], "4f2c9e1a"),
    ({"accuracy": 0.86, "loss": 0.48}, "more tickets", [], "9b07d3c2"),
    ({"accuracy": 0.91, "loss": 0.41}, "longer schedule", ["prod"], "c31e58f0"),
]


def write_base(directory: Path) -> str:
    """A tiny base checkpoint (``model.safetensors``); returns its fingerprint."""
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    weights = {f"{m}.weight": torch.randn(D_OUT, D_IN, generator=gen) for m in MODULES}
    save_file(weights, str(directory / "model.safetensors"))
    return fingerprint_of((n, "F32", tuple(t.shape)) for n, t in weights.items())


def lora(seed: int, fingerprint: str, **fields) -> AdapterPackage:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in MODULES:
        tensors[f"{module}.lora_A"] = torch.randn(RANK, D_IN, generator=gen) * 0.1
        tensors[f"{module}.lora_B"] = torch.randn(D_OUT, RANK, generator=gen) * 0.1
    return AdapterPackage.build("lora", {"r": RANK, "lora_alpha": 8,
                                         "target_modules": ["q", "v"]},
                                tensors, base_name=BASE_NAME, base_fingerprint=fingerprint,
                                **fields)


def seed_hub(db: Path, base_dir: Path) -> dict[str, str]:
    """Fill registry ``db``; returns ``{ref: digest}`` of every version it made."""
    fingerprint = write_base(base_dir)
    made: dict[str, str] = {}
    with Registry(db) as reg:
        parent: tuple[str, ...] = ()
        for i, (metrics, message, tags, sha) in enumerate(BOT_VERSIONS, start=1):
            labels = {"ci.provider": "github", "git.sha": sha, "git.branch": "main",
                      "ci.run_url": RUN_URL.format(run=1000 + i)}
            if i == len(BOT_VERSIONS):
                labels["card"] = CARD
            package = lora(i, fingerprint, metrics=metrics, labels=labels, parents=parent)
            version = reg.push(package, "team/bot", message=message, tags=tags,
                               author="ci-bot", progress=False).version
            made[version.ref] = version.digest
            parent = (version.digest,)
        topic = reg.push(lora(7, fingerprint, metrics={"accuracy": 0.77}), "team/topic",
                         message="topic classifier", author="ana", progress=False).version
        made[topic.ref] = topic.digest
    result = CliRunner().invoke(cli, [
        "merge", "team/bot:prod", "team/topic@1", "--strategy", "ties", "--weights", "0.7,0.3",
        "--density", "0.5", "--to", "team/merged", "-m", "support + topic", "--db", str(db)],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with Registry(db) as reg:
        merged = reg.resolve("team/merged")
        assert merged.manifest.recipe["strategy"] == "ties"
        made[merged.ref] = merged.digest
    return made
