"""The Python API of the registry: what ``adapterhub push/pull/list/...`` call.

Example::

    from adapterhub.registry import Registry

    with Registry() as reg:                       # $ADAPTERHUB_DB or ~/.adapterhub/registry.db
        result = reg.push("out/adapter", "team/support-bot", message="epoch 3", tags=["dev"])
        print(result.version.ref)                 # team/support-bot@1
        package = reg.get("team/support-bot:dev")  # AdapterPackage, every byte verified
        reg.pull("team/support-bot:prod", source="origin", out="serve/", format="peft")

The registry is any SQLAlchemy URL or a path (SQLite). Errors are
:mod:`adapterhub.errors` classes. Importing this module does not import torch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.contracts.remote import BlobStream, Buffer, Remote
from adapterhub.errors import AdapterNotFoundError, PromotionError, RefError
from adapterhub.io.outdir import output_dir, refuse_non_empty
from adapterhub.registry.ci import default_author
from adapterhub.registry.remotes import (DatabaseRemote, SqliteFileRemote, ancestors_to_copy,
                                         canonical_url, copy_version, is_path_like,
                                         open_remote, remote_class, scheme_of, send_version)

if TYPE_CHECKING:
    from adapterhub.io.package import AdapterPackage
    from adapterhub.registry.http_registry import HttpRegistry
    from adapterhub.registry.sources import Source
    from registry_db import (Caller, CommitResult, EventInfo, GcReport, RegistryService,
                             RemoteInfo, Usage, VerifyReport, VersionInfo)
    from registry_db.files import KeptFile
    from registry_db.reads import SqliteReader
    from registry_db.records import MigrateReport

DB_ENV = "ADAPTERHUB_DB"
HOME_ENV = "ADAPTERHUB_HOME"
FORMATS = ("native", "peft")
#: blobs larger than this are written out by ``pull --out`` a chunk at a time
STREAM_BLOB_BYTES = 16 << 20


def home() -> Path:
    """``$ADAPTERHUB_HOME``, default ``~/.adapterhub``."""
    return Path(os.environ.get(HOME_ENV) or "~/.adapterhub").expanduser()


def default_url() -> str:
    """``$ADAPTERHUB_DB``, default ``$ADAPTERHUB_HOME/registry.db``."""
    return os.environ.get(DB_ENV) or str(home() / "registry.db")


class Registry:
    """A registry database (created and migrated on first open).

    Args:
        url: any SQLAlchemy URL (``postgresql+psycopg://…``, ``sqlite:///…``) or a path to a
            SQLite file; default :func:`default_url`.
    """

    def __init__(self, url: str | os.PathLike[str] | None = None, *,
                 caller: Caller | None = None) -> None:
        from registry_db import Caller
        from registry_db.reads import open_sqlite

        self._target = default_url() if url is None else url
        # a SQLite file at this code's schema is read without SQLAlchemy until a call writes
        # or needs more than resolve/list/log (which keeps those commands quick to start)
        self._reader = open_sqlite(self._target)
        self._service: RegistryService | None = None
        self.caller = caller or Caller.local_user(default_author())
        self._owned = True

    @property
    def service(self) -> RegistryService:
        """The registry database, opened (and migrated) on first use."""
        if self._service is None:
            from registry_db import RegistryService
            from registry_db.writes import SqliteWriter

            self._service = RegistryService(self._target)
            if self._reader is not None and not isinstance(self._reader, SqliteWriter):
                self._reader.close()  # from now on every read goes through the service
                self._reader = None
        return self._service

    @property
    def url(self) -> str:
        return self._reader.url if self._reader is not None else self.service.url

    @functools.cached_property
    def _local(self) -> DatabaseRemote:
        return DatabaseRemote(self.url, service=self.service, caller=self.caller)

    def _write_target(self) -> DatabaseRemote | SqliteFileRemote:
        """This registry as the destination of a push or a pull. A SQLite file not yet
        opened through the service is written with the standard library
        (:class:`SqliteFileRemote`): the command starts without importing SQLAlchemy, which
        takes longer than the rest of a small pull."""
        from registry_db.writes import SqliteWriter, open_sqlite_writer

        if isinstance(self._reader, SqliteWriter):
            return SqliteFileRemote(self._reader, self.caller, lambda: self._local)
        if self._reader is not None and self._service is None and self.caller.local:
            writer = open_sqlite_writer(self._reader)
            if writer is not None:
                self._reader.close()
                self._reader = writer  # it reads too, and stays open beside the service
                return SqliteFileRemote(writer, self.caller, lambda: self._local)
        return self._local

    def _reads(self) -> RegistryService | SqliteReader:
        return self._reader if self._reader is not None else self.service

    def as_caller(self, caller: Caller) -> Registry:
        """The same registry seen by ``caller`` (what a hub does for each request): every
        call is authorized for it. Sharing the database connection; closing it is a no-op."""
        view = object.__new__(Registry)
        view._target, view._reader, view._service = self._target, None, self.service
        view.caller, view._owned = caller, False
        return view

    def close(self) -> None:
        if self._owned:
            if self._reader is not None:
                self._reader.close()
            if self._service is not None:
                self._service.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    # -- push and pull ----------------------------------------------------------------------

    def push(self, source: str | os.PathLike[str] | AdapterPackage | Source, name: str, *,
             message: str | None = None, tags: Sequence[str] = (),
             labels: dict[str, str] | None = None, author: str | None = None,
             to: str | None = None, progress: bool = True,
             files: Sequence[KeptFile] = ()) -> CommitResult:
        """Store an adapter as the next version of ``name`` (here, or in registry ``to``).
        ``files``: files the version keeps byte for byte (the hub's Hugging Face commits;
        see :mod:`registry_db.files`).

        ``source`` is an :class:`AdapterPackage`, a native or PEFT directory, or a ref in this
        registry. ``labels`` are added to the manifest's labels (so they are part of the
        version's identity). Only blobs the destination lacks are sent; an identical manifest
        gives back the existing version (``created`` is False) and just moves ``tags``.
        Parent versions the destination lacks are copied from this registry first.
        """
        from adapterhub.registry.sources import Source, resolve_source
        from registry_db.refs import validate_name, validate_tag

        validate_name(name)
        for tag in tags:
            validate_tag(tag)
        src = source if isinstance(source, Source) else resolve_source(source, registry=self)
        manifest = src.manifest
        if labels:
            manifest = manifest.replace(labels={**manifest.labels, **labels})
        dst = self.remote(to) if to is not None else self._write_target()
        try:
            lineage_source = self._local if to is not None else None
            for parent in ancestors_to_copy(manifest, dst, lineage_source, src.origin):
                copy_version(self._local, dst, parent, show_progress=progress, verb="push")
            return send_version(dst, name, manifest, src.read_blobs, message=message,
                                author=author or default_author(), tags=tags,
                                show_progress=progress, what=f"push {name}", files=files)
        finally:
            if to is not None:
                dst.close()

    def pull(self, ref: str, source: str | Remote | None = None, *,
             out: str | os.PathLike[str] | None = None, format: str = "native",
             force: bool = False, progress: bool = True) -> VersionInfo:
        """Copy ``ref`` from ``source`` (a remote name or registry URL), with the versions it
        descends from, into this registry, re-hashing every byte; then, with ``out``, write
        it as files (``format`` ``native`` or ``peft``; see :meth:`write_files` for ``out``
        and ``force``). Without ``source`` the version comes from this registry and only the
        files are written.

        Version numbers are per registry: the pulled version gets the next number here; its
        digest, author, message and creation time travel with it.
        """
        if format not in FORMATS:
            raise RefError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
        if out is not None and not force:
            refuse_non_empty(Path(out))  # before anything is transferred
        if source is None:
            version = self.resolve(ref)
        else:
            remote = source if isinstance(source, Remote) else self.remote(source)
            target = self._write_target()
            try:
                found = remote.resolve(ref)
                version = copy_version(remote, target, found, show_progress=progress,
                                       verb="pull").version
            finally:
                if not isinstance(source, Remote):
                    remote.close()
            target.record_event("pull", version, {"from": remote.url, "ref": ref})
        if out is not None:
            self.write_files(version.ref, out, format=format, force=force)
        return version

    def write_files(self, ref: str | VersionInfo, out: str | os.PathLike[str], *,
                    format: str = "native", force: bool = False) -> Path:
        """Write a version to directory ``out``: ``adapter.json`` + ``adapter.safetensors``
        (``native``) or ``adapter_config.json`` + ``adapter_model.safetensors`` (``peft``).

        ``out`` must be missing or empty; ``force`` replaces an existing directory as a
        whole, so no file of another adapter is left beside the new ones.
        """
        from adapterhub.io.package import write_native_files

        version = ref if not isinstance(ref, str) and ref.manifest else self.resolve(
            ref if isinstance(ref, str) else ref.ref)
        with output_dir(out, force=force) as staging:
            if format == "peft":  # renamed tensors from raw blobs (no torch), like a hub's files
                from adapterhub.io.formats.peft import write_peft
                from adapterhub.io.package import AdapterPackage

                digests = [e.digest for e in version.manifest.tensors.values()]
                write_peft(AdapterPackage.from_blobs(version.manifest,
                                                     dict(self.read_blobs(digests)), raw=True),
                           staging)
            else:  # streamed from the blobs, a chunk at a time; no torch
                write_native_files(version.manifest, self._blob_pieces(version), staging)
        return Path(out)

    def _blob_pieces(self, version: VersionInfo
                     ) -> Callable[[list[str]], Iterator[tuple[str, Iterable[Buffer]]]]:
        """digests → ``(digest, pieces)`` in order: small blobs read together, each whole;
        large ones chunk by chunk (verified when their last chunk is read)."""
        sizes = {e.digest: e.nbytes for e in version.manifest.tensors.values()}

        def read(digests: list[str]) -> Iterator[tuple[str, Iterable[Buffer]]]:
            run: list[str] = []
            for digest in [*digests, None]:
                if digest is not None and sizes[digest] <= STREAM_BLOB_BYTES:
                    run.append(digest)
                    continue
                for got, data in self.read_blobs(run):
                    yield got, (data,)
                run = []
                if digest is not None:
                    yield digest, self.service.blobs.iter(digest, caller=self.caller)

        return read

    # -- reading ----------------------------------------------------------------------------

    def resolve(self, ref: str) -> VersionInfo:
        """The version a ref names (``ns/name``, ``@N``, ``:tag``, ``@sha256:…``), with its
        manifest."""
        return self._reads().resolve(ref, caller=self.caller)

    def find(self, digest: str) -> VersionInfo | None:
        """A version whose manifest digest is ``digest`` (in a repository the caller may
        read), or None."""
        return self.service.find(digest, caller=self.caller)

    def get(self, ref: str | VersionInfo) -> AdapterPackage:
        """The version as an :class:`AdapterPackage`; every blob is re-hashed as it is read."""
        from adapterhub.io.package import AdapterPackage

        version = ref if not isinstance(ref, str) and ref.manifest else self.resolve(
            ref if isinstance(ref, str) else ref.ref)
        entries = version.manifest.tensors
        blobs = dict(self.read_blobs(e.digest for e in entries.values()))
        return AdapterPackage.from_blobs(version.manifest, blobs)

    def read_blob(self, digest: str) -> bytearray:
        """A blob's bytes, verified against its digest."""
        return self.service.blobs.read(digest, caller=self.caller)

    def read_blobs(self, digests: Iterable[str], *, streamed: bool = False
                   ) -> Iterator[tuple[str, bytearray | BlobStream]]:
        """``(digest, bytes)`` for each digest, in order, each verified against its digest;
        ``streamed``: large blobs as :class:`BlobStream` (read as they are sent on)."""
        yield from self.service.blobs.read_many(digests, caller=self.caller, streamed=streamed)

    def list(self, prefix: str | None = None, *, method: str | None = None,
             base: str | None = None, labels: dict[str, str] | None = None
             ) -> list[VersionInfo]:
        """Live versions, by repository then newest first; filters combine (AND).

        ``base`` is a base-model fingerprint (``sha256:…``) or name.
        """
        return self._reads().list_versions(prefix, caller=self.caller, method=method,
                                           base=base, labels=labels)

    def repositories(self, prefix: str | None = None) -> list[str]:
        """Names of repositories (with or without live versions), sorted."""
        return self.service.repositories(prefix, caller=self.caller)

    def log(self, name: str) -> list[VersionInfo]:
        """All versions of one repository, newest first (soft-deleted ones flagged)."""
        return self._reads().log(name, caller=self.caller)

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """Settings that differ and the norm of each tensor's change, from ``a`` to ``b``."""
        import torch

        from adapterhub.engines.diff import diff_manifests
        from adapterhub.io.safetensors import torch_dtype

        va, vb = self.resolve(a), self.resolve(b)

        def load(entry):
            data = self.read_blob(entry.digest)
            return torch.frombuffer(data, dtype=torch_dtype(entry.dtype)).reshape(entry.shape)

        return {"a": va.ref, "b": vb.ref, **diff_manifests(va.manifest, vb.manifest, load)}

    def usage(self) -> Usage:
        return self.service.usage()

    def events(self, repository: str | None = None, limit: int = 100) -> list[EventInfo]:
        """The audit log (pushes, pulls, tag moves, deletions, gc runs), newest first."""
        return self.service.events(caller=self.caller, repository=repository, limit=limit)

    # -- tags, deletion, maintenance ----------------------------------------------------------

    def tag(self, ref: str, tag: str) -> VersionInfo:
        """Point ``tag`` at the version ``ref`` names (moving it if it exists)."""
        return self.service.tag(ref, tag, caller=self.caller)

    def untag(self, ref: str) -> VersionInfo:
        """Delete the tag in ``ns/name:TAG``; returns the version it pointed at."""
        from registry_db.refs import parse_ref

        parsed = parse_ref(ref)
        if parsed.tag is None:
            raise RefError(f"{ref!r} names no tag", hint="Write it as ns/name:TAG")
        return self.service.untag(parsed.name, parsed.tag, caller=self.caller)

    def rm(self, ref: str) -> VersionInfo:
        """Soft-delete a version (its tags go too); ``gc`` reclaims the bytes later."""
        return self.service.remove(ref, caller=self.caller)

    def gc(self, *, keep_last: int | None = None, keep_tagged: bool = False,
           per_label: str | None = None, prefix: str | None = None, dry_run: bool = False,
           grace: timedelta = timedelta(hours=1)) -> GcReport:
        """Retention (``keep_last`` newest live versions per repository, or per value of label
        ``per_label``; ``keep_tagged`` spares tagged ones; ``prefix`` limits it to matching
        repositories), then removal of deleted versions nothing descends from and of blobs
        nothing references that were untouched for ``grace``. ``dry_run`` reports only."""
        return self.service.gc(caller=self.caller, keep_last=keep_last,
                               keep_tagged=keep_tagged, per_label=per_label, prefix=prefix,
                               dry_run=dry_run, grace=grace)

    def choose_blob_backend(self, where: str) -> str:
        """Record, once, where this registry keeps its blobs: ``db`` (in the database, the
        default) or ``s3://BUCKET/PREFIX`` (an S3-compatible store reached with the standard
        AWS variables and profiles). Returns the backend."""
        return self.service.choose_blob_backend(where, caller=self.caller)

    def migrate_blobs(self, to: str) -> MigrateReport:
        """Move the blobs kept in the database into the object store ``to``
        (``s3://BUCKET/PREFIX``), which becomes the registry's blob backend: resumable (run
        it again after an interruption), every byte verified, readers served throughout."""
        return self.service.migrate_blobs(to, caller=self.caller)

    @property
    def blob_backend(self) -> str:
        """``db`` or the ``s3://BUCKET/PREFIX`` this registry keeps its blobs in."""
        return self.service.blob_backend

    def verify(self, *, deep: bool = False) -> VerifyReport:
        """Re-hash every blob and check every reference; see ``report.problems``. Blobs in an
        object store are checked for existence and size, and re-hashed with ``deep``."""
        return self.service.verify(caller=self.caller, deep=deep)

    def promote(self, ref: str, tag: str, conditions: Iterable[str] = ()) -> VersionInfo:
        """Move ``tag`` to ``ref`` if every condition (``'METRIC>=X'``) holds on its metrics.

        Raises :class:`PromotionError`, saying which condition failed, and leaves the tag
        where it was.
        """
        from adapterhub.engines.conditions import metric_value, parse_condition

        parsed = [parse_condition(c) for c in conditions]
        version = self.resolve(ref)
        for condition in parsed:
            value = metric_value(version.manifest.metrics, condition.metric)
            if not condition.holds(value):
                where = self._tag_position(version.name, tag)
                raise PromotionError(f"not promoted: {version.ref} has {condition.metric}="
                                     f"{value:g}, which fails {condition}; tag {tag!r} "
                                     f"{where}")
        promoted = self.tag(version.ref, tag)
        self.service.record_event("promote", version=promoted, caller=self.caller,
                                  detail={"tag": tag, "conditions": [str(c) for c in parsed]})
        return promoted

    def _tag_position(self, name: str, tag: str) -> str:
        try:
            return f"stays on {self.resolve(f'{name}:{tag}').ref}"
        except (AdapterNotFoundError, RefError):
            return "was not created"

    # -- remotes ----------------------------------------------------------------------------

    def add_remote(self, name: str, url: str) -> RemoteInfo:
        """Remember ``url`` as remote ``name`` (its scheme must belong to an installed remote
        kind; a path is stored absolute)."""
        remote_class(url)
        return self.service.remotes.add(name, canonical_url(url))

    def remotes(self) -> list[RemoteInfo]:
        return self.service.remotes.list()

    def remove_remote(self, name: str) -> RemoteInfo:
        return self.service.remotes.remove(name)

    def remote(self, name_or_url: str) -> Remote:
        """Connect to a remote by name (see :meth:`add_remote`) or by URL/path."""
        known = (self._reader.remote(name_or_url) if self._reader is not None
                 else self.service.remotes.get(name_or_url))
        if known is not None:
            return open_remote(known.url)
        if "://" not in name_or_url and not is_path_like(name_or_url):
            names = ", ".join(r.name for r in self.remotes()) or "none"
            raise AdapterNotFoundError(f"no remote named {name_or_url!r} (remotes: {names})",
                                       hint="Add one with: adapterhub remote add NAME URL")
        return open_remote(name_or_url)


def open_registry(where: str | None = None, *, db: str | os.PathLike[str] | None = None
                  ) -> Registry | HttpRegistry:
    """The registry a command works on: the local one (``db``), or, with ``where`` (a remote
    name, a hub URL, or another registry's path or URL), that one. A hub answers over HTTP
    (:class:`~adapterhub.registry.http_registry.HttpRegistry`); a database is opened
    directly."""
    if where is None:
        return Registry(db)
    url = where
    if "://" not in where and not is_path_like(where):
        with Registry(db) as local:
            known = local.service.remotes.get(where)
            if known is None:
                names = ", ".join(r.name for r in local.remotes()) or "none"
                raise AdapterNotFoundError(f"no remote named {where!r} (remotes: {names})",
                                           hint="Add one with: adapterhub remote add NAME URL")
        url = known.url
    scheme = scheme_of(url)
    if scheme in ("http", "https"):
        from adapterhub.registry.http_registry import HttpRegistry

        return HttpRegistry(url)
    if scheme in ("sqlite", "postgresql"):
        return Registry(url)
    raise RefError(f"{url} is a {scheme}:// remote; list, log, show, tag, rm, gc and verify "
                   f"work on a registry database or an adapterhub hub",
                   hint="Use the remote's own tools, or pull from it first")
