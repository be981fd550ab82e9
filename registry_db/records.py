"""What the service returns: frozen dataclasses, never ORM rows (they outlive sessions)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Union

from registry_db.errors import IntegrityError
from registry_db.manifest import Manifest

Buffer = Union[bytes, bytearray, memoryview]


@dataclass(frozen=True)
class VersionInfo:
    """One version as stored in a registry.

    ``manifest`` is filled in by single-version lookups (``resolve``, ``find``, ``commit``) and
    left ``None`` in listings, which stay fast with thousands of versions. Version numbers are
    local to a registry; the ``digest`` is the identity that travels between registries.
    """

    name: str
    number: int
    digest: str
    method: str
    base_name: str | None
    base_fingerprint: str | None
    size: int
    created_at: datetime
    author: str | None = None
    message: str | None = None
    tags: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    deleted: bool = False
    manifest: Manifest | None = field(default=None, repr=False, compare=False)

    @property
    def ref(self) -> str:
        """``ns/name@N``: this version in this registry."""
        return f"{self.name}@{self.number}"

    def to_dict(self, *, with_manifest: bool = False) -> dict[str, Any]:
        out = {"name": self.name, "number": self.number, "ref": self.ref, "digest": self.digest,
               "method": self.method, "base_model": {"name": self.base_name,
                                                     "fingerprint": self.base_fingerprint},
               "size": self.size, "created_at": self.created_at.isoformat(),
               "author": self.author, "message": self.message, "tags": list(self.tags),
               "labels": dict(self.labels), "parents": list(self.parents),
               "deleted": self.deleted}
        if with_manifest and self.manifest is not None:
            out["manifest"] = json.loads(self.manifest.canonical())
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionInfo:
        """The inverse of :meth:`to_dict` (what a network remote receives)."""
        manifest = data.get("manifest")
        return cls(name=data["name"], number=data["number"], digest=data["digest"],
                   method=data["method"], base_name=data["base_model"]["name"],
                   base_fingerprint=data["base_model"]["fingerprint"], size=data["size"],
                   created_at=datetime.fromisoformat(data["created_at"]),
                   author=data.get("author"), message=data.get("message"),
                   tags=tuple(data.get("tags", ())), labels=dict(data.get("labels", {})),
                   parents=tuple(data.get("parents", ())), deleted=data.get("deleted", False),
                   manifest=None if manifest is None else Manifest.from_dict(manifest))


@dataclass(frozen=True)
class CommitResult:
    """The version a commit produced or found, and whether it is new."""

    version: VersionInfo
    created: bool


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    stored_size: int
    codec: str


@dataclass(frozen=True)
class StoredBlob:
    """A blob as a registry stores it: its codec and, per chunk, the raw size and the stored
    (compressed) bytes. Another registry with the same codecs keeps those bytes as they are
    (no decompress, no recompress) after checking them against the digest."""

    digest: str
    size: int
    codec: str
    chunk_size: int
    chunks: tuple[tuple[int, bytes], ...]  # (raw size, stored bytes), in order

    @property
    def stored_size(self) -> int:
        return sum(len(data) for _, data in self.chunks)


@dataclass(frozen=True)
class BlobStream:
    """A blob too large to hold in memory: ``size`` raw bytes that each call of ``pieces``
    yields again from the start, in order, in pieces of any size. A source may check the
    bytes it yields (raising :class:`IntegrityError` after the last piece); whoever stores
    or sends the blob hashes them anyway, so only a blob that matches its digest is kept."""

    size: int
    pieces: Callable[[], Iterable[Buffer]]

    @classmethod
    def of(cls, data: Buffer) -> BlobStream:
        """A blob already in memory (or mapped from a file), read in views, never copied."""
        view = memoryview(data).cast("B")
        return cls(len(view), lambda: (view,))

    def read(self) -> bytearray:
        """The whole blob in memory (for a consumer that needs it whole)."""
        data = bytearray()
        for piece in self.pieces():
            data += piece
        return data

    def chunks(self, chunk_size: int) -> Iterator[memoryview]:
        """The bytes again in chunks of ``chunk_size`` (the last may be shorter; one empty
        chunk for an empty blob): views of the pieces where a piece holds a whole chunk, else
        copied together. :class:`IntegrityError` if the pieces do not add up to ``size``."""
        pending = bytearray()
        total = 0
        for piece in self.pieces():
            view = memoryview(piece).cast("B")
            total += len(view)
            if total > self.size:
                raise IntegrityError(f"a blob of {self.size} bytes went on past its end")
            if pending:
                taken = chunk_size - len(pending)
                pending += view[:taken]
                view = view[taken:]
                if len(pending) == chunk_size:
                    yield memoryview(pending)
                    pending = bytearray()
            while len(view) >= chunk_size:
                yield view[:chunk_size]
                view = view[chunk_size:]
            pending += view
        if total != self.size:
            raise IntegrityError(f"a blob of {self.size} bytes ended after {total}")
        if pending or not self.size:
            yield memoryview(pending)


@dataclass(frozen=True)
class UploadInfo:
    """A resumable upload: send chunks ``0 … n-1`` of ``chunk_size`` raw bytes (the last may
    be shorter), in any order and again after a failure, then finish it."""

    upload_id: str
    digest: str
    size: int
    chunk_size: int
    received: tuple[int, ...]
    #: with an object store: presigned URLs to ``PUT`` chunk ``i`` to, straight to the store
    urls: tuple[str, ...] = ()
    #: headers to send with each of those ``PUT`` requests
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    @property
    def missing(self) -> tuple[int, ...]:
        have = set(self.received)
        return tuple(i for i in range(self.chunk_count) if i not in have)


@dataclass(frozen=True)
class Usage:
    """How much the registry holds. ``raw_bytes`` counts each distinct blob once."""

    repositories: int
    versions: int
    deleted_versions: int
    blobs: int
    raw_bytes: int
    stored_bytes: int
    partial_uploads: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class GcReport:
    """What gc removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    retired: tuple[str, ...]  # versions soft-deleted by the retention policy
    purged: tuple[str, ...]  # soft-deleted versions removed for good
    kept_for_lineage: tuple[str, ...]  # soft-deleted versions kept: a live version descends
    blobs_removed: int
    bytes_freed: int  # stored bytes
    uploads_removed: int  # abandoned partial uploads
    objects_removed: int = 0  # object-store objects no blob row names (s3 backend)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GcReport:
        return cls(dry_run=data["dry_run"], retired=tuple(data["retired"]),
                   purged=tuple(data["purged"]),
                   kept_for_lineage=tuple(data["kept_for_lineage"]),
                   blobs_removed=data["blobs_removed"], bytes_freed=data["bytes_freed"],
                   uploads_removed=data["uploads_removed"],
                   objects_removed=data.get("objects_removed", 0))


