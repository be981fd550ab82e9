"""Registry commands: init, push, pull, list, log, diff, tag, rm, gc, verify, promote."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click

from adapterhub.cli import cli
from adapterhub.cli.common import (Duration, db_option, force_option, from_option, json_option,
                                   parse_labels, quiet_option)
from adapterhub.cli.output import emit_json, table, version_line, when
from adapterhub.contracts.progress import human_size

# -- commands ------------------------------------------------------------------------------------


@cli.command()
@click.option("--blobs", metavar="BACKEND", help="Where blobs live, chosen once per "
              "registry: db (in the database, the default) or s3://BUCKET/PREFIX (credentials "
              "and endpoint from the standard AWS variables and profiles).")
@db_option
@json_option
def init(blobs: str | None, db: str | None, as_json: bool) -> None:
    """Create the registry (or upgrade its schema)."""
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        backend = reg.choose_blob_backend(blobs) if blobs else reg.blob_backend
        usage = reg.usage()
        if as_json:
            emit_json({"url": reg.url, "blobs": backend, **usage.to_dict()})
        else:
            click.echo(f"registry ready: {reg.url} ({usage.versions} versions in "
                       f"{usage.repositories} repositories; blobs in {backend})")


@cli.command()
@click.argument("source")
@click.argument("name")
@click.option("--to", "to", metavar="REGISTRY", help="A remote name or registry URL "
              "(default: the local registry).")
@click.option("-m", "--message", help="What this version is.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Tag to point at it (repeat).")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Label (repeat).")
@click.option("--ci", is_flag=True, help="Label with git sha, branch and run URL from "
              "GitHub Actions or GitLab CI.")
@quiet_option
@json_option
@db_option
def push(source: str, name: str, to: str | None, message: str | None, tags: tuple[str, ...],
         labels: tuple[str, ...], ci: bool, quiet: bool, as_json: bool, db: str | None) -> None:
    """Store an adapter as a new version of NAME (ns/name).

    SOURCE is a native package directory, a PEFT directory, or a ref in the local registry.
    Only blobs the registry lacks are sent; pushing identical content changes nothing.
    """
    from adapterhub.registry import Registry
    from adapterhub.registry.ci import ci_labels

    extra = {**(ci_labels() if ci else {}), **parse_labels(labels)}
    with Registry(db) as reg:
        result = reg.push(source, name, message=message, tags=tags, labels=extra or None,
                          to=to, progress=not (quiet or as_json))
    if as_json:
        emit_json({**result.version.to_dict(), "created": result.created, "registry": to})
    else:
        state = "" if result.created else "  (unchanged)"
        click.echo(version_line(result.version) + state)


@cli.command()
@click.argument("ref")
@click.option("--from", "source", metavar="REGISTRY", help="A remote name or registry URL "
              "(default: the local registry, so only --out applies).")
@click.option("--out", type=click.Path(path_type=Path), help="Also write the files here.")
@click.option("--format", "fmt", type=click.Choice(["native", "peft"]), default="native",
              show_default=True, help="Layout of the files written with --out.")
@force_option
@quiet_option
@json_option
@db_option
def pull(ref: str, source: str | None, out: Path | None, fmt: str, force: bool, quiet: bool,
         as_json: bool, db: str | None) -> None:
    """Copy a version (and those it descends from) into the local registry.

    Every byte is re-hashed on the way in. With --out, also write it as files (into a new or
    empty directory; --force replaces an existing one as a whole).
    """
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        version = reg.pull(ref, source, out=out, format=fmt, force=force,
                           progress=not (quiet or as_json))
    if as_json:
        emit_json({**version.to_dict(), "out": str(out) if out else None, "format": fmt})
        return
    click.echo(version_line(version))
    if out:
        click.echo(f"wrote {out} ({fmt})")


@cli.command("list")
@click.argument("prefix", required=False)
@click.option("--method", help="Only this method.")
@click.option("--base", metavar="FINGERPRINT|NAME", help="Only adapters of this base model.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Only with this label.")
@json_option
@from_option
@db_option
def list_(prefix: str | None, method: str | None, base: str | None, labels: tuple[str, ...],
          as_json: bool, where: str | None, db: str | None) -> None:
    """List versions (newest first per repository)."""
    from adapterhub.registry import open_registry

    with open_registry(where, db=db) as reg:
        versions = reg.list(prefix, method=method, base=base, labels=parse_labels(labels))
    if as_json:
        emit_json([v.to_dict() for v in versions])
        return
    table([[v.ref, ",".join(v.tags), v.method, v.base_name or "-", human_size(v.size),
            when(v), (v.message or "")[:40]] for v in versions],
          ["REF", "TAGS", "METHOD", "BASE", "SIZE", "CREATED", "MESSAGE"])


@cli.command()
@click.argument("name")
@json_option
@from_option
@db_option
def log(name: str, as_json: bool, where: str | None, db: str | None) -> None:
    """Show the versions of one repository, newest first."""
    from adapterhub.registry import open_registry

    with open_registry(where, db=db) as reg:
        versions = reg.log(name)
    if as_json:
        emit_json([v.to_dict() for v in versions])
        return
    for v in versions:
        flags = "  (deleted)" if v.deleted else ""
        click.echo(f"{version_line(v)}{flags}")
        click.echo(f"    {when(v)}  {v.author or '-'}  {v.message or ''}".rstrip())
        for parent in v.parents:
            click.echo(f"    parent {parent}")


@cli.command()
@click.argument("a")
@click.argument("b")
@json_option
@db_option
def diff(a: str, b: str, as_json: bool, db: str | None) -> None:
    """Compare two versions: settings, and the norm of each tensor's change."""
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        result = reg.diff(a, b)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['a']} -> {result['b']}")
    for key, (va, vb) in result["settings"].items():
        click.echo(f"  {key}: {va!r} -> {vb!r}")
    changed = [t for t in result["tensors"] if t["status"] != "same"]
    click.echo(f"tensors: {len(changed)} of {len(result['tensors'])} differ")
    rows = []
    for t in changed:
        norm = f"{t['change_norm']:.4g}" if "change_norm" in t else "-"
        rel = f"{t['relative']:.3g}" if t.get("relative") is not None else "-"
        rows.append([t["name"], t["status"], norm, rel])
    if rows:
        table(rows, ["TENSOR", "STATUS", "|CHANGE|", "RELATIVE"])


