"""Render the CLI reference (docs/cli.md) from the commands' own help.

``python -m adapterhub.cli._reference > docs/cli.md`` regenerates it; a test keeps the
committed page equal to this output, so the reference never drifts from the code.
"""

from __future__ import annotations

import click

HEADER = """# CLI reference

Generated from the commands' `--help` by `python -m adapterhub.cli._reference > docs/cli.md`;
a test keeps this page in step with the code.

Every command that fails prints one line, `Error: <what went wrong>. <what to do next>.`, on
stderr and exits with status 1; set `ADAPTERHUB_DEBUG=1` to see the traceback instead.
"""


def _commands(group: click.Group, prefix: str):
    ctx = click.Context(group, info_name=prefix)
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path)


def render() -> str:
    from adapterhub.cli import cli

    parts = [HEADER]
    for path, command in _commands(cli, "adapterhub"):
        ctx = click.Context(command, info_name=path)
        usage = command.get_usage(ctx).removeprefix("Usage: ")
        parts.append(f"## {path}\n\n```\n{usage}\n```\n")
        if command.help:
            parts.append(click.unstyle(command.help).strip() + "\n")
        rows = [param.get_help_record(ctx) for param in command.get_params(ctx)
                if isinstance(param, click.Option)]
        rows = [r for r in rows if r is not None and r[0] != "--help"]
        if rows:
            parts.append("| option | meaning |\n|---|---|")
            for opts, text in rows:
                text = text.replace("|", "\\|").replace("\n", " ")
                parts.append(f"| `{opts}` | {text} |")
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
