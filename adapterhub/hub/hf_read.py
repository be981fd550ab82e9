"""The Hugging Face Hub download protocol, over the registry's versions.

A repository ``ns/name`` is a model repository; each live version is a commit whose id is the
first 40 hex digits of the version digest (``sha256:5f0c…`` → ``5f0c…``, 40 characters), so
clients cache by it and a pinned commit always means the same bytes. Revisions:

=====================  ======================================
``main``, ``latest``   the newest live version
``v3``                 version number 3
``prod`` (any tag)     the version the tag points at
40 hex digits          the version whose digest starts with them
=====================  ======================================

Files are rendered by :mod:`adapterhub.io.formats.repo` (PEFT layout when PEFT can express the
method, native otherwise, plus ``adapter.json``). ``ETag``/``X-Linked-Etag`` are the sha256
of the file, so a client's blob cache is content-addressed.

With an object store (the ``s3`` blob backend), LFS files are answered with a ``302`` to a
presigned URL, as huggingface.co redirects to its CDN: the hub renders such a file once and
keeps it as an object, and every download after that is only a redirect.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from adapterhub.errors import (AdapterNotFoundError, EntryNotFoundError, InvalidRequestError,
                               RefError, RepoNotFoundError, RevisionNotFoundError)
from adapterhub.hub.auth import registry
from adapterhub.hub.bodies import json_response
from adapterhub.hub.context import hub_of, small_read
from adapterhub.hub.model_card import front_matter
from adapterhub.hub.native import byte_range, full_name
from adapterhub.hub.render import LFS_POINTER_SIZE, RenderedFile
from adapterhub.registry import Registry
from registry_db import VersionInfo

router = APIRouter()
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
NUMBER_RE = re.compile(r"^v([1-9][0-9]{0,17})$")
TREE_PAGE = 1000
REDIRECT_SECONDS = 3600  # how long a presigned download URL works


def commit_id(version: VersionInfo) -> str:
    """The 40-hex commit id a version has for Hugging Face clients."""
    return version.digest.removeprefix("sha256:")[:40]


def repository(reg: Registry, namespace: str, name: str) -> str:
    """The repository name, after checking the caller may read it and it exists."""
    try:
        repo = full_name(namespace, name)
    except RefError as exc:
        raise RepoNotFoundError(f"no repository {namespace[:64]}/{name[:64]}: "
                                f"{exc.message}") from None
    reg.caller.require("read", repo)
    if repo not in reg.repositories(repo):
        raise RepoNotFoundError(f"repository {repo} not found")
    return repo


def resolve_revision(reg: Registry, repo: str, revision: str) -> VersionInfo:
    """The version a revision names (see the module docstring); 404 RevisionNotFound."""
    if revision in ("main", "latest"):
        ref = repo
    elif NUMBER_RE.match(revision):
        ref = f"{repo}@{revision[1:]}"
    elif COMMIT_RE.match(revision):
        ref = f"{repo}@sha256:{revision}"
    else:
        ref = f"{repo}:{revision}"
    try:
        return reg.resolve(ref)
    except (AdapterNotFoundError, RefError) as exc:
        raise RevisionNotFoundError(f"revision {revision[:80]!r} not found in {repo}: "
                                    f"{exc.message}") from None


def files_of(request: Request, reg: Registry, version: VersionInfo) -> dict[str, RenderedFile]:
    return hub_of(request).renders.files(version, reg)


def sibling(f: RenderedFile, *, blobs: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"rfilename": f.path}
    if blobs:
        entry.update(size=f.size, blobId=f.git_oid)
        if f.lfs:
            entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": LFS_POINTER_SIZE}
    return entry


def model_info(request: Request, reg: Registry, repo: str,
               version: VersionInfo | None) -> dict[str, Any]:
    files = files_of(request, reg, version) if version else {}
    public = hub_of(request).auth == "read-public"
    info: dict[str, Any] = {
        "_id": repo, "id": repo, "modelId": repo, "author": repo.partition("/")[0],
        "sha": commit_id(version) if version else None, "private": not public,
        "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
        "siblings": [sibling(f, blobs=request.query_params.get("blobs") in ("1", "true", "True"))
                     for f in files.values()],
    }
    if version is not None:
        when = version.created_at.isoformat().replace("+00:00", "Z")
        info.update(lastModified=when, createdAt=when,
                    library_name="peft" if "adapter_config.json" in files else "adapterhub",
                    cardData={"base_model": version.base_name, "library_name": "peft"
                              if "adapter_config.json" in files else "adapterhub",
                              **card_metadata(files)},
                    tags=sorted({*version.tags, f"v{version.number}", version.method}))
    return info


def card_metadata(files: dict[str, RenderedFile]) -> dict[str, Any]:
    """The YAML metadata of the version's model card (empty without a readable one)."""
    card = files.get("README.md")
    if card is None or card.size > 1 << 20:
        return {}
    meta, _, _ = front_matter(card.content().decode("utf-8", "replace"))
    return meta or {}


