"""``adapterhub merge`` and ``adapterhub strategies``: combine adapters into a new version."""

from __future__ import annotations

import json
from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.apply import parse_weights
from adapterhub.cli.output import emit_json, table


def parse_params(pairs: tuple[str, ...]) -> dict:
    """``("majority_sign_method=frequency",)`` → a dict; values parse as JSON when they can."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE; got {pair!r}", param_hint="--param")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


@cli.command()
@click.argument("adapters", nargs=-1, required=True)
@click.option("--strategy", required=True, help="linear, cat, svd, ties, dare_linear, "
              "dare_ties, magnitude_prune (see 'adapterhub strategies').")
@click.option("--weights", help="One weight per adapter, comma-separated (default 1 each).")
@click.option("--density", type=float, help="Fraction of entries kept (pruning strategies).")
@click.option("--rank", type=int, help="Rank of the merged LoRA (default: the strategy's).")
@click.option("--seed", type=int, help="Seed of random strategies (default 0).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A strategy-specific parameter (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory to write the merged package to (must not exist, or be empty).")
@click.option("--json", "as_json", is_flag=True, help="Print the new version as JSON.")
def merge(adapters: tuple[str, ...], strategy: str, weights: str | None,
          density: float | None, rank: int | None, seed: int | None,
          params: tuple[str, ...], out: Path, as_json: bool) -> None:
    """Merge ADAPTERS (package or PEFT directories) into one new LoRA package.

    The new version records its parents (the inputs' digests) and its recipe (strategy,
    weights, parameters, seed).
    """
    from adapterhub.apply import refuse_non_empty
    from adapterhub.cli.files import summary
    from adapterhub.formats import read_adapter
    from adapterhub.merging import merge_adapters

    refuse_non_empty(out)
    packages = [read_adapter(a) for a in adapters]
    merged = merge_adapters(packages, strategy, weights=parse_weights(weights),
                            density=density, rank=rank, seed=seed, **parse_params(params))
    merged.save(out)
    if as_json:
        emit_json(summary(merged.manifest))
        return
    click.echo(f"{out}  {merged.digest}  (lora, r={merged.config.r}, "
               f"{len(merged.manifest.base_model['modules'])} modules)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def strategies(as_json: bool) -> None:
    """List the registered merge strategies and the parameters each takes."""
    from adapterhub.plugins import plugin_manager

    rows = []
    for name, reg in sorted(plugin_manager().registered("strategy").items()):
        rows.append({**reg.obj.describe(), "plugin": reg.plugin})
    if as_json:
        emit_json(rows)
        return
    table([[r["name"], ", ".join([k for k in ("density", "rank", "seed") if r[k]]
                                 + [f"{k}={v}" for k, v in r["params"].items()]) or "-",
            r["description"]] for r in rows], ["STRATEGY", "TAKES", "WHAT IT DOES"])
