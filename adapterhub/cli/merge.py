"""``adapterhub merge`` and ``adapterhub strategies``: combine adapters into a new version."""

from __future__ import annotations

import json
from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.common import db_option, expert_option, json_option, parse_weights
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
@click.option("--to", "to", metavar="NS/NAME",
              help="Store the merged version in the registry under this name.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Also (or instead) write the merged package to this directory (must not "
                   "exist, or be empty).")
@click.option("-m", "--message", help="Message of the new version (with --to).")
@expert_option
@click.option("--json", "as_json", is_flag=True, help="Print the new version as JSON.")
@db_option
def merge(adapters: tuple[str, ...], strategy: str, weights: str | None,
          density: float | None, rank: int | None, seed: int | None,
          params: tuple[str, ...], to: str | None, out: Path | None, message: str | None,
          expert: str | None, as_json: bool, db: str | None) -> None:
    """Merge ADAPTERS (directories or REFs) into one new LoRA version.

    The new version records its parents (the inputs' digests) and its recipe (strategy,
    weights, parameters, seed), so 'adapterhub rebuild' can recompute and check it.
    """
    from adapterhub.api.files import summary
    from adapterhub.api.merge import merge as run

    if to is None and out is None:
        raise click.UsageError("give --to NS/NAME (store in the registry), --out DIR, or both")
    result = run(adapters, strategy, weights=parse_weights(weights), density=density,
                 rank=rank, seed=seed, params=parse_params(params), to=to, out=out,
                 message=message, expert=expert, registry=db, progress=not as_json)
    merged = result.package
    info = summary(merged.manifest)
    if result.version is not None:
        info["ref"] = result.version.ref
    if as_json:
        emit_json(info)
        return
    where = "  ".join(str(x) for x in (info.get("ref"), out) if x is not None)
    rank_text = merged.manifest.method["config"].get("r")
    click.echo(f"{where}  {merged.digest}  ({merged.manifest.method_name}"
               + (f", r={rank_text}" if rank_text is not None else "")
               + f", {len(merged.manifest.base_model['modules'])} modules)")


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@db_option
def rebuild(ref: str, as_json: bool, db: str | None) -> None:
    """Recompute a merged version from its recipe and parents; check the digest.

    Exits 1 when the rebuilt digest differs from the stored one.
    """
    from adapterhub.api.merge import rebuild as run
    from adapterhub.errors import NoRecipeError

    try:
        result = run(ref, registry=db)
    except NoRecipeError as exc:  # not a merge: a usage error, as any wrong argument
        raise click.UsageError(exc.message) from None
    if as_json:
        emit_json({"ref": result.ref, "digest": result.digest, "rebuilt": result.rebuilt,
                   "ok": result.ok})
        if not result.ok:
            raise SystemExit(1)
        return
    result.raise_for_mismatch()
    click.echo(f"ok: {result.ref} rebuilt from {result.parents} parents by "
               f"{result.strategy}; digest {result.digest} matches")


@cli.command()
@json_option
def strategies(as_json: bool) -> None:
    """List the registered merge strategies and the parameters each takes."""
    from adapterhub.contracts.plugins import plugin_manager

    rows = []
    for name, reg in sorted(plugin_manager().registered("strategy").items()):
        rows.append({**reg.obj.describe(), "plugin": reg.plugin})
    if as_json:
        emit_json(rows)
        return
    table([[r["name"], ", ".join([k for k in ("density", "rank", "seed") if r[k]]
                                 + [f"{k}={v}" for k, v in r["params"].items()]) or "-",
            r["description"]] for r in rows], ["STRATEGY", "TAKES", "WHAT IT DOES"])
