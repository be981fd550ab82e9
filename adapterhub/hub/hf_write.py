"""The Hugging Face Hub upload protocol: ``upload_folder``/``create_commit`` make versions.

``create_repo`` → ``preupload`` (``.safetensors`` files go as LFS, the rest inline; files that
are not adapter files are answered ``shouldIgnore``, so the client leaves them out) → LFS
batch with the *basic* transfer (the upload URL is signed with the caller's token, since
clients PUT to it without headers; the bytes become a blob, re-hashed against the LFS oid) →
NDJSON commit on ``main``: the files of the newest version, changed by the commit, are read
as an adapter (:func:`adapterhub.io.formats.read_adapter`) and pushed as the next version.
``create_tag``/``delete_tag`` manage tags; ``v<N>`` tags are the version numbers themselves.

Clients with ``hf_xet`` (the default since ``huggingface_hub`` 1.0) upload LFS files through
Xet instead (:mod:`adapterhub.hub.hf_xet`); a commit's ``lfsFile`` is read from Xet first.

An ``lfsFile`` names bytes by their sha256; the store lets a commit use only bytes the caller
may see (see :mod:`registry_db.blobs`), so knowing a digest never reads another namespace's
file. LFS batch and verify answer the same way: an object the caller may not see is missing.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from adapterhub.errors import (AdapterNotFoundError, AuthenticationError, ConflictError,
                               IntegrityError, InvalidRequestError, PermissionDeniedError,
                               PreconditionFailedError, RevisionNotFoundError)
from adapterhub.hub.auth import registry
from adapterhub.hub.bodies import json_object, string_field
from adapterhub.hub.context import hub_of
from adapterhub.hub.hf_read import NUMBER_RE, commit_id, repository, resolve_revision
from adapterhub.hub.hf_xet import xet_file
from adapterhub.hub.native import full_name
from adapterhub.hub.render import RenderedFile
from adapterhub.io.formats.peft import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.io.formats.repo import ADAPTER_FILES, package_from_files
from adapterhub.io.package import MANIFEST_FILE, TENSORS_FILE
from adapterhub.registry import Registry
from registry_db import Caller
from registry_db.digests import parse_json

router = APIRouter()
OID_RE = re.compile(r"^[0-9a-f]{64}$")
UPLOAD_TTL_S = 3600
LFS_JSON = "application/vnd.git-lfs+json"
MAX_COMMIT_LINES = 10_000
MAX_OBJECTS = 1_000
MAX_LFS_OBJECT = 16 << 30


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


@router.post("/api/validate-yaml")
def validate_yaml(body: dict = Depends(json_object)) -> dict[str, Any]:
    """Clients check a model card before uploading it; the hub does not keep model cards
    (preupload answers ``shouldIgnore`` for them), so any card is fine."""
    return {"warnings": [{"message": "adapterhub serve keeps no model cards; README.md is "
                                     "not stored"}]}


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
        lfs = path.endswith(".safetensors")
        entry: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                                 "shouldIgnore": path not in ADAPTER_FILES}
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
        out.append({"oid": oid, "size": size, "authenticated": True, "actions": {
            "upload": {"href": href, "expires_in": UPLOAD_TTL_S},
            "verify": {"href": f"{base_url(request)}/{repo}.git/info/lfs/verify"}}})
    return JSONResponse({"transfer": "basic", "objects": out, "hash_algo": "sha256"},
                        media_type=LFS_JSON)



@router.put("/api/hub/lfs/{namespace}/{name}/{oid}")
async def lfs_upload(request: Request, namespace: str, name: str, oid: str) -> Response:
    """The signed upload URL: stream the object into an upload owned by the token that
    signed it, then re-hash it."""
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
    who = Caller.for_token(token)
    blobs = service.blobs
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


@router.post("/{namespace}/{name}.git/info/lfs/verify")
def lfs_verify(namespace: str, name: str, body: dict = Depends(json_object),
               reg: Registry = Depends(registry)) -> JSONResponse:
    repo = repository(reg, namespace, name)
    reg.caller.require("write", repo)
    oid, size = body.get("oid"), body.get("size")
    if not isinstance(oid, str) or not OID_RE.match(oid):
        raise InvalidRequestError("'oid' must be a sha256 hex digest")
    try:
        info = reg.service.blobs.info(f"sha256:{oid}", caller=reg.caller)
    except AdapterNotFoundError:
        raise AdapterNotFoundError(f"LFS object {oid} was not uploaded") from None
    if size is not None and info.size != size:
        raise IntegrityError(f"LFS object {oid} has {info.size} bytes, not {size}")
    return JSONResponse({}, media_type=LFS_JSON)


def parse_commit(raw: bytes) -> tuple[dict[str, Any], dict[str, bytes], dict[str, tuple],
                                      list[str]]:
    """NDJSON → (header, inline files, LFS files ``path → (oid, size)``, deleted paths)."""
    header: dict[str, Any] = {}
    inline: dict[str, bytes] = {}
    lfs: dict[str, tuple[str, int]] = {}
    deleted: list[str] = []
    lines = raw.splitlines()
    if len(lines) > MAX_COMMIT_LINES:
        raise InvalidRequestError(f"a commit has at most {MAX_COMMIT_LINES} operations")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = parse_json(line, what=f"commit line {number}")
            key, value = item["key"], item["value"]
            if key == "header":
                header = dict(value)
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise ValueError("only base64 content is supported")
                inline[str(value["path"])] = base64.b64decode(value["content"], validate=True)
            elif key == "lfsFile":
                oid, size = value["oid"], value["size"]
                if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) \
                        or not OID_RE.match(oid) or type(size) is not int:
                    raise ValueError("lfsFile needs algo sha256, a hex oid and a size")
                lfs[str(value["path"])] = (oid, size)
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(str(value["path"]).rstrip("/"))
            else:
                raise ValueError(f"unknown operation {str(key)[:40]!r}")
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise InvalidRequestError(f"commit line {number} is malformed: "
                                      f"{str(exc)[:200]}") from None
    return header, inline, lfs, deleted


@router.post("/api/models/{namespace}/{name}/commit/{revision}")
async def commit(request: Request, namespace: str, name: str, revision: str,
                 reg: Registry = Depends(registry)) -> dict[str, Any]:
    """Apply the operations to the newest version's files; the result is the next version."""
    repo = await run_in_threadpool(repository, reg, namespace, name)
    reg.caller.require("write", repo)
    main_only(request, revision)
    raw = await request.body()
    header, inline, lfs, deleted = await run_in_threadpool(parse_commit, raw)
    version = await run_in_threadpool(_apply, request, reg, repo, header, inline, lfs, deleted)
    oid = commit_id(version)
    return {"commitUrl": f"{base_url(request)}/{repo}/commit/{oid}", "commitOid": oid,
            "pullRequestUrl": None}