@cli.command()
@click.argument("ref")
@click.argument("tag", required=False)
@click.option("--delete", is_flag=True, help="Delete the tag in REF (ns/name:TAG).")
@json_option
@from_option
@db_option
def tag(ref: str, tag: str | None, delete: bool, as_json: bool, where: str | None,
        db: str | None) -> None:
    """Point TAG at REF, or delete a tag: tag --delete ns/name:TAG."""
    from adapterhub.errors import RefError
    from adapterhub.registry import open_registry

    if delete == (tag is not None):
        raise RefError("give either REF TAG, or --delete ns/name:TAG")
    with open_registry(where, db=db) as reg:
        version = reg.untag(ref) if delete else reg.tag(ref, tag)
    if as_json:
        emit_json(version.to_dict())
    elif delete:
        click.echo(f"deleted {ref} (was {version.ref})")
    else:
        click.echo(f"{version.name}:{tag} -> {version.ref}")


@cli.command()
@click.argument("ref")
@json_option
@from_option
@db_option
def rm(ref: str, as_json: bool, where: str | None, db: str | None) -> None:
    """Delete a version (soft: gc reclaims its bytes)."""
    from adapterhub.registry import open_registry

    with open_registry(where, db=db) as reg:
        version = reg.rm(ref)
    if as_json:
        emit_json(version.to_dict())
    else:
        click.echo(f"deleted {version.ref}  {version.digest}")


@cli.command()
@click.argument("prefix", required=False)
@click.option("--keep-last", type=click.IntRange(min=0), metavar="N",
              help="Keep the N newest versions per repository; delete older ones.")
@click.option("--keep-tagged", is_flag=True, help="With --keep-last: never delete tagged ones.")
@click.option("--per-label", metavar="KEY",
              help="With --keep-last: keep N per value of this label (e.g. git.branch).")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; change nothing.")
