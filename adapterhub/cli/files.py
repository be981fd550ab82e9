"""Commands on adapter files: ``show``, ``import``, ``export``, ``check``."""

from __future__ import annotations

from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.common import db_option, force_option, json_option
from adapterhub.cli.output import emit_json
from adapterhub.contracts.progress import human_size
from adapterhub.registry.sources import resolve_source

FORMATS = click.Choice(["peft"])


def summary(m) -> dict:
    """What ``show`` prints about an adapter, from its manifest."""
    return {
        "digest": m.digest,
        "method": m.method,
        "quantization": m.quantization,
        "base_model": {k: v for k, v in m.base_model.items() if k != "modules"},
        "modules": len(m.base_model.get("modules", {})),
        "tensors": {name: {"dtype": e.dtype, "shape": list(e.shape), "digest": e.digest}
                    for name, e in sorted(m.tensors.items())},
        "parameters": sum(e.numel for e in m.tensors.values()),
        "bytes": m.nbytes,
        "parents": list(m.parents),
        "recipe": m.recipe,
        "metrics": m.metrics,
        "labels": m.labels,
    }


def print_summary(info: dict) -> None:
    method = info["method"]
    base = info["base_model"]
    click.echo(f"digest:      {info['digest']}")
    click.echo(f"method:      {method['name']} (format {method['version']})")
    click.echo("config:      " + ", ".join(f"{k}={v!r}" for k, v in
                                          sorted(method["config"].items())))
    if info["quantization"]:
        click.echo(f"quantized:   {info['quantization']}")
    click.echo(f"base model:  {base.get('name') or '-'}"
               + (f" @ {base['revision']}" if base.get("revision") else ""))
    click.echo(f"fingerprint: {base.get('fingerprint') or '-'}")
    click.echo(f"modules:     {info['modules']}")
    click.echo(f"tensors:     {len(info['tensors'])} ({info['parameters']:,} parameters, "
               f"{human_size(info['bytes'])})")
    for key in ("parents", "metrics", "labels"):
        if info[key]:
            click.echo(f"{key + ':':<13}{info[key]}")
    if info["recipe"]:
        click.echo(f"recipe:      {info['recipe']}")


def version_fields(version) -> dict:
    """What ``show REF`` adds for a version in a registry."""
    return {"ref": version.ref, "name": version.name, "number": version.number,
            "tags": list(version.tags), "author": version.author, "message": version.message,
            "created_at": version.created_at.isoformat()}


@cli.command()
@click.argument("source")
@json_option
@db_option
def show(source: str, as_json: bool, db: str | None) -> None:
    """Summarise an adapter (a directory or a REF): method, config, base, tensors, digest."""
    resolved = resolve_source(source, db=db)
    if resolved.version is None:
        resolved.package()  # a directory: read and verify every tensor, as before
    info = summary(resolved.manifest)
    if resolved.version is not None:
        info.update(version_fields(resolved.version))
    if as_json:
        emit_json(info)
        return
    if resolved.version is not None:
        v = resolved.version
        click.echo(f"ref:         {v.ref}" + (f"  [{', '.join(v.tags)}]" if v.tags else ""))
        click.echo(f"created:     {info['created_at']} by {v.author or '-'}")
        if v.message:
            click.echo(f"message:     {v.message}")
    print_summary(info)


@cli.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, required=True, help="Layout of PATH.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory to write the native package to.")
@click.option("--base", type=click.Path(path_type=Path),
              help="Base checkpoint directory, to record its fingerprint.")
@force_option
def import_(path: Path, fmt: str, out: Path, base: Path | None, force: bool) -> None:
    """Convert an adapter from another layout into a native package."""
    from adapterhub.io.formats.peft import read_peft
    from adapterhub.io.outdir import output_dir

    package = read_peft(path, base=base)
    with output_dir(out, force=force) as staging:
        package.save(staging)
    click.echo(f"{out}  {package.digest}")


@cli.command()
@click.argument("source")
@click.argument("dest", required=False, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["peft", "vllm", "trtllm"]), default="peft",
              show_default=True, help="peft: PEFT's layout; vllm: PEFT's layout with each "
              "module's scaling folded into lora_B and lora_alpha = r; trtllm: TensorRT-LLM's "
              "model.lora_weights.npy and model.lora_config.npy.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]),
              help="--format trtllm: dtype of model.lora_weights.npy (match the engine's; "
                   "default float16).")
@click.option("--base", type=click.Path(exists=True, path_type=Path),
              help="--format trtllm: base checkpoint, to normalize DoRA magnitudes.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Directory to write to (or the cache root with --layout hf-cache); may "
                   "also be given as DEST.")
@click.option("--layout", type=click.Choice(["dir", "hf-cache"]), default="dir",
              show_default=True, help="dir: the files in --out; hf-cache: a Hugging Face cache "
              "tree under --out that loads offline by repo id.")
@click.option("--repo-id", help="Repository id for --layout hf-cache (namespace/name; "
                                "default: the REF's repository).")