def _apply(request: Request, reg: Registry, repo: str, header: dict[str, Any],
           inline: dict[str, bytes], lfs: dict[str, tuple[str, int]], deleted: list[str]):
    head, current = head_files(request, reg, repo)
    files = {path: f.content() for path, f in current.items()}
    parent = header.get("parentCommit")
    if parent is not None and parent != head:
        raise PreconditionFailedError(f"main of {repo} is at {head}, not {str(parent)[:40]}",
                                      hint="Pull the new head and commit again")
    changed = {p for p in [*inline, *lfs] if p in ADAPTER_FILES}
    if changed:  # new weights replace the other layout's; a new layout without a manifest
        if changed & {CONFIG_FILE, WEIGHTS_FILE}:  # is a plain PEFT adapter
            files.pop(TENSORS_FILE, None)
        if TENSORS_FILE in changed:
            files.pop(WEIGHTS_FILE, None)
            files.pop(CONFIG_FILE, None)
        if MANIFEST_FILE not in changed:
            files.pop(MANIFEST_FILE, None)
    for path in deleted:
        files.pop(path, None)
    files.update({p: data for p, data in inline.items() if p in ADAPTER_FILES})
    for path, (oid, size) in lfs.items():
        if path not in ADAPTER_FILES:
            continue
        files[path] = _lfs_bytes(request, reg, path, oid, size)
    package = package_from_files(files)
    message = header.get("summary") if isinstance(header.get("summary"), str) else None
    result = reg.push(package, repo, message=message and message[:64 * 1024],
                      author=reg.caller.actor, progress=False)
    return result.version


def _lfs_bytes(request: Request, reg: Registry, path: str, oid: str, size: int) -> bytes:
    """An ``lfsFile``'s bytes, only from what the caller may see: a file it uploaded through
    Xet, then an LFS object it uploaded, or a blob of one of the versions it may read."""
    pieces = xet_file(hub_of(request).xet, oid, size, reg.caller)
    if pieces is not None:
        return b"".join(pieces)
    try:
        data = reg.read_blob(f"sha256:{oid}")
    except AdapterNotFoundError:
        raise IntegrityError(f"{path}: LFS object {oid} was not uploaded",
                             hint="Upload it (through Xet or the LFS batch API) first") from None
    if len(data) != size:
        raise IntegrityError(f"{path}: LFS object {oid} has {len(data)} bytes, not {size}")
    return bytes(data)


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
