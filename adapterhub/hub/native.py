"""The native API (``/api/v1``): what ``adapterhub push/pull`` over ``http(s)://`` talk to.

A push: ``POST /api/v1/blobs/missing`` with the version's blob digests; small missing blobs
go in one ``POST /api/v1/blobs`` bundle, large ones as resumable uploads (``POST
/api/v1/uploads`` (which continues an unfinished upload of the same blob), ``PUT
/api/v1/uploads/{id}/chunks/{i}`` in any order, ``GET /api/v1/uploads/{id}`` to see what
arrived, ``POST /api/v1/uploads/{id}/finish``, where the hub re-hashes the whole blob); then
``POST …/commit`` records the manifest in one transaction (409 ``MissingBlobs`` if a blob is
still absent). A pull: ``GET /api/v1/resolve?ref=…``, then ``POST …/blobs/read`` (a framed
stream of small blobs) and ``GET …/blobs/{digest}`` (with ``Range``) for large ones.

Bundle bodies: 8-byte little-endian length, a JSON list of ``{"digest", "size",
"itemsize"}``, then the blobs' bytes back to back. Read streams: per blob, an 8-byte
little-endian size and the bytes; size ``2**64-1`` is an error frame (8-byte length, JSON).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from adapterhub.hub.auth import Principal, principal
from adapterhub.hub.context import hub_of
from adapterhub.hub.errors import HubError
from registry_db import Manifest, parse_ref, validate_name
from registry_db.digests import is_digest
from registry_db.errors import CorruptionError, NotFoundError, RegistryDBError

router = APIRouter()
ERROR_FRAME = 2**64 - 1
FRAME_BATCH = 4 << 20  # bytes of small blobs per write when streaming them
BUNDLE_FILES = 10_000  # blobs per bundle at most


def json_response(data: Any) -> Response:
    """JSON straight from ``json.dumps``: FastAPI's encoder takes ~40x longer on manifests."""
    return Response(json.dumps(data, separators=(",", ":")), media_type="application/json")


def full_name(namespace: str, name: str) -> str:
    return validate_name(f"{namespace}/{name}")


def digest_list(body: dict[str, Any], key: str = "digests") -> list[str]:
    digests = body.get(key)
    if not isinstance(digests, list) or len(digests) > 100_000 or not all(
            isinstance(d, str) and is_digest(d) for d in digests):
        raise HubError(400, f"'{key}' must be a list of sha256:<64 hex> digests")
    return digests


