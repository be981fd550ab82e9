"""Commands on adapter files: ``show``, ``import``, ``export``, ``check``."""

from __future__ import annotations

from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.output import emit_json, human_size

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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--db", metavar="URL", help="Registry for a REF [env ADAPTERHUB_DB].")
def show(source: str, as_json: bool, db: str | None) -> None:
    """Summarise an adapter (a directory or a REF): method, config, base, tensors, digest."""
    from adapterhub.registry import Registry
    from adapterhub.sources import resolve_source

    registry = None if Path(source).exists() else Registry(db)
    resolved = resolve_source(source, registry=registry)
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
def import_(path: Path, fmt: str, out: Path, base: Path | None) -> None:
    """Convert an adapter from another layout into a native package."""
    from adapterhub.formats.peft import read_peft

    package = read_peft(path, base=base)
    package.save(out)
    click.echo(f"{out}  {package.digest}")


@cli.command()
@click.argument("source")
@click.option("--format", "fmt", type=FORMATS, required=True, help="Layout to write.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory to write to.")
@click.option("--db", metavar="URL", help="Registry for a REF [env ADAPTERHUB_DB].")
def export(source: str, fmt: str, out: Path, db: str | None) -> None:
    """Write an adapter (a directory or a REF) in another layout (PEFT)."""
    from adapterhub.formats.peft import write_peft
    from adapterhub.registry import Registry
    from adapterhub.sources import load_source

    registry = None if Path(source).exists() else Registry(db)
    write_peft(load_source(source, registry=registry), out)
    click.echo(f"{out}")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--base", type=click.Path(path_type=Path), required=True,
              help="Base checkpoint directory (safetensors; headers only are read).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def check(path: Path, base: Path, as_json: bool) -> None:
    """Check that an adapter fits a base checkpoint, from headers only."""
    from adapterhub.checkpoint import Checkpoint
    from adapterhub.compat import check_base
    from adapterhub.formats import read_adapter

    report = check_base(read_adapter(path).manifest, Checkpoint(base))
    if as_json:
        emit_json(report.to_dict())
        if not report.ok:
            raise SystemExit(1)
        return
    report.raise_for_problems()
    note = {True: "same base (fingerprint matches)",
            False: "fingerprint differs (a different checkpoint with the same shapes)",
            None: "the adapter records no base fingerprint"}[report.fingerprint_match]
    click.echo(f"ok: {len(report.modules)} modules fit; {note}")