@click.option("--revision", help="The ref --layout hf-cache points at the export (default: "
                                 "v<N> for a REF, else main).")
@force_option
@db_option
def export(source: str, dest: Path | None, fmt: str, dtype: str | None, base: Path | None,
           out: Path | None, layout: str, repo_id: str | None, revision: str | None,
           force: bool, db: str | None) -> None:
    """Write an adapter (a directory or a REF) in a serving layout, as files or an HF cache.

    \b
    adapterhub export ADAPTER --format vllm --out DIR
    adapterhub export ADAPTER --format trtllm [--dtype bfloat16] --out DIR
    adapterhub export ns/name@2 --layout hf-cache CACHE_DIR
    then: HF_HUB_OFFLINE=1 HF_HUB_CACHE=CACHE_DIR python -c \\
          "PeftModel.from_pretrained(base, 'ns/name', revision='v2')"
    """
    from adapterhub.io.formats.hf_cache import write_hf_cache
    from adapterhub.io.formats.peft import layout_files, peft_layout, write_files
    from adapterhub.io.formats.vllm import vllm_layout
    from adapterhub.io.outdir import output_dir, refuse_non_empty

    if (dest is None) == (out is None):
        raise click.UsageError("give the output directory once: as DEST or as --out")
    if fmt != "trtllm" and (dtype or base):
        raise click.UsageError("--dtype and --base go with --format trtllm")
    if fmt == "trtllm" and layout == "hf-cache":
        raise click.UsageError("--layout hf-cache holds PEFT files; use --format peft or vllm")
    target = dest or out
    resolved = resolve_source(source, db=db)
    if resolved.version is not None:
        repo_id = repo_id or resolved.version.name
        revision = revision or f"v{resolved.version.number}"
    revision = revision or "main"
    if layout == "hf-cache" and not repo_id:
        raise click.UsageError("--layout hf-cache needs --repo-id namespace/name")
    if layout == "dir" and not force:
        refuse_non_empty(target)  # before any work
    package = resolved.package()
    if fmt == "trtllm":
        from adapterhub.io.formats.trtllm import trtllm_files

        files = trtllm_files(package, dtype=dtype or "float16", base=base)
    else:
        files = layout_files(*(vllm_layout if fmt == "vllm" else peft_layout)(package))
    if layout == "hf-cache":
        snapshot = write_hf_cache(files, target, repo_id, revision=revision)
        click.echo(f"{snapshot}  ({repo_id}@{revision})")
    else:
        with output_dir(target, force=force) as staging:
            write_files(files, staging)
        click.echo(f"{target}")


@cli.command()
@click.argument("source")
@click.option("--base", type=click.Path(path_type=Path),
              help="Base checkpoint directory (safetensors; headers only are read).")
@click.option("--target", "targets", multiple=True,
              metavar="vllm[:max_rank=N]|trtllm[:max_rank=N]|peft",
              help="A serving target to lint for (repeatable).")
@json_option
@db_option
def check(source: str, base: Path | None, targets: tuple[str, ...], as_json: bool,
          db: str | None) -> None:
    """Check that an adapter (a directory or a REF) fits a base checkpoint (--base, from
    headers only) and what a serving engine would refuse (--target). Exits 1 on any problem."""
    from adapterhub.io.checkpoint import Checkpoint
    from adapterhub.engines.compat import check_base
    from adapterhub.io.formats.lint import check_target

    if base is None and not targets:
        raise click.UsageError("give --base BASE, --target TARGET, or both")
    on_disk = Path(source).exists()
    resolved = resolve_source(source, db=db) if base or not on_disk else None
    report = check_base(resolved.manifest, Checkpoint(base)) if base else None
    # a directory is linted as it is on disk (a PEFT directory's own files); a REF as a package
    subject = source if on_disk else resolved.package()
    linted = [check_target(subject, spec) for spec in targets]
    failed = (report is not None and not report.ok) or any(not t.ok for t in linted)
    if as_json:
        if not targets:
            emit_json(report.to_dict())
        else:
            emit_json({"base": report.to_dict() if report else None,
                       "targets": [t.to_dict() for t in linted]})
        if failed:
            raise SystemExit(1)
        return
    if report is not None:
        if targets and not report.ok:
            click.echo("base: " + "; ".join(report.problems))
        else:
            report.raise_for_problems()
            note = {True: "same base (fingerprint matches)",
                    False: "fingerprint differs (a different checkpoint with the same shapes)",
                    None: "the adapter records no base fingerprint"}[report.fingerprint_match]
            click.echo(f"ok: {len(report.modules)} modules fit; {note}")
    for t in linted:
        options = ",".join(f"{k}={v}" for k, v in t.options.items())
        label = t.target + (f":{options}" if options else "")
        click.echo(f"{label}: " + ("ok" if t.ok else f"{len(t.problems)} problem(s)"))
        for problem in t.problems:
            click.echo(f"  - {problem}")
        for note in t.notes:
            click.echo(f"  note: {note}")
    if failed:
        raise SystemExit(1)
