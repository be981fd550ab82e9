"""The HTTP routes hf_xet 1.8 calls to upload, as a FastAPI router the hub can mount.

On the hub's own URL space::

    GET  /api/{models|datasets|spaces}/{namespace}/{name}/xet-write-token/{revision}
         → {"accessToken", "exp", "casUrl"} (and the same as X-Xet-* headers for old clients)

Under ``casUrl`` (``cas_path`` on the same server), with ``Authorization: Bearer
<accessToken>``::

    GET  /v1/chunks/{default|default-merkledb}/{chunk hash}   global dedup: a shard, or 404
    POST /v1/xorb-grants/default/{xorb hash}                  404: no grants, upload directly
    POST /v1/xorbs/default/{xorb hash}                        a xorb → {"was_inserted": bool}
    POST /v2/shards                                           a shard → NDJSON progress frames
    POST /v1/shards                                           a shard → {"result": 0 | 1}

Who may upload is the hub's decision: ``authorize(request, repo)`` returns a :class:`Caller`
or raises AuthenticationError / PermissionDeniedError / AdapterNotFoundError. The token it
leads to is signed by a :class:`~adapterhub.xet.tokens.TokenSigner`, expires after
``token_ttl_s`` and carries the caller and the scope it uploads into.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from adapterhub.errors import (AdapterHubError, AdapterNotFoundError, AuthenticationError,
                               FormatError, IntegrityError, PermissionDeniedError)
from adapterhub.xet.hashes import is_hex_hash
from adapterhub.xet.service import XetService
from adapterhub.xet.tokens import Grant, TokenSigner

log = logging.getLogger("adapterhub.xet")
REPO_KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
DEDUP_PREFIXES = ("default", "default-merkledb")
XORB_PREFIX = "default"
HEARTBEAT_S = 10.0


@dataclass(frozen=True)
class RepoRef:
    """The repository a token is asked for."""

    repo_type: str  # model, dataset or space
    namespace: str
    name: str
    revision: str
    create_pr: bool

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Caller:
    """Who asked (for the token and the audit trail) and the scope they upload into."""

    subject: str
    scope: str


Authorize = Callable[[Request, RepoRef], Caller | Awaitable[Caller]]


@dataclass
class XetStats:
    """Counters of what the CAS routes received (bytes are request bodies as read)."""

    xorb_bytes: int = 0
    shard_bytes: int = 0
    xorb_uploads: int = 0
    xorbs_inserted: int = 0
    shard_uploads: int = 0
    dedup_queries: int = 0
    dedup_hits: int = 0
    #: the latest refusals, newest last
    refusals: deque[str] = field(default_factory=lambda: deque(maxlen=100))


class Refusal(Exception):
    def __init__(self, status: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


def _refusal_for(exc: Exception) -> Refusal:
    status = {AuthenticationError: 401, PermissionDeniedError: 403, AdapterNotFoundError: 404,
              FormatError: 400, IntegrityError: 400}
    for cls, code in status.items():
        if isinstance(exc, cls):
            return Refusal(code, exc.message, exc.hint)
    if isinstance(exc, AdapterHubError):
        return Refusal(400, exc.message, exc.hint)
    raise exc


def _error(refusal: Refusal, stats: XetStats) -> JSONResponse:
    stats.refusals.append(f"{refusal.status} {refusal.message}")
    return JSONResponse({"error": refusal.message, "hint": refusal.hint},
                        status_code=refusal.status,
                        headers={"X-Error-Message": refusal.message[:500].encode(
                            "ascii", "replace").decode("ascii")})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes and
    (400) when it is shorter than its Content-Length."""
    declared = request.headers.get("content-length")
    expected = None
    if declared is not None:
        if not declared.isdigit():
            raise Refusal(400, "the Content-Length header is not a number")
        expected = int(declared)
        if expected > limit:
            raise Refusal(413, f"the body has {expected} bytes; at most {limit} are accepted")
    body = bytearray()
    try:
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise Refusal(413, f"the body exceeds {limit} bytes")
    except ClientDisconnect:
        raise Refusal(400, f"the body was cut off after {len(body)} bytes") from None
    if expected is not None and len(body) != expected:
        raise Refusal(400, f"the body has {len(body)} bytes, not the {expected} announced")
    return bytes(body)


