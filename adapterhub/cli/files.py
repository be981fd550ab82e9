"""Commands on adapter files: ``show``, ``import``, ``export``, ``check``."""

from __future__ import annotations

from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.common import db_option, force_option, from_option, json_option
from adapterhub.cli.output import emit_json, print_summary

FORMATS = click.Choice(["peft"])


@cli.command()
@click.argument("source")
@json_option
@from_option
@db_option
def show(source: str, as_json: bool, where: str | None, db: str | None) -> None:
    """Summarise an adapter (a directory or a REF): method, config, base, tensors, digest."""
    from adapterhub.api.files import describe
    from adapterhub.registry import open_registry

    if where is None:
        info = describe(source, registry=db)
    else:
        with open_registry(where, db=db) as registry:
            info = describe(source, registry=registry)
    if as_json:
        emit_json(info)
        return
    if "ref" in info:
        tags = f"  [{', '.join(info['tags'])}]" if info["tags"] else ""
        click.echo(f"ref:         {info['ref']}{tags}")
        click.echo(f"created:     {info['created_at']} by {info['author'] or '-'}")
        if info["message"]:
            click.echo(f"message:     {info['message']}")
    print_summary(info)


@cli.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, required=True, help="Layout of PATH.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory to write the native package to.")
@click.option("--base", type=click.Path(path_type=Path),
              help="Base checkpoint directory, to record its fingerprint.")
@force_option
def import_(path: Path, fmt: str, out: Path, base: Path | None, force: bool) -> None:
    """Convert an adapter from another layout into a native package."""
    from adapterhub.api.files import import_adapter

    package = import_adapter(path, out, base=base, force=force)
    click.echo(f"{out}  {package.digest}")


@cli.command()
@click.argument("source")
@click.argument("dest", required=False, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["peft", "vllm", "trtllm"]), default="peft",
              show_default=True, help="peft: PEFT's layout; vllm: PEFT's layout with each "
              "module's scaling folded into lora_B and lora_alpha = r; trtllm: TensorRT-LLM's "
              "model.lora_weights.npy and model.lora_config.npy.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]),
              help="--format trtllm: dtype of model.lora_weights.npy (match the engine's; "
                   "default float16).")
@click.option("--base", type=click.Path(exists=True, path_type=Path),
              help="--format trtllm: base checkpoint, to normalize DoRA magnitudes.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Directory to write to (or the cache root with --layout hf-cache); may "
                   "also be given as DEST.")
@click.option("--layout", type=click.Choice(["dir", "hf-cache"]), default="dir",
              show_default=True, help="dir: the files in --out; hf-cache: a Hugging Face cache "
              "tree under --out that loads offline by repo id.")
@click.option("--repo-id", help="Repository id for --layout hf-cache (namespace/name; "
                                "default: the REF's repository).")
@click.option("--revision", help="The ref --layout hf-cache points at the export (default: "
                                 "v<N> for a REF, else main).")
@force_option
@db_option
def export(source: str, dest: Path | None, fmt: str, dtype: str | None, base: Path | None,
           out: Path | None, layout: str, repo_id: str | None, revision: str | None,
           force: bool, db: str | None) -> None:
    """Write an adapter (a directory or a REF) in a serving layout, as files or an HF cache.

    \b
    adapterhub export ADAPTER --format vllm --out DIR
    adapterhub export ADAPTER --format trtllm [--dtype bfloat16] --out DIR
    adapterhub export ns/name@2 --layout hf-cache CACHE_DIR
    then: HF_HUB_OFFLINE=1 HF_HUB_CACHE=CACHE_DIR python -c \\
          "PeftModel.from_pretrained(base, 'ns/name', revision='v2')"
    """
    from adapterhub.api.files import export as run

    if (dest is None) == (out is None):
        raise click.UsageError("give the output directory once: as DEST or as --out")
    if fmt != "trtllm" and (dtype or base):
        raise click.UsageError("--dtype and --base go with --format trtllm")
    if fmt == "trtllm" and layout == "hf-cache":
        raise click.UsageError("--layout hf-cache holds PEFT files; use --format peft or vllm")
    written = run(source, dest or out, format=fmt, layout=layout, repo_id=repo_id,
                  revision=revision, dtype=dtype, base=base, force=force, registry=db)
    click.echo(str(written))


@cli.command()
@click.argument("source")
@click.option("--base", type=click.Path(path_type=Path),
              help="Base checkpoint directory (safetensors; headers only are read).")
@click.option("--target", "targets", multiple=True,
              metavar="vllm[:max_rank=N]|trtllm[:max_rank=N]|peft",
              help="A serving target to lint for (repeatable).")
@json_option
@db_option
def check(source: str, base: Path | None, targets: tuple[str, ...], as_json: bool,
          db: str | None) -> None:
    """Check that an adapter (a directory or a REF) fits a base checkpoint (--base, from
    headers only) and what a serving engine would refuse (--target). Exits 1 on any problem."""
    from adapterhub.api.files import check as run

    if base is None and not targets:
        raise click.UsageError("give --base BASE, --target TARGET, or both")
    result = run(source, base=base, targets=targets, registry=db)
    report, linted, failed = result.base, result.targets, not result.ok
    if as_json:
        emit_json(result.to_dict())
        if failed:
            raise SystemExit(1)
        return
    if report is not None:
        if targets and not report.ok:
            click.echo("base: " + "; ".join(report.problems))
        else:
            report.raise_for_problems()
            note = {True: "same base (fingerprint matches)",
                    False: "fingerprint differs (a different checkpoint with the same shapes)",
                    None: "the adapter records no base fingerprint"}[report.fingerprint_match]
            click.echo(f"ok: {len(report.modules)} modules fit; {note}")
    for t in linted:
        options = ",".join(f"{k}={v}" for k, v in t.options.items())
        label = t.target + (f":{options}" if options else "")
        click.echo(f"{label}: " + ("ok" if t.ok else f"{len(t.problems)} problem(s)"))
        for problem in t.problems:
            click.echo(f"  - {problem}")
        for note in t.notes:
            click.echo(f"  note: {note}")
    if failed:
        raise SystemExit(1)
