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
    """The root group: turns adapterhub errors into one-line messages, and asks plugins for
    their commands only when a name is not a built-in one (or for ``--help``), so that
    everyday commands start without scanning installed distributions' entry points. A
    plugin therefore cannot replace a built-in command."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if not self._plugins_added:
            self._plugins_added = True
            from adapterhub.contracts.plugins import plugin_manager

            plugin_manager().add_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

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
    """Import every module of this package (each adds its commands)."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_build()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="adapterhub")

