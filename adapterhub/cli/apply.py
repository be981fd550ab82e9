"""``adapterhub apply``: fold adapters into a base checkpoint (a deployment build)."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.common import db_option, expert_option, parse_weights
from adapterhub.cli.output import emit_json


@cli.command()
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("adapters", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory to build (must not exist, or be empty).")
@click.option("--weights", help="One weight per adapter, comma-separated (default 1 each).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]),
              help="Cast every floating tensor to this dtype (default: keep each tensor's; bf16 "
                   "when quantized weights are dequantized or rebuilt).")
@click.option("--requantize", is_flag=True,
              help="BASE is quantized (QLoRA): keep it quantized; merged weights are "
                   "quantized again and the rounding error is recorded (default: write a "
                   "full-precision checkpoint).")
@click.option("--untouched", type=click.Choice(["original", "roundtrip"]), default="original",
              show_default=True,
              help="Full-precision BASE, adapter trained on a quantized one: Linear weights "
                   "no adapter changes stay as BASE has them, or become deq(Q(W)) as in "
                   "training.")
@expert_option
@click.option("--json", "as_json", is_flag=True, help="Print the build record as JSON.")
@db_option
def apply(base: Path, adapters: tuple[str, ...], out: Path, weights: str | None,
          dtype: str | None, requantize: bool, untouched: str, expert: str | None,
          as_json: bool, db: str | None) -> None:
    """Fold ADAPTERS into the checkpoint BASE and write the merged model to --out.

    BASE is a directory of safetensors weights (one file, or shards with
    model.safetensors.index.json). Each ADAPTER is an adapterhub package directory, a PEFT
    adapter directory or a registry REF. Untouched tensors are copied byte for byte; the
    output keeps the base's files, sharding and index and adds adapterhub-build.json.

    Adapters trained on a quantized base (QLoRA) are added to deq(Q(W)), the weights they
    learned on: a quantized BASE is dequantized (to --dtype, default bf16) unless
    --requantize; a full-precision BASE has deq(Q(W)) rebuilt for the adapted weights.
    """
    from adapterhub.api.build import apply as run

    # a terminated build unwinds like an interrupted one: its work directory is removed
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    record = run(base, adapters, out, weights=parse_weights(weights), dtype=dtype,
                 requantize=requantize, untouched=untouched, expert=expert, registry=db,
                 show_progress=not as_json)
    if as_json:
        emit_json(record)
        return
    counts = record["tensors"]
    click.echo(f"{out}: {counts['merged']} tensors merged, {counts['copied']} copied, "
               f"{counts['cast']} cast")
    if record["quantization"]:
        _echo_quantization(record)
    for adapter in record["adapters"]:
        if adapter["fingerprint_match"] is False:
            also = " (or the other form, quantized or not, of this base)" \
                if adapter["quantization"] else ""
            click.echo(f"note: {adapter['digest'][:19]} was trained on a checkpoint with "
                       f"other tensor names or dtypes{also} (same shapes for every adapted "
                       f"module)")
    if record["skipped_files"]:
        click.echo("not copied (weights in another format): "
                   + ", ".join(record["skipped_files"]))


def _echo_quantization(record: dict) -> None:
    """What became of the quantized weights, and the rounding error of a re-quantizing build."""
    section = record["quantization"]
    weights = section["weights"]
    if section["base"] and section["output"] == "full_precision":
        click.echo(f"dequantized {sum(weights.values())} quantized weights to "
                   f"{record['dtype']}; config.json no longer has a quantization_config")
    if "roundtrip" in weights:
        click.echo(f"{weights['roundtrip']} weights written as deq(Q(W)), the base the "
                   f"adapters were trained on (--untouched {section['untouched']})")
    requantization = section.get("requantization")
    if requantization and requantization["total"]:
        total = requantization["total"]
        worst_name, worst = max(requantization["tensors"].items(),
                                key=lambda item: item[1]["lost_fraction"])
        click.echo(f"re-quantized {weights.get('requantized', 0)} weights "
                   f"({weights.get('kept', 0)} kept as they were): rounding error "
                   f"{total['lost_fraction']:.1%} of the norm of ΔW (0% keeps the adapters "
                   f"exactly, 100% or more leaves nothing of them); max abs error "
                   f"{total['max_abs_error']:.3g}; {total['changed_fraction']:.1%} of their "
                   f"values moved")
        click.echo(f"  worst: {worst_name}, {worst['lost_fraction']:.1%}")
        if total["lost_fraction"] > 0.5:
            click.echo("warning: re-quantizing erased most of what the adapters learned; "
                       "build without --requantize for a bf16 model that keeps it")
    for adapter in record["adapters"]:
        if adapter["quantization"] is None and set(adapter["folded_into"]) & {
                "dequantized", "requantized"}:
            click.echo(f"note: {adapter['digest'][:19]} was trained on full-precision weights; "
                       f"it is folded into the quantized base's deq(Q(W))")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
