"""Printing results: JSON for scripts, short aligned text for people."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from adapterhub.contracts.progress import human_size


def emit_json(data: Any) -> None:
    """Indented for a terminal; compact when piped (Python's JSON encoder is several times
    slower with ``indent``, which shows on listings of thousands of versions)."""
    indent = 2 if sys.stdout.isatty() else None
    click.echo(json.dumps(data, indent=indent, sort_keys=True, default=str))


def table(rows: list[list[str]], header: list[str]) -> None:
    """Columns padded to their widest cell, written at once (listings run to thousands)."""
    lines = [list(map(str, row)) for row in [header, *rows]]
    widths = [max(map(len, column)) for column in zip(*lines)]
    row_format = "  ".join(f"{{:<{width}}}" for width in widths)
    click.echo("\n".join(row_format.format(*row).rstrip() for row in lines))


def when(version: Any) -> str:
    return version.created_at.isoformat(" ", "minutes")[:16]


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