def xet_router(service: XetService, authorize: Authorize, signer: TokenSigner, *,
               cas_path: str = "/xet-cas", token_ttl_s: int = 3600,
               stats: XetStats | None = None) -> APIRouter:
    """A router with the token route and the CAS routes over ``service``."""
    router = APIRouter()
    counters = stats if stats is not None else XetStats()
    limits = service.limits
    # uploads held in memory and verified at once: bounds memory and CPU, whatever the load
    uploads = asyncio.Semaphore(limits.max_parallel_uploads)

    async def caller_for(request: Request, repo: RepoRef) -> Caller:
        result = authorize(request, repo) if inspect.iscoroutinefunction(authorize) else \
            await run_in_threadpool(authorize, request, repo)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, Caller):
            raise TypeError("authorize must return a Caller")
        return result

    def grant_of(request: Request, write: bool) -> Grant:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("the CAS needs Authorization: Bearer <access token>",
                                      hint="Get one from the hub's xet-write-token route")
        grant = signer.verify(token.strip())
        if write and not grant.write:
            raise PermissionDeniedError("this CAS access token does not allow uploads")
        return grant

    @router.get("/api/{kind}/{namespace}/{name}/xet-write-token/{revision}")
    async def write_token(request: Request, kind: str, namespace: str, name: str,
                          revision: str) -> Response:
        try:
            if kind not in REPO_KINDS:
                raise Refusal(404, f"no repository kind {kind!r}")
            repo = RepoRef(REPO_KINDS[kind], namespace, name, revision,
                           bool(request.query_params.get("create_pr")))
            try:
                caller = await caller_for(request, repo)
            except AdapterHubError as exc:
                raise _refusal_for(exc) from None
            expires = int(time.time()) + token_ttl_s
            token = signer.issue(Grant(caller.subject, repo.id, caller.scope, True, expires))
        except Refusal as refusal:
            return _error(refusal, counters)
        cas_url = str(request.base_url).rstrip("/") + cas_path
        return JSONResponse({"accessToken": token, "exp": expires, "casUrl": cas_url},
                            headers={"X-Xet-Cas-Url": cas_url, "X-Xet-Access-Token": token,
                                     "X-Xet-Token-Expiration": str(expires)})

    @router.get(cas_path + "/v1/chunks/{prefix}/{chunk}")
    async def dedup_query(request: Request, prefix: str, chunk: str) -> Response:
        try:
            grant = _checked(grant_of, request, False)
            if prefix not in DEDUP_PREFIXES or not is_hex_hash(chunk):
                raise Refusal(400, "the dedup query is /v1/chunks/default/<64 hex chunk hash>")
            counters.dedup_queries += 1
            shard = await run_in_threadpool(service.dedup_shard, chunk, grant.scope)
        except Refusal as refusal:
            return _error(refusal, counters)
        if shard is None:
            return JSONResponse({"error": "no stored xorb holds that chunk"}, status_code=404)
        counters.dedup_hits += 1
        return Response(shard, media_type="application/octet-stream")

    @router.post(cas_path + "/v1/xorb-grants/{prefix}/{xorb}")
    async def xorb_grant(request: Request, prefix: str, xorb: str) -> Response:
        try:
            _checked(grant_of, request, True)
        except Refusal as refusal:
            return _error(refusal, counters)
        return JSONResponse({"error": "this CAS offers no upload grants; upload the xorb to "
                                      f"{cas_path}/v1/xorbs/{XORB_PREFIX}/<hash>"},
                            status_code=404)

    @router.post(cas_path + "/v1/xorbs/{prefix}/{xorb}")
    async def upload_xorb(request: Request, prefix: str, xorb: str) -> Response:
        try:
            grant = _checked(grant_of, request, True)
            if prefix != XORB_PREFIX or not is_hex_hash(xorb):
                raise Refusal(400, "xorbs go to /v1/xorbs/default/<64 hex xorb hash>")
            counters.xorb_uploads += 1
            async with uploads:
                body = await read_body(request, limits.max_xorb_bytes)
                counters.xorb_bytes += len(body)
                try:
                    inserted = await run_in_threadpool(service.upload_xorb, xorb, body,
                                                       grant.scope)
                except AdapterHubError as exc:
                    raise _refusal_for(exc) from None
        except Refusal as refusal:
            return _error(refusal, counters)
        counters.xorbs_inserted += int(inserted)
        return JSONResponse({"was_inserted": inserted})

    async def shard_body(request: Request) -> tuple[Grant, bytes]:
        grant = _checked(grant_of, request, True)
        counters.shard_uploads += 1
        body = await read_body(request, limits.max_shard_bytes)
        counters.shard_bytes += len(body)
        return grant, body

    @router.post(cas_path + "/v1/shards")
    async def upload_shard_v1(request: Request) -> Response:
        try:
            async with uploads:
                grant, body = await shard_body(request)
                try:
                    new = await run_in_threadpool(service.upload_shard, body, grant.scope)
                except AdapterHubError as exc:
                    raise _refusal_for(exc) from None
        except Refusal as refusal:
            return _error(refusal, counters)
        return JSONResponse({"result": 1 if new else 0})

    @router.post(cas_path + "/v2/shards")
    async def upload_shard_v2(request: Request) -> Response:
        await uploads.acquire()
        try:
            grant, body = await shard_body(request)
        except BaseException as exc:
            uploads.release()
            if isinstance(exc, Refusal):
                return _error(exc, counters)
            raise
        progress = [0, 0]

        def on_progress(done: int, total: int) -> None:
            progress[0], progress[1] = done, total

        # verified whether or not anyone reads the response; the slot frees when it is done
        task = asyncio.ensure_future(run_in_threadpool(service.upload_shard, body, grant.scope,
                                                       on_progress))
        task.add_done_callback(lambda t: (uploads.release(), t.cancelled() or t.exception()))
        return StreamingResponse(_shard_frames(task, progress, counters),
                                 media_type="application/x-ndjson")

    return router


def _checked(grant_of: Callable[[Request, bool], Grant], request: Request, write: bool) -> Grant:
    try:
        return grant_of(request, write)
    except AdapterHubError as exc:
        raise _refusal_for(exc) from None


def _frame(**fields: object) -> bytes:
    return (json.dumps(fields, separators=(",", ":")) + "\n").encode("utf-8")


async def _shard_frames(task: asyncio.Future, progress: list[int],
                        counters: XetStats) -> AsyncIterator[bytes]:
    """``validating`` frames (bytes verified so far) every few seconds while the shard is
    checked, then ``result``, or ``error`` with the refusal's message (nothing is stored)."""
    yield _frame(type="validating", verified=0, total=0)
    while not task.done():
        await asyncio.wait({task}, timeout=HEARTBEAT_S)
        if not task.done():
            yield _frame(type="validating", verified=progress[0], total=progress[1])
    try:
        task.result()
    except AdapterHubError as exc:
        counters.refusals.append(f"shard: {exc.message}")
        yield _frame(type="error", message=exc.message, retryable=False)
        return
    except Exception:  # the store failed: the client may try again
        log.exception("storing a Xet shard failed")
        yield _frame(type="error", message="the CAS could not store the shard", retryable=True)
        return
    yield _frame(type="result")
