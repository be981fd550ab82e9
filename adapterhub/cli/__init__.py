"""The ``adapterhub`` command line: a thin layer over the Python API.

Every :class:`~adapterhub.errors.AdapterHubError` (and every ``OSError``: a missing path, a
full disk) becomes one line on stderr (what went wrong and what to do next) and exit code 1;
``ADAPTERHUB_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
from typing import Any

import click

from adapterhub import __version__
from adapterhub.errors import AdapterHubError


class CLIError(click.ClickException):
    """An AdapterHubError on its way to the terminal."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.message}", err=True)


class AdapterHubGroup(click.Group):
    """The root group: turns adapterhub errors into one-line messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdapterHubError as exc:
            if os.environ.get("ADAPTERHUB_DEBUG"):
                raise
            raise CLIError(exc.one_line()) from exc
        except OSError as exc:  # a path that cannot be read or written, a full disk
            if os.environ.get("ADAPTERHUB_DEBUG"):
                raise
            where = f": {exc.filename}" if exc.filename else ""
            raise CLIError(f"{exc.strerror or exc}{where}.") from exc


@click.group(cls=AdapterHubGroup)
@click.version_option(__version__, prog_name="adapterhub")
def cli() -> None:
    """A registry and hub for parameter-efficient fine-tuning deltas."""


def _build() -> None:
    """Import every module of this package (each adds its commands), then plugins' commands."""
    import importlib
    import pkgutil

    from adapterhub.contracts.plugins import plugin_manager

    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    plugin_manager().add_commands(cli)


_build()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="adapterhub")