# -- service ------------------------------------------------------------------------------


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    """Liveness and readiness: the registry answers a query."""
    hub = hub_of(request)
    hub.registry.service.repositories("-")  # one cheap round trip (no name starts with -)
    return {"status": "ok", "auth": hub.auth}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text format: request counters and what the registry holds."""
    hub = hub_of(request)
    usage = hub.registry.usage().to_dict()
    return PlainTextResponse(hub.metrics.render(usage),
                             media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/api/v1/whoami")
def whoami(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"token": who.token.to_dict() if who.token else None, "auth": hub_of(request).auth}


# -- reading ------------------------------------------------------------------------------


@router.get("/api/v1/resolve")
def resolve(request: Request, ref: str = Query(..., max_length=300),
            who: Principal = Depends(principal)) -> Response:
    """The version a ref names, with its manifest."""
    parsed = parse_ref(ref)
    who.require("read", parsed.name)
    return json_response(hub_of(request).registry.resolve(ref).to_dict(with_manifest=True))


@router.get("/api/v1/find/{digest}")
def find(request: Request, digest: str, who: Principal = Depends(principal)) -> Response:
    """A version with this manifest digest that the caller may read (404 if none)."""
    found = hub_of(request).registry.service.find(digest)
    if found is None or not who.can("read", found.name):
        raise HubError(404, f"no version with digest {digest}")
    return json_response(found.to_dict(with_manifest=True))


@router.get("/api/v1/versions")
def versions(request: Request, prefix: str | None = None, method: str | None = None,
             base: str | None = None, label: list[str] = Query(default=[]),
             who: Principal = Depends(principal)) -> Response:
    """Live versions (search): by name prefix, method, base model, labels ``K=V``."""
    who.require("read")
    labels = {}
    for pair in label:
        key, sep, value = pair.partition("=")
        if not sep:
            raise HubError(400, f"labels are KEY=VALUE; got {pair!r}")
        labels[key] = value
    found = hub_of(request).registry.list(prefix, method=method, base=base, labels=labels)
    return json_response([v.to_dict() for v in found if who.can("read", v.name)])


@router.get("/api/v1/repos")
def repositories(request: Request, who: Principal = Depends(principal)) -> list[dict[str, Any]]:
    """Repositories the caller may read, each with its newest version and tags."""
    who.require("read")
    hub = hub_of(request)
    latest: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for v in hub.registry.list():
        counts[v.name] = counts.get(v.name, 0) + 1
        latest.setdefault(v.name, v.to_dict())
    return [{"name": name, "versions": counts.get(name, 0), "latest": latest.get(name)}
            for name in hub.registry.service.repositories() if who.can("read", name)]


@router.get("/api/v1/repos/{namespace}/{name}/log")
def log(request: Request, namespace: str, name: str,
        who: Principal = Depends(principal)) -> Response:
    repo = full_name(namespace, name)
    who.require("read", repo)
    return json_response([v.to_dict() for v in hub_of(request).registry.log(repo)])


@router.get("/api/v1/lineage")
def lineage(request: Request, ref: str = Query(..., max_length=300),
            who: Principal = Depends(principal)) -> Response:
    """A version, the versions it descends from (nearest first) and those made from it."""
    who.require("read", parse_ref(ref).name)
    service = hub_of(request).registry.service
    version = service.resolve(ref)
    ancestors: list[dict[str, Any]] = []
    seen: set[str] = set()
    frontier = [(p, 1) for p in version.parents]
    while frontier:
        digest, depth = frontier.pop(0)
        if digest in seen:
            continue
        seen.add(digest)
        parent = service.find(digest)
        if parent is None or not who.can("read", parent.name):
            ancestors.append({"digest": digest, "depth": depth, "visible": False})
            continue
        ancestors.append({**parent.to_dict(), "depth": depth, "visible": True})
        frontier += [(p, depth + 1) for p in parent.parents]
    children = [c.to_dict() for c in service.children(version.digest) if who.can("read", c.name)]
    return json_response({"version": version.to_dict(), "ancestors": ancestors,
                          "children": children})


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for ``bytes=N-[M]``; None without a header; 416 if bad."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    try:
        if unit.strip() != "bytes" or not dash or "," in spec:
            raise ValueError
        if first:
            start, end = int(first), int(last) if last else size - 1
        else:  # bytes=-N: the last N bytes
            start, end = max(0, size - int(last)), size - 1
    except ValueError:
        start, end = size, size  # unsatisfiable
    if start > end or start >= size or start < 0:
        raise HubError(416, f"range {header!r} is not within the {size} bytes",
                       headers={"Content-Range": f"bytes */{size}"})
    return start, min(end, size - 1)


@router.get("/api/v1/repos/{namespace}/{name}/blobs/{digest}")
def read_blob(request: Request, namespace: str, name: str, digest: str,
              who: Principal = Depends(principal)) -> Response:
    """One blob's bytes; ``Range: bytes=N-`` resumes an interrupted download (206)."""
    repo = full_name(namespace, name)
    who.require("read", repo)
    service = hub_of(request).registry.service
    if not is_digest(digest) or not service.references_blob(repo, digest):
        raise HubError(404, f"{repo} has no blob {digest[:80]}")
    info = service.blobs.info(digest)
    span = _range(request.headers.get("range"), info.size)
    start, end = span or (0, info.size - 1)

    def body() -> Iterator[bytes]:
        sent = 0
        wanted = end - start + 1
        for piece in service.blobs.iter(digest, offset=start):
            piece = piece[:wanted - sent]
            sent += len(piece)
            yield piece
            if sent >= wanted:
                return

    headers = {"Content-Length": str(end - start + 1), "Accept-Ranges": "bytes",
               "ETag": f'"{digest.removeprefix("sha256:")}"'}
    if span is None:
        return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)
    headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    return StreamingResponse(body(), status_code=206, media_type="application/octet-stream",
                             headers=headers)


