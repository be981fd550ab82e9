"""The Hugging Face Hub upload protocol: ``upload_folder``/``create_commit`` make versions.

``create_repo`` → ``preupload`` (``.safetensors`` files go as LFS, the rest inline; files that
are not adapter files are answered ``shouldIgnore``, so the client leaves them out) → LFS
batch with the *basic* transfer (the upload URL is signed with the caller's token, since
clients PUT to it without headers; the bytes become a blob, re-hashed against the LFS oid) →
NDJSON commit on ``main``: the files of the newest version, changed by the commit, are read
as an adapter (:func:`adapterhub.formats.repo.read_repo`) and pushed as the next version.
``create_tag``/``delete_tag`` manage tags; ``v<N>`` tags are the version numbers themselves.

Clients of ``huggingface_hub`` ≥ 1.0 need ``HF_HUB_DISABLE_XET=1``: the hub does not speak Xet.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from adapterhub.errors import AdapterNotFoundError
from adapterhub.formats.peft import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.formats.repo import ADAPTER_FILES, package_from_files
from adapterhub.hub.auth import Principal, principal
from adapterhub.hub.context import hub_of
from adapterhub.hub.errors import HubError
from adapterhub.hub.hf_read import NUMBER_RE, commit_id, repository, resolve_revision
from adapterhub.hub.native import full_name
from adapterhub.package import MANIFEST_FILE, TENSORS_FILE
from registry_db.errors import InvalidNameError, NotFoundError
from registry_db.tokens import TokenError

router = APIRouter()
OID_RE = re.compile(r"^[0-9a-f]{64}$")
UPLOAD_TTL_S = 3600
LFS_JSON = "application/vnd.git-lfs+json"
MAX_COMMIT_LINES = 10_000


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def main_only(request: Request, revision: str) -> None:
    if request.query_params.get("create_pr"):
        raise HubError(400, "pull requests are not supported by adapterhub serve",
                       hint="Commit to main; each commit becomes a new version")
    if revision != "main":
        raise HubError(400, f"commits go to 'main' (each one becomes a new version); got "
                            f"{revision!r}", code="RevisionNotFound")


def head_files(request: Request, repo: str) -> tuple[str | None, dict[str, bytes]]:
    """The commit id and files of the newest version (none in an empty repository)."""
    hub = hub_of(request)
    try:
        latest = hub.registry.resolve(repo)
    except AdapterNotFoundError:
        return None, {}
    return commit_id(latest), {p: f.data for p, f in hub.renders.files(latest).items()}


@router.post("/api/repos/create")
def create_repo(request: Request, body: dict = Body(...),
                who: Principal = Depends(principal)) -> JSONResponse:
    if body.get("type") not in (None, "model"):
        raise HubError(400, f"adapterhub serve holds model repositories; got type "
                            f"{body.get('type')!r}")
    name, organization = body.get("name"), body.get("organization")
    if not isinstance(name, str) or (organization is not None and not isinstance(organization,
                                                                                    str)):
        raise HubError(400, "'name' (and 'organization') must be strings")
    repo_id = f"{organization}/{name}" if organization else name
    try:
        repo = full_name(*repo_id.split("/", 1)) if "/" in repo_id else full_name(repo_id, "")
    except InvalidNameError as exc:
        raise HubError(400, exc.message, hint=exc.hint) from None
    who.require("write", repo)
    url = f"{base_url(request)}/{repo}"
    if not hub_of(request).registry.service.create_repository(repo):
        return JSONResponse({"error": "You already created this model repo", "url": url},
                            status_code=409, headers={"X-Error-Message":
                                                      "You already created this model repo"})
    return JSONResponse({"url": url, "name": repo, "id": repo})


@router.post("/api/validate-yaml")
def validate_yaml(body: dict = Body(...), who: Principal = Depends(principal)) -> dict[str, Any]:
    """Clients check a model card before uploading it; the hub does not keep model cards
    (preupload answers ``shouldIgnore`` for them), so any card is fine."""
    who.require("write")
    return {"warnings": [{"message": "adapterhub serve keeps no model cards; README.md is "
                                     "not stored"}]}


@router.post("/api/models/{namespace}/{name}/preupload/{revision}")
def preupload(request: Request, namespace: str, name: str, revision: str,
              body: dict = Body(...), who: Principal = Depends(principal)) -> dict[str, Any]:
    repo = repository(request, namespace, name, who)
    who.require("write", repo)
    main_only(request, revision)
    files = body.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(
            f.get("path"), str) for f in files):
        raise HubError(400, "'files' must be a list of {path, size, sample}")
    _, current = head_files(request, repo)
    from adapterhub.hub.render import RenderedFile

    out = []
    for f in files:
        path = f["path"]
        lfs = path.endswith(".safetensors")
        entry: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                                 "shouldIgnore": path not in ADAPTER_FILES}
        if path in current:
            existing = RenderedFile(path, current[path])
            entry["oid"] = existing.sha256 if lfs else existing.git_oid
        out.append(entry)
    return {"files": out}


@router.post("/{namespace}/{name}.git/info/lfs/objects/batch")
def lfs_batch(request: Request, namespace: str, name: str, body: dict = Body(...),
              who: Principal = Depends(principal)) -> JSONResponse:
    """Which LFS objects to send, and where: objects already stored get no actions."""
    repo = repository(request, namespace, name, who)
    who.require("write", repo)
    if body.get("operation") != "upload":
        raise HubError(400, "only the LFS 'upload' operation is supported; download files "
                            "through /resolve")
    objects = body.get("objects")
    if not isinstance(objects, list) or not all(
            isinstance(o, dict) and isinstance(o.get("oid"), str) and OID_RE.match(o["oid"])
            and isinstance(o.get("size"), int) and o["size"] >= 0 for o in objects):
        raise HubError(400, "'objects' must be a list of {oid: <sha256 hex>, size}")
    hub = hub_of(request)
    missing = hub.registry.service.blobs.missing(f"sha256:{o['oid']}" for o in objects)
    expires = int(time.time()) + UPLOAD_TTL_S
    out = []
    for o in objects:
        oid, size = o["oid"], o["size"]
        if f"sha256:{oid}" not in missing:
            out.append({"oid": oid, "size": size})
            continue
        message = f"{repo}|{oid}|{size}|{expires}"
        signature = hub.registry.service.tokens.sign(who.token.id, message)
        href = (f"{base_url(request)}/api/hub/lfs/{repo}/{oid}?size={size}&expires={expires}"
                f"&token={who.token.id}&sig={signature}")
        out.append({"oid": oid, "size": size, "authenticated": True, "actions": {
            "upload": {"href": href, "expires_in": UPLOAD_TTL_S},
            "verify": {"href": f"{base_url(request)}/{repo}.git/info/lfs/verify"}}})
    return JSONResponse({"transfer": "basic", "objects": out, "hash_algo": "sha256"},
                        media_type=LFS_JSON)


@router.put("/api/hub/lfs/{namespace}/{name}/{oid}")
async def lfs_upload(request: Request, namespace: str, name: str, oid: str) -> Response:
    """The signed upload URL: stream the object into a resumable upload, then re-hash it."""
    repo = full_name(namespace, name)
    params = request.query_params
    try:
        size, expires, token_id = (int(params["size"]), int(params["expires"]),
                                   int(params["token"]))
        signature = params["sig"]
    except (KeyError, ValueError):
        raise HubError(400, "the upload URL is incomplete (size, expires, token, sig)") from None
    if not OID_RE.match(oid):
        raise HubError(400, f"invalid LFS oid {oid[:80]!r}")
    if expires < time.time():
        raise HubError(401, "the upload URL has expired", hint="Start the upload again")
    service = hub_of(request).registry.service
    try:
        token = await run_in_threadpool(service.tokens.check_signature, token_id,
                                        f"{repo}|{oid}|{size}|{expires}", signature)
    except TokenError as exc:
        raise HubError(401, exc.message, hint=exc.hint) from None
    if not token.allows("write", repo):
        raise HubError(403, f"the token that signed this URL cannot write to {repo}")
    digest = f"sha256:{oid}"
    upload = await run_in_threadpool(service.blobs.resume_upload, digest, size)
    if upload is None:
        return Response(status_code=200)
    chunk_size, index, received, buffer = upload.chunk_size, 0, 0, bytearray()
    async for piece in request.stream():
        received += len(piece)
        if received > size:
            raise HubError(400, f"the object is larger than the {size} bytes announced")
        buffer += piece
        while len(buffer) >= chunk_size:
            await run_in_threadpool(service.blobs.upload_chunk, upload.upload_id, index,
                                    bytes(buffer[:chunk_size]))
            del buffer[:chunk_size]
            index += 1
    if received != size:
        raise HubError(400, f"received {received} bytes; the object has {size}")
    if buffer or size == 0:  # the last, shorter chunk (or the only one, empty)
        await run_in_threadpool(service.blobs.upload_chunk, upload.upload_id, index,
                                bytes(buffer))
    await run_in_threadpool(service.blobs.finish_upload, upload.upload_id)
    return Response(status_code=200)


@router.post("/{namespace}/{name}.git/info/lfs/verify")
def lfs_verify(request: Request, namespace: str, name: str, body: dict = Body(...),
               who: Principal = Depends(principal)) -> JSONResponse:
    repo = repository(request, namespace, name, who)
    who.require("write", repo)
    oid, size = body.get("oid"), body.get("size")
    if not isinstance(oid, str) or not OID_RE.match(oid):
        raise HubError(400, "'oid' must be a sha256 hex digest")
    try:
        info = hub_of(request).registry.service.blobs.info(f"sha256:{oid}")
    except NotFoundError:
        raise HubError(404, f"LFS object {oid} was not uploaded") from None
    if size is not None and info.size != size:
        raise HubError(422, f"LFS object {oid} has {info.size} bytes, not {size}")
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
        raise HubError(400, f"a commit has at most {MAX_COMMIT_LINES} operations")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = dict(value)
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise ValueError("only base64 content is supported")
                inline[str(value["path"])] = base64.b64decode(value["content"], validate=True)
            elif key == "lfsFile":
                oid, size = value["oid"], value["size"]
                if value.get("algo", "sha256") != "sha256" or not OID_RE.match(oid) \
                        or not isinstance(size, int):
                    raise ValueError("lfsFile needs algo sha256, a hex oid and a size")
                lfs[str(value["path"])] = (oid, size)
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(str(value["path"]).rstrip("/"))
            else:
                raise ValueError(f"unknown operation {key!r}")
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise HubError(400, f"commit line {number} is malformed: {exc}") from None
    return header, inline, lfs, deleted


@router.post("/api/models/{namespace}/{name}/commit/{revision}")
async def commit(request: Request, namespace: str, name: str, revision: str,
                 who: Principal = Depends(principal)) -> dict[str, Any]:
    """Apply the operations to the newest version's files; the result is the next version."""
    repo = await run_in_threadpool(repository, request, namespace, name, who)
    who.require("write", repo)
    main_only(request, revision)
    header, inline, lfs, deleted = parse_commit(await request.body())
    version = await run_in_threadpool(_apply, request, repo, who, header, inline, lfs, deleted)
    oid = commit_id(version)
    return {"commitUrl": f"{base_url(request)}/{repo}/commit/{oid}", "commitOid": oid,
            "pullRequestUrl": None}


