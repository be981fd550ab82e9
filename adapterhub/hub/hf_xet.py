"""Xet uploads on the hub: :mod:`adapterhub.xet`'s routes over the registry.

``GET /api/models/{ns}/{name}/xet-write-token/main`` hands a CAS token to a caller that may
write to an existing model repository (on ``main``: each commit becomes a version); the CAS
routes under ``/xet-cas`` check that token themselves (the guard lets them through, with
their own body limits). Uploaded xorbs and files belong to the hub token that uploaded them
(see :mod:`adapterhub.hub.xet_store`); a commit finds a file by its sha256 with
:func:`xet_file`.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request

from adapterhub.errors import InvalidRequestError, PermissionDeniedError
from adapterhub.hub.auth import request_registry
from adapterhub.hub.hf_read import repository
from adapterhub.hub.xet_store import HubTokenSigner, RegistryXetStorage
from adapterhub.xet import Caller as XetCaller
from adapterhub.xet import RepoRef, XetService, XetStats, xet_router
from registry_db import Caller, RegistryService

CAS_PATH = "/xet-cas"


def xet_service(service: RegistryService) -> XetService:
    """The CAS service over a registry's persistent Xet store."""
    return XetService(RegistryXetStorage(service.xet))


def authorize(request: Request, repo: RepoRef) -> XetCaller:
    """A CAS upload grant for a caller who may write to the existing model repository."""
    reg = request_registry(request)
    if repo.repo_type != "model":
        raise PermissionDeniedError(f"adapterhub serve holds model repositories; not "
                                    f"{repo.repo_type} {repo.id[:129]}")
    name = repository(reg, repo.namespace, repo.name)
    reg.caller.require("write", name)
    if repo.create_pr or repo.revision != "main":
        raise InvalidRequestError("uploads go to 'main' (each commit becomes a new version)")
    owner = reg.caller.owner
    if owner is None:
        raise PermissionDeniedError("this caller cannot upload")
    return XetCaller(subject=reg.caller.actor or owner, scope=owner)


def xet_routes(service: RegistryService, xet: XetService, stats: XetStats) -> APIRouter:
    """The token route and the CAS routes, CAS tokens signed by the hub's tokens."""
    return xet_router(xet, authorize, HubTokenSigner(service.tokens), cas_path=CAS_PATH,
                      stats=stats)


def xet_file(xet: XetService, sha256: str, size: int, caller: Caller) -> Iterator[bytes] | None:
    """The verified bytes of a file of ``size`` bytes the caller uploaded through Xet, or
    None when it uploaded none with that sha256."""
    owner = caller.owner
    entry = None if owner is None else xet.file_by_sha256(sha256, owner)
    if entry is None or entry.size != size:
        return None
    return xet.reconstruct(entry)
