"""The Hugging Face Hub upload protocol: ``upload_folder``/``create_commit`` make versions.

``create_repo`` → ``preupload`` (tensors, binary files and files of 10 MiB or more go as LFS,
the rest inline; nothing is ignored: a version keeps every committed file) → LFS batch with
the *basic* transfer (the upload URL is signed with the caller's token, since clients PUT to
it without headers; the bytes become a blob, re-hashed against the LFS oid; on an object
store the URLs are presigned ones of a staging object, one ``PUT`` or HF's multipart parts
of ``chunk_size`` bytes, finished by the signed completion URL or by verify, and the hub reads
the object back before it becomes the blob) → NDJSON commit
on ``main`` (:mod:`adapterhub.hub.hf_commit`). ``create_tag``/``delete_tag`` manage tags;
``v<N>`` tags are the version numbers themselves.

Clients with ``hf_xet`` (the default since ``huggingface_hub`` 1.0) upload LFS files through
Xet instead (:mod:`adapterhub.hub.hf_xet`).

An ``lfsFile`` names bytes by their sha256; the store lets a commit use only bytes the caller
may see (see :mod:`registry_db.blobs`), so knowing a digest never reads another namespace's
file. LFS batch and verify answer the same way: an object the caller may not see is missing.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from adapterhub.errors import (AdapterNotFoundError, AuthenticationError, ConflictError,
                               IntegrityError, InvalidRequestError, PermissionDeniedError,
                               RevisionNotFoundError)
from adapterhub.hub.auth import registry
from adapterhub.hub.bodies import json_object, string_field
from adapterhub.hub.context import hub_of
from adapterhub.hub.hf_read import NUMBER_RE, commit_id, repository, resolve_revision
from adapterhub.hub.native import full_name
from adapterhub.hub.render import LFS_SUFFIXES, RenderedFile
from adapterhub.registry import Registry
from registry_db import Caller

if TYPE_CHECKING:
    from registry_db import RegistryService

router = APIRouter()
OID_RE = re.compile(r"^[0-9a-f]{64}$")
UPLOAD_TTL_S = 3600
LFS_JSON = "application/vnd.git-lfs+json"
MAX_COMMIT_LINES = 10_000
MAX_OBJECTS = 1_000
MAX_LFS_OBJECT = 16 << 30
LFS_MIN_SIZE = 10 << 20


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def main_only(request: Request, revision: str) -> None:
    if request.query_params.get("create_pr"):
        raise InvalidRequestError("pull requests are not supported by adapterhub serve",
                                  hint="Commit to main; each commit becomes a new version")
    if revision != "main":
        raise RevisionNotFoundError(f"commits go to 'main' (each one becomes a new version); "
                                    f"got {revision[:80]!r}")


def head_files(request: Request, reg: Registry, repo: str
               ) -> tuple[str | None, dict[str, RenderedFile]]:
    """The commit id and files of the newest version (none in an empty repository)."""
    try:
        latest = reg.resolve(repo)
    except AdapterNotFoundError:
        return None, {}
    return commit_id(latest), hub_of(request).renders.files(latest, reg)


@router.post("/api/repos/create")
def create_repo(request: Request, body: dict = Depends(json_object),
                reg: Registry = Depends(registry)) -> JSONResponse:
    if body.get("type") not in (None, "model"):
        raise InvalidRequestError(f"adapterhub serve holds model repositories; got type "
                                  f"{str(body.get('type'))[:20]!r}")
    name = string_field(body, "name", required=True, limit=129)
    organization = string_field(body, "organization", limit=64)
    repo_id = f"{organization}/{name}" if organization else name
    repo = full_name(*repo_id.split("/", 1)) if "/" in repo_id else full_name(repo_id, "")
    url = f"{base_url(request)}/{repo}"
    if not reg.service.create_repository(repo, caller=reg.caller):
        return JSONResponse({"error": "You already created this model repo", "url": url},
                            status_code=409, headers={"X-Error-Message":
                                                      "You already created this model repo"})
    return JSONResponse({"url": url, "name": repo, "id": repo})


def upload_mode(path: str, described: dict[str, Any]) -> str:
    """``lfs`` (through Xet, or the LFS batch API) for tensors, binary files and files of
    10 MiB or more, as the Hub answers; ``regular`` (inline in the commit) for the rest."""
    size = described.get("size")
    try:
        sample = base64.b64decode(str(described.get("sample", "")), validate=True)
    except (ValueError, binascii.Error):
        sample = b""
    big = type(size) is int and size >= LFS_MIN_SIZE
    return "lfs" if path.endswith(LFS_SUFFIXES) or big or b"\0" in sample else "regular"


@router.post("/api/models/{namespace}/{name}/preupload/{revision}")
def preupload(request: Request, namespace: str, name: str, revision: str,
              body: dict = Depends(json_object),
              reg: Registry = Depends(registry)) -> dict[str, Any]:
    repo = repository(reg, namespace, name)
    reg.caller.require("write", repo)
    main_only(request, revision)
    files = body.get("files")
    if not isinstance(files, list) or len(files) > MAX_COMMIT_LINES or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) for f in files):
        raise InvalidRequestError("'files' must be a list of {path, size, sample}")
    _, current = head_files(request, reg, repo)
    out = []
    for f in files:
        path = f["path"][:1024]
        lfs = upload_mode(path, f) == "lfs"
        entry: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                                 "shouldIgnore": False}
        if path in current:
            entry["oid"] = current[path].sha256 if lfs else current[path].git_oid
        out.append(entry)
    return {"files": out}


@router.post("/{namespace}/{name}.git/info/lfs/objects/batch")
def lfs_batch(request: Request, namespace: str, name: str, body: dict = Depends(json_object),
              reg: Registry = Depends(registry)) -> JSONResponse:
    """Which LFS objects to send, and where: objects the caller may already use get no
    actions; any other (stored elsewhere or not at all) must be sent."""
    repo = repository(reg, namespace, name)
    reg.caller.require("write", repo)
    if body.get("operation") != "upload":
        raise InvalidRequestError("only the LFS 'upload' operation is supported; download "
                                  "files through /resolve")
    objects = body.get("objects")
    if not isinstance(objects, list) or len(objects) > MAX_OBJECTS or not all(
            isinstance(o, dict) and isinstance(o.get("oid"), str) and OID_RE.match(o["oid"])
            and type(o.get("size")) is int and 0 <= o["size"] <= MAX_LFS_OBJECT
            for o in objects):
        raise InvalidRequestError(f"'objects' must be a list of at most {MAX_OBJECTS} "
                                  f"{{oid: <sha256 hex>, size}}")
    service = reg.service
    missing = service.blobs.missing((f"sha256:{o['oid']}" for o in objects),
                                    caller=reg.caller)
    expires = int(time.time()) + UPLOAD_TTL_S
    in_store = service.blobs.store.objects is not None
    out = []
    for o in objects:
        oid, size = o["oid"], o["size"]
        if f"sha256:{oid}" not in missing:
            out.append({"oid": oid, "size": size})
            continue
        message = f"{repo}|{oid}|{size}|{expires}"
        signature = service.tokens.sign(reg.caller.token.id, message)
        href = (f"{base_url(request)}/api/hub/lfs/{repo}/{oid}?size={size}&expires={expires}"
                f"&token={reg.caller.token.id}&sig={signature}")
        upload = (_to_store(service, oid, size, href, reg.caller) if in_store
                  else {"href": href})
        out.append({"oid": oid, "size": size, "authenticated": True, "actions": {
            "upload": {**upload, "expires_in": UPLOAD_TTL_S},
            "verify": {"href": f"{base_url(request)}/{repo}.git/info/lfs/verify"}}})
    return JSONResponse({"transfer": "basic", "objects": out, "hash_algo": "sha256"},
                        media_type=LFS_JSON)


def _to_store(service: RegistryService, oid: str, size: int, completion: str,
              who: Caller) -> dict[str, Any]:
    """The upload action of an object sent straight to the object store: one presigned
    ``PUT`` (verify finishes it), or presigned parts of ``chunk_size`` bytes (HF's multipart
    transfer) that ``completion`` (the signed URL) finishes. Either way the hub reads the
    staging object back before it becomes the blob."""
    upload = service.blobs.begin_upload(f"sha256:{oid}", size, caller=who, presigned=True)
    if upload is None:  # (stored meanwhile)
        return {"href": completion}
    if len(upload.urls) == 1:
        return {"href": upload.urls[0]}
    parts = {f"{i + 1:05d}": url for i, url in enumerate(upload.urls)}
    return {"href": completion, "header": {"chunk_size": str(upload.chunk_size), **parts}}


async def _signed(request: Request, namespace: str, name: str, oid: str
                  ) -> tuple[int, Caller]:
    """The size and the caller a signed LFS URL names (checked: signature, expiry, and that
    the token may still write to the repository)."""
    repo = full_name(namespace, name)
    params = request.query_params
    try:
        size, expires, token_id = (int(params["size"]), int(params["expires"]),
                                   int(params["token"]))
        signature = params["sig"]
    except (KeyError, ValueError):
        raise InvalidRequestError("the upload URL is incomplete (size, expires, token, "
                                  "sig)") from None
    if not OID_RE.match(oid):
        raise InvalidRequestError(f"invalid LFS oid {oid[:80]!r}")
    if expires < time.time():
        raise AuthenticationError("the upload URL has expired", hint="Start the upload again")
    service = hub_of(request).registry.service
    token = await run_in_threadpool(service.tokens.check_signature, token_id,
                                    f"{repo}|{oid}|{size}|{expires}", signature)
    if not token.allows("write", repo):
        raise PermissionDeniedError(f"the token that signed this URL cannot write to {repo}")
    return size, Caller.for_token(token)


@router.put("/api/hub/lfs/{namespace}/{name}/{oid}")
async def lfs_upload(request: Request, namespace: str, name: str, oid: str) -> Response:
    """The signed upload URL: stream the object into an upload owned by the token that
    signed it, then re-hash it."""
    size, who = await _signed(request, namespace, name, oid)
    blobs = hub_of(request).registry.service.blobs
    upload = await run_in_threadpool(lambda: blobs.begin_upload(f"sha256:{oid}", size,
                                                                 caller=who))
    if upload is None:
        return Response(status_code=200)
    chunk_size, index, received, buffer = upload.chunk_size, 0, 0, bytearray()
    async for piece in request.stream():
        received += len(piece)
        if received > size:
            raise InvalidRequestError(f"the object is larger than the {size} bytes announced")
        buffer += piece
        while len(buffer) >= chunk_size:
            piece, upload_id = bytes(buffer[:chunk_size]), upload.upload_id
            await run_in_threadpool(lambda: blobs.upload_chunk(upload_id, index, piece,
                                                               caller=who))
            del buffer[:chunk_size]
            index += 1
    if received != size:
        raise InvalidRequestError(f"received {received} bytes; the object has {size}")
    if buffer or size == 0:  # the last, shorter chunk (or the only one, empty)
        last = bytes(buffer)
        await run_in_threadpool(lambda: blobs.upload_chunk(upload.upload_id, index, last,
                                                           caller=who))
    await run_in_threadpool(lambda: blobs.finish_upload(upload.upload_id, caller=who))
    return Response(status_code=200)


@router.post("/api/hub/lfs/{namespace}/{name}/{oid}")
async def lfs_complete(request: Request, namespace: str, name: str, oid: str) -> Response:
    """The signed completion URL of a multipart upload to the object store: the hub lists
    the parts itself (the client's ETags are not needed) and verifies the whole object."""
    size, who = await _signed(request, namespace, name, oid)
    blobs = hub_of(request).registry.service.blobs
    await run_in_threadpool(lambda: blobs.finish_own_upload(f"sha256:{oid}", size,
                                                            caller=who))
    return JSONResponse({}, media_type=LFS_JSON)


@router.post("/{namespace}/{name}.git/info/lfs/verify")
def lfs_verify(namespace: str, name: str, body: dict = Depends(json_object),
               reg: Registry = Depends(registry)) -> JSONResponse:
    repo = repository(reg, namespace, name)
    reg.caller.require("write", repo)
    oid, size = body.get("oid"), body.get("size")
    if not isinstance(oid, str) or not OID_RE.match(oid):
        raise InvalidRequestError("'oid' must be a sha256 hex digest")
    blobs = reg.service.blobs
    try:
        info = blobs.info(f"sha256:{oid}", caller=reg.caller)
    except AdapterNotFoundError:  # sent straight to the object store: finish it now
        if blobs.store.objects is None or type(size) is not int:
            raise AdapterNotFoundError(f"LFS object {oid} was not uploaded") from None
        info = blobs.finish_own_upload(f"sha256:{oid}", size, caller=reg.caller)
    if size is not None and info.size != size:
        raise IntegrityError(f"LFS object {oid} has {info.size} bytes, not {size}")
    return JSONResponse({}, media_type=LFS_JSON)


@router.post("/api/models/{namespace}/{name}/tag/{revision}")
def create_tag(namespace: str, name: str, revision: str, body: dict = Depends(json_object),
               reg: Registry = Depends(registry)) -> dict[str, Any]:
    repo = repository(reg, namespace, name)
    reg.caller.require("write", repo)
    version = resolve_revision(reg, repo, revision)
    tag = string_field(body, "tag", required=True, limit=64)
    number = NUMBER_RE.match(tag)
    if number:
        if int(number.group(1)) == version.number:
            return {}
        raise ConflictError(f"{tag!r} is the version number tag of {repo}@{number.group(1)}, "
                            f"not of {version.ref}",
                            hint="The hub numbers versions itself; use the v-tag it reports")
    try:
        existing = reg.resolve(f"{repo}:{tag}")
    except AdapterNotFoundError:
        existing = None
    if existing is not None:
        raise ConflictError(f"tag {tag!r} already exists in {repo} (on {existing.ref})",
                            hint="Delete it first to move it")
    reg.tag(version.ref, tag)
    return {}


@router.delete("/api/models/{namespace}/{name}/tag/{tag}")
def delete_tag(namespace: str, name: str, tag: str,
               reg: Registry = Depends(registry)) -> dict[str, Any]:
    repo = repository(reg, namespace, name)
    if NUMBER_RE.match(tag):
        raise InvalidRequestError(f"{tag!r} is a version number, not a tag; it cannot be "
                                  f"deleted", hint=f"Delete the version instead: "
                                                   f"adapterhub rm {repo}@{tag[1:]}")
    reg.untag(f"{repo}:{tag}")
    return {}