def latest(reg: Registry, namespace: str, name: str) -> tuple[str, VersionInfo | None]:
    """The repository and its newest version (None: an empty repository has no commit)."""
    repo = repository(reg, namespace, name)
    try:
        return repo, reg.resolve(repo)
    except AdapterNotFoundError:
        return repo, None


def at_revision(reg: Registry, namespace: str, name: str, revision: str
                ) -> tuple[str, VersionInfo]:
    repo = repository(reg, namespace, name)
    return repo, resolve_revision(reg, repo, revision)


async def info_response(request: Request, reg: Registry, repo: str,
                        version: VersionInfo | None) -> Response:
    """``model_info`` as JSON; a version whose files are not rendered yet is rendered in a
    worker thread."""
    if version is not None and hub_of(request).renders.cached(version) is None:
        await run_in_threadpool(files_of, request, reg, version)
    return json_response(model_info(request, reg, repo, version))


@router.get("/api/models/{namespace}/{name}")
async def repo_info(request: Request, namespace: str, name: str,
                    reg: Registry = Depends(registry)) -> Response:
    repo, version = await small_read(request, latest, reg, namespace, name)
    return await info_response(request, reg, repo, version)


@router.get("/api/models/{namespace}/{name}/revision/{revision:path}")
async def revision_info(request: Request, namespace: str, name: str, revision: str,
                        reg: Registry = Depends(registry)) -> Response:
    repo, version = await small_read(request, at_revision, reg, namespace, name, revision)
    return await info_response(request, reg, repo, version)


def tree_entries(files: dict[str, RenderedFile], path: str, *, recursive: bool,
                 folders: bool = True) -> list[dict[str, Any]]:
    """Tree entries under folder ``path`` ('' for the root): its files and (``folders``) its
    folders, all the way down when ``recursive``, else one level."""
    prefix = f"{path}/" if path else ""
    entries: dict[str, dict[str, Any]] = {}
    for f in files.values():
        if not f.path.startswith(prefix):
            continue
        parts = f.path[len(prefix):].split("/")
        for depth in range(1, len(parts)):
            if folders and (recursive or depth == 1):
                folder = prefix + "/".join(parts[:depth])
                oid = hashlib.sha1(folder.encode(), usedforsecurity=False).hexdigest()
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": oid})
        if recursive or len(parts) == 1:
            entry: dict[str, Any] = {"type": "file", "path": f.path, "size": f.size,
                                     "oid": f.git_oid}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size,
                                "pointerSize": LFS_POINTER_SIZE}
            entries[f.path] = entry
    return [entries[k] for k in sorted(entries)]


