"""Options and helpers shared by commands that take an adapter (a directory or a REF)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from adapterhub.io.package import AdapterPackage

db_option = click.option(
    "--db", metavar="URL",
    help="Registry: a SQLAlchemy URL or a SQLite path [env ADAPTERHUB_DB; default "
         "$ADAPTERHUB_HOME/registry.db].")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
force_option = click.option("--force", is_flag=True,
                            help="Replace a non-empty --out directory (as a whole, atomically).")


expert_option = click.option("--expert", metavar="NAME",
                             help="For a mixture-of-experts version: the expert to fold in.")


def packages_to_fold(sources: tuple[str, ...], db: str | None, expert: str | None
                     ) -> list[AdapterPackage]:
    """The adapters ``apply``/``merge`` fold: each source's package, or its chosen expert
    (experts come from the source's registry, or the local one for a directory)."""
    from adapterhub.registry import Registry
    from adapterhub.registry.sources import RegistrySource, fold_component, resolve_source

    packages = []
    for source in sources:
        resolved = resolve_source(source, db=db)
        registry = resolved.registry if isinstance(resolved, RegistrySource) else None
        package = resolved.package()
        if package.method.composite:
            registry = registry or Registry(db)
        packages.append(fold_component(package, expert, registry=registry))
    return packages


def parse_labels(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("k=v", ...)`` → ``{"k": "v"}``."""
    from adapterhub.errors import RefError

    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise RefError(f"labels are KEY=VALUE; got {pair!r}", hint="e.g. --label dataset=v2")
        labels[key.strip()] = value
    return labels