@dataclass(frozen=True)
class Problem:
    """One thing ``verify`` found wrong. ``versions`` are the refs it affects."""

    kind: str
    message: str
    blob: str | None = None
    versions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "blob": self.blob,
                "versions": list(self.versions)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Problem:
        return cls(data["kind"], data["message"], data.get("blob"),
                   tuple(data.get("versions", ())))


@dataclass(frozen=True)
class VerifyReport:
    problems: tuple[Problem, ...]
    versions_checked: int
    blobs_checked: int
    bytes_checked: int
    unreferenced_blobs: int  # reclaimable by gc; not a problem
    partial_uploads: int  # in flight or abandoned; not a problem

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [p.to_dict() for p in self.problems],
                "versions_checked": self.versions_checked, "blobs_checked": self.blobs_checked,
                "bytes_checked": self.bytes_checked,
                "unreferenced_blobs": self.unreferenced_blobs,
                "partial_uploads": self.partial_uploads}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifyReport:
        return cls(problems=tuple(Problem.from_dict(p) for p in data["problems"]),
                   versions_checked=data["versions_checked"],
                   blobs_checked=data["blobs_checked"], bytes_checked=data["bytes_checked"],
                   unreferenced_blobs=data["unreferenced_blobs"],
                   partial_uploads=data["partial_uploads"])


@dataclass(frozen=True)
class RemoteInfo:
    name: str
    url: str
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class EventInfo:
    at: datetime
    action: str
    repository: str | None
    number: int | None
    digest: str | None
    actor: str | None
    detail: dict[str, Any]
    token_id: int | None = None  # the hub token that acted (the actor is its name)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}


@dataclass(frozen=True)
class MigrateReport:
    """What ``blobs migrate`` moved into the object store."""

    to: str
    blobs_moved: int
    bytes_moved: int
    blobs_already_there: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