@router.get("/api/models/{namespace}/{name}/tree/{revision}")
@router.get("/api/models/{namespace}/{name}/tree/{revision}/{path:path}")
def tree(request: Request, namespace: str, name: str, revision: str, path: str = "",
         reg: Registry = Depends(registry)) -> JSONResponse:
    """The files and folders at a revision (``recursive=true``: all the way down), paged
    with ``Link``."""
    repo = repository(reg, namespace, name)
    try:
        version = resolve_revision(reg, repo, revision)
    except RevisionNotFoundError:
        if revision == "main" and not reg.log(repo):  # a new repository: no files yet
            return JSONResponse([])
        raise
    params = request.query_params
    try:
        start = max(0, int(params.get("cursor", "0")))
        limit = max(1, min(TREE_PAGE, int(params.get("limit", TREE_PAGE))))
    except ValueError:
        raise InvalidRequestError("cursor and limit must be integers") from None
    files = files_of(request, reg, version)
    folder = path.strip("/")
    entries = tree_entries(files, folder,
                           recursive=params.get("recursive") in ("1", "true", "True"))
    if folder and not entries:
        raise EntryNotFoundError(f"{repo} has no folder {path[:200]!r} at {revision[:80]}",
                                 headers={"X-Repo-Commit": commit_id(version)})
    page = entries[start:start + limit]
    headers = {"X-Repo-Commit": commit_id(version)}
    if start + limit < len(entries):
        base = str(request.url.remove_query_params(["cursor", "limit"]))
        sep = "&" if "?" in base else "?"
        headers["Link"] = f'<{base}{sep}cursor={start + limit}&limit={limit}>; rel="next"'
    return JSONResponse(page, headers=headers)


@router.api_route("/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
def resolve_file(request: Request, namespace: str, name: str, revision: str, path: str,
                 reg: Registry = Depends(registry)) -> Response:
    """A file's bytes (GET, with ``Range``) or only its headers (HEAD)."""
    repo = repository(reg, namespace, name)
    try:
        version = resolve_revision(reg, repo, revision)
    except RevisionNotFoundError:
        if revision == "main" and not reg.log(repo):  # a new repository has no file yet
            raise EntryNotFoundError(f"{repo} is empty; it has no {path[:200]!r}") from None
        raise
    commit = commit_id(version)
    found = files_of(request, reg, version).get(path)
    if found is None:
        raise EntryNotFoundError(f"{path[:200]!r} is not a file of {repo} at {revision[:80]}",
                                 headers={"X-Repo-Commit": commit})
    headers = {"X-Repo-Commit": commit, "ETag": f'"{found.etag}"',
               "X-Linked-Etag": f'"{found.etag}"', "X-Linked-Size": str(found.size),
               "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0",
               "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/')[-1])}"}
    objects = reg.service.blobs.store.objects
    if objects is not None and found.lfs:
        url = objects.rendered_url(found.sha256, found.size, found.iter, REDIRECT_SECONDS)
        return Response(b"", status_code=302, headers={**headers, "Location": url})
    media = "application/json" if path.endswith(".json") else "application/octet-stream"
    span = byte_range(request.headers.get("range"), found.size) if found.size else None
    status, (start, end) = (200, (0, found.size - 1)) if span is None else (206, span)
    headers["Content-Length"] = str(end - start + 1)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{found.size}"
    if request.method == "HEAD" or found.size == 0:
        return Response(b"", status_code=status, media_type=media, headers=headers)
    return StreamingResponse(found.iter(start, end), status_code=status, media_type=media,
                             headers=headers)


@router.get("/api/models/{namespace}/{name}/refs")
def refs(namespace: str, name: str, reg: Registry = Depends(registry)) -> dict[str, Any]:
    """``main`` (the newest version), a tag ``v<N>`` per live version, and the named tags."""
    repo = repository(reg, namespace, name)
    versions = [v for v in reg.log(repo) if not v.deleted]
    branches = ([{"name": "main", "ref": "refs/heads/main", "targetCommit": commit_id(versions[0])}]
                if versions else [])
    tags = []
    for v in versions:
        for tag in (f"v{v.number}", *v.tags):
            tags.append({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": commit_id(v)})
    return {"branches": branches, "tags": sorted(tags, key=lambda t: t["name"]),
            "converts": [], "pullRequests": []}
