"""The native API (``/api/v1``): what ``adapterhub push/pull`` over ``http(s)://`` talk to.

A push: ``POST /api/v1/blobs/missing`` with the version's blob digests; small missing blobs
go in one ``POST /api/v1/blobs`` bundle, large ones as resumable uploads (``POST
/api/v1/uploads`` (which continues an unfinished upload of the same blob; on an object store
``"presigned": true`` answers the URLs to ``PUT`` chunks to, and ``"direct": true`` says the
client sends the ``headers`` the answer lists, so the blob may be one ``PUT``), ``PUT
/api/v1/uploads/{id}/chunks/{i}`` in any order, ``GET /api/v1/uploads/{id}`` to see what
arrived, ``POST /api/v1/uploads/{id}/finish``, where the hub re-hashes the whole blob); then
``POST …/commit`` records the manifest in one transaction (409 ``MissingBlobs`` if a blob is
still absent). A pull: ``GET /api/v1/resolve?ref=…``, then ``POST …/blobs/read`` (a framed
stream of small blobs) and ``GET …/blobs/{digest}`` (with ``Range``) for large ones, or
``POST …/blobs/stored``: blobs as the hub stores them (compressed chunks, not decoded on the
hub; the client decodes and hashes every chunk before it stores them as they came). On an
object store, ``POST …/blobs/urls`` hands out presigned URLs of many large blobs at once, and
``GET …/blobs/{digest}`` answers a ``307`` to one.

Every route hands the store the caller (:func:`adapterhub.hub.auth.registry`), and the store
decides: which blobs "exist" for this caller, whose upload an id names, who may commit,
tag, delete or restore. Upload ids are random and belong to the token that opened them.

Bundle bodies: 8-byte little-endian length, a JSON list of ``{"digest", "size",
"itemsize"}``, then the blobs' bytes back to back. Read streams: per blob, an 8-byte
little-endian size and the bytes; size ``2**64-1`` is an error frame (8-byte length, JSON).
Stored streams: per blob, an 8-byte little-endian header length, a JSON header ``{"digest",
"size", "codec", "chunk_size", "chunks": [[raw size, stored size], …]}`` and the stored
chunks back to back; the same error frame.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from adapterhub.errors import (AdapterHubError, AdapterNotFoundError, IntegrityError,
                               InvalidRequestError, RangeNotSatisfiableError)
from adapterhub.hub.auth import caller, registry
from adapterhub.hub.bodies import (digest_list, json_object, json_response, json_response_with,
                                   string_field)
from adapterhub.hub.context import hub_of, small_read
from adapterhub.registry import Registry
from registry_db import Caller, Manifest, parse_ref, validate_name
from registry_db.digests import is_digest

router = APIRouter()
ERROR_FRAME = 2**64 - 1
FRAME_BATCH = 4 << 20  # bytes of small blobs per write when streaming them
BUNDLE_FILES = 10_000  # blobs per bundle at most
MAX_URLS = 10_000  # presigned URLs per answer at most
MAX_INDEX = 8 << 20  # bytes of a bundle's JSON index


def full_name(namespace: str, name: str) -> str:
    return validate_name(f"{namespace}/{name}")


# -- service ------------------------------------------------------------------------------


#: how long a good answer from the database keeps /health from asking again
HEALTH_CHECK_EVERY = 1.0


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness and readiness: the registry answered a query within the last second (load
    balancers poll this; it must not cost a database round trip each time)."""
    hub = hub_of(request)
    if time.monotonic() >= hub.healthy_until:
        await run_in_threadpool(hub.registry.service.ping)
        hub.healthy_until = time.monotonic() + HEALTH_CHECK_EVERY
    return {"status": "ok", "auth": hub.auth}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, who: Caller = Depends(caller)) -> PlainTextResponse:
    """Prometheus text format: request counters and what the registry holds (admin)."""
    who.require_all("admin")
    hub = hub_of(request)
    usage = hub.registry.usage().to_dict()
    return PlainTextResponse(hub.metrics.render(usage),
                             media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/api/v1/whoami")
def whoami(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    return {"token": who.token.to_dict() if who.token else None, "auth": hub_of(request).auth}


# -- reading ------------------------------------------------------------------------------


@router.get("/api/v1/resolve")
async def resolve(request: Request, ref: str = Query(..., max_length=300),
                  reg: Registry = Depends(registry)) -> Response:
    """The version a ref names, with its manifest."""
    version = await small_read(request, reg.resolve, ref)
    return json_response_with(version.to_dict(), manifest=version.manifest.canonical())


@router.get("/api/v1/find/{digest}")
def find(digest: str, reg: Registry = Depends(registry)) -> Response:
    """A version with this manifest digest that the caller may read (404 if none)."""
    found = reg.find(digest)
    if found is None:
        raise AdapterNotFoundError(f"no version with digest {digest[:80]}")
    return json_response_with(found.to_dict(), manifest=found.manifest.canonical())


@router.get("/api/v1/versions")
def versions(prefix: str | None = Query(None, max_length=200),
             method: str | None = Query(None, max_length=64),
             base: str | None = Query(None, max_length=256),
             label: list[str] = Query(default=[], max_length=50),
             reg: Registry = Depends(registry)) -> Response:
    """Live versions the caller may read (search): by name prefix, method, base model,
    labels ``K=V``."""
    labels = {}
    for pair in label:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidRequestError(f"labels are KEY=VALUE; got {pair[:80]!r}")
        labels[key] = value
    found = reg.list(prefix, method=method, base=base, labels=labels)
    return json_response([v.to_dict() for v in found])


@router.get("/api/v1/repos")
def repositories(reg: Registry = Depends(registry)) -> Response:
    """Repositories the caller may read, each with its newest version and tags."""
    latest: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for v in reg.list():
        counts[v.name] = counts.get(v.name, 0) + 1
        latest.setdefault(v.name, v.to_dict())
    return json_response([{"name": name, "versions": counts.get(name, 0),
                           "latest": latest.get(name)} for name in reg.repositories()])


@router.get("/api/v1/repos/{namespace}/{name}/log")
def log(namespace: str, name: str, reg: Registry = Depends(registry)) -> Response:
    return json_response([v.to_dict() for v in reg.log(full_name(namespace, name))])


@router.get("/api/v1/lineage")
def lineage(ref: str = Query(..., max_length=300),
            reg: Registry = Depends(registry)) -> Response:
    """A version, the versions it descends from (nearest first) and those made from it.
    Ancestors the caller may not read appear only as a digest."""
    version = reg.resolve(ref)
    ancestors: list[dict[str, Any]] = []
    seen: set[str] = set()
    frontier = [(p, 1) for p in version.parents]
    while frontier and len(seen) < 10_000:
        digest, depth = frontier.pop(0)
        if digest in seen:
            continue
        seen.add(digest)
        parent = reg.find(digest)
        if parent is None:
            ancestors.append({"digest": digest, "depth": depth, "visible": False})
            continue
        ancestors.append({**parent.to_dict(), "depth": depth, "visible": True})
        frontier += [(p, depth + 1) for p in parent.parents]
    children = [c.to_dict() for c in reg.service.children(version.digest, caller=reg.caller)]
    return json_response({"version": version.to_dict(), "ancestors": ancestors,
                          "children": children})


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for ``bytes=N-[M]``; None without a header; 416 if bad."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    try:
        if unit.strip() != "bytes" or not dash or "," in spec or len(spec) > 40:
            raise ValueError
        if first:
            start, end = int(first), int(last) if last else size - 1
        else:  # bytes=-N: the last N bytes
            start, end = max(0, size - int(last)), size - 1
    except ValueError:
        start, end = size, size  # unsatisfiable
    if start > end or start >= size or start < 0:
        raise RangeNotSatisfiableError(f"range {header[:60]!r} is not within the {size} bytes",
                                       headers={"Content-Range": f"bytes */{size}"})
    return start, min(end, size - 1)


@router.get("/api/v1/repos/{namespace}/{name}/blobs/{digest}")
def read_blob(request: Request, namespace: str, name: str, digest: str,
              reg: Registry = Depends(registry)) -> Response:
    """One blob's bytes (one the caller may see); ``Range: bytes=N-`` resumes an
    interrupted download (206). A blob in an object store is a ``307`` redirect to a
    presigned URL: the bytes do not pass through the hub."""
    full_name(namespace, name)
    blobs, who = reg.service.blobs, reg.caller
    if not is_digest(digest):
        raise InvalidRequestError(f"invalid blob digest {digest[:80]!r}")
    info = blobs.info(digest, caller=who)
    url = blobs.download_url(digest, caller=who)
    if url is not None:
        return Response(status_code=307, headers={
            "Location": url, "X-Linked-Size": str(info.size),
            "ETag": f'"{digest.removeprefix("sha256:")}"'})
    span = byte_range(request.headers.get("range"), info.size)
    start, end = span or (0, info.size - 1)

    def body() -> Iterator[bytes]:
        sent = 0
        wanted = end - start + 1
        for piece in blobs.iter(digest, caller=who, offset=start):
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


@router.post("/api/v1/repos/{namespace}/{name}/blobs/urls")
def blob_urls(namespace: str, name: str, body: dict = Depends(json_object),
              reg: Registry = Depends(registry)) -> dict[str, Any]:
    """Presigned URLs of several blobs kept in the object store, in one answer (all must be
    blobs the caller may see; blobs kept in the database get none: read them here)."""
    full_name(namespace, name)
    return {"urls": reg.service.blobs.download_urls(digest_list(body, limit=MAX_URLS),
                                                    caller=reg.caller)}


@router.post("/api/v1/repos/{namespace}/{name}/blobs/read")
def read_blobs(namespace: str, name: str, body: dict = Depends(json_object),
               reg: Registry = Depends(registry)) -> StreamingResponse:
    """Several blobs in one framed stream, each verified as it is read (all must be blobs
    the caller may see)."""
    full_name(namespace, name)
    blobs = reg.service.blobs.read_many(digest_list(body), caller=reg.caller)  # checks them all now
    return framed((([struct.pack("<Q", len(data)), data], len(data)) for _, data in blobs))


@router.post("/api/v1/repos/{namespace}/{name}/blobs/stored")
def read_stored(namespace: str, name: str, body: dict = Depends(json_object),
                reg: Registry = Depends(registry)) -> StreamingResponse:
    """Several blobs as stored, in one framed stream (all must be blobs the caller may see);
    the receiver verifies them."""
    full_name(namespace, name)
    blobs = reg.service.blobs.read_stored(digest_list(body), caller=reg.caller)

    def frames() -> Iterator[tuple[list[bytes], int]]:
        for blob in blobs:
            header = json.dumps({"digest": blob.digest, "size": blob.size,
                                 "codec": blob.codec, "chunk_size": blob.chunk_size,
                                 "chunks": [[raw, len(data)] for raw, data in blob.chunks]
                                 }).encode()
            yield ([struct.pack("<Q", len(header)), header,
                    *(data for _, data in blob.chunks)], blob.stored_size)

    return framed(frames())


def framed(frames: Iterator[tuple[list[bytes], int]]) -> StreamingResponse:
    """A stream of frames (``(pieces, size)``), small ones sent together (fewer thread hops);
    an error while reading ends the stream with an error frame the client raises."""

    def body() -> Iterator[bytes]:
        pending: list[bytes] = []
        size = 0
        try:
            for pieces, length in frames:
                pending += pieces
                size += length
                if size >= FRAME_BATCH:
                    yield b"".join(pending)
                    pending, size = [], 0
        except AdapterHubError as exc:
            error = json.dumps({"error": exc.message, "hint": exc.hint, "code": exc.code})
            pending.append(struct.pack("<QQ", ERROR_FRAME, len(error)) + error.encode())
        if pending:
            yield b"".join(pending)

    return StreamingResponse(body(), media_type="application/octet-stream")


# -- writing ------------------------------------------------------------------------------


@router.post("/api/v1/blobs/missing")
def missing_blobs(body: dict = Depends(json_object),
                  reg: Registry = Depends(registry)) -> dict[str, Any]:
    """Which of the digests the caller must send: blobs the hub lacks and blobs it may not
    see (the same answer, so nothing leaks). The others are kept from gc from now on."""
    return {"missing": sorted(reg.service.blobs.missing(digest_list(body),
                                                       caller=reg.caller))}


def parse_bundle(body: bytes) -> list[tuple[str, memoryview, int]]:
    """``(digest, bytes, itemsize)`` of each blob in a bundle body (see the module doc)."""
    if len(body) < 8:
        raise InvalidRequestError("a blob bundle starts with an 8-byte index length")
    (length,) = struct.unpack_from("<Q", body)
    index = None
    if length <= min(len(body) - 8, MAX_INDEX):
        try:
            index = json.loads(body[8:8 + length])
        except (UnicodeDecodeError, ValueError, RecursionError):
            index = None
    if not isinstance(index, list) or len(index) > BUNDLE_FILES or not all(
            isinstance(e, dict) and isinstance(e.get("digest"), str) and is_digest(e["digest"])
            and isinstance(e.get("size"), int) and 0 <= e["size"] <= len(body)
            and isinstance(e.get("itemsize", 1), int) and 1 <= e.get("itemsize", 1) <= 8
            for e in index):
        raise InvalidRequestError("malformed blob bundle index: expected a JSON list of "
                                  "{digest, size, itemsize}")
    data = memoryview(body)[8 + length:]
    if sum(e["size"] for e in index) != len(data):
        raise InvalidRequestError(f"the bundle index announces "
                                  f"{sum(e['size'] for e in index)} bytes; the body holds "
                                  f"{len(data)}")
    blobs, offset = [], 0
    for entry in index:
        blobs.append((entry["digest"], data[offset:offset + entry["size"]],
                      entry.get("itemsize", 1)))
        offset += entry["size"]
    return blobs


@router.post("/api/v1/blobs")
async def upload_bundle(request: Request, reg: Registry = Depends(registry)) -> dict[str, Any]:
    """Small blobs in one body. Every blob is hashed before anything is stored: one that
    does not match its digest refuses the whole bundle (422) and nothing is written. The
    caller may use every blob it sent from now on."""
    blobs = parse_bundle(await request.body())

    def store() -> None:
        for digest, piece, _ in blobs:
            actual = "sha256:" + hashlib.sha256(piece).hexdigest()
            if actual != digest:
                raise IntegrityError(f"bytes sent for blob {digest} hash to {actual}; nothing "
                                     f"was stored", hint="The source is corrupt; push again")
        reg.service.blobs.write_many(blobs, caller=reg.caller)

    await run_in_threadpool(store)
    return {"stored": len(blobs)}


@router.post("/api/v1/uploads")
def begin_upload(body: dict = Depends(json_object),
                 reg: Registry = Depends(registry)) -> dict[str, Any]:
    """Start (or resume one of the caller's own) upload of one large blob;
    ``{"complete": true}`` when the caller may use the blob already."""
    digest, size, itemsize = body.get("digest"), body.get("size"), body.get("itemsize", 1)
    presigned, direct = body.get("presigned", False), body.get("direct", False)
    if not (isinstance(digest, str) and is_digest(digest) and type(size) is int
            and size >= 0 and type(itemsize) is int and 1 <= itemsize <= 8
            and isinstance(presigned, bool) and isinstance(direct, bool)):
        raise InvalidRequestError("an upload needs 'digest' (sha256:<hex>), 'size' (bytes) "
                                  "and optionally 'itemsize' (1-8), 'presigned' and 'direct' "
                                  "(booleans)")
    info = reg.service.blobs.begin_upload(digest, size, caller=reg.caller,
                                          itemsize=itemsize, presigned=presigned,
                                          direct=direct)
    if info is None:
        return {"complete": True, "digest": digest}
    return _upload(info)


def _upload(info) -> dict[str, Any]:
    """An upload's state; ``urls`` (a presigned upload): where chunk ``i`` is ``PUT``, with
    ``headers``."""
    answer = {"complete": False, "upload_id": info.upload_id, "digest": info.digest,
              "size": info.size, "chunk_size": info.chunk_size,
              "received": list(info.received)}
    if info.urls:
        answer["urls"] = list(info.urls)
        answer["headers"] = dict(info.headers)
    return answer


@router.get("/api/v1/uploads/{upload_id}")
def upload_status(upload_id: str, reg: Registry = Depends(registry)) -> dict[str, Any]:
    return _upload(reg.service.blobs.upload_status(upload_id, caller=reg.caller))


@router.put("/api/v1/uploads/{upload_id}/chunks/{index}")
async def upload_chunk(request: Request, upload_id: str, index: int,
                       reg: Registry = Depends(registry)) -> Response:
    blobs, who = reg.service.blobs, reg.caller
    await run_in_threadpool(lambda: blobs.upload_status(upload_id, caller=who))  # 404 first
    data = await request.body()
    await run_in_threadpool(lambda: blobs.upload_chunk(upload_id, index, data, caller=who))
    return Response(status_code=204)


@router.post("/api/v1/uploads/{upload_id}/finish")
def finish_upload(upload_id: str, reg: Registry = Depends(registry)) -> dict[str, Any]:
    """Re-hash the whole blob; 422 (and the upload discarded) if it does not match."""
    info = reg.service.blobs.finish_upload(upload_id, caller=reg.caller)
    return {"digest": info.digest, "size": info.size, "stored_size": info.stored_size}


@router.post("/api/v1/repos/{namespace}/{name}/commit")
def commit(namespace: str, name: str, body: dict = Depends(json_object),
           reg: Registry = Depends(registry)) -> Response:
    """Record a manifest as the next version and move tags, in one transaction."""
    repo = full_name(namespace, name)
    manifest, tags = body.get("manifest"), body.get("tags", [])
    if not isinstance(manifest, dict) or not isinstance(tags, list) or len(tags) > 100:
        raise InvalidRequestError("a commit needs 'manifest' (an object) and optional 'tags' "
                                  "(a list of at most 100)")
    created_at = string_field(body, "created_at", limit=64)
    try:
        when = datetime.fromisoformat(created_at) if created_at else None
    except ValueError:
        raise InvalidRequestError(f"'created_at' is not an ISO time: {created_at!r}") from None
    result = reg.service.commit(
        repo, Manifest.from_dict(manifest), caller=reg.caller,
        message=string_field(body, "message", limit=64 * 1024),
        author=string_field(body, "author", limit=256), tags=tags, created_at=when)
    return json_response({"version": result.version.to_dict(with_manifest=True),
                          "created": result.created})


@router.put("/api/v1/repos/{namespace}/{name}/tags/{tag}")
def put_tag(namespace: str, name: str, tag: str, body: dict = Depends(json_object),
            reg: Registry = Depends(registry)) -> Response:
    """Point ``tag`` at ``{"ref": …}`` (a version of this repository)."""
    repo = full_name(namespace, name)
    ref = string_field(body, "ref", required=True, limit=300)
    if parse_ref(ref).name != repo:
        raise InvalidRequestError(f"'ref' must name a version of {repo}")
    return json_response(reg.tag(ref, tag).to_dict())


@router.delete("/api/v1/repos/{namespace}/{name}/tags/{tag}")
def delete_tag(namespace: str, name: str, tag: str,
               reg: Registry = Depends(registry)) -> Response:
    return json_response(reg.untag(f"{full_name(namespace, name)}:{tag}").to_dict())


@router.delete("/api/v1/repos/{namespace}/{name}/versions/{number}")
def delete_version(namespace: str, name: str, number: int,
                   reg: Registry = Depends(registry)) -> Response:
    """Soft-delete a version (admin scope)."""
    if not 0 < number < 2**62:
        raise InvalidRequestError(f"version numbers start at 1; got {number}")
    return json_response(reg.rm(f"{full_name(namespace, name)}@{number}").to_dict())


# -- maintenance (admin on the whole hub; the store checks) ---------------------------------


@router.post("/api/v1/gc")
def gc(body: dict = Depends(json_object), reg: Registry = Depends(registry)) -> Response:
    """Retention, then mark and sweep (``adapterhub gc --from URL``)."""
    keep_last, grace = body.get("keep_last"), body.get("grace_s", 3600)
    flags = (body.get("keep_tagged", False), body.get("dry_run", False))
    if (keep_last is not None and (type(keep_last) is not int or keep_last < 0)) \
            or not all(isinstance(f, bool) for f in flags) \
            or not isinstance(grace, (int, float)) or isinstance(grace, bool) \
            or not 0 <= grace <= 10 * 365 * 86400:
        raise InvalidRequestError("gc takes keep_last (an integer ≥ 0), keep_tagged and "
                                  "dry_run (booleans), per_label and prefix (strings) and "
                                  "grace_s (seconds)")
    report = reg.gc(keep_last=keep_last, keep_tagged=flags[0],
                    per_label=string_field(body, "per_label", limit=64),
                    prefix=string_field(body, "prefix", limit=129), dry_run=flags[1],
                    grace=timedelta(seconds=grace))
    return json_response(report.to_dict())


@router.post("/api/v1/verify")
def verify(deep: bool = Query(False), reg: Registry = Depends(registry)) -> Response:
    """Re-hash every blob and check every reference (``adapterhub verify --from URL``;
    ``?deep=true`` re-hashes object-store blobs too)."""
    return json_response(reg.verify(deep=deep).to_dict())
