"""Commands on adapter files: ``show``, ``import``, ``export``, ``check``."""

from __future__ import annotations

from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.output import emit_json, human_size

FORMATS = click.Choice(["peft"])


def summary(package) -> dict:
    """What ``show`` prints about a package."""
    m = package.manifest
    return {
        "digest": package.digest,
        "method": m.method,
        "quantization": m.quantization,
        "base_model": {k: v for k, v in m.base_model.items() if k != "modules"},
        "modules": len(m.base_model.get("modules", {})),
        "tensors": {name: {"dtype": e.dtype, "shape": list(e.shape), "digest": e.digest}
                    for name, e in sorted(m.tensors.items())},
        "parameters": sum(e.numel for e in m.tensors.values()),
        "bytes": package.nbytes,
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


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(path: Path, as_json: bool) -> None:
    """Summarise an adapter: method, config, base, tensors, digest."""
    from adapterhub.formats import read_adapter

    info = summary(read_adapter(path))
    if as_json:
        emit_json(info)
    else:
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
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, required=True, help="Layout to write.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory to write to.")
def export(path: Path, fmt: str, out: Path) -> None:
    """Write a native adapter in another layout (PEFT)."""
    from adapterhub.formats import read_adapter
    from adapterhub.formats.peft import write_peft

    write_peft(read_adapter(path), out)
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