@router.post("/api/v1/repos/{namespace}/{name}/blobs/read")
def read_blobs(request: Request, namespace: str, name: str, body: dict = Body(...),
               who: Principal = Depends(principal)) -> StreamingResponse:
    """Several blobs in one framed stream, each verified as it is read."""
    repo = full_name(namespace, name)
    who.require("read", repo)
    digests = digest_list(body)
    service = hub_of(request).registry.service
    for digest in dict.fromkeys(digests):
        if not service.references_blob(repo, digest):
            raise HubError(404, f"{repo} has no blob {digest}")

    def frames() -> Iterator[bytes]:
        pending: list[bytes] = []  # small frames go out together (fewer thread hops)
        size = 0
        try:
            for _, data in service.blobs.read_many(digests):
                pending += [struct.pack("<Q", len(data)), data]
                size += len(data)
                if size >= FRAME_BATCH:
                    yield b"".join(pending)
                    pending, size = [], 0
        except RegistryDBError as exc:
            error = json.dumps({"error": exc.message, "hint": exc.hint}).encode()
            pending.append(struct.pack("<QQ", ERROR_FRAME, len(error)) + error)
        if pending:
            yield b"".join(pending)

    return StreamingResponse(frames(), media_type="application/octet-stream")


# -- writing ------------------------------------------------------------------------------


@router.post("/api/v1/blobs/missing")
def missing_blobs(request: Request, body: dict = Body(...),
                  who: Principal = Depends(principal)) -> dict[str, Any]:
    """Which of the digests the hub lacks (the ones it has are kept from gc from now on).

    Blob writes need a write scope on some repository; a blob is only readable through a
    version that uses it, so storing one reveals or grants nothing."""
    who.require("write")
    missing = hub_of(request).registry.service.blobs.missing(digest_list(body))
    return {"missing": sorted(missing)}


