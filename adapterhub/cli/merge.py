"""``adapterhub merge`` and ``adapterhub strategies``: combine adapters into a new version."""

from __future__ import annotations

import json
from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.apply import parse_weights
from adapterhub.cli.common import db_option, expert_option, json_option, packages_to_fold
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
    from adapterhub.io.outdir import refuse_non_empty
    from adapterhub.cli.files import summary
    from adapterhub.engines.merging import merge_adapters
    from adapterhub.registry import Registry

    if to is None and out is None:
        raise click.UsageError("give --to NS/NAME (store in the registry), --out DIR, or both")
    if out is not None:
        refuse_non_empty(out)
    packages = packages_to_fold(adapters, db, expert)
    merged = merge_adapters(packages, strategy, weights=parse_weights(weights),
                            density=density, rank=rank, seed=seed, **parse_params(params))
    if out is not None:
        merged.save(out)
    info = summary(merged.manifest)
    if to is not None:
        with Registry(db) as registry:
            result = registry.push(merged, to, message=message or f"{strategy} merge of "
                                   f"{len(packages)} adapters", progress=not as_json)
        info["ref"] = result.version.ref
    if as_json:
        emit_json(info)
        return
    where = "  ".join(str(x) for x in (info.get("ref"), out) if x is not None)
    click.echo(f"{where}  {merged.digest}  (lora, r={merged.config.r}, "
               f"{len(merged.manifest.base_model['modules'])} modules)")


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@db_option
def rebuild(ref: str, as_json: bool, db: str | None) -> None:
    """Recompute a merged version from its recipe and parents; check the digest.

    Exits 1 when the rebuilt digest differs from the stored one.
    """
    from adapterhub.errors import IntegrityError
    from adapterhub.engines.merging import replay
    from adapterhub.registry import Registry
    from adapterhub.registry.sources import fetch_version

    with Registry(db) as registry:
        version = registry.resolve(ref)
        manifest = version.manifest
        if manifest.recipe is None:
            raise click.UsageError(f"{version.ref} has no merge recipe: it was not made by "
                                   f"'adapterhub merge'")
        parents = [fetch_version(digest, registry, what=f"parent {index + 1}")
                   for index, digest in enumerate(manifest.parents)]
        rebuilt = replay(parents, manifest.recipe)
    same = rebuilt.digest == manifest.digest
    if as_json:
        emit_json({"ref": version.ref, "digest": manifest.digest,
                   "rebuilt": rebuilt.digest, "ok": same})
        if not same:
            raise SystemExit(1)
        return
    if not same:
        raise IntegrityError(f"rebuilding {version.ref} gave {rebuilt.digest}, not its stored "
                             f"{manifest.digest}",
                             hint="The parents, the strategy plugin or the numeric libraries "
                                  "differ from those that built it; compare 'adapterhub diff'")
    click.echo(f"ok: {version.ref} rebuilt from {len(parents)} parents by "
               f"{manifest.recipe['strategy']}; digest {manifest.digest} matches")


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
