"""``adapterhub quantize``: a quantized copy of a base checkpoint (QLoRA bases)."""

from __future__ import annotations

from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.output import emit_json
from adapterhub.contracts.progress import human_size


@cli.command()
@click.argument("base_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory to write the quantized checkpoint to (must not exist).")
@click.option("--method", default="nf4", show_default=True,
              help="Quantizer (see 'adapterhub plugins').")
@click.option("--blocksize", type=int, default=None,
              help="Weights per absmax block (the quantizer's default: 64).")
@click.option("--no-double-quant", is_flag=True,
              help="Store the absmax in fp32 instead of quantizing it to 8 bits.")
@click.option("--skip", default=None,
              help="Comma-separated module names to keep in full precision "
                   "(default: output heads and embeddings, e.g. lm_head,embed_tokens).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def quantize(base_dir: Path, out: Path, method: str, blocksize: int | None,
             no_double_quant: bool, skip: str | None, as_json: bool, quiet: bool) -> None:
    """Quantize every Linear weight of a safetensors checkpoint."""
    from adapterhub.engines.quantize_checkpoint import DEFAULT_SKIP, quantize_checkpoint

    fields: dict = {}
    if blocksize is not None:
        fields["blocksize"] = blocksize
    if no_double_quant:
        fields["double_quant"] = False
    names = DEFAULT_SKIP if skip is None else [s.strip() for s in skip.split(",") if s.strip()]
    summary = quantize_checkpoint(base_dir, out, method, fields, skip=names,
                                  quiet=quiet or as_json)
    if as_json:
        emit_json(summary)
        return
    bits = summary["bits_per_param"]
    click.echo(f"{out}: {summary['quantized']} weights quantized ({summary['quantizer']}"
               + (f", {bits:.3f} bits/param" if bits else "") + f"), {summary['copied']} "
               f"tensors copied; {human_size(summary['bytes_in'])} -> "
               f"{human_size(summary['bytes_out'])}")
