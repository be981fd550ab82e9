"""``adapterhub apply``: fold adapters into a base checkpoint (a deployment build)."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.common import db_option, expert_option, packages_to_fold
from adapterhub.cli.output import emit_json


def parse_weights(value: str | None) -> list[float] | None:
    """``"1,0.5,-1"`` → ``[1.0, 0.5, -1.0]``."""
    if value is None:
        return None
    try:
        return [float(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers; got {value!r}") from None


@cli.command()
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("adapters", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory to build (must not exist, or be empty).")
@click.option("--weights", help="One weight per adapter, comma-separated (default 1 each).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]),
              help="Cast every floating tensor to this dtype (default: keep each tensor's).")
@expert_option
@click.option("--json", "as_json", is_flag=True, help="Print the build record as JSON.")
@db_option
def apply(base: Path, adapters: tuple[str, ...], out: Path, weights: str | None,
          dtype: str | None, expert: str | None, as_json: bool, db: str | None) -> None:
    """Fold ADAPTERS into the checkpoint BASE and write the merged model to --out.

    BASE is a directory of safetensors weights (one file, or shards with
    model.safetensors.index.json). Each ADAPTER is an adapterhub package directory, a PEFT
    adapter directory or a registry REF. Untouched tensors are copied byte for byte; the
    output keeps the base's files, sharding and index and adds adapterhub-build.json.
    """
    from adapterhub.apply import apply_adapters

    # a terminated build unwinds like an interrupted one: its work directory is removed
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    packages = packages_to_fold(adapters, db, expert)
    record = apply_adapters(base, packages, out, weights=parse_weights(weights),
                            dtype=dtype, show_progress=not as_json)
    if as_json:
        emit_json(record)
        return
    counts = record["tensors"]
    click.echo(f"{out}: {counts['merged']} tensors merged, {counts['copied']} copied, "
               f"{counts['cast']} cast")
    for adapter in record["adapters"]:
        if adapter["fingerprint_match"] is False:
            click.echo(f"note: {adapter['digest'][:19]} was trained on a checkpoint with "
                       f"other tensor names or dtypes (same shapes for every adapted module)")
    if record["skipped_files"]:
        click.echo("not copied (weights in another format): "
                   + ", ".join(record["skipped_files"]))


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
