"""Options and helpers shared by commands that take an adapter (a directory or a REF)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from adapterhub.sources import Source

db_option = click.option("--db", metavar="URL", help="Registry for a REF [env ADAPTERHUB_DB].")


def open_source(source: str, db: str | None) -> Source:
    """Resolve a CLI adapter argument; the registry is opened only when it is a REF."""
    from adapterhub.registry import Registry
    from adapterhub.sources import resolve_source

    registry = None if Path(source).exists() else Registry(db)
    return resolve_source(source, registry=registry)
