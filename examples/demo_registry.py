"""The registry step of the demo: push an adapter, tag it, list, show, pull it back as PEFT.

``run(workdir, adapter_dir)`` is called by ``examples/demo.py``; run this file alone to try
it on a small generated LoRA adapter.
"""

from __future__ import annotations

import pathlib
import tempfile


def run(workdir: pathlib.Path, adapter_dir: pathlib.Path) -> None:
    """Push ``adapter_dir`` (native or PEFT) into a registry under ``workdir`` and back."""
    from adapterhub.cli.output import human_size
    from adapterhub.io.formats.peft import CONFIG_FILE, WEIGHTS_FILE
    from adapterhub.registry import Registry

    workdir.mkdir(parents=True, exist_ok=True)
    with Registry(workdir / "registry.db") as reg:
        print(f"registry  {reg.url}")
        first = reg.push(adapter_dir, "demo/adapter", message="demo adapter", progress=False)
        print(f"push      {first.version.ref}  {first.version.digest[:23]}…  (new version)")
        again = reg.push(adapter_dir, "demo/adapter", progress=False)
        state = "unchanged: same digest" if not again.created else "new version"
        print(f"push      {again.version.ref}  again → {state}, no bytes sent")

        reg.tag(first.version.ref, "demo")
        print("tag       demo/adapter:demo → " + reg.resolve("demo/adapter:demo").ref)

        for version in reg.list():
            print(f"list      {version.ref}  [{', '.join(version.tags)}]  {version.method}  "
                  f"{human_size(version.size)}  {version.message or ''}")

        shown = reg.resolve("demo/adapter:demo")
        manifest = shown.manifest
        config = manifest.method["config"]
        usage = reg.usage()
        print(f"show      {shown.ref}: {manifest.method_name} r={config.get('r')}, "
              f"{len(manifest.tensors)} tensors, base {manifest.base_model.get('name') or '-'}, "
              f"by {shown.author}")
        print(f"stored    {human_size(usage.stored_bytes)} for {human_size(usage.raw_bytes)} of "
              f"tensors ({usage.stored_bytes / max(1, usage.raw_bytes):.2f}x, zstd)")

        out = workdir / "pulled-peft"
        reg.pull("demo/adapter:demo", out=out, format="peft", progress=False)
        print(f"pull      {out}: {CONFIG_FILE}, {WEIGHTS_FILE} (PEFT layout)")

        with Registry(workdir / "other-registry.db") as other:
            copied = other.pull("demo/adapter:demo", source=str(workdir / "registry.db"),
                                progress=False)
            same = "same digest" if copied.digest == shown.digest else "DIGEST DIFFERS"
            print(f"pull      into a second registry: {copied.ref}, {same}, every byte re-hashed")

        report = reg.verify()
        print(f"verify    {'ok' if report.ok else 'PROBLEMS'}: {report.blobs_checked} blobs, "
              f"{report.versions_checked} versions")


def tiny_adapter(directory: pathlib.Path) -> pathlib.Path:
    """A small bf16 LoRA package, to run a demo step on its own (and in tests)."""
    import torch

    from adapterhub.io.package import AdapterPackage

    g = torch.Generator().manual_seed(0)
    tensors = {"lin0.lora_A": torch.randn(4, 16, generator=g),
               "lin0.lora_B": torch.randn(32, 4, generator=g) * 0.01,
               "lin1.lora_A": torch.randn(4, 32, generator=g),
               "lin1.lora_B": torch.randn(16, 4, generator=g) * 0.01}
    package = AdapterPackage.build("lora", {"r": 4, "lora_alpha": 8,
                                            "target_modules": ["lin0", "lin1"]},
                                   {k: v.to(torch.bfloat16) for k, v in tensors.items()},
                                   base_name="tiny-mlp")
    return package.save(directory)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        run(root / "work", tiny_adapter(root / "adapter"))
