"""``adapterhub remote add/list/remove``: named remote registries (kept in the local one)."""

from __future__ import annotations

import click

from adapterhub.cli import cli
from adapterhub.cli.output import emit_json, table
from adapterhub.cli.registry import db_option, json_option


@cli.group()
def remote() -> None:
    """Manage named remote registries."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@db_option
def remote_add(name: str, url: str, db: str | None) -> None:
    """Remember URL (a registry path or URL) as NAME."""
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        info = reg.add_remote(name, url)
    click.echo(f"{info.name} -> {info.url}")


@remote.command("list")
@json_option
@db_option
def remote_list(as_json: bool, db: str | None) -> None:
    """List remotes."""
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        remotes = reg.remotes()
    if as_json:
        emit_json([r.to_dict() for r in remotes])
    else:
        table([[r.name, r.url] for r in remotes], ["NAME", "URL"])


@remote.command("remove")
@click.argument("name")
@db_option
def remote_remove(name: str, db: str | None) -> None:
    """Forget the remote NAME."""
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        info = reg.remove_remote(name)
    click.echo(f"removed {info.name} ({info.url})")
