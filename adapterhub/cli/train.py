"""``adapterhub train``: train an adapter on a transformers model from a JSONL file."""

from __future__ import annotations

from pathlib import Path

import click

from adapterhub.cli import cli
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
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Directory to write the adapter package to.")
@click.option("--quiet", is_flag=True, help="No progress bar and no loss lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train(method: str, config_pairs: tuple[str, ...], base: Path, data: Path, task: str,
          epochs: int, lr: float, batch_size: int, max_length: int, eval_fraction: float,
          seed: int, out: Path | None, quiet: bool, as_json: bool) -> None:
    """Train an adapter and save it as a package."""
    from adapterhub.plugins import get_method
    from adapterhub.progress import write
    from adapterhub.training import train as run

    if out is None:
        raise click.UsageError("say where the trained adapter goes with --out DIR")
    method_obj = get_method(method)
    config = method_obj.Config.from_strings(config_pairs)

    def log(record: dict) -> None:
        write(f"step {record['step']}/{record['steps']}  epoch {record['epoch']}  "
              f"loss {record['loss']:.4f}")

    package = run(base, data, task=task, method=method_obj, config=config, epochs=epochs,
                  lr=lr, batch_size=batch_size, max_length=max_length,
                  eval_fraction=eval_fraction, seed=seed, on_log=None if quiet else log,
                  show_progress=not (quiet or as_json))
    package.save(out)
    metrics = package.manifest.metrics
    if as_json:
        emit_json({"out": str(out), "digest": package.digest, "method": method_obj.name,
                   "metrics": metrics})
        return
    click.echo(f"{out}  {package.digest}")
    click.echo("  ".join(f"{key}={value:.4g}" if isinstance(value, float) else
                         f"{key}={value}" for key, value in sorted(metrics.items())))
