"""``adapterhub train``: train an adapter on a transformers model from a JSONL file."""

from __future__ import annotations

from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.common import db_option, json_option, parse_labels
from adapterhub.cli.output import emit_json


@cli.command()
@click.option("--method", required=True, help="Method name (see 'adapterhub methods').")
@click.option("--config", "config_pairs", multiple=True, metavar="KEY=VALUE",
              help="A method config field, e.g. --config r=16 (repeatable).")
@click.option("--base", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Local transformers model directory.")
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Training data, JSONL (see docs/training.md).")
@click.option("--task", type=click.Choice(["classification", "causal-lm"]), required=True)
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--lr", type=float, default=2e-4, show_default=True,
              help="Learning rate (LoRA+ trains B at lr x loraplus_lr_ratio).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-length", type=click.IntRange(min=1), default=128, show_default=True,
              help="Truncate examples to this many tokens.")
@click.option("--eval-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1,
              show_default=True, help="Share of examples held out for evaluation.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--experts", metavar="REF,REF,...",
              help="Expert versions (refs or directories) of a mixture-of-experts method "
                   "(ttlora_moe); the data rows then name their expert in \"task\".")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Directory to write the adapter package to.")
@click.option("--push", "push_to", metavar="NS/NAME",
              help="Store the trained adapter in the registry under this name.")
@click.option("-m", "--message", help="Message of the pushed version.")
@click.option("--label", "labels", multiple=True, metavar="K=V",
              help="Label of the adapter (repeat); name=... names an expert in a mixture.")
@click.option("--quiet", is_flag=True, help="No progress bar and no loss lines.")
@json_option
@db_option
def train(method: str, config_pairs: tuple[str, ...], base: Path, data: Path, task: str,
          epochs: int, lr: float, batch_size: int, max_length: int, eval_fraction: float,
          seed: int, experts: str | None, out: Path | None, push_to: str | None,
          message: str | None, labels: tuple[str, ...], quiet: bool, as_json: bool,
          db: str | None) -> None:
    """Train an adapter; save it as a package (--out) and/or push it (--push)."""
    from adapterhub.api.train import train as run
    from adapterhub.contracts.plugins import get_method
    from adapterhub.contracts.progress import write

    if out is None and push_to is None:
        raise click.UsageError("say where the trained adapter goes: --out DIR, --push NS/NAME "
                               "or both")
    if experts and config_pairs:
        raise click.UsageError("--config does not apply with --experts (the experts fix the "
                               "adapted layers)")

    def log(record: dict) -> None:
        write(f"step {record['step']}/{record['steps']}  epoch {record['epoch']}  "
              f"loss {record['loss']:.4f}")

    method_obj = get_method(method)
    result = run(method, base, data, task=task,
                 config=None if experts else method_obj.Config.from_strings(config_pairs),
                 experts=[e.strip() for e in (experts or "").split(",") if e.strip()],
                 epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
                 eval_fraction=eval_fraction, seed=seed, labels=parse_labels(labels), out=out,
                 push=push_to, message=message, registry=db, on_log=None if quiet else log,
                 show_progress=not (quiet or as_json))
    package = result.package
    ref = result.version.ref if result.version else None
    metrics = package.manifest.metrics
    if as_json:
        emit_json({"out": str(out) if out else None, "ref": ref, "digest": package.digest,
                   "method": method_obj.name, "metrics": metrics})
        return
    click.echo("  ".join(str(x) for x in (out, ref) if x) + f"  {package.digest}")
    click.echo("  ".join(f"{key}={value:.4g}" if isinstance(value, float) else
                         f"{key}={value}" for key, value in sorted(metrics.items())))
