"""``adapterhub remote add/list/remove``: named remote registries (kept in the local one)."""

from __future__ import annotations

import re

import click

from adapterhub.cli import cli
from adapterhub.cli.common import db_option, json_option
from adapterhub.cli.output import emit_json, table


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
    click.echo(f"{info.name} -> {hide_password(info.url)}")


@remote.command("list")
@json_option
@db_option
def remote_list(as_json: bool, db: str | None) -> None:
    """List remotes."""
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        remotes = reg.remotes()
    rows = [{**r.to_dict(), "url": hide_password(r.url)} for r in remotes]
    if as_json:
        emit_json(rows)
    else:
        table([[r["name"], r["url"]] for r in rows], ["NAME", "URL"])


def hide_password(url: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host``."""
    return re.sub(r"^([a-z0-9+.-]+://[^/:@]*:)[^/@]*@", r"\1***@", url)


@remote.command("remove")
@click.argument("name")
@db_option
def remote_remove(name: str, db: str | None) -> None:
    """Forget the remote NAME."""
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        info = reg.remove_remote(name)
    click.echo(f"removed {info.name} ({hide_password(info.url)})")
