"""Options and argument parsers shared by the commands (which share nothing else)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import click

db_option = click.option(
    "--db", metavar="URL",
    help="Registry: a SQLAlchemy URL or a SQLite path [env ADAPTERHUB_DB; default "
         "$ADAPTERHUB_HOME/registry.db].")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
from_option = click.option(
    "--from", "where", metavar="URL|REMOTE",
    help="Work on this registry instead: a hub URL (over HTTP, as your token allows), a remote "
         "name, or another registry's path or URL.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
force_option = click.option("--force", is_flag=True,
                            help="Replace a non-empty --out directory (as a whole, atomically).")


expert_option = click.option("--expert", metavar="NAME",
                             help="For a mixture-of-experts version: the expert to fold in.")


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


def parse_weights(value: str | None) -> list[float] | None:
    """``"1,0.5,-1"`` → ``[1.0, 0.5, -1.0]``."""
    if value is None:
        return None
    try:
        return [float(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers; got {value!r}") from None


class Duration(click.ParamType):
    """``90``, ``30s``, ``15m``, ``1h``, ``2d``."""

    name = "duration"
    _units = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value: Any, param, ctx) -> timedelta:
        if isinstance(value, timedelta):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if not match:
            self.fail(f"{value!r} is not a duration such as 0, 30s, 15m, 1h or 2d", param, ctx)
        return timedelta(seconds=float(match.group(1)) * self._units[match.group(2)])