def _apply(request: Request, repo: str, who: Principal, header: dict[str, Any],
           inline: dict[str, bytes], lfs: dict[str, tuple[str, int]], deleted: list[str]):
    registry = hub_of(request).registry
    head, files = head_files(request, repo)
    parent = header.get("parentCommit")
    if parent is not None and parent != head:
        raise HubError(412, f"main of {repo} is at {head}, not {parent}",
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
        try:
            data = registry.read_blob(f"sha256:{oid}")
        except AdapterNotFoundError:
            raise HubError(422, f"{path}: LFS object {oid} was not uploaded",
                           hint="Upload it through the LFS batch API first") from None
        if len(data) != size:
            raise HubError(422, f"{path}: LFS object {oid} has {len(data)} bytes, not {size}")
        files[path] = bytes(data)
    package = package_from_files(files)
    message = header.get("summary") or None
    result = registry.push(package, repo, message=message, author=who.actor, progress=False)
    return result.version


@router.post("/api/models/{namespace}/{name}/tag/{revision}")
def create_tag(request: Request, namespace: str, name: str, revision: str,
               body: dict = Body(...), who: Principal = Depends(principal)) -> dict[str, Any]:
    repo = repository(request, namespace, name, who)
    who.require("write", repo)
    version = resolve_revision(request, repo, revision)
    tag = body.get("tag")
    if not isinstance(tag, str):
        raise HubError(400, "'tag' must be a string")
    number = NUMBER_RE.match(tag)
    if number:
        if int(number.group(1)) == version.number:
            return {}
        raise HubError(409, f"{tag!r} is the version number tag of {repo}@{number.group(1)}, "
                            f"not of {version.ref}",
                       hint="The hub numbers versions itself; use the v-tag it reports")
    registry = hub_of(request).registry
    try:
        existing = registry.resolve(f"{repo}:{tag}")
    except AdapterNotFoundError:
        existing = None
    if existing is not None:
        raise HubError(409, f"tag {tag!r} already exists in {repo} (on {existing.ref})",
                       hint="Delete it first to move it")
    registry.service.tag(version.ref, tag, actor=who.actor)
    return {}


@router.delete("/api/models/{namespace}/{name}/tag/{tag}")
def delete_tag(request: Request, namespace: str, name: str, tag: str,
               who: Principal = Depends(principal)) -> dict[str, Any]:
    repo = repository(request, namespace, name, who)
    who.require("write", repo)
    if NUMBER_RE.match(tag):
        raise HubError(400, f"{tag!r} is a version number, not a tag; it cannot be deleted",
                       hint=f"Delete the version instead: adapterhub rm {repo}@{tag[1:]}")
    hub_of(request).registry.service.untag(repo, tag, actor=who.actor)
    return {}