@click.option("--grace", type=Duration(), default="1h", show_default=True,
              help="Keep unreferenced blobs touched this recently (pushes in flight).")
@json_option
@from_option
@db_option
def gc(prefix: str | None, keep_last: int | None, keep_tagged: bool, per_label: str | None,
       dry_run: bool, grace: timedelta, as_json: bool, where: str | None, db: str | None) -> None:
    """Apply retention, then remove deleted versions and unreferenced blobs.

    PREFIX limits the retention policy to repositories whose name starts with it.
    """
    from adapterhub.registry import open_registry

    with open_registry(where, db=db) as reg:
        report = reg.gc(keep_last=keep_last, keep_tagged=keep_tagged, per_label=per_label,
                        prefix=prefix, dry_run=dry_run, grace=grace)
    if as_json:
        emit_json(report.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for ref in report.retired:
        click.echo(f"retire {ref}")
    click.echo(f"{verb} {len(report.purged)} deleted version(s), {report.blobs_removed} blob(s) "
               f"and {report.uploads_removed} abandoned upload(s): "
               f"{human_size(report.bytes_freed)} freed")
    if report.kept_for_lineage:
        click.echo(f"kept {len(report.kept_for_lineage)} deleted version(s) that live versions "
                   f"descend from")


@cli.group()
def blobs() -> None:
    """Where the registry's blobs live (see docs/objectstore.md)."""


@blobs.command("migrate")
@click.option("--to", "to", required=True, metavar="s3://BUCKET/PREFIX",
              help="The object store the blobs move to (it becomes the registry's backend).")
@json_option
@db_option
def blobs_migrate(to: str, as_json: bool, db: str | None) -> None:
    """Move the blobs kept in the database into an object store: every byte verified,
    readers served throughout; run it again to resume after an interruption."""
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        report = reg.migrate_blobs(to)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(f"{report.blobs_moved} blob(s), {human_size(report.bytes_moved)} moved to "
                   f"{report.to} ({report.blobs_already_there} were there already)")


@cli.command()
@click.option("--deep", is_flag=True, help="Also download and re-hash blobs kept in an "
              "object store (otherwise their existence and size are checked).")
@json_option
@from_option
@db_option
def verify(deep: bool, as_json: bool, where: str | None, db: str | None) -> None:
    """Re-hash every blob and check every reference (exit 1 on any problem)."""
    from adapterhub.errors import IntegrityError
    from adapterhub.registry import open_registry

    with open_registry(where, db=db) as reg:
        report = reg.verify(deep=deep)
    if as_json:
        emit_json(report.to_dict())
        if not report.ok:
            raise SystemExit(1)
        return
    for problem in report.problems:
        click.echo(f"{problem.kind}: {problem.message}")
    summary = (f"{report.versions_checked} versions, {report.blobs_checked} blobs, "
               f"{human_size(report.bytes_checked)} checked")
    if not report.ok:
        raise IntegrityError(f"verify found {len(report.problems)} problem(s) ({summary})")
    click.echo(f"ok: {summary}; {report.unreferenced_blobs} unreferenced blob(s) and "
               f"{report.partial_uploads} partial upload(s) for gc")


@cli.command()
@click.argument("ref")
@click.option("--tag", "tag_name", required=True, help="The tag to move (e.g. prod).")
@click.option("--if", "conditions", multiple=True, metavar="'METRIC>=X'",
              help="Condition on the version's metrics (repeat; all must hold). "
                   "Operators: >= > <= < ==.")
@json_option
@db_option
def promote(ref: str, tag_name: str, conditions: tuple[str, ...], as_json: bool,
            db: str | None) -> None:
    """Move a tag to REF if its metrics pass (exit 1, tag unmoved, if not)."""
    from adapterhub.registry import Registry

    with Registry(db) as reg:
        version = reg.promote(ref, tag_name, conditions)
    if as_json:
        emit_json(version.to_dict())
    else:
        passed = f" ({', '.join(conditions)})" if conditions else ""
        click.echo(f"promoted {version.ref} to {version.name}:{tag_name}{passed}")
