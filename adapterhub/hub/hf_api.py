"""The Hugging Face Hub API beyond files: listing models and commits, paths info, model card
validation and ``whoami``.

============================================================  ==================================
``GET /api/models?author=&search=&limit=``                    ``list_models``: repositories the
                                                              caller may read
``GET /api/models/{ns}/{name}/commits/{revision}``            ``list_repo_commits``: one commit
                                                              per live version, newest first,
                                                              from ``revision`` back
``POST /api/models/{ns}/{name}/paths-info/{revision}``        ``get_paths_info``
``POST /api/validate-yaml``                                   ``ModelCard.validate``
``GET /api/whoami-v2``                                        ``whoami``
============================================================  ==================================
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from adapterhub.errors import InvalidModelCardError, InvalidRequestError
from adapterhub.hub.auth import registry
from adapterhub.hub.bodies import json_object, string_field
from adapterhub.hub.context import hub_of
from adapterhub.hub.hf_read import commit_id, files_of, repository, resolve_revision, tree_entries
from adapterhub.hub.model_card import validate_card
from adapterhub.registry import Registry
from registry_db import VersionInfo

router = APIRouter()
MAX_MODELS = 1000


def _when(version: VersionInfo) -> str:
    return version.created_at.isoformat().replace("+00:00", "Z")


@router.get("/api/models")
def list_models(request: Request, reg: Registry = Depends(registry)) -> list[dict[str, Any]]:
    params = request.query_params
    author, search = params.get("author"), (params.get("search") or "").lower()
    try:
        limit = max(1, min(MAX_MODELS, int(params.get("limit", MAX_MODELS))))
    except ValueError:
        raise InvalidRequestError("limit must be an integer") from None
    newest: dict[str, VersionInfo] = {}
    for version in reg.list(f"{author}/" if author else None):
        newest.setdefault(version.name, version)
    out = []
    public = hub_of(request).auth == "read-public"
    for repo in reg.repositories(f"{author}/" if author else None):
        if search and search not in repo.lower():
            continue
        version = newest.get(repo)
        entry: dict[str, Any] = {"_id": repo, "id": repo, "modelId": repo,
                                 "author": repo.partition("/")[0], "private": not public,
                                 "downloads": 0, "likes": 0, "tags": [],
                                 "sha": commit_id(version) if version else None}
        if version is not None:
            entry.update(lastModified=_when(version), createdAt=_when(version),
                         tags=sorted({*version.tags, f"v{version.number}", version.method}))
        out.append(entry)
        if len(out) == limit:
            break
    return out


@router.get("/api/models/{namespace}/{name}/commits/{revision}")
def list_commits(namespace: str, name: str, revision: str,
                 reg: Registry = Depends(registry)) -> list[dict[str, Any]]:
    repo = repository(reg, namespace, name)
    start = resolve_revision(reg, repo, revision)
    out = []
    for v in reg.log(repo):
        if v.deleted or v.number > start.number:
            continue
        title = (v.message or f"Version {v.number}").split("\n", 1)[0][:200]
        out.append({"id": commit_id(v), "title": title, "message": v.message or "",
                    "authors": [{"user": v.author or "adapterhub"}], "date": _when(v)})
    return out


@router.post("/api/models/{namespace}/{name}/paths-info/{revision}")
async def paths_info(request: Request, namespace: str, name: str, revision: str,
                     reg: Registry = Depends(registry)) -> JSONResponse:
    from starlette.concurrency import run_in_threadpool

    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    paths = [p.strip("/") for p in form.get("paths", [])]

    def answer() -> JSONResponse:
        repo = repository(reg, namespace, name)
        version = resolve_revision(reg, repo, revision)
        entries = tree_entries(files_of(request, reg, version), "", recursive=True,
                               folders=True)
        wanted = set(paths)
        return JSONResponse([e for e in entries if e["path"] in wanted],
                            headers={"X-Repo-Commit": commit_id(version)})

    return await run_in_threadpool(answer)


@router.post("/api/validate-yaml")
def validate_yaml(body: dict = Depends(json_object)) -> JSONResponse:
    """A model card, checked as the Hub checks it: 400 InvalidModelCard with ``errors`` (what
    the client shows) when it fails."""
    try:
        validate_card(string_field(body, "content", required=True, limit=1 << 20))
    except InvalidModelCardError as exc:
        return JSONResponse({"error": exc.message, "code": exc.code, "warnings": [],
                             "errors": [{"message": exc.message}]}, status_code=exc.status,
                            headers={"X-Error-Code": exc.code})
    return JSONResponse({"warnings": []})


@router.get("/api/whoami-v2")
def whoami(reg: Registry = Depends(registry)) -> dict[str, Any]:
    caller = reg.caller
    caller.require("read")
    name = caller.actor or "anonymous"
    return {"type": "user", "id": name, "name": name, "fullname": name, "orgs": [],
            "auth": {"type": "access_token", "accessToken": {
                "displayName": name,
                "role": "write" if caller.can("write") else "read"}}}