@router.post("/api/v1/blobs")
async def upload_bundle(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Small blobs in one body. Every blob is hashed before anything is stored: one that
    does not match its digest refuses the whole bundle (422) and nothing is written."""
    who.require("write")
    body = await request.body()
    if len(body) < 8:
        raise HubError(400, "a blob bundle starts with an 8-byte index length")
    (length,) = struct.unpack_from("<Q", body)
    try:
        index = json.loads(body[8:8 + length]) if length <= len(body) - 8 else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        index = None
    if not isinstance(index, list) or len(index) > BUNDLE_FILES or not all(
            isinstance(e, dict) and isinstance(e.get("digest"), str) and is_digest(e["digest"])
            and isinstance(e.get("size"), int) and e["size"] >= 0
            and isinstance(e.get("itemsize", 1), int) and 1 <= e.get("itemsize", 1) <= 8
            for e in index):
        raise HubError(400, "malformed blob bundle index: expected a JSON list of "
                            "{digest, size, itemsize}")
    data = memoryview(body)[8 + length:]
    if sum(e["size"] for e in index) != len(data):
        raise HubError(400, f"the bundle index announces {sum(e['size'] for e in index)} "
                            f"bytes; the body holds {len(data)}")
    blobs, offset = [], 0
    for entry in index:
        piece = data[offset:offset + entry["size"]]
        offset += entry["size"]
        blobs.append((entry["digest"], piece, entry.get("itemsize", 1)))

    def store() -> None:
        for digest, piece, _ in blobs:
            actual = "sha256:" + hashlib.sha256(piece).hexdigest()
            if actual != digest:
                raise CorruptionError(f"bytes sent for blob {digest} hash to {actual}; nothing "
                                      f"was stored", hint="The source is corrupt; push again")
        hub_of(request).registry.service.blobs.write_many(blobs)

    await run_in_threadpool(store)
    return {"stored": len(blobs)}


@router.post("/api/v1/uploads")
def begin_upload(request: Request, body: dict = Body(...),
                 who: Principal = Depends(principal)) -> dict[str, Any]:
    """Start (or resume) an upload of one large blob. ``{"complete": true}`` if stored."""
    who.require("write")
    digest, size, itemsize = body.get("digest"), body.get("size"), body.get("itemsize", 1)
    if not (isinstance(digest, str) and is_digest(digest) and isinstance(size, int)
            and size >= 0 and isinstance(itemsize, int) and 1 <= itemsize <= 8):
        raise HubError(400, "an upload needs 'digest' (sha256:<hex>), 'size' (bytes) and "
                            "optionally 'itemsize' (1-8)")
    info = hub_of(request).registry.service.blobs.resume_upload(digest, size, itemsize=itemsize)
    if info is None:
        return {"complete": True, "digest": digest}
    return _upload(info)


def _upload(info) -> dict[str, Any]:
    return {"complete": False, "upload_id": info.upload_id, "digest": info.digest,
            "size": info.size, "chunk_size": info.chunk_size, "received": list(info.received)}


@router.get("/api/v1/uploads/{upload_id}")
def upload_status(request: Request, upload_id: str,
                  who: Principal = Depends(principal)) -> dict[str, Any]:
    who.require("write")
    return _upload(hub_of(request).registry.service.blobs.upload_status(upload_id))


@router.put("/api/v1/uploads/{upload_id}/chunks/{index}")
async def upload_chunk(request: Request, upload_id: str, index: int,
                       who: Principal = Depends(principal)) -> Response:
    who.require("write")
    data = await request.body()
    await run_in_threadpool(hub_of(request).registry.service.blobs.upload_chunk, upload_id,
                            index, data)
    return Response(status_code=204)


@router.post("/api/v1/uploads/{upload_id}/finish")
def finish_upload(request: Request, upload_id: str,
                  who: Principal = Depends(principal)) -> dict[str, Any]:
    """Re-hash the whole blob; 422 (and the upload discarded) if it does not match."""
    who.require("write")
    info = hub_of(request).registry.service.blobs.finish_upload(upload_id)
    return {"digest": info.digest, "size": info.size, "stored_size": info.stored_size}


@router.post("/api/v1/repos/{namespace}/{name}/commit")
def commit(request: Request, namespace: str, name: str, body: dict = Body(...),
           who: Principal = Depends(principal)) -> Response:
    """Record a manifest as the next version and move tags, in one transaction."""
    repo = full_name(namespace, name)
    who.require("write", repo)
    manifest = body.get("manifest")
    tags = body.get("tags", [])
    created_at = body.get("created_at")
    if not isinstance(manifest, dict) or not isinstance(tags, list):
        raise HubError(400, "a commit needs 'manifest' (an object) and optional 'tags' (a list)")
    for key in ("message", "author"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise HubError(400, f"'{key}' must be a string")
    try:
        when = datetime.fromisoformat(created_at) if created_at else None
    except (TypeError, ValueError):
        raise HubError(400, f"'created_at' is not an ISO time: {str(created_at)[:40]!r}") from None
    if when is not None and when.tzinfo is None:
        raise HubError(400, "'created_at' needs a time zone")
    result = hub_of(request).registry.service.commit(
        repo, Manifest.from_dict(manifest), message=body.get("message"),
        author=body.get("author") or who.actor, tags=tags, created_at=when)
    return json_response({"version": result.version.to_dict(with_manifest=True),
                          "created": result.created})


@router.put("/api/v1/repos/{namespace}/{name}/tags/{tag}")
def put_tag(request: Request, namespace: str, name: str, tag: str, body: dict = Body(...),
            who: Principal = Depends(principal)) -> dict[str, Any]:
    """Point ``tag`` at ``{"ref": …}`` (a version of this repository)."""
    repo = full_name(namespace, name)
    who.require("write", repo)
    ref = body.get("ref")
    if not isinstance(ref, str) or parse_ref(ref).name != repo:
        raise HubError(400, f"'ref' must name a version of {repo}")
    return hub_of(request).registry.service.tag(ref, tag, actor=who.actor).to_dict()


@router.delete("/api/v1/repos/{namespace}/{name}/tags/{tag}")
def delete_tag(request: Request, namespace: str, name: str, tag: str,
               who: Principal = Depends(principal)) -> dict[str, Any]:
    repo = full_name(namespace, name)
    who.require("write", repo)
    return hub_of(request).registry.service.untag(repo, tag, actor=who.actor).to_dict()


@router.delete("/api/v1/repos/{namespace}/{name}/versions/{number}")
def delete_version(request: Request, namespace: str, name: str, number: int,
                   who: Principal = Depends(principal)) -> dict[str, Any]:
    """Soft-delete a version (admin scope)."""
    repo = full_name(namespace, name)
    who.require("admin", repo)
    try:
        return hub_of(request).registry.service.remove(f"{repo}@{number}",
                                                       actor=who.actor).to_dict()
    except NotFoundError as exc:
        raise HubError(404, exc.message) from None
