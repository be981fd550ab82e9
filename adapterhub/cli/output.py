"""Printing results: JSON for scripts, short aligned text for people."""

from __future__ import annotations

import json
from typing import Any

import click

from adapterhub.contracts.progress import human_size


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def when(version: Any) -> str:
    return version.created_at.strftime("%Y-%m-%d %H:%M")


def version_line(version: Any) -> str:
    tags = f"  [{', '.join(version.tags)}]" if version.tags else ""
    return f"{version.ref}  {version.digest}{tags}"


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
