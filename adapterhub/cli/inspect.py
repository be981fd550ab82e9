"""``adapterhub plugins`` and ``adapterhub methods``: what is installed."""

from __future__ import annotations

import click

from adapterhub.cli import cli
from adapterhub.cli.common import json_option
from adapterhub.cli.output import emit_json, table


@cli.command()
@json_option
def plugins(as_json: bool) -> None:
    """List loaded plugins and what each registered."""
    from adapterhub.contracts.plugins import plugin_manager

    infos = [info.to_dict() for info in plugin_manager().plugin_infos()]
    if as_json:
        emit_json(infos)
        return
    rows = []
    for info in infos:
        registered = "; ".join(f"{kind}: {', '.join(names)}"
                               for kind, names in sorted(info["registered"].items()))
        status = "ok" if info["ok"] else "FAILED: " + " | ".join(info["errors"])
        rows.append([info["name"], f"{info['distribution'] or '-'} {info['version'] or ''}",
                     registered or "-", status])
    table(rows, ["PLUGIN", "DISTRIBUTION", "REGISTERED", "STATUS"])


@cli.command()
@json_option
def methods(as_json: bool) -> None:
    """List registered methods and quantizers with their config fields."""
    from adapterhub.contracts.plugins import plugin_manager

    pm = plugin_manager()
    out = {"methods": [], "quantizers": []}
    for kind, key in (("method", "methods"), ("quantizer", "quantizers")):
        for name, reg in sorted(pm.registered(kind).items()):
            cls = reg.obj
            entry = {"name": name, "plugin": reg.plugin, "description": cls.description,
                     "config": cls.Config.describe()}
            if kind == "method":
                entry.update(format_version=cls.format_version, peft_type=cls.peft_type,
                             layer_kinds=list(cls.layer_kinds))
            out[key].append(entry)
    if as_json:
        emit_json(out)
        return
    for key in ("methods", "quantizers"):
        if not out[key]:
            continue
        click.echo(f"{key.upper()}")
        for entry in out[key]:
            click.echo(f"  {entry['name']}  ({entry['plugin']}) {entry['description']}")
            for f in entry["config"]:
                click.echo(f"      {f['name']}: {f['type']} = {f['default']!r}  {f['help']}")
